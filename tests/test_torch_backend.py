"""The PyTorch backend: the generated module (rendered without torch) builds models with
archc's counts and shapes for every bundled spec and param variant, pads like TF, keeps
Keras's BN and flatten conventions, survives hostile names, and works with
channels_last, torch.compile and ONNX export."""

from __future__ import annotations

import ast
import inspect
import math
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from archc.api import build, load  # noqa: E402
from archc.backends.torch_backend import MODULE_ATTRIBUTES, TorchBackend, modules_at, qualified_names, torch_plan  # noqa: E402
from archc.backends.torch_backend import values as torch_values  # noqa: E402
from archc.cli import main  # noqa: E402
from archc.codegen.backend import get  # noqa: E402
from archc.ir.ops import walk  # noqa: E402

ROOT = Path(__file__).parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
XCEPTION = ROOT / "specs/xception.yaml"
BACKEND = TorchBackend()

# Every op and combinator, 'same' padding of every kind (static symmetric, static
# asymmetric, by input size, chosen by a block argument), BN with each of
# center/scale, a flatten before a dense layer that a param switches off.
SMALL = """\
name: small
description: Every op the torch backend renders, small enough for compile and ONNX tests.
input: [41, 38, 3]
params:
  classes: 5
  residual: true
  segments: {default: depthwise, type: segments}
  act: {default: relu, choices: [relu, elu, gelu]}
  hidden: true
  center: true
  scale: false
blocks:
  unit:
    args: {k: 3, s: 1, p: same, f: 6}
    body:
      - conv: {filters: $f, kernel: $k, stride: $s, padding: $p, bias: false}
      - maxpool: {pool: $k, stride: 1, padding: $p}
      - avgpool: {pool: $k, stride: 1, padding: $p}
      - bn: {center: $center, scale: $scale}
      - act: $act
  down:
    args: [filters]
    body:
      - residual:
          use_shortcut: $residual
          body:
            - sepconv: {filters: $filters, kernel: 3, padding: same, segments: $segments, between: elu, depth_multiplier: 2}
            - bn: {scale: false}
            - maxpool: {pool: 3, stride: 2, padding: same}
          shortcut:
            - conv: {filters: $filters, kernel: 1, stride: 2, padding: same, bias: false}
            - bn
flows:
  stem:
    - conv: {filters: 8, kernel: 2, padding: same}
    - conv: {filters: 8, kernel: 3, stride: 2, padding: same}
    - avgpool: {pool: 3, stride: 2, padding: same}
    - unit: {k: 2, p: same}
    - unit: {k: 3, p: valid}
    - branches:
        a: [unit: {k: 1}]
        b: [maxpool: {pool: 3, stride: 1, padding: same}]
  body:
    - down: {filters: 16}
    - repeat: {times: 2, body: [unit: {f: 16}, act: {kind: relu, when: false}]}
    - bn: {center: false, scale: false}
    - flatten
    - dense: {units: 7, when: $hidden}
    - bn: {scale: false}
    - dropout: 0.1
    - dense: $classes
"""


def small_spec(tmp_path: Path, text: str = SMALL) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(text)
    return path


def generate(spec: Path, out: Path, **overrides):
    """Render ``spec`` with the torch backend into ``out`` and import the result."""
    (file,) = build(spec, ["torch"], out, overrides)
    return BACKEND.load(file)


def torch_shape(ir_shape: tuple[int, ...], batch: int) -> tuple[int, ...]:
    return (batch, ir_shape[2], ir_shape[0], ir_shape[1]) if len(ir_shape) == 3 else (batch, *ir_shape)


STATEMENTS = {"residual", "branches", "gate"}  # combinators that are statements in forward, no module


def check_shapes(model, analysis, batch: int = 1):
    """Run one batch at the spec's input size; every module at an IR path must give the
    shape archc inferred (hooks on the modules that ``modules_at`` maps the path to).
    Every path has a module but those of residuals, branches and gates."""
    found = modules_at(model, torch_plan(analysis))
    ops = {node.path: node.op for node in walk([n for flow in analysis.net.flows.values() for n in flow])}
    assert {path for path in analysis.shapes if path not in found} == {path for path in analysis.shapes if ops[path] in STATEMENTS}
    seen: dict[str, list[tuple[int, ...]]] = {}
    hooks = []
    # a repeat whose runs are run by a loop in forward is an nn.ModuleList, never called itself
    called = {path for path, modules in found.items() if not any(isinstance(m, torch.nn.ModuleList) for m in modules)}
    shapes = {path: shape for path, shape in analysis.shapes.items() if path in called}
    for path in shapes:
        assert found[path], f"no module for {path}"
        for module in found[path]:
            hooks.append(module.register_forward_hook(lambda m, i, out, path=path: seen.setdefault(path, []).append(tuple(out.shape))))
    h, w, c = analysis.net.input
    with torch.no_grad():
        y = model.eval()(torch.randn(batch, c, h, w))
    for hook in hooks:
        hook.remove()
    assert set(seen) == set(shapes)
    for path, (_, out) in shapes.items():
        assert set(seen[path]) == {torch_shape(out, batch)}, path
    return y


