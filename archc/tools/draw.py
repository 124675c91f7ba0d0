"""Writing a :class:`~archc.tools.diagram.Diagram`: SVG directly (no dependency, the same bytes
for the same spec) or PNG/PDF through matplotlib (``archc[plot]``, imported only then).
A file is written to a temporary name beside its target and moved into place, so a
failure leaves nothing behind."""

from __future__ import annotations

import math
from pathlib import Path

from archc.passes.analysis import Analysis
from archc.tools.diagram import FONT, LINE_H, PAD, SMALL, Box, Diagram, Edge, Frame, Join, Options, layout

STROKE = "#333333"
SKIP = "#2a6fb0"  # skip edges and their tensor names
ARROW = 5.0


CIRCLED = ("+", "\u00d7")  # joins drawn as a circled sign: a residual's sum, a gate's product


def circled_strokes(join: Join) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """The two strokes of a circled "+" (upright) or "x" (diagonal), inside its circle."""
    d = join.w / 2 - 3
    if join.symbol == "+":
        return [((join.x - d, join.y), (join.x + d, join.y)), ((join.x, join.y - d), (join.x, join.y + d))]
    e = d * math.sqrt(0.5)
    return [((join.x - e, join.y - e), (join.x + e, join.y + e)), ((join.x - e, join.y + e), (join.x + e, join.y - e))]


def _n(v: float) -> str:
    """Fixed formatting: one decimal at most, so the bytes never depend on float noise."""
    text = f"{v:.1f}"
    return text[:-2] if text.endswith(".0") else text


