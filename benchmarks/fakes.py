"""Test doubles for the engine's benchmarks: a fake judge behind the worker pool's interface.

`FakeFastPool` is NOT an evaluator: it judges nothing. It answers every job at once with a verdict
made up from a hash of the source, shaped and sized like a real one (a demo run's verdicts are about
10 KB of JSON: 21 shape rows, 10 compile entries, provenance), so that what the controller does per
evaluation (store the verdict, place the member, reward the proposer, pick the next parents) is
measured with the judge's own time taken out. It has the interface of evolve/pool.py's WorkerPool
that the controller uses: size, idle_slots, in_flight, submit, poll, judge.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import time

from evaluators.evaluation import Evaluation, ShapeResult
from evaluators.fingerprint import judge_fingerprint

# The verdicts' mix, by the source hash modulo 100: most ok, the rest the failures a run sees most.
FAILURES = ((8, "incorrect"), (12, "compile_error"), (14, "rejected"))
CHECK_SHAPES = [(64, 64, 64), (128, 96, 80), (257, 129, 65), (1, 512, 512), (512, 1, 256)]
TRAIN_SHAPES = [(4096, 4096, 4096), (8192, 4096, 4096), (16, 4096, 4096)]
HELD_OUT = [(5120, 5120, 5120)]
_CONFIG = re.compile(r"['\"]?(BLOCK_M|BLOCK_N|BLOCK_K|num_stages)['\"]?\s*[:=]\s*(\d+)")


def _config(source: str, digest: int) -> dict[str, int]:
    """The first tile and stage count the source names (so niches follow the kernel), else from the hash."""
    found: dict[str, int] = {}
    for name, value in _CONFIG.findall(source):
        found.setdefault(name, int(value))
    defaults = {"BLOCK_M": (32, 64, 128, 256)[digest % 4], "BLOCK_N": (32, 64, 128, 256)[digest // 4 % 4],
                "BLOCK_K": 64, "num_stages": 2 + digest // 16 % 4}  # fmt: skip
    return {**defaults, **found}


def fake_verdict(candidate_id: int, source: str, backend: str, judge: str, stage: str) -> dict:
    """A made-up Evaluation dict for `source`, deterministic (a provisional and a verified verdict of one
    candidate agree), about the size of a real modelled one. The fitness rises with the candidate id
    (later candidates tend to beat the elites, as in a search that improves), so the population keeps
    changing and the mutator keeps finding new kernels over thousands of evaluations. Costs about what decoding a result does (a
    JSON template per status and tile, decoded and filled in), not what building an Evaluation does."""
    digest = int.from_bytes(hashlib.sha256(source.encode()).digest()[:8], "big")
    status = next((s for cut, s in FAILURES if digest % 100 < cut), "ok")
    cfg = _config(source, digest)
    noise = (digest >> 16) % 10_000 / 10_000
    fitness = (
        0.05 + 0.9 * (1 - math.exp(-candidate_id / 1500)) * (0.7 + 0.3 * noise) if status == "ok" else 0.0
    )
    verdict = json.loads(_template(status, backend))
    for entry in verdict["compile"]:
        entry["key"] = f"{digest:016x}{entry['key']}"
        entry["num_stages"] = cfg["num_stages"]
        entry["dots"][0]["tile"] = [cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]]
    verdict.update(
        fitness=fitness, held_out=fitness * 1.1 if status == "ok" else None, judge=judge, stage=stage,
        feedback=f"FAKE verdict ({status}): geometric mean {fitness:.3f} of dense peak over "
        f"{len(TRAIN_SHAPES) * 3} training shape/layouts" + ("" if status == "ok" else "; wrong on 64x64x64"),
    )  # fmt: skip
    return verdict


@functools.cache
def _template(status: str, backend: str) -> str:
    """The JSON of a verdict of `status`, its fitness, tile and the rest filled in per candidate (one
    template per status: the fake's own memory stays constant, so it is not counted as the controller's)."""
    shapes = [
        ShapeResult(shape=s, layout=layout, kind="check", max_abs_err=1e-3, max_scaled_err=2e-5, tolerance=7.8e-3)
        for s in CHECK_SHAPES for layout in ("nn", "nt")
    ]  # fmt: skip
    shapes += [
        ShapeResult(shape=s, layout=layout, kind=kind, tflops=400.0, fraction_of_peak=0.5,
                    bound="compute", model_class="large", model_error=0.23)
        for kind, group in (("train", TRAIN_SHAPES), ("held_out", HELD_OUT))
        for s in group for layout in ("nn", "nt", "tn")
    ]  # fmt: skip
    compile_facts = [
        {"atomics": False, "compile_s": 0.8, "global_scratch": 0, "kernel": "matmul_kernel",
         "key": f"{i:08x}", "num_stages": 3, "num_warps": 8, "regs": 116,
         "shared": 98304, "spill_bytes": 0, "spin_wait": False, "uses_tma": False, "uses_wgmma": True,
         "dots": [{"a": "bf16", "b": "bf16", "precision": "bf16",
                   "tile": [128, 128, 64]}]}
        for i in range(10)
    ] if status not in ("rejected", "compile_error") else []  # fmt: skip
    provenance = {
        "torch": "2.13.0+cpu", "triton": "3.9.0", "python": "3.11.7", "device": "cpu", "fake": True,
        "executed_work": [{"shape": list(s), "layout": layout, "calls": [{"dot_gflop": 0.268, "programs": 512}]}
                          for s in TRAIN_SHAPES for layout in ("nn", "nt")],
        "note": "made up by benchmarks/fakes.py FakeFastPool, sized like a real verdict; nothing was judged",
    }  # fmt: skip
    evaluation = Evaluation(
        status, backend, 0.5 if status == "ok" else 0.0, "modelled" if status == "ok" else "none",
        shapes=shapes, compile=compile_facts, seconds={"static": 0.01, "compile": 0.8, "check": 1.2, "model": 0.05},
        provenance=provenance, stage="provisional",
    )  # fmt: skip
    return json.dumps(evaluation.to_dict())


class FakeFastPool:
    """A FAKE worker pool (a test double, not an evaluator): `workers` slots, every job answered on the
    next poll, in ~0 s, with `fake_verdict`. Counts what it saw, for the benchmarks' checks."""

    def __init__(self, workers: int, backend: str = "model:h100") -> None:
        self.size, self.backend = workers, backend
        self.jobs: list = []
        self.fingerprint = judge_fingerprint()  # today's judge, as a real worker stamps every verdict
        self.submitted = 0
        self.max_in_flight = 0
        self.source_bytes = 0  # the sources of every job (what Ray would carry to the workers)
        self.result_bytes = 0  # the verdicts' JSON (what Ray would carry back)
        self.fake_s = 0.0  # time spent making verdicts up: the fake's, not the controller's

    def judge(self, timeout: float = 0.0) -> str:
        """The judge the workers run (WorkerPool.judge): this process's fingerprint."""
        return self.fingerprint

    def idle_slots(self) -> int:
        return self.size - len(self.jobs)

    def in_flight(self) -> int:
        return len(self.jobs)

    def submit(self, job) -> None:
        if not self.idle_slots():
            raise RuntimeError("FakeFastPool.submit with no idle slot: the controller overran the pool")
        self.jobs.append(job)
        self.submitted += 1
        self.max_in_flight = max(self.max_in_flight, len(self.jobs))
        self.source_bytes += len(job.source.encode())

    def poll(self, timeout: float) -> list[tuple[int, dict]]:
        """Every job in flight, judged now (never waits: the judge takes ~0 s)."""
        start = time.perf_counter()
        jobs, self.jobs = self.jobs, []
        out = [
            (
                job.candidate_id,
                fake_verdict(
                    job.candidate_id, job.source, self.backend, self.fingerprint, job.options["stage"]
                ),
            )
            for job in jobs
        ]
        self.fake_s += time.perf_counter() - start
        self.result_bytes += sum(len(json.dumps(verdict)) for _, verdict in out)  # not timed: not the judge's
        return out

    def shutdown(self) -> None:
        self.jobs = []
