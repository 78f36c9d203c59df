"""Baseline: vLLM's block-scaled W8A8 fp8 matmul (`_w8a8_block_fp8_matmul` in
vllm/model_executor/layers/quantization/utils/fp8_utils.py: weights in 128x128 blocks and activations
in 1x128 groups, each with an fp32 scale), as benchmarked on an H100 SXM in vllm-project/vllm PR #23280
(2025-09, benchmarks/kernels/bench_block_fp8_gemm.py: inputs already quantized, bf16 output,
`triton.testing.do_bench_cudagraph`), with vLLM's tuned configs for N=2112, K=7168.

Written from the kernel's algorithm, not copied:
- one program per BLOCK_M x BLOCK_N tile of C in grouped order (GROUP_M rows of tiles per column);
  rows and columns past the edge wrap round (`% M`, `% N`) so loads stay in bounds, the store is masked;
- per K step: the A and B slabs (the K tail masked), A's scale for each row and B's scale for each
  group of GROUP_N columns in that K group, and acc += dot(a, b) * a_scale[:, None] * b_scale[None, :]
  (a scale per K group, so the dot is not folded into the accumulator as a plain matmul's is).

`matmul(a, b)` follows the candidate contract: it quantizes A per (row, 128 columns) and B^T per
128x128 block to float8_e4m3fn in torch, then launches with the module's config. The published figures
time the kernel on already quantized inputs: the quantization is not part of them and launches no
Triton kernel, so the model (which prices Triton launches) sees what they timed. evaluators/model/fit.py
rewrites the six config lines per row; `FP8 = False` keeps the operands in their own dtype, scaled the
same way (the interpreter, which cannot multiply fp8, checks the algorithm so).
"""

import torch
import triton
import triton.language as tl

BLOCK_M = 64
BLOCK_N = 128
BLOCK_K = 128
GROUP_M = 32
NUM_WARPS = 4
NUM_STAGES = 2
FP8 = True  # quantize A and B to float8_e4m3fn (vLLM's W8A8); False: scaled operands in their own dtype
GROUP_N, GROUP_K = 128, 128  # the weight's quantization block (DeepSeek-V3's [128, 128])
FP8_MAX = 448.0  # largest finite float8_e4m3fn


@triton.jit
def _tile_coords(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    # Grouped ordering: GROUP_M rows of tiles sweep a column of B while it is in L2.
    in_group = GROUP_M * num_pid_n
    first_m = (pid // in_group) * GROUP_M
    rows = min(num_pid_m - first_m, GROUP_M)
    return first_m + (pid % rows), (pid % in_group) // rows


@triton.jit
def block_fp8_kernel(
    a_ptr, b_ptr, c_ptr, as_ptr, bs_ptr, M, N, K, group_n, group_k,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    stride_as_m, stride_as_k, stride_bs_k, stride_bs_n,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    pid_m, pid_n = _tile_coords(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M  # wrapped: loads in bounds, the store masked
    cols = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + cols[None, :] * stride_bn
    a_scales = as_ptr + rows * stride_as_m  # one scale per row and K group
    b_scales = bs_ptr + (cols // group_n) * stride_bs_n  # one per GROUP_N columns and K group
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kk in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - kk * BLOCK_K
        a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        group = kk * BLOCK_K // group_k
        a_s = tl.load(a_scales + group * stride_as_k)
        b_s = tl.load(b_scales + group * stride_bs_k)
        acc += tl.dot(a, b) * a_s[:, None] * b_s[None, :]
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(
        c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn,
        acc.to(c_ptr.dtype.element_ty),
        mask=mask,
    )


def quantize_blocks(x: torch.Tensor, rows: int, cols: int, fp8: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x [R, C] in blocks of rows x cols (edges padded with zeros for the scale): (x / scale as
    float8_e4m3fn, or in x's dtype when not fp8; [R, C]) and the fp32 scales [cdiv(R, rows), cdiv(C,
    cols)], scale = max |x| over the block / FP8_MAX (vLLM's per-block and per-token-group scales)."""
    r, c = x.shape
    rp, cp = triton.cdiv(r, rows) * rows, triton.cdiv(c, cols) * cols
    padded = torch.zeros((rp, cp), dtype=torch.float32, device=x.device)
    padded[:r, :c] = x.float()
    amax = padded.view(rp // rows, rows, cp // cols, cols).abs().amax(dim=(1, 3))
    scale = amax.clamp(min=1e-12) / FP8_MAX
    full = scale.repeat_interleave(rows, 0).repeat_interleave(cols, 1)[:r, :c]
    q = x.float() / full
    return (q.to(torch.float8_e4m3fn) if fp8 else q.to(x.dtype)), scale


def launch(a: torch.Tensor, b: torch.Tensor, config: dict) -> torch.Tensor:
    """C = A @ B (bf16, as vLLM returns it) with one config (keys BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M,
    num_warps, num_stages): A quantized per (row, GROUP_K columns), B^T per GROUP_N x GROUP_K block."""
    M, K = a.shape
    K2, N = b.shape
    assert K == K2, "inner dimensions differ"
    aq, a_s = quantize_blocks(a, 1, GROUP_K, FP8)  # a_s [M, K groups]
    wq, b_s = quantize_blocks(b.t(), GROUP_N, GROUP_K, FP8)  # the weight [N, K]; b_s [N groups, K groups]
    bq = wq.t()  # [K, N] view of the [N, K] weight, as vLLM passes it
    c = torch.empty((M, N), device=a.device, dtype=torch.bfloat16)
    grid = (triton.cdiv(M, config["BLOCK_M"]) * triton.cdiv(N, config["BLOCK_N"]),)
    block_fp8_kernel[grid](
        aq, bq, c, a_s, b_s, M, N, K, GROUP_N, GROUP_K,
        aq.stride(0), aq.stride(1), bq.stride(0), bq.stride(1), c.stride(0), c.stride(1),
        a_s.stride(0), a_s.stride(1), b_s.stride(1), b_s.stride(0),
        BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"], BLOCK_K=config["BLOCK_K"],
        GROUP_M=config["GROUP_M"], num_warps=config["num_warps"], num_stages=config["num_stages"],
    )  # fmt: skip
    return c


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The candidate-contract entry point: `launch` with the module's config."""
    config = {"BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N, "BLOCK_K": BLOCK_K, "GROUP_M": GROUP_M,
              "num_warps": NUM_WARPS, "num_stages": NUM_STAGES}  # fmt: skip
    return launch(a, b, config)
