"""Pictures of a spec, in the style of the Xception paper's Figure 5.

archc's networks are series-parallel trees (sequences, branches side by side, a
residual's body beside its shortcut), so an exact layout needs no graph-layout engine:
each subtree is measured and placed recursively, and the result is a flat list of
primitives (boxes, frames, edges, joins, labels) that two writers draw: SVG directly
(no dependency, deterministic bytes) and matplotlib for PNG and PDF. Flows are
labelled columns side by side; a block instance (Call) is a framed group with its
parameter count; a repeat is drawn once in a dashed frame ("repeated 8 times") unless
expanded; shapes are written on the edges where they change.

The tree is walked through :func:`archc.ir.ops.children`, and every op gives its own label
and fill (``Node.diagram_label``, ``Node.fill``), with a generic fallback (op name and
its non-default fields), so ops and combinators added later draw without a change here. :mod:`archc.tools.draw` writes the files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from archc.ir.ops import SYSTEM_FIELDS, Branches, Call, Gate, Node, Repeat, Residual, children
from archc.passes.analysis import Analysis, Counts
from archc.passes.shapes import Shape, fmt

# -- geometry (SVG user units, about pixels) -------------------------------------------
FONT = 11  # box labels
SMALL = 9  # shapes on edges, frame headers
CHAR = 0.6  # estimated glyph width, in ems (sans-serif, slightly generous)
BOX_H = 20
LINE_H = 13  # a second line in a box
MIN_BOX_W = 96
GAP = 18  # between the items of a sequence, with room for a shape label
TIGHT = 10  # between the items of a sequence, with no label
COLUMNS = (1500, 2000, 2500, 3000, 4000)  # heights a long flow may wrap at, tried in turn
ASPECT = 1.8  # ... until the picture is no wider than this times its height
HGAP = 22  # between columns side by side
PAD = 6  # inside a frame
HEADER = 15  # a frame's title band
FLOW_GAP = 44  # between flow columns
MARGIN = 16


def text_width(text: str, size: float = FONT) -> float:
    return len(text) * size * CHAR


@dataclass(frozen=True)
class Options:
    """What to draw: ``expand`` every repeat copy; ``depth`` K draws blocks nested K
    levels deep (top-level nodes are level 1) and collapses deeper ones into single
    boxes; ``counts`` writes parameter counts on blocks, flows and the title."""

    expand: bool = False
    depth: int | None = None
    counts: bool = True


# -- primitives -------------------------------------------------------------------------
@dataclass(frozen=True)
class Box:
    """A layer (or a collapsed block): ``path`` is its IR path, with repeat indices
    (``middle/repeat[2]/...``) for an expanded copy."""

    x: float
    y: float
    w: float
    h: float
    lines: tuple[str, ...]
    path: str
    op: str
    fill: str


@dataclass(frozen=True)
class Frame:
    x: float
    y: float
    w: float
    h: float
    title: str
    note: str  # right-aligned in the header (a parameter count)
    kind: str  # 'block', 'repeat', 'combinator'
    path: str


@dataclass(frozen=True)
class Edge:
    """A line through ``points``; ``skip``: the named tensor it carries from the layer that
    names it to one that reads it, across the flows (drawn dashed), or "" in a flow."""

    points: tuple[tuple[float, float], ...]
    arrow: bool = True
    skip: str = ""


@dataclass(frozen=True)
class Join:
    """Where paths meet: '+' (a residual's addition, a circle) or a named node ('concat')."""

    x: float  # centre
    y: float
    w: float
    h: float
    symbol: str
    path: str


@dataclass(frozen=True)
class Text:
    x: float
    y: float  # baseline
    text: str
    size: float = SMALL
    anchor: str = "start"  # 'start', 'middle', 'end'
    kind: str = "shape"  # 'shape', 'path', 'title', 'subtitle', 'flow', 'note', 'skip'
    bold: bool = False


Primitive = Box | Frame | Edge | Join | Text


def moved(item: Primitive, dx: float, dy: float) -> Primitive:
    if isinstance(item, Edge):
        return Edge(tuple((x + dx, y + dy) for x, y in item.points), item.arrow, item.skip)
    return replace(item, x=item.x + dx, y=item.y + dy)


@dataclass
class Piece:
    """A laid-out subtree in its own coordinates: it is entered at (axis, 0) and left at
    (axis, h)."""

    w: float
    h: float
    axis: float
    items: list[Primitive] = field(default_factory=list)
    tail: Shape | None = None  # the shape last written on its axis, if any

    def at(self, dx: float, dy: float) -> Iterator[Primitive]:
        return (moved(item, dx, dy) for item in self.items)


@dataclass(frozen=True)
class Diagram:
    width: float
    height: float
    items: tuple[Primitive, ...]
    title: str

    def boxes(self) -> list[Box]:
        return [i for i in self.items if isinstance(i, Box)]


# -- labels: each op's own (Node.diagram_label, Node.fill), a generic fallback --------------
def _size(pair: tuple[int, int]) -> str:
    return fmt(pair)


COLLAPSED_FILL = "#e6e0f3"


def op_title(op: str) -> str:
    """'layer_norm' -> 'LayerNorm'."""
    return "".join(part.capitalize() for part in op.split("_"))


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"  # as a spec writes it
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return _size(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def label(node: Node) -> str:
    """What a layer's box says: the op's own label, or its name and its fields that
    differ from their defaults (a combinator draws as ``Repeat times 8``), with the named
    tensors it reads before it and the names of its output after it."""
    return tensors(node, _label(node))


def tensors(node: Node, text: str) -> str:
    """``text`` with the tensors a layer reads (``a, b →``) and its names (``→ c``)."""
    before = f"{', '.join(node.reads)} → " if node.reads else ""
    after = f" → {', '.join(node.saves)}" if node.saves else ""
    return before + text + after


def _label(node: Node) -> str:
    if (text := node.diagram_label()) is not None:
        return text
    fields = [
        f"{name} {_value(getattr(node, name))}"
        for name, info in type(node).model_fields.items()
        if name not in SYSTEM_FIELDS | {"name", "when"}
        and not isinstance(getattr(node, name), (list, dict))
        and getattr(node, name) != info.get_default(call_default_factory=True)
    ]
    return " ".join([op_title(node.op), ", ".join(fields)]).strip()


def _call_title(node: Call) -> str:
    """'sep_bn1' (a name archc made from the block's), or 'mixed0: module_a'."""
    rest = node.name[len(node.block) :]
    title = node.name if node.name.startswith(node.block) and rest.isdigit() or node.name == node.block else f"{node.name}: {node.block}"
    return tensors(node, title)


def _params(c: Counts) -> str:
    return f"{c.trainable:,} params"


# -- geometry: pieces made of primitives and other pieces, no IR ----------------------------
def boxed(lines: list[str], path: str, op: str, fill: str) -> Piece:
    """A box wide enough for its lines (the first in FONT, the others SMALL)."""
    w = max(MIN_BOX_W, max(text_width(t, FONT if i == 0 else SMALL) for i, t in enumerate(lines)) + 14)
    h = BOX_H + LINE_H * (len(lines) - 1)
    return Piece(w, h, w / 2, [Box(0, 0, w, h, tuple(lines), path, op, fill)])


def even_widths(pieces: list[Piece]) -> None:
    """The plain boxes of one sequence share one width, so that a column reads as one."""
    plain = [p for p in pieces if len(p.items) == 1 and isinstance(p.items[0], Box)]
    if not plain:
        return
    w = max(p.w for p in plain)
    for p in plain:
        box = p.items[0]
        p.items[0] = replace(box, w=w)
        p.w, p.axis = w, w / 2


def stacked(pieces: list[Piece], gap: float) -> Piece:
    """Pieces one below the other on one axis, joined by edges."""
    axis = max(p.axis for p in pieces)
    right = max(p.w - p.axis for p in pieces)
    items: list[Primitive] = []
    y = 0.0
    for i, piece in enumerate(pieces):
        items.extend(piece.at(axis - piece.axis, y))
        y += piece.h
        if i + 1 < len(pieces):
            items.append(Edge(((axis, y), (axis, y + gap))))
            y += gap
    return Piece(axis + right, y, axis, items)


def framed(body: Piece, title: str, note: str, kind: str, path: str) -> Piece:
    """``body`` in a box with a header: the title left of the axis (the edge that
    enters the frame crosses the header there), the note right of it."""
    left = max(body.axis + PAD, PAD + text_width(title, SMALL) + 6)
    right = max(body.w - body.axis + PAD, PAD + text_width(note, SMALL) + 6 if note else 0)
    dx = left - body.axis
    w, h = left + right, HEADER + body.h + PAD
    items: list[Primitive] = [Frame(0, 0, w, h, title, note, kind, path), Edge(((left, 0), (left, HEADER)), False)]
    items.extend(body.at(dx, HEADER))
    return Piece(w, h, left, items, body.tail)


def joined(body: Piece, short: Piece, symbol: str, key: str) -> Piece:
    """``body`` and a second line (``short``; empty: the identity) from one fork,
    meeting at a join drawn with ``symbol`` ("+" for a residual, "x" for a gate)."""
    top = GAP  # fork at y=0, columns start at `top`
    x_short = body.w + HGAP + short.axis  # the shortcut's line, right of the body
    bottom = top + max(body.h, short.h)
    r = 7
    join_y = bottom + GAP / 2 + r
    a = body.axis
    items: list[Primitive] = [Edge(((a, 0), (a, top)))]
    items.extend(body.at(0, top))
    items.append(Edge(((a, top + body.h), (a, join_y - r))))
    if short.items:
        items.append(Edge(((a, top / 2), (x_short, top / 2), (x_short, top))))
        items.extend(short.at(x_short - short.axis, top))
        items.append(Edge(((x_short, top + short.h), (x_short, join_y), (a + r, join_y))))
    else:
        items.append(Edge(((a, top / 2), (x_short, top / 2), (x_short, join_y), (a + r, join_y))))
    items.append(Join(a, join_y, 2 * r, 2 * r, symbol, key))
    w = max(body.w, x_short + max(short.w - short.axis, 0)) + 4
    return Piece(w, join_y + r, a, items)


def side_by_side(paths: list[tuple[str, Piece, str]], symbol: str, key: str) -> Piece:
    """Named paths (name, piece, the shape it ends in) side by side from one fork,
    meeting at a node drawn with ``symbol`` ("concat")."""
    top = GAP + SMALL  # room for the path names
    x = 0.0
    axes = []
    items: list[Primitive] = []
    for name, piece, tail in paths:
        width = max(piece.w, piece.axis + 5 + text_width(tail, SMALL), text_width(name, SMALL) + 8)
        axes.append(x + piece.axis)
        items.extend(piece.at(x, top))
        items.append(Text(x + piece.axis + 4, top - 4, name, kind="path"))
        if tail:
            items.append(Text(x + piece.axis + 5, top + piece.h + GAP / 2 + SMALL / 3, tail))
        x += width + HGAP
    w = x - HGAP
    bottom = top + max(p.h for _, p, _ in paths) + GAP
    jw, jh = text_width(symbol, SMALL) + 10, 14
    a = (axes[0] + axes[-1]) / 2
    fork = top / 2 - SMALL / 2
    items.insert(0, Edge(((a, 0), (a, fork)), False))
    for ax, (_, piece, _) in zip(axes, paths):
        items.append(Edge(((a, fork), (ax, fork), (ax, top))))
        items.append(Edge(((ax, top + piece.h), (ax, bottom), (a, bottom), (a, bottom + 4)), ax == a))
    items.append(Join(a, bottom + 4 + jh / 2, jw, jh, symbol, key))
    return Piece(w, bottom + 4 + jh, a, items)


# -- the walk: a node -> its piece ----------------------------------------------------------
@dataclass(frozen=True)
class _Ctx:
    """Where the walk is: nesting depth, and how IR paths map to drawn keys (an
    expanded repeat copy's paths carry its index, as :mod:`archc.passes.instances` writes them)."""

    depth: int = 1
    base: tuple[str, str] = ("", "")

    def key(self, node: Node) -> str:
        return self.base[1] + node.path[len(self.base[0]) :]

    def deeper(self) -> _Ctx:
        return replace(self, depth=self.depth + 1)


class _Layout:
    def __init__(self, analysis: Analysis, options: Options):
        self.analysis = analysis
        self.options = options
        self.shapes = analysis.shapes
        self.named: dict[str, tuple[int, str]] = {}  # tensor name -> (its order, the top-level layer that names it)
        self.centres: dict[str, float] = {}  # a top-level layer -> the height of its box's centre in its flow's column
        self.raised = 0.0  # how far a rising flow's column reaches above the others' (they move down by it)

    def remember(self, nodes: list[Node], columns: list[Piece]) -> None:
        """The names a flow's layers give, in order, and where the flow is one column, the
        height of each layer's box in it (what a rising flow's readers are levelled with)."""
        boxes = {i.path: i for i in columns[0].items if isinstance(i, Box)} if len(columns) == 1 else {}
        for node in nodes:
            if node.path in boxes:
                self.centres[node.path] = boxes[node.path].y + boxes[node.path].h / 2
            for name in node.saves:
                self.named[name] = (len(self.named), node.path)

    def rises(self, nodes: list[Node]) -> bool:
        """Whether a flow is drawn bottom-up: it reads tensors that earlier flows name in
        the reverse order of their naming (a U-Net's decoder climbing back up its
        encoder), and each of its layers is one box (a plain layer, or a block collapsed
        by ``--depth 1``), so that the picture is a U with its skips drawn across."""
        order = [self.named[name][0] for node in nodes for name in node.reads if name in self.named]
        boxes = all(not children(n) for n in nodes) or (self.options.depth is not None and self.options.depth <= 1)
        return boxes and len(order) > 1 and order == sorted(set(order), reverse=True)

    def changes(self, node: Node) -> bool:
        """Whether a layer changes the shape (a rising flow writes the new one after it)."""
        return self.shapes[node.path][1] != self.shapes[node.path][0]

    def rising(self, nodes: list[Node]) -> Piece:
        """A flow's boxes bottom-up (entered at the bottom, left at the top), each one that
        reads an earlier flow's tensor level with the box that names it where the boxes
        below leave room, else as low as they do."""
        pieces = [self.node(n, _Ctx()) for n in nodes]
        even_widths(pieces)
        axis, right = max(p.axis for p in pieces), max(p.w - p.axis for p in pieces)
        centres: list[float] = []
        for i, (node, piece) in enumerate(zip(nodes, pieces)):
            level = [self.centres[self.named[n][1]] for n in node.reads if n in self.named and self.named[n][1] in self.centres]
            gap = GAP if i and self.changes(nodes[i - 1]) else TIGHT  # room for a shape, as in a sequence
            room = [centres[-1] - pieces[i - 1].h / 2 - gap - piece.h / 2] if i else []
            centres.append(min(room + level) if room + level else 0.0)
        self.raised = max(0.0, *(p.h / 2 - c for p, c in zip(pieces, centres)))  # the flows before it move down by it
        tops = [c + self.raised - p.h / 2 for p, c in zip(pieces, centres)]
        items: list[Primitive] = []
        for i, (node, piece, top) in enumerate(zip(nodes, pieces, tops)):
            items.extend(piece.at(axis - piece.axis, top))
            if i + 1 < len(pieces):
                above = tops[i + 1] + pieces[i + 1].h
                items.append(Edge(((axis, top), (axis, above))))
                if self.changes(node):
                    items.append(Text(axis + 5, (top + above) / 2 + SMALL / 3, fmt(self.shapes[node.path][1])))
        return Piece(axis + right + 60, max(t + p.h for t, p in zip(tops, pieces)), axis, items)

    def enabled(self, nodes: list[Node]) -> list[Node]:
        return [n for n in nodes if n.path in self.shapes]

    def counts_note(self, node: Node) -> str:
        return _params(self.analysis.counts[node.path]) if self.options.counts else ""

    # a sequence: pieces stacked on one axis, shapes written where a node changes them
    def sequence(self, nodes: list[Node], ctx: _Ctx) -> Piece:
        nodes = self.enabled(nodes)
        pieces = [self.node(n, ctx) for n in nodes]
        even_widths(pieces)
        if not pieces:
            return Piece(0, 0, 0)
        axis = max(p.axis for p in pieces)
        right = max(p.w - p.axis for p in pieces)
        items: list[Primitive] = []
        y = 0.0
        seen, tail = self.shapes[nodes[0].path][0], None  # the shape a reader saw last
        for i, (node, piece) in enumerate(zip(nodes, pieces)):
            items.extend(piece.at(axis - piece.axis, y))
            y += piece.h
            if piece.tail is not None:
                seen = tail = piece.tail
            if i + 1 < len(pieces):
                out = self.shapes[node.path][1]
                gap = TIGHT
                if out != seen:
                    text = fmt(out)
                    gap = GAP
                    items.append(Text(axis + 5, y + gap / 2 + SMALL / 3, text))
                    right = max(right, 5 + text_width(text, SMALL))
                    seen = tail = out
                items.append(Edge(((axis, y), (axis, y + gap))))
                y += gap
        return Piece(axis + right, y, axis, items, tail)

    def node(self, node: Node, ctx: _Ctx) -> Piece:
        if not children(node):
            return self.box(node, ctx, [label(node)], node.fill)
        depth = self.options.depth
        if depth is not None and ctx.depth >= depth:
            return self.collapsed(node, ctx)
        draw = DRAWINGS.get(node.op, _draw_unknown)
        return draw(self, node, ctx, ctx.deeper())

    def box(self, node: Node, ctx: _Ctx, lines: list[str], fill: str) -> Piece:
        return boxed(lines, ctx.key(node), node.op, fill)

    def collapsed(self, node: Node, ctx: _Ctx) -> Piece:
        if isinstance(node, Call):
            leaves = self.enabled(node.body)
            if 1 < len(leaves) <= 4 and not any(children(n) for n in leaves):  # a short chain says what it is
                main, sub = " \u2192 ".join(label(n) for n in leaves), [_call_title(node)]
            else:
                main, sub = _call_title(node), [", ".join(f"{k} {_value(v)}" for k, v in node.args.items())]
        elif isinstance(node, Repeat):
            main, sub = f"{', '.join(n.name for n in self.enabled(node.body))}: repeated {node.times} times", []
        else:
            main, sub = label(node), [node.name] if node.name != node.op else []
        if self.options.counts:
            sub.append(_params(self.analysis.counts[node.path]))
        sub = [t for t in sub if t]
        return self.box(node, ctx, [main, " \u00b7 ".join(sub)] if sub else [main], COLLAPSED_FILL)

    def parallel(self, node: Node, ctx: _Ctx, symbol: str, key: str) -> Piece:
        """The node's sequences side by side, each named and with the shape it ends in."""
        paths = []
        for name, nodes in children(node):
            piece, nodes = self.sequence(nodes, ctx), self.enabled(nodes)
            paths.append((name, piece, fmt(self.shapes[nodes[-1].path][1]) if nodes else ""))
        return side_by_side(paths, symbol, key)


# -- one drawing per combinator, looked up by op ----------------------------------------------
Drawing = Callable[[_Layout, Node, _Ctx, _Ctx], Piece]  # (layout, node, where it is, where its children are)


def _draw_call(lay: _Layout, node: Call, ctx: _Ctx, inner: _Ctx) -> Piece:
    return framed(lay.sequence(node.body, inner), _call_title(node), lay.counts_note(node), "block", ctx.key(node))


def _draw_branches(lay: _Layout, node: Branches, ctx: _Ctx, inner: _Ctx) -> Piece:
    return lay.parallel(node, inner, "concat", ctx.key(node))


def _draw_gate(lay: _Layout, node: Gate, ctx: _Ctx, inner: _Ctx) -> Piece:
    """x * body(x): the body beside the identity line, joined by a circled "x"."""
    piece = joined(lay.sequence(node.body, inner), Piece(0, 0, 0, []), "\u00d7", ctx.key(node))
    return framed(piece, "gate", lay.counts_note(node), "block", ctx.key(node))


def _draw_repeat(lay: _Layout, node: Repeat, ctx: _Ctx, inner: _Ctx) -> Piece:
    """The body once in a dashed frame, or (``expand``) every copy in its own."""
    key, title = ctx.key(node), f"repeated {node.times} times"
    if not lay.options.expand:
        return framed(lay.sequence(node.body, inner), title, lay.counts_note(node), "repeat", key)
    copies = []
    for i in range(node.times):
        copy = replace(inner, base=(node.path, f"{key}[{i}]"))
        copies.append(framed(lay.sequence(node.body, copy), f"{i + 1} of {node.times}", "", "repeat", f"{key}[{i}]"))
    return framed(stacked(copies, GAP), title, lay.counts_note(node), "repeat", key)


def _draw_residual(lay: _Layout, node: Residual, ctx: _Ctx, inner: _Ctx) -> Piece:
    body = lay.sequence(node.body, inner)
    if not node.use_shortcut:
        return body
    return joined(body, lay.sequence(node.shortcut, inner), "+", ctx.key(node))


def _draw_unknown(lay: _Layout, node: Node, ctx: _Ctx, inner: _Ctx) -> Piece:
    """A combinator archc did not know when this was written: its sequences side by
    side in a frame, meeting at a node named after it."""
    body = lay.parallel(node, inner, op_title(node.op), ctx.key(node))
    return framed(body, label(node), lay.counts_note(node), "combinator", ctx.key(node))


DRAWINGS: dict[str, Drawing] = {
    "call": _draw_call,
    "repeat": _draw_repeat,
    "residual": _draw_residual,
    "branches": _draw_branches,
    "gate": _draw_gate,
}


# -- flows: labelled columns, a long one wrapped into several ---------------------------------
def flow_title(name: str) -> str:
    """A flow's column title, from the name the spec gives it ('entry' -> 'entry flow',
    as the Xception paper names its three)."""
    return f"{name} flow"


def _wrapped(lay: _Layout, nodes: list[Node], column: float) -> list[list[Node]]:
    """``nodes`` cut into columns of about equal height, none much above ``column``."""
    heights = [lay.node(node, _Ctx()).h + GAP for node in nodes]
    limit = sum(heights) / math.ceil(sum(heights) / column)
    chunks: list[list[Node]] = [[]]
    height = 0.0
    for node, h in zip(nodes, heights):
        if chunks[-1] and height + h / 2 > limit:
            chunks.append([])
            height = 0.0
        chunks[-1].append(node)
        height += h
    return chunks


def _flow(lay: _Layout, name: str, nodes: list[Node], column: float) -> Piece:
    """A flow's column(s) under its title and parameter count, from its input shape to
    its output shape."""
    nodes = lay.enabled(nodes)
    title = flow_title(name)
    while len(nodes) == 1 and isinstance(nodes[0], Call) and lay.options.depth is None:
        # a flow that is one block (MobileNetV3's small or large net): wrap its body,
        # the block named in the flow's title
        title = f"{title}: {_call_title(nodes[0])}"
        nodes = lay.enabled(nodes[0].body)
    rising = lay.rises(nodes)
    chunks = [nodes] if rising else _wrapped(lay, nodes, column)
    columns = [lay.rising(nodes)] if rising else [lay.sequence(chunk, _Ctx()) for chunk in chunks]
    lay.remember(nodes, columns)
    shapes = [fmt(lay.shapes[nodes[0].path][0])] + [fmt(lay.shapes[chunk[-1].path][1]) for chunk in chunks]
    note = _params(sum((lay.analysis.counts[n.path] for n in nodes), Counts())) if lay.options.counts else ""
    return _columns(columns, shapes, title, note, rising)


def _columns(columns: list[Piece], shapes: list[str], title: str, note: str, rising: bool = False) -> Piece:
    """Columns side by side, each running into the next; ``shapes``: the input shape,
    then the shape each column ends in. ``rising``: one column entered at the bottom and
    left at the top (the output shape above it, the input below)."""
    inp, out = (shapes[-1], shapes[0]) if rising else (shapes[0], shapes[-1])
    way = -1 if rising else 1
    label_w = max(text_width(inp, SMALL), text_width(out, SMALL)) / 2 + 4
    top = 18 + (12 if note else 0) + 4 + SMALL + 4 + GAP  # title, note, input shape, first edge
    items: list[Primitive] = []
    x, bottom = 0.0, 0.0
    axes = []
    for k, col in enumerate(columns):
        x += max(0, label_w - col.axis)
        axes.append(x + col.axis)
        items.extend(col.at(x, top))
        bottom = max(bottom, top + col.h)
        x += max(col.w, col.axis + label_w) + (HGAP + 24 if k + 1 < len(columns) else 0)
    for k in range(len(columns) - 1):  # down, across the gap, and into the next column
        a, b = axes[k], axes[k + 1]
        y = top + columns[k].h + GAP + 6
        mid = (a + columns[k].w - columns[k].axis + b - columns[k + 1].axis) / 2
        items.append(Text(a + 5, top + columns[k].h + GAP / 2 + SMALL / 3, shapes[k + 1]))
        items.append(Edge(((a, top + columns[k].h), (a, y), (mid, y), (mid, top - GAP / 2), (b, top - GAP / 2), (b, top))))
    w = max(x, text_width(title, 13) * 1.1, text_width(note, SMALL))
    a = axes[0]
    centre = w / 2
    items.append(Text(centre, 13, title, 13, "middle", "flow", True))
    if note:
        items.append(Text(centre, 26, note, SMALL, "middle", "note"))
    y = top - GAP - 4
    items.append(Text(a, y, inp, SMALL, "middle"))
    items.append(Edge(((a, y + 4), (a, top))[::way]))
    last = axes[-1]
    y = top + columns[-1].h
    items.append(Edge(((last, y), (last, y + GAP))[::way]))
    items.append(Text(last, y + GAP + 4 + SMALL, out, SMALL, "middle"))
    return Piece(w, max(bottom + GAP + 6, y + GAP + 4 + SMALL + 2), a, items)


def skip_edges(analysis: Analysis, items: list[Primitive]) -> list[Primitive]:
    """An edge for each named tensor that a layer of a flow reads from a layer other than
    the one right before it (a U-Net's skips, an FPN's laterals): out of the side of the
    box or frame that names it facing the reader, across to a lane beside the reader, and
    into the reader's side at its header, with the tensor's name at its start."""
    drawn = {item.path: item for item in items if isinstance(item, Box | Frame)}
    saved: dict[str, Node] = {}
    out: list[Primitive] = []
    for nodes in analysis.net.flows.values():
        before = None
        for node in (n for n in nodes if n.path in analysis.shapes):
            for name in node.reads:
                source = saved.get(name)
                if source is not None and source is not before and source.path in drawn and node.path in drawn:
                    out += _skip(drawn[source.path], drawn[node.path], name, len(out) // 2)
            saved.update(dict.fromkeys(node.saves, node))
            before = node
    return out


def _skip(src: Box | Frame, dst: Box | Frame, name: str, k: int) -> list[Primitive]:
    """A skip edge from ``src`` (leaving near its end, where its output is) to ``dst``, in
    lane ``k`` (lanes keep several skips into one column apart)."""
    rightward = dst.x >= src.x + src.w / 2
    x0 = src.x + src.w if rightward else src.x
    x1 = dst.x if rightward else dst.x + dst.w
    y0 = src.y + (src.h / 2 if isinstance(src, Box) else src.h - PAD - 4)
    y1 = dst.y + (dst.h / 2 if isinstance(dst, Box) else HEADER / 2)
    lane = x1 - (1 if rightward else -1) * (6 + 4 * (k % 3))
    edge = Edge(((x0, y0), (lane, y0), (lane, y1), (x1, y1)), True, name)
    return [edge, Text(x0 + (3 if rightward else -3), y0 - 3, name, anchor="start" if rightward else "end", kind="skip")]


def layout(analysis: Analysis, options: Options | None = None) -> Diagram:
    """The picture of an analysed spec: flows as columns left to right, a long flow
    wrapped into several columns (at the lowest height in COLUMNS that keeps the picture
    within ASPECT, so that a deep network does not become one long strip)."""
    for column in COLUMNS:
        diagram = _layout(analysis, options or Options(), column)
        if diagram.width <= ASPECT * diagram.height:
            break
    return diagram


def _layout(analysis: Analysis, options: Options, column: float) -> Diagram:
    net = analysis.net
    lay = _Layout(analysis, options)
    columns, raised = [], []
    for name, nodes in net.flows.items():
        if lay.enabled(nodes):
            columns.append(_flow(lay, name, nodes, column))
            raised.append(lay.raised)
    changed = {k: v for k, v in net.params.items() if k in net.param_decls and v != net.param_decls[k].default}
    title = net.name + (" (" + ", ".join(f"{k}={_value(v)}" for k, v in changed.items()) + ")" if changed else "")
    t = analysis.total
    shown = ", ".join(f"{name} {fmt(shape)}" for name, shape in analysis.outputs.items())
    facts = [f"input {fmt(net.input)}", f"output {fmt(analysis.output)}" if len(analysis.outputs) == 1 else f"outputs {shown}"]
    if options.counts:
        facts[1:1] = [f"{t.trainable:,} trainable + {t.non_trainable:,} non-trainable parameters", f"{t.macs:,} multiply-adds"]
    subtitle = " \u00b7 ".join(facts)
    items: list[Primitive] = [
        Text(MARGIN, MARGIN + 14, title, 16, "start", "title", True),
        Text(MARGIN, MARGIN + 30, subtitle, 10, "start", "subtitle"),
    ]
    x, top = MARGIN, MARGIN + 48
    height = 0.0
    for col, before in zip(columns, raised):  # a flow before a rising one moves down by what that one rose
        items.extend(col.at(x, top + lay.raised - before))
        x += col.w + FLOW_GAP
        height = max(height, col.h + lay.raised - before)
    items += skip_edges(analysis, items)
    width = max(x - FLOW_GAP, MARGIN + text_width(title, 16), MARGIN + text_width(subtitle, 10)) + MARGIN
    return Diagram(width, top + height + MARGIN, tuple(items), title)
