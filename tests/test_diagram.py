"""archc graph: the SVG has one box per IR layer, says what each layer is, draws the
combinators as Figure 5 does, and is the same bytes every time; archc view serves the
ONNX export with Netron."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from bundled import buildable
from click.testing import CliRunner

from archc.api import load, spec_files
from archc.cli import main
from archc.ir.ops import Branches, Call, Node, Repeat, Residual, children, walk
from archc.tools.diagram import Options, label, layout
from archc.tools.draw import render, to_svg

ROOT = Path(__file__).parents[1]
SPECS = spec_files([str(ROOT / "specs"), str(ROOT / "examples")])
XCEPTION = ROOT / "specs/xception.yaml"
SVG = "{http://www.w3.org/2000/svg}"


def svg_of(spec: Path, options: Options | None = None, **overrides) -> ET.Element:
    return ET.fromstring(to_svg(layout(load(spec, overrides), options or Options())))


def groups(root: ET.Element, kind: str) -> list[ET.Element]:
    return [g for g in root.iter(f"{SVG}g") if g.get("class") == kind]


def box_texts(root: ET.Element) -> dict[str, list[str]]:
    """data-path -> the lines written in that layer's box (paths are unique: checked)."""
    boxes = groups(root, "layer")
    texts = {g.get("data-path"): [t.text for t in g.iter(f"{SVG}text")] for g in boxes}
    assert len(texts) == len(boxes), "two boxes with the same path"
    return texts


def expected_boxes(spec: Path, options: Options | None = None, **overrides) -> list[str]:
    """From the IR: every enabled leaf, and every combinator at the depth limit; a
    repeat's body once, or once per copy with --expand (keys as archc.passes.instances writes
    them); a dropped shortcut not at all."""
    options = options or Options()
    analysis = load(spec, overrides)
    out: list[str] = []

    def visit(nodes: list[Node], depth: int, base: tuple[str, str]) -> None:
        for node in nodes:
            if node.path not in analysis.shapes:
                continue
            key = base[1] + node.path[len(base[0]) :]
            if not children(node) or (options.depth is not None and depth >= options.depth):
                out.append(key)
                continue
            copies = range(node.times) if isinstance(node, Repeat) and options.expand else [None]
            for i in copies:
                for _, seq in children(node):
                    visit(seq, depth + 1, base if i is None else (node.path, f"{key}[{i}]"))

    for nodes in analysis.net.flows.values():
        visit(nodes, 1, ("", ""))
    return out


@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_one_box_per_ir_layer(spec):
    assert sorted(box_texts(svg_of(spec))) == sorted(expected_boxes(spec))


def test_xception_labels_flows_repeat_and_residuals():
    analysis = load(XCEPTION)
    root = svg_of(XCEPTION)
    texts = box_texts(root)
    entry = [n for n in walk(analysis.net.flows["entry"]) if n.path in analysis.shapes]
    first = {op: next(n for n in entry if n.op == op) for op in ("conv", "sepconv", "maxpool", "bn", "act")}
    assert texts[first["conv"].path] == ["Conv 32, 3x3, stride 2"]
    assert texts[first["sepconv"].path] == ["SeparableConv 128, 3x3"]
    assert texts[first["maxpool"].path] == ["MaxPool 3x3, stride 2"]
    assert texts[first["bn"].path] == ["BN"] and texts[first["act"].path] == ["ReLU"]
    shortcut = next(n for n in walk(analysis.net.flows["exit"]) if isinstance(n, Residual)).shortcut[0]
    assert texts[shortcut.path] == ["Conv 1024, 1x1, stride 2"]
    middle = analysis.net.flows["middle"][0]
    assert texts[next(n for n in walk([middle]) if n.op == "sepconv").path] == ["SeparableConv 728, 3x3"]

    words = [t.text for t in root.iter(f"{SVG}text")]
    assert {"entry flow", "middle flow", "exit flow"} <= set(words)
    (repeat,) = groups(root, "repeat")
    assert repeat.get("data-path") == middle.path
    assert "repeated 8 times" in [t.text for t in repeat.iter(f"{SVG}text")]
    # one '+' per residual that adds (the middle module drawn once)
    residuals = [n.path for n in walk([n for f in analysis.net.flows.values() for n in f]) if isinstance(n, Residual)]
    joins = [g.get("data-path") for g in groups(root, "join") if g.get("data-symbol") == "+"]
    assert sorted(joins) == sorted(residuals) and len(joins) == 5


