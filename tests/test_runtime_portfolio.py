"""evolve export --portfolio: a synthetic measured population whose best differs per shape bucket yields
one module whose dispatcher picks each bucket's kernel (re-judged on its bucket first: a refused
verdict passes to the next), falls back where no kernel beat torch.matmul, and runs them under the
interpreter in a fresh process."""

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton

from evaluators.evaluation import Evaluation, ShapeResult
from evolve.config import UsageError
from evolve.export import write_portfolio
from evolve.export.portfolio import bucket_of
from evolve.store import Store

REPO = Path(__file__).resolve().parents[1]
SEED = (REPO / "kernels/seeds/tiled_matmul.py").read_text()
GPU = "cuda:NVIDIA H200"
SHAPES = {
    "decode": (8, 64, 64),
    "skinny": (64, 64, 64),
    "small_k": (512, 64, 64),
    "large": (2048, 2048, 2048),
}
TASK = """
[task]
name = "buckets"
op = "matmul"
dtype = "bf16"
layouts = ["nn", "nt"]

[shapes]
train = [[8, 64, 64], [64, 64, 64], [512, 64, 64], [2048, 2048, 2048]]
held_out = [[12, 64, 64], [96, 64, 64]]
check = [[32, 32, 32]]
"""
# Stored speedups per bucket; "refused" is the best on small_k but fails when judged again there.
SPEEDUPS = {
    "seed": {"decode": 1.0, "skinny": 1.0, "small_k": 1.0, "large": 0.7},
    "A": {"decode": 2.0, "skinny": 1.1, "small_k": 1.2, "large": 0.9},
    "B": {"decode": 1.5, "skinny": 1.8, "small_k": 1.1, "large": 0.8},
    "C": {"decode": 1.2, "skinny": 1.2, "small_k": 1.6, "large": 0.95},
    "refused": {"decode": 0.5, "skinny": 0.5, "small_k": 1.9, "large": 0.5},
}
SITE = sorted({str(Path(torch.__file__).parents[1]), str(Path(triton.__file__).parents[1])})


def verdict(speedups: dict, shapes: list, held: list, status: str = "ok", layouts=("nn", "nt")) -> dict:
    rows = [
        ShapeResult(
            shape=s, layout=layout, kind=kind, speedup=speedups[bucket_of(s)] if kind == "train" else None
        )
        for kind, group in (("train", shapes), ("held_out", held), ("check", [(32, 32, 32)]))
        for s in group
        for layout in layouts
    ]
    figures = [speedups[bucket_of(s)] for s in shapes]
    fitness = math.exp(sum(map(math.log, figures)) / len(figures)) if status == "ok" else 0.0
    return Evaluation(status, GPU, fitness, "measured", shapes=rows, stage="verified").to_dict()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("portfolio")
    (root / "buckets.toml").write_text(TASK)
    ids, sources = {}, {}
    with Store.create(root / "runs/p/run.sqlite", "p", {"task": str(root / "buckets.toml")}, seed=0) as s:
        for i, (key, speedups) in enumerate(SPEEDUPS.items()):
            source = SEED.replace("GROUP_M=8", f"GROUP_M={2 + i}")
            cid = s.add_candidate(
                source, proposer="seed" if key == "seed" else "mutator", island=0, generation=i
            )
            s.add_evaluation(cid, verdict(speedups, list(SHAPES.values()), []))
            ids[key], sources[source] = cid, key
    return {"root": root, "folder": root / "runs/p", "ids": ids, "sources": sources}


