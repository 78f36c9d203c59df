"""`evolve report RUN`: one self-contained HTML page about a run (figures inlined), written to
runs/<name>/report.html by default.

evolve/report/data.py reads the store (read-only: safe while the run is going, and on a stopped or
killed run), plots.py draws the figures (matplotlib, Agg), html.py writes the page. The CLI wires the
subcommand with `add_report_parser(sub)` and dispatches to `main_report(args)`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from evolve.store import Store, StoreError

from .data import ReportData, load
from .html import render

__all__ = ["ReportData", "add_report_parser", "main_report", "write_report"]


def write_report(
    run_folder: Path,
    out: Path | None = None,
    *,
    backend: str | None = None,
    judge: str | None = None,
    top: int = 10,
) -> Path:
    """Write the report of the run in `run_folder` (a folder holding run.sqlite, or the file itself) to
    `out` (default: <run_folder>/report.html) and return its path.

    `backend`: the backend to report on (default: the run's, `Store.default_backend()`); `judge`: the
    judge fingerprint whose verified verdicts are ranked (default: today's, evaluators/fingerprint.py,
    as `evolve leaderboard` ranks); `top`: how many kernels the leaderboard and the heatmap show.
    Raises StoreError when there is no run store there. The file is replaced atomically, so a browser
    never reads half a report."""
    run_folder = Path(run_folder)
    db = run_folder if run_folder.name == "run.sqlite" else run_folder / "run.sqlite"
    if judge is None:
        from evaluators.fingerprint import judge_fingerprint

        judge = judge_fingerprint()
    with Store.open(db, readonly=True) as store:
        data = load(store, backend=backend, judge=judge, top_k=top)
    page = render(data)
    out = Path(out) if out is not None else db.parent / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `report` subcommand to `evolve`'s subparsers; dispatch to `main_report(args)`."""
    p = subparsers.add_parser(
        "report", help="write a self-contained HTML report of a run (works while it runs)"
    )
    p.add_argument("run", help="run name or folder, e.g. demo or runs/demo")
    p.add_argument("-o", "--output", type=Path, help="file to write (default: runs/<name>/report.html)")
    p.add_argument(
        "--backend", help="backend to report on (default: the run's, the one with most ok verdicts)"
    )
    p.add_argument(
        "--top", type=int, default=10, help="kernels in the leaderboard and the heatmap (default 10)"
    )
    return p


def main_report(args: argparse.Namespace) -> int:
    """CLI body of `evolve report`: 0 written, 2 on a missing run or a usage error (said on stderr)."""
    from evolve.config import UsageError
    from evolve.ui import run_dir

    try:
        folder = run_dir(args.run)
        path = write_report(
            folder,
            getattr(args, "output", None),
            backend=getattr(args, "backend", None),
            top=int(getattr(args, "top", 10) or 10),
        )
    except (UsageError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB); open it in a browser")
    return 0