@pytest.mark.parametrize("spec", ["inception_v3", "inception_v3_slim"])
def test_inception_modules_side_by_side_with_their_concatenation(spec):
    path = ROOT / "specs" / f"{spec}.yaml"
    analysis = load(path)
    root = svg_of(path)
    everything = [n for f in analysis.net.flows.values() for n in walk(f)]
    branches = [n for n in everything if isinstance(n, Branches)]
    concats = [g.get("data-path") for g in groups(root, "join") if g.get("data-symbol") == "concat"]
    assert sorted(concats) == sorted(n.path for n in branches)

    rects = {g.get("data-path"): g.find(f"{SVG}rect") for g in groups(root, "layer")}

    def extent(node: Node, axis: str, size: str) -> tuple[float, float]:
        start = float(rects[node.path].get(axis))
        return start, start + float(rects[node.path].get(size))

    for node in branches:  # the paths' boxes in columns left to right, starting on one row
        columns = [[n for n in walk(seq) if n.path in rects] for seq in node.paths.values()]
        for left, right in zip(columns, columns[1:]):
            assert max(extent(n, "x", "width")[1] for n in left) < min(extent(n, "x", "width")[0] for n in right), node.path
        firsts = [extent(column[0], "y", "height") for column in columns]
        assert max(top for top, _ in firsts) < min(bottom for _, bottom in firsts), node.path


def test_same_spec_same_bytes(tmp_path):
    for name in ("a", "b"):
        assert CliRunner().invoke(main, ["graph", str(XCEPTION), "-o", str(tmp_path / f"{name}.svg")]).exit_code == 0
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()


@pytest.mark.parametrize("suffix", [".png", ".pdf"])
def test_png_and_pdf_are_drawn_and_deterministic(tmp_path, suffix):
    pytest.importorskip("matplotlib")
    analysis = load(ROOT / "examples/vgg16.yaml")
    first, second = render(analysis, tmp_path / f"a{suffix}"), render(analysis, tmp_path / f"b{suffix}")
    magic = b"\x89PNG" if suffix == ".png" else b"%PDF"
    assert first.read_bytes().startswith(magic)
    assert first.read_bytes() == second.read_bytes()


def test_expand_draws_every_copy():
    analysis = load(XCEPTION, {"middle_repeats": 3})
    boxes = box_texts(svg_of(XCEPTION, Options(expand=True), middle_repeats=3))
    assert sorted(boxes) == sorted(expected_boxes(XCEPTION, Options(expand=True), middle_repeats=3))
    middle = analysis.net.flows["middle"][0]
    per_copy = [n for n in walk(middle.body) if not children(n) and n.path in analysis.shapes]
    copies = [p for p in boxes if p.startswith(f"{middle.path}[")]
    assert len(copies) == 3 * len(per_copy)
    assert {p.split("/")[1] for p in copies} == {"repeat[0]", "repeat[1]", "repeat[2]"}


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_depth_collapses_deeper_blocks(depth):
    analysis = load(XCEPTION)
    root = svg_of(XCEPTION, Options(depth=depth))
    boxes = box_texts(root)
    assert sorted(boxes) == sorted(expected_boxes(XCEPTION, Options(depth=depth)))
    if depth == 1:  # a box per row of the parameter table
        assert len(boxes) == len(analysis.rows)
        (middle,) = analysis.net.flows["middle"]
        assert boxes[middle.path][0] == f"{middle.body[0].name}: repeated 8 times"
        assert boxes[middle.path][1] == f"{analysis.counts[middle.path].trainable:,} params"


