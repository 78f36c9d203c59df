"""kernels/runtime in-process, with a stand-in entry point (no Triton launch here: the exported kernel
itself runs under the interpreter in tests/test_export.py): which path each call takes and why,
autograd through the op, nn.Linear patching, and that the runtime imports only torch and triton."""

import ast
from pathlib import Path

import pytest
import torch

import kernels.runtime as rt
from kernels.runtime import dispatch

RUNTIME = Path(rt.__file__).parent
JUDGED = {
    "label": "cuda:NVIDIA TEST (measured)",
    "kind": "measured",
    "gpu": "NVIDIA TEST",
    "dtypes": ["bfloat16"],
    "layouts": ["nn", "nt"],
    "min_shape": [8, 8, 8],
    "max_elements": 1 << 20,
}
# The verdict on the backward products (here: their own smallest shape, larger than the forward's).
JUDGED["backward"] = {**JUDGED, "label": "cuda:NVIDIA TEST (measured, backward)", "min_shape": [16, 16, 16]}
ENTRY_CALLS: list[tuple] = []


def stand_in(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """What the kernel computes (in float64, rounded once), recording the strides it was handed."""
    ENTRY_CALLS.append((tuple(a.shape), a.stride(), tuple(b.shape), b.stride()))
    return (a.double() @ b.double()).to(a.dtype)


@pytest.fixture
def runtime(monkeypatch):
    """The stand-in configured, with the interpreter said to be on (so CPU tensors take the kernel path)."""
    rt.configure(stand_in, JUDGED, "evolve_test_runtime", pick_config=lambda m, n, k: {"BLOCK_M": 16})
    monkeypatch.setattr(dispatch, "interpreting", lambda: True)
    monkeypatch.setattr(dispatch, "ensure_interpreter_fixes", lambda: {})
    ENTRY_CALLS.clear()
    rt.clear_recent_calls()
    yield rt


def bf16(*shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape))).to(torch.bfloat16)


def test_runtime_imports_only_torch_triton_and_stdlib():
    for path in RUNTIME.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom) and getattr(node, "level", 0) == 0:
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                for name in names:
                    top = name.split(".")[0]
                    assert top not in ("evolve", "evaluators", "kernels"), f"{path.name} imports {name}"


def test_paths_and_reasons(runtime):
    a, b = bf16(32, 16), bf16(16, 24)
    assert runtime.explain(a, b).startswith("triton: config BLOCK_M=16 (layout nn, bfloat16, M=32 N=24 K=16")
    assert runtime.explain(a, bf16(24, 16).t()).startswith("triton: config BLOCK_M=16 (layout nt")
    cases = {
        "dtype float32 not judged (judged: bfloat16)": (a.float(), b.float()),
        "layout tn (a column-major, b row-major) not judged (judged: nn, nt)": (bf16(16, 32).t(), b),
        "too small: 4x4x4 is below the smallest shape the kernel was judged on (8x8x8": (
            bf16(4, 4),
            bf16(4, 4),
        ),
        "neither row- nor column-major": (bf16(32, 32)[:, ::2], b),
        "b has 3 dimensions": (a, bf16(2, 16, 24)),
        "empty product (0x24x16)": (bf16(0, 16), b),
    }
    for reason, (x, y) in cases.items():
        text = runtime.explain(x, y)
        assert text.startswith("fallback: ") and reason in text, (reason, text)
        assert torch.equal(runtime.matmul(x, y), torch.matmul(x, y))  # the fallback is torch.matmul
    assert "dtype bfloat16 x float16 not judged" in runtime.explain(a, b.half())
    with pytest.raises(RuntimeError, match="same dtype"):  # as torch.matmul says it
        runtime.matmul(a, b.half())
    assert ENTRY_CALLS == []  # every one of them fell back
    assert {c["path"] for c in runtime.recent_calls()} == {"fallback"}


def test_broadcast_rows_fall_back(runtime):
    row = bf16(1, 16).expand(32, 16)  # stride (0, 1): 32 rows on one storage row
    assert "neither row- nor column-major" in runtime.explain(row, bf16(16, 24))


def test_cpu_without_interpreter_falls_back(runtime, monkeypatch):
    monkeypatch.setattr(dispatch, "interpreting", lambda: False)
    assert runtime.explain(bf16(32, 16), bf16(16, 24)) == (
        "fallback: CPU tensors run the Triton kernel only under TRITON_INTERPRET=1 (Triton's interpreter)"
    )


