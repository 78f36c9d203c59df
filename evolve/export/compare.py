"""`evolve compare RUN ID [ID...]`: chosen kernels shape by shape, against torch.matmul and the seed.

On a GPU the figures are measured (speedup over torch.matmul, the judge's timing protocol: both timed
in one process, interleaved); without one they are the performance model's (TFLOP/s, MODELLED; the
model does not price torch.matmul, so its column says so). A verdict the run already holds for that
backend is reused; a candidate without one is judged here (`judge(source, task)`).

    evolve compare RUN ID [ID...] [--json] [--task TASK.toml]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

from evaluators.task import Task
from evaluators.verdict import geometric_mean

from ..config import UsageError
from ..store import Store, StoreError
from ..ui import run_dir
from .facts import task_for_run

Judge = Callable[[str, Task], dict]
KINDS = ("train", "held_out")


@dataclasses.dataclass
class Comparison:
    backend: str
    measured: bool
    columns: list[str]  # "#12", "seed #1"
    statuses: dict[str, str]  # column -> its verdict's status ("ok", "incorrect", ...)
    rows: list[dict]  # {shape, layout, kind, figures: {column: float | None}}
    judged_here: list[int]

    def geomean(self, column: str, kind: str = "train") -> float | None:
        """Geometric mean of `column` over the rows of `kind` every ok column has a figure for (so the
        columns are compared on the same shapes and layouts)."""
        ok = [c for c in self.columns if self.statuses[c] == "ok"]
        common = [r for r in self.rows if r["kind"] == kind and all(r["figures"].get(c) for c in ok)]
        values = [r["figures"].get(column) for r in common]
        if not values or any(v is None or v <= 0 for v in values):
            return None
        return geometric_mean(values)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["geomean_train"] = {c: self.geomean(c) for c in self.columns}
        return d

    def render(self) -> str:
        unit = "speedup over torch.matmul (measured)" if self.measured else "TFLOP/s (MODELLED, not measured)"
        torch_col = "torch.matmul"
        head = [torch_col, *self.columns]
        lines = [f"compare on {self.backend}: {unit}", ""]
        lines.append(f"{'shape':<18}{'layout':<7}{'kind':<9}" + "".join(f"{h:>14}" for h in head))
        for r in self.rows:
            torch_fig = "1.00" if self.measured else "not modelled"
            cells = [torch_fig] + [_fmt(r["figures"].get(c), self.statuses[c]) for c in self.columns]
            shape = "x".join(map(str, r["shape"]))
            lines.append(f"{shape:<18}{r['layout']:<7}{r['kind']:<9}" + "".join(f"{x:>14}" for x in cells))
        means = ["1.00" if self.measured else "-"] + [
            _fmt(self.geomean(c), self.statuses[c]) for c in self.columns
        ]
        lines.append(f"{'geomean (train, common rows)':<34}" + "".join(f"{x:>14}" for x in means))
        if self.judged_here:
            lines.append(
                f"judged here: {', '.join(f'#{i}' for i in self.judged_here)}; the rest from the run's store"
            )
        return "\n".join(lines)


def _fmt(value: float | None, status: str) -> str:
    if status != "ok":
        return status
    return "-" if value is None else f"{value:.2f}"


def _figure(shape_row: dict, measured: bool) -> float | None:
    return shape_row.get("speedup") if measured else shape_row.get("tflops")


def compare(
    run: str | Path, ids: list[int], judge: Judge, backend: str, task_path: str | Path | None = None
) -> Comparison:
    """Compare candidates `ids` and the run's seed on `backend` ("cuda:<gpu>" or "model:<gpu>"): the
    run's verdicts on that backend where it has them, `judge`'s for the rest."""
    measured = backend.startswith("cuda:")
    folder = run_dir(run)
    with Store.open(folder / "run.sqlite", readonly=True) as store:
        info = store.run_info()
        rows = [r for r in store.all_evaluated() if r["backend"] == backend]
        seeds = sorted({r["id"] for r in store.all_evaluated() if r["proposer"] == "seed"})
        wanted = list(dict.fromkeys([*ids, *seeds[:1]]))
        try:
            candidates = {i: store.candidate(i) for i in wanted}
        except StoreError as e:
            known = sorted({r["id"] for r in store.all_evaluated()})
            span = f"{known[0]}..{known[-1]}" if known else "none"
            raise UsageError(f"{e}; run {info['name']} has candidates {span}") from None
        task = task_for_run(info.get("config") or {}, folder, task_path)
    verdicts: dict[int, dict] = {r["id"]: r for r in rows}
    judged_here = []
    for i in wanted:
        if i not in verdicts:
            verdict = judge(candidates[i]["source"], task)
            if verdict.get("backend") != backend:
                raise UsageError(f"judging #{i} here gave {verdict.get('backend')}, not {backend}")
            verdicts[i] = verdict
            judged_here.append(i)
    columns = {i: (f"seed #{i}" if i in seeds and i not in ids else f"#{i}") for i in wanted}
    table: dict[tuple, dict] = {}
    for i in wanted:
        for s in verdicts[i].get("shapes", []):
            if s.get("kind") in KINDS:
                key = (tuple(s["shape"]), s.get("layout") or "nn", s["kind"])
                row = table.setdefault(
                    key, {"shape": list(key[0]), "layout": key[1], "kind": key[2], "figures": {}}
                )
                row["figures"][columns[i]] = _figure(s, measured)
    order = sorted(table.values(), key=lambda r: (KINDS.index(r["kind"]), r["shape"], r["layout"]))
    return Comparison(
        backend=backend,
        measured=measured,
        columns=list(columns.values()),
        statuses={columns[i]: verdicts[i]["status"] for i in wanted},
        rows=order,
        judged_here=judged_here,
    )


def default_backend(run: str | Path) -> tuple[str, Judge]:
    """This GPU's backend and the GPU judge when there is a GPU; else the run's modelled backend (the
    model:* one with most ok verdicts; the task's target's model when it has none) and the CPU judge."""
    import torch

    from evaluators import EvalOptions, backend_label, evaluate

    if torch.cuda.is_available():
        options = EvalOptions(device="cuda")
        return backend_label(None, options), lambda source, t: evaluate(source, t, options).to_dict()
    with Store.open(run_dir(run) / "run.sqlite", readonly=True) as store:
        rows = store.all_evaluated()
    modelled = [r["backend"] for r in rows if r["backend"].startswith("model:") and r["status"] == "ok"]
    model_gpu = max(sorted(set(modelled)), key=modelled.count).split(":", 1)[1] if modelled else "auto"
    options = EvalOptions(device="cpu", stage="verified", model_gpu=model_gpu)
    backend = f"model:{model_gpu}" if modelled else ""

    def judge(source: str, task: Task) -> dict:
        return evaluate(source, task, options).to_dict()

    if not backend:  # the label the model gives for this run's task
        with Store.open(run_dir(run) / "run.sqlite", readonly=True) as store:
            task = task_for_run(store.run_info().get("config") or {}, run_dir(run), None)
        backend = backend_label(task, options)
    return backend, judge


def add_compare_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `compare` subcommand to `evolve`'s subparsers; dispatch to `main_compare(args)`."""
    p = subparsers.add_parser("compare", help="candidates shape by shape against torch.matmul and the seed")
    p.add_argument("run", help="run name or folder, e.g. demo or runs/demo")
    p.add_argument("ids", type=int, nargs="+", help="candidate ids")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.add_argument("--task", help="the run's task file, when it is no longer where the run's config says")
    return p


def main_compare(args: argparse.Namespace, judge: Judge | None = None, backend: str | None = None) -> int:
    """CLI body of `evolve compare`: 0 printed, 2 on a usage error."""
    try:
        if judge is None or backend is None:
            backend, judge = default_backend(args.run)
        result = compare(args.run, args.ids, judge, backend, getattr(args, "task", None))
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict()) if args.json else result.render())
    return 0
