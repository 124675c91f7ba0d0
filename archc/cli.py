"""The ``archc`` command line. Every command keeps one contract (:func:`_contract`): a
spec problem or a bad option prints one located line and exits 2, a bug in archc one
line and exit 3, never a traceback."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from contextlib import contextmanager

import click

from archc.ir.params import parse_assignments
from archc.syntax.errors import SpecError, UserError, one_line


def _fail(status: int, message: str) -> None:
    click.echo(message, err=True)
    sys.exit(status)


@contextmanager
def _contract(path: str, spec: Callable[[], str]):
    """The one contract of every command: a user error (a spec, an option, a file) is one
    line and exit status 2; anything else is a bug in archc, not in the spec: one line that
    says so, with the spec's path, and exit status 3 (ARCHC_TRACEBACK=1 shows the
    traceback). ``--help``, ``--version`` and Ctrl-C keep click's behaviour."""
    try:
        yield
    except (SpecError, UserError) as exc:
        _fail(2, f"error: {exc}")
    except click.ClickException as exc:  # click's own checks of the command line: usage errors
        where = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else path
        _fail(exc.exit_code, f"error: {where}: {one_line(exc.format_message()).rstrip('.')} (see {where} --help)")
    except (click.exceptions.Exit, click.exceptions.Abort):
        raise
    except Exception as exc:
        if os.environ.get("ARCHC_TRACEBACK"):
            raise
        what = one_line(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        what = what if len(what) <= 200 else what[:197] + "..."
        _fail(3, f"error: {spec()}: a bug in archc, not in the spec ({what}); please report it with the spec")


def _spec_of(ctx: click.Context | None) -> str:
    params = ctx.params if ctx is not None else {}
    return params.get("spec") or ", ".join(params.get("specs") or ()) or "<no spec>"


class _Command(click.Command):
    """A command held to :func:`_contract`, from reading its command line to its end."""

    def make_context(self, info_name, args, parent=None, **extra):
        path = f"{parent.command_path} {info_name}" if parent is not None else str(info_name)
        with _contract(path, lambda: "<no spec>"):
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        with _contract(ctx.command_path, lambda: _spec_of(ctx)):
            return super().invoke(ctx)


class _Group(_Command, click.Group):
    """The ``archc`` group: its own command line under the contract (an unknown command is
    one line), and every command made with ``@main.command()`` a :class:`_Command`."""

    command_class = _Command


def _overrides(items: tuple[str, ...]) -> dict[str, str]:
    try:
        return parse_assignments(items)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="-p") from None


class _Offered(click.Choice):
    """A choice among what the installed backends offer (export formats, import
    sources, backend names), asked of the registry only when the option is used or
    shown, so that a third party's backend adds its own."""

    def __init__(self, offered):  # not Choice.__init__, which would fix the choices now
        self._offered = offered
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self._offered())


def _formats():
    from archc.tools.export import formats

    return formats()


def _sources():
    from archc.tools.importer import importers

    return importers()


def _backends():
    from archc.codegen.backend import registered

    return registered()


def _choice(name: str, values: list[str], help: str):
    """An option with a fixed set of values, the first the default."""
    return click.option(name, type=click.Choice(values), default=values[0], show_default=True, help=help)


def _tolerance(help: str):
    """verify's and export's --tolerance: one range and default, each its own help."""
    return click.option("--tolerance", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True, help=help)


param_option = click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE", help="Override a spec param (repeatable).")
specs_argument = click.argument("specs", nargs=-1, required=True, type=click.Path(dir_okay=True))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="archc")
def main() -> None:
    """archc: compile declarative CNN architecture specs to PyTorch and Keras code."""