def test_leading_dims_flattened_and_values(runtime):
    a, b = bf16(2, 3, 16, 32), bf16(24, 32).t()  # b as nn.Linear passes it: Wᵀ
    out = runtime.matmul(a, b)
    assert out.shape == (2, 3, 16, 24)
    assert ENTRY_CALLS == [((96, 32), (32, 1), (32, 24), (1, 32))]  # one launch, no copies
    torch.testing.assert_close(out, (a.double() @ b.double()).to(torch.bfloat16), rtol=0, atol=0)
    vec = runtime.matmul(bf16(32), bf16(32, 24))  # a 1-D a, as torch.matmul takes it
    assert vec.shape == (24,)


def test_autograd_through_the_op(runtime):
    every = ["nn", "nt", "tn"]
    judged = {**JUDGED, "layouts": every, "backward": {**JUDGED["backward"], "layouts": every}}
    rt.configure(stand_in, judged, "evolve_test_runtime")
    a = bf16(32, 16).requires_grad_()
    b = bf16(24, 16).t().detach().requires_grad_()
    (runtime.matmul(a, b).float() * bf16(32, 24).float()).sum().backward()
    a2, b2 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    (a2 @ b2 * bf16(32, 24).double()).sum().backward()
    torch.testing.assert_close(a.grad.double(), a2.grad, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(b.grad.double(), b2.grad, rtol=1e-2, atol=1e-2)
    assert [(c["role"], c["layout"], c["shape"]) for c in runtime.recent_calls()] == [
        ("forward", "nt", (32, 24, 16)),  # C = A·B
        ("backward", "nn", (32, 16, 24)),  # dA = dC·Bᵀ
        ("backward", "tn", (16, 24, 32)),  # dB = Aᵀ·dC
    ]
    text = runtime.explain(a, b, backward=True).splitlines()
    assert [line.split(": ")[1] for line in text] == ["triton", "triton", "triton"]
    assert "fitness on the backward products cuda:NVIDIA TEST (measured, backward)" in text[2]


def test_backward_falls_back_where_tn_was_not_judged(runtime):
    text = runtime.explain(bf16(32, 16), bf16(24, 16).t(), backward=True)
    assert "backward dB = Aᵀ·dC: fallback: layout tn (a column-major, b row-major) not judged" in text
    assert text.startswith("forward: triton")


def test_backward_products_held_to_their_own_verdict(runtime):
    """Backward products are held to judged["backward"], not to the forward's facts: a product the
    forward facts allow but below the backward verdict's smallest shape falls back; a refused backward
    verdict sends every backward product to torch.matmul with its reason, the gradients still right."""
    every = ["nn", "nt", "tn"]
    judged = {**JUDGED, "layouts": every, "backward": {**JUDGED["backward"], "layouts": every}}
    rt.configure(stand_in, judged, "evolve_test_runtime")
    lines = runtime.explain(bf16(12, 8), bf16(8, 12), backward=True).splitlines()
    assert lines[0].startswith("forward: triton")  # 12x12x8 >= 8x8x8
    assert "too small: 12x8x12 is below the smallest shape the backward products of the training " in lines[1]
    refused = {**judged, "backward": {"reason": "judged incorrect on the backward products (64x32x64): x"}}
    rt.configure(stand_in, refused, "evolve_test_runtime")
    rt.clear_recent_calls()
    a = bf16(32, 16).requires_grad_()
    b = bf16(16, 24).requires_grad_()
    (runtime.matmul(a, b).float() ** 2).sum().backward()
    calls = runtime.recent_calls()
    assert [(c["role"], c["path"]) for c in calls] == [
        ("forward", "triton"),
        ("backward", "fallback"),
        ("backward", "fallback"),
    ]
    assert calls[1]["reason"] == (
        "backward products not run on the kernel: judged incorrect on the backward products (64x32x64): x"
    )
    a2, b2 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    ((a2 @ b2) ** 2).sum().backward()
    torch.testing.assert_close(a.grad.double(), a2.grad, rtol=2e-2, atol=2e-1)
    torch.testing.assert_close(b.grad.double(), b2.grad, rtol=2e-2, atol=2e-1)


def test_configure_refuses_facts_without_a_backward_verdict():
    for backward in ({}, {"layouts": ["nn"]}, None):
        judged = {**JUDGED, "backward": backward}
        with pytest.raises(ValueError, match=r"judged\['backward'\] must hold"):
            rt.configure(stand_in, judged, "evolve_test_runtime")
    with pytest.raises(ValueError, match=r"judged facts lack \['backward'\]"):
        rt.configure(stand_in, {k: v for k, v in JUDGED.items() if k != "backward"}, "evolve_test_runtime")


def test_fake_impl_for_meta_tensors(runtime):
    out = torch.ops.evolve_test_runtime.matmul(
        torch.empty(5, 7, device="meta", dtype=torch.bfloat16), torch.empty(7, 3, device="meta")
    )
    assert out.shape == (5, 3) and out.device.type == "meta"


def test_patch_and_unpatch():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2, bias=False))
    model.add_module("attn", torch.nn.MultiheadAttention(8, 2))  # out_proj: a subclass, left alone
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert rt.patch(model, filter=lambda name, m: name != "2") == 1
    assert type(model[0]) is rt.Linear and type(model[2]) is torch.nn.Linear
    assert rt.patch(model) == 1 and type(model[2]) is rt.Linear
    assert type(model.attn.out_proj) is not rt.Linear
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert rt.unpatch(model) == 2 and type(model[0]) is torch.nn.Linear
    layer = rt.Linear(4, 8)
    assert set(layer.state_dict()) == {"weight", "bias"}


