"""Offline performance model: rank compiled matmul kernels on a named GPU without one.

Input, per launch (evaluators/model/launch.py): what the offline compile produced (the main dot's
tile and rate, warps, shared memory, registers, spills, wgmma / TMA from PTX instruction lines, the
compiled pipeline's operand buffers, atomics), the grid it used for a shape, and, at the verified
stage, what its programs executed (ExecutedWork: the busiest program's dot FLOPs by rate and tile and
CUDA-core flops, and how many programs did any work; evaluators/work_count.py counts,
evaluators/model/executed.py scales).
Output: a modelled time per shape, labelled `model:<gpu>` by the caller; it ranks candidates, it does
not replace a measurement. Tables and constants: evaluators/model/constants.py.

Equations (per launch; one entry-point call sums its launches). Tile (BM, BN, BK) of the main dot,
P = prod(grid) programs, W = programs that work (P without executed work), T = cdiv(M,BM)*cdiv(N,BN)
output tiles, split = W//T if W > T (split-K), tiles per program = cdiv(T, W) if W < T (persistent),
S = k-steps of the busiest program (its main-dot FLOPs / 2*BM*BN*BK, or tiles*cdiv(K/split, BK)).
  occupancy  c = min(max_ctas, max_warps//warps, regs_per_sm//(regs*32*warps),
                     smem_per_sm//(shared+1 KiB))                 (CUDA occupancy rules)
  waves      w = ceil(W / (SMs*c)); resident r = min(c, ceil(W/SMs)); CTAs per SM = w*r
  compute    per k-step cycles = max(2*BM'*BN'*BK / (flops_per_clk_SM(rate) * eff_mma),
                                     smem_bytes / 128 B/clk) + issue overhead
             BM' = BM padded to the MMA shape (16 for mma.sync, 64 per warpgroup for wgmma).
             eff_mma = wgmma_efficiency*N/(N+8) with wgmma (N per instruction),
             gpu.mma_efficiency_no_wgmma without; an fp32 IEEE dot runs on CUDA cores.
             Executed work adds, per program, every other dot at its own rate and the CUDA-core
             flops at the fp32 rate. The dot's rate is the compiled one: an fp8 dot lowered to
             16-bit mma.sync runs at fp16's.
             From compile facts alone, the loop's other float ops per step (compile.loop_float_flops)
             run at the CUDA-core rate; once verified, the executed count replaces them.
             compute_s = w*r*(S*step + extra) / clock
  traffic    each CTA loads (min(BM,M)*BK + BK*BN)*elem per k-step (L2 requests). DRAM:
             one wave reads the A/B panels of a square-ish block of tiles (grouped
             ordering); across waves panels are re-read unless A+B fit in ~l2_fit of L2.
             l2_hit = 1 - dram/requested. dram_s = (dram + C store)/(hbm_efficiency*HBM),
             l2_s = requested/L2 bw, ingress_s = per-SM bytes/(SM port B/clk * clock).
  pipeline   latency_s = w*S*L/(buffers-1), L = hit*l2_latency + (1-hit)*dram_latency (Little's
             law); buffers = the compiled pipeline's (1 when nothing is copied asynchronously);
             mem_s = max(dram_s, l2_s, ingress_s, latency_s); overlap o = 0 (1 buffer),
             0.5 (2), 1 (>=3), raised by resident CTAs: o' = 1-(1-o)/r;
             body = max(compute, mem) + (1-o')*min(compute, mem)
  extras     spill_s = spill_bytes*threads*2 per k-step at 128 B/clk/SM (local memory, not
             overlapped); store_s = last round's C store; epilogue = a tile's C bytes at the SM's
             share of HBM write bandwidth (a wave stores at once); ramp = CTA start + prologue
             latency + epilogue + drain per tile (a persistent program starts once; with TMA its
             next tile's loads overlap the epilogue); idle programs cost idle_cta_cycles each;
             splitk_s = split*M*N*4 B of atomics (x2, at L2) plus C zeroing, or fp32 partials
             written and re-read; launch floor launch_s per launch.
Empty launches (a grid with a 0 dimension, e.g. the leftover-rows launch when M divides
evenly) run nothing and are skipped; a shape whose launches are all empty, a negative grid,
a tile or warp count below 1 are "invalid" with the reason, never a division by zero.
bound: the largest term; "memory" = DRAM bandwidth/latency (HBM roofline), L2/SM-port/
shared-memory feed limits count as "compute" (breakdown["limiter"] names the exact term),
"latency" = launch floor + ramp dominate. A launch without tt.dot (a split-K reduce or an
epilogue pass) costs the floor plus reading split fp32 partials and writing C. Invalid (shared >
max per CTA, regs*threads > regs per SM, threads > 1024, no dot at all) -> bound "invalid",
fraction 0, time inf.

Error: evaluators/model/fit.md, per shape class, out of sample (`make calibrate`); against the
published figures as they are, large compute-bound shapes within ~25%, small-K, skinny and medium
shapes 1.5-3x optimistic; once each source's speed factor (its machine and harness,
evaluators/model/sources.py) is fitted on its other rows, 24 of 27 rows within 35%.
Use it to rank, with the error each figure carries (evaluators/model/classes.py).
"""

