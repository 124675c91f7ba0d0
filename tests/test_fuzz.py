"""A fixed-seed sample of the fuzzer (tests/fuzz.py; `make fuzz` runs 10,000 cases), and
proof that it catches what it is for."""

from __future__ import annotations

import pytest
from fuzz import DefectFound, check_inference, fuzz, seed_specs, vocabulary

SEEDS = seed_specs()


def test_the_bundled_specs_are_the_seeds():
    names = {s.path.name for s in SEEDS}
    assert {"xception.yaml", "inception_v3.yaml", "vgg16.yaml", "resnet50.yaml"} <= names
    assert {"conv", "sepconv", "branches", "residual", "repeat"} <= set(vocabulary(SEEDS))


def test_a_fixed_seed_sample_has_no_defects():
    """Every mutated spec ends in a located one-line error or in code that compiles (and,
    for every 25th accepted one, a torch model with the IR's counts and output shape)."""
    summary = fuzz(250, seed=2026, build_every=25, inference_every=8)
    assert summary.defects == [], "\n".join(f"{d.seed_spec} {d.mutation}: {d.problem}" for d in summary.defects)
    assert summary.cases == 250
    assert summary.accepted >= 25 and summary.errors >= 100  # both endings are exercised
    assert summary.built >= 1 and summary.checked >= 1


SMALL = [s for s in SEEDS if s.path.name == "vgg16.yaml"]


def test_it_reports_a_renderer_that_emits_broken_code(monkeypatch):
    from archc.backends.keras_backend import KerasBackend

    render = KerasBackend.render
    monkeypatch.setattr(KerasBackend, "render", lambda self, analysis: render(self, analysis) + "\nx = nan(\n")
    summary = fuzz(30, seed=1, seeds=SMALL, build_every=0)
    assert summary.accepted == 0 and len(summary.defects) >= 1
    assert all("does not compile" in d.problem for d in summary.defects)


def test_it_reports_a_bare_exception_from_the_loader(monkeypatch):
    def broken(raw, file="<string>"):
        raise KeyError("planted")

    monkeypatch.setattr("archc.syntax.loader.load_text", broken)
    summary = fuzz(10, seed=1, seeds=SMALL, build_every=0)
    assert len(summary.defects) == 10
    assert "KeyError: 'planted'" in summary.defects[0].problem


def test_it_reports_an_error_located_outside_the_file(monkeypatch):
    from archc.syntax.errors import Location, SpecError

    def misplaced(self, overrides):
        raise SpecError(Location(self.source.file, 10_000, 1, "flows"), "expected something, found nothing")

    monkeypatch.setattr("archc.ir.resolve.Resolver.network", misplaced)
    summary = fuzz(10, seed=1, seeds=SMALL, build_every=0)
    assert summary.defects and all("outside the file" in d.problem or "no FILE" in d.problem for d in summary.defects)


@pytest.mark.parametrize("wrong", ["counts", "shape"])
def test_it_reports_a_torch_model_that_differs_from_the_ir(monkeypatch, wrong):
    from archc.backends.torch_backend import TorchBackend

    if wrong == "counts":
        monkeypatch.setattr(TorchBackend, "count", lambda self, model: (1, 2))
    else:
        wrapped = (
            "\n\n_create = create_model\n\n\ndef create_model(**kw):\n    return nn.Sequential(_create(**kw), nn.Unflatten(1, (1, -1)))\n"
        )
        render = TorchBackend.render
        monkeypatch.setattr(TorchBackend, "render", lambda self, a: render(self, a) + wrapped)
    summary = fuzz(20, seed=3, seeds=SMALL, build_every=1, inference_every=0)
    assert summary.defects, "a wrong torch model went unnoticed"
    assert all("torch model" in d.problem for d in summary.defects)


