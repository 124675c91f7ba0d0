"""Load a YAML spec safely into plain Python values plus a map of source positions.

PyYAML's safe composer gives nodes with marks; we construct the values ourselves so that
every value and every mapping key keeps its line and column, and so that alias bombs,
huge files and absurd nesting are refused before they cost time. A spec is plain data:
YAML tags (on any node, keys too) and numbers that are not finite are refused where they
stand, so nothing later has to expect them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from archc.syntax.errors import Location, SpecError, show

MAX_BYTES = 2_000_000
MAX_NODES = 200_000
MAX_DEPTH = 64

LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")  # what PyYAML counts as one
Key = tuple[str | int, ...]


@dataclass
class Source:
    """A loaded spec: its values and where each one was written."""

    file: str
    data: Any
    values: dict[Key, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Key, tuple[int, int]] = field(default_factory=dict)
    # scalars whose text stands verbatim on one line (no folding, no escapes): how many
    # columns after the value's start the text begins (1 behind a quote), so that an error
    # inside the text (an expression's offending part) can point at its column
    verbatim: dict[Key, int] = field(default_factory=dict)

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

    def text_start(self, key: Key) -> int | None:
        """Columns from the location of ``key`` (as :meth:`loc` finds it) to the start of
        its text, where that text stands verbatim on one line; None where it does not."""
        probe = tuple(key)
        while probe and probe not in self.values:
            probe = probe[:-1]
        return self.verbatim.get(probe)

    def error(self, key: Key, message: str, *, at_key: bool = False) -> SpecError:
        return SpecError(self.loc(key, at_key=at_key), message)

    def mapping(self, raw: Any, key: Key, what: str) -> dict:
        """A section that maps names to things (``params:``, ``blocks:``...): ``raw``,
        {} where it is absent or empty, or an error saying it should map ``what``."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.error(key, f"expected a mapping of {what}, found {show(raw)}")
        return raw


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
    try:
        loader = _Composer(raw, file)
    except yaml.reader.ReaderError as exc:  # the reader checks every character first
        before = LINE_BREAK.split(raw[: exc.position])
        where = Location(file, len(before), len(before[-1]) + 1, "")
        raise SpecError(where, f"expected printable text, found the character {chr(exc.character)!r}") from None
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


class _Composer(yaml.SafeLoader):
    """PyYAML's composer recurses once per nesting level: it refuses a node deeper than
    MAX_DEPTH, and a tag on any node, before composing it. Its scanner looks ahead over
    every open flow collection (`[[[[...`) in quadratic time: it refuses those first."""

    def __init__(self, text: str, file: str):
        super().__init__(text)
        self.file = file
        self.path: list[str | int] = []

    def fetch_flow_collection_start(self, token_class: type) -> None:
        if self.flow_level >= MAX_DEPTH:
            mark = self.get_mark()
            where = Location(self.file, mark.line + 1, mark.column + 1, dotted(tuple(self.path)))
            raise SpecError(where, f"expected nesting at most {MAX_DEPTH} deep, found deeper")
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        part = index if isinstance(parent, yaml.SequenceNode) else getattr(index, "value", None)
        nested = part is not None  # not the root, nor a mapping key (which stands at its mapping)
        if nested:
            self.path.append(part if isinstance(part, (str, int)) else "?")
        where = Location(self.file, event.start_mark.line + 1, event.start_mark.column + 1, dotted(tuple(self.path)))
        if len(self.path) > MAX_DEPTH:
            raise SpecError(where, f"expected nesting at most {MAX_DEPTH} deep, found deeper")
        if getattr(event, "tag", None) is not None:
            raise SpecError(where, f"expected plain YAML without tags, found the tag {_written(event.start_mark)}")
        try:
            return super().compose_node(parent, index)
        finally:
            if nested:
                self.path.pop()


def _written(mark: yaml.Mark) -> str:
    """The token at ``mark`` as the spec spells it (a tag such as '!!map' or '!kernel')."""
    token = re.match(r"[^\s,\[\]{}]*", mark.buffer[mark.index :] if mark.buffer else "")
    return repr(token.group() if token else "")


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
        if isinstance(node, yaml.ScalarNode) and node.start_mark.line == node.end_mark.line:
            quote = int(node.style in ("'", '"'))
            if node.end_mark.index - node.start_mark.index == len(node.value) + 2 * quote:
                self.source.verbatim[key] = quote
        if isinstance(node, yaml.MappingNode):
            try:
                self.constructor.flatten_mapping(node)  # merge keys: `<<: *defaults`
            except yaml.MarkedYAMLError as exc:
                found = (exc.problem or "").rpartition("found ")[2] or "something else"
                raise self._at(node, key, f"expected a mapping (or a list of mappings) after '<<', found a {found}") from None
            out: dict[str, Any] = {}
            for knode, vnode in node.value:
                name = self._scalar(knode, key) if isinstance(knode, yaml.ScalarNode) else None
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
        return self._scalar(node, key)

    def _scalar(self, node: yaml.ScalarNode, key: Key) -> Any:
        try:
            value = self.constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:  # ValueError: a timestamp like 2001-13-45
            raise self._at(node, key, f"expected a plain value, found {node.value!r} ({getattr(exc, 'problem', exc)})") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise self._at(node, key, f"expected a finite number, found {node.value}")
        return value

    def _at(self, node: yaml.Node, key: Key, message: str) -> SpecError:
        return SpecError(Location(self.source.file, node.start_mark.line + 1, node.start_mark.column + 1, dotted(key)), message)
