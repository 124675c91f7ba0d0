"""Cross-backend verification (``archc verify``) and checkpoint conversion (``archc convert``).

verify builds a spec with every installed backend and checks that they are the same
network: per module, the IR's parameter counts next to each backend's; then one set of
random weights (archc's neutral format, :mod:`archc.passes.instances`) goes into one backend,
out of it, and into every other; the same random NHWC input runs through all of them
in inference mode, and every instance's output (not only the network's) is compared.
The first instance, in execution order, whose output differs by more than the tolerance
names the module at fault.

Nothing here imports a framework at import time: backends do, when they build models.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archc.codegen.backend import get, missing_weight_porting, module_name, registered
from archc.passes.analysis import Analysis
from archc.passes.instances import Instance, instances, modules, weighted
from archc.syntax.errors import UserError

TOLERANCE = 1e-4  # the largest difference allowed, relative to the largest |reference value|
PREFERRED_SOURCE = "torch"  # where random weights go in first (any backend that ports weights)


# -- building models ------------------------------------------------------------------------


def build_model(backend: Any, analysis: Analysis, folder: str | Path) -> Any:
    """Render ``analysis`` with ``backend`` into ``folder``, import it, and call its
    ``create_model()`` (the generated module's entry point; the params are the analysis's,
    rendered as the defaults)."""
    path = Path(folder) / f"{module_name(analysis, backend.name)}.py"
    path.write_text(backend.render(analysis), encoding="utf-8")
    return backend.load(path).create_model()


def porting_backends(names: Iterable[str] | None = None) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """(name -> backend for those that port weights, name -> missing methods for those
    that do not). ``names``: the ones asked for (default: every installed backend)."""
    names = list(names) if names else list(registered())
    able, unable = {}, {}
    for name in names:
        backend = get(name)
        missing = missing_weight_porting(backend)
        if missing:
            unable[name] = missing
        else:
            able[name] = backend
    return able, unable


# -- random weights in the neutral format ---------------------------------------------------


# Scales of the random weights: conv, sepconv and dense outputs of mean square TARGET
# (BN inputs, then, whose moving variance is about TARGET: small enough that the BN
# epsilon matters, 1e-3 against torch's 1e-5 changes outputs by about 2e-3).
TARGET = 0.25
SPREAD = 0.2  # std of biases, BN offsets and moving means (relative to the scale there)
SQUASH = {"relu": 0.5, "relu6": 0.5, "elu": 0.6, "gelu": 0.5, "silu": 0.5, "sigmoid": 0.3, "tanh": 0.5, "softmax": 0.1}


def random_weights(analysis: Analysis, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Weights for every weighted instance, float32, from ``seed``, scaled so that every
    intermediate output of the network is of order one on a standard normal input.

    A framework's default initialisation lets activations vanish or explode through a
    deep network (or through 8 residual additions), and then offsets late in the network
    are lost in rounding: a beta mapped to the wrong tensor would go unseen. So a forward
    pass of mean squares is run along the IR: each kernel is scaled by its fan-in and the
    mean square of its input, each BN's moving variance is about its input's mean square
    (times 0.5-1.5), so that BN keeps the scale near one. Biases, BN offsets and moving
    means are random too (never 0 or 1), so that any role mapped to the wrong tensor, or a
    kernel transposed, changes the outputs. Each op's rule is its class's
    ``random_weights`` (and ``mean_square``), drawing through :class:`Draw`."""
    import numpy as np

    draw = Draw(np.random.default_rng(seed))
    at = analysis.instance_shapes
    out: dict[str, dict[str, Any]] = {}

    def sequence(nodes, m2, base):
        for node in nodes:
            key = base[1] + node.path[len(base[0]) :]
            if key in at:
                m2 = one(node, key, m2, base)
        return m2

    def one(node, key, m2, base):
        inp, outp = at[key]
        shapes = node.roles(inp)
        if shapes:
            arrays, m2 = node.random_weights(inp, m2, draw)
            out[key] = {role: arrays[role] for role in shapes}
        if node.indexed:
            for i in range(node.repeats()):
                for _, seq in node.running():
                    m2 = sequence(seq, m2, (node.path, f"{key}[{i}]"))
            return m2
        parts = [(sequence(seq, m2, base), _channels(seq, at, base, inp[-1])) for _, seq in node.running()]
        return node.mean_square(m2, parts, draw)

    m2 = 1.0
    for layers in analysis.net.flows.values():
        m2 = sequence(layers, m2, ("", ""))
    expected = [i.key for i in weighted(analysis)]
    assert sorted(out) == sorted(expected), "random_weights and instances() disagree on instance keys"
    return {key: out[key] for key in expected}


