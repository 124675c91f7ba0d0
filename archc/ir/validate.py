"""Pydantic's validation errors as one located line: the spec key of the offending field
(a field from the ``defaults:`` section points there), the op's known fields, and the
expression a wrong value came from."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from archc.ir.ops import SYSTEM_FIELDS
from archc.syntax import expr
from archc.syntax.errors import SpecError, did_you_mean, show
from archc.syntax.loader import Key, Source
from archc.syntax.loader import dotted as dotted_key


def located(source: Source, key: Key, message: str, *, at_key: bool = False, via: str = "") -> SpecError:
    """An error at ``key``, its path followed by the call sites that led there (``via``)."""
    err = source.error(key, message, at_key=at_key)
    if via:
        err.loc.path += f" (in {via})"
        err.args = (f"{err.loc}: {err.loc.path}: {message}",)
    return err


def validated(
    source: Source,
    cls: type[BaseModel],
    data: Any,
    key: Key,
    *,
    keys: dict[str, Key] | None = None,
    refs: dict | None = None,
    via: str = "",
) -> Any:
    """``cls`` validated from ``data`` written at ``key`` (``keys``: fields written
    elsewhere; ``refs``: the expressions fields were written as)."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise validation_error(source, exc, key, keys or {}, cls, refs, via) from None


def validation_error(
    source: Source, exc: ValidationError, key: Key, keys: dict[str, Key], cls: type, refs: dict | None = None, via: str = ""
) -> SpecError:
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tuple[", "int", "literal[")))]
    field = loc[0] if loc else None
    base = keys.get(field, key + ((field,) if field is not None else ())) if isinstance(field, str) else key
    at = base + tuple(loc[1:])
    owner, name = _owner(cls, loc)
    kind = owner.model_fields["op"].default if "op" in owner.model_fields else dotted_key(key + tuple(loc[:-1]))
    fields = [f for f in owner.model_fields if f not in SYSTEM_FIELDS]
    if err["type"] == "extra_forbidden":
        return located(
            source,
            at,
            f"expected a field of '{kind}' ({', '.join(fields)}), found '{name}'{did_you_mean(str(name), fields)}",
            at_key=True,
            via=via,
        )
    if err["type"] == "missing":
        return located(source, key + tuple(loc[:-1]), f"expected a '{name}' field in '{kind}', found none", via=via)
    found = show(err.get("input"))
    if refs and field in refs:
        found += f" (from {expr.spelled(refs[field])})"
    msg = err["msg"].replace("Input should be ", "").replace("Value should have ", "").replace("Value error, ", "")
    if msg.startswith(("greater", "less")):
        msg = "a value " + msg
    if msg.startswith("a valid tuple"):
        msg = "an integer or a list [height, width] of integers"
    return located(source, at, f"expected {msg}, found {found}", via=via)


def _owner(cls: type, loc: list) -> tuple[type, Any]:
    """The model that holds the field at ``loc`` (descending nested models), and its name."""
    owner = cls
    for part in loc[:-1]:
        field = owner.model_fields.get(part) if isinstance(part, str) else None
        inner = getattr(field, "annotation", None)
        for candidate in getattr(inner, "__args__", ()) or (inner,):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                owner = candidate
                break
        else:
            break
    return owner, (loc[-1] if loc else None)
