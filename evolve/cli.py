"""`evolve`: launch, resume and inspect evolution runs.

evolve run runs/demo.toml [--name N] [--max-evals N] [--time-budget S] [--workers N]
                          [--seed N] [--device cpu|cuda] [--ray-address auto|HOST:PORT]
                          [--proposer llm:MODEL|mutator|auto:MODEL ...] [--max-cost USD] [--max-tokens N]
evolve run --resume runs/demo
evolve leaderboard demo [--top N] [--json] [--summary]
evolve remeasure demo [--top N] [--json] [--compare-only]   (measure modelled winners on a GPU)
evolve export-prompts demo [--out DIR]   (the prompt template the run's LLM arms were paid best for)
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import ConfigError, UsageError
from .store import StoreError
from .ui import leaderboard_json, render_leaderboard, render_proposing_summary, run_dir


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
    board = sub.add_parser("leaderboard", help="ranked candidates of a run (works while it runs)")
    board.add_argument("run", help="run name or folder, e.g. demo or runs/demo")
    board.add_argument("--top", type=int, default=10, help="how many rows (default 10)")
    board.add_argument(
        "--json",
        action="store_true",
        help="every evaluated candidate as a JSON list (fitness, held_out, model_error, within_model_error, ...)",
    )
    board.add_argument(
        "--summary",
        action="store_true",
        help="also what proposed: LLM calls, tokens and cost per proposer, the bandit's arms, the lessons",
    )
    export = sub.add_parser(
        "export-prompts",
        help="write the prompt template a run's LLM arms were paid best for, for the next run",
    )
    export.add_argument("run", help="run name or folder, e.g. demo or runs/demo")
    export.add_argument("--out", help="folder to write it to (default: runs/<name>/prompts)")
    from .remeasure import add_remeasure_parser, main_remeasure

    add_remeasure_parser(sub)
    args = parser.parse_args(argv)

    try:
        if args.command == "run":
            from .runner import launch

            return launch(args)
        if args.command == "remeasure":
            return main_remeasure(args)
        if args.command == "export-prompts":
            return export_prompts(args)
        return leaderboard(args)
    except (ConfigError, StoreError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def leaderboard(args) -> int:
    """`evolve leaderboard RUN`: the table (ui.render_leaderboard), or with --json every evaluation."""
    from .store import Store

    folder = run_dir(args.run)
    with Store.open(folder / "run.sqlite", readonly=True) as store:
        if args.json:
            print(json.dumps(leaderboard_json(store.all_evaluated())))
            return 0
        print(render_leaderboard(store, args.top))
        if args.summary:
            print(render_proposing_summary(store) or "no LLM call and no bandit state recorded in this run")
    return 0


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
