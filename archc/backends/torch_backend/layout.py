"""Lay out generated expressions as Python source lines that ``ruff format`` leaves alone.

An expression is kept on one line when it fits in ``WIDTH`` columns; otherwise each
bracket is exploded one item per line with a trailing comma (ruff's "magic trailing
comma"), which ruff keeps exploded at any line length. Output laid out for 88 columns
therefore stays formatted under ruff's default (88) and under this repo's 140.
"""

from __future__ import annotations

from dataclasses import dataclass

WIDTH = 88
INDENT = "    "


@dataclass(frozen=True)
class Call:
    """``func(args)``; an arg is an expression or a (keyword, expression) pair. With
    ``brackets`` '[]' and no ``func`` a list; with '{}' a dict, whose pairs are
    (quoted key, expression)."""

    func: str
    args: tuple[Arg, ...] = ()
    brackets: str = "()"


@dataclass(frozen=True)
class Each:
    """``*(item for var in iterable)`` (``star``) or ``[item for var in iterable]``: one
    module per run of a repeat."""

    item: Expr
    var: str
    iterable: str
    star: bool = True


@dataclass(frozen=True)
class IfElse:
    """``then if cond else other``, for a layer that a param or argument switches off."""

    then: Expr
    cond: str
    other: Expr


Expr = str | Call | IfElse | Each
Arg = Expr | tuple[str, Expr]


def flat(expr: Expr) -> str:
    """The expression on one line."""
    if isinstance(expr, str):
        return expr
    if isinstance(expr, Call):
        open_, close = expr.brackets
        return f"{expr.func}{open_}{', '.join(_flat_arg(a, expr.brackets) for a in expr.args)}{close}"
    if isinstance(expr, Each):
        open_, close = _each_brackets(expr)
        return f"{open_}{flat(expr.item)} for {expr.var} in {expr.iterable}{close}"
    if isinstance(expr, IfElse):
        return f"{flat(expr.then)} if {expr.cond} else {flat(expr.other)}"
    raise TypeError(f"not an expression: {expr!r}")


def _each_brackets(expr: Each) -> tuple[str, str]:
    return ("*(", ")") if expr.star else ("[", "]")


def _key(key: str, brackets: str) -> str:
    return f"{key}: " if brackets == "{}" else f"{key}="


def _flat_arg(arg: Arg, brackets: str = "()") -> str:
    return f"{_key(arg[0], brackets)}{flat(arg[1])}" if isinstance(arg, tuple) else flat(arg)


def lines(expr: Expr, depth: int, prefix: str = "", suffix: str = "") -> list[str]:
    """``prefix + expr + suffix`` at ``depth`` indents, exploded where it does not fit."""
    indent = INDENT * depth
    one = f"{indent}{prefix}{flat(expr)}{suffix}"
    if len(one) <= WIDTH or isinstance(expr, str):
        return [one]
    if isinstance(expr, Call):
        return _explode(expr, depth, prefix, suffix)
    if isinstance(expr, Each):
        return _each(expr, depth, prefix, suffix)
    return _conditional(expr, depth, prefix, suffix)


def _conditional(expr: IfElse, depth: int, prefix: str, suffix: str) -> list[str]:
    """Ruff puts ``if`` and ``else`` on lines of their own once ``then`` spans several;
    ``then`` is exploded so that the layout does not depend on the width. (A ``then``
    without arguments cannot be: names long enough to need that are laid out for 88.)"""
    indent = INDENT * depth
    head = _explode(expr.then, depth, prefix, "") if isinstance(expr.then, Call) else [f"{indent}{prefix}{flat(expr.then)}"]
    return [*head, f"{indent}if {expr.cond}", f"{indent}else {flat(expr.other)}{suffix}"]


def _each(expr: Each, depth: int, prefix: str, suffix: str) -> list[str]:
    """The item on lines of its own, exploded (a comprehension has no trailing comma to
    keep it apart, so an item that fits would make the layout depend on the width)."""
    indent = INDENT * depth
    open_, close = _each_brackets(expr)
    item = _explode(expr.item, depth + 1, "", "") if isinstance(expr.item, Call) else lines(expr.item, depth + 1)
    return [f"{indent}{prefix}{open_}", *item, f"{indent}{INDENT}for {expr.var} in {expr.iterable}", f"{indent}{close}{suffix}"]


def _explode(call: Call, depth: int, prefix: str, suffix: str) -> list[str]:
    indent = INDENT * depth
    if not call.args:
        return [f"{indent}{prefix}{flat(call)}{suffix}"]
    open_, close = call.brackets
    out = [f"{indent}{prefix}{call.func}{open_}"]
    for arg in call.args:
        key, value = arg if isinstance(arg, tuple) else ("", arg)
        out += lines(value, depth + 1, _key(key, call.brackets) if key else "", ",")
    return [*out, f"{indent}{close}{suffix}"]


def assign(target: str, expr: Expr, depth: int) -> list[str]:
    """``target = expr``; a conditional that does not fit goes in parentheses, as ruff does."""
    one = lines(expr, depth, f"{target} = ")
    if not isinstance(expr, IfElse) or len(one) == 1:
        return one
    inner = _conditional(expr, depth + 1, "", "") if isinstance(expr.then, Call) and expr.then.args else lines(expr, depth + 1)
    return [f"{INDENT * depth}{target} = (", *inner, f"{INDENT * depth})"]


def signature(name: str, params: list[str], depth: int, returns: str = "") -> list[str]:
    """``def name(params) -> returns:``, one parameter per line where it does not fit."""
    arrow = f" -> {returns}" if returns else ""
    return lines(Call(f"def {name}", tuple(params)), depth, "", f"{arrow}:")
