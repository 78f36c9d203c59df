"""The version gate's decisions (fake versions through `compat.decide`) and the Triton door on the
installed triton (run by `make test` on torch 2.13 + triton 3.9 and `make test-compat` on 2.11 + 3.6)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from evaluators import compat

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = {"torch": "2.13.0+cpu", "triton": "3.9.0", "numpy": "2.4.6"}
GPU_IMAGE = {"torch": "2.11.0+cu130", "triton": "3.6.0", "numpy": "2.5.0"}


# ---------------------------------------------------------------- the gate's decisions


def test_both_tested_pairs_pass_on_both_devices():
    for versions in (DEFAULT, {**GPU_IMAGE, "numpy": "2.3.5"}):
        for device in ("cpu", "cuda"):
            assert compat.decide(device, versions) == compat.Decision(), (versions, device)


def test_gpu_image_numpy_refuses_only_the_interpreter():
    refused = compat.decide("cpu", GPU_IMAGE).refusal
    assert refused is not None
    # One message: what was found, why, what still works, the fix.
    for part in ("triton 3.6.0", "numpy 2.5.0", "interpreter", "int(self.handle.data)", "--device cuda"):
        assert part in refused, part
    assert "numpy==2.3.5" in refused
    assert compat.decide("cuda", GPU_IMAGE) == compat.Decision()


def test_known_break_bounds():
    # numpy 2.3 with triton 3.6 is fine; triton 3.8 reads int(data.squeeze()) and is fine with numpy 2.5.
    assert compat.decide("cpu", {**GPU_IMAGE, "numpy": "2.3.5"}).refusal is None
    assert compat.decide("cpu", {**GPU_IMAGE, "numpy": "2.4.0"}).refusal is not None
    assert compat.decide("cpu", {**GPU_IMAGE, "triton": "3.8.0"}).refusal is None


def test_untested_versions_are_refused_with_the_range_and_the_fix():
    decision = compat.decide("cuda", {**DEFAULT, "torch": "2.15.0", "triton": "3.10.1"})
    text = decision.refusal
    assert text is not None and decision.warning is None
    assert text.startswith("untested torch and triton: found torch 2.15.0, triton 3.10.1, numpy 2.4.6")
    assert "torch>=2.11,<2.14, triton>=3.6,<3.10, numpy>=2.3,<2.6" in text
    assert ".ci/constraints/torch2.13-triton3.9.txt" in text and compat.ALLOW_UNTESTED_ENV in text
    older = compat.decide("cpu", {**DEFAULT, "torch": "2.10.0"}).refusal
    assert older is not None and older.startswith("untested torch:")


def test_missing_or_unreadable_versions_are_refused():
    assert (
        "found torch 2.13.0+cpu, triton missing"
        in compat.decide("cpu", {**DEFAULT, "triton": "missing"}).refusal
    )
    assert (
        "untested numpy" in compat.decide("cpu", {k: v for k, v in DEFAULT.items() if k != "numpy"}).refusal
    )
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        compat.decide("tpu", DEFAULT)


def test_override_warns_for_untested_but_never_lifts_a_known_break():
    newer = compat.decide("cpu", {**DEFAULT, "triton": "3.10.0"}, allow_untested=True)
    assert newer.refusal is None and "running anyway" in newer.warning
    broken = compat.decide("cpu", GPU_IMAGE, allow_untested=True)
    assert broken.refusal is not None and "interpreter" in broken.refusal


def test_parse_version():
    assert compat.parse_version("2.11.0+cu130") == (2, 11)
    assert compat.parse_version("3.10.0.dev20260101") == (3, 10)
    with pytest.raises(ValueError, match="cannot read a version"):
        compat.parse_version("missing")


# ---------------------------------------------------------------- declared ranges agree


def _declared_range(spec: str) -> tuple[tuple[int, int], tuple[int, int]]:
    low = re.search(r">=(\d+)\.(\d+)", spec)
    high = re.search(r"<(\d+)\.(\d+)", spec)
    assert low and high, f"{spec!r} declares no [low, high) range"
    return (int(low[1]), int(low[2])), (int(high[1]), int(high[2]))


def test_pyproject_declares_the_gates_range():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {}
    for dep in deps:
        name = re.match(r"[A-Za-z0-9_.-]+", dep)[0]
        if name in compat.TESTED:
            declared[name] = _declared_range(dep)
    assert declared == compat.TESTED


def test_each_constraints_file_pins_a_pair_inside_the_range():
    files = sorted((ROOT / ".ci" / "constraints").glob("*.txt"))
    assert [f.name for f in files] == ["torch2.11-triton3.6.txt", "torch2.13-triton3.9.txt"]
    for path in files:
        pins = dict(re.findall(r"^([a-z]+)==(\S+)$", path.read_text(), re.M))
        assert set(pins) == set(compat.TESTED), path
        assert compat.decide("cpu", pins) == compat.Decision(), path
        torch_v, triton_v = re.match(r"torch(\d+\.\d+)-triton(\d+\.\d+)\.txt", path.name).groups()
        assert pins["torch"].startswith(torch_v + ".") and pins["triton"].startswith(triton_v + "."), path


# ---------------------------------------------------------------- the installed versions


def test_known_breaks_match_the_installed_interpreter():
    """The break table against reality: a loop bound read from a kernel argument goes through the
    interpreter's __index__; it fails exactly where the gate refuses the CPU judge."""
    probe = textwrap.dedent(
        """
        import torch, triton, triton.language as tl

        @triton.jit
        def total(x_ptr, n):
            acc = 0.0
            for i in range(0, n):
                acc += tl.load(x_ptr + i)
            tl.store(x_ptr, acc)

        x = torch.ones(4)
        total[(1,)](x, 4)
        assert x[0].item() == 4.0, x
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    refused = compat.decide("cpu", compat.installed_versions()).refusal
    if refused:
        assert run.returncode != 0 and "0-dimensional" in run.stderr, run.stderr[-2000:]
    else:
        assert run.returncode == 0, run.stderr[-2000:]


def test_installed_triton_has_the_internals_the_door_calls():
    assert compat.internals_problem() is None
    moved = compat.internals_problem({"triton.runtime.jit:create_function_from_signature": "sig kparams"})
    assert moved is not None and "create_function_from_signature" in moved and "'backend'" in moved
    gone = compat.internals_problem({"triton.runtime.jit:NoSuchThing": "x"})
    assert gone is not None and "AttributeError" in gone


def test_launcher_classes_are_what_kernels_launch_through():
    import triton
    import triton.language as tl

    def body(x_ptr, BLOCK: tl.constexpr):
        tl.store(x_ptr + tl.arange(0, BLOCK), 1.0)

    jit_cls, interp_cls = compat.launcher_classes()
    assert isinstance(triton.jit(body), jit_cls)
    assert isinstance(compat.interpreted(body), interp_cls)
    builder, handle = compat.interpreter_dot()
    assert callable(builder.create_dot) and handle.__name__ == "TensorHandle"


def test_offline_compile_through_the_door():
    """Binder + pack + compile for sm_90 on meta tensors, no GPU: what the compile stage does."""
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def copy(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)

    target, backend = compat.cuda_backend(90)
    x = torch.empty(1024, device="meta")
    spec = compat.specialise(copy, backend, (x, x, 1024), {"BLOCK": 128})
    assert spec["signature"]["x_ptr"] == "*fp32" and spec["signature"]["n"] == "i32"
    assert spec["constexprs"][(3,)] == 128
    assert spec["options"].num_warps == 4
    facts = compat.kernel_facts(compat.compile_for(copy, spec, target))
    assert {"ttir", "ptx", "cubin"} <= set(facts["asm"])
    assert "ld.global" in facts["asm"]["ptx"] and facts["num_warps"] == 4
    assert (
        isinstance(facts["shared"], int) and facts["regs"] is None
    )  # registers are known once loaded on a GPU


# ---------------------------------------------------------------- where the judge starts


@pytest.fixture
def gpu_image_versions(monkeypatch):
    """The installed versions read as the GPU image's (numpy 2.5 with triton 3.6)."""
    monkeypatch.setattr(compat, "installed_versions", lambda: dict(GPU_IMAGE))


def test_check_command_exits_2_with_the_message(gpu_image_versions, capsys):
    from evaluators.__main__ import main

    seed = str(ROOT / "kernels" / "seeds" / "tiled_matmul.py")
    assert main(["check", seed, "--task", str(ROOT / "runs" / "demo_cpu.toml"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device cpu needs Triton's interpreter") and "numpy 2.5.0" in err


def test_evaluate_raises_before_judging(gpu_image_versions):
    from evaluators import evaluate, load_task

    task = load_task(str(ROOT / "runs" / "demo_cpu.toml"))
    with pytest.raises(compat.UnsupportedEnvironment, match="--device cpu needs Triton's interpreter"):
        evaluate("this is not even Python", task, device="cpu", memo=False)
