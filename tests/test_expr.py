"""Spec expressions ``${...}``: the grammar, its values, its errors, and the code the
backends print for it (which must compute what archc computed)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archc.api import load
from archc.ir.resolve import compile_spec
from archc.syntax import expr
from archc.syntax.errors import SpecError
from archc.syntax.loader import load_text

ROOT = Path(__file__).parents[1]


def value(text: str, **symbols):
    return expr.evaluate(expr.parse(text), symbols)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 // 2 + 7 % 2", 4),
        ("-7 // 2", -4),  # floor division, as in Python
        ("7 / 2", 3.5),
        ("10 - 4 - 3", 3),  # left-associative
        ("-(2 - 5)", 3),
        ("2 < 3 and not 3 < 2", True),
        ("1 if 2 > 3 else 4 if true else 5", 4),
        ("ceil(2.2) + floor(2.8) + round(2.5) + int(-2.7)", 3 + 2 + 2 - 2),
        ("max(1, 5, 3) - min(4, 2) + abs(-1)", 4),
        ("make_divisible(32 * 0.35, 8)", 16),
        ("make_divisible(1280 * 1.4, 8)", 1792),
        ("1e-3 * 1000", 1.0),
    ],
)
def test_values(text, expected):
    result = value(text)
    assert result == expected and type(result) is type(expected)


def test_names_are_params_arguments_or_the_index():
    assert value("make_divisible(filters * width, 8)", filters=40, width=1.1) == 48
    assert value("0.2 * i / n", i=3, n=6) == pytest.approx(0.1)


@pytest.mark.parametrize("alpha", [0.35, 0.5, 0.75, 1.0, 1.3, 1.4])
@pytest.mark.parametrize("filters", [8, 16, 24, 32, 40, 80, 112, 192, 320, 1280])
def test_make_divisible_is_keras_applications_rounding(alpha, filters):
    keras_mobilenet_v2 = pytest.importorskip("keras.src.applications.mobilenet_v2")
    assert expr.make_divisible(filters * alpha, 8) == keras_mobilenet_v2._make_divisible(filters * alpha, 8)


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("1 +", "expected a number, a name or '(', found the end of the expression", 3),
        ("(1 + 2", "expected ')', found the end of the expression", 6),
        ("1 2", "expected an operator or the end of the expression, found '2'", 2),
        ("a ** 2", "expected a number, a name or '(', found '*'", 3),
        ("x; y", "expected a number, a name, an operator or a parenthesis, found ';'", 1),
        (
            "sqrt(2)",
            "expected a function (min, max, abs, int, round, ceil, floor, make_divisible, height, width, channels), found 'sqrt'",
            0,
        ),
        ("flor(2.5)", "(did you mean 'floor'?)", 0),
        ("ceil(1, 2)", "expected 1 arguments to ceil(), found 2", 0),
        ("1 < 2 < 3", "expected one comparison (join two with 'and'), found a second '<'", 6),
        ("", "expected an expression inside ${...}, found nothing", 0),
    ],
)
def test_syntax_errors_point_into_the_text(text, message, column):
    with pytest.raises(expr.ExprError) as info:
        expr.parse(text)
    assert message in info.value.message
    assert info.value.start == column


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("1 + widht", "expected a param, block argument or repeat index, found 'widht' (did you mean 'width'?)", 4),
        ("3 * (2 // (width - 1.0))", "expected a non-zero divisor, found 0.0 (in '//')", 11),
        ("1 % 0", "expected a non-zero divisor, found 0 (in '%')", 4),
        ("2 * act", "expected a number, found 'relu' (from act)", 4),
        ("1 if width else 2", "expected true or false, found 1.0 (from width)", 5),
        ("make_divisible(width, 2.5)", "expected a positive integer as argument 2 of make_divisible(), found 2.5", 22),
        ("1e300 * 1e300", "expected a finite result, found inf", 0),
        ("ceil(1e300 * 1e300)", "expected a finite result, found inf", 5),
    ],
)
def test_evaluation_errors_point_at_the_part(text, message, column):
    with pytest.raises(expr.ExprError) as info:
        value(text, width=1.0, act="relu")
    assert info.value.message == message
    assert info.value.start == column


# -- printing: the generated code computes what archc computed --------------------------------

NAMES = ("width", "depth", "i")
numbers = st.one_of(st.integers(0, 50), st.sampled_from([0.5, 1.25, 2.0, 0.1]))


def extend(sub):
    return st.one_of(
        st.builds(expr.Unary, st.just("-"), sub, st.just(0)),
        st.builds(expr.Binary, st.sampled_from(["+", "-", "*", "/", "//", "%"]), sub, sub, st.just(0)),
        st.builds(expr.Cond, sub, st.builds(expr.Binary, st.sampled_from(["<", ">=", "==", "!="]), sub, sub, st.just(0)), sub, st.just(0)),
        st.builds(lambda f, args: expr.Func(f, tuple(args), 0), st.sampled_from(["min", "max"]), st.lists(sub, min_size=2, max_size=3)),
        st.builds(lambda f, a: expr.Func(f, (a,), 0), st.sampled_from(["abs", "ceil", "floor", "round", "int"]), sub),
    )


leaves = st.one_of(numbers.map(lambda n: expr.Num(n, 0)), st.sampled_from(NAMES).map(lambda n: expr.Name(n, 0)))
trees = st.recursive(leaves, extend, max_leaves=12)


def strip(tree):
    """The tree without positions, for comparing parses."""
    if isinstance(tree, expr.Num):
        return ("num", tree.value)
    if isinstance(tree, expr.Name):
        return ("name", tree.name)
    if isinstance(tree, expr.Unary):
        return (tree.op, strip(tree.operand))
    if isinstance(tree, expr.Binary):
        return (tree.op, strip(tree.left), strip(tree.right))
    if isinstance(tree, expr.Cond):
        return ("if", strip(tree.then), strip(tree.test), strip(tree.other))
    return (tree.name, *map(strip, tree.args))


@settings(max_examples=200, deadline=None)
@given(trees, st.sampled_from([0.5, 1.0, 1.4]), st.sampled_from([1.0, 2.2]), st.integers(0, 5))
def test_printed_code_parses_back_and_python_agrees(tree, width, depth, i):
    """Printing keeps the tree (parentheses where precedence needs them), and Python
    running the printed code gets archc's value, or archc refuses the expression."""
    text = expr.to_python(tree, lambda n: n)
    assert strip(expr.parse(text.replace("math.", ""))) == strip(tree)
    symbols = {"width": width, "depth": depth, "i": i}
    try:
        ours = expr.evaluate(tree, symbols)
    except expr.ExprError:
        return
    namespace = {"math": math, **symbols}
    theirs = eval(compile(ast.parse(text, mode="eval"), "<expr>", "eval"), namespace)  # the test's oracle is Python itself
    assert ours == theirs and type(ours) is type(theirs)


