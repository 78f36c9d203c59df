"""evolve export: a winner as one module that imports only torch and triton, run where this package is
not importable (a fresh `python -I -S` with only torch's site-packages on its path), under
TRITON_INTERPRET=1 on CPU: a patched bf16 MLP trains like torch.nn.Linear, 3-D inputs, the fallbacks
and what explain() says; the refusals (modelled, provisional, incorrect, missing run or id)."""

import argparse
import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import triton

from evaluators.evaluation import Evaluation, ShapeResult
from evolve.config import UsageError
from evolve.export import add_export_parser, main_export, write_export
from evolve.export.portfolio import default_judge
from evolve.store import Store
from evolve.ui import RUNS_DIR

REPO = Path(__file__).resolve().parents[1]
SEED = (REPO / "kernels/seeds/tiled_matmul.py").read_text()
GPU = "cuda:NVIDIA H200"
TASK = """
[task]
name = "tiny_bf16"
op = "matmul"
dtype = "bf16"
layouts = [{layouts}]

[shapes]
train = [[64, 64, 32], [64, 64, 64]]
held_out = [[96, 64, 64]]
check = [[32, 32, 32], [33, 40, 17]]
"""
# Where torch and triton live: the only path the fresh process gets (with -S no .pth file runs, so
# the editable install of this package is not on it either).
AUTOTUNE = '\n@triton.autotune(configs=[triton.Config({}, num_warps=4)], key=["M", "N", "K"])\n'
SITE = sorted({str(Path(torch.__file__).parents[1]), str(Path(triton.__file__).parents[1])})


def evaluation(
    backend: str,
    layouts: list[str],
    status: str = "ok",
    stage: str = "verified",
    task=None,
    speedup=1.1,
    fitness=1.25,
) -> dict:
    """A stored verdict on the tiny task's shapes (or on `task`'s: train and check ones)."""
    kind = "measured" if backend.startswith("cuda:") else "modelled"
    groups = (
        ("train", [(64, 64, 32), (64, 64, 64)]),
        ("held_out", [(96, 64, 64)]),
        ("check", [(32, 32, 32), (33, 40, 17)]),
    )  # fmt: skip
    if task is not None:
        groups = (("train", list(task.train)), ("check", list(task.check)))
    shapes = [
        ShapeResult(
            shape=s, layout=layout, kind=k, max_scaled_err=1e-3, speedup=speedup if k == "train" else None
        )
        for k, group in groups
        for s in group
        for layout in layouts
    ]
    provenance = {
        "torch": "2.11.0",
        "triton": "3.6.0",
        "device": "cuda",
        "gpu": "NVIDIA H200",
        "bulky": [1] * 50,
    }
    fitness = fitness if status == "ok" else 0.0
    return Evaluation(
        status, backend, fitness, kind, feedback="wrong on 33x40x17" if status != "ok" else "",
        shapes=shapes, provenance=provenance, held_out=1.1, stage=stage, judge="j1",
    ).to_dict()  # fmt: skip