from __future__ import annotations

import dataclasses
import math

from .constants import (
    ELEM_BYTES,
    KIB,
    PEAK_CLOCK_GHZ,
    SMEM_BYTES_PER_CLK,
    Constants,
    GpuSpec,
    load_constants,
)
from .launch import ExecutedWork, KernelLaunch


def _fitted() -> tuple[Constants | None, str]:
    # A broken fitted.json must not stop `make calibrate` from rewriting it (the fit passes its own
    # constants); the judge, which uses the fitted ones, stops with the file's problem.
    try:
        return load_constants(), ""
    except ValueError as e:
        return None, str(e)


CONSTANTS, CONSTANTS_ERROR = _fitted()


@dataclasses.dataclass(frozen=True)
class ShapeEstimate:
    shape: tuple[int, int, int]
    time_s: float
    tflops: float
    fraction_of_peak: float
    bound: str  # "compute" | "memory" | "latency" | "invalid"
    breakdown: dict  # seconds / factors per term


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _precision_key(dtype: str, allow_tf32: bool) -> str:
    if dtype == "fp32":
        return "tf32" if allow_tf32 else "fp32"
    return dtype if dtype in ("fp16", "bf16") else "fp16"


def peak_tflops(gpu: GpuSpec, key: str) -> float:
    """Dense peak of one rate key on `gpu` (datasheet): tf32x3 is three TF32 dots; fp8 on a GPU
    without fp8 tensor cores runs at the fp16 rate (Triton upcasts)."""
    if key == "tf32x3":
        return gpu.dense_tflops["tf32"] / 3
    if key in gpu.dense_tflops:
        return gpu.dense_tflops[key]
    return gpu.dense_tflops["fp16"]


def _flops_per_clk(gpu: GpuSpec, key: str) -> float:
    """FLOPs per clock per SM at one rate key: the datasheet peak over SMs x the peak's clock."""
    return peak_tflops(gpu, key) * 1e12 / (gpu.sm_count * PEAK_CLOCK_GHZ.get(gpu.name, gpu.clock_ghz) * 1e9)


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


# ------------------------------------------------------------------ terms, one function each


