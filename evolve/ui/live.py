"""The live display of `evolve run`: on a terminal, rich progress bars against --max-evals (and the time
budget when there is one) with the run's status under them, redrawn in place; when stdout is not a
terminal (tests, CI, a log file), the status as a plain line every 15 s and once more at the end."""

from __future__ import annotations

import time

from rich.console import Console, RenderableType
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from .console import make_console
from .statuses import failure_summary

# Seconds between two plain lines when stdout is not a terminal.
PLAIN_INTERVAL_S = 15.0


def status_line(progress, max_evals: int, time_budget_s: float = 0.0) -> str:
    """The run's state in one line, from the controller's Progress (evolve/controller.py): evaluations
    against max_evals, in flight, the best, the rate, failures, duplicates, provisional verdicts and
    the LLM proposers' state; with a time budget, the seconds spent of it."""
    line = (
        f"evals {progress.evaluated}/{max_evals}  in flight {progress.in_flight}  "
        f"best {progress.best_fitness:.4f} [{progress.backend}] (#{progress.best_id})  "
        f"{progress.evals_per_min():.1f} evals/min  {failure_summary(progress.failures)}  "
        f"dup {progress.duplicates}  provisional {progress.provisional} (verifying {progress.verifying})"
    )
    if time_budget_s:
        line += f"  time {time.monotonic() - progress.started:.0f}/{time_budget_s:g} s"
    if getattr(progress, "llm", ""):
        line += f"  {progress.llm}"
    return line


class _Bars(Progress):
    """rich's Progress with the status text under its bars."""

    status: RenderableType = Text("")

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        yield self.status


class LiveDisplay:
    """Called by the controller with its Progress after each step; `close()` when the run stops.

    On a terminal: a bar of evaluations against `max_evals` and, with `time_budget_s` (this segment's
    seconds; 0: none), a bar of the time spent, then the status line (status_line). Otherwise the
    status line, printed at most every PLAIN_INTERVAL_S and once more on close."""

    def __init__(self, max_evals: int, time_budget_s: float = 0.0, console: Console | None = None) -> None:
        self.max_evals = max_evals
        self.time_budget_s = float(time_budget_s or 0.0)
        self.console = console if console is not None else make_console()
        self.tty = self.console.is_terminal
        self.last = 0.0
        self.unprinted: str | None = None  # the latest plain line not printed yet
        self._bars: _Bars | None = None
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, progress) -> None:
        line = status_line(progress, self.max_evals, self.time_budget_s)
        if not self.tty:
            now = time.monotonic()
            self.unprinted = line
            if now - self.last >= PLAIN_INTERVAL_S:
                self.last = now
                self._print_plain()
            return
        if self._bars is None:
            self._start()
        assert self._bars is not None
        self._bars.status = Text(line, style="dim")
        self._bars.update(self._tasks["evals"], completed=progress.evaluated,
                          amount=f"{progress.evaluated}/{self.max_evals} evals")  # fmt: skip
        if "time" in self._tasks:
            spent = min(time.monotonic() - progress.started, self.time_budget_s)
            self._bars.update(self._tasks["time"], completed=spent,
                              amount=f"{spent:.0f}/{self.time_budget_s:g} s")  # fmt: skip

    def _start(self) -> None:
        self._bars = _Bars(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[amount]}"),
            TimeElapsedColumn(), console=self.console, refresh_per_second=4,
        )  # fmt: skip
        self._tasks["evals"] = self._bars.add_task("evaluations", total=max(self.max_evals, 1), amount="")
        if self.time_budget_s:
            self._tasks["time"] = self._bars.add_task("time budget", total=self.time_budget_s, amount="")
        self._bars.start()

    def _print_plain(self) -> None:
        if self.unprinted is not None:
            print(self.unprinted, file=self.console.file, flush=True)
            self.unprinted = None

    def close(self) -> None:
        """Stop redrawing (the bars stay on screen as they ended); piped: print the last state."""
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
        elif not self.tty:
            self._print_plain()
