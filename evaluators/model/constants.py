"""The model's tables: the GPUs' datasheet figures (GpuSpec, GPUS) and the model's tunable constants
(Constants, with the source of each value in SOURCES; fitted values from FITTED_PATH, written by
`make calibrate`). Hardware facts are NVIDIA's (datasheets, whitepapers, the CUDA Programming Guide);
efficiencies, latencies and overheads are not published: they are assumptions, fitted to the
calibration table (evaluators/model/figures.toml)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


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
    dense_tflops={
        "fp16": 989.4,
        "bf16": 989.4,
        "fp8": 1978.9,
        "tf32": 494.7,
        "fp32": 66.9,
    },  # datasheet, dense
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
    # H100 NVL (PCIe, 94 GB, 350-400 W): GH100 with 132 SMs like the SXM5 but a lower tensor clock
    # (datasheet: 1671 TFLOP/s bf16 with sparsity = 835.5 dense, 60 fp32, 3.9 TB/s HBM3).
    "h100_nvl": dataclasses.replace(
        H100,
        name="h100_nvl",
        clock_ghz=1.48,  # assumption: the peak's clock (below) x the SXM5's sustained/peak ratio (1.755/1.83)
        dense_tflops={"fp16": 835.5, "bf16": 835.5, "fp8": 1670.5, "tf32": 417.5, "fp32": 60.0},
        hbm_gbps=3900.0,
        l2_gbps=11000.0 * 1.48 / 1.755,  # the SXM5's assumption at this clock
    ),
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
# H100 NVL: 835.5 TFLOP/s / (132 SMs x 4096 FLOP/clk/SM, the GH100's dense 16-bit rate) = 1.545 GHz.
PEAK_CLOCK_GHZ = {"h100": 1.83, "h200": 1.83, "h100_nvl": 1.545, "a100": 1.41}


@dataclasses.dataclass(frozen=True)
class Constants:
    """The model's tunable constants, one table; SOURCES says where each value comes from.

    Hardware facts (SM counts, peaks, shared memory) live in GpuSpec; these are the efficiencies,
    latencies and overheads NVIDIA does not publish. `evaluators/model/fit.py` fits them to the
    calibration table and writes FITTED_PATH, which this module reads at import."""

    launch_s: float = 4e-6  # per-launch floor: launch + first-CTA start + drain
    wgmma_efficiency: float = 0.97  # x N/(N+8) for a wgmma m64nNk16
    cuda_core_efficiency: float = 0.8  # fp32 FMA path (no tensor cores)
    hbm_efficiency: float = 0.92  # achievable fraction of HBM peak
    issue_cycles: float = 24.0  # per k-step: loop, address arithmetic, barriers
    issue_cycles_tma: float = 8.0  # per k-step with TMA: one thread issues the copies
    dram_latency: float = 900.0  # cycles
    l2_latency: float = 300.0  # cycles
    epilogue_latency: float = 500.0  # cycles for the last store of a tile to drain
    cta_start: float = 800.0  # cycles: CTA launch, program-id swizzle, address set-up
    l2_fit: float = 0.75  # fraction of L2 usable to keep A and B resident across waves
    sm_port_bytes_per_clk: float = 128.0  # bytes an SM takes in from L2/HBM per clock (Hopper; Ampere half)
    idle_cta_cycles: float = 300.0  # cycles an SM spends on a CTA that exits at once (launch, retire)


SOURCES = {
    "launch_s": "CUDA-event timings of tiny kernels (~3-5 us per launch, REFERENCES.md timing protocol)",
    "wgmma_efficiency": "CUTLASS/cuBLAS reach ~0.9-0.95 of clock peak with m64n256k16 (assumption, fitted)",
    "cuda_core_efficiency": "assumption: FMA issue with operand loads from shared memory (fitted)",
    "hbm_efficiency": "STREAM-like copies reach ~90-93% of HBM peak (assumption)",
    "issue_cycles": "assumption: loop, address arithmetic and barriers per k-step (fitted)",
    "issue_cycles_tma": "assumption: one thread issues TMA copies (fitted)",
    "dram_latency": "microbenchmarks: ~500 ns HBM latency on Hopper/Ampere (fitted)",
    "l2_latency": "microbenchmarks: ~200 ns L2 latency on Hopper/Ampere (fitted)",
    "epilogue_latency": "assumption: the last store of a tile drains (fitted)",
    "cta_start": "assumption: CTA launch and address set-up before the first load (fitted)",
    "l2_fit": "assumption: L2 share that keeps A and B resident across waves",
    "sm_port_bytes_per_clk": "assumption: L2->SM fabric per SM (not published; A100's 64 B/clk doubled on Hopper)",
    "idle_cta_cycles": "assumption: CTA dispatch and retire with no work (a few hundred cycles per CTA per SM)",
}
FITTED_PATH = Path(__file__).with_name("fitted.json")


def load_constants(path: Path = FITTED_PATH) -> Constants:
    """Constants with the fitted values of `path` (JSON {"constants": {name: value}}) over the
    defaults; the defaults when the file is absent. Raises ValueError naming the file and field
    for an unknown name or a value that is not a positive number."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return Constants()
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e}); rerun `make calibrate` to write it") from e
    values = data.get("constants", {}) if isinstance(data, dict) else None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: field 'constants' must be an object of name -> value")
    known = {f.name for f in dataclasses.fields(Constants)}
    for name, value in values.items():
        if name not in known:
            raise ValueError(f"{path}: constants.{name} is not a model constant (known: {sorted(known)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{path}: constants.{name} = {value!r} must be a positive number")
    return Constants(**{k: float(v) for k, v in values.items()})


SMEM_BYTES_PER_CLK = 128  # 32 banks x 4 B per clock per SM (CUDA Programming Guide): hardware, not fitted

ELEM_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4, "tf32": 4, "fp8": 1}
