"""Fuzz archc with mutations of its bundled specs: no input may end in a traceback or in
broken code.

Every spec under specs/ and examples/ (found by glob, so new ones join by themselves) is
mutated by hypothesis, on its parsed tree (replace, delete, duplicate and rename keys,
op names and values; hostile strings and numbers) or on its text (insert, delete,
truncate bytes), sometimes with hostile ``-p`` overrides, and run in-process through
what ``archc params | check | build | variants`` call. Each case must end either in a
located SpecError/UserError (``FILE:LINE:COL`` inside the mutated file, one line), or
in an accepted spec whose torch and Keras modules compile; for one accepted case in
``--build-every``, the torch model is built at a small input size and its counts and
output shape must equal the IR's. Anything else is a defect.

Two edits aim at decisions archc takes from the IR at the spec's own params: *retype*
puts a boolean, null, a number or an expression at any node (the node's key drawn
first, so a rare key such as ``when`` is as likely as ``filters``), and *lift* turns a
value into a new param (at one node, or everywhere the same key has the same value).
A case with a lifted or declared param also draws params for ``create_model``: the
module generated at the spec's params, built with ``create_model(**p)``, must have the
counts and output shape of the spec built at ``p``, and ``for_inference`` must keep its
outputs (one such case in ``--inference-every``).

*rewire* edits the graph syntax as a user's slip would: a ``from:`` (or a merge's list)
that names an undefined tensor, one defined later, or the input; an ``as:`` dropped or
copied onto another layer (a name defined twice); a merge's inputs swapped; an output
dropped or naming nothing. The summary counts each kind with its outcome.

    python tests/fuzz.py --cases 10000 --jobs 2      # make fuzz
    python tests/fuzz.py --cases 200 --keep out/     # write each defect's input to out/
    python tests/fuzz.py --cases 500 --edits rewire  # only the graph edits (from:, as:, outputs:)

A defect's kind (the exception, or what a check found) is counted in the summary.

Prints ``cases N, accepted A, located errors E, defects D`` and the time; exit 1 on a
defect. tests/test_fuzz.py runs a fixed-seed sample in CI.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import io
import json
import multiprocessing
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from bundled import buildable
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from archc import api
from archc.codegen.backend import get, module_name, registered, write_all
from archc.syntax.errors import SpecError, UserError
from archc.tools import variants
from archc.tools.report import print_table

ROOT = Path(__file__).resolve().parents[1]
SEED_GLOBS = ("specs/*.yaml", "specs/*.yml", "examples/*.yaml", "examples/*.yml")
BACKENDS = ("torch", "keras")
LINE_BREAKS = re.compile("\r\n|[\n\r\x85\u2028\u2029]")  # what PyYAML counts as a new line
LOCATED = re.compile(r"(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): ")

# Strings that have broken code generators, YAML, rich markup or Python somewhere.
HOSTILE_TEXT = [
    "",
    " ",
    "_",
    "0",
    "-1",
    "1e999",
    "nan",
    "inf",
    "-inf",
    "None",
    "null",
    "~",
    "true",
    "yes",
    "no",
    "on",
    "class",
    "def",
    "lambda",
    "import",
    "return",
    "self",
    "super",
    "print",
    "torch",
    "nn",
    "keras",
    "layers",
    "x",
    "F",
    "__init__",
    "__class__",
    "__dict__",
    "__import__('os').system('echo pwned')",
    "forward",
    "training",
    "Model",
    "create_model",
    "OrderedDict",
    "in_channels",
    "ACTIVATIONS",
    "Sequential",
    "$",
    "$$",
    "$$x",
    "$nope",
    "$classes",
    "$filters",
    "${x}",
    "{x}",
    "{{x}}",
    "%s",
    "%(x)s",
    "[bold]",
    "[/bold]",
    "[/]",
    "[link=x]",
    "\\",
    "\\n",
    "'",
    '"',
    '"""',
    "'''",
    "`",
    "#",
    "# comment",
    ": ",
    "- ",
    "\n",
    "\r",
    "\t",
    "\x00",
    "\x1b[31m",
    "\u2028",
    "\u202e",
    "\ufeff",
    "é",
    "ß",
    "名前",
    "🙂",
    "ｆｕｌｌ",
    "x" * 300,
    "depthwise",
    "same",
    "valid",
    "relu",
    "softmax",
    "none",
]
HUGE = [10**k + d for k in (3, 6, 7, 9, 12, 18, 19, 40, 400) for d in (-1, 0)]
SNIPPETS = [b"[", b"]", b"{", b"}", b"&a ", b"*a", b"!tag ", b"!!str ", b": ", b"- ", b"-", b"\t", b"#", b"'", b'"', b"\n",
            b"\n  ", b"\xff", b"\xc3", b"<<: ", b"? ", b"|", b">", b"%YAML 1.1\n", b"---\n", b"...\n", b",", b"$", b"0", b".nan",
            b"1.0e+999", b"\x00", b"\r"]  # fmt: skip


