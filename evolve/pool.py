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

On a cluster (`--ray-address`), actors are placed by resources only (`num_cpus=1`, or
`num_gpus=1`), never by node names; a job carries the candidate's source and the task as
plain data and its verdict comes back as a dict, so no node needs the driver's files (each
node has the package installed and its own caches; the store lives with the driver). Each
verdict's provenance says where it was judged (`node`: Ray node id, address, hostname) and,
when its first worker died judging it, on which try (`attempt`). A node that leaves takes its actors with it: each is replaced only
while the cluster's live nodes can hold one more (their CPUs, or GPUs), else its slot is
retired and its job waits for a free actor; an actor still starting that the cluster
cannot hold is retired too, so the pool never waits on an actor that cannot be placed. With
no actor left, `PoolExhausted` ends the run (what was in flight stays pending for --resume).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
import time

from evaluators import Evaluation

from .config import UsageError
from .raytools import RayMissing, ready, require_ray

MAX_ATTEMPTS = 2
CAPACITY_CHECK_S = 2.0  # how often actors still starting are held against what the cluster's nodes hold


class PoolExhausted(UsageError):
    """No evaluator actor is left and the cluster cannot hold a new one; the message says the fix."""


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
            result = evaluate(job.source, Task.from_dict(job.task), EvalOptions(**job.options)).to_dict()
        except Exception as e:  # noqa: BLE001 - e.g. an environment this worker cannot judge in
            result = _verdict(
                "judge_error", f"the evaluator worker could not judge ({type(e).__name__}: {str(e)[:500]})"
            )
        # where it was judged (a memoised verdict's provenance may name another node: this one answered)
        result.setdefault("provenance", {})["node"] = self.node()
        return result

    def node(self) -> dict:
        """The node this worker runs on: {"id": Ray node id (hex), "address": its IP, "hostname"}."""
        ray = require_ray()
        return {
            "id": ray.get_runtime_context().get_node_id(),
            "address": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname(),
        }

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

    def backend(self, task: dict, options: dict) -> str:
        """The backend label this worker's verdicts carry for (task, options): on a GPU run, its GPU's
        name (`cuda:NVIDIA H200`), which the driver, maybe without a GPU, cannot know."""
        from evaluators import EvalOptions, Task, backend_label

        return backend_label(Task.from_dict(task), EvalOptions(**options))

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
        # "local": a new embedded cluster, never the last `ray start` cluster on this machine (which
        # ray.init() would join, refusing num_cpus, or judging on someone else's nodes)
        ray.init(address="local", num_cpus=max(workers, 1), **kwargs)


