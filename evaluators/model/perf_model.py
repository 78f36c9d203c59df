"""Offline performance model: rank compiled matmul kernels on a named GPU without one.

Input: what the offline compile produced for each kernel (tile, warps, stages, shared
memory, registers, spills, wgmma/TMA/atomics) and the grid each launch used for a shape.
Output: a modelled time per shape, labelled `model:<gpu>` by the caller; it ranks
candidates, it does not replace a measurement.

Equations (per launch; one entry-point call sums its launches). Tile (BM, BN, BK),
P = prod(grid) programs, T = cdiv(M,BM)*cdiv(N,BN) output tiles, split = P//T if P > T
(split-K), tiles per program = cdiv(T, P) if P < T (persistent), S = k-steps per program.
  occupancy  c = min(max_ctas, max_warps//warps, regs_per_sm//(regs*32*warps),
                     smem_per_sm//(shared+1 KiB))                 (CUDA occupancy rules)
  waves      w = ceil(P / (SMs*c)); resident r = min(c, ceil(P/SMs)); CTAs per SM = w*r
  compute    per k-step cycles = max(2*BM'*BN'*BK / (flops_per_clk_SM * eff_mma),
                                     smem_bytes / 128 B/clk) + issue overhead
             BM' = BM padded to the MMA shape (16 for mma.sync, 64 per warpgroup for
             wgmma): a 128-row tile at M=1 does 128 rows of work. eff_mma = 0.97*N/(N+8)
             with wgmma (N per instruction), gpu.mma_efficiency_no_wgmma without; fp32
             without TF32 uses CUDA cores. smem_bytes: operand re-reads per warp layout.
             compute_s = w*r*S*step / clock
  traffic    each CTA loads (min(BM,M)*BK + BK*BN)*elem per k-step (L2 requests). DRAM:
             one wave reads the A/B panels of a square-ish block of tiles (grouped
             ordering); across waves panels are re-read unless A+B fit in ~75% of L2.
             l2_hit = 1 - dram/requested. dram_s = (dram + C store)/(0.92*HBM),
             l2_s = requested/L2 bw, ingress_s = per-SM bytes/(SM port B/clk * clock).
  pipeline   latency_s = w*S*L/(stages-1), L = hit*300 + (1-hit)*900 cycles (Little's law);
             mem_s = max(dram_s, l2_s, ingress_s, latency_s); overlap o = 0 (1 stage),
             0.5 (2), 1 (>=3), raised by resident CTAs: o' = 1-(1-o)/r;
             body = max(compute, mem) + (1-o')*min(compute, mem)
  extras     spill_s = spill_bytes*threads*2 per k-step at 128 B/clk/SM (local memory,
             not overlapped); store_s = last round's C store; splitk_s = split*M*N*4 B of
             atomics (x2, at L2) plus C zeroing, or fp32 partials written and re-read;
             ramp = (prologue latency + epilogue) per tile (once per program when
             persistent), launch floor 4 us per launch (so tiny shapes are latency-bound).
Empty launches (a grid with a 0 dimension, e.g. the leftover-rows launch when M divides
evenly) run nothing and are skipped; a shape whose launches are all empty, a negative grid,
a tile or warp count below 1 are "invalid" with the reason, never a division by zero.
bound: the largest term; "memory" = DRAM bandwidth/latency (HBM roofline), L2/SM-port/
shared-memory feed limits count as "compute" (breakdown["limiter"] names the exact term),
"latency" = launch floor + ramp dominate. A launch without tt.dot (a split-K reduce or
an epilogue pass) costs the floor plus reading split fp32 partials and writing C. Invalid (shared > max per CTA, regs*threads >
regs per SM, threads > 1024, no dot at all) -> bound "invalid", fraction 0, time inf.

Constants: NVIDIA datasheets (H100 SXM5, H200, A100 SXM4 80GB), the Hopper and Ampere
whitepapers (SM counts, L2 sizes, shared memory, tensor-core FMA/clk/SM) and the CUDA
Programming Guide compute-capability tables; L2 bandwidth, latencies, issue overhead
and efficiencies are not published by NVIDIA: they are assumptions calibrated to the
figures in shared/REFERENCES.md (H100: ~800 TFLOP/s bf16 at 8192^3, Triton tutorial
525 TFLOP/s fp16 at 3072^3, PR #5726). Expected error: 10-25% on large compute-bound
shapes, up to 2x on small/latency-bound shapes and on kernels whose schedule the
facts do not show (program order, warp specialisation, clusters). Use it to rank.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    name: str
    sm_count: int
    clock_ghz: float  # sustained boost under tensor load
    dense_tflops: dict  # {"fp16","bf16","tf32","fp32"} dense tensor-core peak (fp32 = non-tensor)
    hbm_gbps: float
    l2_gbps: float
    l2_bytes: int
    smem_per_sm: int
    max_smem_per_cta: int
    regs_per_sm: int
    max_warps_per_sm: int
    max_ctas_per_sm: int
    has_wgmma: bool
    mma_efficiency_no_wgmma: float  # fraction of peak reachable with mma.sync only


KIB, MIB = 1024, 1024 * 1024
H100 = GpuSpec(
    name="h100",  # H100 SXM5 80GB
    sm_count=132,  # H100 datasheet / Hopper whitepaper (SXM5: 132 SMs)
    clock_ghz=1.755,  # datasheet peaks assume 1.83 GHz; ~1.75 sustained at 700 W under GEMM (measured)
    dense_tflops={"fp16": 989.4, "bf16": 989.4, "tf32": 494.7, "fp32": 66.9},  # datasheet, dense
    hbm_gbps=3350.0,  # datasheet, HBM3
    l2_gbps=11000.0,  # not published; assumed A100's 47 B/clk per SM x 132 SMs x 1.755 GHz
    l2_bytes=50 * MIB,  # Hopper whitepaper
    smem_per_sm=228 * KIB,  # CUDA Programming Guide, cc 9.0
    max_smem_per_cta=227 * KIB,  # CUDA Programming Guide, cc 9.0 (opt-in)
    regs_per_sm=65536,  # CUDA Programming Guide
    max_warps_per_sm=64,  # CUDA Programming Guide, cc 9.0
    max_ctas_per_sm=32,  # CUDA Programming Guide, cc 9.0
    has_wgmma=True,  # sm_90a warpgroup MMA (Hopper whitepaper)
    mma_efficiency_no_wgmma=0.62,  # mma.sync on Hopper reaches ~60-65% of peak (FlashAttention-3 paper, CUTLASS)
)
GPUS: dict[str, GpuSpec] = {
    "h100": H100,
    # H200 SXM: same GH100 compute as H100 SXM (datasheet 989 TFLOP/s dense bf16), HBM3e 4.8 TB/s, 141 GB.
    "h200": dataclasses.replace(H100, name="h200", hbm_gbps=4800.0),
    "a100": GpuSpec(
        name="a100",  # A100 SXM4 80GB
        sm_count=108,  # A100 datasheet / Ampere whitepaper
        clock_ghz=1.41,  # datasheet boost; A100 holds it under load (peaks are computed at 1.41 GHz)
        dense_tflops={"fp16": 312.0, "bf16": 312.0, "tf32": 156.0, "fp32": 19.5},  # datasheet, dense
        hbm_gbps=2039.0,  # datasheet, HBM2e 80GB SXM4
        l2_gbps=7200.0,  # Ampere whitepaper: L2 read bandwidth 5120 B/clk x 1.41 GHz
        l2_bytes=40 * MIB,  # Ampere whitepaper
        smem_per_sm=164 * KIB,  # CUDA Programming Guide, cc 8.0
        max_smem_per_cta=163 * KIB,  # CUDA Programming Guide, cc 8.0 (opt-in)
        regs_per_sm=65536,
        max_warps_per_sm=64,
        max_ctas_per_sm=32,
        has_wgmma=False,
        mma_efficiency_no_wgmma=0.9,  # mma.sync is Ampere's native path; cuBLAS reaches ~90% of peak
    ),
}
# Clock at which each datasheet peak is computed (whitepapers): flops/clk/SM = peak/(SMs*clock).
_PEAK_CLOCK_GHZ = {"h100": 1.83, "h200": 1.83, "a100": 1.41}

LAUNCH_S = 4e-6  # per-launch floor: launch + first-CTA start + drain (CUDA-event timings of tiny kernels)
WGMMA_EFFICIENCY = 0.97  # x N/(N+8): wgmma m64nNk16, ~0.94 at N=256 (CUTLASS/cuBLAS ~0.9-0.95 of clock peak)
CUDA_CORE_EFFICIENCY = 0.8  # fp32 FMA path (no tensor cores)
HBM_EFFICIENCY = 0.92  # achievable fraction of HBM peak (STREAM-like copies)
SMEM_BYTES_PER_CLK = 128  # 32 banks x 4 B per clock per SM (CUDA Programming Guide)
ISSUE_CYCLES = 24  # per k-step: loop, address arithmetic, barriers (8 with TMA: one thread issues)
DRAM_LATENCY, L2_LATENCY = 900, 300  # cycles; microbenchmarks put Hopper/Ampere at ~500 ns / ~200 ns
EPILOGUE_LATENCY = 500  # cycles for the last store of a tile to drain
CTA_START = 800  # cycles: CTA launch, program-id swizzle, address set-up before the first load
L2_FIT = 0.75  # fraction of L2 usable to keep A and B resident across waves
ELEM_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4, "tf32": 4, "fp8": 1}


@dataclasses.dataclass(frozen=True)
class KernelLaunch:
    tile: tuple[int, int, int] | None  # BLOCK_M, BLOCK_N, BLOCK_K (from the tt.dot operand shapes)
    grid: tuple[int, ...]  # launch grid as captured
    num_warps: int
    num_stages: int
    shared: int
    regs: int | None
    spill_bytes: int | None
    uses_wgmma: bool
    uses_tma: bool
    atomics: bool  # tt.atomic_rmw present (split-K by atomic add)


@dataclasses.dataclass(frozen=True)
class ShapeEstimate:
    shape: tuple[int, int, int]
    time_s: float
    tflops: float
    fraction_of_peak: float
    bound: str  # "compute" | "memory" | "latency" | "invalid"
    breakdown: dict  # seconds / factors per term


def launch_from_facts(facts: dict, grid: list[int]) -> KernelLaunch:
    """One kernel's compile facts (evaluators/compile.py) plus the grid of one launch."""
    dots = facts.get("dots") or []
    tile = dots[0].get("tile") if dots else None
    return KernelLaunch(
        tile=tuple(int(x) for x in tile) if tile and len(tile) == 3 else None,
        grid=tuple(int(g) for g in grid) or (1,),
        num_warps=int(facts.get("num_warps", 4)),
        num_stages=int(facts.get("num_stages", 3)),
        shared=int(facts.get("shared", 0)),
        regs=None if facts.get("regs") is None else int(facts["regs"]),
        spill_bytes=None if facts.get("spill_bytes") is None else int(facts["spill_bytes"]),
        uses_wgmma=bool(facts.get("uses_wgmma", False)),
        uses_tma=bool(facts.get("uses_tma", False)),
        atomics=bool(facts.get("atomics", False)),
    )


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _precision_key(dtype: str, allow_tf32: bool) -> str:
    if dtype == "fp32":
        return "tf32" if allow_tf32 else "fp32"
    return dtype if dtype in ("fp16", "bf16") else "fp16"


