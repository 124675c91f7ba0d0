"""The Keras 3 backend: what the generated module looks like (rendering needs no
framework), that it builds models with archc's counts for every bundled spec and param
variant, and that the xception and inception_v3_slim specs are keras.applications'
Xception and InceptionV3: same counts and, with the same weights, the same outputs.

Keras runs on TensorFlow here (``KERAS_BACKEND`` defaults to it); one test builds a small
spec on Keras's torch backend in a subprocess.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from bundled import buildable

from archc.api import build, load
from archc.backends.keras_backend import KerasBackend, layer_names
from archc.codegen.plan import plan

os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # before anything imports keras (rendering does not)

ROOT = Path(__file__).parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
EXAMPLES = buildable(sorted((ROOT / "examples").glob("*.yaml")))
BACKEND = KerasBackend()

TINY = """\
name: tiny
description: Every op and combinator the backend renders, small enough for a CPU test.
input: [16, 16, 8]
params:
  segments: {default: depthwise, type: segments}
  between: {default: none, choices: [none, relu, elu]}
  residual: true
  repeats: {default: 2, min: 1}
  classes: 5
defaults:
  sepconv: {kernel: 3, padding: same, bias: false, segments: $segments, between: $between}
blocks:
  sep_bn:
    args: [filters]
    body:
      - sepconv: {filters: $filters}
      - bn: {scale: false, momentum: 0.9, epsilon: 0.0001}
flows:
  stem:
    - conv: {filters: 16, kernel: 3, stride: 2, padding: same, bias: false}
    - bn
    - act: relu
  body:
    repeat: $repeats
    body:
      - residual:
          use_shortcut: $residual
          body:
            - sep_bn: {filters: 16}
            - act: relu
            - sep_bn: {filters: 16}
  mix:
    - branches:
        a: [conv: {filters: 8, kernel: 1}]
        b:
          - avgpool: {pool: 3, stride: 1, padding: same}
          - sepconv: {filters: 8, kernel: 3, padding: same, segments: 4, between: elu, bias: true}
    - maxpool: {pool: 2}
  head:
    - flatten
    - dropout: 0.5
    - dense: $classes
"""

TINY_VARIANTS = [
    {},
    {"segments": 2, "between": "relu"},
    {"segments": 1, "residual": False, "repeats": 3},
    {"between": "elu", "classes": 3},
]


def render(path, overrides=None) -> str:
    return BACKEND.render(load(path, overrides))


def counts(analysis) -> tuple[int, int]:
    return analysis.total.trainable, analysis.total.non_trainable


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny spec and its generated module's path."""
    folder = tmp_path_factory.mktemp("tiny")
    spec = folder / "tiny.yaml"
    spec.write_text(TINY)
    (path,) = build(spec, ["keras"], folder)
    return spec, path


# -- the generated text (no framework) ---------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_committed_files_are_current(spec, tmp_path):
    (path,) = build(spec, ["keras"], tmp_path)
    committed = ROOT / "generated" / path.name
    assert committed.exists(), f"{committed} is missing: run `archc build specs/ --backend keras`"
    assert path.read_text() == committed.read_text(), f"{committed} is stale: run `archc build specs/ --backend keras`"


