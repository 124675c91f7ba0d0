"""examples/nasnet.yaml against keras.applications.NASNetMobile (issue 21): the IR's counts
and output shape are the reference's, and the generated Keras model is the reference
itself: with the same weights, copied layer by layer in ``model.layers`` order, it gives
the same logits. Also the language it needs, on small specs: a block that returns
several tensors, names carried through a repeat, a ``when:`` over tensor sizes decided
per instance (each iteration of a repeat may differ).

The Keras test builds both models at 100x100 (a few seconds on one core): every
reduction then halves an odd size (49, 25, 13, 7), where keras' correct_pad and the
factorized path's crop differ most from the even sizes of 224."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from archc.api import build, load
from archc.backends.keras_backend import KerasBackend

os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # before anything imports keras (rendering does not)

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples/nasnet.yaml"
BACKEND = KerasBackend()
MOBILE = (5_289_978, 36_738)  # keras.applications.NASNetMobile(weights=None): trainable, non-trainable


def counts(analysis):
    return analysis.total.trainable, analysis.total.non_trainable


@pytest.mark.parametrize("size", [224, 100, 331])
def test_the_ir_gives_nasnet_mobiles_counts(size):
    """The adjust choices follow the shapes at any input size, and give the same layers."""
    a = load(SPEC, {"size": size})
    assert counts(a) == MOBILE
    assert a.output == (1000,)


def test_the_adjust_choice_follows_the_shapes():
    """The first normal cell of a stack reads a p of twice its size (factorized
    reduction), the others a p of other channels (projection); the first cell adjusts
    nothing (previous: false)."""
    a = load(SPEC)
    on = set(a.instance_shapes)
    first, second = "cells/repeat1[0]/normal1/adjust1", "cells/repeat1[1]/normal1/adjust1"
    assert f"{first}/factorized1" in on and f"{first}/projection1" not in on
    assert f"{second}/projection1" in on and f"{second}/factorized1" not in on
    assert "cells/stem1/adjust1" not in on and "cells/stem2/adjust1/factorized1" in on


SIZE = 100
PARAMS = {"size": SIZE, "softmax": False}  # logits, as classifier_activation=None


@pytest.fixture(scope="module")
def reference():
    """keras.applications.NASNetMobile at 100x100, every weight but the kernels drawn from
    U(0.5, 1.5) (BN statistics, scales and offsets not 0 or 1: a wrong pairing shows)."""
    keras = pytest.importorskip("keras")
    import numpy as np

    rng = np.random.default_rng(0)
    ref = keras.applications.NASNetMobile(weights=None, input_shape=(SIZE, SIZE, 3), classifier_activation=None)
    for layer in ref.layers:
        layer.set_weights(
            [np.asarray(w) if w.name.endswith("kernel") else rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.weights]
        )
    x = rng.standard_normal((2, SIZE, SIZE, 3)).astype("float32")
    return ref, x, np.asarray(ref(x, training=False))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    (path,) = build(SPEC, ["keras"], tmp_path_factory.mktemp("nasnet"), PARAMS)
    return BACKEND.load(path)


def test_keras_model_is_keras_applications_nasnet_mobile(reference, generated):
    """The weighted layers of both models paired in ``model.layers`` order, each pair of
    one class and weight shapes, the reference's weights copied: the same logits."""
    import numpy as np

    ref, x, expected = reference
    ours = generated.create_model(**PARAMS)
    assert BACKEND.count(ours) == BACKEND.count(ref) == counts(load(SPEC, PARAMS))
    pairs = zip([layer for layer in ref.layers if layer.weights], [layer for layer in ours.layers if layer.weights], strict=True)
    for theirs, mine in pairs:
        assert type(theirs) is type(mine), (theirs.name, mine.name)
        assert [w.shape for w in theirs.weights] == [w.shape for w in mine.weights], (theirs.name, mine.name)
        mine.set_weights(theirs.get_weights())
    found = np.asarray(ours(x, training=False))
    assert found.shape == (2, 1000)
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_import_keras_applications_weights(reference, generated, tmp_path):
    """``archc import --from keras.applications``: NASNetMobile's weights as Keras ships
    them (.h5) into the generated Keras model, which then gives the reference's logits."""
    import h5py
    import numpy as np
    from click.testing import CliRunner
    from keras.src.legacy.saving import legacy_h5_format

    from archc.cli import main
    from archc.tools.verify import output_difference

    ref, x, expected = reference
    with h5py.File(tmp_path / "ref.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, ref)
    args = [SPEC, *(f"-p{k}={v}" for k, v in PARAMS.items()), "--from", "keras.applications", tmp_path / "ref.h5", "--to", "keras"]
    result = CliRunner().invoke(main, ["import", *map(str, args), "-o", str(tmp_path / "k.weights.h5")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    ours = generated.create_model(**PARAMS)
    ours.load_weights(tmp_path / "k.weights.h5")
    assert output_difference(expected, np.asarray(ours(x, training=False))).rel <= 1e-5


CARRY = """\
name: carry
input: [16, 16, 4]
params: {first: true}
blocks:
  cell:
    args: [filters]
    inputs: [x, p]
    outputs: [out, x]
    body:
      - conv: {filters: $filters, kernel: 1, from: p, when: "${channels(p) != filters}", as: p}
      - conv: {filters: $filters, kernel: 1, from: x, as: y}
      - add: {from: [y, p], as: out}
flows:
  stem:
    - conv: {filters: 8, kernel: 1, as: stem}
  cells:
    - cell: {filters: 6, from: [stem, stem], as: [x, p], when: $first}
    - repeat:
        times: 3
        body:
          - cell: {filters: 6, from: [x, p], as: [x, p]}
  head:
    - global_avg_pool: {from: x}
"""


def test_names_carried_through_a_repeat(tmp_path):
    """Iteration 0 reads the cell before the repeat (p: the stem, 8 channels: projected),
    the others the previous iteration's input (6 channels: not projected)."""
    spec = tmp_path / "carry.yaml"
    spec.write_text(CARRY)
    a = load(spec)
    conv = lambda c_in, c_out: c_in * c_out + c_out  # noqa: E731
    stem, first = conv(4, 8), conv(8, 6) + conv(8, 6)
    assert a.total.trainable == stem + first + conv(8, 6) + conv(6, 6) + 2 * conv(6, 6)
    assert "cells/repeat1[0]/cell1/conv1" in a.instance_shapes
    assert "cells/repeat1[1]/cell1/conv1" not in a.instance_shapes


@pytest.mark.parametrize("first", [True, False])
def test_the_keras_model_carries_the_names(first, tmp_path):
    """The generated loop reassigns x and p; a param switching the first cell off passes
    the stem on as both; a when: over sizes is the tensors' static shapes."""
    pytest.importorskip("keras")
    import numpy as np

    spec = tmp_path / "carry.yaml"
    spec.write_text(CARRY)
    a = load(spec, {"first": first})
    (path,) = build(spec, ["keras"], tmp_path)
    text = path.read_text()
    assert "x_, p = cell(x_, p, filters=6" in text and "if p.shape[-1] != filters:" in text
    model = BACKEND.load(path).create_model(first=first)
    assert BACKEND.count(model) == counts(a)
    assert tuple(model(np.ones((1, 16, 16, 4), "float32")).shape) == (1, 6)