# -- the plugin and the files -----------------------------------------------------------


def test_the_backend_is_a_plugin_and_rendering_imports_no_torch():
    assert isinstance(get("torch"), TorchBackend)
    code = "import sys; from archc.api import load; from archc.codegen.backend import get; get('torch').render(load(sys.argv[1])); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code, str(XCEPTION)], check=True)


def test_committed_files_are_what_the_specs_give(tmp_path):
    result = CliRunner().invoke(main, ["build", str(ROOT / "specs"), "--backend", "torch", "-o", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    for spec in SPECS:
        name = f"{spec.stem}_torch.py"
        assert (tmp_path / name).read_bytes() == (ROOT / "generated" / name).read_bytes(), (
            f"generated/{name} is stale: run archc build specs/ --backend torch"
        )


def test_the_generated_module_reads_like_model_code():
    text = (ROOT / "generated/xception_torch.py").read_text()
    assert "generated by archc; edit the spec, not this file" in text.lower()
    assert "'xception'" in text.splitlines()[0] and "22,855,952 trainable" in text and "54,528 non-trainable" in text
    for param in ("middle_repeats = 8", 'segments = "depthwise"', "classes = 1000"):
        assert param in text
    tree = ast.parse(text)
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {"SepBn", "Down", "Middle", "Xception"} <= set(classes)
    init = next(f for f in classes["Down"].body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    args = [a.arg for a in init.args.args + init.args.kwonlyargs]
    assert args == ["self", "in_channels", "first", "second", "first_relu", "segments", "between", "residual"]
    assert "for _ in range(middle_repeats)" in text
    assert "nn.ReLU() if first_relu else nn.Identity()" in text and "if residual\n            else None" in text
    assert "Residual" not in text and "Repeat" not in text  # no helper classes for the structure
    assert "nn.Linear(2048, 4096) if fc_layers else nn.Identity()" in text
    assert "nn.Linear(4096 if fc_layers else 2048, classes)" in text
    assert "nn.BatchNorm2d(32, eps=0.001, momentum=0.01)" in text


def test_the_file_does_not_grow_with_repeats():
    sizes = {len(BACKEND.render(load(XCEPTION, {"middle_repeats": n})).splitlines()) for n in (1, 8, 64)}
    assert len(sizes) == 1


def test_the_generated_modules_import_only_torch_and_the_standard_library(tmp_path):
    files = [ROOT / "generated" / f"{spec.stem}_torch.py" for spec in SPECS]
    files.append(build(small_spec(tmp_path), ["torch"], tmp_path)[0])
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                assert all(n.split(".")[0] == "torch" or n.split(".")[0] in sys.stdlib_module_names for n in names), ast.unparse(node)


def ruff(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("ruff")
    if exe is None:
        pytest.skip("ruff is not installed")
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=ROOT)


def test_the_generated_code_is_formatted_and_lint_clean(tmp_path):
    files = [str(ROOT / "generated" / f"{spec.stem}_torch.py") for spec in SPECS]
    files += [str(f) for f in build(small_spec(tmp_path), ["torch"], tmp_path / "small")]
    files += [str(f) for f in build(small_spec(tmp_path, HOSTILE), ["torch"], tmp_path / "hostile")]
    for args in (
        ["format", "--check"],
        ["format", "--check", "--isolated"],
        ["check"],
        ["check", "--isolated", "--select", "E,F,W,I,B,UP"],
    ):
        result = ruff(*args, *files)
        assert result.returncode == 0, result.stdout + result.stderr


# -- counts, shapes, conventions ---------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_bundled_specs_have_archc_counts_and_shapes(spec):
    analysis = load(spec)
    module = BACKEND.load(ROOT / "generated" / f"{spec.stem}_torch.py")
    model = module.create_model()
    assert BACKEND.count(model) == (analysis.total.trainable, analysis.total.non_trainable)
    assert sum(p.numel() for p in model.parameters()) == analysis.total.trainable
    assert sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))) == analysis.total.non_trainable
    assert check_shapes(model, analysis).shape == (1, analysis.output[0])


def test_paper_counts():
    counts = {spec.stem: BACKEND.count(BACKEND.load(ROOT / "generated" / f"{spec.stem}_torch.py").create_model())[0] for spec in SPECS}
    assert counts == {"xception": 22_855_952, "inception_v3": 23_626_728, "inception_v3_slim": 23_817_352}


XCEPTION_VARIANTS = [
    {"classes": 10},
    {"middle_repeats": 4},
    {"segments": 4},
    {"segments": 1},
    {"residual": False},
    {"fc_layers": True, "dropout": 0.5},
    {"between": "relu", "middle_repeats": 1},
]


