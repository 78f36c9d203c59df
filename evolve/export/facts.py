"""What an export says about its kernel: the verdict it ships on, and what that verdict judged.

`verdict_facts(run_folder, candidate_id, allow_modelled, task_path)` reads the run's store (read-only)
and returns `Facts`: the candidate's source, the evaluation it ships on (measured by default; a
modelled one only with allow_modelled), the `judged` dict the runtime's dispatch reads (dtypes,
layouts, smallest and largest shapes judged) and the provenance its header prints. Every refusal is
a `UsageError` naming the fix and what exists.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from evaluators.targets import DEVICE_PROPERTIES
from evaluators.task import Task, TaskError, load_task

from ..config import UsageError
from ..store import Store, StoreError
from ..ui import run_dir

TORCH_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
# Shape rows of an evaluation that compared the kernel's whole output with a reference at that size
# ("reduced" and "sampled" rows are verification stand-ins for a training shape, listed under it).
JUDGED_KINDS = ("check", "fresh", "cover", "train", "held_out")
SHIPPABLE_STAGES = ("verified", "")  # "": verdicts written before stages existed


@dataclasses.dataclass
class Facts:
    run: str
    candidate_id: int
    source: str
    evaluation: dict  # the store row (with metrics) the export ships on
    task: Task
    judged: dict  # kernels/runtime/dispatch.py JUDGED_KEYS
    candidate: dict  # store.candidate(): lineage (proposer, generation, parents, note)


def _exportable(rows: list[dict], limit: int = 8) -> str:
    """The best ok candidates of a run, measured ones first, as a hint: '#3 cuda:... 1.21, ...'."""
    ok = [r for r in rows if r["status"] == "ok" and r.get("stage") in SHIPPABLE_STAGES]
    ok.sort(key=lambda r: (not r["backend"].startswith("cuda:"), -r["fitness"], r["id"]))
    if not ok:
        return "none: no candidate of this run has an ok, verified verdict yet"
    shown = ", ".join(f"#{r['id']} {r['backend']} {r['fitness']:.4g}" for r in ok[:limit])
    return shown + (f" (and {len(ok) - limit} more)" if len(ok) > limit else "")


def choose_evaluation(rows: list[dict], candidate_id: int, allow_modelled: bool, hint: str) -> dict:
    """The verdict to ship on among one candidate's rows: its best measured ok verified one; else,
    with allow_modelled, its best modelled one; else a UsageError saying why and what to do."""
    ok = [r for r in rows if r["status"] == "ok" and r.get("stage") in SHIPPABLE_STAGES]
    measured = sorted((r for r in ok if r["fitness_kind"] == "measured"), key=lambda r: -r["fitness"])
    if measured:
        return measured[0]
    modelled = sorted((r for r in ok if r["fitness_kind"] == "modelled"), key=lambda r: -r["fitness"])
    if modelled and allow_modelled:
        return modelled[0]
    if modelled:
        best = modelled[0]
        raise UsageError(
            f"candidate {candidate_id}'s fitness is only modelled ({best['backend']} {best['fitness']:.4g}), "
            "never measured on a GPU, and only what was measured ships by default: run `evolve remeasure "
            "RUN` on a machine with a GPU first, or pass --allow-modelled to export it anyway (its header "
            "and explain() will say MODELLED; the model can be several times too optimistic on small shapes)"
        )
    provisional = [r for r in rows if r["status"] == "ok" and r.get("stage") == "provisional"]
    if provisional:
        raise UsageError(
            f"candidate {candidate_id} has only a provisional verdict (the cheap checks; not yet verified "
            f"on every shape): never exported. Exportable candidates: {hint}"
        )
    if not rows:
        raise UsageError(f"candidate {candidate_id} has not been judged yet. Exportable candidates: {hint}")
    verdicts = "; ".join(f"{r['backend']}: {r['status']} ({r['feedback'][:120]})" for r in rows)
    raise UsageError(
        f"candidate {candidate_id} was not judged ok ({verdicts}). Exportable candidates: {hint}"
    )


def task_for_run(config: dict, folder: Path, task_path: str | Path | None) -> Task:
    """The run's task (its dtype is what the kernel was judged in): `task_path`, else the run's
    configured task file, as configured or relative to the folder holding runs/."""
    if task_path is not None:
        paths = [Path(task_path)]
    else:
        configured = config.get("task")
        if not configured:
            raise UsageError(f"{folder}: the run's config names no task file; pass --task TASK.toml")
        paths = [Path(configured), folder.resolve().parent.parent / configured]
    for path in paths:
        if path.is_file():
            try:
                return load_task(path)
            except TaskError as e:
                raise UsageError(f"the run's task file cannot be read: {e}") from None
    raise UsageError(
        f"the run's task file {paths[0]} is not here (looked in {', '.join(map(str, paths))}); "
        "pass --task with the task file the run was judged on"
    )


def judged_facts(evaluation: dict, task: Task) -> dict:
    """The runtime's `judged` dict for one verdict (kernels/runtime/dispatch.py JUDGED_KEYS)."""
    shapes = [s for s in evaluation["metrics"].get("shapes", []) if s.get("kind") in JUDGED_KINDS]
    layouts = sorted({s["layout"] for s in shapes if s.get("layout")}) or sorted(task.layouts)
    dims = [tuple(s["shape"]) for s in shapes] or list(task.check + task.train + task.held_out)
    smallest = min(dims, key=lambda d: (d[0] * d[1] * d[2], d))
    backend = evaluation["backend"]
    measured = evaluation["fitness_kind"] == "measured"
    gpu = backend.split(":", 1)[1] if ":" in backend else backend
    return {
        "label": f"{backend} ({'measured' if measured else 'MODELLED'})",
        "kind": "measured" if measured else "modelled",
        "gpu": gpu if measured else f"{gpu} (modelled for compile target {task.target})",
        "dtypes": [TORCH_DTYPES[task.dtype]],
        "layouts": layouts,
        "min_shape": list(smallest),
        "max_elements": max(max(m * k, k * n, m * n) for m, n, k in dims),
        # What the judge answered a kernel's CUDA device queries with on a CPU (its compile target).
        "cpu_device": dataclasses.asdict(DEVICE_PROPERTIES[task.target]),
    }


def verdict_facts(
    run: str | Path, candidate_id: int, allow_modelled: bool = False, task_path: str | Path | None = None
) -> Facts:
    """Everything an export writes about candidate `candidate_id` of run `run` (see module doc)."""
    folder = run_dir(run)
    try:
        with Store.open(folder / "run.sqlite", readonly=True) as store:
            info = store.run_info()
            rows = store.all_evaluated()
            try:
                candidate = store.candidate(candidate_id)
            except StoreError:
                ids = sorted({r["id"] for r in rows})
                span = f"{ids[0]}..{ids[-1]}" if ids else "none"
                raise UsageError(
                    f"run {info['name']} has no candidate {candidate_id} (judged ids: {span}); exportable: "
                    f"{_exportable(rows)}"
                ) from None
    except StoreError as e:
        raise UsageError(str(e)) from None
    mine = [r for r in rows if r["id"] == candidate_id]
    evaluation = choose_evaluation(mine, candidate_id, allow_modelled, _exportable(rows))
    task = task_for_run(info.get("config") or {}, folder, task_path)
    return Facts(
        run=info["name"],
        candidate_id=candidate_id,
        source=candidate["source"],
        evaluation=evaluation,
        task=task,
        judged=judged_facts(evaluation, task),
        candidate=candidate,
    )
