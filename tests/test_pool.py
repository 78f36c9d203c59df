"""The Ray worker pool on a real local cluster: a worker killed mid-job loses nothing."""

import dataclasses
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="needs ray (the worker pool), which is not installed here")

from evaluators import EvalOptions, Evaluation, Task  # noqa: E402 - after the importorskip of ray
from evolve.pool import (  # noqa: E402 - after the importorskip of ray
    MAX_ATTEMPTS,
    EvaluatorActor,
    Job,
    WorkerPool,
    start_ray,
    well_formed,
)

# The failing actors below are defined here; Ray's workers cannot import this test module by
# name, so its classes travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SEED = (Path(__file__).resolve().parents[1] / "kernels" / "seeds" / "tiled_matmul.py").read_text()
TINY = Task(name="tiny", dtype="fp16", layouts=("nn",), train=((1024, 1024, 1024),), held_out=(),
            check=((32, 40, 48),), trials=1)  # fmt: skip


@pytest.fixture(scope="module")
def cluster():
    start_ray(None, 2)
    yield
    ray.shutdown()


def _job(cid: int) -> Job:
    return Job(
        cid, SEED + f"\n# variant {cid}\n", TINY.to_dict(), dataclasses.asdict(EvalOptions(timeout_s=120))
    )


def _collect(pool, n, timeout=300):
    results, deadline = [], time.monotonic() + timeout
    while len(results) < n and time.monotonic() < deadline:
        results += pool.poll(0.5)
    return results


def test_killed_worker_is_replaced_and_its_job_requeued(cluster):
    pool = WorkerPool(2, use_gpus=False)
    try:
        pids = pool.pids()
        assert len(set(pids)) == 2  # two actor processes
        pool.submit(_job(1))
        pool.submit(_job(2))
        pool.kill_worker(0)  # mid-job
        results = _collect(pool, 2)
        ids = sorted(cid for cid, _ in results)
        assert ids == [1, 2], "each candidate finished exactly once"
        assert all(ev["status"] == "ok" for _, ev in results), [ev["feedback"] for _, ev in results]
        assert pool.in_flight() == 0 and pool.idle_slots() == 2
        assert pool.pids()[0] not in pids  # a new process took the dead worker's place
    finally:
        pool.shutdown()


def test_job_whose_worker_dies_every_time_is_recorded_crashed(cluster):
    pool = WorkerPool(1, use_gpus=False)
    try:
        pool.submit(_job(3))
        results = []
        for _ in range(MAX_ATTEMPTS):
            actor = pool.actors[0]
            pool.kill_worker(0)
            deadline = time.monotonic() + 120
            while not results and pool.actors[0] is actor and time.monotonic() < deadline:
                results += pool.poll(0.5)
        ((cid, ev),) = results
        assert cid == 3 and ev["status"] == "crashed" and "worker died" in ev["feedback"]
        assert ev["backend"] is None  # the controller labels it with its run's backend
    finally:
        pool.shutdown()


GOOD = Evaluation("ok", "model:h100", 0.5, "modelled").to_dict()


class MalformedActor(EvaluatorActor):
    """Answers without judging; what it answers depends on the candidate id."""

    def evaluate(self, job: Job):
        return {
            1: "not a dict",
            2: {"status": "great", "backend": "model:h100"},
            3: {**GOOD, "fitness": "fast"},
            4: {**GOOD, "unknown_field": 1},
        }.get(job.candidate_id, GOOD)


class RaisingActor(EvaluatorActor):
    """evaluate() escapes with an exception for odd ids (what the real actor's guard prevents)."""

    def evaluate(self, job: Job):
        if job.candidate_id % 2:
            raise RuntimeError(f"injected failure judging {job.candidate_id}")
        return GOOD


class JudgeBugActor(EvaluatorActor):
    """The real judge with a bug injected into its performance model, in the actor's process."""

    def evaluate(self, job: Job):
        from evaluators.model import perf_model

        def broken(*args, **kwargs):
            raise ZeroDivisionError("injected: division by zero in the model")

        perf_model.estimate_shape = broken
        return super().evaluate(job)


def test_malformed_verdicts_are_judge_errors(cluster):
    pool = WorkerPool(1, use_gpus=False, actor=MalformedActor)
    try:
        for cid in (1, 2, 3, 4, 5):
            pool.submit(Job(cid, "x", TINY.to_dict(), {}))
            ((done, ev),) = _collect(pool, 1, timeout=120)
            assert done == cid
            if cid == 5:
                assert ev == GOOD
            else:
                assert ev["status"] == "judge_error" and "malformed verdict" in ev["feedback"], ev
                assert ev["fitness"] == 0.0 and ev["backend"] is None
        assert pool.idle_slots() == 1
    finally:
        pool.shutdown()


def test_an_exception_out_of_the_actor_is_that_candidates_judge_error(cluster):
    pool = WorkerPool(1, use_gpus=False, actor=RaisingActor)
    try:
        pids = pool.pids()
        for cid in (1, 2):
            pool.submit(Job(cid, "x", TINY.to_dict(), {}))
            ((done, ev),) = _collect(pool, 1, timeout=120)
            assert done == cid
        assert ev == GOOD  # the worker judged on after the failure
        pool.submit(Job(3, "x", TINY.to_dict(), {}))
        ((_, failed),) = _collect(pool, 1, timeout=120)
        assert failed["status"] == "judge_error" and "injected failure judging 3" in failed["feedback"]
        assert "RayTaskError" in failed["feedback"] and "not the kernel's" in failed["feedback"]
        assert pool.pids() == pids  # a task error leaves the worker in place
    finally:
        pool.shutdown()


def test_a_bug_inside_the_real_judge_is_a_judge_error(cluster):
    pool = WorkerPool(1, use_gpus=False, actor=JudgeBugActor)
    try:
        job = _job(11)
        pool.submit(dataclasses.replace(job, options={**job.options, "memo": False}))
        ((cid, ev),) = _collect(pool, 1)
        assert cid == 11 and ev["status"] == "judge_error", ev["feedback"]
        assert "ZeroDivisionError" in ev["feedback"] and ev["backend"] == "model:h100"
    finally:
        pool.shutdown()


def test_well_formed_keeps_a_good_verdict_and_normalises_it():
    held = {**GOOD, "held_out": 0.25}
    assert well_formed(held) == held
    assert well_formed({**GOOD, "status": "unsupported"})["fitness"] == 0.0  # never ranked
    assert well_formed({**GOOD, "fitness": True})["status"] == "judge_error"
    assert well_formed(None)["status"] == "judge_error"