@dataclass
class Summary:
    cases: int = 0
    accepted: int = 0
    errors: int = 0
    built: int = 0
    creates: int = 0  # cases that drew create_model params
    checked: int = 0  # of those, accepted and checked (check_inference)
    defects: list[Defect] = field(default_factory=list)
    kinds: Counter = field(default_factory=Counter)

    def add(self, other: Summary) -> None:
        self.cases += other.cases
        self.accepted += other.accepted
        self.errors += other.errors
        self.built += other.built
        self.creates += other.creates
        self.checked += other.checked
        self.defects += other.defects
        self.kinds.update(other.kinds)

    def line(self) -> str:
        return f"cases {self.cases}, accepted {self.accepted}, located errors {self.errors}, defects {len(self.defects)}"

    def defect_kinds(self) -> Counter:
        """How many defects of each kind: a check's name, or the exception and where it was raised."""
        return Counter(d.kind for d in self.defects)


@dataclass
class Defect:
    """An input that ended in something else than a located error or valid code."""

    seed_spec: str
    mutation: str
    text: str
    overrides: dict[str, str]
    problem: str
    kind: str = ""
    create: dict[str, Any] = field(default_factory=dict)


class DefectFound(Exception):
    """Raised by the checks below; the runner records it as a defect of ``kind``."""

    def __init__(self, problem: str, kind: str = "check"):
        super().__init__(problem)
        self.kind = kind


# -- the seed corpus --------------------------------------------------------------------


@dataclass
class Seed:
    path: Path
    text: str
    tree: Any


def seed_specs(root: Path = ROOT) -> list[Seed]:
    """Every bundled spec, parsed (plain YAML: the fuzzer owns no archc code)."""
    paths = buildable(sorted({p for pattern in SEED_GLOBS for p in root.glob(pattern)}))  # the fuzzer builds what it accepts
    return [Seed(p, p.read_text(encoding="utf-8"), yaml.safe_load(p.read_text(encoding="utf-8"))) for p in paths]


def vocabulary(seeds: list[Seed]) -> list[str]:
    """Every key and text value of the seeds: op names, field names, params, block names,
    so that mutations swap real words too (new ops join by being used in a spec)."""
    words: set[str] = set()

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                words.add(str(key))
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)
        elif isinstance(value, str) and len(value) < 40:
            words.add(value)

    for seed in seeds:
        visit(seed.tree)
    return sorted(words)


# -- strategies -------------------------------------------------------------------------


def scalars(words: list[str]) -> st.SearchStrategy:
    return st.one_of(
        st.sampled_from(words),
        st.sampled_from(HOSTILE_TEXT),
        st.text(max_size=12),
        st.integers(-3, 300),
        st.sampled_from(HUGE).map(lambda n: n if n % 2 else -n),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.0, -0.0, 0.5, 1.0, 1e-300, 1e300, 0.99, 1e-3]),
        st.booleans(),
        st.none(),
    )


def values(words: list[str]) -> st.SearchStrategy:
    scalar = scalars(words)
    return st.one_of(
        scalar,
        scalar,
        st.lists(scalar, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(words), st.sampled_from(HOSTILE_TEXT)), scalar, max_size=3),
    )


def paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every position in a parsed tree: keys of mappings, indices of lists."""
    out = [prefix]
    if isinstance(tree, dict):
        for key, value in tree.items():
            out += paths(value, prefix + (key,))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            out += paths(value, prefix + (i,))
    return out


def at(tree: Any, path: tuple) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def node_by_key(data: st.DataObject, tree: Any, numbers: bool = False) -> tuple:
    """A position of ``tree`` (with ``numbers``, one that holds a number or a boolean outside
    ``params``): half the time its key first (list items share the key ``[]``), then one of
    the positions under that key, so that a rare field is as likely as a common one; else
    any position, so that a common field is drawn as often as it occurs."""
    groups: dict[str, list[tuple]] = {}
    for where in paths(tree)[1:]:
        if numbers and (where[0] == "params" or not isinstance(at(tree, where), (bool, int, float))):
            continue
        groups.setdefault(where[-1] if isinstance(where[-1], str) else "[]", []).append(where)
    if not groups:
        return ()
    if data.draw(st.booleans(), label="by key?"):
        key = data.draw(st.sampled_from(sorted(groups)), label="key")
        return data.draw(st.sampled_from(groups[key]), label="node")
    return data.draw(st.sampled_from([where for key in sorted(groups) for where in groups[key]]), label="node")


def declared(tree: Any) -> list[str]:
    params = tree.get("params") if isinstance(tree, dict) else None
    return [str(k) for k in params] if isinstance(params, dict) else []


def expressions(tree: Any) -> st.SearchStrategy:
    """``$name`` and ``${...}`` of the spec's params, and constant ones (true or false)."""
    names = declared(tree) or ["x"]
    name = st.sampled_from(names)
    return st.one_of(
        name.map(lambda n: f"${n}"),
        name.map(lambda n: f"${{{n}}}"),
        name.map(lambda n: f"${{2 * {n}}}"),
        name.map(lambda n: f"${{{n} > 1}}"),
        st.sampled_from(["${1 > 2}", "${2 > 1}", "${1 + 1}", "${0.5}", "${1 if 1 > 2 else 3}"]),
    )


