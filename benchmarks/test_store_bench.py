"""What the run store costs at 100k evaluated candidates (shared/DESIGN.md, "Store", "Scale").

Run with `make bench`. Two figures, on a store already holding 100k candidates, each with a
realistic Evaluation (3 shapes, provenance) and a ~1 KB source:
- insert: one candidate plus its evaluation, each committed, as the controller does after
  every finished evaluation (target < 5 ms);
- top-k: `top(10)` with the default backend, as the leaderboard asks (target < 50 ms).
The 100k rows are built once per module, through the public API in `store.transaction()`s.
"""

import itertools
import time

import pytest

from evaluators.evaluation import Evaluation, ShapeResult
from evolve.store import Store

N = 100_000
N_SMOKE = 2_000  # under --benchmark-disable
BACKEND = "cuda:NVIDIA H100 80GB HBM3"
STATUSES = ("ok",) * 6 + ("incorrect", "compile_error", "timeout", "rejected")
# A comment body makes the source kernel-sized while keeping the tokenizer (normalised hash) cheap.
BODY = "# " + "tiled matmul with a grouped launch order and a masked K loop; " * 16 + "\n"
_counter = itertools.count(N)


def _source(i: int) -> str:
    return f"{BODY}import triton\n\n\ndef kernel():\n    return {i}\n"


def _fitness(i: int) -> float:
    return 0.5 + (i * 7919 % 10_007) / 5_000 if STATUSES[i % len(STATUSES)] == "ok" else 0.0


def _evaluation(i: int) -> dict:
    status, fitness = STATUSES[i % len(STATUSES)], _fitness(i)
    shapes = [
        ShapeResult(shape=s, max_abs_err=1e-3, max_scaled_err=1e-5, tolerance=1e-3, time_s=1e-4,
                    time_iqr_s=1e-6, torch_time_s=1.1e-4, tflops=500.0, speedup=1.1)
        for s in ((4096, 4096, 4096), (8192, 8192, 1024), (1024, 8192, 8192))
    ]  # fmt: skip
    return Evaluation(
        status, BACKEND, fitness, "measured", feedback="" if status == "ok" else "shape 4096x4096x4096: wrong",
        shapes=shapes, compile=[{"kernel": "matmul", "n_regs": 168, "spills": 0, "shared": 98304}],
        seconds={"compile": 1.2, "check": 0.4, "bench": 2.5},
        provenance={"torch": "2.5.1", "triton": "3.2.0", "driver": "550.54", "gpu": "H100", "package": "0.1.0"},
    ).to_dict()  # fmt: skip


@pytest.fixture(scope="module")
def big_store(request, tmp_path_factory):
    # Under --benchmark-disable (`make test`) nothing is timed: a smaller store checks the code
    # path in a few seconds; the 100k-row build (about a minute here) is for `make bench` only.
    config = request.config
    disabled = config.getoption("benchmark_disable") and not config.getoption("benchmark_enable")
    n = N_SMOKE if disabled else N
    path = tmp_path_factory.mktemp("store-bench") / "run.sqlite"
    start = time.perf_counter()
    with Store.create(path, "bench", {"task": "bench"}, seed=0) as store:
        evaluation = {i: _evaluation(i) for i in range(len(STATUSES) * 10)}
        for chunk in range(0, n, 10_000):
            with store.transaction():
                for i in range(chunk, min(chunk + 10_000, n)):
                    cid = store.add_candidate(_source(i), parent_ids=[max(i - 1, 1)], proposer="mutator",
                                              island=i % 8, generation=i // 64, niche=[i % 4, i % 3])  # fmt: skip
                    store.add_evaluation(cid, {**evaluation[i % len(evaluation)], "fitness": _fitness(i)})
        print(f"\nbuilt {n} candidates + evaluations in {time.perf_counter() - start:.1f} s")
        assert store.evaluated_count() == n
        yield store


def test_insert_one_candidate_and_evaluation(benchmark, big_store):
    evaluation = _evaluation(1)

    def insert(source):
        cid = big_store.add_candidate(source, parent_ids=[1], proposer="mutator", island=3, generation=2000,
                                      niche=[1, 2], pending=True)  # fmt: skip
        big_store.add_evaluation(cid, evaluation)
        return cid

    cid = benchmark.pedantic(insert, setup=lambda: ((_source(next(_counter)),), {}), rounds=50, iterations=1)
    assert big_store.candidate(cid)["evaluations"][0]["status"] == "ok"
    assert not big_store.pending_ids()


def test_top_10_at_100k(benchmark, big_store):
    rows = benchmark.pedantic(lambda: big_store.top(10), rounds=50, iterations=1, warmup_rounds=2)
    assert len(rows) == 10 and rows[0]["backend"] == BACKEND
    assert [r["fitness"] for r in rows] == sorted((r["fitness"] for r in rows), reverse=True)
    assert len(rows[0]["shapes"]) == 3
