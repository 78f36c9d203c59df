"""Remeasure: time the candidates the performance model ranked highest on a real GPU.

A run without a GPU ranks candidates with the offline performance model (backend
`model:<gpu>`, fitness_kind "modelled"). `remeasure` takes the top of that ranking, starting with the
candidates the model cannot tell apart from the best (within its calibration error of the best, or of
one of those: evolve/model_error.py, `remeasure_order`), then the rest in rank order; and the
candidates the CPU judge could not judge (`unsupported`: the interpreter cannot run them;
`judge_error`: the judge failed on them), judges each on the GPU here and stores the
`cuda:<device name>` verdict next to the modelled one
(one evaluation per (candidate, backend), so nothing is measured twice); a GPU verdict is verified by
construction (evaluate() on cuda checks every shape at full size: stage "verified"). `comparison`
pairs the two and reports how well the model's ranking predicted the measured one, so the
model can be recalibrated from real data. Modelled and measured figures are never ranked
together: they sit side by side in separately labelled columns.

    evolve remeasure RUN [--top N] [--unranked N] [--json] [--compare-only] [--model-backend model:h100]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

from evaluators import Task
from evaluators.model.calibration import kendall_tau, spearman  # one implementation, shared with gpu-check

from .model_error import Ranked, head_group, remeasure_order
from .store import RETRYABLE, Store

Measure = Callable[[str, Task], dict]  # (source, task) -> Evaluation dict with a cuda:* backend

# Modelled verdicts that say nothing of the kernel: never ranked there, so only a GPU can judge them.
UNRANKED = ("unsupported", "judge_error")

NO_GPU = (
    "no CUDA GPU here: remeasure needs a GPU to measure; use --compare-only to print what has been measured"
)


def _backends(store: Store, prefix: str) -> str | None:
    """The backend named `prefix`* with the most ok evaluations (ties: most rows, then name)."""
    counts: dict[str, list[int]] = {}
    for row in store.all_evaluated():
        if row["backend"].startswith(prefix):
            c = counts.setdefault(row["backend"], [0, 0])
            c[0] += row["status"] == "ok"
            c[1] += 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
    return ranked[0][0] if ranked else None


def remeasure(
    store: Store,
    task: Task,
    top: int,
    measure: Measure,
    model_backend: str | None = None,
    progress: Callable[[int, dict], None] | None = None,
    unranked: int | None = None,
) -> list[int]:
    """Measure the first `top` candidates of `model_backend`'s ranking (default: the model:* backend
    with most ok rows; ranked: ok and verified, store.top - a provisional verdict is never ranked) in
    `plan` order - first those the model cannot tell apart from the best (within its calibration
    error), then the rest in rank order - that are not measured yet; then up to `unranked` (default:
    `top`) more of its UNRANKED ones (unsupported, judge_error: never ranked there) not measured yet,
    oldest first; a
    measurement that ended timeout, crashed or judge_error counts as not measured (measured
    again, the new verdict replaces the old). Store each verdict; return the ids measured.

    `measure(source, task)` returns an Evaluation dict whose backend starts with "cuda:"
    (production: `_cuda_measure`; tests pass a fake). Each verdict is committed as it
    arrives, so an interrupted remeasure keeps what it measured. `progress(id, evaluation)`
    is called after each one is stored.
    """
    model_backend = model_backend or _backends(store, "model:")
    unranked = top if unranked is None else unranked
    if model_backend is None or (top <= 0 and unranked <= 0):
        return []
    ranked = plan(store, model_backend, top)[1] if top > 0 else []
    todo = [c for c in store.candidates(ranked) if not _measured(c)]
    if unranked > 0:
        ids = [
            r["id"]
            for r in store.all_evaluated()
            if r["backend"] == model_backend and r["status"] in UNRANKED
        ]
        todo += [c for c in store.candidates(ids) if not _measured(c)][:unranked]
    measured: list[int] = []
    for cand in todo:
        ev = measure(cand["source"], task)
        ev = ev.to_dict() if hasattr(ev, "to_dict") else dict(ev)
        if not str(ev.get("backend", "")).startswith("cuda:"):
            raise ValueError(f"measure returned backend {ev.get('backend')!r}; remeasure stores cuda:* only")
        ev["provenance"] = {**(ev.get("provenance") or {}), "remeasured_from": model_backend}
        if store.retry_evaluation(cand["id"], ev):
            measured.append(cand["id"])
            if progress is not None:
                progress(cand["id"], ev)
    return measured


def modelled_ranking(store: Store, model_backend: str, top: int) -> list[Ranked]:
    """The ranked (ok, verified) verdicts of `model_backend`, best first: at least the first `top`, and
    as many more as it takes to hold every candidate the model cannot tell from the best."""
    k = max(top, 32)
    while True:
        rows = [r for r in store.top(k, model_backend) if r["rankable"]]
        ranked = [Ranked(r["id"], r["fitness"], r.get("model_error")) for r in rows]
        if len(rows) < k or len(head_group(ranked)) < len(ranked):
            return ranked
        k *= 4  # every row fetched ties the best: the group may go on past them


def plan(store: Store, model_backend: str, top: int) -> tuple[list[Ranked], list[int]]:
    """(ranking, take): the ranking (modelled_ranking) and the ids remeasure takes from it, in order:
    the first `top` of model_error.remeasure_order (the candidates the model cannot tell from the
    best, then the rest in rank order)."""
    ranking = modelled_ranking(store, model_backend, top)
    return ranking, remeasure_order(ranking)[1][: max(top, 0)]


def describe_plan(ranking: list[Ranked], top: int) -> str:
    """One line for the user: which candidates remeasure starts with, and why."""
    if not ranking:
        return "no ranked modelled candidates to measure"
    head = head_group(ranking)
    best = f"#{head[0]}"
    if len(head) == 1:
        if ranking[0].model_error is None:
            return f"the model's error is unknown for the best {best}: measuring in the model's rank order"
        return f"the model tells the best {best} from the rest (beyond its calibration error): rank order"
    ids = ", ".join(f"#{i}" for i in head[1:])
    line = (
        f"the model cannot tell {ids} from the best {best} (within its calibration error): "
        "measuring these first, then the rest in rank order"
    )
    if len(head) > top:
        line += f"; {len(head) - top} of them lie beyond --top {top}: pass --top {len(head)} to measure all"
    return line


def _measured(candidate: dict) -> bool:
    """Measured before, with a verdict that stands: not a timeout, crash or judge error, which may
    have been the machine's or the judge's fault and are measured again."""
    return any(
        e["backend"].startswith("cuda:") and e["status"] not in RETRYABLE for e in candidate["evaluations"]
    )


@dataclasses.dataclass
class Comparison:
    """Candidates evaluated on both backends. Each row: {id, modelled_fitness, measured_fitness,
    measured_status, shapes: [{shape, layout, modelled_tflops, measured_tflops}]} (train shapes).
    Correlations use pairs where both verdicts are ok (a GPU failure has no performance to rank)."""

    model_backend: str | None
    measured_backend: str | None
    rows: list[dict]
    spearman: float | None
    kendall_tau: float | None
    pairs: int  # number of ok/ok pairs the correlations are computed on

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def render(self) -> str:
        if self.model_backend is None or self.measured_backend is None:
            missing = "no model:* evaluations" if self.model_backend is None else "nothing measured yet"
            return f"{missing}: run `evolve remeasure RUN` on a machine with a GPU to compare"
        mod, mea = f"modelled ({self.model_backend})", f"measured ({self.measured_backend})"
        w = max(len(mod), len(mea), 10)
        lines = [
            f"model vs measurement, {len(self.rows)} candidates on both backends (never ranked together)",
            "fitness: modelled = geomean fraction of peak; measured = geomean speedup over torch.matmul",
            f"{'id':>6}  {mod:>{w}}  {mea:>{w}}  {'GPU verdict':<11} train shapes: modelled/measured TFLOP/s",
        ]
        for r in self.rows:
            shapes = " ".join(
                f"{'x'.join(map(str, s['shape']))}{s['layout']}:{_fmt(s['modelled_tflops'], 0)}/"
                f"{_fmt(s['measured_tflops'], 0)}"
                for s in r["shapes"]
            )
            modelled = (
                _fmt(r["modelled_fitness"], 4) if r["modelled_status"] == "ok" else r["modelled_status"]
            )
            lines.append(
                f"{r['id']:>6}  {modelled:>{w}}  {_fmt(r['measured_fitness'], 4):>{w}}  "
                f"{r['measured_status']:<11} {shapes}"
            )
        sp = "n/a (needs >= 3 ok pairs)" if self.spearman is None else f"{self.spearman:+.3f}"
        kt = "n/a" if self.kendall_tau is None else f"{self.kendall_tau:+.3f}"
        lines.append(f"rank correlation of fitness ({self.pairs} ok pairs): Spearman {sp}, Kendall tau {kt}")
        return "\n".join(lines)


def _fmt(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def comparison(
    store: Store, model_backend: str | None = None, measured_backend: str | None = None
) -> Comparison:
    """Pair every candidate evaluated on `model_backend` (default: the model:* backend with most ok
    rows) and `measured_backend` (default: the cuda:* one with most ok rows), ordered by modelled fitness."""
    model_backend = model_backend or _backends(store, "model:")
    measured_backend = measured_backend or _backends(store, "cuda:")
    by_backend: dict[str, dict[int, dict]] = {model_backend or "": {}, measured_backend or "": {}}
    for row in store.all_evaluated():
        if row["backend"] in by_backend:
            by_backend[row["backend"]][row["id"]] = row
    modelled, measured = by_backend[model_backend or ""], by_backend[measured_backend or ""]
    rows = []
    for cid in sorted(set(modelled) & set(measured), key=lambda i: (-modelled[i]["fitness"], i)):
        m, g = modelled[cid], measured[cid]
        gshapes = {(tuple(s["shape"]), s.get("layout")): s for s in g["shapes"] if s.get("kind") == "train"}
        shapes = [
            {"shape": list(s["shape"]), "layout": s.get("layout"), "modelled_tflops": s.get("tflops"),
             "measured_tflops": gshapes.get((tuple(s["shape"]), s.get("layout")), {}).get("tflops")}
            for s in m["shapes"] if s.get("kind") == "train"
        ]  # fmt: skip
        rows.append({"id": cid, "modelled_fitness": m["fitness"], "measured_fitness": g["fitness"],
                     "modelled_status": m["status"], "measured_status": g["status"], "shapes": shapes})  # fmt: skip
    ok = [r for r in rows if r["modelled_status"] == "ok" and r["measured_status"] == "ok"]
    xs, ys = [r["modelled_fitness"] for r in ok], [r["measured_fitness"] for r in ok]
    return Comparison(model_backend, measured_backend, rows, spearman(xs, ys), kendall_tau(xs, ys), len(ok))


def _cuda_measure(timeout_s: float) -> Measure:
    """The production seam: judge on the GPU here with the full cascade (correctness + timing).
    Whatever escapes evaluate() is that candidate's judge_error, so one candidate cannot end a
    remeasure that has others to measure."""
    from evaluators import EvalOptions, Evaluation, backend_label, evaluate
    from evaluators.compat import UnsupportedEnvironment

    options = EvalOptions(device="cuda", timeout_s=timeout_s)

    def measure(source: str, task: Task) -> dict:
        try:
            return evaluate(source, task, options).to_dict()
        except UnsupportedEnvironment:  # this machine cannot judge at all: the command's error
            raise
        except Exception as e:  # noqa: BLE001 - the judge's bug, recorded as such
            feedback = f"the GPU judge failed ({type(e).__name__}: {str(e)[:500]}); not the kernel's fault"
            return Evaluation("judge_error", backend_label(task, options), feedback=feedback).to_dict()

    return measure


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _task_path(config_task: str, folder: Path) -> Path:
    """The task file as configured (relative to the working directory), else relative to the
    folder holding runs/ (a run dir is runs/<name>), so remeasure works from the repo root or the run."""
    path = Path(config_task)
    for candidate in (path, folder.resolve().parent.parent / path):
        if candidate.is_file():
            return candidate
    return path


def add_remeasure_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `remeasure` subcommand to `evolve`'s subparsers; dispatch to `main_remeasure(args)`."""
    p = subparsers.add_parser("remeasure", help="measure the model's top candidates on this GPU and compare")
    p.add_argument("run", help="run name or folder, e.g. demo or runs/demo")
    p.add_argument("--top", type=int, default=10, help="how many modelled best to measure (default 10)")
    p.add_argument(
        "--unranked",
        type=int,
        help="how many unsupported or judge_error candidates (which the CPU judge could not judge) "
        "to judge here as well, oldest first (default: --top)",
    )
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.add_argument("--compare-only", action="store_true", help="measure nothing; compare what is measured")
    p.add_argument("--model-backend", help="modelled backend to take (default: model:* with most ok)")
    return p