def stand_in_judge(backend: str = GPU, status: str = "ok", speedup: float = 1.25, calls: list | None = None):
    """The judge's stand-in for the backward products: a verdict of `status` on the task it is given
    (its shapes and layouts; every training row at `speedup`, the fitness their geomean, as the GPU
    judge's), recording the tasks; the real CPU judge runs in the `exported` fixture."""

    def judge(source: str, task) -> dict:
        if calls is not None:
            calls.append(task)
        return evaluation(backend, list(task.layouts), status, task=task, speedup=speedup, fitness=speedup)

    return judge


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """runs/r1 in a temp folder: #1 the seed measured on nn/nt/tn, #2 modelled only (nn/nt), #3
    incorrect, #4 provisional, #5 measured on nn/nt only, #6 an @triton.autotune kernel."""
    root = tmp_path_factory.mktemp("exp")
    for name, layouts in (("tiny_bf16.toml", '"nn", "nt", "tn"'),):
        (root / name).write_text(TASK.format(layouts=layouts))
    ids = {}
    with Store.create(root / "runs/r1/run.sqlite", "r1", {"task": str(root / "tiny_bf16.toml")}, seed=0) as s:
        for key, group, backend, layouts, status, stage in (
            ("measured", 8, GPU, ["nn", "nt", "tn"], "ok", "verified"),
            ("modelled", 4, "model:h100", ["nn", "nt"], "ok", "verified"),
            ("incorrect", 2, GPU, ["nn"], "incorrect", "verified"),
            ("provisional", 1, GPU, ["nn"], "ok", "provisional"),
            ("no_tn", 16, GPU, ["nn", "nt"], "ok", "verified"),
            ("autotuned", 32, GPU, ["nn", "nt"], "ok", "verified"),
        ):
            source = SEED.replace("GROUP_M=8", f"GROUP_M={group}")
            if key == "autotuned":
                source = source.replace("\n@triton.jit", AUTOTUNE + "@triton.jit", 1)
            cid = s.add_candidate(source, proposer="seed", island=0, generation=0, note=key)
            s.add_evaluation(cid, evaluation(backend, layouts, status, stage))
            ids[key] = cid
    return {"root": root, "folder": root / "runs/r1", "ids": ids}


def test_export_writes_one_module_with_provenance(run, tmp_path):
    calls: list = []
    out = write_export(
        run["folder"], run["ids"]["measured"], tmp_path / "my_matmul.py", judge=stand_in_judge(calls=calls)
    )
    # The backward products of the training shapes, judged first: dA (M, K, N), dB (K, N, M).
    (task,) = calls
    assert task.name == "tiny_bf16:backward" and task.layouts == ("nn", "nt", "tn") and not task.held_out
    assert task.train == ((64, 32, 64), (32, 64, 64), (64, 64, 64))
    text = out.read_text()
    tree = ast.parse(text)
    header = ast.get_docstring(tree)
    for fact in ("run r1, candidate 1", "1.2500", "cuda:NVIDIA H200 (measured)", "GPU        NVIDIA H200",
                 "torch 2.11.0, triton 3.6.0", f"torch {torch.__version__}", "UTC", "dtype bf16",
                 "layouts nn, nt, tn", "64x64x32 (nn/nt/tn)", "96x64x64", "33x40x17"):  # fmt: skip
        assert fact in header, fact
    assert "MODELLED" not in header
    # Only torch, triton and the standard library at the top; numpy only inside the interpreter fix.
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom)}
    assert top - {"torch", "triton"} <= set(sys.stdlib_module_names), top
    every = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert every - top <= {"numpy"} and not {"evolve", "evaluators", "kernels"} & (every | top)
    kernel = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "KERNEL_SOURCE")
    assert ast.literal_eval(kernel.value) == SEED  # the judged source, whole
    judged = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "JUDGED")
    judged = ast.literal_eval(judged.value)
    assert judged.pop("cpu_device")["multi_processor_count"] == 132  # sm_90's figures, as the judge's
    backward = judged.pop("backward")
    facts = {"label": "cuda:NVIDIA H200 (measured)", "kind": "measured", "gpu": "NVIDIA H200",
             "dtypes": ["bfloat16"], "layouts": ["nn", "nt", "tn"], "min_shape": [33, 40, 17]}  # fmt: skip
    assert judged == {**facts, "max_elements": 6144}
    assert backward == {
        **facts, "max_elements": 4096, "fitness": 1.25, "shapes": [[64, 32, 64], [32, 64, 64], [64, 64, 64]]
    }  # fmt: skip
    said = "backward judged on its products 64x32x64, 32x64x64, 64x64x64 (layouts nn, nt, tn): 1.25 on cuda"
    assert said in " ".join(header.split())
    assert "bulky" not in text  # the judge's working is not copied