def test_collapsed_short_block_says_what_it_does():
    root = svg_of(XCEPTION, Options(depth=3))
    analysis = load(XCEPTION)
    sep_bn = next(n for n in walk(analysis.net.flows["exit"]) if isinstance(n, Call) and n.block == "sep_bn")
    assert box_texts(root)[sep_bn.path] == [
        "SeparableConv 728, 3x3 \u2192 BN",
        f"{sep_bn.name} \u00b7 {analysis.counts[sep_bn.path].trainable:,} params",
    ]


def test_counts_on_blocks_and_no_counts_hides_them():
    analysis = load(XCEPTION)
    text = to_svg(layout(analysis))
    down = analysis.net.flows["entry"][-1]
    frame = next(g for g in groups(ET.fromstring(text), "block") if g.get("data-path") == down.path)
    assert f"{analysis.counts[down.path].trainable:,} params" in [t.text for t in frame.iter(f"{SVG}text")]
    assert f"{analysis.total.trainable:,} trainable" in text
    hidden = to_svg(layout(analysis, Options(counts=False)))
    assert "params" not in hidden and f"{analysis.total.trainable:,}" not in hidden


def test_variants_draw_their_own_picture():
    root = svg_of(XCEPTION, segments=4, residual=False)
    labels = {t for lines in box_texts(root).values() for t in lines}
    assert "SeparableConv 728, 3x3, 4 segments" in labels and "SeparableConv 728, 3x3" not in labels
    assert not [g for g in groups(root, "join") if g.get("data-symbol") == "+"]
    assert sorted(box_texts(root)) == sorted(expected_boxes(XCEPTION, segments=4, residual=False))
    title = next(t.text for t in root.iter(f"{SVG}text") if t.get("class") == "title")
    assert title == "xception (segments=4, residual=false)"


def test_flow_titles_come_from_the_spec_s_flow_names(tmp_path):
    spec = tmp_path / "two.yaml"
    spec.write_text("name: two\ninput: [8, 8, 3]\nflows:\n  trunk: [{conv: {filters: 4, kernel: 3}}]\n  top: [flatten]\n")
    titles = [t.text for t in svg_of(spec).iter(f"{SVG}text") if t.get("class") == "flow"]
    assert titles == ["trunk flow", "top flow"]


def test_an_op_added_later_gets_a_generic_label():
    from typing import Literal

    class PixelShuffle(Node):
        op: Literal["pixel_shuffle"] = "pixel_shuffle"
        upscale: int = 2
        epsilon: float = 1e-5

    assert label(PixelShuffle(name="ps", epsilon=1e-6)) == "PixelShuffle epsilon 1e-06"
    assert label(PixelShuffle(name="ps")) == "PixelShuffle"


def test_a_gate_is_its_body_beside_the_identity_joined_by_a_product():
    spec = ROOT / "examples/mobilenet_v3.yaml"
    analysis = load(spec)
    root = svg_of(spec)
    gates = [n.path for nodes in analysis.net.flows.values() for n in walk(nodes) if n.op == "gate" and n.path in analysis.shapes]
    joins = {g.get("data-path"): g.get("data-symbol") for g in groups(root, "join")}
    assert gates and all(joins.get(path) == "\u00d7" for path in gates)
    labels = {t.text for t in root.iter(f"{SVG}text")}
    assert {"DepthwiseConv 3x3, stride 2", "HardSwish", "HardSigmoid"} <= labels


