"""No value reaches generated code without a valid literal, and no internal error reaches
the user as a traceback."""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from archc.api import load
from archc.backends.torch_backend import values
from archc.cli import main
from archc.codegen import plan as codegen
from archc.codegen.backend import get

ROOT = Path(__file__).parents[1]
SPEC = ROOT / "examples" / "vgg16.yaml"

plain = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text())
anything = st.recursive(plain, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=2), max_leaves=8)


def _as_tuples(value):
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _same(a, b) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("emit", [codegen.literal, values.literal], ids=["keras (codegen.literal)", "torch (values.literal)"])
@settings(max_examples=300, deadline=None)
@given(value=anything)
def test_a_literal_reads_back_as_its_value_or_is_refused(emit, value):
    """Each backend's one value emitter: valid Python for the very value, or TypeError."""
    try:
        text = emit(value)
    except TypeError:
        has_no_literal = repr(value)
        assert "nan" in has_no_literal or "inf" in has_no_literal or isinstance(value, dict) or "{" in has_no_literal
        return
    assert _same(ast.literal_eval(text), _as_tuples(value))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("backend", ["torch", "keras"])
def test_renderers_refuse_a_non_finite_value(backend, bad):
    """The loader refuses .nan and .inf; should one reach a renderer anyway (an IR built
    in Python), it stops there instead of writing a module that fails at import."""
    analysis = load(ROOT / "specs" / "xception.yaml")
    net = analysis.net.model_copy(update={"params": {**analysis.net.params, "dropout": bad}})
    with pytest.raises(TypeError, match="no Python literal"):
        get(backend).render(dataclasses.replace(analysis, net=net))


@pytest.mark.parametrize(
    "command", [["params"], ["check"], ["build", "-o", "{tmp}"], ["variants", "--sweep", "classes=2,3", "-o", "{tmp}"]]
)
def test_an_internal_error_is_one_line_naming_the_spec_and_exit_3(command, monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr("archc.passes.analysis.infer_graph", broken)
    result = CliRunner().invoke(main, [command[0], str(SPEC), *(a.replace("{tmp}", str(tmp_path)) for a in command[1:])])
    assert result.exit_code == 3
    assert result.output == f"error: {SPEC}: a bug in archc, not in the spec (ZeroDivisionError: planted); please report it with the spec\n"


def test_an_internal_error_in_verify_exits_3(monkeypatch):
    def broken(*args, **kwargs):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr("archc.ir.resolve.Resolver.network", broken)
    result = CliRunner().invoke(main, ["verify", str(SPEC)])
    assert (result.exit_code, result.output.count("\n")) == (3, 1)
    assert "RecursionError" in result.output and "Traceback" not in result.output


def test_user_errors_still_exit_2(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\ninput: [8, 8, 3]\nflows: {main: [!!python/object:os.system echo]}\n")
    result = CliRunner().invoke(main, ["params", str(spec)])
    assert result.exit_code == 2
    assert (
        result.output == f"error: {spec}:3:16: flows.main[0]: expected plain YAML without tags, found the tag '!!python/object:os.system'\n"
    )


def test_names_that_look_like_rich_markup_are_printed_as_written(tmp_path):
    spec = tmp_path / "markup.yaml"
    spec.write_text("name: '[/bold]'\ninput: [8, 8, 3]\nflows:\n  '[red]':\n    - global_avg_pool: {name: '[/]'}\n")
    result = CliRunner().invoke(main, ["params", str(spec)])
    assert result.exit_code == 0, result.output
    assert "[/bold]" in result.output and "[red]" in result.output and "[/]" in result.output