def test_refusals_say_why_and_what_exists(run, tmp_path, monkeypatch):
    ids, folder = run["ids"], run["folder"]
    with pytest.raises(UsageError, match=r"only modelled \(model:h100 1.25\).*--allow-modelled"):
        write_export(folder, ids["modelled"], tmp_path / "m.py")
    with pytest.raises(
        UsageError, match="only a provisional verdict.*Exportable candidates: #1 cuda:NVIDIA H200"
    ):
        write_export(folder, ids["provisional"], tmp_path / "m.py")
    with pytest.raises(UsageError, match="was not judged ok .*incorrect \\(wrong on 33x40x17\\)"):
        write_export(folder, ids["incorrect"], tmp_path / "m.py")
    with pytest.raises(
        UsageError, match=r"no candidate 99 \(judged ids: 1..6\); exportable: #1 .*#2 model:h100"
    ):
        write_export(folder, 99, tmp_path / "m.py")
    with pytest.raises(UsageError, match="name it like my_matmul.py"):
        write_export(folder, ids["measured"], tmp_path / "my-matmul.py")
    monkeypatch.chdir(run["root"])
    with pytest.raises(UsageError, match=f"no run named 'nope'; runs in {RUNS_DIR}/: r1"):
        write_export("nope", 1, tmp_path / "m.py")
    with pytest.raises(UsageError, match="task file .*not here.*pass --task"):
        write_export("r1", ids["measured"], tmp_path / "m.py", task_path=tmp_path / "gone.toml")
    assert not list(tmp_path.iterdir())  # a refusal writes nothing


def test_backward_refused_slow_or_untimed_falls_back_and_says_why(run, tmp_path):
    """The backward verdict decides what autograd runs: incorrect, slower than torch.matmul, or (for a
    measured export, no --allow-modelled) only modelled: every backward product falls back, and the
    header says why; --allow-modelled ships a modelled backward verdict, labelled."""
    cases = {
        "incorrect": (stand_in_judge(status="incorrect"), False, "judged incorrect on the backward products"),
        "slower": (stand_in_judge(speedup=0.8), False, "slower than torch.matmul on the backward products (0.8x"),
        "untimed": (stand_in_judge("model:h100"), False, "never timed (no GPU where it was exported)"),
        "allowed": (stand_in_judge("model:h100"), True, "backward judged on its products"),
    }  # fmt: skip
    for name, (judge, allow, said) in cases.items():
        out = write_export(run["folder"], run["ids"]["measured"], tmp_path / f"{name}.py", allow, judge=judge)
        header = ast.get_docstring(ast.parse(out.read_text()))
        assert said in " ".join(header.split()), (name, header)
        if name != "allowed":
            assert "backward (dA = dC·Bᵀ, dB = Aᵀ·dC): torch.matmul: " in header
    assert "1.25 on model:h100 (MODELLED)" in " ".join(header.split())


def test_cli_subcommand(run, tmp_path, capsys, monkeypatch):
    from evolve.export import command

    monkeypatch.setattr(command.portfolio, "default_judge", lambda measured: stand_in_judge("model:h100"))
    parser = argparse.ArgumentParser(prog="evolve")
    add_export_parser(parser.add_subparsers(dest="command"))
    monkeypatch.chdir(run["root"])
    for argv in (["export", "--run", "r1"], ["export", "1", "--portfolio", "--run", "r1"]):
        assert main_export(parser.parse_args(argv)) == 2
        assert "give a candidate ID or --portfolio, one of them" in capsys.readouterr().err
    args = parser.parse_args(
        ["export", str(run["ids"]["modelled"]), "--run", "r1", "-o", str(tmp_path / "m.py")]
    )
    assert main_export(args) == 2 and "--allow-modelled" in capsys.readouterr().err
    args = parser.parse_args(["export", str(run["ids"]["modelled"]), "--run", "r1", "--allow-modelled"])
    assert main_export(args) == 0
    written = Path("runs/r1/exports") / f"candidate_{run['ids']['modelled']}.py"
    assert f"wrote {written}" in capsys.readouterr().out
    header = ast.get_docstring(ast.parse(written.read_text()))
    assert (
        "model:h100 (MODELLED)" in header
        and "MODELLED, NOT MEASURED: exported with --allow-modelled" in header
    )
    assert "dB = Aᵀ·dC                   layout tn: runs the kernel" in header