def test_a_unets_skips_are_drawn_across_from_the_encoder_to_the_decoder():
    """Each tensor the U-Net's decoder reads from the encoder is one dashed edge that
    leaves the side of the stage that names it, facing the decoder, and enters the side
    of the decoder block that reads it; a read of the layer right before (up16 into
    block2) is the flow's own edge, not a skip."""
    from archc.tools.diagram import Box, Edge, Frame

    analysis = load(ROOT / "examples/unet_resnet34.yaml")
    diagram = layout(analysis)
    drawn = {item.path: item for item in diagram.items if isinstance(item, Box | Frame)}
    skips = {item.skip: item for item in diagram.items if isinstance(item, Edge) and item.skip}
    assert sorted(skips) == ["stride16", "stride2", "stride32", "stride4", "stride8"]
    net = analysis.net
    names = {name: node.path for nodes in net.flows.values() for node in nodes for name in node.saves}
    readers = {name: node.path for node in net.flows["decoder"] for name in node.reads}
    for name, edge in skips.items():
        src, dst = drawn[names[name]], drawn[readers[name]]
        (x0, y0), *_, (x1, y1) = edge.points
        assert x0 == src.x + src.w and src.y <= y0 <= src.y + src.h, name  # out of the encoder stage's right side
        assert x1 == dst.x and dst.y <= y1 <= dst.y + dst.h, name  # into the decoder block's left side
        (lane, _), (lane2, _) = edge.points[1:3]
        assert lane == lane2 and x0 < lane < x1, name  # across, down or up a lane beside the decoder block, and in
    root = ET.fromstring(to_svg(diagram))
    assert sorted(e.get("data-tensor") for e in root.iter(f"{SVG}polyline") if e.get("data-tensor")) == sorted(skips)
    assert not [e for e in layout(load(XCEPTION)).items if isinstance(e, Edge) and e.skip]  # a chain has none


def test_a_unet_at_depth_1_is_a_u_with_each_skip_level():
    """With its blocks collapsed, the U-Net's encoder goes down, its decoder (which reads
    the encoder's tensors in the reverse order of their naming) comes back up beside
    it, each decoder block level with the encoder stage whose tensor it reads (the
    lower where it reads two), so that each skip is drawn straight across."""
    from archc.tools.diagram import Box, Edge

    analysis = load(ROOT / "examples/unet_resnet34.yaml")
    diagram = layout(analysis, Options(depth=1))
    centre = {i.path: i.y + i.h / 2 for i in diagram.items if isinstance(i, Box)}
    encoder, decoder = ([centre[n.path] for n in analysis.net.flows[f]] for f in ("encoder", "decoder"))
    assert encoder == sorted(encoder) and decoder == sorted(decoder, reverse=True)  # down, then up
    skips = [i for i in diagram.items if isinstance(i, Edge) and i.skip]
    assert len(skips) == 5
    level = [e.skip for e in skips if abs(e.points[0][1] - e.points[-1][1]) < 1e-6]
    assert sorted(level) == ["stride16", "stride2", "stride8"]
    # block1 reads two (stride32 joins it from below); block3 sits as low as block2 and
    # the shape written between them allow, a shape's gap above the stage it reads
    assert all(abs(e.points[0][1] - e.points[-1][1]) <= 2 * 33 for e in skips)
    assert max(encoder) > max(decoder) and min(decoder) < min(encoder)  # the decoder's bottom is the U's, its top above


def test_docs_diagrams_are_up_to_date():
    for spec in buildable(SPECS):
        committed = ROOT / "docs/diagrams" / f"{spec.stem}.svg"
        assert committed.exists() and committed.read_text() == to_svg(layout(load(spec))), (
            f"{committed.relative_to(ROOT)} is stale: run make docs"
        )
    u = ROOT / "docs/diagrams/unet_resnet34_depth1.svg"  # docs/pictures.md's U
    assert u.read_text() == to_svg(layout(load(ROOT / "examples/unet_resnet34.yaml"), Options(depth=1))), "run make docs"


# -- errors ---------------------------------------------------------------------------------
def one_line_error(args: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "archc", *args], capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    return proc.stderr.strip()


def test_bad_spec_gives_the_located_error(tmp_path):
    bad = ROOT / "tests/bad_specs"
    message = one_line_error(["graph", "unknown_key.yaml", "-o", str(tmp_path / "x.svg")], cwd=bad)
    assert message == "error: " + (bad / "unknown_key.yaml").read_text().splitlines()[0].removeprefix("# expect: ")
    assert not list(tmp_path.iterdir())


