"""Cheat by accident (a race): split-K where every K-slice program adds its partial tile into C
with a plain load, add and store (no atomics). Right whenever programs run one after another
(the interpreter), wrong on a GPU, where the slices of one tile run at once and overwrite each
other's sums. Source: shared/REFERENCES.md row "split-K / stream-K partial sums without atomics"
(triton #10594, ROCm/aiter #5428).
Expected: rejected (program (0, 1, 0) reads C[0, 0], stored by program (0, 0, 0) with no ordering).
"""

import torch
import triton
import triton.language as tl


@triton.jit
def splitk_rmw_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_cm,
    stride_cn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    # Program (tile, split) sums K-slabs split, split + SPLIT_K, ... of its tile.
    tile = tl.program_id(0)
    split = tl.program_id(1)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    offs_m = (tile // num_pid_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (tile % num_pid_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(split * BLOCK_K, K, BLOCK_K * SPLIT_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(
            a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak,
            mask=(offs_m[:, None] < M) & (offs_k[None, :] < K),
            other=0.0,
        )
        b = tl.load(
            b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn,
            mask=(offs_k[:, None] < K) & (offs_n[None, :] < N),
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision="ieee")
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(c_ptrs, tl.load(c_ptrs, mask=mask, other=0.0) + acc, mask=mask)  # the race: no atomic


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    M, K = a.shape
    _, N = b.shape
    BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K = 32, 32, 16, 2
    c = torch.zeros((M, N), device=a.device, dtype=a.dtype)
    grid = (triton.cdiv(M, BLOCK_M) * triton.cdiv(N, BLOCK_N), SPLIT_K)
    splitk_rmw_kernel[grid](
        a,
        b,
        c,
        M,
        N,
        K,
        a.stride(0),
        a.stride(1),
        b.stride(0),
        b.stride(1),
        c.stride(0),
        c.stride(1),
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
        SPLIT_K=SPLIT_K,
        num_warps=4,
        num_stages=2,
    )
    return c
