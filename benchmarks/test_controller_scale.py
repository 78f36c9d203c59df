"""The controller over thousands of evaluations: backpressure, memory, and its own cost per evaluation.

The real Controller (evolve/controller.py), the real offline mutator (evolve/proposers/mutator.py,
synchronous, in this process) and a real SQLite store, with a FAKE judge: benchmarks/fakes.py's
FakeFastPool answers every job at once with a made-up verdict sized like a real one. What is left is
the controller's work per evaluation (propose, hash, store, place, reward, select), measured:

- overhead per evaluation: wall time of the run less the fake's own time making verdicts up, per
  evaluation, and of it the mutator's share (its `propose`); evaluations per second the controller
  sustains = 1 / that;
- RSS of this process, sampled every SAMPLE_EVERY evaluations (/proc/self/statm), and its slope in KiB
  per 1,000 evaluations (a least-squares line from WARM evaluations on: imports and SQLite's page cache
  fill up before); beside it, the growth of the Python objects the population and the verification
  keep by design (one hash per candidate seen, one member per unplaced provisional verdict), so the
  rest of the slope is what is not by design;
- backpressure: nothing is proposed ahead of the evaluators beyond bounded queues (asserted; never the
  timings): the pool is never overrun, no new candidate waits for a worker beyond one per worker, the
  verifications queued at once stay within the (island, niche) cells plus the top-k, and a synchronous
  proposer has nothing in flight.

Slow (about 5 minutes on 2 cores for 2,000 evaluations): `make bench`. A smoke run of SMOKE
evaluations checks the same bounds in `make test`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is not a package: its fakes beside it

from fakes import FakeFastPool  # noqa: E402 - after the path above

from evaluators import load_task  # noqa: E402
from evolve.config import load_run_config  # noqa: E402
from evolve.controller import Controller  # noqa: E402
from evolve.population import Population  # noqa: E402
from evolve.runner import make_proposers  # noqa: E402
from evolve.store import Store  # noqa: E402
from evolve.verification import VERIFY_TOP_K  # noqa: E402

EVALS = 2_000
SMOKE = 30
WORKERS = 8
SAMPLE_EVERY = 100
WARM = 200  # evaluations before the RSS line is fitted
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def rss_kib() -> int:
    """Resident set size of this process now, KiB (Linux /proc/self/statm, second field in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_KIB


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip


def memory_parts() -> dict[str, int]:
    """KiB held by SQLite's allocator (sqlite3_memory_used: page cache, statements) and by glibc's malloc
    (in use, and free but kept in the heap), where the libraries answer (Linux, glibc >= 2.33); else {}."""
    parts = {}
    try:
        import _sqlite3

        used = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used  # resolved in the libsqlite3 it links
        used.restype = ctypes.c_int64
        parts["sqlite_kib"] = used() // 1024
    except (OSError, AttributeError):
        pass
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
        mallinfo2.restype = _MallInfo2
        info = mallinfo2()
        parts["malloc_used_kib"] = (info.uordblks + info.hblkhd) // 1024
        parts["malloc_free_kib"] = info.fordblks // 1024
    except (OSError, AttributeError):
        pass
    return parts


def deep_size(*roots: object) -> int:
    """Bytes of the objects reachable from `roots` through containers, dataclasses and plain objects
    (each counted once), not through modules, functions, classes or the store's and pool's handles."""
    seen: set[int] = set()
    stack, total = list(roots), 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type | Store | FakeFastPool) or callable(obj):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif hasattr(obj, "__dict__"):
            stack.append(vars(obj))
        elif hasattr(obj, "__slots__"):
            stack.extend(getattr(obj, s) for s in obj.__slots__ if hasattr(obj, s))
    return total


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


@dataclasses.dataclass
class Watch:
    """What the on_progress callback sees of the controller as the run goes."""

    # evaluations, seconds, RSS KiB, gc objects; bytes kept by design; memory_parts() and what else was then
    samples: list[tuple[int, float, int, int]] = dataclasses.field(default_factory=list)
    parts: list[dict] = dataclasses.field(default_factory=list)
    kept: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    max_queue: int = 0
    max_new_queued: int = 0  # new candidates waiting for a worker (not verifications)
    max_verifying: int = 0
    max_writing: int = 0  # proposals being written (LLM calls, remote proposals)
    callbacks: int = 0