def test_unwritable_output_and_unknown_format_are_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    message = one_line_error(["graph", str(XCEPTION), "-o", str(blocker / "x.svg")])
    assert message.startswith(f"error: -o: expected a writable file, found {blocker / 'x.svg'} (")
    message = one_line_error(["graph", str(XCEPTION), "-o", str(tmp_path / "x.gif")])
    assert message == "error: -o: expected a file name ending in .svg, .png, .pdf, found 'x.gif'"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_graph_to_svg_imports_no_framework(tmp_path):
    code = (
        "import sys, json; from archc.cli import main\n"
        "try:\n    main(['graph', sys.argv[1], '-o', sys.argv[2]])\nexcept SystemExit: pass\n"
        "print(json.dumps(sorted(m for m in ('torch', 'tensorflow', 'keras', 'matplotlib') if m in sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(XCEPTION), str(tmp_path / "x.svg")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# -- archc view -----------------------------------------------------------------------------
TINY = """\
name: tiny
input: [32, 32, 3]
flows:
  features:
    - conv: {filters: 8, kernel: 3, stride: 2, padding: same}
    - bn
    - act: relu
    - residual:
        body: [sepconv: {filters: 8, kernel: 3, padding: same}, bn]
  head:
    - global_avg_pool
    - dense: 4
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def fetch(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


def start_view(spec, port: int, *, ignore_sigint: bool = False) -> subprocess.Popen:
    """``archc view`` as a shell's background job starts it when ``ignore_sigint``: with
    SIGINT ignored, which Ctrl-C must still stop."""
    return subprocess.Popen(
        [sys.executable, "-m", "archc", "view", str(spec), "--no-browser", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None,
    )


def wait_until_served(proc: subprocess.Popen, port: int) -> tuple[int, bytes]:
    deadline = time.monotonic() + 300  # the ONNX export: slow on a loaded 2-core machine
    while True:
        assert proc.poll() is None, proc.communicate()
        try:
            return fetch(f"http://localhost:{port}/")
        except OSError:
            assert time.monotonic() < deadline, "netron did not start"
            time.sleep(0.25)


def stop_within(proc: subprocess.Popen, signum: int, seconds: float) -> tuple[float, str]:
    """Send ``signum``; (seconds until the process ended, its stderr)."""
    sent = time.monotonic()
    proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    return time.monotonic() - sent, err


def test_view_serves_the_page_and_the_model_then_stops(tmp_path):
    pytest.importorskip("netron")
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    port = free_port()
    proc = start_view(spec, port, ignore_sigint=True)
    try:
        status, page = wait_until_served(proc, port)
        assert status == 200 and b"netron" in page.lower()
        status, model = fetch(f"http://localhost:{port}/data/tiny.onnx")
        assert status == 200
        graph = onnx.load_from_string(model).graph
        assert [i.name for i in graph.input] == ["image"] and any(n.op_type == "Conv" for n in graph.node)
    finally:
        took, err = stop_within(proc, signal.SIGINT, 30)
    assert proc.returncode == 0, err
    assert took < 2, f"archc view took {took:.1f} s to stop after SIGINT"
    assert "Traceback" not in err
    with pytest.raises(OSError):
        fetch(f"http://localhost:{port}/")


def test_view_stops_on_sigterm_and_frees_its_port(tmp_path):
    pytest.importorskip("netron")
    pytest.importorskip("onnxscript")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    port = free_port()
    proc = start_view(spec, port)
    try:
        wait_until_served(proc, port)
    finally:
        took, err = stop_within(proc, signal.SIGTERM, 30)
    assert proc.returncode == 0, err
    assert took < 2, f"archc view took {took:.1f} s to stop after SIGTERM"
    with pytest.raises(OSError):
        fetch(f"http://localhost:{port}/")
    with socket.socket() as sock:  # nothing listens there: it can be bound again (TIME_WAIT aside)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("localhost", port))
