"""`evolve`: launch, resume and inspect evolution runs.

evolve run runs/demo.toml [--name N] [--max-evals N] [--time-budget S] [--workers N]
                          [--seed N] [--device cpu|cuda] [--ray-address auto|HOST:PORT]
                          [--proposer llm:MODEL|mutator|auto:MODEL ...] [--max-cost USD] [--max-tokens N]
evolve run --resume runs/demo
evolve leaderboard demo [--top N] [--status S[,S]] [--shape MxNxK] [--backend B] [--proposer PREFIX]
                       [--json | --csv] [--summary]
evolve show demo ID [--source]          (source, verdicts and per-shape metrics, feedback, parents, LLM answer)
evolve diff demo ID [OTHER]             (unified diff against its first parent, or OTHER)
evolve lineage demo ID [--backend B]    (ancestry up to the seed: fitness and change note per step)
evolve report demo [-o FILE] [--backend B] [--top N]   (one self-contained HTML page: plots, lineage, source)
evolve export ID --run demo [-o my_matmul.py] [--allow-modelled]   (one module: torch + triton only)
evolve export --portfolio --run demo [-o FILE]   (the best kernel per shape bucket, re-judged, one dispatcher)
evolve compare demo ID [ID ...] [--json]   (per shape against torch.matmul and the seed)
evolve remeasure demo [--top N] [--json] [--compare-only]   (measure modelled winners on a GPU)
evolve export-prompts demo [--out DIR]   (the prompt template the run's LLM arms were paid best for)
"""

from __future__ import annotations

import argparse
import os
import sys