def retyped(tree: Any) -> st.SearchStrategy:
    """A value of another type: a boolean, null, a number or an expression."""
    return st.one_of(
        st.booleans(),
        st.none(),
        st.integers(-2, 8),
        st.sampled_from([0.0, 0.5, 1.0, 2.5, -1.0]),
        expressions(tree),
    )


def lift(data: st.DataObject, tree: Any, where: tuple, lifted: dict[str, Any]) -> str:
    """Make the value at ``where`` a new param of the same default, referenced there (or
    everywhere the same key holds the same value); returns the param's name."""
    value = at(tree, where)
    name = f"fuzz{len(lifted) + 1}"
    if tree.get("params") is None:
        tree["params"] = {}
    if not isinstance(tree["params"], dict):
        return "no lift"
    tree["params"][name] = value
    everywhere = data.draw(st.booleans(), label="everywhere")
    key = where[-1]
    for place in paths(tree)[1:] if everywhere else [where]:
        if place[-1] == key and place[0] != "params" and type(at(tree, place)) is type(value) and at(tree, place) == value:
            at(tree, place[:-1])[key] = f"${name}"
    lifted[name] = value
    return f"{name} everywhere" if everywhere else name


def layer_entries(tree: Any) -> list[tuple]:
    """Paths of the layer entries under ``flows`` and ``blocks`` (a bare op name or a one-key
    mapping in a list of such), at any depth: those a ``when:`` can switch off."""

    def is_entry(item: Any) -> bool:
        return isinstance(item, str) or (isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item)), str))

    found = []
    for top in ("flows", "blocks"):
        if isinstance(tree, dict) and top in tree:
            for where in paths(tree[top], (top,)):
                value = at(tree, where)
                if isinstance(value, list) and value and all(is_entry(item) for item in value):
                    found += [(*where, i) for i, item in enumerate(value) if switchable(item)]
    return found


def switchable(entry: Any) -> bool:
    """A bare op, or an op written with a field mapping (not a one-value shorthand)."""
    return isinstance(entry, str) or isinstance(next(iter(entry.values())), (dict, type(None)))


def switch_off(tree: Any, where: tuple) -> Any:
    """A copy of ``tree`` with ``when: false`` on the layer entry at ``where``."""
    tree = copy.deepcopy(tree)
    parent, last = at(tree, where[:-1]), where[-1]
    entry = parent[last]
    if isinstance(entry, str):
        parent[last] = {entry: {"when": False}}
    else:
        ((op, fields),) = entry.items()
        parent[last] = {op: {**(fields or {}), "when": False}}
    return tree


MERGES = ("add", "concat", "multiply")  # ops whose one value may be the list of tensors they read
REWIRES = ("read undefined", "read later", "read input", "define twice", "drop as", "swap inputs", "drop output", "output undefined")


def graph_refs(tree: Any) -> tuple[list[tuple], list[tuple]]:
    """(the positions that read named tensors: ``from:`` and ``like:`` values and merges'
    short-form lists; the positions of ``as:`` values), both in the order of the text."""
    reads, saves = [], []
    for where in paths(tree):
        if not where or where[0] not in ("flows", "blocks"):
            continue
        value = at(tree, where)
        if where[-1] == "as":
            saves.append(where)
        elif where[-1] in ("from", "like") or (where[-1] in MERGES and isinstance(value, list) and all(isinstance(v, str) for v in value)):
            reads.append(where)
    return reads, saves


