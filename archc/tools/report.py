"""The human-readable parameter table (rich). Text from a spec is escaped: a name like
'[/bold]' is shown, not read as rich markup."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from archc.passes.analysis import Analysis
from archc.passes.shapes import fmt
from archc.passes.taps import taps


def print_table(analysis: Analysis, console: Console | None = None) -> None:
    console = console or Console(width=None if Console().is_terminal else 132)
    net = analysis.net
    params = escape(", ".join(f"{k}={v}" for k, v in net.params.items()))
    table = Table(title=escape(f"{net.name}  ({net.file})"), caption=f"params: {params}" if params else None, title_justify="left")
    for column in ("flow", "module", "kind", "output", "trainable", "non-trainable", "mult-adds"):
        table.add_column(column, justify="right" if column in ("trainable", "non-trainable", "mult-adds") else "left")
    for row in analysis.rows:
        kind = f"{row.kind} x{row.repeat}" if row.repeat > 1 else row.kind
        table.add_row(
            escape(row.flow),
            escape(row.name),
            escape(kind),
            fmt(row.output),
            f"{row.counts.trainable:,}",
            f"{row.counts.non_trainable:,}",
            f"{row.counts.macs:,}",
        )
    t = analysis.total
    table.add_section()
    if len(analysis.outputs) > 1:  # each output with what it depends on (shared layers count in each)
        for (name, shape), c in zip(analysis.outputs.items(), analysis.output_counts.values()):
            table.add_row("output", escape(name), "", fmt(shape), f"{c.trainable:,}", f"{c.non_trainable:,}", f"{c.macs:,}")
    shown = fmt(analysis.output) if len(analysis.outputs) == 1 else f"{len(analysis.outputs)} outputs"
    table.add_row("total", "", "", shown, f"{t.trainable:,}", f"{t.non_trainable:,}", f"{t.macs:,}", style="bold")
    console.print(table)
    found = taps(analysis)
    if found:
        features = Table(title="feature taps (the last map at each reduction)", title_justify="left")
        for column in ("reduction", "module", "output", "channels"):
            features.add_column(column, justify="right" if column in ("reduction", "channels") else "left")
        for tap in found:
            features.add_row(str(tap.reduction), escape(tap.module), fmt(tap.shape), str(tap.channels))
        console.print(features)
