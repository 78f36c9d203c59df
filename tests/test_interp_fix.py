"""The bf16 interpreter fix, checked in a fresh process (TRITON_INTERPRET must precede the triton import)."""

import os
import subprocess
import sys

SCRIPT = """
import torch, importlib.util
from evaluators.interp_fix import _selfcheck, ensure_bf16_dot
before = _selfcheck()
status = ensure_bf16_dot()
spec = importlib.util.spec_from_file_location("seed", "kernels/seeds/tiled_matmul.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
a = torch.randn(70, 50).bfloat16(); b = torch.randn(50, 40).bfloat16()
err = (m.matmul(a, b).double() - a.double() @ b.double()).abs().max().item()
print(status, before, _selfcheck(), err)
"""


def test_bf16_dot_is_right_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    status, before, after, err = out.stdout.split()
    # Either upstream is right (no patch) or the self-check found it wrong and the patch fixed it.
    assert (status == "ok" and float(before) < 1e-3) or (status == "patched" and float(before) > 1.0)
    assert float(after) < 1e-3
    assert float(err) < 0.5  # bf16 output rounding at |C| ~ 20 is ~0.06; the raw-storage bug gives ~1e10


ATOMIC_SCRIPT = """
import torch, importlib.util
from evaluators.interp_fix import _atomic_selfcheck, ensure_bf16_atomic_add, ensure_bf16_dot
ensure_bf16_dot()  # the split-K kernel's tl.dot is bf16 too
before = _atomic_selfcheck()
status = ensure_bf16_atomic_add()
spec = importlib.util.spec_from_file_location("splitk", "tests/honest/splitk_atomic_bf16.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
a = torch.randn(70, 150).bfloat16(); b = torch.randn(150, 40).bfloat16()
err = (m.matmul(a, b).double() - a.double() @ b.double()).abs().max().item()
print(status, before is None, _atomic_selfcheck() is None, err)
"""


def test_bf16_atomic_add_works_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run(
        [sys.executable, "-c", ATOMIC_SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    status, upstream_ok, fixed_ok, err = out.stdout.split()
    # Upstream right (no patch), or the self-check found the gap and the patch filled it.
    assert (status, upstream_ok) in (("ok", "True"), ("patched", "False")) and fixed_ok == "True"
    assert float(err) < 0.5  # two bf16 roundings of |C| ~ 12: ~0.1


def test_fp32_to_bf16_rounds_like_torch():
    import numpy as np
    import torch

    from evaluators.interp_fix import _fp32_to_bf16_storage

    x = torch.randn(10000) * 100
    ties = torch.tensor([1.00390625, 1.01171875, -2.0078125])  # exactly half-way between two bf16 values
    x = torch.cat([x, ties, torch.tensor([float("inf"), -float("inf"), 0.0, -0.0])])
    ours = _fp32_to_bf16_storage(x.numpy())
    expected = x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(ours, expected)
    assert np.isnan(_bf16_back(_fp32_to_bf16_storage(np.array([np.nan], np.float32))))[0]


def _bf16_back(bits):
    import numpy as np

    return (bits.astype(np.uint32) << 16).view(np.float32)
