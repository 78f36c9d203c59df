"""What the judge costs per candidate on a CPU, for runs/demo_cpu.toml (issue 8's targets).

Run with `make bench` (marked slow: out of `make test`). Figures, each printed and kept in
pytest-benchmark's extra_info:
- child ready: a forked child of a warm fork server, from request to its "ready" frame
  (target <= 0.2 s);
- new candidate: a kernel never seen, by the judge or by Triton's cache (a comment inside
  the kernel body changes its source): static + offline compile for sm_90 + interpreter
  checks, in steady state (fork servers warm, as in a run). Wall seconds, and CPU seconds
  of the sandboxed children from their rusage (targets: <= 4 s wall median, <= 6 CPU-s);
- two workers: two evaluator processes judging new candidates side by side; throughput
  against what the cores allow, 2 cores / (CPU-s per candidate) (target >= 85%);
- compile-cache hit: the same source again with the verdict memo off;
- already evaluated: the verdict memo returns the stored Evaluation.
"""

import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evaluators import evaluate, load_task, sandbox
from evaluators.compile import CompileCache

SEED = Path("kernels/seeds/tiled_matmul.py").read_text()
TASK = load_task("runs/demo_cpu.toml")
ANCHOR = "    pid = tl.program_id(0)\n"
_counter = itertools.count()


def new_source(tag: str) -> str:
    """The seed with a comment inside its kernel body: new to the judge and to Triton's cache."""
    assert ANCHOR in SEED, "the seed kernel changed; update ANCHOR"
    return SEED.replace(ANCHOR, f"    # candidate {tag}\n" + ANCHOR, 1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return CompileCache(tmp_path_factory.mktemp("bench-cache"))


@pytest.mark.slow
def test_child_ready(benchmark):
    sandbox.fork_server("check").wait_ready(time.monotonic() + 120)

    def ready():
        box = sandbox.Sandbox("check")
        try:
            return box.wait_ready(time.monotonic() + 30)
        finally:
            box.close()

    seconds = [ready() for _ in range(10)]
    benchmark.pedantic(ready, rounds=5, iterations=1)
    benchmark.extra_info["ready_median_s"] = round(statistics.median(seconds), 4)
    print(f"\nforked child ready: median {statistics.median(seconds) * 1e3:.1f} ms over 10")


@pytest.mark.slow
def test_new_candidate(benchmark, cache):
    evaluate(new_source("warm-up"), TASK, cache=cache)  # starts the fork servers, as in a run
    cpu: list[float] = []

    def judge(source):
        ev = evaluate(source, TASK, cache=cache)
        assert ev.status == "ok", ev.feedback
        cpu.append(ev.seconds["children_cpu"])
        return ev

    def setup():
        return (new_source(str(next(_counter))),), {}

    benchmark.pedantic(judge, setup=setup, rounds=5, warmup_rounds=0, iterations=1)
    wall = statistics.median(benchmark.stats.stats.data)
    benchmark.extra_info.update(
        wall_median_s=round(wall, 3), children_cpu_median_s=round(statistics.median(cpu), 3)
    )
    print(f"\nnew candidate: wall median {wall:.2f} s, children CPU median {statistics.median(cpu):.2f} s")


WORKER = """
import json, sys, time
sys.path.insert(0, "benchmarks")
from test_evaluator_cost import TASK, new_source
from evaluators import evaluate
from evaluators.compile import CompileCache
tag, count, start_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
cache = CompileCache(sys.argv[4])
evaluate(new_source(tag + "-warm"), TASK, cache=cache)  # fork servers up before the clock starts
while time.time() < start_at:
    time.sleep(0.01)
rows = []
for i in range(count):
    t = time.perf_counter()
    ev = evaluate(new_source(f"{tag}-{i}"), TASK, cache=cache)
    rows.append({"status": ev.status, "wall": time.perf_counter() - t, "cpu": ev.seconds["children_cpu"]})
print(json.dumps({"rows": rows, "end": time.time(), "parent_cpu": time.process_time()}))
"""


@pytest.mark.slow
def test_two_workers(benchmark, tmp_path):
    """Throughput of 2 evaluator processes vs 2 cores / CPU-s per candidate (children + parent)."""
    count = 8

    def run_pair():
        start_at = time.time() + 20  # both have warmed up by then
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    WORKER,
                    f"w{w}-{next(_counter)}",
                    str(count),
                    str(start_at),
                    str(tmp_path / f"c{w}"),
                ],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": os.getcwd()},
            )
            for w in range(2)
        ]
        results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        rows = [r for res in results for r in res["rows"]]
        assert all(r["status"] == "ok" for r in rows), rows
        elapsed = max(res["end"] for res in results) - start_at
        return rows, elapsed

    rows, elapsed = benchmark.pedantic(run_pair, rounds=1, iterations=1)
    cpu_per = statistics.mean(r["cpu"] for r in rows)
    rate = len(rows) / elapsed  # candidates per second
    allowed = 2 / cpu_per
    benchmark.extra_info.update(
        candidates_per_s=round(rate, 4),
        children_cpu_per_candidate_s=round(cpu_per, 3),
        fraction_of_cores=round(rate / allowed, 3),
    )
    print(
        f"\ntwo workers: {len(rows)} candidates in {elapsed:.1f} s = {rate * 60:.1f}/min; children CPU "
        f"{cpu_per:.2f} s each, so 2 cores allow {allowed * 60:.1f}/min: {rate / allowed:.0%} of it"
    )


@pytest.mark.slow
def test_compile_cache_hit(benchmark, cache):
    source = new_source("cache-hit")
    assert evaluate(source, TASK, cache=cache).status == "ok"
    ev = benchmark.pedantic(lambda: evaluate(source, TASK, cache=cache, memo=False), rounds=3, iterations=1)
    assert ev.status == "ok" and ev.seconds["compile"] < 1.0


@pytest.mark.slow
def test_already_evaluated(benchmark, cache):
    source = new_source("memo")
    assert evaluate(source, TASK, cache=cache).status == "ok"
    ev = benchmark.pedantic(lambda: evaluate(source, TASK, cache=cache), rounds=5, iterations=1)
    assert ev.provenance["memo_hit"] is True and ev.seconds["memo"] < 0.5
