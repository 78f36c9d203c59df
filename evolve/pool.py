"""The Ray worker pool: evaluator actors that judge candidates in parallel.

`ray.init()` starts an embedded local cluster unless an address is given (`auto` or
HOST:PORT joins an existing one). With GPUs there is one actor per GPU (`num_gpus=1`),
so timings never share a device: `gpu_workers` caps the count at the cluster's GPUs
whatever `workers` asks (an actor beyond them would never be scheduled and the run
would wait forever); without, one actor per worker slot (`num_cpus=1`).

Ray is imported only when a pool is started (`require_ray`, evolve/raytools.py), so the rest of `evolve`
(and all of `evaluators`) imports where ray is not installed, e.g. the GPU image.
Each actor judges one candidate at a time. An actor that dies is replaced; its
candidate is tried once more and, if that also dies, recorded as `crashed`: never lost
and never counted twice. Any other failure of a job (an exception out of the actor, an
error from Ray, a result that is not a well-formed Evaluation) is that candidate's
`judge_error` verdict: no candidate can stop a run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

from evaluators import Evaluation

from .raytools import RayMissing, ready, require_ray

MAX_ATTEMPTS = 2


def gpu_workers(requested: int, gpus: int) -> tuple[int, str | None]:
    """Evaluator actors on a GPU run: one per GPU whatever was requested; a note when capped."""
    if gpus < 1:
        raise RayMissing("--device cuda, but the Ray cluster reports no GPU; use --device cpu")
    if requested == gpus:
        return gpus, None
    return gpus, (
        f"{requested} workers requested, {gpus} GPU(s) in the cluster: one evaluator per GPU "
        f"(num_gpus=1, timings never share a device), so {gpus} worker(s)"
    )


@dataclasses.dataclass(frozen=True)
class Job:
    candidate_id: int
    source: str
    task: dict  # evaluators.Task.to_dict()
    options: dict  # evaluators.EvalOptions fields


class EvaluatorActor:
    """Runs evaluators.evaluate in its own process; children it starts are sandboxed.
    Made a Ray actor class by `_actor_class()` (ray is imported only then)."""

    def evaluate(self, job: Job) -> dict:
        """The Evaluation as a dict; never raises (an exception here would end the controller)."""
        from evaluators import EvalOptions, Task, evaluate

        try:
            return evaluate(job.source, Task.from_dict(job.task), EvalOptions(**job.options)).to_dict()
        except Exception as e:  # noqa: BLE001 - e.g. an environment this worker cannot judge in
            return _verdict(
                "judge_error", f"the evaluator worker could not judge ({type(e).__name__}: {str(e)[:500]})"
            )

    def warm_up(self, use_gpus: bool) -> float:
        """Start the judge's fork servers now (CPU), so the first candidate does not wait for them;
        seconds spent. A failure is left for `evaluate` to report as a verdict."""
        self.judge()  # fingerprinted now, as this worker loads the judge (evaluators/fingerprint.py)
        if use_gpus:
            return 0.0
        from evaluators import sandbox

        try:
            return sandbox.start_servers()
        except Exception:  # noqa: BLE001 - the first evaluate() says what went wrong, as a judge_error
            return 0.0

    def judge(self) -> str:
        """The fingerprint of the judge this worker runs (cached for its life)."""
        from evaluators.fingerprint import judge_fingerprint

        return judge_fingerprint()

    def pid(self) -> int:
        return os.getpid()


_ACTORS: dict[type, object] = {}


def _actor_class(cls: type = EvaluatorActor):
    """`cls` as a Ray actor class (made once per class)."""
    if cls not in _ACTORS:
        _ACTORS[cls] = require_ray().remote(cls)
    return _ACTORS[cls]


def start_ray(address: str | None, workers: int) -> None:
    """Join `address` or start a local cluster sized for `workers` evaluations at once."""
    ray = require_ray()
    if ray.is_initialized():
        return
    kwargs = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=max(workers, 1), **kwargs)


class WorkerPool:
    def __init__(self, workers: int, use_gpus: bool, actor: type = EvaluatorActor) -> None:
        """``workers`` actors; with ``use_gpus`` the caller has capped it (``gpu_workers``), and a
        request for more actors than the cluster has GPUs is refused here, never left waiting.
        ``actor``: the class each actor runs (an EvaluatorActor; tests pass a subclass that fails)."""
        ray = require_ray()
        self.actor = actor
        if use_gpus:
            gpus = int(ray.cluster_resources().get("GPU", 0))
            if workers > gpus:
                raise RayMissing(f"{workers} GPU workers but the cluster has {gpus} GPU(s); one per GPU")
        self.use_gpus = use_gpus
        self.warming: list = []  # warm-up calls not yet waited for
        self.actors = [self._new_actor() for _ in range(workers)]
        self.busy: dict = {}  # ObjectRef -> (actor index, job, attempt)
        self.free = list(range(workers))

    def _new_actor(self):
        resources = {"num_gpus": 1, "num_cpus": 1} if self.use_gpus else {"num_cpus": 1}
        actor = _actor_class(self.actor).options(**resources, max_restarts=0).remote()
        self.warming.append(actor.warm_up.remote(self.use_gpus))  # runs before its first job
        return actor

    def wait_ready(self, timeout: float = 600.0) -> None:
        """Block until every actor has warmed up (benchmarks start their clocks after this)."""
        ray = require_ray()
        ray.wait(self.warming, num_returns=len(self.warming), timeout=timeout)
        self.warming = []

    def judge(self, timeout: float = 600.0) -> str:
        """The judge the workers run (their fingerprint, evaluators/fingerprint.py): the run's judge,
        since it is theirs that judges. Several (the code changed while they started): the most
        common, said on stderr. Waits for their warm-up."""
        ray = require_ray()
        answers = ray.get([actor.judge.remote() for actor in self.actors], timeout=timeout)
        judge = max(sorted(set(answers)), key=answers.count)
        if len(set(answers)) > 1:
            print(f"warning: the workers run different judges ({', '.join(sorted(set(answers)))}): "
                  f"evaluators/ changed while they started; the run's judge is {judge}", file=sys.stderr)  # fmt: skip
        return judge

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
        ray = require_ray()
        finished = []
        for ref in ready(self.busy, timeout):
            index, job, attempt = self.busy.pop(ref)
            try:
                result = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
                self.actors[index] = self._new_actor()  # replace the dead worker
                self.free.append(index)
                if attempt < MAX_ATTEMPTS:
                    self.submit(job, attempt + 1)
                else:
                    finished.append((job.candidate_id, _worker_died(job, e)))
                continue
            except Exception as e:  # noqa: BLE001 - whatever Ray raises, it is this job's verdict
                if not isinstance(e, ray.exceptions.RayTaskError):  # the actor itself may be broken
                    self.actors[index] = self._new_actor()
                self.free.append(index)
                finished.append((job.candidate_id, _job_failed(e)))
                continue
            self.free.append(index)
            finished.append((job.candidate_id, well_formed(result)))
        return finished

    def kill_worker(self, index: int) -> None:
        """Kill one actor process (tests use this to prove nothing is lost)."""
        require_ray().kill(self.actors[index], no_restart=True)

    def pids(self) -> list[int]:
        return require_ray().get([a.pid.remote() for a in self.actors])

    def shutdown(self) -> None:
        ray = require_ray()
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors, self.busy, self.free = [], {}, []


def well_formed(result: object) -> dict:
    """`result` as a valid Evaluation dict (normalised by Evaluation: fitness 0 unless ok, ...),
    or a judge_error verdict naming what was wrong with it. Keeps a missing backend (None)."""
    try:
        if not isinstance(result, dict):
            raise TypeError(f"a {type(result).__name__}, not a dict")
        evaluation = Evaluation.from_dict(result)
        if not isinstance(evaluation.fitness, int | float) or isinstance(evaluation.fitness, bool):
            raise TypeError(f"fitness {evaluation.fitness!r} is not a number")
        return evaluation.to_dict()
    except Exception as e:  # noqa: BLE001 - any malformation is the judge's bug, never the run's end
        return _verdict(
            "judge_error", f"the evaluator returned a malformed verdict ({type(e).__name__}: {str(e)[:500]})"
        )


def _job_failed(error: Exception) -> dict:
    # A RayTaskError's str() holds the remote traceback; its last line names the error.
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return _verdict(
        "judge_error",
        f"the evaluator worker failed on this candidate ({type(error).__name__}: "
        f"{lines[-1][:500] if lines else ''}); the judge's bug, not the kernel's",
    )


def _worker_died(job: Job, error: Exception) -> dict:
    return _verdict(
        "crashed",
        f"the evaluator worker died {MAX_ATTEMPTS} times while judging this candidate ({type(error).__name__})",
    )


def _verdict(status: str, feedback: str) -> dict:
    # backend None: the controller fills in its run's backend label
    return Evaluation(status=status, backend=None, feedback=feedback).to_dict()  # type: ignore[arg-type]
