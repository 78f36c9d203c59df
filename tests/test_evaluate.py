"""The cascade end to end on the CPU: the seed is accepted, verdicts arrive as JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluators import Evaluation, Task, evaluate
from evaluators.compile import CompileCache

SEED = Path("kernels/seeds/tiled_matmul.py").read_text()
SMALL = Task(
    name="small",
    dtype="fp16",
    layouts=("nn",),
    train=((512, 512, 512),),
    held_out=(),
    check=((48, 40, 72),),
    trials=2,
    fresh=0,  # exact shapes: these tests count rows and compare verdicts (fresh shapes: test_fresh_shapes.py)
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return CompileCache(tmp_path_factory.mktemp("compile-cache"))


def test_seed_is_ok_and_reports_compile_facts(cache):
    ev = evaluate(
        SEED, SMALL, cache=cache, timeout_s=120, stage="verified"
    )  # cover shapes: the expensive stage
    assert (ev.status, ev.stage) == ("ok", "verified"), ev.feedback
    # no GPU: a labelled, modelled fitness on the training shape (H100 for the sm_90 target)
    assert ev.backend == "model:h100" and ev.fitness_kind == "modelled" and 0.01 < ev.fitness < 1.0
    assert "MODELLED (not measured)" in ev.feedback
    (check,) = [s for s in ev.shapes if s.kind == "check"]
    (train,) = [s for s in ev.shapes if s.kind == "train"]
    (cover,) = [s for s in ev.shapes if s.kind == "cover"]  # the 512^3 path (128-row tiles), checked small
    assert cover.max_scaled_err <= cover.tolerance and ev.provenance["cover_shapes"][0]["covers"] == [
        512,
        512,
        512,
    ]
    assert (check.kind, check.shape, train.kind, train.shape) == (
        "check",
        (48, 40, 72),
        "train",
        (512, 512, 512),
    )
    assert check.max_scaled_err <= check.tolerance
    assert train.tflops > 0 and train.fraction_of_peak == pytest.approx(train.tflops / 989.4, rel=1e-3)
    # every launch is compiled for the target: the training shape's and the check shape's
    assert len(ev.compile) == 2  # (the cover shape's launch is the training shape's specialisation)
    assert ev.provenance["compile_specialisations"]["specialisations"] == 2
    kernel = max(ev.compile, key=lambda k: k["shared"])  # the training shape's 128x128 tile
    assert kernel["shared"] > 0 and kernel["regs"] > 0 and kernel["spill_bytes"] == 0
    assert kernel["uses_wgmma"] is True  # sm_90 and a 128x128 tile at 512^3
    assert ev.provenance["interp_bf16_dot"] in ("ok", "patched")
    # the compile is cached by (source, specialisation, target)
    again = evaluate(SEED, SMALL, cache=cache, timeout_s=120, memo=False)
    assert again.status == "ok" and again.seconds["compile"] < ev.seconds["compile"]
    # and a finished verdict is remembered whole
    memo = evaluate(SEED, SMALL, cache=cache)
    assert memo.provenance["memo_hit"] is True and memo.status == "ok" and memo.seconds["memo"] < 0.5
    assert memo.shapes == again.shapes


def test_strict_fp32_seed_uses_ieee_dots(cache):
    task = Task(
        name="f32",
        dtype="fp32",
        layouts=("nn",),
        train=((256, 256, 256),),
        held_out=(),
        check=((32, 32, 32),),
        trials=1,
    )
    ev = evaluate(SEED, task, cache=cache, timeout_s=120)
    assert ev.status == "ok", ev.feedback
    assert {d["precision"] for k in ev.compile for d in k["dots"]} == {"ieee"}
    assert {d["a"] for k in ev.compile for d in k["dots"]} == {"f32"}


def test_compile_limit_is_enforced(cache):
    huge = SEED.replace(
        "return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)",
        "return dict(BLOCK_M=256, BLOCK_N=256, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=5)",
    )
    big = Task(
        name="big",
        dtype="fp16",
        layouts=("nn",),
        train=((1024, 1024, 1024),),
        held_out=(),
        check=((48, 40, 72),),
        trials=1,
    )
    ev = evaluate(huge, big, cache=cache, timeout_s=300)
    assert ev.status == "compile_error", ev.feedback
    assert "shared memory" in ev.feedback and "sm_90" in ev.feedback


def test_without_a_model_the_cpu_verdict_has_no_fitness(cache):
    ev = evaluate(SEED, SMALL, cache=cache, model_gpu=None)
    assert ev.status == "ok" and ev.backend == "cpu:interpreter"
    assert ev.fitness == 0.0 and ev.fitness_kind == "none" and "no fitness" in ev.feedback


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "evaluators", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_json_is_last_line_even_for_broken_kernels(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import os\ndef matmul(a, b:\n")
    out = _cli("check", str(broken), "--task", "runs/demo_cpu.toml", "--json")
    assert out.returncode == 1
    ev = Evaluation.from_dict(json.loads(out.stdout.strip().splitlines()[-1]))
    assert ev.status == "rejected" and "line 2" in ev.feedback
    assert set(json.loads(out.stdout.splitlines()[-1])) >= {
        "status",
        "backend",
        "fitness",
        "fitness_kind",
        "feedback",
        "shapes",
        "compile",
        "seconds",
        "provenance",
    }


def test_cli_bad_arguments_are_clear(tmp_path):
    out = _cli("check", "kernels/seeds/tiled_matmul.py", "--task", "runs/missing.toml")
    assert out.returncode == 2 and "no such task file" in out.stderr and "Traceback" not in out.stderr
    out = _cli("check", str(tmp_path / "nope.py"), "--task", "runs/demo_cpu.toml")
    assert out.returncode == 2 and "no such kernel file" in out.stderr
    out = _cli("check", "kernels/seeds/tiled_matmul.py", "--task", "runs/demo_cpu.toml", "--shapes", "1,2")
    assert out.returncode == 2 and "M,N,K" in out.stderr


def test_split_work_balances_by_shape_work_and_keeps_order():
    from evaluators.check_stage import split_work

    groups = [((64, 64, 64), "nn"), ((300, 260, 280), "nn"), ((64, 64, 64), "nt"), ((300, 260, 280), "nt")]
    shares = split_work(groups, 2)
    assert sorted(g for share in shares for g in share) == sorted(groups)  # each group exactly once
    assert [len(s) for s in shares] == [2, 2]  # one large and one small shape each
    assert all(share == [g for g in groups if g in share] for share in shares)  # the groups' own order
    assert split_work(groups[:1], 3) == [groups[:1]]  # never an empty share


def test_checks_split_across_two_children_reach_the_same_verdict():
    from pathlib import Path

    from evaluators import evaluate, load_task

    task = load_task("runs/demo_cpu.toml")
    seed = Path("kernels/seeds/tiled_matmul.py").read_text()
    ev = evaluate(seed, task, memo=False, check_children=2, stage="provisional")  # the check shapes' split
    assert ev.status == "ok", ev.feedback
    checked = [(s.shape, s.layout) for s in ev.shapes if s.kind == "check"]
    assert checked == [(tuple(shape), layout) for shape in task.check for layout in task.layouts]
    assert all(s.max_scaled_err is not None and s.tolerance for s in ev.shapes if s.kind == "check")


def test_the_parent_judges_on_one_thread_and_restores_the_callers_setting(monkeypatch):
    import importlib

    import torch

    from evaluators import evaluate, load_task

    evaluate_module = importlib.import_module("evaluators.evaluate")  # the package exports the function
    seen = []
    real_run = evaluate_module._Run.run
    monkeypatch.setattr(
        evaluate_module._Run, "run", lambda self: seen.append(torch.get_num_threads()) or real_run(self)
    )
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        evaluate("import os\n", load_task("runs/demo_cpu.toml"), memo=False)  # rejected statically: fast
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