def test_rendering_is_deterministic_and_imports_no_framework():
    code = textwrap.dedent(f"""
        import sys
        from archc.api import load
        from archc.codegen.backend import get
        texts = [get("keras").render(load({str(ROOT / "specs/xception.yaml")!r})) for _ in range(2)]
        assert texts[0] == texts[1]
        print(sorted(m for m in ("keras", "tensorflow", "torch", "jax") if m in sys.modules))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def ruff(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("ruff")
    if exe is None:
        pytest.skip("ruff is not installed")
    return subprocess.run([exe, *args, "--config", str(ROOT / "pyproject.toml")], capture_output=True, text=True)


HOSTILE = r'''
name: 'we"ird {name} \ spec """'
description: "quotes \"\"\" a backslash \\ {x} \u202e bidi\tand\nnewline \""
input: [12, 12, 4]
params:
  class: {default: 3, min: 1, doc: 'a "quoted" doc with \ and {braces} """'}
  name: 2
  layers: true
  mode: {default: a, choices: [a, "b'c", '{x}']}
blocks:
  unit:
    doc: '"""'
    args: {filters: null, name_: 1}
    body:
      - conv: {filters: $filters, kernel: 3, padding: same, name: 'c"o{n}v'}
      - bn: {name: x}
      - residual: {use_shortcut: $layers, body: [act: {kind: relu, name: l}]}
  layers:
    body:
      - branches:
          unit: [unit: {filters: 4}]
          l: [maxpool: {pool: 1, name: exit}]
          'sh"ortcut': [repeat: {times: $name, body: [layers_: {}]}]
  layers_:
    body: [act: {kind: relu, name: __dunder__}]
flows:
  exit:
    - unit: {filters: 4, name: '"""'}
    - layers: {name: class}
  class:
    - repeat: {times: $name, body: [act: {kind: relu, name: for}, repeat: {times: 2, body: [dropout: 0.1]}]}
    - flatten
    - dense: {units: $class, name: 'in{put}'}
'''


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A spec whose names are quotes, braces, backslashes, keywords, builtins and the
    generated code's own names (layers, name, x, shortcut, a block's function)."""
    folder = tmp_path_factory.mktemp("hostile")
    spec = folder / "hostile.yaml"
    spec.write_text(HOSTILE)
    (path,) = build(spec, ["keras"], folder)
    return spec, path


def test_generated_code_is_formatted_and_lint_clean(tmp_path, tiny, hostile):
    paths = [p for spec in SPECS + EXAMPLES for p in build(spec, ["keras"], tmp_path)] + [tiny[1], hostile[1]]
    for path in paths:
        compile(path.read_text(), str(path), "exec")
    strs = [str(p) for p in paths]
    fmt = ruff("format", "--check", "--diff", *strs)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    lint = ruff("check", "--no-cache", *strs)
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.parametrize("spec", SPECS + EXAMPLES, ids=lambda p: p.stem)
def test_module_shape(spec):
    """Only keras (and the standard library's math) imported; a header naming the spec, params and counts; one function
    per block with the plan's signature; create_model with the params as keywords."""
    analysis = load(spec)
    text = BACKEND.render(analysis)
    tree = ast.parse(text)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported == {"keras"} | ({"math"} if "math.ceil(" in text or "math.floor(" in text else set())  # math: ceil/floor in expressions
    header = ast.get_docstring(tree)
    assert f"'{analysis.net.name}' ({spec.name})" in header
    assert f"{analysis.total.trainable:,} trainable and {analysis.total.non_trainable:,} non-trainable" in header
    assert "generated by archc; edit the spec, not this file." in header
    for name, value in analysis.net.params.items():
        assert f"{name}={value!r}".replace("'", '"') in header
    p = plan(analysis)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    for block, bp in p.blocks.items():
        assert [a.arg for a in functions[bp.func].args.args] == [*(bp.tensors or ["x"]), *p.signature(block), "name"]
    model = functions["create_model"].args
    backbone = {"include_top": True, "pooling": None, "features_only": False, "out_indices": None} if "FEATURE_INFO" in text else {}
    assert [a.arg for a in model.kwonlyargs] == [*p.params.values(), *backbone]  # then the backbone API's (test_backbone.py)
    assert [ast.literal_eval(d) for d in model.kw_defaults] == [*analysis.net.params.values(), *backbone.values()]


def test_repeats_are_a_loop():
    """Past the header, only create_model's default differs with middle_repeats."""

    def code(repeats):
        text = render(ROOT / "specs/xception.yaml", {"middle_repeats": repeats})
        return [line for line in text[text.index("import keras") :].splitlines() if "middle_repeats=" not in line]

    assert code(2) == code(200)
    assert "    for i in range(middle_repeats):" in code(2)


def test_layer_names_follow_ir_paths():
    names = layer_names(plan(load(ROOT / "specs/xception.yaml")))
    assert names["entry/conv1"] == "entry_conv1"
    assert names["entry/down1/residual1/shortcut/conv1"] == "entry_down1_residual1_shortcut_conv1"
    assert names["entry/down1/residual1"] == "entry_down1_residual1"  # the addition
    assert names["middle/repeat/middle1/residual1/body/sep_bn2/sepconv1"] == "middle_repeat_{0}_middle1_residual1_body_sep_bn2_sepconv1"
    assert "entry/down1" not in names  # a block call makes no layer
    assert "head/fc1" in names  # conditional on fc_layers: present in the code
    assert "entry/down1/residual1/body/act1" in names  # conditional on first_relu
    no_residual = layer_names(plan(load(ROOT / "specs/xception.yaml", {"residual": False})))
    assert "entry/down1/residual1" in no_residual  # `use_shortcut: $residual` is a condition


def test_colliding_layer_names_are_a_spec_error(tmp_path):
    from archc.syntax.errors import SpecError

    spec = tmp_path / "clash.yaml"
    spec.write_text(
        "name: clash\ninput: [4, 4, 1]\nflows:\n  a_b:\n    - act: {kind: relu, name: c}\n  a:\n    - act: {kind: relu, name: b_c}\n"
    )
    with pytest.raises(SpecError, match="'a_b_c'"):
        BACKEND.render(load(spec))


def test_blocks_named_like_the_module_functions_get_other_names(tmp_path):
    spec = tmp_path / "names.yaml"
    blocks = ("for_inference", "fold_batchnorm", "swap_pools", "create_model")
    spec.write_text(
        "name: names\ninput: [8, 8, 3]\nblocks:\n"
        + "".join(f"  {b}:\n    body: [conv: {{filters: 4, kernel: 1}}]\n" for b in blocks)
        + f"flows:\n  body: [{', '.join(blocks)}, global_avg_pool]\n"
    )
    source = BACKEND.render(load(spec))
    defined = [line.split("(")[0][4:] for line in source.splitlines() if line.startswith("def ")]
    assert len(defined) == len(set(defined)), defined
    assert {f"{b}_2" for b in blocks} <= set(defined)


# -- models on Keras (TensorFlow) ---------------------------------------------------------


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


@pytest.fixture(scope="module")
def modules(keras, tmp_path_factory):
    """Spec path -> the loaded generated module, built once per module."""
    folder = tmp_path_factory.mktemp("keras")
    cache = {}

    def get(spec):
        if spec not in cache:
            (path,) = build(spec, ["keras"], folder)
            cache[spec] = BACKEND.load(path)
        return cache[spec]

    return get


@pytest.fixture(scope="module")
def default_models(modules):
    cache = {}

    def get(spec):
        if spec not in cache:
            cache[spec] = modules(spec).create_model()
        return cache[spec]

    return get


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_bundled_counts(spec, default_models):
    assert BACKEND.count(default_models(spec)) == counts(load(spec))


@pytest.mark.parametrize(
    "overrides",
    [
        {"classes": 10},
        {"middle_repeats": 4},
        {"segments": 4},
        {"segments": 1, "between": "elu"},
        {"residual": False},
        {"fc_layers": True, "dropout": 0.5},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_xception_variants(overrides, modules):
    spec = ROOT / "specs/xception.yaml"
    model = modules(spec).create_model(**overrides)
    assert BACKEND.count(model) == counts(load(spec, overrides))


def test_bad_params_are_refused(modules):
    module = modules(ROOT / "specs/xception.yaml")
    with pytest.raises(ValueError, match="between: expected one of 'none', 'relu', 'elu', found 'gelu'"):
        module.create_model(between="gelu")
    with pytest.raises(ValueError, match="middle_repeats: expected at least 1, found 0"):
        module.create_model(middle_repeats=0)


def test_layer_names_are_the_models(default_models):
    """Every enabled IR node maps to a layer of the model (repeats expanded), and every
    layer of the model to an IR node."""
    spec = ROOT / "specs/xception.yaml"
    analysis = load(spec)
    expected = set()
    for path, pattern in layer_names(plan(analysis)).items():
        if path in analysis.shapes:  # enabled with these params (not fc1, not entry/down1's first relu)
            expected |= {pattern.format(i) for i in range(8)} if "{0}" in pattern else {pattern}
    present = {layer.name for layer in default_models(spec).layers} - {"input"}
    assert present == expected


def weighted_layers(model):
    return [layer for layer in model.layers if layer.weights]


@pytest.mark.parametrize("spec, reference", [("xception", "Xception"), ("inception_v3_slim", "InceptionV3")])
def test_same_model_as_keras_applications(spec, reference, keras, default_models):
    """Pairing: the weighted layers of both models in ``model.layers`` order (the
    functional graph's order, which follows the order layers are called in; the
    generated code calls them in keras.applications' order: a residual's shortcut before
    its body, branches in turn, the plain separable conv as one SeparableConv2D). Each
    pair must agree in class and weight shapes; the reference's BN statistics, scales,
    offsets and biases are randomised first so that a wrong pairing shows in the output."""
    import numpy as np

    ref = getattr(keras.applications, reference)(weights=None, classifier_activation=None)
    ours = default_models(ROOT / f"specs/{spec}.yaml")
    assert BACKEND.count(ours) == BACKEND.count(ref) == counts(load(ROOT / f"specs/{spec}.yaml"))
    pairs = list(zip(weighted_layers(ref), weighted_layers(ours), strict=True))
    rng = np.random.default_rng(0)
    for theirs, mine in pairs:
        assert type(theirs) is type(mine), (theirs.name, mine.name)
        assert [w.shape for w in theirs.weights] == [w.shape for w in mine.weights], (theirs.name, mine.name)
        values = []
        for w in theirs.weights:
            value = np.asarray(w)
            if not w.name.endswith("kernel"):  # keep glorot kernels; BN stats and biases are 0 or 1
                value = rng.uniform(0.5, 1.5, w.shape).astype("float32")
            values.append(value)
        theirs.set_weights(values)
        mine.set_weights(values)
    x = rng.standard_normal((1, 299, 299, 3)).astype("float32")
    expected = np.asarray(ref(x, training=False))
    found = np.asarray(ours(x, training=False))
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_tiny_variants_run(tiny, keras):
    """Grouped spatial convs (segments), activations between, no residuals: counts, BN
    settings from the IR, and a forward pass on the TensorFlow backend."""
    import numpy as np

    spec, path = tiny
    module = BACKEND.load(path)
    for overrides in TINY_VARIANTS:
        analysis = load(spec, overrides)
        model = module.create_model(**overrides)
        assert BACKEND.count(model) == counts(analysis), overrides
        out = model(np.ones((2, 16, 16, 8), "float32"), training=False)
        assert tuple(out.shape) == (2, *analysis.output), overrides
    bn = model.get_layer(layer_names(plan(analysis))["body/repeat/residual1/body/sep_bn1/bn1"].format(1))
    assert (bn.momentum, bn.epsilon, bn.center, bn.scale) == (0.9, 0.0001, True, False)


def test_flatten_is_nhwc(tmp_path, keras):
    import numpy as np

    spec = tmp_path / "flat.yaml"
    spec.write_text("name: flat\ninput: [2, 3, 4]\nflows:\n  main:\n    - flatten\n")
    (path,) = build(spec, ["keras"], tmp_path)
    x = np.arange(24, dtype="float32").reshape(1, 2, 3, 4)
    np.testing.assert_array_equal(np.asarray(BACKEND.load(path).create_model()(x)), x.reshape(1, -1))


def test_hostile_names_build(hostile, keras):
    spec, path = hostile
    model = BACKEND.load(path).create_model()
    assert BACKEND.count(model) == counts(load(spec))


# -- the same code on Keras's torch backend ------------------------------------------------


def test_tiny_on_the_torch_backend(tiny):
    pytest.importorskip("torch")
    spec, path = tiny
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import keras
        from archc.api import load
        from archc.backends.keras_backend import KerasBackend
        assert keras.backend.backend() == "torch"
        backend = KerasBackend()
        module = backend.load({str(path)!r})
        for overrides in {TINY_VARIANTS!r}:
            model = module.create_model(**overrides)
            analysis = load({str(spec)!r}, overrides)
            out = model(np.ones((2, 16, 16, 8), "float32"), training=False)
            found = (backend.count(model), tuple(out.shape))
            expected = ((analysis.total.trainable, analysis.total.non_trainable), (2, *analysis.output))
            assert found == expected, (overrides, found, expected)
        print("tensorflow" in sys.modules)
    """)
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "False"