def main_remeasure(args: argparse.Namespace) -> int:
    """CLI body of `evolve remeasure`: 0 done, 2 when there is no GPU to measure on or on a usage error."""
    from evaluators import load_task
    from evaluators.compat import UnsupportedEnvironment
    from evaluators.task import TaskError

    from .config import UsageError
    from .store import StoreError
    from .ui import run_dir

    compare_only = bool(getattr(args, "compare_only", False))
    model_backend = getattr(args, "model_backend", None)
    try:
        folder = run_dir(args.run)
        if not compare_only and not _cuda_available():
            print(NO_GPU, file=sys.stderr)
            return 2
        with Store.open(folder / "run.sqlite", readonly=compare_only) as store:
            if not compare_only:
                config = store.run_info()["config"]
                if not config.get("task"):
                    raise UsageError(f"{folder}: the run's config names no task file; cannot remeasure")
                task = load_task(_task_path(config["task"], folder))

                def report(cid: int, ev: dict) -> None:
                    print(f"measured #{cid} on {ev['backend']}: {ev['status']} fitness {ev.get('fitness', 0):.4f}",
                          file=sys.stderr)  # fmt: skip

                backend = model_backend or _backends(store, "model:")
                if backend is not None and args.top > 0:
                    print(describe_plan(plan(store, backend, args.top)[0], args.top), file=sys.stderr)
                measure = _cuda_measure(float(config.get("timeout_s") or 180.0))
                done = remeasure(
                    store, task, args.top, measure, model_backend, report, getattr(args, "unranked", None)
                )
                print(f"measured {len(done)} new candidate(s)", file=sys.stderr)
            result = comparison(store, model_backend)
    except (UsageError, StoreError, TaskError, UnsupportedEnvironment) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict()) if getattr(args, "json", False) else result.render())
    return 0