def test_modelled_export_says_so_in_explain(run, tmp_path):
    """In this process (no interpreter): the module loads, CPU calls fall back and say why; with the
    interpreter said to be on, explain() names the kernel path and says it is MODELLED."""
    import importlib.util

    out = write_export(
        run["folder"],
        run["ids"]["modelled"],
        tmp_path / "modelled_mm.py",
        allow_modelled=True,
        judge=stand_in_judge("model:h100"),
    )
    spec = importlib.util.spec_from_file_location("modelled_mm", out)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    a, b = torch.ones(64, 32, dtype=torch.bfloat16), torch.ones(32, 64, dtype=torch.bfloat16)
    if not os.environ.get("TRITON_INTERPRET"):
        assert module.explain(a, b) == (
            "fallback: CPU tensors run the Triton kernel only under TRITON_INTERPRET=1 (Triton's interpreter)"
        )
        assert torch.equal(module.matmul(a, b), a @ b)
    module.interpreting = lambda: True  # dispatch reads it at call time
    assert "triton: config BLOCK_M=32" in module.explain(
        a, b
    ) and "[MODELLED, not measured" in module.explain(a, b)


CHILD = r"""
import json, sys
sys.path[:0] = SITE
try:
    import evolve  # noqa: F401
    sys.exit("this package is importable here: the test would prove nothing")
except ImportError:
    pass
import torch
import mm

torch.manual_seed(0)
results = {"patched": None, "steps": []}


def mlp():
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32, bias=False))


ours, ref = mlp().to(torch.bfloat16), mlp().to(torch.bfloat16)
ref.load_state_dict(ours.state_dict())
results["patched"] = mm.patch(ours)
results["state_dict_same"] = list(ours.state_dict()) == list(ref.state_dict())
opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1)
opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
x = torch.randn(4, 16, 32).to(torch.bfloat16)  # 3-D: 64 tokens
target = torch.randn(4, 16, 32).to(torch.bfloat16)
for step in range(3):
    mm.clear_recent_calls()
    row = {}
    for name, model, opt in (("ours", ours, opt_ours), ("ref", ref, opt_ref)):
        opt.zero_grad()
        loss = (model(x).float() - target.float()).square().mean()
        loss.backward()
        row[name] = {"loss": loss.item(), "grads": [p.grad.float() for p in model.parameters()]}
        opt.step()
    g = [(a - b).abs().max().item() / b.abs().max().item() for a, b in zip(row["ours"]["grads"], row["ref"]["grads"])]
    results["steps"].append({"loss": row["ours"]["loss"], "loss_ref": row["ref"]["loss"], "grad_rel": g,
                             "calls": [(c["path"], c["layout"], c["shape"]) for c in mm.recent_calls()]})
results["explain_linear"] = mm.explain(x, ours[0].weight.t(), backward=True)
results["explain_mismatch"] = mm.explain(x, ours[2].weight.t())
a, b = torch.randn(2, 48, 40).to(torch.bfloat16), torch.randn(40, 56).to(torch.bfloat16)
results["3d_err"] = (mm.matmul(a, b).double() - a.double() @ b.double()).abs().max().item()
results["3d_torch_err"] = ((a @ b).double() - a.double() @ b.double()).abs().max().item()
results["3d_shape"] = list(mm.matmul(a, b).shape)
fallbacks = {
    "fp32": (a.float(), b.float()), "fp16": (a.half(), b.half()), "tiny": (a[0, :4, :4], b[:4, :4]),
    "stepped": (a[0, :, ::2], b[:20]), "empty": (a[..., :0], b[:0]),
}
results["fallbacks"] = {}
for name, (p, q) in fallbacks.items():
    mm.clear_recent_calls()
    out = mm.matmul(p, q)
    results["fallbacks"][name] = {"explain": mm.explain(p, q), "equal": bool(torch.equal(out, torch.matmul(p, q))),
                                  "paths": [c["path"] for c in mm.recent_calls()]}
print("RESULTS " + json.dumps(results))
"""


