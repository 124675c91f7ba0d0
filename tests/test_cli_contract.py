"""Every command of ``archc --help`` keeps one contract: a user error is one line and exit
2, anything else one line and exit 3 (a traceback only with ARCHC_TRACEBACK=1). The
commands are read from click, so a new command is held to it without a new test."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from archc.cli import main

ROOT = Path(__file__).parents[1]
GOOD = ROOT / "examples" / "vgg16.yaml"
COMMANDS = sorted(main.commands)
BAD_SPEC = "name: bad\ninput: [8, 8, 3]\nparams: {classes: 2}\nflows:\n  main:\n    - !!python/object:os.system echo\n"


def _value(param: click.Parameter, spec: Path, tmp: Path) -> str:
    """A value click accepts for ``param``: the spec for SPEC, an existing file where one
    must exist, a new path for an output, the first choice of a choice."""
    if param.name in ("spec", "specs"):
        return str(spec)
    kind = param.type
    if isinstance(kind, click.Choice):
        return str(kind.choices[0])
    if isinstance(kind, click.Path):
        if kind.exists:
            existing = tmp / "existing.pt"
            existing.write_bytes(b"\0")
            return str(existing)
        return str(tmp / "out.svg")
    if "=" in (param.metavar or ""):  # --sweep NAME=V1,V2,...
        return "classes=2,3"
    return "synthetic"  # --data


def command_line(name: str, spec: Path, tmp: Path) -> list[str]:
    """``archc NAME`` with every required argument and option given a value."""
    args = [name]
    for param in main.commands[name].params:
        if not param.required:
            continue
        if isinstance(param, click.Option):
            args.append(param.opts[0])
        args.append(_value(param, spec, tmp))  # one value, also for SPECS...
    return args


def invoke(args: list[str]):
    return CliRunner().invoke(main, args, prog_name="archc")


def takes_a_spec(name: str) -> bool:
    return any(p.name in ("spec", "specs") for p in main.commands[name].params)


def test_the_commands_are_read_from_click():
    assert {"train", "convert", "graph", "view", "export", "import", "params", "check", "build", "variants", "verify"} <= set(COMMANDS)


@pytest.mark.parametrize("name", [n for n in COMMANDS if takes_a_spec(n)])
def test_a_bad_spec_is_one_located_line_and_exit_2(name, tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(BAD_SPEC)
    result = invoke(command_line(name, spec, tmp_path))
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert result.output.startswith(f"error: {spec}:6:") and "without tags" in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_an_unknown_option_is_one_line_and_exit_2(name, tmp_path):
    result = invoke([*command_line(name, GOOD, tmp_path), "--no-such-option"])
    assert (result.exit_code, result.output) == (
        2,
        f"error: archc {name}: No such option '--no-such-option' (see archc {name} --help)\n",
    )


def test_an_unknown_command_is_one_line_and_exit_2():
    result = invoke(["frobnicate"])
    assert (result.exit_code, result.output) == (2, "error: archc: No such command 'frobnicate' (see archc --help)\n")


@pytest.mark.parametrize("name", COMMANDS)
def test_an_internal_error_in_any_command_is_one_line_and_exit_3(name, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(main.commands[name], "callback", broken)
    args = command_line(name, GOOD, tmp_path)
    result = invoke(args)
    spec = str(GOOD) if takes_a_spec(name) else "<no spec>"
    assert (result.exit_code, result.output) == (
        3,
        f"error: {spec}: a bug in archc, not in the spec (ZeroDivisionError: planted); please report it with the spec\n",
    )
    monkeypatch.setenv("ARCHC_TRACEBACK", "1")
    shown = invoke(args)
    assert isinstance(shown.exception, ZeroDivisionError)  # the traceback, on request


def test_help_and_version_are_not_errors():
    assert invoke(["--version"]).exit_code == 0
    for name in COMMANDS:
        assert invoke([name, "--help"]).exit_code == 0
