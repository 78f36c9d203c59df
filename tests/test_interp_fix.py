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