@pytest.mark.parametrize("overrides", XCEPTION_VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_create_model_overrides_give_the_counts_archc_gives(overrides):
    module = BACKEND.load(ROOT / "generated/xception_torch.py")
    analysis = load(XCEPTION, overrides)
    model = module.create_model(**overrides)
    assert BACKEND.count(model) == (analysis.total.trainable, analysis.total.non_trainable)


def test_create_model_overrides_give_archc_shapes():
    """Layers switched on (fc_layers) and off (residual) by params."""
    overrides = {"fc_layers": True, "classes": 10, "residual": False, "segments": 8}
    module = BACKEND.load(ROOT / "generated/xception_torch.py")
    analysis = load(XCEPTION, overrides)
    assert check_shapes(module.create_model(**overrides), analysis).shape == (1, analysis.output[0])


@pytest.mark.parametrize("channels", ["$c", "${c + 1}"])
def test_input_channels_from_a_param_follow_create_models_param(tmp_path, channels):
    """The first layer's input channels come from the param, not from its default (found by
    `make fuzz`'s lift edit: the module built 4-channel convs for create_model(c=6))."""
    spec = small_spec(
        tmp_path,
        f"name: chan\ninput: [8, 8, '{channels}']\nparams: {{c: 4}}\nflows:\n  main: [conv: {{filters: 2, kernel: 3}}, global_avg_pool, dense: 3]\n",
    )
    module = generate(spec, tmp_path / "out")
    analysis = load(spec, {"c": "6"})
    assert check_shapes(module.create_model(c=6), analysis).shape == (1, 3)
    assert BACKEND.count(module.create_model(c=6)) == (analysis.total.trainable, analysis.total.non_trainable)


def test_a_flatten_after_channels_from_a_param_follows_create_models_param(tmp_path):
    """The dense layer after a flatten takes height x width x the param's channels (found
    by `make fuzz`'s lift edit on vgg16: nn.Linear(25088, ...) whatever the width)."""
    spec = small_spec(
        tmp_path, "name: flat\ninput: [8, 8, 3]\nparams: {w: 4}\nflows:\n  main: [conv: {filters: $w, kernel: 3}, flatten, dense: 3]\n"
    )
    module = generate(spec, tmp_path / "out")
    analysis = load(spec, {"w": "6"})
    assert check_shapes(module.create_model(w=6), analysis).shape == (1, 3)
    assert BACKEND.count(module.create_model(w=6)) == (analysis.total.trainable, analysis.total.non_trainable)


def test_small_spec_counts_and_shapes_for_every_switch(tmp_path):
    spec = small_spec(tmp_path)
    module = generate(spec, tmp_path)
    for overrides in ({}, {"hidden": False, "residual": False}, {"center": False, "scale": True, "act": "gelu", "segments": 2}):
        analysis = load(spec, overrides)
        model = module.create_model(**overrides)
        assert BACKEND.count(model) == (analysis.total.trainable, analysis.total.non_trainable), overrides
        assert check_shapes(model, analysis, batch=2).shape == (2, 5)


def test_batch_norm_keeps_keras_parameters_and_translates_momentum(tmp_path):
    module = BACKEND.load(ROOT / "generated/inception_v3_slim_torch.py")
    bns = [m for m in module.create_model().modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(bn.eps == 0.001 and bn.momentum == 0.01 for bn in bns)
    assert all(bn.weight is None and bn.bias.requires_grad for bn in bns)  # beta only: scale: false
    small = generate(small_spec(tmp_path), tmp_path).create_model()
    plain = small.body.bn1  # center: false, scale: false
    assert list(plain.parameters()) == [] and plain.running_var.numel() == 16


def test_bn_matches_keras_arithmetic(tmp_path):
    bn = generate(small_spec(tmp_path), tmp_path).create_model().body.bn2.eval()
    x = torch.randn(4, 7)
    with torch.no_grad():
        bn.bias.uniform_()
        bn.running_mean.uniform_()
        bn.running_var.uniform_(0.5, 2)
    expected = (x - bn.running_mean) / torch.sqrt(bn.running_var + 0.001) + bn.bias
    torch.testing.assert_close(bn(x), expected)


def test_flatten_is_in_keras_order(tmp_path):
    model = generate(small_spec(tmp_path), tmp_path).create_model()
    x = torch.randn(2, 16, 3, 2)
    assert torch.equal(model.body.flatten1(x), x.permute(0, 2, 3, 1).reshape(2, -1))


def test_separable_conv_is_grouped_spatial_then_pointwise():
    module = BACKEND.load(ROOT / "generated/xception_torch.py")
    sep = module.create_model(segments=4).entry.down1.sep_bn1.sepconv1
    assert (sep.spatial.groups, sep.spatial.bias, sep.pointwise.kernel_size, sep.pointwise.bias) == (4, None, (1, 1), None)
    depthwise = module.create_model().exit.sep_bn1.sepconv1.spatial
    assert depthwise.groups == depthwise.in_channels == 1024


# -- TF 'same' padding -------------------------------------------------------------------


def tf_pad(n: int, k: int, s: int) -> tuple[int, int]:
    """TF's rule (tensorflow.org/api_docs/python/tf/nn#notes_on_padding_2)."""
    total = max((math.ceil(n / s) - 1) * s + k - n, 0) if n % s else max(k - s, 0)
    return total // 2, total - total // 2


def reference(x, op: str, k: tuple[int, int], s: tuple[int, int], weight=None):
    """An op with 'same' padding spelled out: pad by TF's rule, then a 'valid' op;
    average pools divide by the cells that are not padding."""
    (top, bottom), (left, right) = (tf_pad(n, kk, ss) for n, kk, ss in zip(x.shape[-2:], k, s, strict=True))
    pad = (left, right, top, bottom)
    F = torch.nn.functional
    if op == "conv":
        return F.conv2d(F.pad(x, pad), weight, stride=s)
    if op == "max":
        return F.max_pool2d(F.pad(x, pad, value=-math.inf), k, s)
    ones = torch.ones_like(x)
    return F.avg_pool2d(F.pad(x, pad), k, s, divisor_override=1) / F.avg_pool2d(F.pad(ones, pad), k, s, divisor_override=1)


def test_same_padding_matches_tf_for_every_kernel_stride_and_size(tmp_path):
    module = generate(small_spec(tmp_path), tmp_path)
    for k in [(1, 1), (2, 2), (3, 3), (4, 4), (1, 7), (3, 2)]:
        for s in [(1, 1), (2, 2), (3, 3), (2, 1)]:
            conv = module.conv2d(3, 2, k, s, "same", bias=False)
            layers = {"conv": conv, "max": module.max_pool2d(k, s, "same"), "avg": module.avg_pool2d(k, s, "same")}
            for h, w in [(7, 7), (8, 9), (10, 6)]:
                x = torch.randn(2, 3, h, w)
                for op, layer in layers.items():
                    got = layer(x)
                    assert got.shape[-2:] == (math.ceil(h / s[0]), math.ceil(w / s[1]))
                    torch.testing.assert_close(got, reference(x, op, k, s, conv.weight), msg=f"{op} k={k} s={s} {h}x{w}")


def test_padding_is_static_where_it_can_be():
    """Symmetric for stride 1 and odd kernels, fixed asymmetric for even kernels, from
    the input size only where the stride makes it depend on it; the renderer's rule and
    the generated helper's agree."""
    module = BACKEND.load(ROOT / "generated/xception_torch.py")
    assert torch_values.symmetric_padding((3, 3), (1, 1)) == (1, 1)
    assert torch_values.same_pad((2, 2), (1, 1)) == (0, 1, 0, 1)
    assert torch_values.same_pad((3, 3), (2, 2)) is None and torch_values.same_pad((1, 1), (2, 2)) == (0, 0, 0, 0)
    for k in range(1, 6):
        for s in range(1, 4):
            assert module.same_pad(k, s) == torch_values.same_pad((k, k), (s, s))
            fixed = torch_values.same_pad((k, k), (s, s))
            for n in range(k, 3 * k + 8):
                assert fixed is None or fixed[:2] == tf_pad(n, k, s)
    model = module.create_model()
    assert model.entry.conv2.padding == (0, 0)  # valid
    assert model.exit.sep_bn1.sepconv1.spatial.padding == (1, 1)  # stride 1: static, symmetric
    assert type(model.entry.down1.maxpool1).__name__ == "MaxPool2dSame"  # stride 2: by input size


def test_same_padding_matches_tensorflow(tmp_path):
    tf = pytest.importorskip("tensorflow")
    module = generate(small_spec(tmp_path), tmp_path)
    for k, s, size in [(3, 2, 8), (3, 2, 7), (2, 1, 6), (4, 3, 10), (1, 2, 9)]:
        x = torch.randn(1, 3, size, size + 1)
        nhwc = x.permute(0, 2, 3, 1).numpy()
        conv = module.conv2d(3, 2, k, s, "same", bias=False)
        expected = {
            "conv": tf.nn.conv2d(nhwc, conv.weight.detach().permute(2, 3, 1, 0).numpy(), s, "SAME"),
            "max": tf.nn.max_pool2d(nhwc, k, s, "SAME"),
            "avg": tf.nn.avg_pool2d(nhwc, k, s, "SAME"),
        }
        layers = {"conv": conv, "max": module.max_pool2d(k, s, "same"), "avg": module.avg_pool2d(k, s, "same")}
        for op, layer in layers.items():
            torch.testing.assert_close(
                layer(x).detach().permute(0, 2, 3, 1), torch.from_numpy(expected[op].numpy()), msg=f"{op} {k} {s} {size}"
            )


# -- names --------------------------------------------------------------------------------

HOSTILE = r"""
name: "evil\"\"\"\nimport os\nopen('PWNED', 'w')\n\"\"\" é 🙂 \\"
description: "a quote at the end \"\"\" and a backslash \\ and \u2028 and \x1b\""
input: [12, 12, 3]
params:
  class: {default: 4, doc: "keyword \"\"\" doc"}
  in_channels: 8
  OrderedDict: true
  Residual: relu
  nn: 0.5
  x: true
  self: 2
  __import__: 1
  text: {default: "a\"b'c\\d\"\"\"é🙂\u20ac\x01", type: str}
blocks:
  __import__:
    doc: "block \"\"\" doc \\"
    args: {in_channels: null, self: 3, Down: true}
    body:
      - conv: {filters: $in_channels, kernel: 3, padding: same, name: "x\"); open('PWNED2', 'w') #"}
      - act: {kind: $Residual, name: forward}
      - bn: {name: eval, scale: $OrderedDict}
      - residual:
          name: to
          use_shortcut: $Down
          body: [conv: {filters: $in_channels, kernel: 1, name: "1abc"}]
  Residual:
    args: [self]
    body:
      - branches:
          name: "__init__"
          paths:
            keys: [conv: {filters: $self, kernel: 1, name: "🙂"}]
            "a b": [conv: {filters: 2, kernel: 1, name: "ü"}]
            a_b: [conv: {filters: 2, kernel: 1, name: self}]
            values: [maxpool: {pool: 3, stride: 1, padding: same, name: "class"}]
flows:
  forward:
    - __import__: {in_channels: $in_channels, self: $self, name: "parameters"}
    - Residual: {self: $class, name: "def"}
    - repeat: {times: $__import__, body: [Residual: {self: 3}], name: "\"\"\""}
  to:
    - global_avg_pool: {name: "x"}
    - dropout: {rate: $nn, name: "import"}
    - dense: {units: 5, name: "Model", when: $x}
    - dense: {units: $self, name: "create_model"}
"""


def test_hostile_names_reach_the_code_only_as_identifiers_and_strings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = small_spec(tmp_path, HOSTILE)
    (file,) = build(spec, ["torch"], tmp_path / "out")
    text = file.read_text()
    tree = ast.parse(text)  # it compiles
    assert [type(n).__name__ for n in tree.body[:1]] == ["Expr"]  # the docstring, then only definitions
    assert {type(n).__name__ for n in tree.body[1:]} <= {"Import", "ImportFrom", "Assign", "FunctionDef", "ClassDef"}
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not called & {"open", "exec", "eval", "__import__", "compile"}
    module = BACKEND.load(file)
    assert module.__doc__.startswith("PyTorch model of the archc spec 'evil\"\"\"\nimport os\nopen('PWNED', 'w')")
    analysis = load(spec)
    model = module.create_model()
    assert BACKEND.count(model) == (analysis.total.trainable, analysis.total.non_trainable)
    assert check_shapes(model, analysis).shape == (1, 2)
    assert inspect.signature(module.create_model().__class__).parameters["text"].default == analysis.net.params["text"]
    assert module.create_model(text="x", x_=False)
    assert not list(tmp_path.glob("PWNED*"))


def test_module_attribute_names_cover_the_installed_torch():
    attributes = {n for cls in (torch.nn.Module, torch.nn.Sequential, torch.nn.ModuleDict) for n in dir(cls) if not n.startswith("_")}
    assert attributes <= MODULE_ATTRIBUTES


def test_qualified_names_mirror_the_ir():
    analysis = load(XCEPTION)
    names = qualified_names(torch_plan(analysis))
    assert names["entry/down1/residual1/body/sep_bn1/sepconv1"] == "entry.down1.sep_bn1.sepconv1"
    assert names["entry/down1/residual1/shortcut/conv1"] == "entry.down1.shortcut_conv1"
    assert names["middle/repeat"] == "middle"  # a flow of one layer is that layer
    assert names["middle/repeat/middle1"] == "middle.{0}"  # a run of one block is that block
    assert names["exit/global_avg_pool1"] == "exit.global_avg_pool1"
    assert "entry/down1/residual1" not in names  # a residual is statements, no module
    model = BACKEND.load(ROOT / "generated/xception_torch.py").create_model()
    found = modules_at(model, torch_plan(analysis))
    assert len(found["middle/repeat/middle1/residual1/body/sep_bn2/bn1"]) == 8
    mapped = {name for modules in found.values() for m in modules for name, mm in model.named_modules() if mm is m}
    owners = {name.rsplit(".", 1)[0] for name, _ in model.named_parameters()}
    assert all(any(o == m or o.startswith(f"{m}.") for m in mapped) for o in owners)


# -- torch features --------------------------------------------------------------------------


def test_channels_last_gives_the_same_outputs(tmp_path):
    module = generate(small_spec(tmp_path), tmp_path)
    model = module.create_model().eval()
    x = torch.randn(2, *module.INPUT_SIZE)
    with torch.no_grad():
        expected = model(x)
        got = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("compiler", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_torch_compile_small_spec(tmp_path, compiler):
    """One graph, no breaks (fullgraph): the runtime 'same' pads trace. aot_eager checks
    the capture in seconds; inductor (C++ code generation) takes half a minute."""
    model = generate(small_spec(tmp_path), tmp_path).create_model().eval()
    x = torch.randn(2, 3, 41, 38)
    with torch.no_grad():
        expected = model(x)
        got = torch.compile(model, backend=compiler, fullgraph=True)(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_onnx_export_small_spec(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from onnx.reference import ReferenceEvaluator

    model = generate(small_spec(tmp_path), tmp_path).create_model().eval()
    x = torch.randn(2, 3, 41, 38)
    torch.onnx.export(model, (x,), tmp_path / "small.onnx")
    proto = onnx.load(tmp_path / "small.onnx")
    onnx.checker.check_model(proto)
    run = ReferenceEvaluator(proto)
    (got,) = run.run(None, {run.input_names[0]: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-5)


def test_cli_builds_the_torch_file(tmp_path):
    result = CliRunner().invoke(main, ["build", str(XCEPTION), "--backend", "torch", "-o", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "xception_torch.py").read_text() == (ROOT / "generated/xception_torch.py").read_text()


def test_unsupported_specs_get_one_located_message(tmp_path):
    spec = small_spec(tmp_path, textwrap.dedent(SMALL).replace("    - flatten\n", "    - flatten: {when: $hidden}\n"))
    result = CliRunner().invoke(main, ["build", str(spec), "--backend", "torch", "-o", str(tmp_path), "-q"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith(f"error: {spec}:")  # FILE:LINE:COL, like every spec error
    assert "flows.body[3].flatten: expected what the torch backend can express, found `when: $hidden`" in result.output


def test_layout_is_what_ruff_formats_at_any_width(tmp_path):
    """The hand-rolled layout against ruff on random nestings of calls, conditionals,
    lists, dicts and generators of a repeat's runs with names of every length: unchanged
    at 88 columns and at 140. (Not: a conditional layer without arguments,
    `nn.ReLU() if c else nn.Identity()`, or a run without arguments, too long for 88
    columns; only absurd names make it so, and it is laid out for 88.)"""
    import random

    from archc.backends.torch_backend.layout import Call, Each, IfElse, assign

    rng = random.Random(0)

    def name() -> str:
        return "n" * rng.randint(1, 30)

    def expr(depth: int):
        roll = rng.random()
        if depth == 0 or roll < 0.3:
            return name()
        if roll < 0.4:
            return IfElse(Call(name(), tuple(expr(depth - 1) for _ in range(rng.randint(1, 3)))), name(), "None")
        if roll < 0.45:  # a run is a module made with arguments (its input channels at least)
            return Call("nn.Sequential", (Each(Call(name(), (expr(depth - 1),)), "_", f"range({name()})"),))
        if roll < 0.5:
            return Call("nn.ModuleList", (Each(Call(name(), (name(), expr(depth - 1))), "i", f"range({name()})", star=False),))
        if roll < 0.55:
            return Call("nn.ModuleDict", (Call("", tuple((f'"{name()}"', expr(depth - 1)) for _ in range(rng.randint(1, 3))), "{}"),))
        if roll < 0.6:
            return Call("torch.cat", (Call("", tuple(name() for _ in range(rng.randint(1, 4))), "[]"), ("dim", "1")))
        args = [expr(depth - 1) if rng.random() < 0.5 else (name(), expr(depth - 1)) for _ in range(rng.randint(0, 4))]
        return Call(name(), tuple(sorted(args, key=lambda a: isinstance(a, tuple))))

    lines = ["class C:", "    def f(self):"]
    for _ in range(300):
        lines += assign(f"self.{name()}", expr(4), 2)
    path = tmp_path / "layout.py"
    path.write_text("\n".join(lines) + "\n")
    for width in ("88", "140"):
        result = ruff("format", "--check", "--isolated", "--line-length", width, str(path))
        assert result.returncode == 0, result.stdout + result.stderr


def test_in_place_ops_only_where_no_one_else_reads_the_tensor(tmp_path):
    """ReLUs and residual additions work in place (as timm's do) except where the
    tensor is a block's input, which a shortcut shares; gradients are unchanged."""
    import torch

    (file,) = build(ROOT / "specs/xception.yaml", ["torch"], tmp_path, {"middle_repeats": 1, "classes": 5})
    module = BACKEND.load(file)
    model = module.create_model()
    down = model.entry.down2
    assert not down.act1.inplace and down.act2.inplace and "x += shortcut" in inspect.getsource(type(down).forward)
    assert model.entry.act1.inplace and model.exit.act1.inplace

    def grads(m):
        torch.manual_seed(0)
        x = torch.randn(2, 3, 71, 71)
        m.train()
        m.zero_grad()
        torch.nn.functional.cross_entropy(m(x), torch.tensor([1, 3])).backward()
        return {name: p.grad.clone() for name, p in m.named_parameters()}

    plain_file = tmp_path / "plain" / file.name
    plain_file.parent.mkdir()
    plain_file.write_text(file.read_text().replace("nn.ReLU(inplace=True)", "nn.ReLU()").replace("x += shortcut", "x = x + shortcut"))
    assert "inplace=True" not in plain_file.read_text() and "x += " not in plain_file.read_text()
    reference = BACKEND.load(plain_file).create_model()
    reference.load_state_dict(model.state_dict())
    fast, plain = grads(model), grads(reference)
    assert fast.keys() == plain.keys()
    for name in fast:
        torch.testing.assert_close(fast[name], plain[name], rtol=0, atol=0, msg=name)


def test_xception_max_pools_need_no_pad_copy():
    """TF 'same' stride-2 pools map onto torch's own padding (ceil_mode for 74x74), so
    the generated Xception copies no feature map to pad it."""
    import torch

    module = BACKEND.load(ROOT / "generated/xception_torch.py")
    assert [module._torch_pooling((n, n), (3, 3), (2, 2)) for n in (147, 74, 37, 19)] == [
        ((1, 1), False),
        ((0, 0), True),
        ((1, 1), False),
        ((1, 1), False),
    ]
    x = torch.randn(1, 2, 74, 74)
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1), value=float("-inf"))
    assert torch.equal(module.MaxPool2dSame(3, stride=2)(x), torch.nn.functional.max_pool2d(padded, 3, 2))


# -- the generated code reads as hand-written: forward shows the data flow, keys stay shallow ----


def _nesting(path: str, ops: dict[str, str]) -> int:
    """How deep the spec nests a node: its flow, the nodes on its path (not the labels of
    child sequences, 'body', 'shortcut', a branch path), and one more per repeat above it
    (its runs: each run is the body once more)."""
    parts = path.split("/")
    above = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    nodes = [p for p in above if p in ops]
    return 1 + len(nodes) + sum(ops[p] == "repeat" for p in nodes if p != path)


@pytest.mark.parametrize("spec", [*SPECS, *sorted((ROOT / "examples").glob("*.yaml"))], ids=lambda p: p.stem)
def test_state_dict_keys_are_no_deeper_than_the_spec(spec):
    """Every module's name has at most as many parts as the spec has levels down to it,
    so a key is that plus the module's own tensor names (``pointwise.weight``)."""
    analysis = load(spec)
    ops = {node.path: node.op for node in walk([n for flow in analysis.net.flows.values() for n in flow])}
    names = qualified_names(torch_plan(analysis))
    assert names
    for path, name in names.items():
        assert len(name.split(".")) <= _nesting(path, ops), (path, name)


def test_the_xception_keys_are_the_spec_s_nesting():
    model = BACKEND.load(ROOT / "generated/xception_torch.py").create_model()
    keys = set(model.state_dict())
    assert "middle.3.sep_bn1.sepconv1.pointwise.weight" in keys
    assert "entry.down1.shortcut_conv1.weight" in keys and "exit.down1.sep_bn2.bn1.running_var" in keys
    assert max(len(k.split(".")) for k in keys) == 6  # was 10: middle.repeat.3.middle1.residual1.body.sep_bn1...


def _forward(path: Path, cls: str) -> str:
    tree = ast.parse(path.read_text())
    (node,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls]
    (forward,) = [f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "forward"]
    return ast.unparse(forward)


def test_a_block_s_forward_shows_the_add_the_concat_and_the_gate(tmp_path):
    down = _forward(ROOT / "generated/xception_torch.py", "Down")
    assert "shortcut = x" in down and "if self.has_shortcut:" in down
    assert "shortcut = self.shortcut_bn1(shortcut)" in down and "x += shortcut" in down
    assert "torch.cat([b1x1, b5x5, b3x3dbl, pool], dim=1)" in _forward(ROOT / "generated/inception_v3_torch.py", "ModuleA")
    (file,) = build(ROOT / "examples/efficientnet.yaml", ["torch"], tmp_path)
    mbconv = _forward(file, "Mbconv")
    assert "x = x * se" in mbconv and "x = x + shortcut" in mbconv
    (file,) = build(ROOT / "examples/densenet.yaml", ["torch"], tmp_path)
    assert "torch.cat([keep, new], dim=1)" in _forward(file, "DenseLayer")
    for text in (p.read_text() for p in [*ROOT.glob("generated/*_torch.py"), file]):
        assert not re.search(r"\b(Residual|Branches|Gate|Repeat|IndexedRepeat)\(", text)  # no helper classes for structure


SCOPES = """\
name: scopes
input: [8, 8, 4]
params:
  skip: {default: true}
flows:
  body:
    - conv: {filters: 4, kernel: 3, padding: same}
    - residual:
        use_shortcut: $skip
        body:
          - conv: {filters: 4, kernel: 3, padding: same}
    - repeat:
        times: 2
        body:
          - conv: {filters: 4, kernel: 1}
          - residual:
              body: [act: relu, conv: {filters: 4, kernel: 1}]
  head:
    - global_avg_pool
    - dense: 3
"""


def test_a_flow_or_run_that_is_no_chain_is_a_module_dict_run_by_statements(tmp_path):
    """A residual straight in a flow, and in a repeat of several layers: the flow is an
    nn.ModuleDict whose layers the model's forward calls, the repeat an nn.ModuleList of
    them run in a loop; counts and shapes are the IR's, with the shortcut and without."""
    spec = tmp_path / "scopes.yaml"
    spec.write_text(SCOPES)
    for skip in (True, False):
        analysis = load(spec, {"skip": skip})
        module = generate(spec, tmp_path / str(skip), skip=skip)
        model = module.create_model()
        assert isinstance(model.body, torch.nn.ModuleDict) and isinstance(model.body.repeat1, torch.nn.ModuleList)
        assert BACKEND.count(model) == (analysis.total.trainable, analysis.total.non_trainable)
        check_shapes(model, analysis)
    forward = _forward(tmp_path / "True" / "scopes_torch.py", "Scopes")
    assert "for run in self.body.repeat1:" in forward and "x = self.body.conv1(x)" in forward


PADS = """\
name: pads
input: [21, 19, 3]
blocks:
  unit:
    args: {f: 4, pad: 0, d: 1}
    body:
      - zero_pad: {padding: $pad, when: "${pad > 0}"}
      - conv: {filters: $f, kernel: 3, dilation: $d, bias: false}
      - bn
      - act: relu
flows:
  stem:
    - zero_pad: 1
    - conv: {filters: 6, kernel: 3, stride: 2}
    - act: relu
    - zero_pad: [[0, 1], [0, 1]]
    - conv: {filters: 6, kernel: 3, stride: 2}
    - unit: {f: 5, pad: 2, d: 2}
    - unit: {f: 4, pad: 1}
    - unit: {f: 4}
    - zero_pad: [1, 2]
    - depthwise: {kernel: [3, 5]}
    - act: relu
    - zero_pad: 1
    - maxpool: {pool: 3, stride: 1}
    - zero_pad: 1
    - maxpool: {pool: 3, stride: 1}
"""


def test_a_symmetric_zero_pad_is_the_next_convs_own_padding(tmp_path, monkeypatch):
    """A zero_pad equal on both sides right before a 'valid' conv or depthwise is the
    conv's ``padding=`` (no padded copy: passes.fold.takes_pad), before a max pool only
    where a relu feeds it (torch pads a pool with -inf); a pad a block argument
    switches gives a conditional padding, an asymmetric one stays a layer. The outputs and
    state_dict keys are those of the model rendered with every pad a layer."""
    import importlib

    import torch

    render, scope = (importlib.import_module(f"archc.backends.torch_backend.{m}") for m in ("render", "scope"))
    spec = small_spec(tmp_path, PADS)
    (file,) = build(spec, ["torch"], tmp_path / "folded")
    source = file.read_text()
    assert source.count("nn.ZeroPad2d(") == 2 and "nn.ZeroPad2d((0, 1, 0, 1))" in source  # the asymmetric one
    assert source.count("nn.MaxPool2d(3, stride=1, padding=1)") == 1  # after the relu; the pad after a pool stays
    assert "nn.Conv2d(3, 6, 3, stride=2, padding=1)" in source
    assert "padding=conv_padding(pad) if pad > 0 else 0" in source
    assert "padding=(1, 2)" in source  # the depthwise's
    folded = BACKEND.load(file).create_model()

    monkeypatch.setattr(render, "takes_pad", lambda pad, after, before=None: False)
    monkeypatch.setattr(scope, "takes_pad", lambda pad, after, before=None: False)
    (plain_file,) = build(spec, ["torch"], tmp_path / "plain")
    assert plain_file.read_text().count("nn.ZeroPad2d(") == 6  # the stem's two, the block's, the depthwise's, the pools' two
    plain = BACKEND.load(plain_file).create_model()
    assert folded.state_dict().keys() == plain.state_dict().keys()
    torch.manual_seed(0)
    plain.load_state_dict({k: torch.rand_like(t) + 0.5 if t.is_floating_point() else t for k, t in folded.state_dict().items()})
    folded.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 21, 19)
    folded.eval(), plain.eval()
    torch.testing.assert_close(folded(x), plain(x), rtol=1e-5, atol=1e-5)