from .config import ConfigError, UsageError
from .store import StoreError
from .ui import (
    BoardFilter,
    board_csv,
    board_json,
    board_records,
    diff,
    diff_text,
    leaderboard_view,
    lineage,
    open_run,
    parse_shape,
    parse_statuses,
    print_parts,
    render_proposing_summary,
    require_candidate,
    run_dir,
    show,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="evolve", description="Evolve Triton matmul kernels.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="launch a run (or resume one with --resume)")
    run.add_argument("config", nargs="?", help="run file, e.g. runs/demo.toml")
    run.add_argument("--name", help="run name (default: the file's run.name); outputs go to runs/<name>/")
    run.add_argument("--max-evals", type=int, help="stop after this many evaluated candidates")
    run.add_argument("--time-budget", type=float, help="stop after this many seconds")
    run.add_argument("--workers", type=int, help="evaluations in flight (default: cores, or GPUs)")
    run.add_argument("--seed", type=int, help="seed for selection and the mutator")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where candidates are judged")
    run.add_argument("--ray-address", help="join a Ray cluster: auto or HOST:PORT (default: start one)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue runs/<name> from its store")
    run.add_argument(
        "--proposer",
        action="append",
        metavar="llm:MODEL|mutator|auto:MODEL",
        help="replace the run file's proposers (repeatable); an LLM's endpoint and key come from "
        "OPENAI_BASE_URL and OPENAI_API_KEY",
    )
    run.add_argument("--max-cost", type=float, help="USD the LLM proposers may spend (then they stop)")
    run.add_argument("--max-tokens", type=int, help="tokens the LLM proposers may use (then they stop)")
    add_inspect_parsers(sub)
    export = sub.add_parser(
        "export-prompts",
        help="write the prompt template a run's LLM arms were paid best for, for the next run",
    )
    export.add_argument("run", help="run name or folder, e.g. demo or runs/demo")
    export.add_argument("--out", help="folder to write it to (default: runs/<name>/prompts)")
    from .export import add_compare_parser, add_export_parser, main_compare, main_export
    from .remeasure import add_remeasure_parser, main_remeasure
    from .report import add_report_parser, main_report

    add_remeasure_parser(sub)
    add_report_parser(sub)
    add_export_parser(sub)
    add_compare_parser(sub)
    args = parser.parse_args(argv)

    try:
        if args.command == "run":
            from .runner import launch

            return launch(args)
        if args.command == "remeasure":
            return main_remeasure(args)
        if args.command == "report":
            return main_report(args)
        if args.command == "export":
            return main_export(args)
        if args.command == "compare":
            return main_compare(args)
        if args.command == "export-prompts":
            return export_prompts(args)
        return INSPECT[args.command](args)
    except (ConfigError, StoreError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `evolve show ... | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def add_inspect_parsers(sub) -> None:
    """The read-only commands on a run (they work while it runs, and on a finished or killed run)."""
    board = sub.add_parser("leaderboard", help="ranked candidates of a run (works while it runs)")
    board.add_argument("run", help="run name or folder, e.g. demo or runs/demo")
    board.add_argument(
        "--top", type=int, help="how many rows (default 10; --json/--csv: all, or the best N per backend)"
    )
    board.add_argument("--status", help="only these statuses, e.g. ok or incorrect,timeout")
    board.add_argument("--shape", help="show this shape's figure and rank by it, e.g. 4096x4096x4096")
    board.add_argument(
        "--backend", help="the backend to rank, e.g. model:h100 (default: the one with most ok)"
    )
    board.add_argument(
        "--proposer", help="only candidates whose proposer starts with this, e.g. llm or mutator"
    )
    fmt = board.add_mutually_exclusive_group()
    fmt.add_argument(
        "--json",
        action="store_true",
        help="every verdict as a JSON list (fitness, held_out, rank, model_error, within_model_error, ...)",
    )
    fmt.add_argument("--csv", action="store_true", help="every verdict as CSV, one column per training shape")
    board.add_argument(
        "--summary",
        action="store_true",
        help="also what proposed: LLM calls, tokens and cost per proposer, the bandit's arms, the lessons",
    )
    one = sub.add_parser(
        "show", help="one candidate: source, verdicts, per-shape metrics, feedback, LLM answer"
    )
    one.add_argument("run", help="run name or folder, e.g. demo or runs/demo")
    one.add_argument("id", type=int, help="candidate id (see `evolve leaderboard`)")
    one.add_argument(
        "--source", action="store_true", help="print only its source (e.g. to save it to a file)"
    )
    two = sub.add_parser("diff", help="unified diff of a candidate against its first parent (or another)")
    two.add_argument("run", help="run name or folder, e.g. demo or runs/demo")
    two.add_argument("id", type=int, help="candidate id")
    two.add_argument(
        "other", type=int, nargs="?", help="compare with this candidate (default: its first parent)"
    )
    line = sub.add_parser(
        "lineage", help="a candidate's ancestry up to the seed, with fitness and change notes"
    )
    line.add_argument("run", help="run name or folder, e.g. demo or runs/demo")
    line.add_argument("id", type=int, help="candidate id")
    line.add_argument("--backend", help="whose verdicts to show (default: the run's, with most ok)")


def leaderboard(args) -> int:
    """`evolve leaderboard RUN`: the table (evolve/ui/leaderboard.py), or with --json / --csv every verdict."""
    flt = BoardFilter(
        top=args.top if args.top is not None or args.json or args.csv else 10,
        status=parse_statuses(args.status) if args.status else (),
        shape=parse_shape(args.shape) if args.shape else None,
        backend=args.backend,
        proposer=args.proposer,
    )
    with open_run(args.run) as store:
        if args.json or args.csv:
            records = board_records(store, flt)
            print(board_json(records) if args.json else board_csv(records), end="\n" if args.json else "")
            return 0
        print_parts(leaderboard_view(store, flt))
        if args.summary:
            print(render_proposing_summary(store) or "no LLM call and no bandit state recorded in this run")
    return 0


def show_command(args) -> int:
    """`evolve show RUN ID`: evolve/ui/inspect.py show, or with --source the source alone."""
    with open_run(args.run) as store:
        if args.source:
            print(require_candidate(store, args.id)["source"], end="")
            return 0
        parts = show(store, args.id)
    print_parts(parts, soft_wrap=True)
    return 0


def diff_command(args) -> int:
    """`evolve diff RUN ID [OTHER]`: evolve/ui/inspect.py diff."""
    with open_run(args.run) as store:
        text = diff(store, args.id, args.other)
    if sys.stdout.isatty():
        print_parts([diff_text(text)], soft_wrap=True)
    else:  # as difflib wrote it (trailing spaces and all), for patch and scripts
        print(text)
    return 0


def lineage_command(args) -> int:
    """`evolve lineage RUN ID`: evolve/ui/inspect.py lineage."""
    with open_run(args.run) as store:
        parts = lineage(store, args.id, args.backend)
    print_parts(parts)
    return 0


INSPECT = {"leaderboard": leaderboard, "show": show_command, "diff": diff_command, "lineage": lineage_command}


def export_prompts(args) -> int:
    """`evolve export-prompts RUN`: the template (built-in or a variant an LLM wrote) whose arms were paid
    best, pulled at least 3 times, written as a file a run file names as `templates = ["file:PATH"]`."""
    from pathlib import Path

    from .meta.prompt_evolution import best_variant
    from .proposers.prompt import load_template
    from .store import Store

    folder = run_dir(args.run)
    with Store.open(folder / "run.sqlite", readonly=True) as store:
        state = store.load_bandit("arms") or {"arms": []}
        variants = {v["id"]: v["text"] for v in store.prompt_variants()}
    arms = [{"arm": a["arm"], "pulls": a["pulls"], "mean": a["mean"]} for a in state["arms"]]
    best = best_variant(arms, min_pulls=3)
    if best is None:
        raise UsageError(
            f"run {args.run}: no prompt template was tried 3 times yet (no LLM proposer, or too few calls)"
        )
    out = Path(args.out) if args.out else folder / "prompts"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{best}.md"
    path.write_text(variants.get(best) or load_template(best), encoding="utf-8")
    print(
        f"{path}: template {best} ({'a variant an LLM wrote' if best in variants else 'built in'}), the best "
        f"paid of the run's templates; use it with templates = [\"file:{path}\"] in a run file's [[proposers]]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
