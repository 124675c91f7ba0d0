"""The ``archc`` command line. Spec problems print one located message and exit 2."""

from __future__ import annotations

import json
import sys
from functools import wraps

import click

from .errors import SpecError, UserError
from .params import parse_assignments


def _friendly(fn):
    """Turn user errors into one line on stderr and exit status 2, never a traceback."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (SpecError, UserError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


def _overrides(items: tuple[str, ...]) -> dict[str, str]:
    try:
        return parse_assignments(items)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="-p") from None


param_option = click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE", help="Override a spec param (repeatable).")
specs_argument = click.argument("specs", nargs=-1, required=True, type=click.Path(dir_okay=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="archc")
def main() -> None:
    """archc: compile declarative CNN architecture specs to PyTorch and Keras code."""


@main.command()
@specs_argument
@param_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_friendly
def params(specs, params, as_json):
    """Shapes, parameter counts and multiply-adds per module."""
    from .api import load, spec_files
    from .report import print_table

    overrides = _overrides(params)
    results = [load(path, overrides) for path in spec_files(specs)]
    if as_json:
        data = [a.as_dict() for a in results]
        click.echo(json.dumps(data[0] if len(data) == 1 else data, indent=2))
    else:
        for analysis in results:
            print_table(analysis)


@main.command()
@specs_argument
@_friendly
def check(specs):
    """Compare each spec's computed counts with its ``expect:`` section (exit 1 on a mismatch)."""
    from .api import expectation_mismatches, load, spec_files

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
    from .schema import spec_schema

    click.echo(json.dumps(spec_schema(), indent=2))


@main.command()
@specs_argument
@param_option
@click.option("-b", "--backend", "backends", multiple=True, help="Backend to render (repeatable; default: all installed).")
@click.option("-o", "--out", "out_dir", default="generated", show_default=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("-q", "--quiet", is_flag=True, help="Do not print the parameter table.")
@_friendly
def build(specs, params, backends, out_dir, quiet):
    """Render each spec with the chosen backends into OUT (all files or none)."""
    from .api import build as build_one
    from .api import load, spec_files
    from .backend import registered
    from .report import print_table

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
@_friendly
def variants(spec, sweeps, params, out_dir, plot_file):
    """Write one resolved spec per combination of swept values, and a table of their counts."""
    from rich.console import Console
    from rich.table import Table

    from .variants import parse_sweeps, plot, run, table_rows

    result = run(spec, parse_sweeps(sweeps), _overrides(params), out_dir)
    rows = table_rows(result)
    table = Table(title=f"variants of {spec}", title_justify="left")
    for column in rows[0]:
        table.add_column(str(column))
    for row in rows[1:]:
        table.add_row(*(f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v) for v in row))
    Console(width=None if Console().is_terminal else 160).print(table)
    click.echo(f"wrote {len([v for v in result.variants if v.file])} specs, variants.csv and variants.md to {out_dir}")
    if plot_file:
        plot(result, plot_file)
        click.echo(f"wrote {plot_file}")


@main.command()
def backends():
    """List the installed backends."""
    from .backend import registered

    for name, ep in registered().items():
        click.echo(f"{name}\t{ep.value}")


if __name__ == "__main__":
    main()
