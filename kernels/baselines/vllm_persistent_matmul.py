"""Baseline: vLLM's batch-invariant persistent matmul (`matmul_kernel_persistent` in
vllm/model_executor/layers/batch_invariant.py), with one config per launch, as benchmarked on an
H100 NVL in vllm-project/vllm PR #53446 (2026-09, bf16, the "MAIN" column: the configs of
vllm/model_executor/layers/batch_invariant_configs.py's "hopper" table).

Written from the kernel's algorithm, not copied. It is tutorial 09's persistent kernel with vLLM's
details:
- min(#SMs, #tiles) programs; program p walks tiles p, p + #SMs, ... (`tl.range(..., flatten=True)`)
  in grouped order (GROUP_M rows of tiles sweep a column of B);
- rows/columns past the edge are clamped to 0 with `tl.where` (loads stay in bounds) and the offsets
  carry `tl.multiple_of` / `tl.max_contiguous` hints; the K tail is masked;
- the epilogue recomputes its tile from a second counter that trails the loop by #SMs (as vLLM does,
  so the pipeliner can overlap the store with the next tile's loads), then stores masked.
No bias (the calibration rows are plain products) and no int64 offsets (every row's operands hold
fewer than 2^31 elements).

vLLM picks one config per (N, K) weight shape and M bucket; the calibration table
(evaluators/model/figures.toml) sets the six assignments below per row (evaluators/model/fit_rows.py
rewrites those lines). The defaults are vLLM's untuned bf16 config. The module follows the candidate
contract (shared/DESIGN.md).
"""

import torch
import triton
import triton.language as tl

BLOCK_M = 128
BLOCK_N = 128
BLOCK_K = 64
GROUP_M = 8
NUM_WARPS = 8
NUM_STAGES = 3


@triton.jit
def _tile_coords(tile, num_pid_in_group, num_pid_m, GROUP_M: tl.constexpr):
    # Grouped ordering: GROUP_M rows of tiles share a column of B while it is in L2.
    first_m = (tile // num_pid_in_group) * GROUP_M
    rows = min(num_pid_m - first_m, GROUP_M)
    return first_m + (tile % rows), (tile % num_pid_in_group) // rows


@triton.jit
def vllm_persistent_kernel(
    a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    NUM_SMS: tl.constexpr,
):  # fmt: skip
    start = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    k_tiles = tl.cdiv(K, BLOCK_K)
    offs_k = tl.arange(0, BLOCK_K)
    store_tile = start - NUM_SMS  # the epilogue's own counter, one stride behind the loop's
    for tile in tl.range(start, num_pid_m * num_pid_n, NUM_SMS, flatten=True):
        pid_m, pid_n = _tile_coords(tile, num_pid_in_group, num_pid_m, GROUP_M)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rows = tl.where(rows < M, rows, 0)  # clamped: loads stay in bounds, the store is masked
        cols = tl.where(cols < N, cols, 0)
        rows = tl.max_contiguous(tl.multiple_of(rows, BLOCK_M), BLOCK_M)
        cols = tl.max_contiguous(tl.multiple_of(cols, BLOCK_N), BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kk in range(k_tiles):
            ks = kk * BLOCK_K + offs_k
            k_left = K - kk * BLOCK_K
            a = tl.load(
                a_ptr + rows[:, None] * stride_am + ks[None, :] * stride_ak,
                mask=offs_k[None, :] < k_left,
                other=0.0,
            )
            b = tl.load(
                b_ptr + ks[:, None] * stride_bk + cols[None, :] * stride_bn,
                mask=offs_k[:, None] < k_left,
                other=0.0,
            )
            acc = tl.dot(a, b, acc)
        store_tile += NUM_SMS
        pid_m, pid_n = _tile_coords(store_tile, num_pid_in_group, num_pid_m, GROUP_M)
        offs_cm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_cn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        c_ptrs = c_ptr + offs_cm[:, None] * stride_cm + offs_cn[None, :] * stride_cn
        mask = (offs_cm[:, None] < M) & (offs_cn[None, :] < N)
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)


def launch(a: torch.Tensor, b: torch.Tensor, config: dict) -> torch.Tensor:
    """C = A @ B with one config (keys BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages);
    any strides."""
    M, K = a.shape
    K2, N = b.shape
    assert K == K2, "inner dimensions differ"
    c = torch.empty((M, N), device=a.device, dtype=a.dtype)
    bm, bn = config["BLOCK_M"], config["BLOCK_N"]
    sms = torch.cuda.get_device_properties(a.device).multi_processor_count
    grid = (min(sms, triton.cdiv(M, bm) * triton.cdiv(N, bn)),)
    vllm_persistent_kernel[grid](
        a, b, c, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=config["BLOCK_K"], GROUP_M=config["GROUP_M"], NUM_SMS=sms,
        num_warps=config["num_warps"], num_stages=config["num_stages"],
    )  # fmt: skip
    return c


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The candidate-contract entry point: `launch` with the module's config."""
    config = {"BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N, "BLOCK_K": BLOCK_K, "GROUP_M": GROUP_M,
              "num_warps": NUM_WARPS, "num_stages": NUM_STAGES}  # fmt: skip
    return launch(a, b, config)
