"""A property of every bundled spec at any params its declarations allow: the module
generated at the defaults, built with ``create_model(**p)``, has the IR's counts at p,
gives Keras's outputs in torch (one set of random weights ported), and ``for_inference``
changes neither backend's outputs. The compile-time decisions (folds, pool swaps,
padding) were made at the defaults; this holds them at every other param.

Hypothesis draws p from each param's declaration (choices, bool, min/max; small sizes
and counts, so that models stay quick to build), on both sides of the default: a float
without a max up to twice its default (EfficientNet's depth=2.0 is B5's 2.2 rounded
down, and a rewrite decided at 1.0 must hold there too), an int up to two above it.
Each spec is checked first with every param at the far end of its range from the
default (``far``), then at ``ARCHC_PROPERTY_EXAMPLES`` drawn params (2 in CI,
derandomized so CI is repeatable). for_inference is compared in float64 in torch
(fuzz.inference_difference: its rewrites are exact, so only a wrong one shows)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from bundled import buildable
from fuzz import INFERENCE_TOLERANCE as EXACT
from fuzz import inference_difference
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st

from archc.api import load
from archc.syntax.errors import SpecError
from archc.tools.export import generated_module
from archc.tools.verify import output_difference, porting_backends, random_weights

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = buildable(sorted([*ROOT.glob("specs/*.yaml"), *ROOT.glob("examples/*.yaml")]))
SMALL = (75, 75)  # fits every bundled spec (Xception needs 71, Inception V3 75)
EXAMPLES = int(os.environ.get("ARCHC_PROPERTY_EXAMPLES", "2"))
TOLERANCE = 1e-4  # torch vs Keras, as archc verify
# Keras's for_inference, compared in float32: a fold rounds each weight to float32 once;
# with random BN statistics (small variances, large scales) and one class, that is up to
# ~2e-4 of the output; a wrong rewrite is ~0.5.
INFERENCE_TOLERANCE = 1e-3


def _int_range(decl) -> tuple[int, int]:
    """Small sizes and counts: from the min (at least 1) to two above the default, at
    most 8 above the min (a resolution of 224 is drawn from 32 to 40)."""
    low = max(int(math.ceil(decl.min if decl.min is not None else 1)), 1)
    high = min(max(decl.default + 2, low), low + 8)
    return low, int(high if decl.max is None else max(min(high, decl.max), low))


def _float_range(decl) -> tuple[float, float]:
    """From the min (or 0) to the max, or to twice the default where there is none."""
    low = decl.min if decl.min is not None else 0.0
    high = decl.max if decl.max is not None else 2 * decl.default
    return low, max(high, low)


def values(decl) -> st.SearchStrategy:
    """Values of one declared param, kept small where they set a size or a count."""
    if decl.choices:
        return st.sampled_from(decl.choices)
    if decl.type == "bool":
        return st.booleans()
    if decl.type == "segments":
        return st.sampled_from(["depthwise", 1, 2, 4, 8])
    if decl.type == "int":
        return st.integers(*_int_range(decl))
    if decl.type == "float":
        return st.floats(*_float_range(decl), allow_nan=False, allow_infinity=False).map(lambda x: round(x, 3))
    return st.just(decl.default)


def far(decl):
    """The value of ``values(decl)`` farthest from the default: the end of a range that
    lies farther from it, the last choice (the first when the last is the default), the
    other boolean."""
    if decl.choices:
        return decl.choices[-1] if decl.choices[-1] != decl.default else decl.choices[0]
    if decl.type == "bool":
        return not decl.default
    ranges = {"int": _int_range, "float": _float_range}
    if decl.type not in ranges:
        return decl.default
    low, high = ranges[decl.type](decl)
    return high if high - decl.default >= decl.default - low else low


def nhwc(out):
    """A torch output (a map in NCHW, a vector, or a dict of them) as numpy in Keras's layout."""
    if isinstance(out, dict):
        return {name: nhwc(value) for name, value in out.items()}
    return out.permute(0, 2, 3, 1).numpy() if out.ndim == 4 else out.numpy()


def numpy(out):
    """A Keras output (or a dict of them) as numpy."""
    return {name: np.asarray(value) for name, value in out.items()} if isinstance(out, dict) else np.asarray(out)


def spelled(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


@pytest.fixture(scope="module")
def backends():
    able, _ = porting_backends(["torch", "keras"])
    return able


@pytest.mark.parametrize("spec", BUNDLED, ids=lambda s: s.stem)
def test_create_model_at_any_params_keeps_counts_outputs_and_inference(spec, backends, tmp_path_factory):
    import torch

    default = load(spec)
    sized_by_params = bool(default.net.input_refs)
    base = default if sized_by_params else load(spec, None, SMALL)
    folder = tmp_path_factory.mktemp(spec.stem)
    modules = {name: generated_module(backend, base, folder) for name, backend in backends.items()}
    decls = default.net.param_decls

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
        phases=[Phase.explicit, Phase.generate],
    )  # no shrinking: a failure prints its params
    @given(st.fixed_dictionaries({name: values(decl) for name, decl in decls.items()}))
    @example({name: far(decl) for name, decl in decls.items()})
    def holds(params):
        try:
            analysis = load(spec, {k: spelled(v) for k, v in params.items()}, None if sized_by_params else SMALL)
        except SpecError:
            assume(False)  # a combination the spec refuses (segments that do not divide a layer)
        weights = random_weights(analysis, seed=0)
        h, w, c = analysis.net.input
        x = np.random.default_rng(1).standard_normal((2, h, w, c)).astype(np.float32)
        expected = (analysis.total.trainable, analysis.total.non_trainable)

        torch_backend = backends["torch"]
        model = modules["torch"].create_model(**params).eval()
        assert tuple(torch_backend.count(model)) == expected, f"torch counts at {params}"
        torch_backend.load_weights(model, analysis, weights)
        nchw = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            out = nhwc(model(nchw))
        assert inference_difference(modules["torch"], model, nchw) < EXACT, f"torch for_inference at {params}"

        keras_backend = backends["keras"]
        keras_model = modules["keras"].create_model(**params)
        assert tuple(keras_backend.count(keras_model)) == expected, f"keras counts at {params}"
        keras_backend.load_weights(keras_model, analysis, weights)
        keras_out = numpy(keras_model(x, training=False))
        assert output_difference(keras_out, out).rel < TOLERANCE, f"torch vs keras at {params}"
        keras_fast = numpy(modules["keras"].for_inference(keras_model)(x, training=False))
        assert output_difference(keras_out, keras_fast).rel < INFERENCE_TOLERANCE, f"keras for_inference at {params}"

    holds()