@given(st.text(max_size=40))
def test_any_text_parses_or_gets_an_expr_error(text):
    try:
        expr.parse(text)
    except expr.ExprError as exc:
        assert 0 <= exc.start <= len(text)


def test_no_eval_or_exec_in_archc():
    for path in (ROOT / "archc").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name):
                assert node.id not in ("eval", "exec"), f"{path}:{node.lineno}"


# -- in specs ---------------------------------------------------------------------------------

SPEC = """\
name: t
input: [$res, $res, 3]
params:
  width: 1.0
  res: 32
  depth: 1.0
flows:
  main:
    - conv: {filters: "${make_divisible(32 * width, 8)}", kernel: 3}
    - repeat:
        times: ${ceil(2 * depth)}
        body:
          - conv: {filters: "${make_divisible(32 * width, 8)}", kernel: 1}
          - dropout: ${0.2 * i / 4}
    - global_avg_pool
"""


def test_fields_repeat_counts_and_input_from_expressions():
    net = compile_spec(load_text(SPEC, "t.yaml"), {"width": "1.4", "depth": "1.6", "res": "40"})
    conv, repeat = net.flows["main"][:2]
    assert (conv.filters, repeat.times, net.input) == (48, 4, (40, 40, 3))
    assert conv.refs == {"filters": "make_divisible(32 * width, 8)"}
    assert repeat.refs == {"times": "ceil(2 * depth)"}
    assert repeat.body[1].rate == 0.0 and repeat.body[1].refs == {"rate": "0.2 * i / 4"}  # iteration 0
    assert net.input_refs == {0: "res", 1: "res"}