def test_autocast_casts_like_torch_matmul(runtime):
    """Under autocast, the op sees what torch.matmul would compute with (bf16 here), so fp32 training
    code under autocast runs the kernel; the output dtype is torch's."""
    a, b = torch.randn(32, 16), torch.randn(16, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert runtime.explain(a, b).startswith("triton: config")
        out = runtime.matmul(a, b)
        assert out.dtype == torch.matmul(a, b).dtype == torch.bfloat16
    assert [c["path"] for c in runtime.recent_calls()] == ["triton"] and ENTRY_CALLS
    assert runtime.explain(a, b).startswith("fallback: dtype float32 not judged")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device answers for itself")
def test_device_queries_answered_only_while_the_entry_runs(runtime):
    """A kernel module reading the SM count on CPU tensors gets the judge's target figures, and only
    during its call."""
    seen = []

    def persistent(a, b):
        seen.append(torch.cuda.get_device_properties(a.device).multi_processor_count)
        seen.append(torch.cuda.get_device_capability())
        return stand_in(a, b)

    props = {"name": "NVIDIA H100 80GB HBM3", "major": 9, "minor": 0, "multi_processor_count": 132}
    rt.configure(persistent, {**JUDGED, "cpu_device": props}, "evolve_test_runtime")
    runtime.matmul(bf16(32, 16), bf16(16, 24))
    assert seen == [132, (9, 0)]
    with pytest.raises((AssertionError, RuntimeError)):  # torch's own answer again: no CUDA here
        torch.cuda.get_device_properties(0)


def test_autotuned_kernels_fall_back_on_cpu(runtime):
    rt.configure(stand_in, JUDGED, "evolve_test_runtime", autotuned=("matmul_kernel",))
    assert runtime.explain(bf16(32, 16), bf16(16, 24)) == (
        "fallback: autotuned kernel (matmul_kernel): Triton's autotuner times its configs on a GPU, never on a CPU"
    )


def test_entry_outputs_are_checked_and_row_major(runtime):
    """The fake impl promises a row-major (M, N) output of a's dtype: a column-major one is made
    row-major, a wrong shape or dtype is an error, never passed on."""
    rt.configure(lambda a, b: stand_in(b.t(), a.t()).t(), JUDGED, "evolve_test_runtime")
    out = runtime.matmul(bf16(32, 16), bf16(16, 24))
    assert out.is_contiguous() and torch.equal(
        out, (bf16(32, 16).double() @ bf16(16, 24).double()).bfloat16()
    )
    rt.configure(lambda a, b: stand_in(a, b).float(), JUDGED, "evolve_test_runtime")
    with pytest.raises(
        RuntimeError, match=r"returned \(32, 24\) torch.float32 for a \(32, 24\) torch.bfloat16"
    ):
        runtime.matmul(bf16(32, 16), bf16(16, 24))
