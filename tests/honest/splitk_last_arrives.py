"""Honest: split-K where each program stores its partial tile in a workspace, THEN bumps the
tile's arrival counter with tl.atomic_add (acq_rel), and the last program to arrive sums the
partials and writes C (then resets the counter). The atomic publishes the store, and the last
program's atomic acquires every earlier one: ordered on a GPU as under the interpreter.
Expected: ok.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def splitk_last_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    ws_ptr,
    count_ptr,
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
        acc = tl.dot(a, b, acc)
    # The workspace holds each split's partial tile: [split, tile, BLOCK_M * BLOCK_N], fp32.
    tile_offs = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    tiles = tl.num_programs(0)
    tl.store(ws_ptr + (split * tiles + tile) * BLOCK_M * BLOCK_N + tile_offs, acc)
    arrived = tl.atomic_add(count_ptr + tile, 1)  # after the store: it publishes the partial
    if arrived == SPLIT_K - 1:  # the last split of this tile to arrive reduces the partials
        total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for s in range(SPLIT_K):
            total += tl.load(ws_ptr + (s * tiles + tile) * BLOCK_M * BLOCK_N + tile_offs)
        c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
        mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        tl.store(c_ptrs, total.to(c_ptr.dtype.element_ty), mask=mask)
        tl.atomic_xchg(count_ptr + tile, 0)  # ready for the next launch


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    M, K = a.shape
    _, N = b.shape
    BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K = 64, 64, 32, 2
    c = torch.empty((M, N), device=a.device, dtype=a.dtype)
    tiles = triton.cdiv(M, BLOCK_M) * triton.cdiv(N, BLOCK_N)
    ws = torch.empty((SPLIT_K, tiles, BLOCK_M * BLOCK_N), device=a.device, dtype=torch.float32)
    counts = torch.zeros((tiles,), device=a.device, dtype=torch.int32)
    splitk_last_kernel[(tiles, SPLIT_K)](
        a,
        b,
        c,
        ws,
        counts,
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
