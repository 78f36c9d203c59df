"""Honest: split-K under @triton.autotune with key, prune_configs_by (early prune, perf_model,
top_k), reset_to_zero, restore_value and a Config pre_hook, plus @triton.heuristics. Expected: ok."""

import torch
import triton
import triton.language as tl


def prune(configs, named_args, **kwargs):
    # Split K only when K is long enough to give every split a few K-slabs.
    return [c for c in configs if c.kwargs["SPLIT_K"] == 1 or named_args["K"] >= 8 * c.kwargs["BLOCK_K"]]


def estimate(**kwargs):
    # A crude cost: programs launched (fewer, bigger tiles first).
    return triton.cdiv(kwargs["M"], kwargs["BLOCK_M"]) * triton.cdiv(kwargs["N"], kwargs["BLOCK_N"])


def clear_flag(nargs):
    nargs["ws_ptr"].zero_()


@triton.autotune(
    configs=[
        triton.Config(
            {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "SPLIT_K": 1}, num_warps=8, num_stages=3
        ),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "SPLIT_K": 2}, num_warps=4, num_stages=3),
        triton.Config(
            {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32, "SPLIT_K": 1},
            num_warps=4,
            num_stages=4,
            pre_hook=clear_flag,
        ),
    ],
    key=["M", "N", "K"],
    prune_configs_by={"early_config_prune": prune, "perf_model": estimate, "top_k": 2},
    reset_to_zero=["ws_ptr"],
    restore_value=["a_ptr"],
)
@triton.heuristics({"EVEN_K": lambda args: args["K"] % (args["BLOCK_K"] * args["SPLIT_K"]) == 0})
@triton.jit
def splitk_kernel(
    a_ptr,
    b_ptr,
    ws_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    # Program (pid, split) owns tile pid of C and the K-slabs split, split + SPLIT_K, ...
    pid = tl.program_id(0)
    split = tl.program_id(1)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // num_pid_n
    pid_n = pid % num_pid_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = split * BLOCK_K + tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K * SPLIT_K)):
        k_left = K - (k * SPLIT_K + split) * BLOCK_K
        if EVEN_K:
            a = tl.load(a_ptrs, mask=offs_m[:, None] < M, other=0.0)
            b = tl.load(b_ptrs, mask=offs_n[None, :] < N, other=0.0)
        else:
            a = tl.load(
                a_ptrs, mask=(offs_m[:, None] < M) & (offs_k[None, :] - split * BLOCK_K < k_left), other=0.0
            )
            b = tl.load(
                b_ptrs, mask=(offs_k[:, None] - split * BLOCK_K < k_left) & (offs_n[None, :] < N), other=0.0
            )
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * SPLIT_K * stride_ak
        b_ptrs += BLOCK_K * SPLIT_K * stride_bk
    # Partial sums of the splits meet in an fp32 workspace (zeroed by the entry point).
    ws_ptrs = ws_ptr + offs_m[:, None] * N + offs_n[None, :]
    tl.atomic_add(ws_ptrs, acc, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    M, K = a.shape
    _, N = b.shape
    ws = torch.zeros((M, N), device=a.device, dtype=torch.float32)

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), meta["SPLIT_K"])

    splitk_kernel[grid](a, b, ws, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1))
    return ws.to(a.dtype)
