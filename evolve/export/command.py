"""write_export, write_portfolio and the `evolve export` subcommand.

evolve export ID --run RUN [-o my_matmul.py] [--allow-modelled] [--task TASK.toml]
evolve export --portfolio --run RUN [-o my_matmul.py] [--allow-modelled] [--task TASK.toml]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import UsageError
from ..store import Store
from ..ui import run_dir
from . import portfolio
from .backward import judge_backward
from .facts import verdict_facts
from .writer import module_text


def _module_path(out_path: str | Path) -> Path:
    out = Path(out_path)
    if out.suffix != ".py" or not out.stem.isidentifier():
        raise UsageError(
            f"{out}: the export is a Python module; name it like my_matmul.py (an identifier + .py)"
        )
    return out


def _write(out: Path, text: str) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)  # never a half-written module where the user imports it
    return out


def write_export(
    run_folder: str | Path,
    candidate_id: int,
    out_path: str | Path,
    allow_modelled: bool = False,
    task_path: str | Path | None = None,
    judge: portfolio.Judge | None = None,
) -> Path:
    """Write candidate `candidate_id` of the run in `run_folder` (a name, folder or run.sqlite) to
    `out_path` as one self-contained module and return its path. Only a measured verdict ships unless
    `allow_modelled` (then the header and explain() say MODELLED); `task_path` replaces the run's task
    file when it moved. Before writing, `judge` (default: evaluators.evaluate here, on the GPU when
    there is one) judges the kernel on the backward products of the task's training shapes
    (evolve/export/backward.py): autograd runs the kernel only where that verdict allows. A missing run
    or candidate, or a verdict that cannot ship: UsageError."""
    out = _module_path(out_path)
    facts = verdict_facts(run_folder, candidate_id, allow_modelled, task_path)
    if judge is None:
        judge = portfolio.default_judge(_gpu_here())
    measured = facts.judged["kind"] == "measured"
    facts.judged["backward"] = judge_backward(facts.source, facts.task, judge, measured, allow_modelled)
    return _write(out, module_text(facts, out.stem))


def _gpu_here() -> bool:
    import torch

    return torch.cuda.is_available()


def write_portfolio(
    run_folder: str | Path,
    out_path: str | Path,
    allow_modelled: bool = False,
    task_path: str | Path | None = None,
    judge: portfolio.Judge | None = None,
) -> tuple[Path, list[portfolio.BucketChoice]]:
    """Write the run's best kernel per shape bucket (evolve/export/portfolio.py), each re-judged on its
    bucket by `judge` (default: evaluators.evaluate here, on the GPU when the run was measured), as one
    module; return its path and the bucket choices."""
    out = _module_path(out_path)
    if judge is None:
        judge = portfolio.default_judge(not allow_modelled or _has_measured(run_folder))
    run, task, backend, choices = portfolio.choose(run_folder, judge, allow_modelled, task_path)
    return _write(out, portfolio.portfolio_text(run, task, backend, choices, out.stem)), choices


def _has_measured(run: str | Path) -> bool:
    with Store.open(run_dir(run) / "run.sqlite", readonly=True) as store:
        return any(r["fitness_kind"] == "measured" and r["status"] == "ok" for r in store.all_evaluated())


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `export` subcommand to `evolve`'s subparsers; dispatch to `main_export(args)`."""
    p = subparsers.add_parser(
        "export", help="write a candidate kernel as one module for training code (custom op, nn.Linear)"
    )
    p.add_argument("id", type=int, nargs="?", help="candidate id (see `evolve leaderboard RUN`)")
    p.add_argument(
        "--portfolio",
        action="store_true",
        help="instead of one ID: the best kernel per shape bucket (decode, skinny, small K, the rest), "
        "each judged again on its bucket's shapes",
    )
    p.add_argument("--run", required=True, help="run name or folder, e.g. demo or runs/demo")
    p.add_argument(
        "-o",
        "--output",
        help="module to write (default: runs/<run>/exports/candidate_<id>.py or portfolio.py)",
    )
    p.add_argument(
        "--allow-modelled",
        action="store_true",
        help="export a winner whose fitness is only modelled (never measured); says so in its header and explain()",
    )
    p.add_argument("--task", help="the run's task file, when it is no longer where the run's config says")
    return p


def main_export(args: argparse.Namespace) -> int:
    """CLI body of `evolve export`: 0 written, 2 on a usage error (printed, with the fix)."""
    try:
        if bool(getattr(args, "portfolio", False)) == (args.id is not None):
            raise UsageError("give a candidate ID or --portfolio, one of them: evolve export ID --run RUN")
        task = getattr(args, "task", None)
        if args.id is None:
            out = args.output or run_dir(args.run) / "exports" / "portfolio.py"
            path, choices = write_portfolio(args.run, out, bool(args.allow_modelled), task)
            for c in choices:
                kernel = f"#{c.candidate_id}" if c.candidate_id else "torch.matmul"
                print(f"{c.name:<8} {kernel}: {c.reason}")
        else:
            out = args.output or run_dir(args.run) / "exports" / f"candidate_{args.id}.py"
            print("judging the kernel on the backward products of the training shapes ...", file=sys.stderr)
            path = write_export(args.run, args.id, out, bool(args.allow_modelled), task)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = path.stem
    print(f"wrote {path}")
    print(f"use it (imports only torch and triton): put {path.name} on your path, then")
    print(
        f"    import {name}\n    {name}.patch(model)\n    print({name}.explain(x, layer.weight.t(), backward=True))"
    )
    return 0
