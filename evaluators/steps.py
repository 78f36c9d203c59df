"""A time-budgeted list of steps: each failure is recorded and the rest still run.

Used by `evaluators/gpu_check.py`; nothing here knows about GPUs.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable, Sequence


class StepFailed(Exception):
    """A step's own verdict that it failed; the message is recorded as the step's detail."""


@dataclasses.dataclass(frozen=True)
class Step:
    """One unit of the check. `run(deadline)` returns a one-line summary or raises."""

    name: str
    run: Callable[[float], str]  # deadline on `clock`'s scale -> summary
    max_s: float  # the most this step is given
    min_s: float = 5.0  # skipped (not started) when less than this is left
    enabled: bool = True  # False: recorded "not run" with `why_not` (a dry run has no GPU)
    why_not: str = ""


@dataclasses.dataclass
class StepResult:
    name: str
    status: str  # "ok" | "failed" | "skipped" (time budget) | "not run" (by design)
    seconds: float
    detail: str


def run_steps(
    steps: Sequence[Step],
    budget_s: float,
    clock: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] = print,
    on_step: Callable[[list[StepResult]], None] = lambda results: None,
) -> list[StepResult]:
    """Run `steps` in order within `budget_s`; every failure is recorded, none stops the rest.

    Each step gets min(max_s, what is left) as its deadline; a step whose min_s no longer fits
    is skipped. An exception other than StepFailed is recorded with its traceback's tail.
    `on_step(results so far)` runs after each step that ran (to save partial output)."""
    start = clock()
    results = []
    for step in steps:
        if not step.enabled:
            results.append(StepResult(step.name, "not run", 0.0, step.why_not))
            continue
        now = clock()
        left = budget_s - (now - start)
        if left < step.min_s:
            why = f"time budget: {max(left, 0):.0f} s left of {budget_s:.0f} s, needs {step.min_s:.0f} s"
            results.append(StepResult(step.name, "skipped", 0.0, why))
            log(f"{step.name}: skipped ({why})")
            continue
        allowed = min(step.max_s, left)
        log(f"{step.name}: started ({allowed:.0f} s allowed)")
        try:
            status, detail = "ok", step.run(now + allowed)
        except StepFailed as e:
            status, detail = "failed", str(e)
        except Exception as e:  # noqa: BLE001 - a broken step must not stop the others
            tail = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-3:])
            status, detail = "failed", f"{type(e).__name__}: {e} | {' '.join(tail.split())[-600:]}"
        seconds = clock() - now
        if seconds > allowed + 1.0:
            detail += f" (overran its {allowed:.0f} s by {seconds - allowed:.0f} s)"
        results.append(StepResult(step.name, status, seconds, detail))
        log(f"{step.name}: {status} in {seconds:.1f} s: {detail}")
        on_step(list(results))
    return results


def exit_status(results: Sequence[StepResult]) -> int:
    """0 when every step that was meant to run passed; 1 if any failed or was skipped for time."""
    return 1 if any(r.status in ("failed", "skipped") for r in results) else 0