def occupancy(launch: KernelLaunch, gpu: GpuSpec) -> int:
    """CTAs resident per SM: the least of the CTA, warp, register and shared-memory limits (CUDA
    occupancy rules; the driver reserves 1 KiB of shared memory per CTA)."""
    threads = launch.num_warps * 32
    regs = _cdiv(_regs(launch), 8) * 8  # allocation granularity
    limits = [
        gpu.max_ctas_per_sm,
        gpu.max_warps_per_sm // launch.num_warps,
        gpu.regs_per_sm // (regs * threads),
    ]
    if launch.shared > 0:
        limits.append(gpu.smem_per_sm // (launch.shared + KIB))
    return max(1, min(limits))


def waves(programs: int, occ: int, gpu: GpuSpec) -> tuple[int, int]:
    """(waves, resident CTAs per SM in a wave) for `programs` that do work: w = ceil(P / (SMs*occ)),
    r = min(occ, ceil(P / SMs)); the busiest SM runs w*r programs (wave quantisation)."""
    return _cdiv(programs, gpu.sm_count * occ), min(occ, _cdiv(programs, gpu.sm_count))


def step_cycles(
    launch: KernelLaunch, gpu: GpuSpec, key: str, elem: int, c: Constants
) -> tuple[float, float, bool]:
    """Compute: throughput cycles of one k-step (one BMxBNxBK dot) of one CTA, its MMA efficiency,
    and whether wgmma is used. max(MMA cycles, shared-memory operand reads) + issue overhead;
    rows padded to the MMA shape (16 per mma.sync warp, 64 per wgmma warpgroup)."""
    bm, bn, bk = launch.tile  # type: ignore[misc]
    warps = launch.num_warps
    flops_per_clk = _flops_per_clk(gpu, key)
    cuda_cores = key == "fp32"
    wgmma = launch.uses_wgmma and gpu.has_wgmma and not cuda_cores
    if cuda_cores:  # CUDA-core FMAs, operands through shared memory
        eff, bm_p, wm = c.cuda_core_efficiency, bm, max(1, min(warps, bm // 16))
    elif wgmma:  # warpgroups of 4 warps, 64 rows each, B read from shared once per warpgroup
        groups = max(1, warps // 4)
        wm = max(1, min(groups, bm // 64))
        wn_g = max(1, groups // wm)
        n_inst = max(8, bn // wn_g)  # N of each wgmma instruction: wider amortises the A fetch
        eff, bm_p = c.wgmma_efficiency * n_inst / (n_inst + 8), max(bm, 64 * wm)
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
    issue = c.issue_cycles_tma if launch.uses_tma else c.issue_cycles
    return max(mma, smem_bytes / SMEM_BYTES_PER_CLK) + issue, eff, wgmma


def extra_work_cycles(work: ExecutedWork, gpu: GpuSpec, c: Constants) -> float:
    """Compute beyond the main dot's k-steps, per busiest program: every other dot at its own
    type's rate, and the CUDA-core arithmetic at the fp32 FMA rate (a dot on zeros, a loop of
    multiply-adds: all executed work is priced)."""
    cycles = 0.0
    main = work.main_dot
    for key, tile, flops in work.dot_flops:
        if main is not None and (key, tuple(tile)) == main[:2]:
            continue
        eff = c.cuda_core_efficiency if key == "fp32" else gpu.mma_efficiency_no_wgmma
        cycles += flops / (_flops_per_clk(gpu, key) * eff)
    return cycles + work.cuda_flops / (_flops_per_clk(gpu, "fp32") * c.cuda_core_efficiency)


def loop_flops_cycles(flops_per_step: float, steps: int, gpu: GpuSpec, c: Constants) -> float:
    """Compile facts only (no executed count yet): the float arithmetic the compiled K loop runs per
    step besides the dot (a scale multiply, an add into an accumulator the MMA does not hold), at
    the CUDA-core fp32 rate, for every step of the busiest program."""
    return steps * flops_per_step / (_flops_per_clk(gpu, "fp32") * c.cuda_core_efficiency)


def overlap(stages: int, resident: int) -> float:
    """Pipelining: fraction of the shorter of compute and memory hidden under the longer. From the
    COMPILED operand buffers (never the launch option): 1 buffer (no async copies) hides nothing,
    2 half, >= 3 all; other resident CTAs hide the rest in turn: o' = 1 - (1 - o) / r."""
    o = {1: 0.0, 2: 0.5}.get(max(1, stages), 1.0)
    return 1 - (1 - o) / max(1, resident)


def _port(gpu: GpuSpec, c: Constants) -> float:
    """Bytes per clock one SM moves to or from L2 (Constants.sm_port_bytes_per_clk; half before Hopper)."""
    return c.sm_port_bytes_per_clk * (1.0 if gpu.has_wgmma else 0.5)


def epilogue_cycles(tile_bytes: int, working: int, gpu: GpuSpec, c: Constants) -> float:
    """Storing one tile of C: its bytes at the SM's share of HBM write bandwidth when the SMs of a wave
    store at once (programs of a wave finish together), or at the L2->SM port rate if faster. A plain
    kernel with one CTA per SM cannot overlap this with the next tile's loads."""
    clock = gpu.clock_ghz * 1e9
    port = _port(gpu, c)
    storing = max(1, min(working, gpu.sm_count))
    share = gpu.hbm_gbps * 1e9 * c.hbm_efficiency / (clock * storing)  # bytes/clk per SM
    return tile_bytes / min(port, share)


def ramp_cycles(tiles_per_prog: int, latency: float, epilogue: float, tma: bool, c: Constants) -> float:
    """Launch and ramp per program: a CTA starts once, fills its pipeline and drains its stores per
    tile; a persistent program (several tiles) starts once, and with TMA its next tile's loads also
    overlap the epilogue (Triton tutorial 09)."""
    if tiles_per_prog > 1 and tma:
        return c.cta_start + latency + tiles_per_prog * epilogue + c.epilogue_latency
    if tiles_per_prog > 1:
        return c.cta_start + tiles_per_prog * (latency + epilogue + c.epilogue_latency)
    return c.cta_start + latency + epilogue + c.epilogue_latency


def splitk_seconds(split: int, m: int, n: int, elem: int, atomics: bool, gpu: GpuSpec, c: Constants) -> float:
    """Split-K reduction: split fp32 partials of C added at L2 (atomics: read-modify-write, plus
    zeroing C first) or written and re-read by a second pass."""
    if split <= 1:
        return 0.0
    hbm = gpu.hbm_gbps * 1e9 * c.hbm_efficiency
    seconds = split * m * n * 4 * 2 / (gpu.l2_gbps * 1e9)
    return seconds + ((c.launch_s / 2 + m * n * elem / hbm) if atomics else split * m * n * 4 / hbm)


def memory_seconds(
    launch: KernelLaunch, shape: tuple, geometry: dict, gpu: GpuSpec, elem: int, c: Constants
) -> dict:
    """Memory: bytes requested at L2, unique DRAM traffic with L2 reuse (grouped ordering reads a
    square-ish block of tiles per wave; panels re-read across waves unless A and B fit in L2),
    and the latency the compiled pipeline keeps in flight (Little's law)."""
    m, n, k = shape
    bm, bn, bk = launch.tile  # type: ignore[misc]
    g = geometry
    programs, steps, k_prog, occ = g["working"], g["steps"], g["k_prog"], g["occupancy"]
    clock = gpu.clock_ghz * 1e9
    step_bytes = (min(bm, m) * bk + bk * min(bn, n)) * elem  # masked rows are not fetched
    requested = programs * steps * step_bytes
    wave = min(programs, gpu.sm_count * occ)
    tm, tn = _cdiv(m, bm), _cdiv(n, bn)
    if wave >= tm * tn:  # a wave covers the whole C plane (per K chunk)
        wave_bytes = (m * k_prog + k_prog * n) * elem * (wave / (tm * tn))
    else:  # grouped ordering: a square-ish block of tiles
        rm = min(tm, math.ceil(math.sqrt(wave)))
        rn = min(tn, _cdiv(wave, rm))
        wave_bytes = (min(rm * bm, m) * k_prog + k_prog * min(rn * bn, n)) * elem * g["tiles_per_program"]
    unique = (m * k + k * n) * elem
    rereads = max(unique, wave_bytes * programs / max(wave, 1))
    fit = min(1.0, c.l2_fit * gpu.l2_bytes / unique)
    dram = min(requested, max(unique, rereads - fit * (rereads - unique))) if requested else unique
    l2_hit = max(0.0, 1.0 - dram / requested) if requested else 0.0
    c_bytes = m * n * (4 if g["split"] > 1 and not launch.atomics else elem)
    port = _port(gpu, c)
    latency = l2_hit * c.l2_latency + (1 - l2_hit) * c.dram_latency
    return {
        "dram_s": (dram + c_bytes) / (gpu.hbm_gbps * 1e9 * c.hbm_efficiency),
        "l2_s": requested / (gpu.l2_gbps * 1e9),
        "ingress_s": g["per_sm"] * steps * step_bytes / (port * clock),
        "latency_s": g["waves"] * steps * latency / max(1, launch.buffers - 1) / clock,
        "l2_hit": l2_hit,
        "latency_cycles": latency,
    }


def _geometry(launch: KernelLaunch, shape: tuple, gpu: GpuSpec) -> dict:
    """Programs, split-K, tiles per program, k-steps of the busiest program and waves. From the grid,
    or, when the executed work is known, from what ran: programs that exit at once are not working,
    and the busiest program's main-dot FLOPs give its k-steps."""
    m, n, k = shape
    bm, bn, bk = launch.tile  # type: ignore[misc]
    programs = math.prod(launch.grid)
    tiles = _cdiv(m, bm) * _cdiv(n, bn)
    work = launch.work
    working = min(programs, max(1, work.working)) if work is not None else programs
    split = working // tiles if working > tiles else 1
    tiles_per_prog = _cdiv(tiles, working) if working < tiles else 1
    k_prog = _cdiv(k, split)
    steps = tiles_per_prog * _cdiv(k_prog, bk)
    if work is not None and work.main_dot is not None:
        steps = max(1, round(work.main_dot[2] / (2 * bm * bn * bk)))
    elif work is not None:
        steps = 0  # no dot ran: CUDA-core work only (extra_work_cycles)
    occ = occupancy(launch, gpu)
    w, resident = waves(working, occ, gpu)
    return {"programs": programs, "working": working, "tiles": tiles, "split": split,
            "tiles_per_program": tiles_per_prog, "k_prog": k_prog, "steps": steps, "occupancy": occ,
            "waves": w, "resident": resident, "per_sm": w * resident}  # fmt: skip


def _estimate_launch(
    launch: KernelLaunch, shape: tuple[int, int, int], dtype: str, gpu: GpuSpec, key: str, split_hint: int,
    c: Constants,
) -> dict:  # fmt: skip
    m, n, k = shape
    elem = ELEM_BYTES.get(dtype, 2)
    clock = gpu.clock_ghz * 1e9
    hbm = gpu.hbm_gbps * 1e9 * c.hbm_efficiency
    if launch.tile is None:  # reduce / epilogue pass: read split fp32 partials, write C
        t = (split_hint * 4 + elem) * m * n / hbm
        return {"time_s": c.launch_s + t, "dram_s": t, "launch_s": c.launch_s}
    bm, bn, _ = launch.tile
    g = _geometry(launch, shape, gpu)
    rate = launch.dot_rate if launch.dot_rate in ("fp16", "bf16", "fp8", "tf32", "tf32x3", "fp32") else key
    step, eff, wgmma = step_cycles(launch, gpu, rate, elem, c)
    program_cycles = g["steps"] * step
    if launch.work is not None:  # what ran, counted: it holds the loop's arithmetic too
        program_cycles += extra_work_cycles(launch.work, gpu, c)
    else:
        program_cycles += loop_flops_cycles(launch.loop_flops, g["steps"], gpu, c)
    compute_s = g["per_sm"] * program_cycles / clock
    mem = memory_seconds(launch, shape, g, gpu, elem, c)
    mem_s = max(mem["dram_s"], mem["l2_s"], mem["ingress_s"], mem["latency_s"])
    o = overlap(launch.buffers, g["resident"])
    body = max(compute_s, mem_s) + (1 - o) * min(compute_s, mem_s)
    threads = launch.num_warps * 32
    spill_s = (
        g["per_sm"] * g["steps"] * (launch.spill_bytes or 0) * threads * 2 / (SMEM_BYTES_PER_CLK * clock)
    )
    rounds = g["waves"] * g["tiles_per_program"]  # C is stored in this many rounds; the last is exposed
    store_s = m * n * elem / rounds / hbm
    epilogue = epilogue_cycles(bm * bn * elem, g["working"], gpu, c)
    ramp = ramp_cycles(g["tiles_per_program"], mem["latency_cycles"], epilogue, launch.uses_tma, c)
    idle = g["programs"] - g["working"]  # programs that exit at once: dispatched and retired, spread over SMs
    ramp_s = (g["waves"] * ramp + _cdiv(idle, gpu.sm_count) * c.idle_cta_cycles) / clock
    splitk_s = splitk_seconds(g["split"], m, n, elem, launch.atomics, gpu, c)
    total = c.launch_s + body + spill_s + store_s + ramp_s + splitk_s
    return {
        "time_s": total,
        "occupancy": g["occupancy"],
        "waves": g["waves"],
        "split": g["split"],
        "tiles_per_program": g["tiles_per_program"],
        "working_programs": g["working"],
        "pipeline_stages": launch.buffers,
        "wgmma": wgmma,
        "mma_efficiency": eff,
        "step_cycles": step,
        "compute_s": compute_s,
        "dram_s": mem["dram_s"],
        "l2_s": mem["l2_s"],
        "ingress_s": mem["ingress_s"],
        "latency_s": mem["latency_s"],
        "l2_hit": mem["l2_hit"],
        "pipeline": body / max(compute_s, mem_s, 1e-30),
        "spill_s": spill_s,
        "store_s": store_s,
        "ramp_s": ramp_s,
        "splitk_s": splitk_s,
        "launch_s": c.launch_s,
        "executed": launch.work is not None,
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
    constants: Constants | None = None,
) -> ShapeEstimate:
    """Modelled time of one entry-point call (the sum of its launches) on `gpu`, with `constants`
    (default: CONSTANTS, the fitted table).

    Launches with an empty grid are skipped; if none is left, or a launch's facts cannot be
    modelled, the estimate is "invalid" (time inf, fraction 0) with breakdown["reason"].
    Raises ValueError for a shape with a dimension < 1 (tasks never hold one: a judge bug)."""
    c = constants or CONSTANTS
    if c is None:
        raise ValueError(CONSTANTS_ERROR)
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
    parts = [_estimate_launch(lc, shape, dtype, gpu, key, split_hint, c) for lc in launches]
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


def slowed(estimate: ShapeEstimate, factor: float, why: str) -> ShapeEstimate:
    """`estimate` taken `factor` (>= 1) times slower, with the reason in its breakdown: a shape the
    judge could not run is priced no better than the shapes it ran say (evaluators/cpu_stages.py)."""
    if factor <= 1 or estimate.bound == "invalid":
        return estimate
    breakdown = {**estimate.breakdown, "slowed_by": factor, "slowed_why": why}
    return dataclasses.replace(
        estimate,
        time_s=estimate.time_s * factor,
        tflops=estimate.tflops / factor,
        fraction_of_peak=estimate.fraction_of_peak / factor,
        breakdown=breakdown,
    )


def modelled_fitness(estimates: list[ShapeEstimate]) -> float:
    """Geometric mean of the modelled fraction of peak; 0 if any shape is invalid, zero or not finite."""
    if not estimates or any(
        e.bound == "invalid" or not math.isfinite(e.fraction_of_peak) or e.fraction_of_peak <= 0
        for e in estimates
    ):
        return 0.0
    return math.exp(sum(math.log(e.fraction_of_peak) for e in estimates) / len(estimates))
