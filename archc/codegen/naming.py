"""Turn any name from a spec into a safe Python identifier (as torch.fx's namespace does),
so that nothing a spec says can reach generated code except as an identifier."""

from __future__ import annotations

import builtins
import keyword
import re
import unicodedata

_KEYWORDS = set(keyword.kwlist) | set(keyword.softkwlist)
_RESERVED = _KEYWORDS | set(dir(builtins)) | {"self", "torch", "nn", "F", "keras", "layers", "x", "math", "make_divisible"}


def identifier(name: str, fallback: str = "layer", *, attribute: bool = False) -> str:
    """ASCII letters, digits and '_' only; never a keyword or dunder, and never a builtin
    or a name generated code uses, unless it is only an ``attribute`` / layer name
    (``self.exit`` shadows nothing)."""
    text = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode()
    text = re.sub(r"\W+", "_", text).strip("_")
    text = re.sub(r"_+", "_", text)
    if not text:
        text = fallback
    if text[0].isdigit():
        text = f"{fallback}_{text}"
    if text in (_KEYWORDS if attribute else _RESERVED) or text.startswith("__"):
        text = f"{text}_"
    return text


class Namespace:
    """Hands out unique identifiers: the same name twice gets ``_2``, ``_3`` ..."""

    def __init__(self, taken: set[str] | None = None, *, attribute: bool = False):
        self.taken = set(taken or ())
        self.attribute = attribute

    def create(self, name: str, fallback: str = "layer") -> str:
        base = identifier(name, fallback, attribute=self.attribute)
        candidate, n = base, 1
        while candidate in self.taken:
            n += 1
            candidate = f"{base}_{n}"
        self.taken.add(candidate)
        return candidate


def class_name(name: str) -> str:
    """'sep_bn' -> 'SepBn'; a safe CamelCase identifier."""
    base = identifier(name, "Block")
    camel = "".join(part[:1].upper() + part[1:] for part in base.split("_") if part)
    return identifier(camel or "Block", "Block")
