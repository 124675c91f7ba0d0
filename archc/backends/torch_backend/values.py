"""Values as the generated code sees them: known at render time (``Lit``) or a name in
the generated code (``Sym``), plus the small algebra of channel counts that block
classes need, since one class serves instances with different arguments."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from archc.codegen import plan as codegen


@dataclass(frozen=True)
class Lit:
    """A value known when rendering (a literal in the spec, or an argument's value)."""

    value: Any


@dataclass(frozen=True)
class Sym:
    """A value the generated code holds in a variable (a param or block argument)."""

    code: str


@dataclass(frozen=True)
class Sum:
    """Channels of concatenated branches: named terms plus a constant."""

    terms: tuple[str, ...]
    const: int


@dataclass(frozen=True)
class Choice:
    """Channels after a layer that a param or argument may switch off."""

    cond: str
    then: Channels
    other: Channels


Value = Lit | Sym
Channels = Lit | Sym | Sum | Choice


ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def string(text: str) -> str:
    """A string literal, ASCII only, in the quotes ruff prefers: double unless the text
    has more double quotes than single ones."""
    quote = "'" if text.count('"') > text.count("'") else '"'
    out = []
    for ch in text:
        if ch in ESCAPES or ch == quote:
            out.append(ESCAPES.get(ch, "\\" + ch))
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            n = ord(ch)
            out.append(f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}")
    return quote + "".join(out) + quote


def literal(value: Any) -> str:
    """codegen.literal, with strings quoted as ruff formats them."""
    if isinstance(value, str):
        return string(value)
    if isinstance(value, (tuple, list)):
        inner = ", ".join(literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return codegen.literal(value)


def code(value: Channels) -> str:
    """Python source for a value."""
    if isinstance(value, Lit):
        return literal(value.value)
    if isinstance(value, Sym):
        return value.code
    if isinstance(value, Sum):
        return " + ".join([*value.terms, *([str(value.const)] if value.const else [])])
    then = f"({code(value.then)})" if isinstance(value.then, Choice) else code(value.then)
    return f"{then} if {value.cond} else {code(value.other)}"


def atom(code: str) -> str:
    """``code`` as an operand: in parentheses unless it is a name, a number or a call."""
    if re.fullmatch(r"[\w.]+", code) or (re.fullmatch(r"[\w.]+\(.*\)", code) and _closes_at_end(code)):
        return code
    return f"({code})"


def _closes_at_end(code: str) -> bool:
    depth = 0
    for pos, ch in enumerate(code):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and ch == ")":
            return pos == len(code) - 1
    return False


def size(value: Value) -> str:
    """A kernel, stride or pool size: ``3`` for (3, 3), ``(1, 7)`` otherwise."""
    if isinstance(value, Lit) and isinstance(value.value, (tuple, list)) and len(set(value.value)) == 1:
        return literal(value.value[0])
    return code(value)


def total(parts: list[Channels]) -> Channels:
    """Channels of a concatenation, constants folded: ``pool_filters + 224``."""
    terms: list[str] = []
    const = 0
    for part in parts:
        if isinstance(part, Lit):
            const += part.value
        elif isinstance(part, Sum):
            terms += part.terms
            const += part.const
        else:
            terms.append(atom(code(part)) if isinstance(part, Sym) else f"({code(part)})")
    return Sum(tuple(terms), const) if terms else Lit(const)


def switch(cond: Value, new: Channels, old: Channels) -> Channels:
    """Channels after a layer that runs when ``cond``: ``4096 if fc_layers else 2048``."""
    if isinstance(cond, Lit):
        return new if cond.value else old
    if new == old:
        return old
    if isinstance(old, Choice) and old.cond == cond.code:
        return Choice(cond.code, new, old.other)
    return Choice(cond.code, new, old)


def assume(ch: Channels, cond: Value) -> Channels:
    """Channels as a layer that exists only when ``cond`` sees them."""
    if isinstance(cond, Sym) and isinstance(ch, Choice) and ch.cond == cond.code:
        return ch.then
    return ch


def torch_momentum(keras: Value) -> Value:
    """Keras keeps ``momentum`` of the running value, torch takes ``momentum`` of the new
    one: 0.99 -> 0.01, computed in decimal so that it prints as 0.01."""
    if isinstance(keras, Sym):
        return Sym(f"1 - {atom(keras.code)}")
    return Lit(float(Decimal(1) - Decimal(repr(keras.value))))


def same_pad(kernel: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """TF 'same' as a fixed (left, right, top, bottom) pad, or None where it depends on
    the input size; the generated ``same_pad`` helper computes the same thing."""
    pad: tuple[int, ...] = ()
    for k, s in zip(kernel, stride, strict=True):
        totals = {max(k - (r or s), 0) for r in range(s)}
        if len(totals) > 1:
            return None
        whole = totals.pop()
        pad = (whole // 2, whole - whole // 2, *pad)
    return pad


def symmetric_padding(kernel: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int] | None:
    """TF 'same' as torch's symmetric ``padding`` (height, width), or None where it is not."""
    pad = same_pad(kernel, stride)
    if pad is None or pad[0] != pad[1] or pad[2] != pad[3]:
        return None
    return (pad[2], pad[0])
