"""The Ray worker pool: evaluator actors that judge candidates in parallel.

`ray.init()` starts an embedded local cluster unless an address is given (`auto` or
HOST:PORT joins an existing one). With GPUs there is one actor per GPU (`num_gpus=1`),
so timings never share a device; without, one actor per worker slot (`num_cpus=1`).
Each actor judges one candidate at a time. An actor that dies is replaced; its
candidate is tried once more and, if that also dies, recorded as `crashed`: never lost
and never counted twice.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import ray

MAX_ATTEMPTS = 2


@dataclasses.dataclass(frozen=True)
class Job:
    candidate_id: int
    source: str
    task: dict  # evaluators.Task.to_dict()
    options: dict  # evaluators.EvalOptions fields


@ray.remote
class EvaluatorActor:
    """Runs evaluators.evaluate in its own process; children it starts are sandboxed."""

    def evaluate(self, job: Job) -> dict:
        from evaluators import EvalOptions, Task, evaluate

        return evaluate(job.source, Task.from_dict(job.task), EvalOptions(**job.options)).to_dict()

    def pid(self) -> int:
        return os.getpid()


def start_ray(address: str | None, workers: int) -> None:
    """Join `address` or start a local cluster sized for `workers` evaluations at once."""
    if ray.is_initialized():
        return
    kwargs = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=max(workers, 1), **kwargs)


class WorkerPool:
    def __init__(self, workers: int, use_gpus: bool) -> None:
        self.use_gpus = use_gpus
        self.actors = [self._new_actor() for _ in range(workers)]
        self.busy: dict = {}  # ObjectRef -> (actor index, job, attempt)
        self.free = list(range(workers))

    def _new_actor(self):
        resources = {"num_gpus": 1, "num_cpus": 1} if self.use_gpus else {"num_cpus": 1}
        return EvaluatorActor.options(**resources, max_restarts=0).remote()

    @property
    def size(self) -> int:
        return len(self.actors)

    def idle_slots(self) -> int:
        return len(self.free)

    def in_flight(self) -> int:
        return len(self.busy)

    def submit(self, job: Job, attempt: int = 1) -> None:
        index = self.free.pop(0)
        ref = self.actors[index].evaluate.remote(job)
        self.busy[ref] = (index, job, attempt)

    def poll(self, timeout: float) -> list[tuple[int, dict]]:
        """Finished evaluations as (candidate id, Evaluation dict); waits at most `timeout` s."""
        if not self.busy:
            return []
        ready, _ = ray.wait(list(self.busy), num_returns=len(self.busy), timeout=timeout)
        finished = []
        for ref in ready:
            index, job, attempt = self.busy.pop(ref)
            try:
                finished.append((job.candidate_id, ray.get(ref)))
                self.free.append(index)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
                self.actors[index] = self._new_actor()  # replace the dead worker
                self.free.append(index)
                if attempt < MAX_ATTEMPTS:
                    self.submit(job, attempt + 1)
                else:
                    finished.append((job.candidate_id, _worker_died(job, e)))
        return finished

    def kill_worker(self, index: int) -> None:
        """Kill one actor process (tests use this to prove nothing is lost)."""
        ray.kill(self.actors[index], no_restart=True)

    def pids(self) -> list[int]:
        return ray.get([a.pid.remote() for a in self.actors])

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors, self.busy, self.free = [], {}, []


def _worker_died(job: Job, error: Exception) -> dict:
    return {
        "status": "crashed",
        "backend": None,  # the controller fills in its run's backend label
        "fitness": 0.0,
        "fitness_kind": "none",
        "feedback": f"the evaluator worker died {MAX_ATTEMPTS} times while judging this candidate "
        f"({type(error).__name__})",
        "shapes": [],
        "compile": [],
        "seconds": {},
        "provenance": {},
    }
