"""Values as a spec writes them -> values in the IR.

A field whose whole value is ``$name`` takes the value of a block argument or param of
that name (``$$`` escapes a literal ``$``); one written ``${...}`` takes the value of an
expression over them and the repeat index (archc/syntax/expr.py; nothing is run as Python). Each
such field keeps its expression in the node's ``refs``, so that backends can print it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from archc.ir.validate import located
from archc.syntax import expr
from archc.syntax.errors import SpecError, did_you_mean, show
from archc.syntax.loader import Key, Source

INDEX = expr.INDEX


@dataclass(frozen=True)
class Scope:
    """What ``$name`` can mean at a point of the spec, and how we got there."""

    symbols: Mapping[str, Any]
    path: str  # the IR path of the enclosing node
    via: str = ""  # the call sites leading here, for messages
    stack: tuple[str, ...] = ()  # block names being expanded (recursion guard)
    in_repeat: bool = False  # whether INDEX names the index of an enclosing repeat

    def at(self, path: str) -> Scope:
        return replace(self, path=path)


class Substituter:
    """Reads values of one spec; counts the expressions that read a repeat's index, so
    that a repeat knows whether its iterations can differ."""

    def __init__(self, source: Source):
        self.source = source
        self.index_reads = 0  # expressions that read the repeat index, so far

    def error(self, key: Key, message: str, *, at_key: bool = False, via: str = "") -> SpecError:
        return located(self.source, key, message, at_key=at_key, via=via)

    def check_keys(self, mapping: dict, key: Key, allowed: tuple[str, ...] | set[str], what: str) -> None:
        for name in mapping:
            if name not in allowed:
                options = ", ".join(sorted(allowed))
                raise self.error(key + (name,), f"expected a {what} ({options}), found '{name}'{did_you_mean(name, allowed)}", at_key=True)

    def values(self, fields: dict[str, Any], key: Key, scope: Scope, refs: dict[str, str], reject: Callable[[str], str]) -> dict[str, Any]:
        """Each of ``fields`` substituted, its expression recorded in ``refs`` (replacing
        one a default wrote); ``reject(name)`` is the message for a name that the node
        does not take ('' where it takes it)."""
        out = {}
        for name, value in fields.items():
            problem = reject(name)
            if problem:
                raise self.error(key + (name,), problem, at_key=True, via=scope.via)
            out[name], ref = self.substitute(value, key + (name,), scope)
            if ref:
                refs[name] = ref
            else:
                refs.pop(name, None)
        return out

    def substitute(self, value: Any, key: Key, scope: Scope) -> tuple[Any, str | None]:
        """``$name`` -> (its value, 'name'); ``${...}`` -> (its value, the expression);
        anything else -> (value, None)."""
        if isinstance(value, str) and value.startswith("${"):
            return self.expression(value, key, scope)
        if isinstance(value, str) and value.startswith("$"):
            if value.startswith("$$"):
                return value[1:], None
            name = value[1:]
            if scope.in_repeat and name == INDEX:
                self.index_reads += 1
            if name not in scope.symbols:
                raise self.error(
                    key, f"expected a param or block argument, found '{value}'{did_you_mean(name, scope.symbols)}", via=scope.via
                )
            return scope.symbols[name], name
        if isinstance(value, (list, dict)):
            items = value if isinstance(value, list) else value.values()
            if any(isinstance(v, str) and v.startswith("$") and not v.startswith("$$") for v in items):
                if key == ("input",):
                    raise self.error(key, f"expected [height, width, channels], found {show(value)}", via=scope.via)
                raise self.error(key, "expected a $reference as a whole field value, found one inside a list or mapping", via=scope.via)
        return value, None

    def expression(self, value: str, key: Key, scope: Scope) -> tuple[Any, str]:
        """The value of ``${...}``; an error points at the offending part of the text."""
        text = value[2:-1] if value.endswith("}") else None
        try:
            if text is None:
                raise expr.ExprError("expected '}' at the end of the expression, found none", len(value) - 2)
            tree = expr.parse(text)
            if scope.in_repeat and INDEX in expr.names(tree):
                self.index_reads += 1
            result = expr.evaluate(tree, scope.symbols)
        except expr.ExprError as exc:
            loc = self.source.loc(key)
            start = self.source.text_start(key)
            if start is not None:  # else the value's start: its text is not its source
                loc.col += 2 + exc.start + start
            if scope.via:
                loc.path += f" (in {scope.via})"
            raise SpecError(loc, exc.message) from None
        return result, text.strip()