@main.command()
@specs_argument
@param_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def params(specs, params, as_json):
    """Shapes, parameter counts and multiply-adds per module, and the feature taps (the
    last feature map at each reduction, where a detection or segmentation head reads)."""
    from archc.api import load, spec_files
    from archc.passes.taps import taps
    from archc.tools.report import print_table

    overrides = _overrides(params)
    results = [load(path, overrides) for path in spec_files(specs)]
    if as_json:
        data = [a.as_dict() | {"taps": [t.as_dict() for t in taps(a)]} for a in results]
        click.echo(json.dumps(data[0] if len(data) == 1 else data, indent=2))
    else:
        for analysis in results:
            print_table(analysis)


@main.command()
@specs_argument
def check(specs):
    """Compare each spec's computed counts with its expect: section (exit 1 on a mismatch)."""
    from archc.api import expectation_mismatches, load, spec_files

    failed = False
    for path in spec_files(specs):
        analysis = load(path)
        bad = expectation_mismatches(analysis)
        if analysis.net.expect is None:
            click.echo(f"{path}: no expect: section, nothing to check")
        elif not bad:
            click.echo(f"{path}: ok ({analysis.total.trainable:,} trainable, {analysis.total.non_trainable:,} non-trainable)")
        for what, expected, found in bad:
            failed = True
            click.echo(
                f"{path}: {what}: expected {expected:,}, found {found:,}"
                if isinstance(found, int)
                else f"{path}: {what}: expected {expected}, found {found}",
                err=True,
            )
    sys.exit(1 if failed else 0)


@main.command()
def schema():
    """Print the JSON Schema of the spec format (for editors)."""
    from archc.ir.schema import spec_schema

    click.echo(json.dumps(spec_schema(), indent=2))


