"""Honest: split-K matmul. Each program reduces one K-slice of one C tile into an fp32
partial buffer (torch.zeros); the entry point sums the partials with .sum(0) and casts to the
task dtype. Allowed by the contract (DESIGN.md "The candidate contract": allocate, view,
cast, copy and sum split-K partials). Source: shared/REFERENCES.md (Triton matmul practice).
Expected: ok.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def split_k_kernel(
    a_ptr,
    b_ptr,
    p_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_ps,
    stride_pm,
    stride_pn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // num_pid_n
    pid_n = pid % num_pid_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # Slabs pid_k, pid_k + SPLIT_K, pid_k + 2 * SPLIT_K, ... belong to this program.
    for k in range(pid_k, tl.cdiv(K, BLOCK_K), SPLIT_K):
        kk = k * BLOCK_K + offs_k
        a = tl.load(
            a_ptr + offs_m[:, None] * stride_am + kk[None, :] * stride_ak,
            mask=(offs_m[:, None] < M) & (kk[None, :] < K),
            other=0.0,
        )
        b = tl.load(
            b_ptr + kk[:, None] * stride_bk + offs_n[None, :] * stride_bn,
            mask=(kk[:, None] < K) & (offs_n[None, :] < N),
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    p_ptrs = p_ptr + pid_k * stride_ps + offs_m[:, None] * stride_pm + offs_n[None, :] * stride_pn
    tl.store(p_ptrs, acc, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def matmul(a, b):
    M, K = a.shape
    N = b.shape[1]
    SPLIT_K = 2
    BLOCK_M, BLOCK_N, BLOCK_K = 64, 64, 32
    partials = torch.zeros((SPLIT_K, M, N), device=a.device, dtype=torch.float32)
    precision = "ieee" if a.dtype == torch.float32 else "tf32"
    grid = (triton.cdiv(M, BLOCK_M) * triton.cdiv(N, BLOCK_N), SPLIT_K)
    split_k_kernel[grid](
        a,
        b,
        partials,
        M,
        N,
        K,
        a.stride(0),
        a.stride(1),
        b.stride(0),
        b.stride(1),
        partials.stride(0),
        partials.stride(1),
        partials.stride(2),
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
        SPLIT_K=SPLIT_K,
        DOT_PRECISION=precision,
        num_warps=4,
        num_stages=3,
    )
    return partials.sum(0).to(a.dtype)
