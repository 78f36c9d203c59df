"""Hardware facts the judge needs: per-architecture resource limits and per-GPU peaks.

Limits: CUDA C Programming Guide, "Technical Specifications per Compute Capability"
(max shared memory per block with opt-in, registers). Peaks: NVIDIA datasheets,
dense (no 2:4 sparsity) tensor-core TFLOP/s; fp32 is the non-tensor-core rate.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TargetLimits:
    """What one CTA of a kernel may use on a compute capability."""

    name: str  # "sm_90"
    capability: int  # 90
    max_shared_per_block: int  # bytes, with the opt-in carve-out
    max_regs_per_thread: int
    regs_per_sm: int
    max_threads_per_block: int


TARGET_LIMITS: dict[str, TargetLimits] = {
    "sm_80": TargetLimits("sm_80", 80, 163 * 1024, 255, 65536, 1024),
    "sm_89": TargetLimits("sm_89", 89, 99 * 1024, 255, 65536, 1024),
    "sm_90": TargetLimits("sm_90", 90, 227 * 1024, 255, 65536, 1024),
}


@dataclasses.dataclass(frozen=True)
class GpuPeak:
    """Dense peak throughput of one GPU model, TFLOP/s by task dtype."""

    name: str
    match: tuple[str, ...]  # substrings of torch.cuda.get_device_name() that identify it
    tflops: dict  # {"fp16": .., "bf16": .., "tf32": .., "fp32": ..}


GPU_PEAKS: tuple[GpuPeak, ...] = (
    GpuPeak("H200", ("H200",), {"fp16": 989.4, "bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    GpuPeak("H100 PCIe", ("H100 PCIe",), {"fp16": 756.0, "bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    GpuPeak("H100 SXM", ("H100",), {"fp16": 989.4, "bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    GpuPeak("A100 SXM", ("A100",), {"fp16": 312.0, "bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    GpuPeak("L40S", ("L40S",), {"fp16": 362.1, "bf16": 362.1, "tf32": 183.0, "fp32": 91.6}),
    GpuPeak("RTX 4090", ("4090",), {"fp16": 165.2, "bf16": 165.2, "tf32": 82.6, "fp32": 82.6}),
)


def peak_for(device_name: str) -> GpuPeak | None:
    """The peak-table row whose match strings occur in the device name (first wins)."""
    for row in GPU_PEAKS:
        if any(m in device_name for m in row.match):
            return row
    return None


def peak_tflops(device_name: str, dtype: str, allow_tf32: bool = False) -> float | None:
    row = peak_for(device_name)
    if row is None:
        return None
    key = "tf32" if dtype == "fp32" and allow_tf32 else dtype
    return row.tflops[key]


def limit_violations(limits: TargetLimits, *, shared: int, regs: int, num_warps: int) -> list[str]:
    """Reasons a compiled kernel cannot launch on this target (empty when it fits)."""
    threads = num_warps * 32
    problems = []
    if shared > limits.max_shared_per_block:
        problems.append(
            f"needs {shared} B of shared memory per CTA, {limits.name} allows {limits.max_shared_per_block} B; "
            "use smaller BLOCK_* tiles or fewer num_stages"
        )
    if regs > limits.max_regs_per_thread:
        problems.append(
            f"needs {regs} registers per thread, {limits.name} allows {limits.max_regs_per_thread}"
        )
    if threads > limits.max_threads_per_block:
        problems.append(
            f"num_warps={num_warps} is {threads} threads, above {limits.max_threads_per_block} per CTA"
        )
    elif regs * threads > limits.regs_per_sm:
        problems.append(
            f"{regs} registers x {threads} threads = {regs * threads} exceeds the {limits.regs_per_sm} "
            f"registers of an SM on {limits.name}; use fewer warps or smaller tiles"
        )
    return problems


@dataclasses.dataclass(frozen=True)
class DeviceProperties:
    """What `torch.cuda.get_device_properties` says about the GPU a target stands for, with the
    attribute names torch uses (so a kernel module reads `multi_processor_count` either way).

    On a CPU the judge's children answer the device queries a real kernel makes (SM count, shared
    memory per block, compute capability) with these, so the launches captured for the compile
    and the launches of the checked run see the same device. Figures: NVIDIA datasheets and the
    CUDA C Programming Guide, "Technical Specifications per Compute Capability"."""

    name: str
    major: int
    minor: int
    multi_processor_count: int
    total_memory: int  # bytes
    shared_memory_per_block: int  # bytes, without the opt-in carve-out
    shared_memory_per_block_optin: int  # bytes
    shared_memory_per_multiprocessor: int  # bytes
    regs_per_multiprocessor: int
    max_threads_per_multi_processor: int
    warp_size: int
    L2_cache_size: int  # bytes
    is_integrated: int = 0
    is_multi_gpu_board: int = 0


_GIB, _MIB, _KIB = 1024**3, 1024**2, 1024
# The GPU each target stands for when none is present: the one the performance model ranks for.
DEVICE_PROPERTIES: dict[str, DeviceProperties] = {
    "sm_80": DeviceProperties(
        "NVIDIA A100-SXM4-80GB",
        8,
        0,
        108,
        80 * _GIB,
        48 * _KIB,
        163 * _KIB,
        164 * _KIB,
        65536,
        2048,
        32,
        40 * _MIB,
    ),
    "sm_89": DeviceProperties(
        "NVIDIA L40S", 8, 9, 142, 48 * _GIB, 48 * _KIB, 99 * _KIB, 100 * _KIB, 65536, 1536, 32, 96 * _MIB
    ),
    "sm_90": DeviceProperties(
        "NVIDIA H100 80GB HBM3",
        9,
        0,
        132,
        80 * _GIB,
        48 * _KIB,
        227 * _KIB,
        228 * _KIB,
        65536,
        2048,
        32,
        50 * _MIB,
    ),
}