@main.command()
@specs_argument
@param_option
@click.option("-b", "--backend", "backends", multiple=True, help="Backend to render (repeatable; default: all installed).")
@click.option("-o", "--out", "out_dir", default="generated", show_default=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("-q", "--quiet", is_flag=True, help="Do not print the parameter table.")
def build(specs, params, backends, out_dir, quiet):
    """Render each spec with the chosen backends into OUT (all files or none)."""
    from archc.api import build as build_one
    from archc.api import load, spec_files
    from archc.codegen.backend import registered
    from archc.tools.report import print_table

    overrides = _overrides(params)
    names = list(backends) or list(registered())
    if not names:
        raise UserError("expected an installed backend, found none (pip install -e . registers torch and keras)")
    paths = spec_files(specs)
    for path in paths:  # validate everything before writing anything
        load(path, overrides)
    for path in paths:
        written = build_one(path, names, out_dir, overrides)
        if not quiet:
            print_table(load(path, overrides))
        for file in written:
            click.echo(f"wrote {file}")


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option(
    "--sweep",
    "sweeps",
    multiple=True,
    required=True,
    metavar="NAME=V1,V2,...",
    help="Values of a param to sweep (repeatable: cartesian product).",
)
@param_option
@click.option(
    "-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the resolved specs and the tables."
)
@click.option(
    "--plot", "plot_file", type=click.Path(dir_okay=False), help="Draw parameters and multiply-adds against the swept value into this PNG."
)
def variants(spec, sweeps, params, out_dir, plot_file):
    """Write one resolved spec per combination of swept values, and a table of their counts."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from archc.tools.variants import parse_sweeps, plot, run, table_rows

    result = run(spec, parse_sweeps(sweeps), _overrides(params), out_dir)
    rows = table_rows(result)
    table = Table(title=escape(f"variants of {spec}"), title_justify="left")
    for column in rows[0]:
        table.add_column(escape(str(column)))
    for row in rows[1:]:
        table.add_row(*(f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else escape(str(v)) for v in row))
    Console(width=None if Console().is_terminal else 160).print(table)
    click.echo(f"wrote {len([v for v in result.variants if v.file])} specs, variants.csv and variants.md to {out_dir}")
    if plot_file:
        plot(result, plot_file)
        click.echo(f"wrote {plot_file}")


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False, exists=True))
@click.option(
    "--data",
    required=True,
    metavar="synthetic|PATH",
    help="Training data: 'synthetic' (smoke runs) or a folder with one sub-folder of JPEG/PNG images per class.",
)
@click.option(
    "--val-data",
    metavar="synthetic|PATH",
    help="Evaluate on this after each epoch and at the end (with the EMA weights when the recipe has ema).",
)
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Run folder: checkpoints, metrics.csv, the generated model, the final weights.",
)
@click.option(
    "-b", "--backend", default="torch", show_default=True, help="torch (DistributedDataParallel, under torchrun) or keras (tf.distribute)."
)
@param_option
@click.option("--image-size", metavar="H|HxW", help="Train at this input size instead of the spec's (smoke runs, low-resolution data).")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), help="Override the recipe's epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Override the recipe's batch size (per replica).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Override the recipe's initial learning rate.")
@click.option("--max-steps", type=click.IntRange(min=1), help="Stop after this many steps (the schedule still follows the epochs).")
@click.option(
    "--synthetic-samples", type=click.IntRange(min=1), default=1024, show_default=True, help="Samples per epoch of --data synthetic."
)
@click.option(
    "--log-every", type=click.IntRange(min=1), default=10, show_default=True, help="Steps between progress lines and metrics.csv rows."
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Steps between checkpoints (0: at the end of each epoch and of the run).",
)
@click.option("--resume/--no-resume", default=True, show_default=True, help="Resume from OUT/checkpoints/latest.* when it exists.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model (torch); jit_compile the step (keras).")
@_choice("--precision", ["auto", "bf16", "fp32"], "auto: bf16 autocast on GPU, fp32 on CPU.")
@_choice("--channels-last", ["auto", "on", "off"], "torch memory format (auto: on GPU).")
@click.option("--loader-workers", type=click.IntRange(min=0), help="Data-loading processes per replica (default: 4 on GPU, 0 on CPU).")
@click.option("--no-augment", is_flag=True, help="No random crops or flips of the training images (the recipe's augment:).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the initial weights, the data order, the crops and the flips.")
@_choice("--device", ["auto", "cpu", "cuda"], "torch device (auto: cuda when available).")
@_choice(
    "--bad-images", ["refuse", "skip"], "Files of an image folder that cannot be read: refuse the run, listing them, or train without them."
)
def train(spec, out_dir, params, image_size, compile_, no_augment, **options):
    """Train SPEC with its training: recipe; runs unchanged under torchrun or with TF_CONFIG (docs/training.md)."""
    from pathlib import Path

    from archc.codegen.backend import get, require
    from archc.training.kit import RunConfig, parse_image_size

    backend = get(options["backend"])
    require(backend, "trains", ("train",))
    config = RunConfig(
        spec=spec,
        out=Path(out_dir),
        params=_overrides(params),
        image_size=parse_image_size(image_size) if image_size else None,
        compile=compile_,
        augment=not no_augment,
        **options,
    )
    backend.train(config)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("spec", type=click.Path(dir_okay=False, exists=True))
@click.option("--sweep", "sweeps", multiple=True, required=True, metavar="NAME=V1,V2,...", help="Values of a param (repeatable: product).")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True, metavar="K", help="Trials per variant, seeded 0..K-1.")
@param_option
@click.option(
    "-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Sweep folder: manifest, trials/, tables, plots."
)
@_choice("--engine", ["local", "ray", "submitit"], "local: a process pool; ray: Ray Tune; submitit: a Slurm job array.")
@click.option("--jobs", type=click.IntRange(min=1), help="Trials at once (default: the CPUs over --cpus-per-trial).")
@click.option("--cpus-per-trial", type=click.IntRange(min=1), default=1, show_default=True, help="CPU threads of a trial.")
@click.option(
    "--gpus-per-trial", type=click.IntRange(min=0), default=0, show_default=True, help="GPUs of a trial (>1: DDP under torchrun)."
)
@click.option("--address", help="Ray: the address of a running cluster (default: a local Ray).")
@_choice("--cluster", ["auto", "slurm", "local"], "submitit: auto picks Slurm when it is there.")
@click.option("--partition", help="submitit: the Slurm partition.")
@click.option("--timeout-min", type=click.IntRange(min=1), default=24 * 60, show_default=True, help="submitit: a task's time limit.")
@click.option("--dry-run", is_flag=True, help="Write the manifest of trials and stop.")
@click.pass_context
def sweep(ctx, spec, sweeps, seeds, params, out_dir, engine, dry_run, cpus_per_trial, gpus_per_trial, **options):
    """Train every variant of SPEC (the product of --sweep values) with K seeds on an engine,
    then compare them; other options (--data, --val-data, --epochs, ...) go to archc train.
    Run it again to resume: finished trials are skipped (docs/experiments.md)."""
    from pathlib import Path

    from archc.passes.pipeline import load
    from archc.tools import sweep_engines, sweep_report
    from archc.tools.sweep import Resources, plan, write_manifest
    from archc.tools.variants import parse_sweeps

    load(spec, _overrides(params))  # the spec's own errors first, as every command gives them
    train_args = list(ctx.args)
    image_size = _train_options(spec, out_dir, train_args)
    engine_options = sweep_engines.Options(out=Path(out_dir).resolve(), **options)
    sweep_engines.check(engine, engine_options)
    resources = Resources(cpus_per_trial, gpus_per_trial)
    found = plan(spec, parse_sweeps(sweeps), seeds, out_dir, _overrides(params), train_args, resources, image_size)
    manifest = write_manifest(found)
    click.echo(f"wrote {manifest}: {len(found.trials)} trials ({len(found.trials) // seeds} variants x {seeds} seeds)")
    if dry_run:
        return
    results, wall = sweep_engines.execute(found.trials, engine, engine_options, click.echo)
    failed = [r["id"] for r in results if r.get("returncode") != 0]
    for path in sweep_report.write(found.manifest(), found.out):
        click.echo(f"wrote {path}")
    click.echo(f"engine wall time {wall:.1f} s for {len(results)} trials")
    if failed:
        click.echo(f"error: {len(failed)} trials failed (their trial.log says why): {', '.join(failed)}", err=True)
        sys.exit(1)


def _train_options(spec: str, out_dir: str, args: list[str]):
    """Check the options a sweep forwards to archc train, as train parses them, before any
    trial runs; return the --image-size they ask for (the size the counts are taken at)."""
    from archc.codegen.backend import get, require
    from archc.training.kit import parse_image_size

    try:  # click's own parsing (not train's contract, which would speak for archc train)
        ctx = click.Command.make_context(train, "train", [spec, "-o", out_dir, *args])
    except click.NoSuchOption as exc:  # neither the sweep's nor train's: the sweep's usage error
        raise click.NoSuchOption(exc.option_name, ctx=click.get_current_context()) from None
    except click.ClickException as exc:
        raise UserError(f"expected archc train's options after the sweep's, found: {exc.format_message()}") from None
    require(get(ctx.params["backend"]), "trains", ("train",))
    return parse_image_size(ctx.params["image_size"]) if ctx.params["image_size"] else None


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False, exists=True))
@param_option
@click.option("-b", "--backend", "backends", multiple=True, help="Backend to compare (repeatable; default: every installed one).")
@_tolerance("Largest difference allowed, relative to the largest |reference output|.")
@click.option("--batch", type=click.IntRange(min=1), default=2, show_default=True, help="Random inputs per forward pass.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the random weights and input.")
@click.option("--source", metavar="BACKEND", help="Backend the random weights go into first (default: torch).")
def verify(spec, params, backends, tolerance, batch, seed, source):
    """Build SPEC with every backend; compare parameter counts per module, port one set of
    random weights across, compare outputs (exit 1 naming the first module that differs)."""
    from archc.api import load
    from archc.tools.verify import print_result
    from archc.tools.verify import verify as run_verify

    analysis = load(spec, _overrides(params))
    result = run_verify(analysis, list(backends) or None, tolerance=tolerance, batch=batch, seed=seed, source=source)
    print_result(result)
    sys.exit(0 if result.ok else 1)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False, exists=True))
@click.argument("src", metavar="IN", type=click.Path(dir_okay=False, exists=True))
@click.argument("dst", metavar="OUT", type=click.Path(dir_okay=False))
@param_option
@click.option("--from", "source", metavar="BACKEND", help="Backend of IN (default: from its suffix, .pt/.pth torch, .weights.h5 keras).")
@click.option("--to", "target", metavar="BACKEND", help="Backend of OUT (default: from its suffix).")
def convert(spec, src, dst, params, source, target):
    """Port a checkpoint of SPEC between backends: a torch state_dict file <-> a Keras
    .weights.h5, through archc's neutral weight format (tensors copied bit for bit)."""
    from archc.api import load
    from archc.tools.verify import backend_for_file, porting_backends
    from archc.tools.verify import convert as run_convert

    analysis = load(spec, _overrides(params))
    able, _ = porting_backends()
    source = source or backend_for_file(src, able)
    target = target or backend_for_file(dst, able)
    if source == target:
        raise UserError(f"expected two different backends, found '{source}' for both IN and OUT")
    n = run_convert(analysis, source, target, src, dst)
    click.echo(f"wrote {dst}: {n} weighted instances, {source} -> {target}")


# -- pictures: archc graph, archc view ----------------------------------------------------
@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@param_option
@click.option("-o", "--out", "out_file", required=True, type=click.Path(dir_okay=False), help="The picture: .svg, .png or .pdf.")
@click.option("--expand", is_flag=True, help="Draw every copy of a repeat (default: once, 'repeated N times').")
@click.option("--depth", type=click.IntRange(min=1), metavar="K", help="Draw blocks K levels deep; collapse deeper ones into single boxes.")
@click.option("--no-counts", is_flag=True, help="Leave out the parameter counts.")
def graph(spec, params, out_file, expand, depth, no_counts):
    """Draw SPEC as a diagram like the Xception paper's Figure 5: flows as columns, a box
    per layer, residual and branch edges, shapes on the edges, parameters per block."""
    from archc.api import load
    from archc.tools.diagram import Options
    from archc.tools.draw import check_suffix, render

    check_suffix(out_file)
    analysis = load(spec, _overrides(params))
    render(analysis, out_file, Options(expand=expand, depth=depth, counts=not no_counts))
    click.echo(f"wrote {out_file}")


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@param_option
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Port to serve on (default: a free one).")
@click.option("--host", default="localhost", show_default=True, help="Address to listen on.")
@click.option("--no-browser", is_flag=True, help="Only serve; do not open a browser.")
@click.option(
    "-o", "--out", "onnx_file", type=click.Path(dir_okay=False), help="Keep the exported ONNX model here (default: a temporary file)."
)
def view(spec, params, port, host, no_browser, onnx_file):
    """Export SPEC's generated torch model to ONNX and open it in Netron (Ctrl-C stops)."""
    import tempfile
    from pathlib import Path

    from archc.api import load
    from archc.tools.view import export_onnx, serving, wait_for_stop_signal

    analysis = load(spec, _overrides(params))
    with tempfile.TemporaryDirectory(prefix="archc-view-") as tmp:
        path = export_onnx(analysis, onnx_file or Path(tmp) / f"{analysis.net.name}.onnx")
        with serving(path, host, port, browse=not no_browser) as (host, port):
            click.echo(f"serving {path.name} with Netron at http://{host}:{port}/ (Ctrl-C to stop)", err=True)
            wait_for_stop_signal()
    # Server stopped, port and temporary files freed: leave without tearing down torch and
    # the exporter, which takes seconds on a busy machine (Ctrl-C should be prompt).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# -- deploy and reuse: archc export / archc import (docs/export.md) ---------------------------


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False, exists=True))
@param_option
@click.option("--format", "fmt", type=_Offered(_formats), required=True, help="What to write.")
@click.option(
    "--weights",
    type=click.Path(dir_okay=False, exists=True),
    help="A torch state_dict (.pt/.pth) or Keras .weights.h5 of SPEC, as archc convert reads them (default: seeded random weights).",
)
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False), help="The file to write (.onnx, .pt, .keras).")
@click.option("--no-fold", is_flag=True, help="Keep the batch norms (default: fold each into the layer before it).")
@click.option("--image-size", metavar="H|HxW", help="Export for this input size instead of the spec's.")
@_tolerance("Largest output difference allowed, relative to the largest |unfolded output|.")
def export(spec, params, fmt, weights, out, no_fold, image_size, tolerance):
    """An inference model of SPEC with its batch norms folded and its average pools swapped
    with the 1x1 conv after them, as ONNX, TorchScript or a .keras file; written only
    when its outputs match the unfolded model's (exit 1 if not)."""
    from archc.api import load
    from archc.tools.export import ExportCheckFailed
    from archc.tools.export import export as run_export
    from archc.training.kit import parse_image_size

    analysis = load(spec, _overrides(params), parse_image_size(image_size) if image_size else None)
    try:
        result = run_export(analysis, fmt, out, weights, fold=not no_fold, tolerance=tolerance)
    except ExportCheckFailed as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"weights: {result.weights}")
    click.echo(f"batch norms folded: {result.folded} of {result.batch_norms}")
    if result.swapped:
        click.echo(f"average pools moved after their 1x1 conv: {result.swapped}")
    for what, rel in result.checks:
        click.echo(f"{what}: max relative difference {rel:.2e}")
    click.echo(f"wrote {result.path} ({fmt})")


