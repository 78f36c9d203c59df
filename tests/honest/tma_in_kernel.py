"""Honest on a GPU: operands loaded through in-kernel TMA descriptors (tl.make_tensor_descriptor),
which need global scratch memory from the host's Triton allocator at launch. The contract
provides that allocator (the judge's GPU child and exported code install it). Expected: ok."""

import torch
import triton
import triton.language as tl


@triton.jit
def tma_matmul_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    M,
    N,
    K,
    stride_am,
    stride_bk,
    stride_cm,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # Descriptors for row-major A, B, C; TMA fills out-of-bounds boxes with zeros.
    a_desc = tl.make_tensor_descriptor(
        a_ptr, shape=[M, K], strides=[stride_am, 1], block_shape=[BLOCK_M, BLOCK_K]
    )
    b_desc = tl.make_tensor_descriptor(
        b_ptr, shape=[K, N], strides=[stride_bk, 1], block_shape=[BLOCK_K, BLOCK_N]
    )
    c_desc = tl.make_tensor_descriptor(
        c_ptr, shape=[M, N], strides=[stride_cm, 1], block_shape=[BLOCK_M, BLOCK_N]
    )
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    off_m = (pid // num_pid_n) * BLOCK_M
    off_n = (pid % num_pid_n) * BLOCK_N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        acc = tl.dot(a_desc.load([off_m, k]), b_desc.load([k, off_n]), acc)
    c_desc.store([off_m, off_n], acc.to(c_desc.dtype))


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    M, K = a.shape
    _, N = b.shape
    # TMA needs a unit last stride and 16-byte aligned rows: row-major copies, rows padded to 8 elements.
    K8, N8 = triton.cdiv(K, 8) * 8, triton.cdiv(N, 8) * 8
    a_rows = torch.zeros((M, K8), device=a.device, dtype=a.dtype)
    a_rows[:, :K] = a
    b_rows = torch.zeros((K, N8), device=a.device, dtype=a.dtype)
    b_rows[:, :N] = b
    a, b = a_rows, b_rows
    c = torch.empty((M, N8), device=a.device, dtype=a.dtype)
    BLOCK_M, BLOCK_N, BLOCK_K = 128, 128, 64
    grid = (triton.cdiv(M, BLOCK_M) * triton.cdiv(N, BLOCK_N),)
    tma_matmul_kernel[grid](
        a,
        b,
        c,
        M,
        N,
        K,
        a.stride(0),
        b.stride(0),
        c.stride(0),
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
        num_warps=8,
        num_stages=3,
    )
    return c[:, :N].contiguous()
