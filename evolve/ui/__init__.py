"""What `evolve` shows and where runs live, apart from the command-line parser (evolve/cli.py, the top
floor) so that the runner and `remeasure` use them without importing the CLI.

paths (run folders, read-only stores, errors listing what exists) · console (rich consoles: colour on a
terminal, plain lines when piped) · statuses (counts, failures) · board (which rows a leaderboard shows)
· leaderboard (the table) · board_data (JSON, CSV) · live (the live display of a run) · interrupt
(Ctrl-C) · summary (what proposed) · inspect (show, diff, lineage).
"""

from .board import Board, BoardFilter, parse_shape, parse_statuses, select
from .board_data import board_csv, board_json, board_records, leaderboard_json
from .console import make_console, print_parts, to_text
from .inspect import diff, diff_text, lineage, show
from .interrupt import install_interrupt
from .leaderboard import leaderboard_view, render_leaderboard
from .live import LiveDisplay, status_line
from .paths import RUNS_DIR, open_run, require_backend, require_candidate, run_dir
from .statuses import APART, failure_summary, status_summary
from .summary import render_proposing_summary

__all__ = [
    "APART", "RUNS_DIR", "Board", "BoardFilter", "LiveDisplay", "board_csv", "board_json", "board_records",
    "diff", "diff_text", "failure_summary", "install_interrupt", "leaderboard_json", "leaderboard_view", "lineage",
    "make_console", "open_run", "parse_shape", "parse_statuses", "print_parts", "render_leaderboard",
    "render_proposing_summary", "require_backend", "require_candidate", "run_dir", "select", "show",
    "status_line", "status_summary", "to_text",
]  # fmt: skip
