"""The backend protocol is complete: the core calls backends' methods (render, load,
count, weights, export, import, train) and never names a bundled backend's modules,
imports a framework at module level, or derives a module path from an entry point; a
backend without an optional method is named, with what it lacks, in one line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from click.testing import CliRunner

import archc.codegen.backend as registry
from archc.backends.keras_backend import KerasBackend
from archc.backends.torch_backend import TorchBackend
from archc.cli import main
from archc.codegen.backend import Backend, Exporting, Importing, Training, WeightPorting

ROOT = Path(__file__).resolve().parent.parent
CORE = sorted(p for p in (ROOT / "archc").rglob("*.py") if "backends" not in p.relative_to(ROOT / "archc").parts)
FRAMEWORKS = ("torch", "keras", "tensorflow", "h5py", "onnx", "onnxruntime", "onnxscript")
SPEC = ROOT / "specs/xception.yaml"


def _imported(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every import that runs when ``path`` is imported."""
    out = []
    for node in _module_level(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.module, node.lineno))
    return out


def _module_level(tree: ast.AST):
    """The statements that run when the module is imported (not function bodies)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        yield node
        yield from _module_level(node)


def test_the_checks_see_the_core():
    assert len(CORE) > 20 and ROOT / "archc/tools/export.py" in CORE
    assert any(m == "click" for m, _ in _imported(ROOT / "archc/cli.py"))
    assert not any(m == "numpy" for m, _ in _imported(ROOT / "archc/tools/export.py"))  # imported inside export()


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_never_names_a_bundled_backends_modules(path):
    text = path.read_text()
    for name in ("torch_backend", "keras_backend"):
        assert name not in text, f"{path.relative_to(ROOT)} names {name}: call the backend's methods instead"


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_imports_no_framework_at_module_level(path):
    bad = [(m, line) for m, line in _imported(path) if m.split(".")[0] in FRAMEWORKS]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad} at module level: import it inside the function that needs it"


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_derives_no_module_path(path):
    """No import_module / __import__ of anything but a literal, and no entry point's
    ``.value`` taken apart: a backend is reached through its object only."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            if name in ("import_module", "__import__"):
                assert node.args and isinstance(node.args[0], ast.Constant), (
                    f"{path.relative_to(ROOT)}:{node.lineno} imports a computed name"
                )
    text = path.read_text()
    assert not any(f".value.{cut}(" in text for cut in ("split", "partition", "rpartition")), path.relative_to(ROOT)


@pytest.mark.parametrize("backend", [TorchBackend(), KerasBackend()], ids=lambda b: b.name)
def test_the_bundled_backends_implement_the_whole_protocol(backend):
    assert isinstance(backend, Backend) and isinstance(backend, WeightPorting) and isinstance(backend, Training)
    assert isinstance(backend, Exporting) and backend.export_formats
    assert not hasattr(backend, "import_sources") or isinstance(backend, Importing)


def test_the_bundled_backends_offer_the_formats_and_sources():
    from archc.tools.export import formats
    from archc.tools.importer import importers

    assert formats() == {"keras": ("keras", (".keras",)), "onnx": ("torch", (".onnx",)), "torchscript": ("torch", (".pt", ".ts"))}
    assert importers() == {"keras.applications": "keras"}


# -- a third party's minimal backend ------------------------------------------------------------


class Minimal:
    """Renders, loads and counts; nothing optional (but a format name, to reach export)."""

    name = "minimal"
    export_formats = {"minimal": (".min",)}

    def render(self, analysis):
        return "def create_model():\n    return None\n"

    def load(self, path):
        return registry.import_generated(path)

    def count(self, model):
        return (0, 0)


class Trains(Minimal):
    name = "trains"
    configs: list = []

    def train(self, config):
        self.configs.append(config)


class FakeEntryPoint:
    def __init__(self, cls):
        self.name, self.value, self.group, self._cls = cls.name, f"thirdparty:{cls.__name__}", registry.GROUP, cls

    def load(self):
        return self._cls


@pytest.fixture
def third_party(monkeypatch):
    """The installed backends plus Minimal and Trains, as the entry-point group gives them."""
    real = registry.entry_points

    def entry_points(group):
        return [*real(group=group), FakeEntryPoint(Minimal), FakeEntryPoint(Trains)]

    monkeypatch.setattr(registry, "entry_points", entry_points)
    Trains.configs = []


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_a_third_party_backend_is_listed_and_builds(third_party, tmp_path):
    assert "minimal\tthirdparty:Minimal" in run("backends").output
    result = run("build", SPEC, "-b", "minimal", "-o", tmp_path, "--quiet")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "xception_minimal.py").read_text().startswith("def create_model")


def test_train_names_a_backend_without_train(third_party, tmp_path):
    line = one_error(run("train", SPEC, "--data", "synthetic", "-o", tmp_path / "run", "--backend", "minimal"))
    assert line == "error: expected a backend that trains, found 'minimal' without train"
    assert not (tmp_path / "run").exists()


def test_train_calls_the_backends_train_with_every_option(third_party, tmp_path):
    result = run("train", SPEC, "--data", "synthetic", "-o", tmp_path, "-b", "trains", "--epochs", "2", "--no-augment", "--compile")
    assert result.exit_code == 0, result.output
    (config,) = Trains.configs
    assert (config.spec, config.backend, config.out, config.epochs) == (str(SPEC), "trains", tmp_path, 2.0)
    assert (config.augment, config.compile, config.device, config.precision) == (False, True, "auto", "auto")


def test_an_unknown_backend_is_one_line(third_party, tmp_path):
    line = one_error(run("train", SPEC, "--data", "synthetic", "-o", tmp_path, "-b", "minimall"))
    assert line.startswith("error: expected a backend (keras, minimal, torch, trains), found 'minimall'")


def test_export_names_a_backend_without_export(third_party, tmp_path):
    line = one_error(run("export", SPEC, "--format", "minimal", "-o", tmp_path / "m.min"))
    assert line == (
        "error: expected a backend that exports, found 'minimal' without export, checkpoint_suffixes, export_weights, "
        "load_weights, instance_counts, activations, save_checkpoint, load_checkpoint"
    )
    assert list(tmp_path.iterdir()) == []


def test_import_names_a_target_without_weight_porting(third_party, tmp_path):
    (tmp_path / "w.h5").write_bytes(b"")
    line = one_error(run("import", SPEC, "--from", "keras.applications", tmp_path / "w.h5", "--to", "minimal", "-o", tmp_path / "w.min"))
    assert line.startswith("error: expected a backend that ports weights, found 'minimal' without checkpoint_suffixes")
