"""The statement plan of a generated ``forward``: what it computes, as records that the
renderer decides and :func:`format_statements` only prints.

Every layer is one assignment ``target = owner.attribute(source)`` over named locals
(``x``, a branch's output, a saved shortcut), so that giving any layer a named input or
output is a change of names here, not of the templates. A combinator is a few more
statements: a residual saves its input and adds it back, branches concatenate their
outputs, a gate multiplies, a repeat is a ``for`` over its runs where its runs are not
one module each, and a param that switches a combinator off is an ``if``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .layout import INDENT, Expr, lines


@dataclass(frozen=True)
class Assign:
    """``target = value`` (``sign`` '+=' adds into a fresh tensor, as timm's ``x += shortcut``)."""

    target: str
    value: Expr
    sign: str = "="


@dataclass(frozen=True)
class If:
    """``if test:`` and its statements: a combinator that a param switches off."""

    test: str
    body: tuple[Statement, ...]


@dataclass(frozen=True)
class For:
    """``for var in iterable:``: the runs of a repeat whose runs are not one module each."""

    var: str
    iterable: str
    body: tuple[Statement, ...]


@dataclass(frozen=True)
class Return:
    value: Expr


Statement = Assign | If | For | Return


def apply(owner: str, attribute: str, source: str) -> str:
    """One layer applied: ``self.conv1(x)``."""
    return f"{owner}.{attribute}({source})"


def returning(statements: list[Statement], data: str) -> list[Statement]:
    """The statements of a ``forward`` that returns ``data``: a last plain assignment to
    it becomes the return (``return self.bn1(x)``), as one writes it by hand."""
    if statements and isinstance(statements[-1], Return):
        return statements
    if statements and isinstance(statements[-1], Assign) and statements[-1].target == data and statements[-1].sign == "=":
        return [*statements[:-1], Return(statements[-1].value)]
    return [*statements, Return(data)]


def format_statements(statements: list[Statement] | tuple[Statement, ...], depth: int) -> list[str]:
    """Source lines, each expression laid out as :mod:`.layout` does (ruff-stable)."""
    out: list[str] = []
    indent = INDENT * depth
    for s in statements:
        if isinstance(s, Assign):
            out += lines(s.value, depth, f"{s.target} {s.sign} ")
        elif isinstance(s, Return):
            out += lines(s.value, depth, "return ")
        elif isinstance(s, If):
            out += [f"{indent}if {s.test}:", *format_statements(s.body, depth + 1)]
        else:
            out += [f"{indent}for {s.var} in {s.iterable}:", *format_statements(s.body, depth + 1)]
    return out