def test_a_spec_added_later_is_fuzzed_unchanged(tmp_path):
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "new.yml").write_text("name: new\ninput: [8, 8, 3]\nflows: {main: [global_avg_pool, dense: 2]}\n")
    seeds = seed_specs(tmp_path)
    assert [s.path.name for s in seeds] == ["new.yml"]
    summary = fuzz(20, seed=4, seeds=seeds, build_every=0)
    assert summary.cases == 20 and summary.defects == []


SWAP = "name: swap\ninput: [8, 8, 4]\nparams: {k: 1}\nflows:\n  main:\n    - avgpool: {pool: 3, stride: 1, padding: same}\n    - conv: {filters: 2, kernel: $k, padding: same}\n"


def test_it_reports_a_for_inference_that_changes_the_outputs_at_other_params(monkeypatch, tmp_path):
    """Issue 24's first defect, planted again: the pool swap taken at k=1 applied at any k."""
    from archc.backends.torch_backend import TorchBackend

    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "swap.yaml").write_text(SWAP)
    unchecked = "\n\ndef _swap_is_exact(pool, conv):\n    return True\n"  # the built-model check, undone
    render = TorchBackend.render
    monkeypatch.setattr(TorchBackend, "render", lambda self, a: render(self, a) + unchecked)
    spec = tmp_path / "specs" / "swap.yaml"
    (tmp_path / "out").mkdir()
    with pytest.raises(DefectFound) as found:  # the check itself, at the param that breaks the swap
        check_inference(spec, {}, {"k": 3}, tmp_path / "out")
    assert found.value.kind == "for_inference", str(found.value)
    assert check_inference(spec, {}, {"k": 1}, tmp_path / "out")  # and not at the param it was taken at
    summary = fuzz(30, seed=1, seeds=seed_specs(tmp_path), build_every=0)  # the sampler reaches the check
    assert summary.creates >= 1 and summary.checked >= 1


def test_lift_makes_a_value_a_param_at_one_node_or_everywhere():
    from fuzz import lift
    from hypothesis import given, settings
    from hypothesis import strategies as st

    tree = {"params": {"k": 1}, "flows": {"main": [{"conv": {"kernel": 1}}, {"conv": {"kernel": 1}}, {"conv": {"kernel": 3}}]}}
    seen = set()

    @settings(max_examples=20, database=None, deadline=None)
    @given(st.data())
    def one(data):
        copy = {"params": dict(tree["params"]), "flows": {"main": [{"conv": dict(e["conv"])} for e in tree["flows"]["main"]]}}
        lifted = {}
        name = lift(data, copy, ("flows", "main", 0, "conv", "kernel"), lifted)
        kernels = [e["conv"]["kernel"] for e in copy["flows"]["main"]]
        assert lifted == {"fuzz1": 1} and copy["params"] == {"k": 1, "fuzz1": 1}
        assert kernels == (["$fuzz1", "$fuzz1", 3] if name.endswith("everywhere") else ["$fuzz1", 1, 3])
        seen.add(name)

    one()
    assert seen == {"fuzz1", "fuzz1 everywhere"}


def test_for_inference_is_held_to_exact_rewrites_not_to_float32_rounding(tmp_path):
    """`make fuzz` reported EfficientNet's for_inference at depth=2.0 (32x32) as changing
    the outputs by 0.017: the model, calibrated on 4 samples, amplifies float32 rounding,
    and channels_last alone moved its outputs that far. In float64 the rewrites agree."""
    from fuzz import ROOT, check_inference

    assert check_inference(ROOT / "examples" / "efficientnet.yaml", {}, {"depth": 2.0}, tmp_path)


def test_the_torch_model_check_takes_a_model_with_several_outputs(tmp_path):
    """resnet50_fpn returns a dict of its pyramid's maps: the build check compared the dict's
    .shape (an AttributeError, two defects in the fixed-seed sample above) and now each map."""
    from fuzz import ROOT, check_torch_model

    assert check_torch_model(ROOT / "examples" / "resnet50_fpn.yaml", {}, tmp_path)