def _run(tmp_path: Path, evals: int, seed: int = 11) -> dict:
    config = load_run_config("runs/demo.toml").replace(max_evals=evals, workers=WORKERS, seed=seed)
    config = dataclasses.replace(config, time_budget_s=0.0)
    task = load_task(config.task)
    store = Store.create(tmp_path / "run.sqlite", "scale", config.to_dict(), config.seed)
    pool = FakeFastPool(WORKERS)
    proposers = make_proposers(config)[0]
    mutator = proposers[0][0]
    propose, mutator_s = mutator.propose, [0.0]

    def timed_propose(parents, context):
        start = time.perf_counter()
        try:
            return propose(parents, context)
        finally:
            mutator_s[0] += time.perf_counter() - start

    mutator.propose = timed_propose  # the mutator's share of the controller's time
    watch = Watch()
    controller: Controller

    def on_progress(progress) -> None:
        watch.callbacks += 1
        verifying = set(controller.verification.queued)
        watch.max_queue = max(watch.max_queue, len(controller.queue))
        watch.max_new_queued = max(watch.max_new_queued, sum(c not in verifying for c in controller.queue))
        watch.max_verifying = max(watch.max_verifying, len(verifying))
        watch.max_writing = max(watch.max_writing, controller.proposing.in_flight())
        if not watch.samples or progress.evaluated >= watch.samples[-1][0] + SAMPLE_EVERY:
            gc.collect()  # garbage is not growth
            watch.samples.append((progress.evaluated, time.perf_counter(), rss_kib(), len(gc.get_objects())))
            kept = deep_size(controller.population, controller.verification, controller.deferred)
            watch.kept.append((progress.evaluated, kept))
            watch.parts.append({"evaluated": progress.evaluated, **memory_parts(), "mutator_s": mutator_s[0],
                                "duplicates": progress.duplicates, "waiting": len(controller.verification.waiting)})  # fmt: skip

    controller = Controller(config, task, store, Population(config.population), proposers, pool, {},
                            "model:h100", on_progress=on_progress, judge=pool.judge())  # fmt: skip
    start = time.perf_counter()
    reason = controller.run()
    wall = time.perf_counter() - start
    gc.collect()
    watch.samples.append((store.evaluated_count(), time.perf_counter(), rss_kib(), len(gc.get_objects())))
    watch.kept.append(
        (
            store.evaluated_count(),
            deep_size(controller.population, controller.verification, controller.deferred),
        )
    )
    niches = {m.niche for m in controller.population.elites()}
    cache_kib = -store.connection.execute("PRAGMA cache_size").fetchone()[0]
    result = dict(
        reason=reason, evaluated=store.evaluated_count(), pending=store.pending_ids(), wall=wall,
        fake_s=pool.fake_s, mutator_s=mutator_s[0], watch=watch, pool=pool, niches=len(niches),
        islands=config.population.islands, sqlite_cache_kib=cache_kib, counts=store.counts_by_status(),
        duplicates=controller.progress.duplicates, proposals=pool.submitted,
        waiting=len(controller.verification.waiting), members=len(controller.population),
    )  # fmt: skip
    store.close()
    return result


def _check_bounds(r: dict, evals: int) -> None:
    """Backpressure: the bounded structures stayed bounded (never timings)."""
    watch, pool = r["watch"], r["pool"]
    assert r["reason"] == f"max_evals {evals} reached" and r["evaluated"] == evals and r["pending"] == []
    assert watch.callbacks > 0
    assert pool.max_in_flight <= WORKERS  # FakeFastPool.submit raises on an overrun besides
    assert watch.max_writing == 0  # a synchronous proposer: nothing is written ahead of a free worker
    assert watch.max_new_queued <= WORKERS, "new candidates queued beyond one per worker"
    # verifications are queued by cell (one per island and niche at a time) plus the run's top-k
    assert watch.max_verifying <= r["islands"] * max(r["niches"], 1) + VERIFY_TOP_K
    assert watch.max_queue <= WORKERS + r["islands"] * max(r["niches"], 1) + VERIFY_TOP_K