def test_iterations_may_differ_only_in_non_integer_numbers():
    spec = SPEC.replace("kernel: 1}", 'kernel: "${1 + 2 * i}"}')
    with pytest.raises(SpecError) as info:
        compile_spec(load_text(spec, "t.yaml"))
    assert str(info.value) == (
        "t.yaml:13:13: flows.main[1].repeat.body[0].conv: expected 'kernel' to be the same in every iteration (only "
        "non-integer numbers such as rates may depend on the repeat index), found (1, 1) at i=0 and (3, 3) at i=1"
    )


def test_a_huge_repeat_that_reads_its_index_is_refused_before_the_work():
    spec = SPEC.replace("times: ${ceil(2 * depth)}", "times: 10000").replace("- dropout: ${0.2 * i / 4}", "- dropout: ${0.2 * i / 40000}")
    spec = spec.replace("body:\n          - conv:", "body:\n" + "          - bn\n" * 9 + "          - conv:")
    with pytest.raises(SpecError) as info:
        compile_spec(load_text(spec, "t.yaml"))
    assert "expected a repeat whose body reads the index i to have at most 100,000 layers in all" in str(info.value)
    assert "found 10000 x 11" in str(info.value)


def test_the_index_is_not_seen_inside_a_block_body():
    spec = SPEC.replace("flows:", "blocks:\n  b:\n    body: [dropout: $i]\nflows:").replace("- dropout: ${0.2 * i / 4}", "- b")
    with pytest.raises(SpecError) as info:
        compile_spec(load_text(spec, "t.yaml"))
    assert "expected a param or block argument, found '$i'" in str(info.value)


def test_a_quoted_expression_is_located_inside_its_quotes():
    spec = SPEC.replace('make_divisible(32 * width, 8)}", kernel: 3', 'make_divisible(32 * widht, 8)}", kernel: 3')
    with pytest.raises(SpecError) as info:
        compile_spec(load_text(spec, "t.yaml"))
    line = spec.splitlines()[8]
    assert info.value.loc.line == 9 and line[info.value.loc.col - 1 :].startswith("widht")


def test_generated_code_keeps_param_expressions(tmp_path):
    """create_model(width=..., depth=...) builds what archc computes for those params."""
    from archc.backends.torch_backend.render import render

    torch = pytest.importorskip("torch")
    path = tmp_path / "t.yaml"
    path.write_text(SPEC)
    source = render(load(str(path)))
    assert "make_divisible(32 * width, 8)" in source and "math.ceil(2 * depth)" in source
    namespace: dict = {}
    exec(compile(source, "t_torch.py", "exec"), namespace)  # the test runs the generated module
    for overrides in ({}, {"width": 1.4, "depth": 1.6}):
        model = namespace["create_model"](**overrides)
        expected = load(str(path), overrides).total.trainable
        assert sum(p.numel() for p in model.parameters()) == expected
        rates = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
        assert rates == [0.2 * i / 4 for i in range(len(rates))]


def test_names_may_be_any_python_identifier(tmp_path):
    """A param may be called what Python allows (`größe`, a fullwidth letter): its $ref
    and its expressions resolve, render and compile in both backends (found by make fuzz)."""
    from archc.api import build

    spec = SPEC.replace("width", "größe").replace("depth", "ｄepth")
    path = tmp_path / "t.yaml"
    path.write_text(spec)
    assert load(str(path), {"größe": "1.4"}).total.trainable == load_text_total(SPEC, {"width": "1.4"})
    for file in build(str(path), ["torch", "keras"], tmp_path / "out"):
        compile(file.read_text(), str(file), "exec")
    with pytest.raises(expr.ExprError, match="expected a name, found '½'"):
        expr.parse("1 + ½")


def load_text_total(text: str, overrides: dict) -> int:
    from archc.passes.analysis import analyse

    return analyse(compile_spec(load_text(text, "t.yaml"), overrides)).total.trainable
