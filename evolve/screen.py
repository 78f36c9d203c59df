"""A GPU run's CPU screen: CPU actors judge each candidate's cheap checks before it takes a GPU.

`ScreenedPool(screen, gpus, backend)` has the pool interface the controller drives (submit, poll,
idle_slots, in_flight, size, judge, shutdown) over two `WorkerPool`s: `screen`, CPU actors
(`num_cpus=1`, placed wherever the cluster has CPUs: GPU-less nodes do this work), and `gpus`, one
actor per GPU (`num_gpus=1`). A job goes to the screen first with the CPU judge's cheap stage
(static rules, the offline compile for the task's target, the check shapes under the interpreter);
a candidate the screen finds wrong for good (SCREEN_FINAL) is recorded with that verdict and never
takes GPU time; every other one (ok, and what the CPU cannot settle: `unsupported`, `timeout`,
`judge_error`) goes on to a GPU actor with the job as submitted, whose verdict is the candidate's.

Backpressure: at most `hold` screened candidates wait for a GPU (default: one per GPU actor); while
that many wait, the screen takes no new job (idle_slots is 0), so proposals never run ahead of the
GPUs by more than the screen's slots plus `hold`. A screen that loses every actor (its nodes left) is
dropped, said once: the candidates it held, and every later one, go straight to the GPUs.
"""

from __future__ import annotations

import sys

from .pool import Job, PoolExhausted, WorkerPool
from .raytools import ready, require_ray

# Screen verdicts that are final: the candidate is wrong on any device (a static-rule violation, a
# compile error for the run's target, a wrong answer, a crash). `unsupported` (the interpreter cannot
# run it), `timeout` (the interpreter is slow) and `judge_error` are the CPU's limits: the GPU judges.
SCREEN_FINAL = ("rejected", "compile_error", "incorrect", "crashed")


def screen_options(options: dict) -> dict:
    """A job's options for the CPU screen: the CPU judge's cheap stage, the run's other settings."""
    return {**options, "device": "cpu", "stage": "provisional"}


class ScreenedPool:
    """CPU screen, then GPU (see the module docstring)."""

    def __init__(self, screen: WorkerPool, gpus: WorkerPool, backend: str, hold: int | None = None) -> None:
        self.screen: WorkerPool | None = screen  # None once it lost every actor
        self.gpus, self.backend = gpus, backend
        self.hold = max(1, hold if hold is not None else gpus.size)
        self.jobs: dict[int, Job] = {}  # candidate id -> its job as submitted (the GPU's), while screened
        self.passed: list[Job] = []  # screened, waiting for a GPU actor
        self.screened = {"final": 0, "passed": 0}  # counts, for the run's summary

    @property
    def size(self) -> int:
        return self.gpus.size

    def idle_slots(self) -> int:
        """Free screen slots while fewer than `hold` screened candidates wait for a GPU, else 0."""
        if self.screen is None:
            return max(0, self.gpus.idle_slots() - len(self.passed))
        return self.screen.idle_slots() if len(self.passed) < self.hold else 0

    def in_flight(self) -> int:
        screening = self.screen.in_flight() if self.screen is not None else 0
        return screening + len(self.passed) + self.gpus.in_flight()

    def submit(self, job: Job, attempt: int = 1) -> None:
        if self.screen is None:
            self.passed.append(job)
            self._feed_gpus()
            return
        self.jobs[job.candidate_id] = job
        screened = Job(job.candidate_id, job.source, job.task, screen_options(job.options))
        self.screen.submit(screened, attempt)

    def poll(self, timeout: float) -> list[tuple[int, dict]]:
        """Final verdicts as (candidate id, Evaluation dict): the GPU's, or the screen's when final;
        waits at most `timeout` s for either pool."""
        self._feed_gpus()
        refs = (self.screen.waiting_on() if self.screen is not None else []) + self.gpus.waiting_on()
        if refs and timeout > 0:
            ready(refs, timeout)  # wakes at the first result of either; each pool takes its own
        finished = []
        for cid, verdict in self._screened():
            job = self.jobs.pop(cid)
            if verdict.get("status") in SCREEN_FINAL:
                self.screened["final"] += 1
                finished.append((cid, self._final(verdict)))
            else:
                self.screened["passed"] += 1
                self.passed.append(job)
        finished += self.gpus.poll(0)
        self._feed_gpus()
        return finished

    def _screened(self) -> list[tuple[int, dict]]:
        """The screen's verdicts; [] when it has none, or lost its last actor (then it is dropped)."""
        if self.screen is None:
            return []
        try:
            return self.screen.poll(0)
        except PoolExhausted as e:
            print(f"note: the CPU screen has no worker left ({e}); candidates go straight to the GPUs",
                  file=sys.stderr)  # fmt: skip
            self.screen.shutdown()
            self.screen = None
            self.passed += list(self.jobs.values())  # unscreened: the GPUs judge them
            self.jobs.clear()
            return []

    def _feed_gpus(self) -> None:
        while self.passed and self.gpus.idle_slots():
            self.gpus.submit(self.passed.pop(0))

    def _final(self, verdict: dict) -> dict:
        """The screen's verdict as the run's: on the run's backend (so it counts there), saying where."""
        verdict = dict(verdict)
        verdict["feedback"] = f"found by the CPU screen, before any GPU time: {verdict.get('feedback', '')}"
        verdict["backend"] = self.backend
        verdict["provenance"] = {**(verdict.get("provenance") or {}), "screen": "cpu"}
        return verdict

    def judge(self, timeout: float = 600.0) -> str:
        """The GPU workers' judge; the screen's must be the same code (else its verdicts could not
        stand beside theirs): a mismatch is a UsageError."""
        from .config import UsageError

        gpu = self.gpus.judge(timeout)
        cpu = self.screen.judge(timeout) if self.screen is not None else gpu
        if gpu != cpu:
            raise UsageError(
                f"the CPU screen's workers run judge {cpu}, the GPU workers {gpu}: install the same "
                "triton-evolve on every node of the cluster"
            )
        return gpu

    def shutdown(self) -> None:
        if self.screen is not None:
            self.screen.shutdown()
        self.gpus.shutdown()


def with_screen(pool: WorkerPool, requested: int, device: str, gpu_workers: int, backend: str):
    """`pool` behind a CPU screen of `requested` actors (config run.screen_workers) on a GPU run, as
    many as the cluster's CPUs hold beside the GPU actors (one CPU each); `pool` itself when none is
    asked for, the run is on CPUs (every verdict is the CPU judge's there), or no CPU is left (said)."""
    if requested < 1:
        return pool
    if device != "cuda":
        print("note: run.screen_workers applies to GPU runs (a CPU run's judge is the screen): no screen")
        return pool
    spare = int(require_ray().cluster_resources().get("CPU", 0)) - gpu_workers
    workers = min(requested, spare)
    if workers < 1:
        print(f"note: no CPU left in the cluster beside the {gpu_workers} GPU evaluator(s): no CPU screen",
              file=sys.stderr)  # fmt: skip
        return pool
    if workers < requested:
        print(f"note: {requested} screen workers asked, the cluster has {spare} CPU(s) beside the GPU "
              f"evaluators: {workers}", file=sys.stderr)  # fmt: skip
    print(f"CPU screen: {workers} actor(s) judge each candidate's cheap checks before it takes a GPU")
    return ScreenedPool(WorkerPool(workers, use_gpus=False), pool, backend)
