"""`evolve export --portfolio`: the best kernel per shape bucket, one dispatcher.

Buckets split the task's training shapes (decode M <= 16, skinny M <= 256, small K <= 1024, the rest).
For each bucket, the run's candidates (ok and verified on one backend: measured, or modelled with
allow_modelled) are ranked by their stored figures on that bucket's training shapes (geomean speedup
over torch.matmul, or modelled fraction of peak); the best that beats the baseline (torch.matmul
when measured, the seed when modelled) is judged again on the bucket's training and held-out shapes
(`judge(source, task)`: evaluators.evaluate on this machine) and included only if that verdict is ok
and still beats the baseline (else the next, up to `tries`). A bucket without such a kernel falls back
to torch.matmul, and the module's explain() says why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from evaluators.task import Task
from evaluators.verdict import geometric_mean
from kernels.runtime.dispatch import bounds_hold

from ..config import UsageError
from ..store import Store
from ..ui import run_dir
from .backward import backward_facts, backward_task
from .facts import SHIPPABLE_STAGES, judged_facts, task_for_run
from .writer import assemble, exported_with, python_literal, quote_source

Judge = Callable[[str, Task], dict]  # (source, task) -> Evaluation dict
BUCKETS = (
    {"name": "decode", "when": {"M_max": 16}},
    {"name": "skinny", "when": {"M_max": 256}},
    {"name": "small_k", "when": {"K_max": 1024}},
    {"name": "large", "when": {}},
)


@dataclasses.dataclass
class BucketChoice:
    name: str
    when: dict
    train: list[tuple[int, int, int]]
    held_out: list[tuple[int, int, int]]
    candidate_id: int | None = None  # None: the bucket falls back
    source: str = ""
    score: float | None = None  # the stored figure it was ranked by
    verdict: dict | None = None  # the re-judge's Evaluation dict
    reason: str = ""  # why it falls back, or the re-judged figure it was included on
    tried: list[str] = dataclasses.field(default_factory=list)  # candidates re-judged and refused
    backward: dict = dataclasses.field(default_factory=dict)  # judged["backward"] of the included kernel


def bucket_of(shape: tuple[int, int, int], buckets=BUCKETS) -> str | None:
    m, n, k = shape
    return next((b["name"] for b in buckets if bounds_hold(b["when"], m, n, k)), None)


def _score(row: dict, shapes: list[tuple[int, int, int]], measured: bool) -> float | None:
    """Geomean of a verdict's figure (speedup, or fraction of peak) on `shapes` (every layout it has);
    None when one of them has no figure."""
    figures = []
    for shape in shapes:
        rows = [s for s in row["shapes"] if s.get("kind") == "train" and tuple(s["shape"]) == tuple(shape)]
        values = [s.get("speedup" if measured else "fraction_of_peak") for s in rows]
        if not values or any(v is None or v <= 0 for v in values):
            return None
        figures += values
    return geometric_mean(figures)


def _backend(rows: list[dict], allow_modelled: bool) -> tuple[str, bool]:
    ok = [r for r in rows if r["status"] == "ok" and r.get("stage") in SHIPPABLE_STAGES]
    for measured in (True, False):
        counts: dict[str, int] = {}
        for r in ok:
            if (r["fitness_kind"] == "measured") == measured:
                counts[r["backend"]] = counts.get(r["backend"], 0) + 1
        if counts and (measured or allow_modelled):
            return max(sorted(counts), key=lambda b: counts[b]), measured
        if counts:
            raise UsageError(
                "this run's fitness is only modelled, never measured on a GPU, and only what was measured "
                "ships by default: run `evolve remeasure RUN` on a GPU first, or pass --allow-modelled"
            )
    raise UsageError("no candidate of this run has an ok, verified verdict yet: nothing to export")


def choose(
    run: str | Path,
    judge: Judge,
    allow_modelled: bool = False,
    task_path=None,
    tries: int = 3,
    buckets=BUCKETS,
) -> tuple[str, Task, str, list[BucketChoice]]:
    """(run name, task, backend, one BucketChoice per bucket), the kernels re-judged by `judge`."""
    folder = run_dir(run)
    with Store.open(folder / "run.sqlite", readonly=True) as store:
        info = store.run_info()
        rows = store.all_evaluated()
        backend, measured = _backend(rows, allow_modelled)
        task = task_for_run(info.get("config") or {}, folder, task_path)
        mine = [
            r
            for r in rows
            if r["backend"] == backend and r["status"] == "ok" and r.get("stage") in SHIPPABLE_STAGES
        ]
        choices = []
        for bucket in buckets:
            train = [s for s in task.train if bucket_of(s, buckets) == bucket["name"]]
            held = [s for s in task.held_out if bucket_of(s, buckets) == bucket["name"]]
            choice = BucketChoice(bucket["name"], dict(bucket["when"]), train, held)
            choices.append(choice)
            if not train:
                choice.reason = "no training shape of the task lies here: nothing was judged on it"
                continue
            seeds = [_score(r, train, measured) for r in mine if r["proposer"] == "seed"]
            baseline = 1.0 if measured else max([s for s in seeds if s is not None], default=0.0)
            against = "torch.matmul" if measured else f"the seed (modelled {baseline:.4g})"
            ranked = sorted(
                ((score, r) for r in mine if (score := _score(r, train, measured)) is not None),
                key=lambda sr: (-sr[0], sr[1]["id"]),
            )
            better = [(score, r) for score, r in ranked if score > baseline]
            if not better:
                best = f"; the best {ranked[0][0]:.4g}" if ranked else ""
                choice.reason = f"no kernel beat {against} here{best}"
                continue
            bucket_task = dataclasses.replace(
                task, name=f"{task.name}:{bucket['name']}", train=tuple(train), held_out=tuple(held)
            )
            for score, r in better[:tries]:
                source = store.candidate(r["id"])["source"]
                verdict = judge(source, bucket_task)
                if verdict["status"] == "ok" and verdict["fitness"] > baseline:
                    choice.candidate_id, choice.source, choice.score, choice.verdict = (
                        r["id"],
                        source,
                        score,
                        verdict,
                    )
                    choice.reason = (
                        f"re-judged on this bucket: {verdict['fitness']:.4g} on {verdict['backend']}"
                    )
                    choice.backward = _backward(
                        source, task, bucket["name"], buckets, judge, measured, allow_modelled
                    )
                    break
                choice.tried.append(f"#{r['id']} {verdict['status']} {verdict.get('fitness', 0):.4g}")
            else:
                choice.reason = f"no kernel beat {against} when re-judged here ({', '.join(choice.tried)})"
    return info["name"], task, backend, choices


def _backward(
    source: str, task: Task, name: str, buckets, judge: Judge, measured: bool, allow_modelled: bool
) -> dict:
    """judged["backward"] of a bucket's kernel: its verdict on the backward products of the task's
    training shapes that fall in its bucket (a backward product is dispatched by its own shape)."""
    whole = backward_task(task)
    mine = tuple(s for s in whole.train if bucket_of(s, buckets) == name)
    if not mine:
        return {"reason": f"no backward product of the training shapes lies in bucket {name}"}
    bwd = dataclasses.replace(whole, name=f"{task.name}:{name}:backward", train=mine)
    return backward_facts(judge(source, bwd), bwd, measured, allow_modelled)


def default_judge(measured: bool, timeout_s: float = 180.0) -> Judge:
    """evaluators.evaluate on this machine: on the GPU for a measured portfolio, else on the CPU
    (modelled, verified stage)."""
    import torch

    from evaluators import EvalOptions, evaluate

    if measured and not torch.cuda.is_available():
        raise UsageError("this run was measured on a GPU: re-judging its portfolio needs one; none here")
    options = EvalOptions(device="cuda" if measured else "cpu", timeout_s=timeout_s, stage="verified")
    return lambda source, task: evaluate(source, task, options).to_dict()


def portfolio_text(run: str, task: Task, backend: str, choices: list[BucketChoice], module_name: str) -> str:
    """The exported portfolio module: one kernel module per included candidate, one dispatcher."""
    from .writer import namespace

    included = [c for c in choices if c.candidate_id is not None]
    sources = {f"c{c.candidate_id}": c.source for c in included}
    portfolio = []
    for c in choices:
        entry = {"name": c.name, "when": c.when, "kernel": f"c{c.candidate_id}" if c.candidate_id else None}
        if c.candidate_id is None:
            entry["reason"] = c.reason
        else:
            row = {
                "backend": c.verdict["backend"],
                "fitness_kind": c.verdict["fitness_kind"],
                "metrics": c.verdict,
            }
            bucket_task = dataclasses.replace(task, train=tuple(c.train), held_out=tuple(c.held_out))
            entry["judged"] = {**judged_facts(row, bucket_task), "backward": c.backward}
            entry["label"] = (
                f"candidate #{c.candidate_id} ({c.verdict['fitness']:.4g} on {entry['judged']['label']})"
            )
        portfolio.append(entry)
    ns = namespace(run, "portfolio", "".join(sources.values()), {"portfolio": portfolio})
    when = exported_with()
    lines = [
        f"triton-evolve portfolio export: run {run}, {len(included)} kernel(s) over {len(choices)} buckets.",
        "",
    ]
    for c, entry in zip(choices, portfolio, strict=True):
        shapes = ", ".join("x".join(map(str, s)) for s in c.train) or "none"
        what = entry.get("label") or f"torch.matmul: {c.reason}"
        lines.append(f"{c.name:<8} {python_literal(c.when)}: {what}; training shapes {shapes}")
    lines += [
        "",
        f"ranked on {backend}; exported {when['date']} with torch {when['torch']}, triton {when['triton']}",
        f"task {task.name} ({task.source}): dtype {task.dtype}; op torch.ops.{ns}.matmul",
        "Each kernel runs only in its bucket and only for what it was judged on there; explain(a, b) says which.",
        "",
        f"Use:  import {module_name};  {module_name}.patch(model)",
    ]
    if backend.startswith("model:"):
        lines.insert(
            1,
            "MODELLED, NOT MEASURED: exported with --allow-modelled (the model can be several times too optimistic).",
        )
    facts_code = f"""
RUN = {run!r}
NAMESPACE = {ns!r}
PORTFOLIO = {python_literal(portfolio)}
PROVENANCE = {python_literal({"run": run, "backend": backend, "exported": when, "task": task.to_dict()})}

# The candidate kernel modules, exactly as they were judged.
KERNEL_SOURCES = {{{", ".join(f"{key!r}: {quote_source(src)}" for key, src in sources.items())}}}
"""
    install = """
kernels = {key: load_kernel(key, source) for key, source in KERNEL_SOURCES.items()}
configure_portfolio(
    [
        {**b, "entry": None} if b["kernel"] is None else {
            **b,
            "entry": kernels[b["kernel"]].matmul,
            "pick_config": getattr(kernels[b["kernel"]], "pick_config", None),
            "autotuned": autotuned_kernels(vars(kernels[b["kernel"]])),
        }
        for b in PORTFOLIO
    ],
    NAMESPACE,
)
kernel = None  # a portfolio has one kernel module per bucket: `kernels`
"""
    return assemble("\n".join(lines), facts_code, install)