def _regs(launch: KernelLaunch) -> int:
    """Registers per thread; estimated from the accumulator when the cubin gave none (or 0)."""
    if launch.regs is not None and launch.regs > 0:
        return launch.regs
    bm, bn, _ = launch.tile or (16, 16, 16)
    return min(255, 40 + (bm * bn) // (launch.num_warps * 32))


def _is_empty(launch: KernelLaunch) -> bool:
    """A launch whose grid has a 0 dimension starts no program: it costs nothing and is skipped."""
    return any(g == 0 for g in launch.grid)


def _invalid_reason(launch: KernelLaunch, gpu: GpuSpec) -> str | None:
    # Facts that would make the equations divide by zero are refused here, with the reason.
    if any(g < 0 for g in launch.grid):
        return f"launch grid {launch.grid} has a negative dimension"
    if launch.num_warps < 1:
        return f"num_warps {launch.num_warps} < 1"
    if launch.tile is not None and min(launch.tile) < 1:
        return f"dot tile {launch.tile} has a dimension < 1"
    if launch.shared < 0:
        return f"shared {launch.shared} B < 0"
    threads = launch.num_warps * 32
    if threads > 1024:
        return f"{threads} threads per CTA > 1024"
    if launch.shared > gpu.max_smem_per_cta:
        return f"shared {launch.shared} B > {gpu.max_smem_per_cta} B per CTA on {gpu.name}"
    if launch.regs is not None and launch.regs * threads > gpu.regs_per_sm:
        return f"{launch.regs} regs x {threads} threads > {gpu.regs_per_sm} per SM"
    return None


def _occupancy(launch: KernelLaunch, gpu: GpuSpec) -> int:
    threads = launch.num_warps * 32
    regs = _cdiv(_regs(launch), 8) * 8  # allocation granularity
    limits = [
        gpu.max_ctas_per_sm,
        gpu.max_warps_per_sm // launch.num_warps,
        gpu.regs_per_sm // (regs * threads),
    ]
    if launch.shared > 0:
        limits.append(gpu.smem_per_sm // (launch.shared + KIB))  # the driver reserves 1 KiB per CTA
    return max(1, min(limits))


def _step_cycles(launch: KernelLaunch, gpu: GpuSpec, key: str, elem: int) -> tuple[float, float, bool]:
    """Throughput cycles of one k-step of one CTA, its MMA efficiency, and whether wgmma is used."""
    bm, bn, bk = launch.tile  # type: ignore[misc]
    warps = launch.num_warps
    flops_per_clk = (
        gpu.dense_tflops[key] * 1e12 / (gpu.sm_count * _PEAK_CLOCK_GHZ.get(gpu.name, gpu.clock_ghz) * 1e9)
    )
    wgmma = launch.uses_wgmma and gpu.has_wgmma and key != "fp32"
    if key == "fp32":  # CUDA-core FMAs, operands through shared memory
        eff, bm_p, wm = CUDA_CORE_EFFICIENCY, bm, max(1, min(warps, bm // 16))
    elif wgmma:  # warpgroups of 4 warps, 64 rows each, B read from shared once per warpgroup
        groups = max(1, warps // 4)
        wm = max(1, min(groups, bm // 64))
        wn_g = max(1, groups // wm)
        n_inst = max(8, bn // wn_g)  # N of each wgmma instruction: wider amortises the A fetch
        eff, bm_p = WGMMA_EFFICIENCY * n_inst / (n_inst + 8), max(bm, 64 * wm)
        warps = groups  # the smem-read arithmetic below is per warpgroup
    else:  # mma.sync m16n8k16 per warp, warps laid out as Triton's warpsPerTileV2 does
        wm, wn = 1, 1
        while wm * wn < warps:
            if bm / (16 * wm) >= bn / (8 * wn) and wm < max(1, bm // 16):
                wm *= 2
            else:
                wn *= 2
        eff, bm_p = gpu.mma_efficiency_no_wgmma, max(bm, 16)
    wn = max(1, warps // wm)
    bn_p = max(bn, 8)
    mma = 2 * bm_p * bn_p * bk / (flops_per_clk * eff)
    # operand reads (A once per warp column, B once per warp row) + tile writes; wgmma reads
    # operands straight from shared memory at the tensor cores' rate, so only re-reads count
    writes = 0 if wgmma else (bm + bn) * bk
    smem_bytes = (bm * bk * wn + bk * bn * wm + writes) * elem
    issue = 8 if launch.uses_tma else ISSUE_CYCLES
    return max(mma, smem_bytes / SMEM_BYTES_PER_CLK) + issue, eff, wgmma


def _estimate_launch(
    launch: KernelLaunch, shape: tuple[int, int, int], dtype: str, gpu: GpuSpec, key: str, split_hint: int
) -> dict:
    m, n, k = shape
    elem = ELEM_BYTES.get(dtype, 2)
    clock = gpu.clock_ghz * 1e9
    hbm = gpu.hbm_gbps * 1e9 * HBM_EFFICIENCY
    if launch.tile is None:  # reduce / epilogue pass: read split fp32 partials, write C
        t = (split_hint * 4 + elem) * m * n / hbm
        return {"time_s": LAUNCH_S + t, "dram_s": t, "launch_s": LAUNCH_S}
    bm, bn, bk = launch.tile
    programs = math.prod(launch.grid)
    tiles = _cdiv(m, bm) * _cdiv(n, bn)
    split = programs // tiles if programs > tiles else 1
    tiles_per_prog = _cdiv(tiles, programs) if programs < tiles else 1
    k_prog = _cdiv(k, split)
    steps = tiles_per_prog * _cdiv(k_prog, bk)

    occ = _occupancy(launch, gpu)
    waves = _cdiv(programs, gpu.sm_count * occ)
    resident = min(occ, _cdiv(programs, gpu.sm_count))
    per_sm = waves * resident  # wave-quantised CTAs the busiest SM runs

    step, eff, wgmma = _step_cycles(launch, gpu, key, elem)
    compute_s = per_sm * steps * step / clock

    rows = min(bm, m)  # masked rows are not fetched
    step_bytes = (rows * bk + bk * min(bn, n)) * elem
    requested = programs * steps * step_bytes
    wave = min(programs, gpu.sm_count * occ)
    tm, tn = _cdiv(m, bm), _cdiv(n, bn)
    if wave >= tm * tn:  # a wave covers the whole C plane (per K chunk)
        wave_bytes = (m * k_prog + k_prog * n) * elem * (wave / (tm * tn))
    else:  # grouped ordering: a square-ish block of tiles
        rm = min(tm, math.ceil(math.sqrt(wave)))
        rn = min(tn, _cdiv(wave, rm))
        wave_bytes = (min(rm * bm, m) * k_prog + k_prog * min(rn * bn, n)) * elem * tiles_per_prog
    unique = (m * k + k * n) * elem
    rereads = max(unique, wave_bytes * programs / wave)
    fit = min(1.0, L2_FIT * gpu.l2_bytes / unique)
    dram = min(requested, max(unique, rereads - fit * (rereads - unique)))
    l2_hit = max(0.0, 1.0 - dram / requested) if requested else 0.0
    c_bytes = m * n * (4 if split > 1 and not launch.atomics else elem)
    dram_s = (dram + c_bytes) / hbm
    l2_s = requested / (gpu.l2_gbps * 1e9)
    port = 128 if gpu.has_wgmma else 64  # assumed L2->SM bytes/clk per SM
    ingress_s = per_sm * steps * step_bytes / (port * clock)
    latency = l2_hit * L2_LATENCY + (1 - l2_hit) * DRAM_LATENCY
    latency_s = waves * steps * latency / max(1, launch.num_stages - 1) / clock
    mem_s = max(dram_s, l2_s, ingress_s, latency_s)

    overlap = {1: 0.0, 2: 0.5}.get(launch.num_stages, 1.0)
    overlap = 1 - (1 - overlap) / resident
    body = max(compute_s, mem_s) + (1 - overlap) * min(compute_s, mem_s)
    pipeline = body / max(compute_s, mem_s, 1e-30)

    threads = launch.num_warps * 32
    spill_s = per_sm * steps * (launch.spill_bytes or 0) * threads * 2 / (SMEM_BYTES_PER_CLK * clock)
    rounds = waves * tiles_per_prog  # C is stored in this many rounds; the last one is exposed
    store_s = m * n * elem / rounds / hbm
    epilogue = bm * bn * elem / port  # registers -> global, issue-limited
    if tiles_per_prog > 1 and launch.uses_tma:  # persistent + TMA: next tile's loads overlap the epilogue
        ramp_cycles = CTA_START + latency + tiles_per_prog * epilogue + EPILOGUE_LATENCY
    else:  # each tile (or each CTA) starts, fills its pipeline, drains its stores
        ramp_cycles = tiles_per_prog * (CTA_START + latency + epilogue + EPILOGUE_LATENCY)
    ramp_s = waves * ramp_cycles / clock
    splitk_s = 0.0
    if split > 1:
        splitk_s = split * m * n * 4 * 2 / (gpu.l2_gbps * 1e9)
        splitk_s += (LAUNCH_S / 2 + m * n * elem / hbm) if launch.atomics else split * m * n * 4 / hbm
    total = LAUNCH_S + body + spill_s + store_s + ramp_s + splitk_s
    return {
        "time_s": total,
        "occupancy": occ,
        "waves": waves,
        "split": split,
        "tiles_per_program": tiles_per_prog,
        "wgmma": wgmma,
        "mma_efficiency": eff,
        "step_cycles": step,
        "compute_s": compute_s,
        "dram_s": dram_s,
        "l2_s": l2_s,
        "ingress_s": ingress_s,
        "latency_s": latency_s,
        "l2_hit": l2_hit,
        "pipeline": pipeline,
        "spill_s": spill_s,
        "store_s": store_s,
        "ramp_s": ramp_s,
        "splitk_s": splitk_s,
        "launch_s": LAUNCH_S,
    }


_SUMMED = (
    "compute_s",
    "dram_s",
    "l2_s",
    "ingress_s",
    "latency_s",
    "spill_s",
    "store_s",
    "ramp_s",
    "splitk_s",
    "launch_s",
)


def estimate_shape(
    launches: list[KernelLaunch],
    shape: tuple[int, int, int],
    dtype: str,
    gpu: GpuSpec,
    allow_tf32: bool = False,
) -> ShapeEstimate:
    """Modelled time of one entry-point call (the sum of its launches) on `gpu`.

    Launches with an empty grid are skipped; if none is left, or a launch's facts cannot be
    modelled, the estimate is "invalid" (time inf, fraction 0) with breakdown["reason"].
    Raises ValueError for a shape with a dimension < 1 (tasks never hold one: a judge bug)."""
    shape = tuple(int(x) for x in shape)  # type: ignore[assignment]
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape {shape} is not [M, N, K] of positive integers; the task must not hold it")
    key = _precision_key(dtype, allow_tf32)
    live = [lc for lc in launches if not _is_empty(lc)]  # the GPU launcher skips empty grids too
    reasons = [r for r in (_invalid_reason(lc, gpu) for lc in live) if r]
    if launches and not live:
        reasons.append(f"every launch ({len(launches)}) has an empty grid: no program ran")
    elif not any(lc.tile for lc in live):
        reasons.append("no tl.dot in any launch" if live else "no launch")
    if reasons:
        return ShapeEstimate(shape, math.inf, 0.0, 0.0, "invalid", {"reason": "; ".join(reasons)})
    launches = live
    split_hint = 1
    for lc in launches:
        if lc.tile:
            bm, bn, _ = lc.tile
            split_hint = max(split_hint, math.prod(lc.grid) // (_cdiv(shape[0], bm) * _cdiv(shape[1], bn)))
    parts = [_estimate_launch(lc, shape, dtype, gpu, key, split_hint) for lc in launches]
    main = max((p for p in parts if "occupancy" in p), key=lambda p: p["time_s"])
    breakdown = {**main, "launches": len(parts)}
    for name in _SUMMED:
        breakdown[name] = sum(p.get(name, 0.0) for p in parts)
    time_s = sum(p["time_s"] for p in parts)
    breakdown["time_s"] = time_s
    m, n, k = shape
    tflops = 2.0 * m * n * k / time_s / 1e12
    # "memory" means the HBM roofline (DRAM bandwidth or DRAM latency in flight); the on-chip
    # feed (L2, SM port, shared memory) limits how fast a tile computes, so it counts as compute.
    terms = {name: breakdown[name + "_s"] for name in ("compute", "l2", "ingress", "dram", "latency")}
    terms["launch"] = breakdown["launch_s"] + breakdown["ramp_s"]
    breakdown["limiter"] = max(terms, key=terms.__getitem__)
    bound = {"l2": "compute", "ingress": "compute", "dram": "memory", "latency": "memory"}.get(
        breakdown["limiter"], breakdown["limiter"]
    )
    bound = "latency" if bound == "launch" else bound
    return ShapeEstimate(shape, time_s, tflops, tflops / gpu.dense_tflops[key], bound, breakdown)


def modelled_fitness(estimates: list[ShapeEstimate]) -> float:
    """Geometric mean of the modelled fraction of peak; 0 if any shape is invalid, zero or not finite."""
    if not estimates or any(
        e.bound == "invalid" or not math.isfinite(e.fraction_of_peak) or e.fraction_of_peak <= 0
        for e in estimates
    ):
        return 0.0
    return math.exp(sum(math.log(e.fraction_of_peak) for e in estimates) / len(estimates))