class Draw:
    """The random draws an op's ``random_weights`` makes (archc.ir.ops.Node), from one
    generator: kernels scaled by their fan-in, biases and offsets small, scales near one."""

    spread = SPREAD
    linear_output = TARGET * (1 + SPREAD**2)  # the mean square after a kernel and a bias

    def __init__(self, rng: Any):
        self.rng = rng

    def normal(self, shape, std):
        import numpy as np

        return (self.rng.standard_normal(shape) * std).astype(np.float32)

    def kernel(self, shape, fan_in, m2, target=TARGET):
        return self.normal(shape, (target / (fan_in * m2)) ** 0.5)

    def around_one(self, shape):
        import numpy as np

        return self.rng.uniform(0.5, 1.5, shape).astype(np.float32)

    def zeros(self, shape):
        import numpy as np

        return np.zeros(shape, np.float32)

    def bias(self, shapes) -> dict[str, Any]:
        return {"bias": self.normal(shapes["bias"], SPREAD * TARGET**0.5)} if "bias" in shapes else {}

    def squash(self, activation: str) -> float:
        """How an activation scales the mean square (1 for 'none' and others)."""
        return SQUASH.get(activation, 1.0)


def _channels(nodes: list, at: dict, base: tuple[str, str], channels: int) -> int:
    """Channels out of a sequence (its input's when every node is switched off)."""
    keys = [base[1] + n.path[len(base[0]) :] for n in nodes]
    enabled = [k for k in keys if k in at]
    return at[enabled[-1]][1][-1] if enabled else channels


