"""What `evolve` shows and where runs live: run folders, the leaderboard, the live line, Ctrl-C.

Apart from the command-line parser (evolve/cli.py, the top floor) so that the runner and
`remeasure` can use them without importing the CLI.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from .config import UsageError

RUNS_DIR = Path("runs")


def run_dir(name_or_path: str) -> Path:
    """`demo`, `runs/demo` or `runs/demo/run.sqlite` -> runs/demo; a clear error listing runs otherwise."""
    path = Path(name_or_path)
    if path.name == "run.sqlite":
        path = path.parent
    for candidate in (path, RUNS_DIR / name_or_path):
        if (candidate / "run.sqlite").is_file():
            return candidate
    existing = sorted(p.parent.name for p in RUNS_DIR.glob("*/run.sqlite"))
    known = ", ".join(existing) if existing else "none yet (start one with `evolve run runs/demo.toml`)"
    raise UsageError(f"no run named {name_or_path!r}; runs in {RUNS_DIR}/: {known}")


def render_leaderboard(store, top: int) -> str:
    info = store.run_info()
    backend = store.default_backend()
    counts = store.counts_by_status()
    lines = [
        f"run {info['name']} ({info['status']}), {store.evaluated_count()} evaluated, "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
    ]
    if backend is None:
        return "\n".join(lines + ["no evaluations yet"])
    kind = (
        "MODELLED" if backend.startswith("model:") else "measured" if backend.startswith("cuda:") else "none"
    )
    lines.append(f"ranking on {backend} (fitness {kind}; other backends are never mixed in)")
    lines.append(
        f"{'#':>3} {'id':>5} {'gen':>4} {'isl':>3} {'proposer':<9} {'status':<13} {'fitness':>8}  niche / figures"
    )
    for rank, row in enumerate(store.top(top, backend), 1):
        train = [s for s in row["shapes"] if s.get("kind") == "train"]
        figures = " ".join(
            f"{tuple(s['shape'])}{s['layout']}:{s['tflops']:.0f}"
            for s in train[:3]
            if s.get("tflops") is not None
        )
        niche = "/".join(str(x) for x in row["niche"]) if row["niche"] else "-"
        lines.append(
            f"{rank:>3} {row['id']:>5} {row['generation']:>4} {row['island']:>3} {row['proposer']:<9} "
            f"{row['status']:<13} {row['fitness']:>8.4f}  {niche}  {figures}"
        )
    if kind == "MODELLED":
        lines.append(
            "TFLOP/s figures are modelled by evaluators/perf_model.py, not measured; use --device cuda"
        )
    return "\n".join(lines)


class LiveDisplay:
    """One status line, redrawn in place on a terminal and printed every 15 s otherwise."""

    def __init__(self, max_evals: int) -> None:
        self.max_evals = max_evals
        self.tty = sys.stdout.isatty()
        self.last = 0.0

    def __call__(self, progress) -> None:
        now = time.monotonic()
        if not self.tty and now - self.last < 15:
            return
        self.last = now
        failures = ", ".join(f"{k} {v}" for k, v in sorted(progress.failures.items())) or "none"
        line = (
            f"evals {progress.evaluated}/{self.max_evals}  in flight {progress.in_flight}  "
            f"best {progress.best_fitness:.4f} [{progress.backend}] (#{progress.best_id})  "
            f"{progress.evals_per_min():.1f} evals/min  failures: {failures}  dup {progress.duplicates}"
        )
        if self.tty:
            print("\r" + line[: os.get_terminal_size().columns - 1].ljust(20), end="", flush=True)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.tty:
            print()


def install_interrupt(controller) -> None:
    """First Ctrl-C: stop proposing and finish what is in flight. Second: stop now (left pending)."""

    def handler(signum, frame):
        if controller.stop_requested:
            controller.force_stop = True
            print("\nstopping now; candidates in flight stay pending for --resume", file=sys.stderr)
        else:
            controller.request_stop("interrupted (Ctrl-C)")
            print(
                "\nstopping: finishing the evaluations in flight (Ctrl-C again to stop now)", file=sys.stderr
            )

    signal.signal(signal.SIGINT, handler)