def run_child(module: Path, script: str, timeout: int = 240) -> dict:
    """`script` in a fresh interpreter that cannot import this package: -I (no PYTHONPATH, no cwd, no
    user site), -S (no site-packages .pth: no editable install), cwd = the module's folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "TRITON"))}
    env["TRITON_INTERPRET"] = "1"
    boot = f"import sys; sys.path.insert(0, {str(module.parent)!r}); SITE = {SITE!r}\n"
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", boot + textwrap.dedent(script)],
        cwd=module.parent, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULTS ")][-1]
    return json.loads(line.removeprefix("RESULTS "))


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    """The measured winner, its backward products judged for real by the CPU judge (interpreter,
    modelled figures: shipped with allow_modelled, so autograd runs the kernel, labelled MODELLED)."""
    out = tmp_path_factory.mktemp("user") / "mm.py"
    return write_export(run["folder"], run["ids"]["measured"], out, True, judge=default_judge(measured=False))


def test_exported_module_trains_a_patched_mlp_under_the_interpreter(exported):
    """bf16 MLP (32 -> 64 -> 32, 64 tokens of a 3-D batch), 3 SGD steps, against torch.nn.Linear from
    the same weights. Tolerance: losses within 0.1% and every gradient within 2% of its largest entry
    (bf16's epsilon is 0.8%; one rounding flip of an activation moves a later product by about that;
    measured: losses 6e-5 apart, gradients 0.5%)."""
    r = run_child(exported, CHILD)
    assert r["patched"] == 2 and r["state_dict_same"]
    for step in r["steps"]:
        assert abs(step["loss"] - step["loss_ref"]) <= 1e-3 * step["loss_ref"], step
        assert max(step["grad_rel"]) <= 2e-2, step
        # Every product ran the kernel: forward (nt), dA = dC·W (nn), dW through dB = Xᵀ·dC (tn).
        assert sorted(map(tuple, (tuple(c[:2]) + (tuple(c[2]),) for c in step["calls"]))) == sorted([
            ("triton", "nt", (64, 64, 32)), ("triton", "nt", (64, 32, 64)),  # forward, both layers
            ("triton", "nn", (64, 64, 32)),  # dA of layer 2 (layer 1's input needs none)
            ("triton", "tn", (64, 32, 64)), ("triton", "tn", (32, 64, 64)),  # dB of both
        ])  # fmt: skip
    assert r["steps"][-1]["loss"] < r["steps"][0]["loss"]  # it trains
    lines = r["explain_linear"].splitlines()
    assert [line.split(": ")[1] for line in lines] == ["triton", "triton", "triton"], lines
    assert "cuda:NVIDIA H200 (measured)" in lines[0] and "layout tn, bfloat16, M=32 N=64 K=64" in lines[2]
    assert r["explain_mismatch"].startswith("error: inner dimensions differ")
    assert r["3d_shape"] == [2, 48, 56] and r["3d_err"] <= 2 * r["3d_torch_err"] + 1e-6
    reasons = {
        "fp32": "fallback: dtype float32 not judged (judged: bfloat16)",
        "fp16": "fallback: dtype float16 not judged (judged: bfloat16)",
        "tiny": "fallback: too small: 4x4x4 is below the smallest shape the kernel was judged on (33x40x17",
        "stepped": "fallback: a's strides (40, 2) for shape (48, 20) are neither row- nor column-major",
        "empty": "fallback: empty product (96x56x0)",
    }
    for name, reason in reasons.items():
        got = r["fallbacks"][name]
        assert got["explain"].startswith(reason), (name, got)
        assert got["equal"], name  # the fallback is torch.matmul itself
        assert got["paths"] in (["fallback"], []), (name, got)  # [] : handled before the op (none here)


COMPILE_CHILD = r"""
import json, sys
sys.path[:0] = SITE
import torch
import mm

a = torch.randn(2, 32, 48).to(torch.bfloat16).requires_grad_()
b = torch.randn(64, 48).to(torch.bfloat16).t().detach().requires_grad_()


def f(a, b):
    return (mm.matmul(a, b).float() ** 2).mean()


