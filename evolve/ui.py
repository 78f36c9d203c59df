"""What `evolve` shows and where runs live: run folders, the leaderboard, the live line, Ctrl-C.

Apart from the command-line parser (evolve/cli.py, the top floor) so that the runner and
`remeasure` can use them without importing the CLI.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

from evaluators.fingerprint import judge_fingerprint

from .config import UsageError
from .model_error import Ranked, format_error, head_group, leaderboard_flags, tie_flags
from .verification import stands

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
    checks only as "ok, provisional" (not verified), without a rank. On a modelled backend whose
    verdicts carry the model's calibration error, a column shows it (±12%; ±? unknown) and marks
    with ≈ a ranked row the model cannot tell from the row above (evolve/model_error.py)."""
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
    rows = store.top(top, backend, judge)
    ranked = [_ranked(r) for r in rows if r["rankable"]]
    ties = tie_flags(ranked)
    with_error = kind == "MODELLED" and any(r.get("model_error") is not None for r in rows)
    lines.append(
        f"{'#':>3} {'id':>5} {'gen':>4} {'isl':>3} {'proposer':<9} {'status':<15} {'fitness':>8} "
        + (f"{'±model':<7}" if with_error else "")
        + f"{'held-out':>8}  niche / figures"
    )
    rank, stale, unverified = 0, 0, 0
    for row in rows:
        ranked_row = row["rankable"]
        rank += ranked_row
        stale += row["status"] == "ok" and row["stale"]
        unverified += row["status"] == "ok" and not row["stale"] and not ranked_row
        tied = rank > 1 and ranked_row and ties[row["id"]].within_model_error is True
        error = _error_cell(row, tied) if with_error else ""
        lines.append(_board_line(row, rank if ranked_row else "-", error, kind == "MODELLED"))
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
        lines += _model_notes(ranked, with_error)
    return "\n".join(lines)


def leaderboard_json(rows: list[dict], judge: str | None = None) -> list[dict]:
    """Store.all_evaluated() rows as `evolve leaderboard --json` prints them, judged against `judge`
    (default: today's, evaluators/fingerprint.py).

    held_out: the held-out shapes' figure in the fitness's unit and kind (fitness_kind), beside the
    fitness and never in it; None when not judged (or not ok). judge: the fingerprint of the judge that
    gave the verdict; stale: not today's judge (never ranked); stage: "provisional" (the cheap checks
    only) or "verified" ("" before stages); rankable: ok, verified and today's judge's (only these are
    ranked, evolve/verification.py). model_error: the relative error of a modelled fitness RATIO of two
    candidates (the model's calibration error, out of sample, evaluators/model/classes.py); None when
    measured, uncalibrated or an older record. within_model_error: true when the model cannot tell this
    row from the next better-ranked row on its backend (the best: from the runner-up), i.e. the worse
    fitness >= the better * (1 - e), e the larger of the two rows' model_error (evolve/model_error.py);
    within_model_error_of_best: the same test against the best (the best: against every ranked row).
    Both are null when unknown (a model_error missing) or not ranked, and false on measured rows (no
    model error applies)."""
    keys = ("id", "generation", "island", "niche", "proposer", "model", "status", "fitness", "held_out",
            "fitness_kind", "backend", "feedback", "shapes", "judge", "stage", "model_error")  # fmt: skip
    judge = judge if judge is not None else judge_fingerprint()
    flags = leaderboard_flags(rows, lambda r: stands(r, judge))
    return [
        {**{k: r.get(k) for k in keys}, "stale": r["judge"] != judge, "rankable": stands(r, judge),
         **dataclasses.asdict(flags[r["id"], r["backend"]])}
        for r in rows
    ]  # fmt: skip


def _ranked(row: dict) -> Ranked:
    """A Store.top row as model_error.Ranked."""
    return Ranked(row["id"], row["fitness"], row.get("model_error"))


def _error_cell(row: dict, tied: bool) -> str:
    """The ±model column: the verdict's model error (ok rows only) and ≈ when tied with the row above."""
    if row["status"] != "ok":
        return " " * 7
    return f"{format_error(row.get('model_error')) + (' ≈' if tied else ''):<7}"