def fake_judge(run: dict, calls: list):
    """The bucket's figures again (the GPU judge's stand-in); "refused" is incorrect when re-judged."""

    def judge(source: str, task) -> dict:
        key = run["sources"][source]
        calls.append((key, task.name, [tuple(s) for s in task.train], [tuple(s) for s in task.held_out]))
        status = "incorrect" if key == "refused" else "ok"
        return verdict(SPEEDUPS[key], list(task.train), list(task.held_out), status, task.layouts)

    return judge


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_portfolio_picks_the_best_per_bucket(run, tmp_path):
    calls: list = []
    out, choices = write_portfolio(run["folder"], tmp_path / "folio.py", judge=fake_judge(run, calls))
    ids = run["ids"]
    assert [(c.name, c.candidate_id) for c in choices] == [
        ("decode", ids["A"]), ("skinny", ids["B"]), ("small_k", ids["C"]), ("large", None),
    ]  # fmt: skip
    # Each included kernel was judged again on its bucket's training and held-out shapes first, then
    # on the backward products (dA (M, K, N), dB (K, N, M)) of the training shapes that fall in its
    # bucket: a backward product is dispatched by its own shape.
    assert calls == [
        ("A", "buckets:decode", [(8, 64, 64)], [(12, 64, 64)]),
        ("A", "buckets:decode:backward", [(8, 64, 64)], []),
        ("B", "buckets:skinny", [(64, 64, 64)], [(96, 64, 64)]),
        ("B", "buckets:skinny:backward", [(64, 64, 8), (64, 64, 64), (64, 64, 512)], []),
        ("refused", "buckets:small_k", [(512, 64, 64)], []),
        ("C", "buckets:small_k", [(512, 64, 64)], []),
        ("C", "buckets:small_k:backward", [(512, 64, 64)], []),
    ]
    assert choices[2].tried == [f"#{ids['refused']} incorrect 0"]
    assert choices[3].reason == "no kernel beat torch.matmul here; the best 0.95"
    module = load(out)
    module.interpreting = lambda: True  # dispatch reads it at call time: CPU tensors take the kernel path
    for bucket, (m, n, k) in SHAPES.items():
        text = module.explain(torch.ones(m, k, dtype=torch.bfloat16), torch.ones(k, n, dtype=torch.bfloat16))
        if bucket == "large":
            assert (
                text == "fallback: bucket large (any shape): no kernel beat torch.matmul here; the best 0.95"
            )
        else:
            key = {"decode": "A", "skinny": "B", "small_k": "C"}[bucket]
            assert text.startswith(f"triton: bucket {bucket} (") and f"candidate #{ids[key]} (" in text, text
    assert "triton: bucket decode (M <= 16), candidate #" in module.explain(
        torch.ones(8, 64, dtype=torch.bfloat16), torch.ones(64, 64, dtype=torch.bfloat16)
    )
    # A decode forward (8x64x64): dA (8x64x64) runs decode's kernel, dB (64x64x8) skinny's, each held
    # to its own kernel's verdict on the backward products.
    lines = module.explain(
        torch.ones(8, 64, dtype=torch.bfloat16), torch.ones(64, 64, dtype=torch.bfloat16), backward=True
    ).splitlines()
    assert f"bucket decode (M <= 16), candidate #{ids['A']} (" in lines[1] and "M=8 N=64 K=64" in lines[1]
    assert f"bucket skinny (M <= 256), candidate #{ids['B']} (" in lines[2] and "M=64 N=64 K=8" in lines[2]
    assert "fitness on the backward products" in lines[2]
    header = out.read_text().split('"""')[1]
    assert (
        "decode   {'M_max': 16}: candidate #" in header
        and "large    {}: torch.matmul: no kernel beat" in header
    )
    assert "bucket decode (M <= 16): dtype float32 not judged" in module.explain(
        torch.ones(8, 64), torch.ones(64, 64)
    )


def test_modelled_portfolio_needs_allow_modelled(run, tmp_path):
    root = tmp_path / "m"
    with Store.create(root / "run.sqlite", "m", {"task": str(run["root"] / "buckets.toml")}, seed=0) as s:
        cid = s.add_candidate(SEED, proposer="seed", island=0, generation=0)
        s.add_evaluation(cid, dataclasses.replace(Evaluation.from_dict(verdict(SPEEDUPS["A"], [SHAPES["decode"]], [])),
                                                  backend="model:h100", fitness_kind="modelled").to_dict())  # fmt: skip
    with pytest.raises(UsageError, match="only modelled.*--allow-modelled"):
        write_portfolio(root, tmp_path / "x.py", judge=lambda source, task: {})


CHILD = r"""
import json, sys
sys.path[:0] = SITE
import torch
import folio

out = {}
for name, (m, n, k) in SHAPES.items():
    if name == "large":
        continue
    a, b = torch.randn(m, k).to(torch.bfloat16), torch.randn(n, k).to(torch.bfloat16).t()  # nt, as nn.Linear
    folio.clear_recent_calls()
    c = folio.matmul(a, b)
    err = ((c.double() - a.double() @ b.double()).abs().max() / (a.double() @ b.double()).abs().max()).item()
    out[name] = [[r["path"], r.get("bucket")] for r in folio.recent_calls()] + [err]
print("RESULTS " + json.dumps(out))
"""


def test_portfolio_module_runs_each_bucket_kernel_under_the_interpreter(run, tmp_path):
    out, _ = write_portfolio(run["folder"], tmp_path / "folio.py", judge=fake_judge(run, []))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "TRITON"))}
    env["TRITON_INTERPRET"] = "1"
    boot = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); SITE = {SITE!r}; SHAPES = {SHAPES!r}\n"
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", boot + CHILD], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULTS ")[-1])
    for bucket in ("decode", "skinny", "small_k"):
        assert result[bucket][:-1] == [["triton", bucket]], result
        assert result[bucket][-1] < 1e-2  # bf16 output rounding
