"""A layer, repeat, block call or combinator written with ``when: false`` is left out of
the network in every position of every bundled spec: each such spec ends in generated
code that compiles (or a located error where leaving it out breaks the network), never in
an internal error. Found by an outside fuzzer: a statically false repeat made ``archc
build`` fail with a KeyError (the fold tables listed layers inside it)."""

from __future__ import annotations

import pytest
import yaml
from fuzz import layer_entries, run_case, seed_specs, switch_off

SEEDS = seed_specs()


@pytest.mark.parametrize("seed", SEEDS, ids=[s.path.name for s in SEEDS])
def test_every_layer_switched_off_builds_or_is_refused_with_a_located_error(seed, tmp_path):
    entries = layer_entries(seed.tree)
    assert len(entries) >= 5, "the walk finds the spec's layers"
    outcomes = []
    for i, where in enumerate(entries):
        path = tmp_path / f"{seed.path.stem}_{i}.yaml"
        path.write_text(yaml.safe_dump(switch_off(seed.tree, where), sort_keys=False), encoding="utf-8")
        outcomes.append(run_case(path, {}, tmp_path / f"out{i}"))  # raises on any defect
    assert "accepted" in outcomes  # most switched-off layers leave a valid network


def test_the_efficientnet_stage_repeat_off_builds_with_the_irs_counts(tmp_path):
    efficientnet = next(s for s in SEEDS if s.path.name == "efficientnet.yaml")
    assert "repeat" in efficientnet.tree["blocks"]["stage"]["body"][1]
    path = tmp_path / "efficientnet.yaml"
    path.write_text(yaml.safe_dump(switch_off(efficientnet.tree, ("blocks", "stage", "body", 1)), sort_keys=False), encoding="utf-8")
    assert run_case(path, {}, tmp_path / "out", build_model=True) == "built"  # rendered by both backends; the torch model has the IR's counts
