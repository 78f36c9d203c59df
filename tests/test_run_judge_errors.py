"""A bug in the judge is one candidate's judge_error, never the end of a run (issue 9, item 2).

Real components: a local Ray cluster, the evaluator actors running the real judge (with a
bug injected into its performance model for one candidate, in the actor's own process),
the offline mutator, the controller and the SQLite store. The run goes on to its budget, and
a resumed run does not queue the failed candidate again.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="needs ray (the worker pool), which is not installed here")

from evaluators import backend_label, load_task  # noqa: E402 - after the importorskip of ray
from evolve.config import RunConfig  # noqa: E402
from evolve.controller import Controller  # noqa: E402
from evolve.pool import EvaluatorActor, Job, WorkerPool, start_ray  # noqa: E402
from evolve.population import PopulationConfig  # noqa: E402
from evolve.runner import eval_options, make_proposers, rebuild_population  # noqa: E402
from evolve.store import Store  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "kernels" / "seeds" / "tiled_matmul.py"
BROKEN_ID = 2  # the first proposal after the seed
TASK = """
[task]
name = "tiny"
dtype = "fp16"
layouts = ["nn"]
trials = 1
[shapes]
train = [[1024, 1024, 1024]]
check = [[32, 40, 48]]
"""


class JudgeBugActor(EvaluatorActor):
    """The real actor and judge; for candidate BROKEN_ID the performance model raises inside
    evaluate(), as the empty-grid ZeroDivisionError of issue 9 did."""

    def evaluate(self, job: Job) -> dict:
        from evaluators.model import perf_model

        real = perf_model.estimate_shape

        def broken(*args, **kwargs):
            raise ZeroDivisionError("injected: integer division or modulo by zero")

        if job.candidate_id == BROKEN_ID:
            perf_model.estimate_shape = broken
        try:
            return super().evaluate(job)
        finally:
            perf_model.estimate_shape = real


class RecordingPool(WorkerPool):
    """The real pool, noting every candidate handed to it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.submitted: list[int] = []

    def submit(self, job: Job, attempt: int = 1) -> None:
        self.submitted.append(job.candidate_id)
        super().submit(job, attempt)


@pytest.fixture(scope="module")
def cluster():
    start_ray(None, 2)
    yield
    ray.shutdown()


def _controller(config: RunConfig, store: Store, pool) -> Controller:
    task = load_task(config.task)
    # memo off: a verdict remembered from an earlier test run would skip the broken model
    options = {**dataclasses.asdict(eval_options(config, "cpu")), "memo": False}
    backend = backend_label(task, eval_options(config, "cpu"))
    population = rebuild_population(config, store, backend)
    return Controller(config, task, store, population, make_proposers(config)[0], pool, options, backend)


@pytest.mark.slow  # a whole run and its resume on a Ray cluster: `make test-slow`, which CI runs too
def test_judge_bug_is_a_verdict_the_run_finishes_and_resume_skips_it(cluster, tmp_path):
    (tmp_path / "tiny.toml").write_text(TASK)
    config = RunConfig(name="j", task=str(tmp_path / "tiny.toml"), seeds=(str(SEED),), seed=3, max_evals=4,
                       workers=2, timeout_s=120, population=PopulationConfig(islands=1))  # fmt: skip
    store = Store.create(tmp_path / "run.sqlite", "j", config.to_dict(), config.seed)
    pool = RecordingPool(2, use_gpus=False, actor=JudgeBugActor)
    try:
        controller = _controller(config, store, pool)
        assert controller.run() == "max_evals 4 reached"  # the judge's bug did not end the run
        assert store.evaluated_count() == 4 and store.pending_ids() == []
        (broken,) = [r for r in store.all_evaluated() if r["id"] == BROKEN_ID]
        assert broken["status"] == "judge_error" and broken["backend"] == "model:h100"
        assert "ZeroDivisionError" in broken["feedback"], broken["feedback"]
        assert controller.progress.failures.get("judge_error") == 1
        assert pool.submitted.count(BROKEN_ID) == 1

        # resume: the judge_error verdict stands (only `evolve remeasure` judges it again)
        pool.submitted.clear()
        resumed = _controller(config.replace(max_evals=6), store, pool)
        assert resumed.run() == "max_evals 6 reached"
        assert BROKEN_ID not in pool.submitted and len(set(pool.submitted)) == 2  # (a verification resubmits)
        statuses = [e["status"] for e in store.candidate(BROKEN_ID)["evaluations"]]
        assert statuses == ["judge_error"] and store.pending_ids() == []
    finally:
        pool.shutdown()
        store.close()