@main.command("import")
@click.argument("spec", type=click.Path(dir_okay=False, exists=True))
@param_option
@click.option(
    "--from",
    "source",
    type=_Offered(_sources),
    required=True,
    help="Where the weights come from: a keras.applications model of the same architecture.",
)
@click.argument("src", metavar="FILE", type=click.Path(dir_okay=False, exists=True))
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False), help="The checkpoint to write.")
@click.option("--to", "target", type=_Offered(_backends), required=True, help="torch (a state_dict) or keras (.weights.h5).")
@click.option("--image-size", metavar="H|HxW", help="Build the models at this input size instead of the spec's.")
@click.option(
    "--partial",
    is_flag=True,
    help="FILE holds the spec at its defaults (and --source-param): load every tensor whose place and shape fit the -p variant, report the rest.",
)
@click.option("--source-param", "source_params", multiple=True, metavar="NAME=VALUE", help="With --partial: a param of the architecture FILE holds.")
def import_(spec, params, source, src, out, target, image_size, partial, source_params):
    """Weights of a keras.applications model (FILE: .h5 as it ships them, or .weights.h5)
    into SPEC's generated model, matched by structure; one line naming the first layer
    that does not fit when the architectures differ. With --partial, into a variant:
    each tensor that keeps its place and shape, the first conv adapted to another input
    channel count, and a report of what was matched, adapted, skipped and new."""
    from archc.api import load
    from archc.tools.importer import import_weights
    from archc.training.kit import parse_image_size

    if source_params and not partial:
        raise UserError("expected --source-param only with --partial, found it without")
    size = parse_image_size(image_size) if image_size else None
    held = load(spec, _overrides(source_params), size) if partial else None
    n, report = import_weights(load(spec, _overrides(params), size), source, src, out, target, held)
    for line in report.lines() if report else []:
        click.echo(line)
    click.echo(f"wrote {out}: {n} layers with weights from {src} ({source} -> {target})")


@main.command()
def backends():
    """List the installed backends."""
    from archc.codegen.backend import registered

    for name, ep in registered().items():
        click.echo(f"{name}\t{ep.value}")


if __name__ == "__main__":
    main()