def arrowhead(points: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
    """The triangle at the end of an edge, pointing along its last segment."""
    (x0, y0), (x1, y1) = points[-2], points[-1]
    length = max(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5, 1e-9)
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    bx, by = x1 - ux * ARROW * 1.6, y1 - uy * ARROW * 1.6
    return ((x1, y1), (bx - uy * ARROW * 0.7, by + ux * ARROW * 0.7), (bx + uy * ARROW * 0.7, by - ux * ARROW * 0.7))


def _shortened(points: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
    """The edge's line stops where its arrowhead begins, so the tip stays sharp."""
    (x0, y0), (x1, y1) = points[-2], points[-1]
    length = max(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5, 1e-9)
    cut = min(ARROW * 1.2, length)
    return (*points[:-1], (x1 - (x1 - x0) / length * cut, y1 - (y1 - y0) / length * cut))


SVG_STYLE = """\
text { font-family: Helvetica, Arial, "DejaVu Sans", sans-serif; fill: #222222; }
.layer rect { stroke: #333333; stroke-width: 1; }
.layer text { font-size: 11px; }
.layer text.note { font-size: 9px; fill: #555555; }
.block > rect { fill: #fafafa; stroke: #9a9a9a; stroke-width: 1; }
.repeat > rect { fill: none; stroke: #7a5fb0; stroke-width: 1.2; stroke-dasharray: 5 3; }
.combinator > rect { fill: none; stroke: #9a9a9a; stroke-dasharray: 2 2; }
.frame-title { font-size: 9px; font-weight: bold; }
.frame-note { font-size: 9px; fill: #555555; }
.repeat .frame-title { fill: #5a3f90; }
.edge { fill: none; stroke: #333333; stroke-width: 1; }
.head { fill: #333333; stroke: none; }
.edge.skip { stroke: #2a6fb0; stroke-dasharray: 4 3; }
.head.skip { fill: #2a6fb0; }
.skip { font-size: 9px; font-style: italic; fill: #2a6fb0; }
.join circle, .join rect { fill: #ffffff; stroke: #333333; stroke-width: 1; }
.join text { font-size: 9px; }
.shape { font-size: 9px; fill: #666666; }
.path { font-size: 9px; font-style: italic; fill: #555555; }
.flow { font-size: 13px; font-weight: bold; }
.note { font-size: 9px; fill: #555555; }
.title { font-size: 16px; font-weight: bold; }
.subtitle { font-size: 10px; fill: #444444; }
"""


def to_svg(diagram: Diagram) -> str:
    """The diagram as SVG text: each layer a ``<g class="layer" data-path=...>``, each
    block a ``<g class="block|repeat|combinator" data-path=...>`` (frames contain no
    layers in the XML: they are drawn first, underneath)."""
    from xml.sax.saxutils import escape, quoteattr

    def pts(points) -> str:
        return " ".join(f"{_n(x)},{_n(y)}" for x, y in points)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_n(diagram.width)}" height="{_n(diagram.height)}" '
        f'viewBox="0 0 {_n(diagram.width)} {_n(diagram.height)}">',
        f"<title>{escape(diagram.title)}</title>",
        f"<style>\n{SVG_STYLE}</style>",
        '<rect width="100%" height="100%" fill="#ffffff"/>',
    ]
    for item in diagram.items:
        if isinstance(item, Box):
            out.append(f'<g class="layer" data-path={quoteattr(item.path)} data-op={quoteattr(item.op)}>')
            out.append(f'<rect x="{_n(item.x)}" y="{_n(item.y)}" width="{_n(item.w)}" height="{_n(item.h)}" rx="3" fill="{item.fill}"/>')
            cx = item.x + item.w / 2
            for i, line in enumerate(item.lines):
                cls = "" if i == 0 else ' class="note"'
                y = item.y + 14 + i * LINE_H
                out.append(f'<text x="{_n(cx)}" y="{_n(y)}" text-anchor="middle"{cls}>{escape(line)}</text>')
            out.append("</g>")
        elif isinstance(item, Frame):
            out.append(f'<g class="{item.kind}" data-path={quoteattr(item.path)}>')
            out.append(f'<rect x="{_n(item.x)}" y="{_n(item.y)}" width="{_n(item.w)}" height="{_n(item.h)}" rx="5"/>')
            out.append(f'<text x="{_n(item.x + PAD)}" y="{_n(item.y + 11)}" class="frame-title">{escape(item.title)}</text>')
            if item.note:
                x = item.x + item.w - PAD
                out.append(f'<text x="{_n(x)}" y="{_n(item.y + 11)}" text-anchor="end" class="frame-note">{escape(item.note)}</text>')
            out.append("</g>")
        elif isinstance(item, Edge):
            line = _shortened(item.points) if item.arrow else item.points
            skip = f" data-tensor={quoteattr(item.skip)}" if item.skip else ""
            out.append(f'<polyline class="edge{" skip" if item.skip else ""}"{skip} points="{pts(line)}"/>')
            if item.arrow:
                out.append(f'<polygon class="head{" skip" if item.skip else ""}" points="{pts(arrowhead(item.points))}"/>')
        elif isinstance(item, Join):
            out.append(f'<g class="join" data-path={quoteattr(item.path)} data-symbol={quoteattr(item.symbol)}>')
            if item.symbol in CIRCLED:
                r = item.w / 2
                out.append(f'<circle cx="{_n(item.x)}" cy="{_n(item.y)}" r="{_n(r)}"/>')
                d = "".join(f"M{_n(a[0])},{_n(a[1])}L{_n(b[0])},{_n(b[1])}" for a, b in circled_strokes(item))
                out.append(f'<path class="edge" d="{d}"/>')
            else:
                out.append(
                    f'<rect x="{_n(item.x - item.w / 2)}" y="{_n(item.y - item.h / 2)}" width="{_n(item.w)}" height="{_n(item.h)}" rx="7"/>'
                )
                out.append(f'<text x="{_n(item.x)}" y="{_n(item.y + 3)}" text-anchor="middle">{escape(item.symbol)}</text>')
            out.append("</g>")
        else:
            anchor = "" if item.anchor == "start" else f' text-anchor="{item.anchor}"'
            out.append(f'<text x="{_n(item.x)}" y="{_n(item.y)}"{anchor} class="{item.kind}">{escape(item.text)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def draw_matplotlib(diagram: Diagram, path: Path) -> None:
    """The same primitives through matplotlib (PNG, PDF): one layout unit is one point.
    Metadata that would vary (creation dates, the software version) is left out, so
    the same diagram gives the same bytes with the same matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, FancyBboxPatch, Polygon

    fig = Figure(figsize=(diagram.width / 72, diagram.height / 72))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, diagram.width)
    ax.set_ylim(diagram.height, 0)
    ax.set_axis_off()
    family = "DejaVu Sans"
    kinds = {
        "shape": dict(size=SMALL, color="#666666"),
        "path": dict(size=SMALL, color="#555555", style="italic"),
        "flow": dict(size=13, weight="bold"),
        "note": dict(size=SMALL, color="#555555"),
        "title": dict(size=16, weight="bold"),
        "subtitle": dict(size=10, color="#444444"),
        "skip": dict(size=SMALL, color=SKIP, style="italic"),
    }
    ha = {"start": "left", "middle": "center", "end": "right"}

    def text(x, y, s, **kw):
        ax.text(x, y, s, family=family, va="baseline", color=kw.pop("color", "#222222"), **kw)

    for item in diagram.items:
        if isinstance(item, Box):
            ax.add_patch(FancyBboxPatch((item.x, item.y), item.w, item.h, "round,pad=0,rounding_size=3", fc=item.fill, ec=STROKE, lw=0.8))
            for i, line in enumerate(item.lines):
                style = dict(size=FONT) if i == 0 else dict(size=SMALL, color="#555555")
                text(item.x + item.w / 2, item.y + 14 + i * LINE_H, line, ha="center", **style)
        elif isinstance(item, Frame):
            repeat = item.kind == "repeat"
            ax.add_patch(
                FancyBboxPatch(
                    (item.x, item.y),
                    item.w,
                    item.h,
                    "round,pad=0,rounding_size=5",
                    fc="none" if item.kind != "block" else "#fafafa",
                    ec="#7a5fb0" if repeat else "#9a9a9a",
                    lw=1.0,
                    ls=(0, (5, 3)) if repeat else (0, (2, 2)) if item.kind == "combinator" else "-",
                )
            )
            text(item.x + PAD, item.y + 11, item.title, size=SMALL, weight="bold", color="#5a3f90" if repeat else "#222222")
            if item.note:
                text(item.x + item.w - PAD, item.y + 11, item.note, size=SMALL, ha="right", color="#555555")
        elif isinstance(item, Edge):
            line = _shortened(item.points) if item.arrow else item.points
            color, style = (SKIP, (0, (4, 3))) if item.skip else (STROKE, "-")
            ax.plot([p[0] for p in line], [p[1] for p in line], color=color, lw=0.8, ls=style, solid_capstyle="butt")
            if item.arrow:
                ax.add_patch(Polygon(arrowhead(item.points), closed=True, fc=color, ec="none"))
        elif isinstance(item, Join):
            if item.symbol in CIRCLED:
                ax.add_patch(Circle((item.x, item.y), item.w / 2, fc="white", ec=STROKE, lw=0.8))
                for a, b in circled_strokes(item):
                    ax.plot([a[0], b[0]], [a[1], b[1]], color=STROKE, lw=0.8)
            else:
                x, y = item.x - item.w / 2, item.y - item.h / 2
                ax.add_patch(FancyBboxPatch((x, y), item.w, item.h, "round,pad=0,rounding_size=7", fc="white", ec=STROKE, lw=0.8))
                text(item.x, item.y + 3, item.symbol, size=SMALL, ha="center")
        else:
            text(item.x, item.y, item.text, ha=ha[item.anchor], **kinds.get(item.kind, dict(size=item.size)))
    suffix = path.suffix.lower()
    metadata = {"Software": None} if suffix == ".png" else {"Creator": None, "Producer": None, "CreationDate": None}
    fig.savefig(path, format=suffix[1:], dpi=144 if suffix == ".png" else 72, metadata=metadata)


FORMATS = (".svg", ".png", ".pdf")


def check_suffix(path: str | Path) -> str:
    """The picture's format from its file name, or a one-line error."""
    from archc.syntax.errors import UserError

    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"-o: expected a file name ending in {', '.join(FORMATS)}, found '{Path(path).name}'")
    return suffix


def render(analysis: Analysis, path: str | Path, options: Options | None = None) -> Path:
    """Draw ``analysis`` into ``path`` (.svg, .png or .pdf), written whole or not at all."""
    import os
    import tempfile

    from archc.codegen.backend import as_new_file
    from archc.syntax.errors import UserError

    path = Path(path)
    suffix = check_suffix(path)
    diagram = layout(analysis, options or Options())
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except OSError as exc:
        raise UserError(f"-o: expected a writable file, found {path} ({exc.strerror or exc})") from None
    try:
        if suffix == ".svg":
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(to_svg(diagram))
        else:
            os.close(fd)
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                raise UserError(
                    f"-o: expected matplotlib for {suffix} (pip install 'archc[plot]'), found it missing; .svg needs nothing"
                ) from None
            draw_matplotlib(diagram, Path(tmp))
        as_new_file(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"-o: expected a writable file, found {path} ({exc.strerror or exc})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
