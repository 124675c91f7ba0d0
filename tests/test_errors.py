"""Golden error messages: each file in bad_specs/ states its expected message on line 1
(from loading it, or from rendering it with a backend)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from archc.api import load
from archc.codegen.backend import get, registered
from archc.syntax.errors import SpecError

BAD = Path(__file__).parent / "bad_specs"
CASES = sorted(BAD.glob("*.yaml"))


def expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <message>'"
    return first.removeprefix("# expect: ")


def load_and_render(path: str) -> None:
    """What `archc build` does before writing: a spec may also fail in a backend."""
    analysis = load(path)
    for name in registered():
        get(name).render(analysis)


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_message(path, monkeypatch):
    monkeypatch.chdir(BAD)
    with pytest.raises(SpecError) as info:
        load_and_render(path.name)
    assert str(info.value) == expected(path)


def test_cli_prints_one_line_and_exits_2():
    path = BAD / "unknown_key.yaml"
    proc = subprocess.run([sys.executable, "-m", "archc", "params", path.name], cwd=BAD, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == f"error: {expected(path)}\n"
    assert "Traceback" not in proc.stderr


def test_bad_override_points_at_the_param_declaration(tmp_path):
    spec = Path(__file__).parents[1] / "specs" / "xception.yaml"
    proc = subprocess.run([sys.executable, "-m", "archc", "params", str(spec), "-p", "segments=lots"], capture_output=True, text=True)
    assert proc.returncode == 2
    line = next(i for i, text in enumerate(spec.read_text().splitlines(), 1) if text.startswith("  segments:"))
    assert proc.stderr == (
        f"error: {spec}:{line}:3: params.segments: expected 'depthwise' or a positive integer, "
        "found 'lots' (from the override segments=lots)\n"
    )


def test_segments_that_do_not_divide_channels_name_the_layer():
    spec = Path(__file__).parents[1] / "specs" / "xception.yaml"
    with pytest.raises(SpecError) as info:
        load(spec, {"segments": "3"})
    assert "expected segments that divide the 64 input channels, found segments 3 (from $segments)" in str(info.value)
    assert "blocks.sep_bn.body[0].sepconv" in info.value.loc.path


def test_unreadable_file():
    with pytest.raises(SpecError, match="expected a readable spec file"):
        load("no/such/spec.yaml")


def test_huge_file_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("name: x\n" + "# padding\n" * 300_000)
    with pytest.raises(SpecError, match="expected a spec of at most"):
        load(path)


def test_deep_nesting_is_refused(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("name: x\nflows: " + "[" * 200 + "]" * 200 + "\n")
    with pytest.raises(SpecError, match="nesting at most"):
        load(path)


HOLES = ["deep_flow_style", "deep_block_style", "tag_on_key", "tag_on_mapping", "nan_param", "inf_block_arg"]


@pytest.mark.parametrize("name", HOLES)
def test_hostile_yaml_is_one_line_exit_2_within_a_second(name, monkeypatch):
    """Nesting thousands deep (block and flow style), tags on keys and mappings, and
    non-finite numbers end in the golden line, fast, with no traceback."""
    path = BAD / f"{name}.yaml"
    monkeypatch.chdir(BAD)
    start = time.perf_counter()
    with pytest.raises(SpecError):
        load(path.name)
    assert time.perf_counter() - start < 1.0
    proc = subprocess.run([sys.executable, "-m", "archc", "params", path.name], cwd=BAD, capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"error: {expected(path)}\n")


@pytest.mark.parametrize("value", ["nan", "-inf", "1e999", "1" * 400])
def test_non_finite_overrides_are_refused(value):
    spec = Path(__file__).parents[1] / "specs" / "xception.yaml"
    with pytest.raises(SpecError, match="expected a finite number"):
        load(spec, {"dropout": value})
