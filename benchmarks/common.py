"""Helpers shared by the archc benchmark scripts (bench_torch, bench_keras, bench_graphs,
bench_compile, bench_inference).

Nothing here imports a deep-learning framework. The benchmarks live outside ``tests/``
(pytest's ``testpaths``), so the test suite never collects or runs them.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPECS = {
    "xception": ROOT / "specs" / "xception.yaml",
    "inception_v3_slim": ROOT / "specs" / "inception_v3_slim.yaml",
}
CHILD_MARK = "ARCHC_BENCH_RESULT "  # the line a measuring child process prints its JSON on


def log(message: str) -> None:
    """Progress, on stderr (stdout is the report)."""
    print(message, file=sys.stderr, flush=True)


# -- timing --------------------------------------------------------------------------------


def alternate(
    runs: dict[str, Callable[[], float]], warmup: int, reps: int, log: Callable[[str], None] | None = None
) -> dict[str, list[float]]:
    """Call the runs in turn, A B A B ...: ``warmup`` untimed rounds, then ``reps`` timed
    ones. Each run returns its own elapsed seconds (so that a device sync stays inside it).
    Alternating spreads slow phases of a noisy machine over both sides alike."""
    for i in range(warmup):
        for name, run in runs.items():
            seconds = run()
            if log:
                log(f"  warm-up {i + 1}/{warmup} {name}: {seconds:.3f} s")
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(reps):
        for name, run in runs.items():
            seconds = run()
            times[name].append(seconds)
            if log:
                log(f"  run {i + 1}/{reps} {name}: {seconds:.3f} s")
    return times


def stopwatch(fn: Callable[[], object], sync: Callable[[], None] | None = None) -> float:
    """Seconds that ``fn()`` takes (with ``sync()`` before and after, for async devices)."""
    if sync:
        sync()
    start = time.perf_counter()
    fn()
    if sync:
        sync()
    return time.perf_counter() - start


def cpu_seconds(step: Callable[[], object]) -> float:
    """The CPU time this process spends in ``step`` (all its threads): on a machine that
    other processes load, less of their noise than the wall clock, which also counts the
    time this process waits for a CPU."""
    start = time.process_time()
    step()
    return time.process_time() - start


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], digits: int = 3) -> str:
    """The quartiles of ``values`` as 'q1-q3' (min-max for fewer than 4 values)."""
    low, high = _quartiles(values)
    return f"{low:.{digits}f}-{high:.{digits}f}"


def verdict(ratio: float, target: float, generated: Sequence[float] = (), reference: Sequence[float] = ()) -> str:
    """'met', or 'MISSED' (with '(noise)' added where the two sides' spreads overlap, so
    that the miss is within the run-to-run variation)."""
    if ratio <= target:
        return "met"
    if generated and reference:
        (g_low, g_high), (r_low, r_high) = (_quartiles(generated), _quartiles(reference))
        if g_low <= r_high * target and r_low * target <= g_high:
            return "MISSED (noise)"
    return "MISSED"


def time_row(label: str, generated: Sequence[float], reference: Sequence[float], target: float = 1.00) -> tuple[str, ...]:
    """A report's row for one timed phase: medians, spreads, generated / reference and
    the verdict against ``target``."""
    g, r = median(generated), median(reference)
    return (
        label,
        f"{g:.3f}",
        spread(generated),
        f"{r:.3f}",
        spread(reference),
        f"{g / r:.3f}",
        f"{verdict(g / r, target, generated, reference)} (<= {target:.2f})",
    )


def op_differences(totals: dict[str, dict[str, tuple[float, int]]], rows: int) -> str:
    """The ops whose self time differs most between the two sides of a profile
    (``totals``: side -> op -> (ms, calls)), as a table."""
    keys = set(totals["generated"]) | set(totals["reference"])
    diffs = []
    for key in keys:
        (g, gn), (r, rn) = totals["generated"].get(key, (0.0, 0)), totals["reference"].get(key, (0.0, 0))
        diffs.append((g - r, key, g, gn, r, rn))
    diffs.sort(key=lambda d: -abs(d[0]))
    return table(
        ["op", "generated ms", "calls", "reference ms", "calls", "difference ms"],
        [(k, f"{g:.1f}", gn, f"{r:.1f}", rn, f"{d:+.1f}") for d, k, g, gn, r, rn in diffs[:rows]],
    )


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 4:
        return min(values), max(values)
    low, _, high = statistics.quantiles(values, n=4)
    return low, high


# -- background load ----------------------------------------------------------------------


def uptime() -> str:
    """The load average, as ``uptime`` prints it, and the CPU count."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} CPUs)"


