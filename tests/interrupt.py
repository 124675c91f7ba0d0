"""Interrupting a training run the way a cluster does: SIGTERM once the run has started
(what Slurm sends before preemption), or one worker of a torchrun group killed."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path


def sigterm_once_started(cmd: list[str], env: dict[str, str], timeout: float = 300) -> tuple[int, str]:
    """Run ``cmd``, send it SIGTERM when it prints its run header (``archc train: ...``:
    the loop's handler is in place), and return its exit status and output."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("archc train:"):
            proc.send_signal(signal.SIGTERM)
            break
        if time.monotonic() > deadline:
            break
    rest, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    return proc.returncode, "".join(lines) + rest


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux: /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return sorted(set(found))
