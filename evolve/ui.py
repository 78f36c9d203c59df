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

from evaluators.fingerprint import judge_fingerprint

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


# Statuses that say nothing about the kernel's quality: shown apart from the kernels' failures.
APART = {
    "unsupported": "the CPU backend cannot run them; `evolve remeasure` judges them on a GPU",
    "judge_error": "the judge's own failures, not the kernels'; `evolve remeasure` judges them again",
}


def status_summary(counts: dict[str, int]) -> str:
    """Counts per status, with unsupported and judge_error apart and explained, e.g.
    "ok 3, incorrect 1, pending 0; unsupported 1 (the CPU backend cannot run them; ...)"."""
    main = ", ".join(f"{k} {v}" for k, v in counts.items() if k not in APART)
    apart = "; ".join(f"{k} {counts[k]} ({why})" for k, why in APART.items() if counts.get(k))
    return main + (f"; {apart}" if apart else "")


def render_leaderboard(store, top: int, judge: str | None = None) -> str:
    """The run's status counts and its top rows on one backend: fitness, and beside it the
    held-out figure (same unit and kind, never ranked); unranked rows (not ok) have no rank.
    Only verdicts of `judge` (default: today's, evaluators/fingerprint.py) are ranked; an ok
    verdict of another judge is listed after them as "ok, stale", and one that passed the cheap
    checks only as "ok, provisional" (not verified), without a rank."""
    judge = judge if judge is not None else judge_fingerprint()
    info = store.run_info()
    backend = store.default_backend()
    counts = store.counts_by_status()
    provisional = store.provisional_count()
    lines = [
        f"run {info['name']} ({info['status']}), {store.evaluated_count()} evaluated, "
        + status_summary(counts)
        + (f"; of the ok, {provisional} provisional (not verified, never ranked)" if provisional else "")
    ]
    if backend is None:
        return "\n".join(lines + ["no evaluations yet"])
    kind = (
        "MODELLED" if backend.startswith("model:") else "measured" if backend.startswith("cuda:") else "none"
    )
    lines.append(
        f"ranking on {backend} (fitness {kind}; held-out {kind}, shown beside it, never ranked; "
        "other backends are never mixed in)"
    )
    lines.append(
        f"{'#':>3} {'id':>5} {'gen':>4} {'isl':>3} {'proposer':<9} {'status':<15} {'fitness':>8} "
        f"{'held-out':>8}  niche / figures"
    )
    rank, stale, unverified = 0, 0, 0
    for row in store.top(top, backend, judge):
        train = [s for s in row["shapes"] if s.get("kind") == "train"]
        figures = " ".join(
            f"{tuple(s['shape'])}{s['layout']}:{s['tflops']:.0f}"
            for s in train[:3]
            if s.get("tflops") is not None
        )
        niche = "/".join(str(x) for x in row["niche"]) if row["niche"] else "-"
        ranked = row["rankable"]
        rank += ranked
        stale += row["status"] == "ok" and row["stale"]
        unverified += row["status"] == "ok" and not row["stale"] and not ranked
        status = f"{row['status']}, stale" if row["stale"] else row["status"]
        if row["status"] == "ok" and not row["stale"] and not ranked:
            status += f", {row['stage'] or 'unverified'}"
        held_out = "-" if row.get("held_out") is None else f"{row['held_out']:.4f}"
        lines.append(
            f"{rank if ranked else '-':>3} {row['id']:>5} {row['generation']:>4} "
            f"{row['island']:>3} {row['proposer']:<9} {status:<15} {row['fitness']:>8.4f} "
            f"{held_out:>8}  {niche}  {figures}"
        )
    if stale:
        lines.append(
            f"stale: judged by another judge than today's ({judge}; the judge changed since), so never "
            "ranked; `evolve run --resume` re-judges the ones that would be elites"
        )
    if unverified:
        lines.append(
            "provisional: passed the cheap checks only, so never ranked; the run verifies the ones that "
            "would be elites or in its top few"
        )
    if kind == "MODELLED":
        lines.append(
            "TFLOP/s figures are modelled by evaluators/model/perf_model.py, not measured; use --device cuda"
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
        line = (
            f"evals {progress.evaluated}/{self.max_evals}  in flight {progress.in_flight}  "
            f"best {progress.best_fitness:.4f} [{progress.backend}] (#{progress.best_id})  "
            f"{progress.evals_per_min():.1f} evals/min  {failure_summary(progress.failures)}  "
            f"dup {progress.duplicates}  provisional {progress.provisional} (verifying {progress.verifying})"
        )
        if self.tty:
            print("\r" + line[: os.get_terminal_size().columns - 1].ljust(20), end="", flush=True)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.tty:
            print()


def failure_summary(failures: dict[str, int]) -> str:
    """The live line's failure counts: the kernels' failures, then unsupported and judge errors
    apart (neither is the kernel's fault), e.g. "failures: incorrect 2  unsupported 1  judge errors 1"."""
    kernel = ", ".join(f"{k} {v}" for k, v in sorted(failures.items()) if k not in APART) or "none"
    text = f"failures: {kernel}"
    if failures.get("unsupported"):
        text += f"  unsupported {failures['unsupported']} (needs a GPU judge)"
    if failures.get("judge_error"):
        text += f"  judge errors {failures['judge_error']} (the judge's bug)"
    return text


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
