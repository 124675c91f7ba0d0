"""One exception type for everything a user can get wrong, carrying where and what."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Location:
    """A place in a spec: the file, 1-based line and column, and the path inside the spec."""

    file: str
    line: int
    col: int
    path: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class SpecError(Exception):
    """A spec (or a command-line value for it) that archc cannot compile.

    Printed by the CLI as ``FILE:LINE:COL: PATH: message`` with exit status 2; never a
    traceback. ``message`` says what was expected and what was found.
    """

    def __init__(self, loc: Location, message: str):
        super().__init__(f"{loc}: {loc.path or '<spec>'}: {message}")
        self.loc = loc
        self.message = message

    def __str__(self) -> str:
        return one_line(f"{self.loc}: {self.loc.path or '<spec>'}: {self.message}")


class UserError(Exception):
    """A bad command-line request that is not about a spec's content (exit status 2)."""

    def __str__(self) -> str:
        return one_line(super().__str__())


def one_line(text: str) -> str:
    """Line breaks and other unprintable characters (from a spec's keys and values) as
    Python escapes: an error message stays one line, whatever the spec holds."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def show(value: object) -> str:
    """A found value as a user wrote it, shortened."""
    text = repr(value) if isinstance(value, str) else _yamlish(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _yamlish(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "[" + ", ".join(_yamlish(v) if not isinstance(v, str) else repr(v) for v in value) + "]"
    return str(value)


def make_out(out: str | Path, command: str = "archc train") -> None:
    """OUT made, with its parents, before anything is written there: a path under a file,
    or where this user may not write, is the user's to change (exit 2), not a bug."""
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        writable = os.access(out, os.W_OK | os.X_OK)
    except OSError as exc:
        raise UserError(f"-o {out}: expected a folder {command} can write, found {exc.strerror or exc}") from None
    if not writable:
        raise UserError(f"-o {out}: expected a folder {command} can write, found one it may not write to")