class WorkerPool:
    def __init__(self, workers: int, use_gpus: bool, actor: type = EvaluatorActor) -> None:
        """``workers`` actors; with ``use_gpus`` the caller has capped it (``gpu_workers``), and a
        request for more actors than the cluster has GPUs is refused here, never left waiting; CPU
        actors beyond what the cluster's nodes hold (a joined cluster smaller than ``workers``) are not
        started (said on stderr). ``actor``: the class each actor runs (an EvaluatorActor; tests pass a
        subclass that fails)."""
        ray = require_ray()
        self.actor = actor
        self.use_gpus = use_gpus
        if use_gpus:
            gpus = int(ray.cluster_resources().get("GPU", 0))
            if workers > gpus:
                raise RayMissing(f"{workers} GPU workers but the cluster has {gpus} GPU(s); one per GPU")
        else:
            capacity = self._capacity()
            if capacity < 1:
                raise PoolExhausted(_no_room(0, "CPU"))
            if workers > capacity:
                print(f"note: {workers} workers requested, the Ray cluster's nodes hold {capacity} evaluator(s) "
                      f"(one CPU each): {capacity} worker(s)", file=sys.stderr)  # fmt: skip
                workers = capacity
        self.starting: dict = {}  # warm-up ObjectRef -> slot: actors not yet known to be placed and warm
        self.checked = time.monotonic()  # when the actors starting were last held against the cluster
        self.actors: list = [self._new_actor(i) for i in range(workers)]  # by slot; None: retired
        self.busy: dict = {}  # ObjectRef -> (slot, job, attempt)
        # (job, attempt) whose worker is gone, for the next free slot (before any new job)
        self.backlog: list[tuple[Job, int]] = []
        self.free = list(range(workers))

    def _new_actor(self, slot: int):
        resources = {"num_gpus": 1, "num_cpus": 1} if self.use_gpus else {"num_cpus": 1}
        actor = _actor_class(self.actor).options(**resources, max_restarts=0).remote()
        self.starting[actor.warm_up.remote(self.use_gpus)] = slot  # runs before its first job
        return actor

    def _capacity(self) -> int:
        """Evaluator actors the cluster's live nodes can hold: per node, its CPUs (GPU actors: the
        fewer of its GPUs and CPUs, each takes one of both), by resources, whatever the nodes' names."""
        total = 0
        for node in require_ray().nodes():
            if node.get("Alive"):
                res = node.get("Resources") or {}
                total += int(
                    min(res.get("GPU", 0), res.get("CPU", 0)) if self.use_gpus else res.get("CPU", 0)
                )
        return total

    def wait_ready(self, timeout: float = 600.0) -> None:
        """Block until every actor has warmed up (benchmarks start their clocks after this)."""
        ray = require_ray()
        ray.wait(list(self.starting), num_returns=len(self.starting), timeout=timeout)
        for ref in ready(self.starting, 0):
            del self.starting[ref]

    def judge(self, timeout: float = 600.0) -> str:
        """The judge the workers run (their fingerprint, evaluators/fingerprint.py): the run's judge,
        since it is theirs that judges. Several (the code changed while they started): the most
        common, said on stderr. Waits for their warm-up."""
        ray = require_ray()
        answers = ray.get([actor.judge.remote() for actor in self._live()], timeout=timeout)
        judge = max(sorted(set(answers)), key=answers.count)
        if len(set(answers)) > 1:
            print(f"warning: the workers run different judges ({', '.join(sorted(set(answers)))}): "
                  f"evaluators/ changed while they started; the run's judge is {judge}", file=sys.stderr)  # fmt: skip
        return judge

    def backends(self, task: dict, options: dict, timeout: float = 600.0) -> list[str]:
        """Each live worker's backend label for (task, options) (`EvaluatorActor.backend`)."""
        return require_ray().get([a.backend.remote(task, options) for a in self._live()], timeout=timeout)

    def _live(self) -> list:
        return [a for a in self.actors if a is not None]

    @property
    def size(self) -> int:
        return len(self._live())

    def idle_slots(self) -> int:
        return max(0, len(self.free) - len(self.backlog))

    def in_flight(self) -> int:
        """Jobs submitted and not finished: judging, queued on an actor, or waiting for a new one."""
        return len(self.busy) + len(self.backlog)

    def waiting_on(self) -> list:
        """The object refs `poll` waits on (jobs judging, actors starting): for a caller that waits on
        several pools at once."""
        return [*self.busy, *self.starting]

    def submit(self, job: Job, attempt: int = 1) -> None:
        slot = self.free.pop(0)
        ref = self.actors[slot].evaluate.remote(job)
        self.busy[ref] = (slot, job, attempt)

    def poll(self, timeout: float) -> list[tuple[int, dict]]:
        """Finished evaluations as (candidate id, Evaluation dict); waits at most `timeout` s.
        PoolExhausted when no actor is left and the cluster cannot hold one."""
        if not self.busy and not self.starting:
            return []
        ray = require_ray()
        finished = []
        for ref in ready(self.waiting_on(), timeout):
            if ref in self.starting:  # warm: placed (or died starting, which its job will say)
                del self.starting[ref]
                continue
            if ref not in self.busy:  # its slot was retired in this loop, its job put back
                continue
            slot, job, attempt = self.busy.pop(ref)
            try:
                result = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
                again = "judged once more" if attempt < MAX_ATTEMPTS else "recorded crashed"
                print(f"note: the evaluator worker judging candidate {job.candidate_id} died "
                      f"({type(e).__name__}); {again}", file=sys.stderr)  # fmt: skip
                self._replace(slot)  # the dead worker (its process, or its node): a new one if it fits
                if attempt < MAX_ATTEMPTS:
                    self.backlog.append((job, attempt + 1))
                else:
                    finished.append((job.candidate_id, _worker_died(job, e)))
                continue
            except Exception as e:  # noqa: BLE001 - whatever Ray raises, it is this job's verdict
                if not isinstance(e, ray.exceptions.RayTaskError):  # the actor itself may be broken
                    self._replace(slot)
                else:
                    self.free.append(slot)
                finished.append((job.candidate_id, _job_failed(e)))
                continue
            self.free.append(slot)
            verdict = well_formed(result)
            if attempt > 1:  # its first worker died judging it: said in its provenance
                verdict["provenance"]["attempt"] = attempt
            finished.append((job.candidate_id, verdict))
        self._hold_starting_to_capacity()
        while self.backlog and self.free:
            self.submit(*self.backlog.pop(0))
        return finished

    def _replace(self, slot: int) -> None:
        """A new actor in `slot` when the cluster's live nodes can hold one more, else retire the slot."""
        others = sum(1 for i, a in enumerate(self.actors) if a is not None and i != slot)
        if others < self._capacity():
            self.actors[slot] = self._new_actor(slot)
            self.free.append(slot)
        else:
            self._retire(slot, f"the cluster's live nodes hold {others} evaluator(s) and no more")

    def _hold_starting_to_capacity(self) -> None:
        """Retire actors still starting beyond what the cluster's live nodes hold (e.g. a replacement
        placed as its node left): Ray would keep them pending for ever, and their jobs with them."""
        if not self.starting or time.monotonic() - self.checked < CAPACITY_CHECK_S:
            return
        self.checked = time.monotonic()
        capacity = self._capacity()
        excess = self.size - capacity
        for slot in sorted(set(self.starting.values()), reverse=True)[: max(0, excess)]:
            self._retire(
                slot, f"it could not be placed: the cluster's live nodes hold {capacity} evaluator(s)"
            )

    def _retire(self, slot: int, why: str) -> None:
        """Stop using `slot`: its jobs wait for another actor (not their fault: the same attempt)."""
        actor, self.actors[slot] = self.actors[slot], None
        if slot in self.free:
            self.free.remove(slot)
        for ref, (i, job, attempt) in list(self.busy.items()):
            if i == slot:
                del self.busy[ref]
                self.backlog.append((job, attempt))
        for ref, i in list(self.starting.items()):
            if i == slot:
                del self.starting[ref]
        if actor is not None:
            require_ray().kill(actor, no_restart=True)
        print(f"note: an evaluator was lost and not replaced ({why}); {self.size} evaluator(s) go on",
              file=sys.stderr)  # fmt: skip
        if not self.size:
            raise PoolExhausted(_no_room(self.in_flight(), "GPU" if self.use_gpus else "CPU"))

    def kill_worker(self, index: int) -> None:
        """Kill one actor process (tests use this to prove nothing is lost)."""
        require_ray().kill(self.actors[index], no_restart=True)

    def pids(self) -> list[int]:
        return require_ray().get([a.pid.remote() for a in self._live()])

    def shutdown(self) -> None:
        ray = require_ray()
        for actor in self._live():
            ray.kill(actor, no_restart=True)
        self.actors, self.busy, self.free, self.backlog, self.starting = [], {}, [], [], {}


def _no_room(in_flight: int, kind: str) -> str:
    return (
        f"no evaluator can run: the Ray cluster's live nodes have no {kind} for one (each needs one); "
        f"the {in_flight} candidate(s) in flight stay pending: add a node with a {kind} and resume with "
        "`evolve run --resume runs/<name> --ray-address ...`"
    )


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
    verdict = _verdict(
        "crashed",
        f"the evaluator worker died {MAX_ATTEMPTS} times while judging this candidate ({type(error).__name__})",
    )
    verdict["provenance"]["attempt"] = MAX_ATTEMPTS
    return verdict


def _verdict(status: str, feedback: str) -> dict:
    # backend None: the controller fills in its run's backend label
    return Evaluation(status=status, backend=None, feedback=feedback).to_dict()  # type: ignore[arg-type]
