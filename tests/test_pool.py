"""The Ray worker pool on a real local cluster: a worker killed mid-job loses nothing."""

import dataclasses
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="needs ray (the worker pool), which is not installed here")

from evaluators import EvalOptions, Task  # noqa: E402 - after the importorskip of ray
from evolve.pool import MAX_ATTEMPTS, Job, WorkerPool, start_ray  # noqa: E402 - after the importorskip of ray

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
