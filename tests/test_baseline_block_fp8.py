"""kernels/baselines/vllm_block_fp8_matmul.py, the kernel of figures.toml's vllm-blockfp8 rows: its
algorithm under Triton's interpreter (slow), its block scales on CPU (fast)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PATH = ROOT / "kernels" / "baselines" / "vllm_block_fp8_matmul.py"


def _module():
    spec = importlib.util.spec_from_file_location("block_fp8", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_block_scales_take_each_blocks_largest_magnitude_to_fp8s_largest_value():
    m = _module()
    x = torch.zeros(3, 260)
    x[0, 5], x[2, 200], x[1, 259] = -896.0, 4.48, 2.0  # blocks of 1x128: columns 0..127, 128..255, 256..259
    q, scale = m.quantize_blocks(x, 1, 128, fp8=False)
    assert scale.shape == (3, 3)
    assert scale[0, 0] == pytest.approx(896.0 / m.FP8_MAX) and scale[2, 1] == pytest.approx(4.48 / m.FP8_MAX)
    assert q[0, 5] == pytest.approx(-m.FP8_MAX) and q[2, 200] == pytest.approx(m.FP8_MAX)
    assert q[1, 259] == pytest.approx(m.FP8_MAX)  # the ragged last block (4 columns) has its own scale
    assert scale[1, 0] == pytest.approx(1e-12 / m.FP8_MAX)  # an all-zero block: no division by zero
    fp8, _ = m.quantize_blocks(x, 1, 128, fp8=True)
    assert fp8.dtype == torch.float8_e4m3fn
    w, wscale = m.quantize_blocks(torch.randn(300, 200), 128, 128, fp8=False)
    assert wscale.shape == (3, 2) and w.abs().max() <= m.FP8_MAX + 1e-3  # 128x128 weight blocks, padded


INTERPRET = """
import importlib.util, torch
spec = importlib.util.spec_from_file_location("block_fp8", {path!r})
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
m.FP8 = False  # the interpreter cannot multiply fp8: the same scaled operands in fp16
torch.manual_seed(0)
for rows, cfg in ((5, (16, 32, 128, 1, 4, 5)), (70, (64, 64, 128, 16, 4, 3))):
    # K = 300: a masked K tail and a ragged last scale group; N = 200: a ragged last weight block
    a = torch.randn(rows, 300, dtype=torch.float16) * torch.linspace(0.1, 30, 300, dtype=torch.float16)
    b = torch.randn(200, 300, dtype=torch.float16).t()  # B as the [K, N] view of a Linear weight [N, K]
    bm, bn, bk, group, warps, stages = cfg
    config = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group, num_warps=warps, num_stages=stages)
    c = m.launch(a, b, config).float()
    ref = a.float() @ b.float()
    err = ((c - ref).abs().max() / ref.abs().max()).item()
    assert err < 1.5e-2, (rows, cfg, err)  # bf16 output (8 bits of mantissa) and fp16 scaled operands
print("ok")
"""


@pytest.mark.slow
def test_block_fp8_kernel_computes_the_product_under_the_interpreter():
    """Two of the rows' configs (16x32 with 5 stages, 64x64 grouped), each with a K tail, ragged
    blocks and a column scale that varies 300x across K: a scale applied to the wrong group fails."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    code = INTERPRET.format(path=str(PATH))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