def _names(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _set_read(tree: Any, where: tuple, name: str, data: st.DataObject) -> None:
    """One tensor that the read at ``where`` names becomes ``name``."""
    parent, value = at(tree, where[:-1]), at(tree, where)
    if isinstance(value, list) and value:
        value[data.draw(st.integers(0, len(value) - 1), label="which input")] = name
    else:
        parent[where[-1]] = name


def rewire(data: st.DataObject, tree: Any) -> str | None:
    """An edit of the graph syntax (``from:``, ``as:``, ``outputs:``), as a user's slip
    would make it: a read of an undefined name, of a name defined later, of the input; a
    name defined twice or not at all; a merge's inputs swapped; an output dropped or
    naming nothing. Each must give a located error or a valid build. None: nothing to edit."""
    reads, saves = graph_refs(tree)
    outputs = tree.get("outputs") if isinstance(tree, dict) else None
    edit = data.draw(st.sampled_from(REWIRES), label="rewire")
    order = {where: i for i, where in enumerate(paths(tree))}
    if edit.startswith("read") and reads:
        where = data.draw(st.sampled_from(reads), label="read")
        later = [n for s in saves if order[s] > order[where] for n in _names(at(tree, s))]
        name = {"read undefined": "nowhere", "read input": "input"}.get(edit) or (later and data.draw(st.sampled_from(later), label="name"))
        if name:
            _set_read(tree, where, name, data)
            return f"rewire {edit} {'.'.join(map(str, where))}"
    elif edit in ("define twice", "drop as") and saves:
        where = data.draw(st.sampled_from(saves), label="as")
        if edit == "drop as":
            del at(tree, where[:-1])["as"]
        elif entries := layer_entries(tree):  # its name given to another layer too
            name = copy.deepcopy(at(tree, where))
            where = data.draw(st.sampled_from(entries), label="layer")
            parent, entry = at(tree, where[:-1]), at(tree, where)
            op, fields = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
            parent[where[-1]] = {op: {**(fields or {}), "as": name}}
        return f"rewire {edit} {'.'.join(map(str, where))}"
    elif edit == "swap inputs" and (lists := [w for w in reads if isinstance(at(tree, w), list) and len(at(tree, w)) > 1]):
        where = data.draw(st.sampled_from(lists), label="merge")
        at(tree, where).reverse()
        return f"rewire {edit} {'.'.join(map(str, where))}"
    elif edit.startswith("output") or edit == "drop output":
        if isinstance(outputs, dict) and outputs:
            name = data.draw(st.sampled_from(list(outputs)), label="output")
            if edit == "drop output":
                del outputs[name]
            elif isinstance(outputs[name], dict):
                outputs[name]["from"] = "nowhere"
            else:
                outputs[name] = "nowhere"
            return f"rewire {edit} outputs.{name}"
    return None


EDITS = [
    "rewire",
    "rewire",
    "replace",
    "replace",
    "delete",
    "duplicate",
    "rename",
    "graft",
    "respell",
    "nudge",
    "switch off",
    "retype",
    "retype",
    "lift",
    "lift",
]


def mutate_tree(data: st.DataObject, seed: Seed, words: list[str], edits: list[str] = EDITS) -> tuple[str, str, dict[str, Any]]:
    """One to three tree edits, then YAML text (block or flow style), and the params
    that *lift* added, with their values."""
    tree = copy.deepcopy(seed.tree)
    done = []
    lifted: dict[str, Any] = {}
    # one case in four is a single lift, the edit a user makes to try a value: valid, mostly
    only_lift = isinstance(tree, dict) and "lift" in edits and data.draw(st.integers(0, 3), label="only lift?") == 0
    for _ in range(1 if only_lift else data.draw(st.integers(1, 3), label="edits")):
        edit = "lift" if only_lift else data.draw(st.sampled_from(edits), label="edit")
        if edit == "rewire":
            done.append(rewire(data, tree) or "rewire: nothing to rewire")
            continue
        if edit in ("retype", "lift"):
            where = node_by_key(data, tree, numbers=edit == "lift")
        else:
            where = data.draw(st.sampled_from(paths(tree)[1:] or [()]), label="path")
        if not where:
            break
        parent, last = at(tree, where[:-1]), where[-1]
        if edit == "retype":
            parent[last] = data.draw(retyped(tree), label="value")
        elif edit == "lift" and isinstance(tree, dict):
            name = lift(data, tree, where, lifted)
            where = (f"{name} from", *where)
        elif edit == "switch off":  # `when: false` on a layer, repeat, block call or combinator: a valid spec, mostly
            entries = layer_entries(tree)
            if entries:
                where = data.draw(st.sampled_from(entries), label="layer")
                tree = switch_off(tree, where)
        elif edit == "respell":  # rename a word everywhere (a block, param, flow or layer name and its $refs): often valid
            word = where[-1] if isinstance(where[-1], str) else str(at(tree, where))
            new = data.draw(st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(min_size=1, max_size=10)), label="new name")
            tree = respell(tree, word, new)
        elif edit == "nudge":  # a nearby number where there is one: usually still a valid spec
            value = at(tree, where)
            if isinstance(value, int) and not isinstance(value, bool):
                low, high = sorted((value // 2, value * 2 + 1))
                parent[last] = data.draw(st.integers(low, high), label="nudged")
        elif edit == "replace":
            parent[last] = data.draw(values(words), label="value")
        elif edit == "delete":
            del parent[last]
        elif edit == "duplicate" and isinstance(parent, list):
            parent.insert(last, copy.deepcopy(parent[last]))
        elif edit in ("duplicate", "rename") and isinstance(parent, dict):
            new = data.draw(st.one_of(st.sampled_from(words), st.sampled_from(HOSTILE_TEXT), st.text(max_size=8)), label="key")
            items = list(parent.items())
            index = [k for k, _ in items].index(last)
            items.insert(index + 1 if edit == "duplicate" else index, (new, copy.deepcopy(parent[last])))
            if edit == "rename":
                del items[index + 1]
            parent.clear()
            parent.update(items)
        else:  # graft: a copy of another part of the spec (an op, a block body, a flow)
            other = data.draw(st.sampled_from(paths(tree)), label="graft")
            parent[last] = copy.deepcopy(at(tree, other))
        done.append(f"{edit} {'.'.join(map(str, where))}")
    flow = data.draw(st.sampled_from([False, None]), label="flow style")
    unicode = data.draw(st.booleans(), label="unicode")
    text = yaml.dump(
        tree, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False, allow_unicode=unicode, default_flow_style=flow
    )
    return text, "tree: " + "; ".join(done), lifted


def respell(value: Any, word: str, new: str) -> Any:
    """``value`` with every key, text and ``$reference`` equal to ``word`` renamed to ``new``."""
    if isinstance(value, dict):
        return {(new if k == word else k): respell(v, word, new) for k, v in value.items()}
    if isinstance(value, list):
        return [respell(v, word, new) for v in value]
    if value == word:
        return new
    return f"${new}" if value == f"${word}" else value


def mutate_text(data: st.DataObject, seed: Seed, words: list[str]) -> tuple[bytes, str]:
    """One to three byte edits of the spec's text."""
    raw = seed.text.encode("utf-8")
    done = []
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        edit = data.draw(st.sampled_from(["insert", "insert", "delete", "truncate", "word", "line"]), label="edit")
        pos = data.draw(st.integers(0, len(raw)), label="position")
        if edit == "insert":
            piece = data.draw(
                st.one_of(st.sampled_from(SNIPPETS), st.binary(max_size=6), st.sampled_from(HOSTILE_TEXT).map(str.encode)), label="bytes"
            )
            raw = raw[:pos] + piece + raw[pos:]
        elif edit == "delete":
            raw = raw[:pos] + raw[pos + data.draw(st.integers(1, 40), label="length") :]
        elif edit == "truncate":
            raw = raw[:pos]
        elif edit == "word":  # replace the word at pos with another spec word or a hostile one
            match = re.compile(rb"[\w$.-]+").search(raw, pos)
            if match:
                new = data.draw(st.one_of(st.sampled_from(words), st.sampled_from(HOSTILE_TEXT)), label="word").encode()
                raw = raw[: match.start()] + new + raw[match.end() :]
        else:  # duplicate a line
            start = raw.rfind(b"\n", 0, pos) + 1
            end = raw.find(b"\n", pos)
            end = len(raw) if end < 0 else end + 1
            raw = raw[:end] + raw[start:end] + raw[end:]
        done.append(f"{edit} @{pos}")
    return raw, "text: " + "; ".join(done)


def overrides(data: st.DataObject, seed: Seed, words: list[str]) -> dict[str, str]:
    """Sometimes ``-p NAME=VALUE`` items: declared params (mostly) with hostile values."""
    if not data.draw(st.integers(0, 4), label="overrides?") == 0:
        return {}
    declared = list(seed.tree.get("params") or {}) if isinstance(seed.tree, dict) else []
    name = data.draw(st.sampled_from(declared) if declared else st.sampled_from(words), label="param")
    value = data.draw(st.one_of(st.sampled_from(HOSTILE_TEXT), st.integers(-5, 10**6).map(str), st.sampled_from(words)), label="value")
    return {name: value}


def nearby(value: Any) -> st.SearchStrategy:
    """Another value of the same type, near ``value``."""
    if isinstance(value, bool):
        return st.just(not value)
    if isinstance(value, int):
        return st.sampled_from(sorted({value + 1, value + 2, 2 * value + 1, max(1, value // 2)} - {value}))
    return st.sampled_from([value * 0.5, value * 2, value + 0.5])


def create_params(data: st.DataObject, tree: Any, lifted: dict[str, Any]) -> dict[str, Any]:
    """Params for ``create_model``: every lifted one, or one declared number or boolean, at a
    nearby value (with no lifted param, in one case in four)."""
    numbers = dict(lifted)
    if not numbers and data.draw(st.integers(0, 3), label="create?") == 0:
        params = tree.get("params") if isinstance(tree, dict) else None
        for name, decl in (params or {}).items() if isinstance(params, dict) else ():
            default = decl.get("default") if isinstance(decl, dict) else decl
            if isinstance(default, (bool, int, float)) and isinstance(name, str):
                numbers[name] = default
        if numbers:
            name = data.draw(st.sampled_from(sorted(numbers)), label="create param")
            numbers = {name: numbers[name]}
    return {name: data.draw(nearby(value), label=f"create {name}") for name, value in numbers.items()}


# -- the oracle -------------------------------------------------------------------------


def unlocated(exc: Exception, path: Path) -> str | None:
    """Why an error is not a located one-line message inside ``path`` (None: it is)."""
    text = str(exc)
    if "\n" in text or "\r" in text:
        return f"a message of several lines: {text!r}"
    match = LOCATED.match(text)
    if not match:
        return f"no FILE:LINE:COL: {text!r}"
    if match["file"] != str(path):
        return f"located in {match['file']!r}, not in {str(path)!r}: {text!r}"
    lines = LINE_BREAKS.split(path.read_bytes().decode("utf-8", errors="replace"))
    line, col = int(match["line"]), int(match["col"])
    if not 1 <= line <= len(lines) + 1:
        return f"line {line} outside the file's {len(lines)} lines: {text!r}"
    if not 1 <= col <= len(lines[line - 1] if line <= len(lines) else "") + 2:
        return f"column {col} outside line {line}: {text!r}"
    return None


def run_case(
    path: Path,
    overrides: dict[str, str],
    out: Path,
    *,
    build_model: bool = False,
    sweep: bool = False,
    create: dict[str, Any] | None = None,
) -> str:
    """'accepted', 'built' (accepted, and its torch model checked), 'checked' (accepted,
    and ``create_model(**create)`` checked) or 'error'; raises DefectFound (or anything
    else: also a defect)."""
    try:
        analysis = api.load(path, overrides)  # what params, check, build, verify start with
        print_table(analysis, _null_console())  # archc params
        json.dumps(analysis.as_dict())  # archc params --json
        api.expectation_mismatches(analysis)  # archc check
        files = {}
        for name in [b for b in BACKENDS if b in registered()]:  # archc build: api.build without loading again
            files[out / f"{module_name(analysis, name)}.py"] = get(name).render(analysis)
        write_all(files)
        for file, source in files.items():
            try:
                compile(source, str(file), "exec")
            except (SyntaxError, ValueError) as exc:
                raise DefectFound(f"{file.name} does not compile: {exc}") from None
        if sweep and analysis.net.param_decls:
            name = sorted(analysis.net.param_decls)[0]
            values = [str(analysis.net.params[name]), *overrides.values()]
            values = [v for v in values if v.strip() and "," not in v] or ["1"]
            result = variants.run(path, {name: values}, {k: v for k, v in overrides.items() if k != name}, out / "variants")
            variants.table_rows(result)
        if build_model and check_torch_model(path, overrides, out):
            return "built"
        if create and check_inference(path, overrides, create, out):
            return "checked"
    except (SpecError, UserError) as exc:
        problem = unlocated(exc, path)
        if problem:
            raise DefectFound(f"{type(exc).__name__} {problem}") from None
        return "error"
    return "accepted"


def _null_console():
    from rich.console import Console

    return Console(file=io.StringIO(), width=132)


SMALL_SIZES = (32, 48, 64, 96, 128, 160)


def check_torch_model(path: Path, overrides: dict[str, str], out: Path) -> bool:
    """Build the generated torch model at the smallest input size the spec takes; its
    counts and output shape must be the IR's. False when no small size fits."""
    for size in SMALL_SIZES:
        try:
            analysis = api.load(path, overrides, input_size=(size, size))
        except SpecError:
            continue
        if analysis.total.trainable + analysis.total.non_trainable > 50_000_000:
            return False  # too big to build in a fuzz case (a mutation multiplied the widths)
        import torch

        backend = get("torch")
        file = out / f"small_{size}_torch.py"
        file.write_text(backend.render(analysis), encoding="utf-8")
        model = backend.load(file).create_model().eval()
        counts = backend.count(model)
        expected = (analysis.total.trainable, analysis.total.non_trainable)
        if counts != expected:
            raise DefectFound(f"torch model at {size}x{size} counts {counts}, the IR {expected}", "torch counts")
        h, w, c = analysis.net.input
        with torch.no_grad():
            y = model(torch.zeros(1, c, h, w))
        check_shapes(y, analysis, f"torch model at {size}x{size}", "the IR", "torch shape")
        return True
    return False


def check_shapes(y, analysis, what: str, expected: str, kind: str) -> None:
    """Each output of a torch model (a tensor, or a dict of them for a model with several)
    has the IR's shape (NCHW for a map)."""
    ys = y if isinstance(y, dict) else {"output": y}
    shapes = analysis.outputs if isinstance(y, dict) else {"output": analysis.output}
    for name, out in shapes.items():
        ir = tuple(out) if len(out) == 1 else (out[2], *out[:2])
        found = tuple(ys[name].shape[1:]) if name in ys else "nothing"
        if found != ir:
            raise DefectFound(f"{what} gives {found}{'' if name == 'output' else f' for {name}'}, {expected} {ir}", kind)


def _as_override(value: Any) -> str:
    return json.dumps(value)  # true, false, 3, 0.5: as -p NAME=VALUE reads them


def calibrate(model, x) -> None:
    """BN statistics of the batch ``x``, then eval mode: folds then matter, and a deep
    model's outputs still depend on its input (with the initial statistics, signals
    fade through the layers and the logits are the head's bias)."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = 1.0  # the running statistics become this batch's
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


# for_inference's rewrites (folds, pool swaps) are exact in real arithmetic and the folds
# are computed in float64, so in float64 a model and its rewrite agree to ~1e-12; a wrong
# rewrite differs by far more (issue 24's pool swap at k=3: 0.29 of 0.61).
INFERENCE_TOLERANCE = 1e-8


def inference_difference(module, model, x) -> float:
    """How far ``module.for_inference`` moves ``model``'s outputs on ``x``, relative to
    their largest magnitude, both run in float64. Not in float32: a model calibrated on a
    few samples can be ill-conditioned (EfficientNet at depth=2.0 on 32x32 inputs, BN
    statistics of 4 samples at 1x1 maps: outputs of 4e5, float32 rounding amplified to
    7e-4 of them), and then any change of summation order, channels_last's alone, moves
    its float32 outputs by 1.7e-2 of their size with every rewrite exact."""
    import torch

    exact = copy.deepcopy(model).double()
    x = x.double()
    with torch.no_grad():
        y = exact(x)
        fast = module.for_inference(exact)(x)  # in place: y is computed
    ys, fasts = (y, fast) if isinstance(y, dict) else ({"output": y}, {"output": fast})
    return max(float((fasts[n] - ys[n]).abs().max() / ys[n].abs().max().clamp_min(1e-300)) for n in ys)


def check_inference(path: Path, overrides: dict[str, str], create: dict[str, Any], out: Path) -> bool:
    """The torch module generated at the spec's params, built with ``create_model(**p)``:
    its counts and output shape must be those of the spec built at ``p``, and
    ``for_inference`` must keep its outputs (BN statistics of a batch, so folds matter;
    compared in float64: inference_difference). False
    when no small size fits, or the spec is not valid at ``p`` (no promise to keep then)."""
    import torch

    for size in SMALL_SIZES:
        try:
            base = api.load(path, overrides, input_size=(size, size))
        except SpecError:
            continue
        given = {k: v for k, v in create.items() if k in base.net.param_decls}
        try:
            at_p = api.load(path, {**overrides, **{k: _as_override(v) for k, v in given.items()}}, input_size=(size, size))
        except (SpecError, UserError):
            return False
        if not given or at_p.total.trainable + at_p.total.non_trainable > 100_000_000 or at_p.total.macs > 4_000_000_000:
            return False  # too big to run in a fuzz case (a mutation multiplied the widths or the sizes)
        backend = get("torch")
        file = out / f"create_{size}_torch.py"
        file.write_text(backend.render(base), encoding="utf-8")
        module = backend.load(file)
        params = {k: at_p.net.params[k] for k in given}
        torch.manual_seed(0)
        model = module.create_model(**params)
        counts, expected = backend.count(model), (at_p.total.trainable, at_p.total.non_trainable)
        if counts != expected:
            raise DefectFound(f"create_model(**{params}) counts {counts}, the spec at those params {expected}", "create_model counts")
        h, w, c = at_p.net.input
        x = torch.rand(6, c, h, w) * 2 - 1
        calibrate(model, x[2:])
        x = x[:2]
        with torch.no_grad():
            y = model(x)
        check_shapes(y, at_p, f"create_model(**{params})", "the spec at those params", "create_model shape")
        rel = inference_difference(module, model, x)
        if not rel <= INFERENCE_TOLERANCE:
            raise DefectFound(
                f"for_inference(create_model(**{params})) changes the outputs by {rel:.2g} (relative, in float64)", "for_inference"
            )
        return True
    return False


# -- the runner -------------------------------------------------------------------------


def fuzz(
    cases: int,
    seed: int = 0,
    *,
    build_every: int = 50,
    sweep_every: int = 20,
    inference_every: int = 1,
    seeds: list[Seed] | None = None,
    progress: bool = False,
    edits: list[str] = EDITS,
) -> Summary:
    """Run ``cases`` hypothesis-generated cases (fixed ``seed``: the same cases each run)."""
    seeds = seeds if seeds is not None else seed_specs()
    words = vocabulary(seeds)
    summary = Summary()
    work = Path(tempfile.mkdtemp(prefix="archc-fuzz-"))

    @hypothesis_seed(seed)
    @settings(
        max_examples=cases,
        database=None,
        deadline=None,
        phases=[Phase.generate],  # every case counts; a defect is recorded, not shrunk
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def case(data: st.DataObject) -> None:
        spec = data.draw(st.sampled_from(seeds), label="spec")
        lifted: dict[str, Any] = {}
        if edits != EDITS or data.draw(st.booleans(), label="tree?"):
            text, mutation, lifted = mutate_tree(data, spec, words, edits)
            raw = text.encode("utf-8")
        else:
            raw, mutation = mutate_text(data, spec, words)
        extra = overrides(data, spec, words)
        create = create_params(data, spec.tree, lifted)
        if create:
            summary.creates += 1
            mutation += f"; create_model({', '.join(f'{k}={v!r}' for k, v in create.items())})"
            if inference_every <= 0 or summary.creates % inference_every:
                create = {}
        folder = work / "case"
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "out").mkdir(parents=True)
        path = folder / spec.path.name
        path.write_bytes(raw)
        summary.cases += 1
        accepted = summary.accepted
        try:
            outcome = run_case(
                path,
                extra,
                folder / "out",
                build_model=build_every > 0 and accepted % build_every == build_every - 1,
                sweep=sweep_every > 0 and accepted % sweep_every == 0,
                create=create,
            )
        except Exception as exc:  # noqa: BLE001 - every other ending is what we look for
            problem = str(exc) if isinstance(exc, DefectFound) else "".join(traceback.format_exception_only(exc)).strip()
            where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            if where and not isinstance(exc, DefectFound):
                problem += f" (at {Path(where.filename).name}:{where.lineno})"
            kind = exc.kind if isinstance(exc, DefectFound) else type(exc).__name__ + (f" at {Path(where.filename).name}" if where else "")
            text = raw.decode("utf-8", errors="replace")
            summary.defects.append(Defect(spec.path.name, mutation, text, extra, problem, kind, create))
            summary.kinds["defect"] += 1
            if progress:
                print(f"defect in {spec.path.name} ({mutation}): {problem}", file=sys.stderr, flush=True)
            return
        summary.accepted += outcome != "error"
        summary.built += outcome == "built"
        summary.checked += outcome == "checked"
        summary.errors += outcome == "error"
        summary.kinds[mutation.split(":")[0] + " " + outcome] += 1
        for edit in re.findall(r"rewire \w+ \w+", mutation):  # the graph edits, each by kind
            summary.kinds[f"{edit} {outcome}"] += 1
        if progress and summary.cases % 500 == 0:
            print(f"seed {seed}: {summary.line()}", file=sys.stderr, flush=True)

    try:
        case()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summary


def _worker(args: tuple[int, int, int, int, str, list[str]]) -> Summary:
    cases, seed, build_every, inference_every, only, edits = args
    seeds = [s for s in seed_specs() if fnmatch.fnmatch(s.path.name, only)]
    return fuzz(cases, seed, build_every=build_every, inference_every=inference_every, seeds=seeds, progress=True, edits=edits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="processes, each with its own seed and share of the cases")
    parser.add_argument("--build-every", type=int, default=50, help="build the torch model for one accepted case in N (0: never)")
    parser.add_argument(
        "--inference-every",
        type=int,
        default=1,
        help="check create_model and for_inference for one case in N that draws their params (0: never)",
    )
    parser.add_argument("--specs", default="*", metavar="GLOB", help="only the seed specs whose file name matches (default: all)")
    parser.add_argument(
        "--edits", nargs="+", choices=sorted(set(EDITS)), default=EDITS, help="only these tree edits (and no text edits): e.g. rewire"
    )
    parser.add_argument("--keep", type=Path, help="write each defect's input (and what went wrong) into this folder")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    shares = [args.cases // args.jobs + (i < args.cases % args.jobs) for i in range(args.jobs)]
    jobs = [(n, args.seed + i, args.build_every, args.inference_every, args.specs, args.edits) for i, n in enumerate(shares)]
    if args.jobs == 1:
        results = [_worker(jobs[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            results = pool.map(_worker, jobs)
    summary = Summary()
    for result in results:
        summary.add(result)
    seconds = time.perf_counter() - start
    for i, defect in enumerate(summary.defects):
        print(f"defect {i + 1}: {defect.seed_spec} ({defect.mutation}, -p {defect.overrides}): {defect.problem}")
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            (args.keep / f"defect{i + 1}_{defect.seed_spec}").write_text(
                f"# {defect.problem}\n# {defect.mutation}; overrides {defect.overrides}\n{defect.text}", encoding="utf-8"
            )
    print(", ".join(f"{k} {v}" for k, v in sorted(summary.kinds.items())))
    if summary.defects:
        print("defects by kind: " + ", ".join(f"{k} {v}" for k, v in summary.defect_kinds().most_common()))
    print(
        f"{summary.line()}; torch models built {summary.built}; create_model checked {summary.checked} of {summary.creates}; "
        f"{seconds:.0f} s ({seconds / max(summary.cases, 1) * 1000:.0f} ms a case, {args.jobs} processes)"
    )
    return 1 if summary.defects else 0


if __name__ == "__main__":
    sys.exit(main())