def _busy_seconds() -> float | None:
    """CPU seconds all processes of this machine have used since boot (Linux /proc/stat)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadMonitor:
    """How busy the other processes of the machine kept its CPUs while a benchmark ran:
    0.0 is a quiet machine, 1.0 every CPU busy with someone else's work. Timings taken
    under a background load above a few percent are not worth comparing."""

    def __enter__(self) -> LoadMonitor:
        self.start = (time.perf_counter(), _busy_seconds(), _own_seconds())
        self.fraction: float | None = None
        return self

    def __exit__(self, *exc) -> None:
        wall, busy, own = time.perf_counter(), _busy_seconds(), _own_seconds()
        if busy is not None and self.start[1] is not None and wall > self.start[0]:
            others = (busy - self.start[1]) - (own - self.start[2])
            self.fraction = max(others, 0.0) / ((wall - self.start[0]) * (os.cpu_count() or 1))

    def describe(self) -> str:
        if self.fraction is None:
            return "background CPU load: unknown"
        warn = "" if self.fraction < 0.05 else " (WARNING: other processes competed for the CPUs; timings are unreliable)"
        return f"background CPU load from other processes: {100 * self.fraction:.0f}% of {os.cpu_count()} CPUs{warn}"


def wait_idle(max_wait: float, threshold: float = 0.05, window: float = 5.0) -> str:
    """Wait (at most ``max_wait`` seconds) until the other processes use under
    ``threshold`` of the CPUs over ``window`` seconds; say how it went."""
    deadline = time.perf_counter() + max_wait
    while True:
        with LoadMonitor() as load:
            time.sleep(window)
        if load.fraction is None or load.fraction < threshold:
            return f"machine idle ({load.describe()})"
        if time.perf_counter() >= deadline:
            return f"gave up waiting for an idle machine after {max_wait:.0f} s ({load.describe()})"
        print(f"waiting for an idle machine: {load.describe()}", file=sys.stderr, flush=True)


# -- processes and memory ------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux), else None."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_kib() -> int:
    """The resident set size of this process now, in KiB."""
    now = _status_kib("VmRSS")
    return now if now is not None else peak_rss_kib()


def peak_rss_kib() -> int:
    """The peak resident set size of this process's memory (Linux: VmHWM, which
    :func:`reset_peak_rss` resets). Not getrusage's ru_maxrss: on Linux a child process
    inherits its parent's peak in it across fork and exec, so a child of a large parent
    would report the parent's size."""
    peak = _status_kib("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss // 1024 if sys.platform == "darwin" else maxrss  # macOS reports bytes


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0: '5' > /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


MEMORY_METHOD = (
    "the peak RSS of the steps (Linux VmHWM, reset through /proc/self/clear_refs just before them; not ru_maxrss, which a "
    "child inherits from its parent) minus the RSS before them: the target; and the peak of malloc's bytes in use (glibc "
    "mallinfo2, sampled every 0.5 ms) minus those before them, which leaves out memory that malloc keeps but does not use"
)


class MallocPeak:
    """The peak of the bytes malloc has handed out and not taken back (glibc's mallinfo2:
    in-use arena bytes + mmapped chunks), sampled every half millisecond by a thread
    while the block runs; ``growth`` is that peak minus the bytes in use at the start.
    Unlike the peak RSS, this ignores memory that malloc holds but does not use, so it
    repeats to the byte from run to run; framework ops release the GIL, so the sampler
    keeps running during them. None where there is no glibc."""

    def __init__(self, interval: float = 0.0005):
        self.interval = interval
        self.growth: int | None = None
        try:
            import ctypes

            class _Mallinfo2(ctypes.Structure):
                _fields_ = [
                    (name, ctypes.c_size_t)
                    for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
                ]

            libc = ctypes.CDLL("libc.so.6")
            libc.mallinfo2.restype = _Mallinfo2
            self._mallinfo = libc.mallinfo2
        except (OSError, AttributeError):
            self._mallinfo = None

    def _in_use(self) -> int:
        info = self._mallinfo()
        return info.uordblks + info.hblkhd

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._in_use())
            time.sleep(self.interval)

    def __enter__(self) -> MallocPeak:
        import threading

        if self._mallinfo is not None:
            self._start = self._peak = self._in_use()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._mallinfo is not None:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._in_use())
            self.growth = self._peak - self._start


def measure_step_memory(step: Callable[[], None], steps: int) -> dict:
    """The peak memory that ``steps`` calls of ``step`` add, both as the growth of the peak
    RSS (VmHWM, reset first) over the RSS before the first call (``growth_mib``), and as
    :class:`MallocPeak`'s growth (``malloc_growth_mib``)."""
    reset_peak_rss()
    before = rss_kib()
    with MallocPeak() as malloc:
        for _ in range(steps):
            step()
    peak = peak_rss_kib()
    return {
        "growth_mib": (peak - before) / 1024,
        "peak_mib": peak / 1024,
        "malloc_growth_mib": None if malloc.growth is None else malloc.growth / 2**20,
    }


