"""The command line: tables, JSON, check, schema, exit codes, and what it imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from archc.cli import main

ROOT = Path(__file__).parents[1]
XCEPTION = str(ROOT / "specs/xception.yaml")


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_params_table_lists_every_flow_and_the_totals():
    result = run("params", XCEPTION)
    assert result.exit_code == 0
    for text in ("entry", "middle", "exit", "head", "repeat x8", "22,855,952", "54,528", "19x19x728"):
        assert text in result.output


def test_params_json_has_totals_and_rows():
    data = json.loads(run("params", XCEPTION, "--json", "-p", "middle_repeats=4").output)
    assert data["params"]["middle_repeats"] == 4
    assert {"trainable", "non_trainable", "macs", "modules"} <= set(data)
    assert sum(row["trainable"] for row in data["modules"]) == data["trainable"]
    assert sum(row["macs"] for row in data["modules"]) == data["macs"]
    middle = next(row for row in data["modules"] if row["flow"] == "middle")
    assert middle["repeat"] == 4 and middle["output"] == [19, 19, 728]


def test_python_dash_m_is_the_same_program():
    proc = subprocess.run([sys.executable, "-m", "archc", "params", XCEPTION, "--json"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == json.loads(run("params", XCEPTION, "--json").output)


def test_check_passes_for_bundled_specs():
    result = run("check", str(ROOT / "specs"), str(ROOT / "examples"))
    assert result.exit_code == 0, result.output
    assert result.output.count(": ok (") == len([*ROOT.glob("specs/*.yaml"), *ROOT.glob("examples/*.yaml")])  # every one has expect:


def test_check_names_spec_number_expected_and_found(tmp_path):
    spec = tmp_path / "wrong.yaml"
    text = (ROOT / "specs/xception.yaml").read_text().replace("trainable: 22855952", "trainable: 22855950")
    spec.write_text(text)
    result = CliRunner().invoke(main, ["check", str(spec)])
    assert result.exit_code == 1
    assert f"{spec}: trainable: expected 22,855,950, found 22,855,952" in result.output


def test_bad_arguments_exit_2():
    assert run("params", XCEPTION, "-p", "nonsense").exit_code == 2
    assert CliRunner().invoke(main, ["params", XCEPTION, "-p", "classes=0"]).exit_code == 2
    assert CliRunner().invoke(main, ["frobnicate"]).exit_code == 2


def test_schema_accepts_every_bundled_spec_and_rejects_a_typo():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(run("schema").output)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in [*ROOT.glob("specs/*.yaml"), *ROOT.glob("examples/*.yaml")]:
        errors = list(validator.iter_errors(yaml.safe_load(path.read_text())))
        assert not errors, f"{path.name}: {errors[0].message}"
    bad = yaml.safe_load((ROOT / "specs/xception.yaml").read_text())
    bad["flows"]["entry"][0] = {"conv": {"filter": 32, "kernel": 3}}
    assert list(validator.iter_errors(bad))


def test_analysis_imports_no_framework():
    code = (
        "import sys, json; from archc.cli import main\n"
        "try:\n    main(['params', sys.argv[1], '--json'])\nexcept SystemExit: pass\n"
        "print(json.dumps(sorted(m for m in ('torch', 'tensorflow', 'keras', 'jax') if m in sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code, XCEPTION], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_build_writes_nothing_when_any_spec_is_bad(tmp_path):
    out = tmp_path / "out"
    bad = ROOT / "tests/bad_specs/segments.yaml"
    result = CliRunner().invoke(main, ["build", XCEPTION, str(bad), "-o", str(out), "-q"])
    assert result.exit_code == 2
    assert "expected segments that divide the 6 input channels" in result.output
    assert not out.exists() or not any(out.iterdir())


def test_build_writes_every_backend_file(tmp_path):
    result = CliRunner().invoke(main, ["build", XCEPTION, "-o", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xception_keras.py", "xception_torch.py"]


def test_built_files_have_an_ordinary_new_files_mode(tmp_path):
    """Written through a temporary file (all or nothing), yet readable as any new file
    is: 0666 less the umask, not mkstemp's 0600."""
    import os

    result = CliRunner().invoke(main, ["build", XCEPTION, "-o", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    mask = os.umask(0)
    os.umask(mask)
    assert {p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {0o666 & ~mask}