def first_difference(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> str | None:
    """The first 'key: role' where two neutral weight sets differ in any bit (None: none)."""
    import numpy as np

    for key in list(a) + [k for k in b if k not in a]:
        ra, rb = a.get(key), b.get(key)
        if ra is None or rb is None:
            return f"{key}: only in {'the first' if rb is None else 'the second'}"
        for role in list(ra) + [r for r in rb if r not in ra]:
            if role not in ra or role not in rb:
                return f"{key}: '{role}' only in {'the first' if role in ra else 'the second'}"
            x, y = np.asarray(ra[role]), np.asarray(rb[role])
            if x.shape != y.shape or x.dtype != y.dtype or x.tobytes() != y.tobytes():
                return f"{key}: '{role}' differs"
    return None


# -- the report -------------------------------------------------------------------------------


@dataclass
class ModuleRow:
    path: str  # the top-level node's path: flow/name
    kind: str
    ir: tuple[int, int]
    found: dict[str, tuple[int, int]]  # backend -> (trainable, non-trainable)

    @property
    def ok(self) -> bool:
        return all(v == self.ir for v in self.found.values())


@dataclass
class Difference:
    """The largest differences between a backend's output and the reference's."""

    abs: float
    rel: float  # abs / max |reference|
    scale: float  # max |reference|

    def ok(self, tolerance: float) -> bool:
        return self.rel <= tolerance


@dataclass
class Comparison:
    reference: str
    other: str
    output: Difference
    modules: dict[str, tuple[int, Difference]]  # module path -> (outputs compared, largest relative difference)
    first_bad: tuple[Instance, Difference] | None = None  # in execution order
    worst: tuple[Instance, Difference] | None = None  # the largest relative difference of any instance
    compared: int = 0

    def ok(self, tolerance: float) -> bool:
        return self.output.ok(tolerance) and self.first_bad is None


@dataclass
class Result:
    analysis: Analysis
    backends: list[str]
    skipped: dict[str, list[str]]
    tolerance: float
    rows: list[ModuleRow] = field(default_factory=list)
    totals: dict[str, tuple[int, int]] = field(default_factory=dict)  # backend -> its own count of the whole model
    weight_errors: list[str] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    source: str | None = None
    batch: int = 0
    seed: int = 0

    @property
    def counts_ok(self) -> bool:
        ir = (self.analysis.total.trainable, self.analysis.total.non_trainable)
        return all(r.ok for r in self.rows) and all(t == ir for t in self.totals.values())

    @property
    def ok(self) -> bool:
        return self.counts_ok and not self.weight_errors and all(c.ok(self.tolerance) for c in self.comparisons)

    def failure(self) -> str | None:
        """One line naming the first thing that disagrees (None: all agree)."""
        for row in self.rows:
            if not row.ok:
                bad = ", ".join(f"{b} {t:,} + {n:,}" for b, (t, n) in row.found.items() if (t, n) != row.ir)
                return f"parameter counts differ in module {row.path}: IR {row.ir[0]:,} + {row.ir[1]:,}, {bad}"
        ir = (self.analysis.total.trainable, self.analysis.total.non_trainable)
        for name, total in self.totals.items():
            if total != ir:
                return f"{name} holds {total[0]:,} + {total[1]:,} parameters, the IR {ir[0]:,} + {ir[1]:,}: some are in no IR node's module"
        if self.weight_errors:
            return self.weight_errors[0]
        for c in self.comparisons:
            if c.first_bad is not None:
                inst, d = c.first_bad
                return (
                    f"{c.other} and {c.reference} differ first in module {inst.module}, at {inst.key} ({inst.node.op}): "
                    f"relative difference {d.rel:.2e} > {self.tolerance:g}"
                )
            if not c.output.ok(self.tolerance):
                return f"{c.other} and {c.reference} outputs differ: relative difference {c.output.rel:.2e} > {self.tolerance:g}"
        return None


def output_difference(ref: Any, other: Any) -> Difference:
    """The largest difference; of several outputs (dicts by name), the worst one's."""
    import numpy as np

    if isinstance(ref, dict) or isinstance(other, dict):
        if not (isinstance(ref, dict) and isinstance(other, dict) and list(ref) == list(other)):
            return Difference(float("inf"), float("inf"), 0.0)
        return max((output_difference(ref[name], other[name]) for name in ref), key=lambda d: (d.rel, d.abs))

    ref = np.asarray(ref, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    if ref.shape != other.shape:
        return Difference(float("inf"), float("inf"), float(np.abs(ref).max()) if ref.size else 0.0)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    diff = float(np.abs(ref - other).max()) if ref.size else 0.0
    if not np.isfinite(diff):
        return Difference(float("inf"), float("inf"), scale)
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    return Difference(diff, rel, scale)


def _row_counts(analysis: Analysis, per_instance: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {path: (0, 0) for path in modules(analysis)}
    for inst in weighted(analysis):
        t, n = per_instance.get(inst.key, (0, 0))
        out[inst.module] = (out[inst.module][0] + t, out[inst.module][1] + n)
    return out


def verify(
    analysis: Analysis,
    backends: Iterable[str] | None = None,
    *,
    tolerance: float = TOLERANCE,
    batch: int = 2,
    seed: int = 0,
    source: str | None = None,
) -> Result:
    """Build ``analysis`` with each backend (default: every installed one), compare
    counts per module, port one set of random weights across, compare outputs."""
    import numpy as np

    able, unable = porting_backends(backends)
    if backends and unable:
        name, missing = next(iter(unable.items()))
        raise UserError(f"expected a backend that ports weights, found '{name}' without {', '.join(missing)}")
    names = list(able)
    if source is not None and source not in able:
        raise UserError(f"expected --source among the backends compared ({', '.join(names)}), found '{source}'")
    result = Result(analysis, names, unable, tolerance, batch=batch, seed=seed)
    ir_rows = {path: (row.counts.trainable, row.counts.non_trainable) for path, row in zip(modules(analysis), analysis.rows)}
    kinds = {path: row.kind for path, row in zip(modules(analysis), analysis.rows)}
    with tempfile.TemporaryDirectory(prefix="archc-verify-") as folder:
        models = {name: build_model(backend, analysis, folder) for name, backend in able.items()}
        found = {name: _row_counts(analysis, able[name].instance_counts(models[name], analysis)) for name in names}
        result.rows = [ModuleRow(path, kinds[path], ir_rows[path], {name: found[name][path] for name in names}) for path in ir_rows]
        result.totals = {name: tuple(able[name].count(models[name])) for name in names}
        if not result.counts_ok or len(names) < 2:
            return result

        result.source = source or (PREFERRED_SOURCE if PREFERRED_SOURCE in names else names[0])
        weights = random_weights(analysis, seed)
        ported: dict[str, dict] = {}
        for name in [result.source, *(n for n in names if n != result.source)]:
            given = weights if name == result.source else ported[result.source]
            try:
                able[name].load_weights(models[name], analysis, given)
            except Exception as exc:  # a mapping that does not fit: report it, with the instance the adapter names
                result.weight_errors.append(f"{name}: loading weights failed: {exc}")
                return result
            ported[name] = able[name].export_weights(models[name], analysis)
            if (where := first_difference(given, ported[name])) is not None:
                result.weight_errors.append(f"{name}: exporting does not give back the weights it was given ({where})")
                return result

        h, w, c = analysis.net.input
        x = np.random.default_rng(seed + 1).standard_normal((batch, h, w, c)).astype(np.float32)
        order = instances(analysis)
        outputs = {name: able[name].activations(models[name], analysis, x) for name in names}
    ref_out, ref_acts = outputs[result.source]
    for name in names:
        if name == result.source:
            continue
        out, acts = outputs[name]
        comparison = Comparison(result.source, name, output_difference(ref_out, out), {})
        for inst in order:
            if inst.key not in ref_acts or inst.key not in acts:
                continue
            d = output_difference(ref_acts[inst.key], acts[inst.key])
            comparison.compared += 1
            n, worst = comparison.modules.get(inst.module, (0, None))
            comparison.modules[inst.module] = (n + 1, d if worst is None or d.rel > worst.rel else worst)
            if comparison.first_bad is None and not d.ok(tolerance):
                comparison.first_bad = (inst, d)
            if comparison.worst is None or d.rel > comparison.worst[1].rel:
                comparison.worst = (inst, d)
        result.comparisons.append(comparison)
    return result


# -- printing ---------------------------------------------------------------------------------


def _fmt_counts(c: tuple[int, int]) -> str:
    return f"{c[0]:,} + {c[1]:,}"


def print_result(result: Result, console: Any = None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console(width=None if Console().is_terminal else 132)
    analysis = result.analysis
    net = analysis.net
    params = escape(", ".join(f"{k}={v}" for k, v in net.params.items()))
    for name, missing in result.skipped.items():
        console.print(f"[yellow]backend '{name}' does not port weights (no {', '.join(missing)}): left out[/yellow]")
    title = escape(f"verify {net.name}  ({net.file})") + ": parameters per module, trainable + non-trainable"
    table = Table(title=title, caption=f"params: {params}" if params else None, title_justify="left")
    table.add_column("module")
    table.add_column("kind")
    table.add_column("IR", justify="right")
    for name in result.backends:
        table.add_column(name, justify="right")
    table.add_column("")
    for row in result.rows:
        cells = [_fmt_counts(found) if found == row.ir else f"[red]{_fmt_counts(found)}[/red]" for found in row.found.values()]
        table.add_row(escape(row.path), row.kind, _fmt_counts(row.ir), *cells, "ok" if row.ok else "[red]DIFFERS[/red]")
    table.add_section()
    ir = (analysis.total.trainable, analysis.total.non_trainable)
    totals = [
        (_fmt_counts(result.totals[n]) if result.totals[n] == ir else f"[red]{_fmt_counts(result.totals[n])}[/red]")
        for n in result.backends
    ]
    counts_ok = all(t == ir for t in result.totals.values())
    table.add_row("total", "", _fmt_counts(ir), *totals, "ok" if counts_ok else "[red]DIFFERS[/red]", style="bold")
    console.print(table)

    if len(result.backends) < 2:
        console.print("only one backend ports weights: counts checked, no outputs to compare")
    for error in result.weight_errors:
        console.print(f"[red]{escape(str(error))}[/red]")
    for c in result.comparisons:
        t = Table(
            title=f"{c.other} vs {c.reference}: outputs of every instance (weights {c.reference} -> {c.other}, batch {result.batch}, seed {result.seed})",
            title_justify="left",
        )
        for column in ("module", "outputs compared", "max |diff|", "max |ref|", "max relative"):
            t.add_column(column, justify="left" if column == "module" else "right")
        for path, (n, d) in c.modules.items():
            t.add_row(
                escape(path),
                str(n),
                f"{d.abs:.2e}",
                f"{d.scale:.3g}",
                f"{d.rel:.2e}" if d.ok(result.tolerance) else f"[red]{d.rel:.2e}[/red]",
            )
        t.add_section()
        o = c.output
        t.add_row(
            "output",
            "",
            f"{o.abs:.2e}",
            f"{o.scale:.3g}",
            f"{o.rel:.2e}" if o.ok(result.tolerance) else f"[red]{o.rel:.2e}[/red]",
            style="bold",
        )
        console.print(t)
        console.print(
            f"{c.other} vs {c.reference}: output: largest absolute difference {o.abs:.3e}, largest relative difference {o.rel:.3e} "
            f"(relative to the largest |{c.reference} output|, {o.scale:.4g})"
        )
        if c.worst is not None:
            inst, d = c.worst
            console.print(
                f"{c.other} vs {c.reference}: {c.compared} intermediate outputs: largest relative difference {d.rel:.3e}, at {inst.key}"
            )
    failure = result.failure()
    if failure is None and not result.comparisons:
        console.print("[green]ok[/green]: counts agree (one backend: no outputs compared)")
    elif failure is None:
        console.print(f"[green]ok[/green]: counts agree and outputs agree within {result.tolerance:g} relative")
    else:
        console.print(f"[red]FAILED[/red]: {failure} (tolerance {result.tolerance:g} relative)")


# -- convert ----------------------------------------------------------------------------------


def backend_for_file(path: str | Path, backends: dict[str, Any]) -> str:
    """The backend whose checkpoint suffix ``path`` ends with (the longest match)."""
    name = str(path).lower()
    matches = sorted(
        ((len(s), b) for b, backend in backends.items() for s in backend.checkpoint_suffixes if name.endswith(s)), reverse=True
    )
    if not matches:
        known = ", ".join(f"{s} ({b})" for b, backend in backends.items() for s in backend.checkpoint_suffixes)
        raise UserError(f"expected a checkpoint file name ending in one of {known}, found '{path}' (or say --from/--to)")
    return matches[0][1]


def read_checkpoint(backend: Any, model: Any, path: str | Path, analysis: Analysis) -> None:
    """``backend``'s checkpoint file into ``model``, or one line saying why it does not fit."""
    try:
        backend.load_checkpoint(model, Path(path))
    except Exception as exc:  # the framework's own message says what did not fit
        detail = " ".join(str(exc).split())
        detail = detail if len(detail) <= 300 else detail[:300] + "..."
        raise UserError(
            f"expected a {backend.name} checkpoint of '{analysis.net.name}' with these params in {path}, found: {detail}"
        ) from None


def save_checkpoint(backend: Any, model: Any, dst: Path) -> None:
    """``model``'s weights to ``dst`` through a temporary file: all or nothing."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".tmp-{os.getpid()}-{dst.name}")
    try:
        backend.save_checkpoint(model, tmp)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


def convert(analysis: Analysis, source: str, target: str, src: str | Path, dst: str | Path) -> int:
    """Read ``src`` (``source``'s checkpoint of this spec), write ``dst`` (``target``'s);
    returns the number of weighted instances ported. The file appears only when complete."""
    able, unable = porting_backends([source, target])
    for name, missing in unable.items():
        raise UserError(f"expected a backend that ports weights, found '{name}' without {', '.join(missing)}")
    dst = Path(dst)
    if not any(str(dst).lower().endswith(s) for s in able[target].checkpoint_suffixes):
        raise UserError(
            f"expected an output file name ending in {' or '.join(able[target].checkpoint_suffixes)} for {target}, found '{dst}'"
        )
    with tempfile.TemporaryDirectory(prefix="archc-convert-") as folder:
        model = build_model(able[source], analysis, folder)
        read_checkpoint(able[source], model, src, analysis)
        weights = able[source].export_weights(model, analysis)
        other = build_model(able[target], analysis, folder)
        able[target].load_weights(other, analysis, weights)
        save_checkpoint(able[target], other, dst)
    return len(weights)