def memory_pairs(measure: Callable[[str, str], dict], reps: int, log: Callable[[str], None] | None = None) -> dict:
    """``measure(impl, mode)`` for the generated and the reference model alternately,
    ``reps`` times each, for a training step and an inference batch; the medians."""
    out: dict = {}
    for mode in ("train", "infer"):
        runs: dict[str, list[dict]] = {"generated": [], "reference": []}
        for i in range(reps):
            for impl in runs:
                if log:
                    log(f"  peak memory, {mode}, {impl} ({i + 1}/{reps}, child process)")
                runs[impl].append(measure(impl, mode))
        out[mode] = {
            impl: {
                key: (median([r[key] for r in results]) if results[0][key] is not None else None)
                for key in results[0]
                if isinstance(results[0][key], (int, float)) or results[0][key] is None
            }
            | {"runs": results}
            for impl, results in runs.items()
        }
    return out


def memory_rows(memory: dict, what: str = "RSS added") -> list[tuple]:
    """Report rows: the peak growth (the target) and malloc's peak, generated vs reference."""
    rows = []
    for mode, pair in memory.items():
        g, r = pair["generated"], pair["reference"]
        ratio = g["growth_mib"] / r["growth_mib"]
        rows.append(
            (
                f"peak memory, {mode}: {what} (MiB)",
                f"{g['growth_mib']:.0f}",
                spread([x["growth_mib"] for x in g["runs"]], 0),
                f"{r['growth_mib']:.0f}",
                spread([x["growth_mib"] for x in r["runs"]], 0),
                f"{ratio:.3f}",
                verdict(ratio, 1.05, [x["growth_mib"] for x in g["runs"]], [x["growth_mib"] for x in r["runs"]]) + " (<= 1.05)",
            )
        )
        if g.get("malloc_growth_mib") is not None and r.get("malloc_growth_mib") is not None:
            ratio = g["malloc_growth_mib"] / r["malloc_growth_mib"]
            rows.append(
                (
                    f"  malloc peak, {mode} (MiB)",
                    f"{g['malloc_growth_mib']:.0f}",
                    "",
                    f"{r['malloc_growth_mib']:.0f}",
                    "",
                    f"{ratio:.3f}",
                    verdict(ratio, 1.05) + " (<= 1.05)",
                )
            )
    return rows


def child_result(data: dict) -> None:
    """Print a measuring child's result where :func:`run_child` finds it."""
    print(CHILD_MARK + json.dumps(data), flush=True)


def run_child(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 1800) -> dict:
    """Run a measuring child process and return the JSON it printed with :func:`child_result`."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(CHILD_MARK):
            return json.loads(line[len(CHILD_MARK) :])
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
    raise RuntimeError(f"child {' '.join(cmd)} exited {proc.returncode} without a result:\n{tail}")


def time_command(cmd: list[str], env: dict[str, str] | None = None, cwd: str | Path | None = ROOT) -> float:
    """Wall-clock seconds of a subprocess (interpreter start and imports included)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return elapsed


# -- archc ---------------------------------------------------------------------------------


def archc_counts(model: str) -> dict:
    """trainable, non_trainable and multiply-adds (per image) of a bundled spec, from archc."""
    from archc.api import load

    analysis = load(SPECS[model])
    return {
        "trainable": analysis.total.trainable,
        "non_trainable": analysis.total.non_trainable,
        "macs": analysis.total.macs,
        "input": list(analysis.net.input),
    }


def build_generated(model: str, backend: str, out_dir: str | Path) -> Path:
    """``archc build`` of a bundled spec with one backend; the generated file's path."""
    from archc.api import build

    (path,) = build(SPECS[model], [backend], out_dir)
    return Path(path)


def import_file(path: str | Path):
    """Import a generated module from its file."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"archc_bench_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# -- reporting -----------------------------------------------------------------------------


def machine() -> str:
    """The CPU model, its cores and memory, the OS and Python, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            kib = int(fh.readline().split()[1])
            memory = f", {kib / 2**20:.0f} GiB memory"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs{memory}; {platform.system()} {platform.release()}; Python {platform.python_version()}"


def today() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain Markdown table (readable in a terminal and pasteable into RESULTS.md)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) + " |"

    rule = "| " + " | ".join("-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths)) + " |"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def write_json(path: str | Path | None, data: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")
