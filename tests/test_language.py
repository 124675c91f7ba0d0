"""The spec language: params, substitution, blocks, when, branches, repeats, shorthand."""

from __future__ import annotations

import textwrap

import pytest

from archc.api import load
from archc.ir.ops import Branches, Call, Conv, Repeat, walk
from archc.syntax.errors import SpecError


def spec(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_params_override_and_refs_are_recorded(tmp_path):
    path = spec(
        tmp_path,
        """
        name: t
        input: [8, 8, 3]
        params:
          width: 4
        flows:
          main:
            - conv: {filters: $width, kernel: 3, padding: same}
    """,
    )
    assert load(path).output == (8, 8, 4)
    analysis = load(path, {"width": "6"})
    conv = analysis.net.flows["main"][0]
    assert isinstance(conv, Conv) and conv.filters == 6 and conv.refs == {"filters": "width"}
    assert analysis.net.params == {"width": 6}


def test_typed_overrides_from_python_are_checked(tmp_path):
    path = spec(
        tmp_path,
        """
        name: t
        input: [8, 8, 3]
        params:
          width: {default: 4, min: 2}
        flows:
          main: [conv: {filters: $width, kernel: 1}]
    """,
    )
    assert load(path, {"width": 5}).output == (8, 8, 5)
    for bad in (1, True, 2.5, "x"):
        with pytest.raises(SpecError):
            load(path, {"width": bad})


def test_dollar_dollar_escapes_and_nested_refs_are_refused(tmp_path):
    path = spec(
        tmp_path,
        """
        name: t
        input: [8, 8, 3]
        params: {k: 3}
        flows:
          main: [conv: {filters: 2, kernel: [$k, 1]}]
    """,
    )
    with pytest.raises(SpecError, match="whole field value"):
        load(path)


def test_blocks_when_defaults_and_auto_names(tmp_path):
    path = spec(
        tmp_path,
        """
        name: t
        input: [16, 16, 3]
        params:
          extra: false
        defaults:
          conv: {kernel: 3, padding: same, bias: false}
        blocks:
          unit:
            args: {filters: null, relu: true}
            body:
              - conv: {filters: $filters}
              - bn: {scale: false}
              - act: {kind: relu, when: $relu}
        flows:
          main:
            - unit: {filters: 8}
            - unit: {filters: 8, relu: false}
            - unit: {filters: 8, when: $extra}
    """,
    )
    analysis = load(path)
    calls = analysis.net.flows["main"]
    assert [c.name for c in calls] == ["unit1", "unit2", "unit3"]
    assert all(isinstance(c, Call) for c in calls)
    assert calls[1].body[2].when is False and calls[1].body[2].refs == {"when": "relu"}
    assert calls[2].when is False and calls[2].refs == {"when": "extra"}
    assert analysis.total.trainable == (27 * 8 + 8) + (72 * 8 + 8)  # conv + BN beta, twice
    assert load(path, {"extra": "yes"}).total.trainable == (27 * 8 + 8) + 2 * (72 * 8 + 8)


def test_branches_named_paths_and_shorthand(tmp_path):
    path = spec(
        tmp_path,
        """
        name: t
        input: [9, 9, 4]
        flows:
          main:
            - branches:
                a: [conv: {filters: 2, kernel: 1}]
                b: [maxpool: {pool: 3, stride: 1, padding: same}]
            - global_avg_pool
            - dropout: 0.5
            - dense: 3
            - act: softmax
    """,
    )
    analysis = load(path)
    node = analysis.net.flows["main"][0]
    assert isinstance(node, Branches) and list(node.paths) == ["a", "b"]
    assert analysis.shapes[node.path][1] == (9, 9, 6)
    assert analysis.output == (3,)


def test_repeat_keeps_count_not_copies(tmp_path):
    path = spec(
        tmp_path,
        """
        name: t
        input: [4, 4, 8]
        flows:
          main:
            repeat: 1000
            body: [conv: {filters: 8, kernel: 1}, bn]
    """,
    )
    analysis = load(path)
    (rep,) = analysis.net.flows["main"]
    assert isinstance(rep, Repeat) and rep.times == 1000
    assert len(list(walk([rep]))) == 3
    assert analysis.total.trainable == 1000 * (64 + 8 + 16)


def test_names_must_be_unique_in_a_list(tmp_path):
    path = spec(
        tmp_path,
        """
        name: t
        input: [4, 4, 8]
        flows:
          main: [bn: {name: x}, bn: {name: x}]
    """,
    )
    with pytest.raises(SpecError, match="unique layer names"):
        load(path)


def test_flatten_then_dense(tmp_path):
    path = spec(
        tmp_path,
        """
        name: t
        input: [4, 5, 3]
        flows:
          main: [flatten, dense: {units: 7, bias: false}]
    """,
    )
    assert load(path).total.trainable == 60 * 7