def _figures(r: dict) -> dict:
    watch = r["watch"]
    controller_s = r["wall"] - r["fake_s"]
    per_eval_ms = controller_s / r["evaluated"] * 1e3
    warm = [(e, kib) for e, _, kib, _ in watch.samples if e >= WARM] or [
        (e, k) for e, _, k, _ in watch.samples
    ]
    kept = [(e, b / 1024) for e, b in watch.kept if e >= WARM] or [(e, b / 1024) for e, b in watch.kept]
    objs = [(e, n) for e, _, _, n in watch.samples if e >= WARM] or [(e, n) for e, _, _, n in watch.samples]
    half = [(e, kib) for e, _, kib, _ in watch.samples if e >= r["evaluated"] // 2]
    first, last = watch.samples[0], watch.samples[-1]
    parts = [p for p in watch.parts if p["evaluated"] >= WARM] or watch.parts
    part_slopes = {
        f"{key.removesuffix('_kib')}_slope_kib_per_1000": round(slope([(p["evaluated"], p[key]) for p in parts]) * 1000, 1)
        for key in ("sqlite_kib", "malloc_used_kib", "malloc_free_kib") if len(parts) > 1 and key in parts[0]
    }  # fmt: skip
    # per-evaluation wall time of the first and the last stretch: does the controller slow down as it grows?
    stretch = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(watch.samples, watch.samples[1:], strict=False)]
    stretch = [(n, s) for n, s in stretch if n > 0]
    return dict(
        evaluations=r["evaluated"],
        proposals=r["proposals"],
        duplicates=r["duplicates"],
        statuses={k: v for k, v in r["counts"].items() if v},
        wall_s=round(r["wall"], 2),
        fake_judge_s=round(r["fake_s"], 3),
        controller_ms_per_eval=round(per_eval_ms, 2),
        mutator_ms_per_eval=round(r["mutator_s"] / r["evaluated"] * 1e3, 2),
        rest_ms_per_eval=round((controller_s - r["mutator_s"]) / r["evaluated"] * 1e3, 2),
        evals_per_s=round(r["evaluated"] / controller_s, 2),
        first_stretch_ms_per_eval=round(stretch[0][1] / stretch[0][0] * 1e3, 2) if stretch else None,
        last_stretch_ms_per_eval=round(stretch[-1][1] / stretch[-1][0] * 1e3, 2) if stretch else None,
        rss_start_kib=first[2],
        rss_end_kib=last[2],
        rss_slope_kib_per_1000=round(slope(warm) * 1000, 1),
        rss_slope_second_half_kib_per_1000=round(slope(half) * 1000, 1) if len(half) > 1 else None,
        **part_slopes,
        kept_by_design_slope_kib_per_1000=round(slope(kept) * 1000, 1),
        gc_objects_slope_per_1000=round(slope(objs) * 1000),
        sqlite_page_cache_max_kib=r["sqlite_cache_kib"],
        max_queue=watch.max_queue,
        max_new_queued=watch.max_new_queued,
        max_verifying=watch.max_verifying,
        max_in_flight=r["pool"].max_in_flight,
        workers=WORKERS,
        source_bytes_per_job=round(r["pool"].source_bytes / max(r["pool"].submitted, 1)),
        result_json_bytes_per_job=round(r["pool"].result_bytes / max(r["pool"].submitted, 1)),
        population_members=r["members"],
        unplaced_provisional=r["waiting"],
        rss_samples=[(e, kib) for e, _, kib, _ in watch.samples],
        samples=[
            {**p, "rss_kib": kib, "s": round(t - watch.samples[0][1], 2)}
            for p, (_, t, kib, _) in zip(watch.parts, watch.samples, strict=False)
        ],
    )


@pytest.mark.slow
def test_controller_scale(benchmark, tmp_path):
    result = benchmark.pedantic(_run, args=(tmp_path, EVALS), rounds=1, iterations=1)
    _check_bounds(result, EVALS)
    figures = _figures(result)
    benchmark.extra_info.update(figures)
    benchmark.extra_info["measured_on"] = "2-core CPU machine, no GPU, fake judge (benchmarks/fakes.py)"
    print(
        f"\n{figures['evaluations']} evaluations ({figures['proposals']} judged incl. verifications, "
        f"{figures['duplicates']} duplicate proposals) in {figures['wall_s']} s, fake judge "
        f"{figures['fake_judge_s']} s: controller {figures['controller_ms_per_eval']} ms/evaluation (mutator "
        f"{figures['mutator_ms_per_eval']}, the rest {figures['rest_ms_per_eval']}; first stretch "
        f"{figures['first_stretch_ms_per_eval']}, last {figures['last_stretch_ms_per_eval']}), "
        f"{figures['evals_per_s']} evaluations/s\nRSS {figures['rss_start_kib']} -> {figures['rss_end_kib']} KiB, "
        f"slope {figures['rss_slope_kib_per_1000']} KiB per 1,000 evaluations from {WARM} on, "
        f"{figures['rss_slope_second_half_kib_per_1000']} over the second half (kept by design: "
        f"{figures['kept_by_design_slope_kib_per_1000']}; gc objects {figures['gc_objects_slope_per_1000']} "
        f"per 1,000; SQLite page cache <= {figures['sqlite_page_cache_max_kib']} KiB)\nqueue max "
        f"{figures['max_queue']} (new {figures['max_new_queued']}, verifications {figures['max_verifying']}), "
        f"in flight max {figures['max_in_flight']} of {WORKERS}; per job: source "
        f"{figures['source_bytes_per_job']} B out, verdict {figures['result_json_bytes_per_job']} B (JSON) back"
    )


def test_controller_backpressure_smoke(tmp_path):
    """The same run, short: the bounds hold (in `make test`; the figures are the slow one's)."""
    result = _run(tmp_path, SMOKE)
    _check_bounds(result, SMOKE)
    assert result["watch"].samples[-1][0] == SMOKE
