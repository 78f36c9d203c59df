"""Run throughput on the demo task: candidates per minute with 1 and with 2 workers.

Slow (minutes): run with `make bench`. The controller, the Ray pool, the store and the
evaluator are all real; the figure excludes Ray's start-up and the workers' warm-up (their
fork servers, once per run), and counts every candidate judged (any status), from the first
submission to the last result. Each run has its own seed and the verdict memo off, so neither
reuses the other's verdicts (compiles of the seed kernel are shared: it is judged first in both).
"""

import dataclasses
import time

import pytest

ray = pytest.importorskip("ray", reason="needs ray (the worker pool), which is not installed here")

from evaluators import backend_label, load_task  # noqa: E402 - after the importorskip of ray
from evolve.config import load_run_config  # noqa: E402 - after the importorskip of ray
from evolve.controller import Controller  # noqa: E402 - after the importorskip of ray
from evolve.pool import WorkerPool, start_ray  # noqa: E402 - after the importorskip of ray
from evolve.population import Population  # noqa: E402 - after the importorskip of ray
from evolve.runner import eval_options, make_proposers  # noqa: E402 - after the importorskip of ray
from evolve.store import Store  # noqa: E402 - after the importorskip of ray

EVALS = 20
RATES: dict[int, float] = {}


@pytest.fixture(scope="module")
def cluster():
    start_ray(None, 2)
    yield
    ray.shutdown()


def _run(tmp_path, workers: int) -> float:
    # A seed of its own per run, and no verdict memo: no run may reuse the other's verdicts.
    config = load_run_config("runs/demo.toml").replace(max_evals=EVALS, workers=workers, seed=100 + workers)
    config = dataclasses.replace(config, time_budget_s=0.0)
    task = load_task(config.task)
    options = dataclasses.replace(eval_options(config, "cpu"), memo=False)
    store = Store.create(
        tmp_path / f"w{workers}" / "run.sqlite", f"w{workers}", config.to_dict(), config.seed
    )
    pool = WorkerPool(workers, use_gpus=False)
    controller = Controller(config, task, store, Population(config.population), make_proposers(config)[0], pool,
                            dataclasses.asdict(options), backend_label(task, options))  # fmt: skip
    pool.wait_ready()  # steady state: the workers' fork servers are up before the clock starts
    start = time.monotonic()
    controller.run()
    minutes = (time.monotonic() - start) / 60
    pool.shutdown()
    assert store.evaluated_count() == EVALS
    store.close()
    return EVALS / minutes


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_throughput(benchmark, cluster, tmp_path, workers):
    rate = benchmark.pedantic(_run, args=(tmp_path, workers), rounds=1, iterations=1)
    RATES[workers] = rate
    benchmark.extra_info["candidates_per_min"] = round(rate, 2)
    print(f"\n{workers} worker(s): {rate:.2f} candidates/min")
    if len(RATES) == 2:  # the ratio is kept with the second run's figures, so a saved run compares it
        benchmark.extra_info["ratio_2_over_1_workers"] = round(RATES[2] / RATES[1], 3)
        print(f"2 workers / 1 worker: {RATES[2] / RATES[1]:.2f}x")