result = {}
try:
    compiled = torch.compile(f, backend=BACKEND, fullgraph=True)
    mm.clear_recent_calls()
    loss = compiled(a, b)
    grads = torch.autograd.grad(loss, (a, b))
    result["calls"] = [[c["path"], c["layout"]] for c in mm.recent_calls()]
    ref = f(a, b)
    ref_grads = torch.autograd.grad(ref, (a, b))
    result["loss_diff"] = abs(loss.item() - ref.item()) / ref.item()
    result["grad_diff"] = max((g.float() - r.float()).abs().max().item() for g, r in zip(grads, ref_grads))
except Exception as e:
    result["error"] = f"{type(e).__name__}: {str(e)[:1500]}"
print("RESULTS " + json.dumps(result))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_of_a_function_calling_the_op(exported, backend):
    """fullgraph: the op is one node (its fake impl gives the shapes), autograd through it; the compiled
    forward and backward run the kernel (inductor on CPU: ~1 min of C++ compiling)."""
    r = run_child(exported, COMPILE_CHILD.replace("BACKEND", repr(backend)), timeout=500)
    if "error" in r and backend == "inductor" and any(w in r["error"] for w in ("Cxx", "C++", "compiler")):
        pytest.skip(f"inductor cannot compile C++ on this machine: {r['error'][:300]}")
    assert "error" not in r, r["error"]
    assert r["calls"] == [["triton", "nt"], ["triton", "nn"], ["triton", "tn"]]
    assert r["loss_diff"] <= 1e-3 and r["grad_diff"] <= 1e-2, r


NO_TN_CHILD = r"""
import json, sys
sys.path[:0] = SITE
import torch
import mm_no_tn as mm

layer = torch.nn.Linear(48, 64).to(torch.bfloat16)
ref = torch.nn.Linear(48, 64).to(torch.bfloat16)
ref.load_state_dict(layer.state_dict())
mm.patch(layer)
x = torch.randn(2, 32, 48).to(torch.bfloat16)
for model in (layer, ref):
    model(x).float().square().mean().backward()
print("RESULTS " + json.dumps({
    "explain": mm.explain(x, layer.weight.t(), backward=True),
    "calls": [[c["path"], c["layout"], c["reason"]] for c in mm.recent_calls()],
    "grad_diff": (layer.weight.grad.float() - ref.weight.grad.float()).abs().max().item(),
    "grad_scale": ref.weight.grad.float().abs().max().item(),
}))
"""


@pytest.mark.slow
def test_backward_falls_back_where_its_products_were_refused(run, tmp_path):
    """A kernel whose verdict on the backward products is incorrect: nn.Linear's forward runs it, both
    backward products fall back, the header and explain() say why, and the gradient is still right."""
    judge = stand_in_judge(status="incorrect")
    module = write_export(run["folder"], run["ids"]["no_tn"], tmp_path / "mm_no_tn.py", judge=judge)
    assert "backward (dA = dC·Bᵀ, dB = Aᵀ·dC): torch.matmul: judged incorrect" in module.read_text()
    r = run_child(module, NO_TN_CHILD)
    lines = r["explain"].splitlines()
    assert lines[0].startswith("forward: triton")
    why = "fallback: backward products not run on the kernel: judged incorrect on the backward products"
    assert lines[1].startswith(f"backward dA = dC·Bᵀ: {why}") and lines[2].startswith(
        f"backward dB = Aᵀ·dC: {why}"
    )
    assert [c[:2] for c in r["calls"]] == [["triton", "nt"], ["fallback", None]]  # x needs no grad: no dA
    assert "judged incorrect" in r["calls"][1][2]
    assert r["grad_diff"] <= 2e-2 * r["grad_scale"], r


