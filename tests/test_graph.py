"""The graph language: named tensors (as:/from:), merges, block tensor inputs, several
outputs, and the ops of dense prediction; what the IR computes and what the Keras
backend builds from it (the torch backend refuses graphs in one located line for now)."""

from __future__ import annotations

import textwrap

import pytest

from archc.api import load
from archc.codegen.backend import get
from archc.syntax.errors import SpecError

UNET = """
name: tiny_unet
input: [32, 32, 3]
params: {classes: 2}
blocks:
  up:
    args: [filters]
    inputs: [x, skip]
    body:
      - upsample: {factor: 2, from: x, as: u}
      - concat: [u, skip]
      - conv: {filters: $filters, kernel: 3, padding: same}
      - act: relu
flows:
  encoder:
    - conv: {filters: 8, kernel: 3, padding: same, as: c1}
    - maxpool: {pool: 2}
    - conv: {filters: 16, kernel: 3, padding: same, dilation: 2, as: c2}
    - maxpool: {pool: 2}
    - conv: {filters: 32, kernel: 3, padding: same, as: c3}
  decoder:
    - up: {filters: 16, from: [c3, c2], as: u1}
    - up: {filters: 8, from: [u1, c1]}
    - conv: {filters: $classes, kernel: 1, as: mask}
  aux:
    - global_max_pool: {from: c3}
    - dense: {units: 3, as: label}
outputs: {mask: mask, label: label}
"""


