"""Executed work of a training shape's launches, from what the judge ran (parent side).

The interpreter child counts, per program, the work it executed (evaluators/work_count.py) in two
runs of the expensive stage (evaluators/verify_stage.py):
- the whole grid at a reduced K: every program of every launch, at K_r < K (the same launches);
- sampled programs at full size: a few programs of each launch, at the real K.

Per launch, the full-size work of every program is estimated from both: program p's reduced-K work
times the ratio of the sampled programs' full-size work to their own reduced-K work (a ratio
estimator, one per kind of work: dot FLOPs, CUDA-core flops). A program that did nothing at the
reduced K did nothing at full K (it exits at once: the grid is the same, and control flow depends
only on integers, evaluators/dataflow.py); an idle program the sample shows working is not idle.
With only the whole grid, the ratio is K / K_r (work grows with the K loop); with only the sample,
the busiest sampled program stands for all and the working fraction is the sample's.
"""

from __future__ import annotations

import math

from .launch import ExecutedWork


def _parse_key(key: str) -> tuple[str, tuple[int, int, int]] | None:
    rate, _, tile = key.partition(":")
    try:
        dims = tuple(int(x) for x in tile.split("x"))
    except ValueError:
        return None
    return (rate, dims) if len(dims) == 3 else None  # type: ignore[return-value]


def _totals(programs: dict) -> tuple[float, float]:
    dot = sum(sum(w.get("dot", {}).values()) for w in programs.values())
    return dot, sum(float(w.get("cuda", 0)) for w in programs.values())


def _busiest(programs: dict) -> tuple[dict, float]:
    """The per-key dot FLOPs of the program with the most dot FLOPs and the largest CUDA-core count."""
    best = max(programs.values(), key=lambda w: sum(w.get("dot", {}).values()), default={})
    cuda = max((float(w.get("cuda", 0)) for w in programs.values()), default=0.0)
    return dict(best.get("dot", {})), cuda


def _working(programs: dict) -> int:
    return sum(1 for w in programs.values() if sum(w.get("dot", {}).values()) > 0 or w.get("cuda", 0) > 0)


def launch_work(
    grid: list[int], k: int, reduced: tuple[int, dict] | None, sampled: dict | None
) -> ExecutedWork | None:
    """ExecutedWork of one launch at full K (module doc). `reduced`: (K_r, programs of the whole grid
    at K_r); `sampled`: programs run at full K; each {flat id: {"dot": {"RATE:MxNxK": FLOPs},
    "cuda": flops}} as evaluators/work_count.py reports them. None when neither ran."""
    total = math.prod(int(g) for g in grid) if grid else 1
    if reduced is None and sampled is None:
        return None
    if reduced is not None:
        k_r, programs = reduced
        dot_scale = cuda_scale = k / max(1, k_r)
        how = f"every program at K = {k_r}"
        if sampled:
            full_dot, full_cuda = _totals(sampled)
            red_dot, red_cuda = _totals({p: programs[p] for p in sampled if p in programs})
            if red_dot > 0:
                dot_scale = full_dot / red_dot
            if red_cuda > 0:
                cuda_scale = full_cuda / red_cuda
            how += f", scaled by {len(sampled)} programs run at K = {k}"
        else:
            how += f", scaled by K / {k_r}"
        # Every program at full K: its reduced-K work scaled; the sampled ones as they ran at full K
        # (a program idle at K_r that the sample shows working is not idle).
        full = {p: _scale(w, dot_scale, cuda_scale) for p, w in programs.items()}
        full.update(sampled or {})
        dot, cuda = _busiest(full)
        working = _working(full)
    else:
        assert sampled is not None
        dot, cuda = _busiest(sampled)
        working = round(total * _working(sampled) / max(1, len(sampled)))
        how = f"{len(sampled)} programs run at K = {k} (the whole grid at a reduced K did not run)"
    flops = []
    for key, value in sorted(dot.items()):
        parsed = _parse_key(key)
        if parsed is not None and value > 0:
            flops.append((parsed[0], parsed[1], float(value)))
    return ExecutedWork(programs=total, working=min(total, working), dot_flops=tuple(flops),
                        cuda_flops=float(cuda), source=how)  # fmt: skip


def _scale(work: dict, dot_scale: float, cuda_scale: float) -> dict:
    return {"dot": {k: v * dot_scale for k, v in work.get("dot", {}).items()},
            "cuda": float(work.get("cuda", 0)) * cuda_scale}  # fmt: skip


def _programs(launch: dict) -> dict:
    return {int(p): w for p, w in (launch.get("programs") or {}).items()}


def call_work(
    calls: list[dict], k: int, reduced: tuple[int, list] | None, sampled: list | None
) -> list[ExecutedWork | None]:
    """ExecutedWork per call of one entry-point call at full K, matched by launch order and grid:
    `reduced` (K_r, work_count summary of the whole grid), `sampled` (summary of the full-size
    sampled run). A call whose grid matches no counted launch gets None (its compile facts stand)."""
    out: list[ExecutedWork | None] = []
    red = list(reduced[1]) if reduced else []
    smp = list(sampled or [])
    for call in calls:
        grid = [int(g) for g in call.get("grid") or [1]]
        grid3 = grid + [1] * (3 - len(grid))
        if any(g == 0 for g in grid3):
            out.append(None)  # an empty launch never reaches the interpreter
            continue
        r = red.pop(0) if red and list(red[0]["grid"]) == grid3 else None
        s = smp.pop(0) if smp and list(smp[0]["grid"]) == grid3 else None
        out.append(
            launch_work(grid3, k, (reduced[0], _programs(r)) if r else None, _programs(s) if s else None)
        )
    return out