def test_compare_per_shape_against_torch_and_the_seed(run, capsys):
    """Stored verdicts of the backend are reused; a candidate without one is judged (here: a stand-in)."""
    from evolve.export.compare import add_compare_parser, compare, main_compare

    ids = run["ids"]
    calls = []

    def judge(source, task):
        calls.append(task.name)
        return evaluation("model:h100", ["nn"])

    table = compare(run["folder"], [ids["no_tn"], ids["measured"]], judge, GPU)
    assert calls == [] and table.columns == [f"#{ids['no_tn']}", f"#{ids['measured']}"]  # #1 is the seed
    row = next(r for r in table.rows if r["shape"] == [64, 64, 32] and r["layout"] == "nn")
    assert row["kind"] == "train" and row["figures"] == {"#5": 1.1, "#1": 1.1}
    text = table.render()
    assert "compare on cuda:NVIDIA H200: speedup over torch.matmul (measured)" in text
    assert "64x64x32          nn     train              1.00          1.10          1.10" in text
    modelled = compare(run["folder"], [ids["modelled"], ids["no_tn"]], judge, "model:h100")
    assert calls == ["tiny_bf16", "tiny_bf16"] and modelled.judged_here == [ids["no_tn"], 1]
    assert modelled.columns == ["#2", "#5", "seed #1"] and "not modelled" in modelled.render()
    parser = argparse.ArgumentParser(prog="evolve")
    add_compare_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["compare", str(run["folder"]), "5", "--json"])
    assert main_compare(args, judge, GPU) == 0
    assert json.loads(capsys.readouterr().out)["geomean_train"] == {
        "#5": pytest.approx(1.1),
        "seed #1": pytest.approx(1.1),
    }
    assert main_compare(parser.parse_args(["compare", str(run["folder"]), "77"]), judge, GPU) == 2
    assert "no candidate 77; run r1 has candidates 1..6" in capsys.readouterr().err


CUDA_CHILD = r"""
import json, sys
sys.path[:0] = SITE
import torch
import mm_cuda as mm

torch.manual_seed(0)
dev = "cuda"
layer = torch.nn.Linear(1024, 2048).to(dev, torch.bfloat16)
ref = torch.nn.Linear(1024, 2048).to(dev, torch.bfloat16)
ref.load_state_dict(layer.state_dict())
mm.patch(layer)
x = torch.randn(4, 512, 1024, device=dev, dtype=torch.bfloat16)
mm.clear_recent_calls()
out, out_ref = layer(x), ref(x)
(out.float().square().mean()).backward()
(out_ref.float().square().mean()).backward()
print("RESULTS " + json.dumps({
    "calls": [[c["role"], c["path"], c["device"]] for c in mm.recent_calls()],
    "explain": mm.explain(x, layer.weight.t(), backward=True),
    "out_err": (out.float() - out_ref.float()).abs().max().item(),
    "out_scale": out_ref.float().abs().max().item(),
    "grad_err": (layer.weight.grad.float() - ref.weight.grad.float()).abs().max().item(),
    "grad_scale": ref.weight.grad.float().abs().max().item(),
}))
"""


@pytest.mark.gpu
def test_exported_module_runs_on_cuda_and_its_backward_follows_its_verdict(run, tmp_path):
    """On a GPU: the export judges the backward products on this GPU (measured), the patched layer's
    forward runs the kernel on CUDA tensors, each backward product runs it only if that verdict was ok
    and not slower than torch.matmul (as the header says), and outputs and gradients match nn.Linear."""
    module = write_export(run["folder"], run["ids"]["measured"], tmp_path / "mm_cuda.py")
    header = ast.get_docstring(ast.parse(module.read_text()))
    backward_runs = "backward judged on its products" in " ".join(header.split())
    env_free = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    boot = f"import sys; sys.path.insert(0, {str(module.parent)!r}); SITE = {SITE!r}\n"
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", boot + textwrap.dedent(CUDA_CHILD)],
                          cwd=module.parent, env=env_free, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(
        [x for x in proc.stdout.splitlines() if x.startswith("RESULTS ")][-1].removeprefix("RESULTS ")
    )
    assert r["calls"][0] == ["forward", "triton", "cuda:0"], r
    paths = {path for role, path, _ in r["calls"] if role == "backward"}
    assert paths == ({"triton"} if backward_runs else {"fallback"}), (header, r["calls"])
    assert r["out_err"] <= 2e-2 * r["out_scale"] and r["grad_err"] <= 2e-2 * r["grad_scale"], r
