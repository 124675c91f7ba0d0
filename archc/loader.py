"""Load a YAML spec safely into plain Python values plus a map of source positions.

PyYAML's safe composer gives nodes with marks; we construct the values ourselves so that
every value and every mapping key keeps its line and column, and so that alias bombs,
huge files and absurd nesting are refused before they cost time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import Location, SpecError

MAX_BYTES = 2_000_000
MAX_NODES = 200_000
MAX_DEPTH = 64

Key = tuple[str | int, ...]


@dataclass
class Source:
    """A loaded spec: its values and where each one was written."""

    file: str
    data: Any
    values: dict[Key, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Key, tuple[int, int]] = field(default_factory=dict)
    quoted: set[Key] = field(default_factory=set)  # scalars written in quotes: their text starts one column later

    def loc(self, key: Key, *, at_key: bool = False) -> Location:
        """The location of ``key``; falls back to the nearest written parent."""
        table = self.keys if at_key else self.values
        probe = tuple(key)
        while probe not in table and probe:
            if probe in self.values:
                table = self.values
                break
            probe = probe[:-1]
        line, col = table.get(probe, (1, 1))
        return Location(self.file, line, col, dotted(key))

    def error(self, key: Key, message: str, *, at_key: bool = False) -> SpecError:
        return SpecError(self.loc(key, at_key=at_key), message)


def dotted(key: Key) -> str:
    """('flows', 'middle', 0, 'conv') -> 'flows.middle[0].conv'."""
    out = ""
    for part in key:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def load_file(path: str | Path) -> Source:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(Location(str(path), 1, 1, ""), f"expected a readable spec file, found {exc.strerror.lower()}") from None
    return load_text(raw, str(path))


def load_text(raw: bytes | str, file: str = "<string>") -> Source:
    if len(raw) > MAX_BYTES:
        raise SpecError(Location(file, 1, 1, ""), f"expected a spec of at most {MAX_BYTES} bytes, found {len(raw)}")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SpecError(
                Location(file, 1, 1, ""), f"expected UTF-8 text, found byte {raw[exc.start]:#x} at offset {exc.start}"
            ) from None
    loader = yaml.SafeLoader(raw)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = (exc.problem or "invalid YAML").strip()
        raise SpecError(Location(file, line, col, ""), f"expected valid YAML, found a syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise SpecError(Location(file, 1, 1, ""), f"expected valid YAML, found {exc}") from None
    finally:
        loader.dispose()
    source = Source(file, None)
    if root is None:
        raise SpecError(Location(file, 1, 1, ""), "expected a mapping at the top of the spec, found an empty document")
    source.data = _Builder(source, yaml.SafeLoader("")).build(root, (), 0)
    return source


class _Builder:
    def __init__(self, source: Source, constructor: yaml.SafeLoader):
        self.source = source
        self.constructor = constructor
        self.count = 0

    def build(self, node: yaml.Node, key: Key, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self._at(node, key, f"expected at most {MAX_NODES} YAML values once aliases are expanded, found more (an alias bomb?)")
        if depth > MAX_DEPTH:
            raise self._at(node, key, f"expected nesting at most {MAX_DEPTH} deep, found deeper")
        self.source.values[key] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.ScalarNode) and node.style in ("'", '"'):
            self.source.quoted.add(key)
        if isinstance(node, yaml.MappingNode):
            self.constructor.flatten_mapping(node)
            out: dict[str, Any] = {}
            for knode, vnode in node.value:
                name = self.constructor.construct_object(knode) if isinstance(knode, yaml.ScalarNode) else None
                if not isinstance(name, str):
                    raise self._at(
                        knode, key, f"expected a text key, found {'a ' + type(name).__name__ if name is not None else 'a complex key'}"
                    )
                if name in out:
                    raise self._at(knode, key + (name,), f"expected each key once, found '{name}' again")
                self.source.keys[key + (name,)] = (knode.start_mark.line + 1, knode.start_mark.column + 1)
                out[name] = self.build(vnode, key + (name,), depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, key + (i,), depth + 1) for i, item in enumerate(node.value)]
        try:
            return self.constructor.construct_object(node)
        except yaml.YAMLError as exc:
            raise self._at(node, key, f"expected a plain value, found {getattr(exc, 'problem', exc)}") from None

    def _at(self, node: yaml.Node, key: Key, message: str) -> SpecError:
        return SpecError(Location(self.source.file, node.start_mark.line + 1, node.start_mark.column + 1, dotted(key)), message)
