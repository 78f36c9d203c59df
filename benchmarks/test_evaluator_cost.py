"""What the judge costs per candidate on a CPU, for runs/demo_cpu.toml.

Run with `make bench` (marked slow: out of `make test`). Three figures:
- new candidate: a source never seen (static + offline compile for sm_90 + interpreter
  checks), in steady state: the children were started ahead of time, as in a run;
- compile-cache hit: the same source again with the verdict memo off (the compile is
  reused; the interpreter checks run again on fresh inputs);
- already evaluated: the verdict memo returns the stored Evaluation.
"""

import itertools
from pathlib import Path

import pytest

from evaluators import evaluate, load_task
from evaluators.compile import CompileCache

SEED = Path("kernels/seeds/tiled_matmul.py").read_text()
TASK = load_task("runs/demo_cpu.toml")
_counter = itertools.count()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return CompileCache(tmp_path_factory.mktemp("bench-cache"))


def _new_source():
    # A comment makes a new source hash: nothing cached, same work as a new candidate.
    return (SEED + f"\n# candidate {next(_counter)}\n",), {}


@pytest.mark.slow
def test_new_candidate(benchmark, cache):
    def judge(source):
        ev = evaluate(source, TASK, cache=cache)
        assert ev.status == "ok", ev.feedback
        return ev

    benchmark.pedantic(judge, setup=_new_source, rounds=3, warmup_rounds=1, iterations=1)


@pytest.mark.slow
def test_compile_cache_hit(benchmark, cache):
    source = SEED + "\n# cache-hit candidate\n"
    assert evaluate(source, TASK, cache=cache).status == "ok"
    ev = benchmark.pedantic(lambda: evaluate(source, TASK, cache=cache, memo=False), rounds=3, iterations=1)
    assert ev.status == "ok" and ev.seconds["compile"] < 1.0


@pytest.mark.slow
def test_already_evaluated(benchmark, cache):
    source = SEED + "\n# memo candidate\n"
    assert evaluate(source, TASK, cache=cache).status == "ok"
    ev = benchmark.pedantic(lambda: evaluate(source, TASK, cache=cache), rounds=5, iterations=1)
    assert ev.provenance["memo_hit"] is True and ev.seconds["memo"] < 0.5
