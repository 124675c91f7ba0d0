"""Spec parameters: declarations, typed values, and the one code path that applies
overrides (from ``-p name=value``, ``--sweep`` or ``create_model(**overrides)``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from archc.ir.ops import Param
from archc.syntax.errors import did_you_mean, show
from archc.syntax.loader import Source

TRUE = {"true", "yes", "on", "1"}
FALSE = {"false", "no", "off", "0"}
TYPE_WORDS = {
    "int": "an integer",
    "float": "a finite number",
    "bool": "true or false",
    "str": "a text",
    "segments": "'depthwise' or a positive integer",
}


def declare(source: Source, raw: Any) -> dict[str, Param]:
    """Parse the ``params:`` section: ``name: default`` or ``name: {default, type, ...}``."""
    decls = {}
    for name, value in source.mapping(raw, ("params",), "param names to defaults").items():
        key = ("params", name)
        if not name.isidentifier():
            raise source.error(key, f"expected a param name made of letters, digits and '_', found {name!r}", at_key=True)
        fields = dict(value) if isinstance(value, dict) else {"default": value}
        if "default" not in fields:
            raise source.error(key, "expected a 'default' in the param's declaration, found none")
        fields.setdefault("type", _infer_type(fields["default"]))
        try:
            decl = Param.model_validate(fields)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = err["loc"][0] if err["loc"] else None
            hint = did_you_mean(str(field), Param.model_fields) if err["type"] == "extra_forbidden" else ""
            raise source.error(key + tuple(err["loc"]), f"expected {_words(err['msg'])}{hint}, found {show(err.get('input'))}") from None
        try:
            check(decl, decl.default)
        except ValueError as exc:
            raise source.error(key + (("default",) if isinstance(value, dict) else ()), str(exc)) from None
        decls[name] = decl
    return decls


def _infer_type(default: Any) -> str:
    for kind, types in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if isinstance(default, types):
            return kind
    return "str"


def _words(msg: str) -> str:
    return msg.replace("Input should be ", "").replace("Value error, ", "").replace("Extra inputs are not permitted", "a known key")


def check(decl: Param, value: Any) -> Any:
    """The value converted to the param's type; ValueError says what is wrong.

    Text (from the command line) is parsed; typed values (from Python) are checked."""
    converted = _convert(decl.type, value)
    if converted is None:
        raise ValueError(f"expected {TYPE_WORDS[decl.type]}, found {show(value)}")
    if decl.choices is not None and converted not in decl.choices:
        options = ", ".join(show(c) for c in decl.choices)
        raise ValueError(f"expected one of {options}, found {show(converted)}")
    if isinstance(converted, (int, float)) and not isinstance(converted, bool):
        if decl.min is not None and converted < decl.min:
            raise ValueError(f"expected at least {decl.min:g}, found {converted}")
        if decl.max is not None and converted > decl.max:
            raise ValueError(f"expected at most {decl.max:g}, found {converted}")
    return converted


def _convert(kind: str, value: Any) -> Any:
    if isinstance(value, str) and kind != "str":
        value = value.strip()
        if kind == "bool":
            low = value.lower()
            return True if low in TRUE else False if low in FALSE else None
        if kind == "segments" and value == "depthwise":
            return value
        try:
            value = int(value) if kind in ("int", "segments") else float(value)
        except ValueError:
            return None
    if kind == "bool":
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if kind == "int":
        return value if isinstance(value, int) else None
    if kind == "float":
        return _finite(value) if isinstance(value, (int, float)) else None
    if kind == "segments":
        return value if value == "depthwise" or (isinstance(value, int) and value >= 1) else None
    return value if isinstance(value, str) else None


def _finite(number: int | float) -> float | None:
    """The number as a float, or None where it has none (nan, inf, a 400-digit int)."""
    try:
        value = float(number)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def parse_assignments(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """['a=1', 'b=x'] -> {'a': '1', 'b': 'x'}; a malformed item raises ValueError."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected -p NAME=VALUE, found {item!r}")
        out[name.strip()] = value
    return out


def resolve(source: Source, decls: dict[str, Param], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults with overrides applied, each override checked against its declaration."""
    values = {name: decl.default for name, decl in decls.items()}
    for name, value in (overrides or {}).items():
        if name not in decls:
            known = ", ".join(decls) or "none"
            raise source.error(
                ("params",), f"expected a declared param (known: {known}), found '{name}'{did_you_mean(name, decls)} (from an override)"
            )
        try:
            values[name] = check(decls[name], value)
        except ValueError as exc:
            raise source.error(("params", name), f"{exc} (from the override {name}={value})", at_key=True) from None
    return values
