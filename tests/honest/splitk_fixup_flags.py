"""Honest on a GPU: split-K whose first split waits on flags for the other splits' partial
tiles (a stream-K style fix-up). On a GPU the programs run at once; the interpreter runs them
one by one, so program 0 would wait forever. Expected on CPU: unsupported, never timeout."""

import torch
import triton
import triton.language as tl


@triton.jit
def splitk_fixup_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    ws_ptr,
    flags_ptr,
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
    SPLITS: tl.constexpr,
):
    # Program pid computes split (pid % SPLITS) of tile (pid // SPLITS): K-slabs split, split + SPLITS, ...
    pid = tl.program_id(0)
    tile = pid // SPLITS
    split = pid % SPLITS
    num_pid_n = tl.cdiv(N, BLOCK_N)
    offs_m = (tile // num_pid_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (tile % num_pid_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(split * BLOCK_K, K, BLOCK_K * SPLITS):
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
    tile_offs = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    if split == 0:
        # The owner adds the other splits' partials as each one's flag says it is written.
        for s in range(1, SPLITS):
            while tl.atomic_add(flags_ptr + tile * SPLITS + s, 0, sem="acquire") == 0:
                pass
            acc += tl.load(ws_ptr + (tile * SPLITS + s) * BLOCK_M * BLOCK_N + tile_offs)
        c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))
    else:
        tl.store(ws_ptr + (tile * SPLITS + split) * BLOCK_M * BLOCK_N + tile_offs, acc)
        tl.atomic_xchg(flags_ptr + tile * SPLITS + split, 1, sem="release")


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    M, K = a.shape
    _, N = b.shape
    BLOCK_M, BLOCK_N, BLOCK_K, SPLITS = 64, 64, 32, 2
    c = torch.empty((M, N), device=a.device, dtype=a.dtype)
    tiles = triton.cdiv(M, BLOCK_M) * triton.cdiv(N, BLOCK_N)
    ws = torch.empty((tiles * SPLITS, BLOCK_M * BLOCK_N), device=a.device, dtype=torch.float32)
    flags = torch.zeros((tiles * SPLITS,), device=a.device, dtype=torch.int32)
    splitk_fixup_kernel[(tiles * SPLITS,)](
        a,
        b,
        c,
        ws,
        flags,
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
        SPLITS=SPLITS,
    )
    return c