def _board_line(row: dict, rank: int | str, error: str, modelled: bool) -> str:
    """One leaderboard row: rank, candidate, status, fitness (+ its model error), held-out, niche and
    up to three training figures (`modelled`: each with its shape class's error of one figure, ±? when
    the class has none)."""
    train = [s for s in row["shapes"] if s.get("kind") == "train"]
    figures = " ".join(
        f"{tuple(s['shape'])}{s['layout']}:{s['tflops']:.0f}"
        + (format_error(s.get("model_error")) if modelled else "")
        for s in train[:3]
        if s.get("tflops") is not None
    )
    niche = "/".join(str(x) for x in row["niche"]) if row["niche"] else "-"
    status = f"{row['status']}, stale" if row["stale"] else row["status"]
    if row["status"] == "ok" and not row["stale"] and not row["rankable"]:
        status += f", {row['stage'] or 'unverified'}"
    held_out = "-" if row.get("held_out") is None else f"{row['held_out']:.4f}"
    return (
        f"{rank:>3} {row['id']:>5} {row['generation']:>4} {row['island']:>3} {row['proposer']:<9} "
        f"{status:<15} {row['fitness']:>8.4f} {error}{held_out:>8}  {niche}  {figures}"
    )


def _model_notes(ranked: list[Ranked], with_error: bool) -> list[str]:
    """The notes under a modelled ranking: what the figures are and, with errors, what they mean and
    which rows shown the model cannot tell from the best."""
    notes = [
        "TFLOP/s figures are modelled by evaluators/model/perf_model.py, not measured; use --device cuda"
    ]
    if not with_error:
        return notes + [
            "the model's error of these fitness figures is unknown (a training shape's class has no "
            "calibrated error, ±? on its figures: evaluators/model/classes.py), so its ranking may order "
            "candidates it cannot tell apart"
        ]
    notes += [
        "±model: the model's calibration error, out of sample (leave-one-out over its calibration table, "
        "per shape class: evaluators/model/classes.py), of the RATIO of two candidates' modelled fitness "
        "on this task",
        "two rows within it of each other are not called better than each other (≈: within it of the row "
        "above; ±?: not calibrated, unknown); a figure's ±: its shape class's error of one figure",
    ]
    head = head_group(ranked)
    if len(head) > 1:
        ids = ", ".join(f"#{i}" for i in head[1:])
        notes.append(
            f"of the rows shown, the model cannot tell {ids} from the best #{head[0]} (within its error): "
            "`evolve remeasure` on a GPU measures these first"
        )
    return notes


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
        if getattr(progress, "llm", ""):
            line += f"  {progress.llm}"
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


def render_proposing_summary(store) -> str:
    """What proposed in a run: the LLM calls per proposer (tokens, cost, how calls ended, how their edits
    applied), the bandit's arms (pulls, mean reward, cost) and the latest lessons; "" when the run made
    no LLM call and kept no bandit state."""
    lines = []
    for t in store.llm_totals_by_proposer():
        ended = ", ".join(f"{k} {v}" for k, v in sorted(t["by_status"].items()))
        applied = ", ".join(f"{k} {v}" for k, v in sorted(t["by_edit_status"].items()))
        lines.append(
            f"{t['proposer'] or 'llm'}: {t['calls']} calls, {t['prompt_tokens']} + {t['completion_tokens']} tokens, "
            f"${t['cost']:.4f}; calls: {ended or 'none'}; edits: {applied or 'none'}"
        )
    for key, state in store.bandits().items():  # "arms", then "families:mutator" (evolve/proposing.py)
        if not any(a["pulls"] for a in state["arms"]):
            continue
        arms = sorted(state["arms"], key=lambda a: -a["pulls"])
        label = "arms" if key == "arms" else f"{key.split(':', 1)[-1]}'s transformation families"
        lines.append(f"{label} (pulls, mean reward, cost): " + "; ".join(
            f"{a['arm']} {a['pulls']}, {a['mean']:+.3f}, ${a['cost']:.4f}" for a in arms))  # fmt: skip
    lessons = store.latest_lessons()
    if lessons:
        lines.append(f"lessons v{lessons['version']}:\n" + lessons["text"])
    return "\n".join(lines)