def spec(tmp_path, text: str, name: str = "g.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def keras_model(analysis, tmp_path, **params):
    path = tmp_path / f"{analysis.net.name}_keras_{len(list(tmp_path.iterdir()))}.py"
    path.write_text(get("keras").render(analysis))
    return get("keras").load(path).create_model(**params)


def conv(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout + cout


def test_named_tensors_shapes_and_counts_per_output(tmp_path):
    a = load(spec(tmp_path, UNET))
    assert a.outputs == {"mask": (32, 32, 2), "label": (3,)}
    assert a.output == (32, 32, 2)
    encoder = conv(3, 3, 8) + conv(3, 8, 16) + conv(3, 16, 32)
    decoder = conv(3, 32 + 16, 16) + conv(3, 16 + 8, 8) + conv(1, 8, 2)
    label = 32 * 3 + 3
    assert a.total.trainable == encoder + decoder + label
    assert a.output_counts["mask"].trainable == encoder + decoder
    assert a.output_counts["label"].trainable == encoder + label  # shared layers count in each output
    assert a.shapes["decoder/up1/concat1"] == ((16, 16, 32), (16, 16, 48))  # input: the first tensor read
    # MACs of a dilated conv: as an undilated one, per output pixel
    assert a.counts["encoder/conv2"].macs == 16 * 16 * 9 * 8 * 16


def test_single_output_counts_equal_the_total_for_every_bundled_spec():
    from archc.passes.pipeline import spec_files

    singles = 0
    for path in spec_files(["specs", "examples"]):
        a = load(path)
        if len(a.outputs) == 1:  # 'output', or the one a spec names and leaves on (Inception's logits)
            singles += 1
            assert list(a.output_counts.values()) == [a.total], path
    assert singles >= 13


def test_keras_builds_the_graph_with_one_output_per_name(tmp_path):
    np = pytest.importorskip("numpy")
    a = load(spec(tmp_path, UNET))
    model = keras_model(a, tmp_path)
    assert model.count_params() == a.total.trainable
    out = model(np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32"))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"mask": (2, 32, 32, 2), "label": (2, 3)}


def test_resize_crop_and_merges_in_keras_follow_the_ir(tmp_path):
    np = pytest.importorskip("numpy")
    text = """
    name: dense_ops
    input: [12, 12, 4]
    flows:
      main:
        - conv: {filters: 4, kernel: 3, as: small}          # 10x10
        - resize: {like: input, mode: bilinear, as: big}     # back to 12x12
        - crop: {like: small, from: big, as: cropped}        # 10x10 centre
        - global_avg_pool: {keepdims: true, from: small, as: gate}
        - multiply: [cropped, gate]
        - add: {from: [multiply1, small]}
    """
    with pytest.raises(SpecError, match="expected a tensor name defined with as:.*found 'multiply1'"):
        load(spec(tmp_path, text))
    a = load(
        spec(
            tmp_path,
            text.replace("- multiply: [cropped, gate]", "- multiply: {from: [cropped, gate], as: gated}").replace("multiply1", "gated"),
        )
    )
    assert a.outputs == {"output": (10, 10, 4)}
    assert a.shapes["main/resize1"][1] == (12, 12, 4) and a.shapes["main/crop1"][1] == (10, 10, 4)
    model = keras_model(a, tmp_path)
    x = np.random.default_rng(1).normal(size=(1, 12, 12, 4)).astype("float32")
    layers = {layer.name: layer for layer in model.layers}
    assert layers["main_crop1"].cropping == ((1, 1), (1, 1))
    assert tuple(model(x).shape) == (1, 10, 10, 4)


@pytest.mark.parametrize(
    "change, message",
    [
        ("- conv: {filters: 4, kernel: 3, stride: 2, dilation: 2}", "expected stride 1 with dilation 2x2"),
        ("- conv: {filters: 4, kernel: 5, dilation: 3}", "expected a window no larger than its 8x8 input"),
    ],
)
def test_dilation_rules(tmp_path, change, message):
    text = f"""
    name: d
    input: [8, 8, 3]
    flows:
      main:
        {change}
    """
    with pytest.raises(SpecError, match=message):
        load(spec(tmp_path, text))


def test_dilated_valid_conv_spans_the_dilated_kernel(tmp_path):
    a = load(spec(tmp_path, "name: d\ninput: [9, 9, 3]\nflows:\n  main:\n    - conv: {filters: 4, kernel: 3, dilation: 4}\n"))
    assert a.output == (1, 1, 4)  # (3 - 1) * 4 + 1 = 9


def test_scopes(tmp_path):
    """Names inside a nested sequence stay inside; a flow sees earlier flows' names."""
    inner = """
    name: s
    input: [8, 8, 3]
    flows:
      main:
        - residual:
            body:
              - conv: {filters: 3, kernel: 1, padding: same, as: inside}
        - concat: [inside, input]
    """
    with pytest.raises(SpecError, match="defined in a sequence this layer cannot see"):
        load(spec(tmp_path, inner))
    later = """
    name: s
    input: [8, 8, 3]
    flows:
      a:
        - conv: {filters: 3, kernel: 1, as: first}
      b:
        - add: [first, input]
    """
    assert load(spec(tmp_path, later)).output == (8, 8, 3)


def test_a_switched_off_layer_passes_its_input_on_under_its_name(tmp_path):
    text = """
    name: w
    input: [8, 8, 3]
    params: {extra: false}
    flows:
      main:
        - conv: {filters: 3, kernel: 1, as: a}
        - conv: {filters: 3, kernel: 1, when: $extra, as: b}
        - add: [a, b]
    """
    off = load(spec(tmp_path, text))
    on = load(spec(tmp_path, text), {"extra": True})
    assert off.total.trainable == conv(1, 3, 3) and on.total.trainable == 2 * conv(1, 3, 3)
    for a in (off, on):
        model = keras_model(a, tmp_path)
        assert model.count_params() == a.total.trainable


def test_torch_and_keras_agree_on_a_graph_output_by_output(tmp_path):
    from archc.tools.verify import verify

    for text in (UNET, AUX.replace("aux_logits: false", "aux_logits: true")):
        a = load(spec(tmp_path, text))
        result = verify(a, ["torch", "keras"])
        assert result.ok, result.failure()
        assert {c.other for c in result.comparisons} == {"keras"}


def test_torch_forward_reads_like_hand_written_code(tmp_path):
    source = get("torch").render(load(spec(tmp_path, UNET)))
    assert "def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:" in source  # the block's inputs
    assert "out = torch.cat([u, skip], dim=1)" in source  # the running tensor is not x, which a layer may read by name
    assert "x = self.decoder.up1(c3, c2)" in source
    assert 'return {"mask": mask, "label": label}' in source
    assert "self.conv1 = nn.Conv2d(in_channels + skip_channels, filters, 3, padding=1)" in source
    assert "nn.Conv2d(8, 16, 3, padding=2, dilation=2)" in source


AUX = """
name: aux
input: [16, 16, 3]
params: {aux_logits: false}
flows:
  main:
    - conv: {filters: 4, kernel: 3, as: mid}
    - global_avg_pool
    - dense: {units: 5, as: logits}
  aux:
    - conv: {filters: 2, kernel: 1, from: mid, when: $aux_logits}
    - global_avg_pool: {when: $aux_logits}
    - dense: {units: 5, when: $aux_logits, as: aux}
outputs:
  logits: logits
  aux: {from: aux, when: $aux_logits}
"""


def test_a_param_switches_an_output_off(tmp_path):
    np = pytest.importorskip("numpy")
    path = spec(tmp_path, AUX)
    off, on = load(path), load(path, {"aux_logits": True})
    assert off.outputs == {"logits": (5,)} and on.outputs == {"logits": (5,), "aux": (5,)}
    assert on.net.output_when == {"aux": (True, "aux_logits")}
    assert on.total.trainable - off.total.trainable == conv(1, 4, 2) + 2 * 5 + 5
    x = np.zeros((1, 16, 16, 3), "float32")
    assert tuple(keras_model(off, tmp_path)(x).shape) == (1, 5)  # one output on: the model's tensor, as with one output
    both = keras_model(off, tmp_path, aux_logits=True)  # the default module, the other value at create_model
    assert set(both(x)) == {"logits", "aux"} and both.count_params() == on.total.trainable


def test_a_torch_model_with_one_output_on_returns_its_tensor(tmp_path):
    """As torchvision's Inception3 returns its logits alone where no auxiliary output is
    wanted: the trainer, the benchmarks and export take the default model as before."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "aux_torch.py"
    path.write_text(get("torch").render(load(spec(tmp_path, AUX))))
    module = get("torch").load(path)
    x = torch.zeros(1, 3, 16, 16)
    assert module.create_model()(x).shape == (1, 5)
    assert {name: tuple(t.shape) for name, t in module.create_model(aux_logits=True)(x).items()} == {"logits": (1, 5), "aux": (1, 5)}


@pytest.mark.parametrize(
    "outputs, message",
    [
        (
            "  logits: {from: logits, when: $aux_logits}\n  aux: {from: aux, when: $aux_logits}\n",
            "15:3: outputs: expected at least one output switched on, found every one switched off",
        ),
        (
            "  logits: logits\n  aux: {from: aux, whn: $aux_logits}\n",
            "16:20: outputs.aux.whn: expected a key of a switched output (from, when), found 'whn'",
        ),
        ("  logits: logits\n  aux: {when: $aux_logits}\n", "16:8: outputs.aux: expected 'from' (the tensor) and 'when', found no 'from'"),
        ("  logits: logits\n  aux: {from: aux, when: 3}\n", "16:26: outputs.aux.when: expected true or false, found 3"),
        (
            "  logits: logits\n  aux: {from: ax, when: true}\n",
            "16:9: outputs.aux.from: expected a tensor that a flow names with as: (aux, input, logits, mid), found 'ax'",
        ),
    ],
)
def test_a_bad_switched_output_is_one_located_line(tmp_path, outputs, message):
    path = tmp_path / "aux.yaml"
    path.write_text(AUX.split("outputs:")[0] + "outputs:\n" + outputs)
    with pytest.raises(SpecError) as err:
        load(path, {"aux_logits": "every one" not in message})
    assert str(err.value).startswith(f"{path}:{message}")


def test_a_switched_off_output_must_name_a_tensor_too(tmp_path):
    """The generated code names an output's tensor whichever way its param goes (found by
    the fuzzer's rewire edit: a KeyError in both renderers)."""
    path = tmp_path / "aux.yaml"
    path.write_text(AUX.replace("aux: {from: aux,", "aux: {from: nowhere,"))
    with pytest.raises(SpecError) as err:
        load(path)  # aux_logits false: the output is off
    assert str(err.value) == (
        f"{path}:16:9: outputs.aux.from: expected a tensor that a flow names with as: (aux, input, logits, mid), found 'nowhere'"
    )


def test_an_output_switched_on_needs_its_layers(tmp_path):
    text = AUX.replace("when: $aux_logits}\n    - global_avg_pool: {when: $aux_logits}", "}\n    - global_avg_pool")
    with pytest.raises(SpecError, match="expected every layer to lead to an output"):
        load(spec(tmp_path, text))


DECONV = """
name: deconv
input: [7, 9, 3]
flows:
  main:
    - conv_transpose: {filters: 4, kernel: 3, stride: 2, padding: same}   # an odd crop: the extra pixel at the end
    - act: relu
    - conv_transpose: {filters: 5, kernel: 4, stride: 2, padding: same, bias: false}
    - conv_transpose: {filters: 2, kernel: 3, stride: 2}
    - conv_transpose: {filters: 2, kernel: 2, stride: 2, padding: same}
"""


def test_conv_transpose_shapes_counts_macs_and_both_backends(tmp_path):
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    from archc.tools.verify import verify

    a = load(spec(tmp_path, DECONV))
    assert [a.shapes[f"main/conv_transpose{i}"][1] for i in (1, 2, 3, 4)] == [(14, 18, 4), (28, 36, 5), (57, 73, 2), (114, 146, 2)]
    assert a.counts["main/conv_transpose2"].trainable == 4 * 4 * 4 * 5  # no bias
    path = tmp_path / "deconv_torch.py"
    path.write_text(get("torch").render(a))
    model = get("torch").load(path).create_model().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        y = model(torch.randn(1, 3, 7, 9))
    assert tuple(y.shape) == (1, 2, 114, 146) and counter.get_total_flops() == 2 * a.total.macs
    result = verify(a, ["torch", "keras"])  # TF's crop of a 'same' transposed conv, the odd pixel at the end
    assert result.ok, result.failure()


def test_conv_transpose_refuses_a_kernel_smaller_than_its_stride(tmp_path):
    with pytest.raises(SpecError, match="expected a kernel no smaller than the stride, found kernel 1x1 with stride 2x2"):
        load(spec(tmp_path, "name: d\ninput: [4, 4, 3]\nflows:\n  main:\n    - conv_transpose: {filters: 2, kernel: 1, stride: 2}\n"))
