"""`make gpu-check` without a GPU: its plan, step runner, baseline configs, modelling, table,
output files and CLI, and that the gpu tests collect where ray is missing. The GPU-only
parts (timing with do_bench, the judge on cuda) are small; their tests are marked gpu."""

import ast
import dataclasses
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from evaluators import EvalOptions, Task, evaluate, load_task, static_rules
from evaluators.evaluation import ShapeResult
from evaluators.gpu_check import CALIBRATION_SHAPES, Check, interleave_by_m, main, make_plan, parse_args
from evaluators.measure import (
    BUDGET_SPENT,
    CompileJob,
    TimedKernel,
    config_label,
    judge_measurements,
    load_module,
    model_jobs,
    render_config,
    share_compile_cache,
    time_problems,
    timing_summary,
)
from evaluators.model import calibration
from evaluators.model.classes import CLASSES, shape_class
from evaluators.steps import Step, StepFailed, exit_status, run_steps

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "kernels" / "baselines" / "tutorial_matmul.py"
TINY_TOML = """
[task]
name = "tiny"
dtype = "bf16"
layouts = ["nn", "nt"]
trials = 1
[shapes]
train = [[256, 512, 256], [16, 512, 256], [256, 256, 512]]
held_out = []
check = [[33, 70, 48]]
"""


@pytest.fixture(scope="module")
def baseline():
    return load_module(BASELINE, "test_gpu_check_baseline")


@pytest.fixture
def tiny_task(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML)
    return path


# ---------------------------------------------------------------- the baseline: tutorial 03's configs


def test_baseline_configs_are_the_tutorials(baseline):
    # triton-lang/triton python/tutorials/03-matrix-multiplication.py, get_cuda_autotune_config(),
    # the 16-bit entries: (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages).
    tutorial = [
        (128, 256, 64, 8, 8, 3), (64, 256, 32, 8, 4, 4), (128, 128, 32, 8, 4, 4), (128, 64, 32, 8, 4, 4),
        (64, 128, 32, 8, 4, 4), (128, 32, 32, 8, 4, 4), (64, 32, 32, 8, 2, 5), (32, 64, 32, 8, 2, 5),
    ]  # fmt: skip
    keys = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")
    assert [tuple(c[k] for k in keys) for c in baseline.CONFIGS] == tutorial
    assert config_label(baseline.CONFIGS[0]) == "128x256x64 g8 w8 s3"
    for c in baseline.CONFIGS:  # every config fits an sm_90 CTA's shared memory (227 KiB), bf16 operands
        assert (c["BLOCK_M"] + c["BLOCK_N"]) * c["BLOCK_K"] * 2 * c["num_stages"] <= 227 * 1024


def test_render_config_changes_only_the_index_line(baseline):
    source = BASELINE.read_text()
    rendered = render_config(source, 5, len(baseline.CONFIGS))
    diff = [(a, b) for a, b in zip(source.splitlines(), rendered.splitlines(), strict=True) if a != b]
    assert len(diff) == 1 and diff[0][1].startswith("CONFIG_INDEX = 5")
    module = ast.parse(rendered)
    index = [
        n.value.value for n in module.body if isinstance(n, ast.Assign) and n.targets[0].id == "CONFIG_INDEX"
    ]
    assert index == [5]
    with pytest.raises(ValueError, match="outside 0..7"):
        render_config(source, 8, 8)
    with pytest.raises(ValueError, match="exactly one 'CONFIG_INDEX"):
        render_config(source.replace("CONFIG_INDEX = 0", "CONFIG_INDEX = CONFIGS"), 1, 8)


def test_baseline_passes_the_judge_on_cpu():
    """The baseline follows the candidate contract and is correct (ragged M and N, a K tail, M=1,
    every layout) for the largest and the smallest config, by the judge's own rules and interpreter."""
    task = Task(name="baseline", dtype="bf16", layouts=("nn", "nt", "tn"), train=((256, 256, 256),),
                held_out=(), check=((33, 70, 48), (1, 40, 96)), trials=1)  # fmt: skip
    source = BASELINE.read_text()
    assert static_rules.check_source(source) == []
    for index in (0, 7):
        rendered = render_config(source, index, 8)
        ev = evaluate(rendered, task, EvalOptions(device="cpu", model_gpu=None, prestart=False, memo=False))
        assert ev.status == "ok", (index, ev.feedback)


# ---------------------------------------------------------------- plan


def test_interleave_by_m_covers_every_m_first():
    shapes = [(4, 1, 1), (4, 2, 2), (1, 1, 1), (1, 2, 2), (8, 1, 1)]
    assert interleave_by_m(shapes) == [(4, 1, 1), (1, 1, 1), (8, 1, 1), (4, 2, 2), (1, 2, 2)]


def test_plan_full_and_quick():
    task = load_task(ROOT / "runs" / "llm_bf16.toml")
    full = make_plan(task, 8, quick=False)
    assert full.seed_task == task and full.config_indices == tuple(range(8))
    assert sorted(full.baseline_shapes) == sorted({*task.train, *CALIBRATION_SHAPES})
    assert full.baseline_layouts == ("nn",)
    ms = {s[0] for s in full.baseline_shapes}  # one shape of every M first
    assert (
        {s[0] for s in full.baseline_shapes[: len(ms)]} == ms >= {1, 8, 16, 256, 512, 1024, 4096, 8192, 16384}
    )
    # the calibration shapes give the model's fit rows in every class (>= 5 each with the task's)
    classes = [shape_class(s) for s in full.baseline_shapes]
    assert all(classes.count(c) >= 5 for c in CLASSES), classes
    quick = make_plan(task, 8, quick=True)
    assert [s[0] for s in quick.seed_task.train] == [4096, 8192, 16384, 1, 8, 16]
    assert quick.seed_task.layouts == ("nn",) and quick.config_indices == (0, 2, 4, 6)
    assert quick.budget_s < full.budget_s <= 225  # 4 minutes with start-up and writing
    for plan in (full, quick):
        assert sum(v for k, v in plan.step_max_s.items() if k != "baseline") < plan.budget_s
    with pytest.raises(ValueError, match="not among the task's layouts"):
        make_plan(dataclasses.replace(task, layouts=("nt",)), 8, False)


# ---------------------------------------------------------------- the step runner


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_steps_record_failures_and_go_on():
    clock, ran = FakeClock(), []

    def ok(deadline):
        ran.append(("ok", deadline))
        clock.now += 10
        return "fine"

    def fails(deadline):
        ran.append(("fails", deadline))
        raise StepFailed("it broke")

    def crashes(deadline):
        ran.append(("crashes", deadline))
        return {}["missing"]

    steps = [
        Step("a", ok, max_s=30),
        Step("b", fails, max_s=30),
        Step("c", crashes, max_s=30),
        Step("d", ok, max_s=100),
        Step("e", ok, max_s=5, enabled=False, why_not="dry run"),
    ]
    saved = []
    results = run_steps(steps, budget_s=60, clock=clock, log=lambda _: None, on_step=saved.append)
    assert [len(s) for s in saved] == [1, 2, 3, 4] and saved[-1][-1].name == "d"  # partial output after each
    assert [(r.name, r.status) for r in results] == [
        ("a", "ok"), ("b", "failed"), ("c", "failed"), ("d", "ok"), ("e", "not run"),
    ]  # fmt: skip
    assert (
        results[1].detail == "it broke" and "KeyError" in results[2].detail and "missing" in results[2].detail
    )
    assert ran[0] == ("ok", 30) and ran[3] == ("ok", 60)  # d gets what is left (50 s), not its 100
    assert exit_status(results) == 1
    assert exit_status([r for r in results if r.status != "failed"]) == 0


def test_steps_skip_when_the_budget_is_spent():
    clock = FakeClock()

    def slow(deadline):
        clock.now = deadline + 7  # overran its share
        return "done"

    steps = [Step("slow", slow, max_s=50), Step("next", slow, max_s=50, min_s=20)]
    results = run_steps(steps, budget_s=60, clock=clock, log=lambda _: None)
    assert results[0].status == "ok" and "overran its 50 s by 7 s" in results[0].detail
    assert results[1].status == "skipped" and "3 s left of 60 s" in results[1].detail
    assert exit_status(results) == 1


# ---------------------------------------------------------------- timing loop (CPU fakes)


def test_time_problems_checks_then_times_and_respects_the_deadline():
    clock, benched = FakeClock(), []

    def bench(fn):
        benched.append(fn)
        clock.now += 1
        return (2e-3, 1.9e-3, 2.2e-3) if len(benched) % 2 else (1e-3, 0.9e-3, 1.1e-3)

    def boom(a, b):
        raise RuntimeError("launch failed")

    kernels = [
        TimedKernel("torch.matmul", None, None, torch.matmul),
        TimedKernel("tutorial03", "good", 0, lambda a, b: a @ b),
        TimedKernel("tutorial03", "wrong", 1, lambda a, b: (a @ b) * 1.5),
        TimedKernel("tutorial03", "boom", 2, boom),
    ]
    gen = torch.Generator().manual_seed(0)
    problems = [((8, 16, 32), "nn"), ((4, 8, 16), "nn"), ((4, 8, 16), "nt")]
    rows = time_problems(
        problems, kernels,
        make_inputs=lambda s, lay: (torch.randn(s[0], s[2], generator=gen), torch.randn(s[2], s[1], generator=gen)),
        reference=lambda a, b: a.double() @ b.double(),
        rel_error=lambda out, ref: float((out.double() - ref).norm() / ref.norm()),
        bench=bench, tolerance=1e-2, deadline=2.5, clock=clock,
    )  # fmt: skip
    first = rows[:4]
    assert [r.status for r in first][:2] == ["ok", "ok"]
    assert first[2].status.startswith("incorrect: relative error 0.5") and first[2].time_s is None
    assert first[3].status == "error: RuntimeError: launch failed"
    assert first[1].time_s == 1e-3 and first[1].torch_time_s == 2e-3 and first[1].p80_s == 1.1e-3
    second = rows[4:8]  # each bench takes 1 s: the deadline passes during the second torch.matmul
    assert [r.status for r in second] == ["ok", BUDGET_SPENT, BUDGET_SPENT, BUDGET_SPENT]
    assert [r.status for r in rows[8:]] == [BUDGET_SPENT] * 4 and len(benched) == 3
    summary, problem = timing_summary(rows)
    assert summary == "3 of 12 (kernel, shape) timed with do_bench"
    assert problem == ("7 cut by the time budget; 2 wrong or failed, first: tutorial03 (8, 16, 32) "
                       "incorrect: relative error 0.5 > 0.01")  # fmt: skip
    assert timing_summary(rows[:2]) == ("2 of 2 (kernel, shape) timed with do_bench", None)
    with pytest.raises(ValueError, match="torch.matmul as kernels"):
        time_problems([], kernels[1:], None, None, None, None, 1e-2, 1.0)


def test_judge_measurements_take_timed_train_rows():
    shapes = [
        ShapeResult((64, 64, 64), "nn", kind="check", max_abs_err=0.0),
        ShapeResult((4096, 4096, 4096), "nt", kind="train", time_s=2e-4, time_iqr_s=1e-6, torch_time_s=1e-4),
        ShapeResult((1, 4096, 4096), "nn", kind="train", time_s=None),
    ]
    rows = judge_measurements(shapes)
    assert [(r.kernel, r.shape, r.layout, r.time_s) for r in rows] == [
        ("seed", (4096, 4096, 4096), "nt", 2e-4), ("torch.matmul", (4096, 4096, 4096), "nt", 1e-4),
    ]  # fmt: skip
    assert rows[0].protocol == "judge" and rows[0].torch_time_s == 1e-4 and rows[0].iqr_s == 1e-6


FACTS = {
    "kernel": "k", "shared": 98304, "num_warps": 8, "num_stages": 3, "uses_wgmma": True, "uses_tma": False,
    "dots": [{"precision": "tf32", "a": "bf16", "b": "bf16", "tile": [128, 128, 64]}], "atomics": False,
    "regs": 116, "spill_bytes": 0,
}  # fmt: skip
LAUNCHES = [{"shape": [4096, 4096, 4096], "layout": "nn", "calls": [{"key": "k1", "grid": [1024]}]}]


class FakeChild:
    def __init__(self, source, task):
        self.source = source

    def send(self, deadline):
        if self.source == "no start":
            raise RuntimeError("child failed to start")

    def result(self, deadline):
        if self.source == "bad":
            raise RuntimeError("offline compile failed in compile: SyntaxError")
        return {"kernels": {"k1": FACTS}, "launches": LAUNCHES}

    def close(self):
        pass


def test_model_jobs_keeps_what_compiled():
    task = {"dtype": "bf16", "allow_tf32": False}
    jobs = [CompileJob("seed", None, "ok", task), CompileJob("tutorial03", 3, "bad", task),
            CompileJob("tutorial03", 4, "no start", task), CompileJob("tutorial03", 5, "ok", task)]  # fmt: skip
    modelled, errors = model_jobs(jobs, "h200", deadline=math.inf, workers=2, child=FakeChild)
    assert set(modelled) == {
        ("seed", None, (4096, 4096, 4096), "nn"),
        ("tutorial03", 5, (4096, 4096, 4096), "nn"),
    }
    assert errors == [
        "tutorial03[3]: RuntimeError: offline compile failed in compile: SyntaxError",
        "tutorial03[4]: RuntimeError: child failed to start",
    ]


def test_in_process_compiles_reuse_the_model_steps_cache(baseline, monkeypatch):
    """What the baseline step's JIT would compile, the model step's children compiled already."""
    from evaluators import compat

    for key in ("TRITON_CACHE_DIR", "TRITON_DEFAULT_FP_FUSION"):
        monkeypatch.setenv(key, "restored after the test")
    task = {"name": "t", "op": "matmul", "dtype": "bf16", "allow_tf32": False, "layouts": ["nn"], "target": "sm_90",
            "train": [[256, 512, 256]], "held_out": [], "check": [[64, 64, 64]], "trials": 1, "source": "t"}  # fmt: skip
    job = CompileJob("tutorial03", 2, render_config(BASELINE.read_text(), 2, 8), task)
    assert model_jobs([job], "h200", deadline=time.monotonic() + 300, workers=1)[1] == []
    cache = Path(share_compile_cache())
    entries = sorted(cache.rglob("*"))
    m, n, k, cfg = 256, 512, 256, baseline.CONFIGS[2]
    a, b, c = (torch.empty(r, s, device="meta", dtype=torch.bfloat16) for r, s in ((m, k), (k, n), (m, n)))
    args = (a, b, c, m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1))
    kwargs = {
        key: cfg[key] for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")
    }
    target, backend = compat.cuda_backend(90)
    compat.compile_for(baseline.tutorial_matmul_kernel, compat.specialise(baseline.tutorial_matmul_kernel, backend,
                                                                         args, kwargs), target)  # fmt: skip
    assert sorted(cache.rglob("*")) == entries  # a cache hit: nothing compiled, nothing written


# ---------------------------------------------------------------- the command


def test_dry_run_end_to_end(tmp_path, tiny_task, capsys):
    """Real compile children (the judge's offline compile), modelled on h200, written and printed."""
    out = tmp_path / "out"
    code = main(["--dry-run", "--model-gpu", "h200", "--task", str(tiny_task), "--out", str(out), "--quick",
                 "--jobs", "2"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"table: {out / 'calibration.md'}" in printed and f"folder: {out}" in printed
    doc = calibration.read_table(out / "calibration.json")
    assert doc["gpu"]["model_gpu"] == "h200" and doc["mode"] == "dry-run"
    assert [(s["name"], s["status"]) for s in doc["steps"]] == [
        ("gpu_tests", "not run"), ("model", "ok"), ("seed", "not run"), ("baseline", "not run"),
    ]  # fmt: skip
    rows = doc["rows"]
    # quick: the first shape of each M (256, 16), layout nn; seed + configs 0, 2, 4, 6
    assert {(tuple(r["shape"]), r["layout"]) for r in rows} == {
        ((256, 512, 256), "nn"),
        ((16, 512, 256), "nn"),
    }
    assert sorted({r["config_index"] for r in rows if r["kernel"] == "tutorial03"}) == [0, 2, 4, 6]
    assert all(r["modelled_tflops"] > 0 and r["measured_tflops"] is None for r in rows)
    labelled = {r["config_index"]: r["config"] for r in rows if r["kernel"] == "tutorial03"}
    assert labelled[0] == "128x256x64 g8 w8 s3"
    assert next(r for r in rows if r["config_index"] == 0)["facts"]["tile"] == [128, 256, 64]


def test_cli_refuses_clearly(tmp_path, tiny_task, capsys):
    if not torch.cuda.is_available():
        assert main(["--task", str(tiny_task), "--out", str(tmp_path)]) == 2
        assert "no CUDA GPU is visible" in capsys.readouterr().err
    assert main(["--dry-run", "--task", str(tiny_task), "--out", str(tmp_path)]) == 2
    assert "--dry-run needs --model-gpu" in capsys.readouterr().err
    assert main(["--dry-run", "--model-gpu", "v100", "--task", str(tiny_task)]) == 2
    assert "--model-gpu 'v100' is unknown; known: a100, h100, h100_nvl, h200" in capsys.readouterr().err
    assert main(["--dry-run", "--model-gpu", "h200", "--task", str(tmp_path / "none.toml")]) == 2
    assert "none.toml" in capsys.readouterr().err
    args = parse_args(
        ["--dry-run", "--model-gpu", "h200", "--task", str(tiny_task), "--baseline-layouts", "tn"]
    )
    with pytest.raises(ValueError, match="not among the task's layouts"):
        Check(args, load_task(tiny_task), None, calibration.ModelGpu("h200", ""))


class ShapeChild(FakeChild):
    """Facts for every (shape, layout) a job asks for: one 128x128x64 launch each."""

    def __init__(self, source, task):
        self.source, self.task = source, task

    def result(self, deadline):
        calls = lambda s: [{"key": "k1", "grid": [-(-s[0] // 128) * -(-s[1] // 128)]}]  # noqa: E731
        launches = [{"shape": list(s), "layout": lay, "calls": calls(s)}
                    for s in self.task["train"] for lay in self.task["layouts"]]  # fmt: skip
        return {"kernels": {"k1": FACTS}, "launches": launches}


def test_full_run_with_the_gpu_parts_faked(tmp_path, tiny_task, monkeypatch, capsys):
    """The whole command as on an H200, with the device-only pieces replaced by CPU fakes: every
    row joins its modelled figures, the seed's verdict and every step land in the table."""
    from evaluators import gpu_check, measure
    from evaluators.evaluation import Evaluation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    monkeypatch.setattr(gpu_check.Check, "gpu_tests", lambda self, deadline: "2 passed, 400 deselected")
    monkeypatch.setattr(gpu_check, "model_jobs", lambda *a: measure.model_jobs(*a, child=ShapeChild))

    def judge(source, task, options):
        assert options.device == "cuda" and not options.memo and not options.work_budget
        assert 0 < options.timeout_s <= 120
        rows = [ShapeResult(s, lay, kind="train", time_s=2e-5, torch_time_s=1e-5)
                for s in task.train for lay in task.layouts]  # fmt: skip
        return Evaluation("ok", "cuda:NVIDIA H200", 0.5, "measured", "measured", rows)

    monkeypatch.setattr(
        sys.modules["evaluators.evaluate"], "evaluate", judge
    )  # the package's name is the function

    def baseline_step(self, deadline):
        kernels = [
            TimedKernel("torch.matmul", None, None, torch.matmul),
            TimedKernel("seed", None, None, torch.mm),
        ]
        kernels += [TimedKernel("tutorial03", config_label(self.baseline.CONFIGS[i]), i, torch.mm)
                    for i in self.plan.config_indices]  # fmt: skip
        problems = [(s, lay) for s in self.plan.baseline_shapes for lay in self.plan.baseline_layouts]
        self.measurements += time_problems(
            problems, kernels, lambda s, lay: (torch.randn(s[0], s[2]), torch.randn(s[2], s[1])),
            lambda a, b: a.double() @ b.double(), lambda o, r: float((o.double() - r).norm() / r.norm()),
            lambda fn: (1e-5, 1e-5, 1e-5), 1e-3, deadline,
        )  # fmt: skip
        return "faked"

    monkeypatch.setattr(gpu_check.Check, "baseline_step", baseline_step)
    monkeypatch.setattr(gpu_check, "CALIBRATION_SHAPES", ((48, 80, 32),))  # one, small: CPU fakes time it
    out = tmp_path / "out"
    assert main(["--task", str(tiny_task), "--out", str(out), "--jobs", "1"]) == 0, capsys.readouterr()
    doc = calibration.read_table(out / "calibration.json")
    assert doc["gpu"] == {"device_name": "NVIDIA H200", "model_gpu": "h200", "model_note": ""}
    assert [s["status"] for s in doc["steps"]] == ["ok"] * 4 and doc["mode"] == "full"
    assert doc["seed_evaluation"]["fitness"] == 0.5 and (out / "seed_evaluation.json").is_file()
    rows = doc["rows"]
    judged = [r for r in rows if r["protocol"] == "judge" and r["kernel"] == "seed"]
    assert len(judged) == 3 * 2 and all(r["speedup_vs_torch"] == pytest.approx(0.5) for r in judged)
    timed = [r for r in rows if r["protocol"] == "do_bench" and r["kernel"] != "torch.matmul"]
    assert len(timed) == (3 + 1) * (1 + 8)  # nn only: the seed and every config on every shape
    assert sum(r["shape"] == [48, 80, 32] for r in timed) == 1 + 8  # the calibration shape too
    assert all(r["modelled_tflops"] and r["ratio"] and r["status"] == "ok" for r in judged + timed)
    assert not [r for r in rows if r["protocol"] is None]  # everything modelled was measured too
    assert len(doc["correlations"]["by_shape"]) == 3 + 1  # each shape its ranking of configs


def test_gpu_tests_step_runs_pytest_and_keeps_its_log(tmp_path, tiny_task, monkeypatch):
    from evaluators import gpu_check

    args = parse_args(["--task", str(tiny_task), "--out", str(tmp_path)])
    check = Check(args, load_task(tiny_task), "NVIDIA H200", calibration.ModelGpu("h200", ""))
    calls = []

    def run(cmd, **kw):
        calls.append((cmd, kw))
        if len(calls) == 3:
            raise subprocess.TimeoutExpired(cmd, kw["timeout"], output=b"collected 3 items")
        return subprocess.CompletedProcess(cmd, len(calls) - 1, "..\n2 passed, 300 deselected in 9.1s\n", "")

    monkeypatch.setattr(gpu_check.subprocess, "run", run)
    assert check.gpu_tests(time.monotonic() + 30) == "2 passed, 300 deselected in 9.1s"
    cmd, kw = calls[0]
    assert cmd[1:] == ["-m", "pytest", "-q", "-rs", "-o", "addopts=", "-m", "gpu", "-p", "no:cacheprovider",
                       "tests", "benchmarks"] and kw["cwd"] == ROOT and 25 < kw["timeout"] <= 30  # fmt: skip
    assert kw["env"]["PYTHONPATH"].split(":")[0] == str(ROOT)
    assert (tmp_path / "gpu_tests.log").read_text().startswith("..")
    with pytest.raises(StepFailed, match="pytest exit status 1: 2 passed"):
        check.gpu_tests(time.monotonic() + 30)
    with pytest.raises(StepFailed, match="did not finish in 30 s"):
        check.gpu_tests(time.monotonic() + 30)
    assert (tmp_path / "gpu_tests.log").read_text() == "collected 3 items"


# ---------------------------------------------------------------- collection without ray

NO_RAY = """
import sys


class _NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.modules.pop("ray", None)
sys.meta_path.insert(0, _NoRay())
"""


def test_gpu_tests_collect_where_ray_is_missing(tmp_path):
    """What gpu-check's first step runs, with `import ray` failing as on the GPU image."""
    (tmp_path / "no_ray_plugin.py").write_text(NO_RAY)
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "pytest", "-p", "no_ray_plugin", "--collect-only", "-q", "-rs", "-o", "addopts=",
           "-m", "gpu", "-p", "no:cacheprovider", "tests", "benchmarks"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "ERROR" not in out and "Interrupted" not in out, out[-3000:]
    assert "tests/test_pool.py" in out and "needs ray" in out  # skipped visibly, with the reason
    assert "benchmarks/test_engine_throughput.py" in out
    assert "test_timing.py::test_torch_matmul_against_itself_on_gpu" in out  # the gpu tests are collected


# ---------------------------------------------------------------- on a GPU


@pytest.mark.gpu
def test_baseline_configs_on_the_gpu(baseline):
    gen = torch.Generator(device="cuda").manual_seed(0)
    for layout in ("nn", "nt"):
        a = torch.randn(300, 200, device="cuda", dtype=torch.bfloat16, generator=gen)
        b = torch.randn(260, 200, device="cuda", dtype=torch.bfloat16, generator=gen)
        b = b.t() if layout == "nt" else b.t().contiguous()
        ref = a.float() @ b.float()
        for config in baseline.CONFIGS:
            out = baseline.launch(a, b, config)
            err = float((out.float() - ref).norm() / ref.norm())
            assert err < 1e-2, (layout, config, err)


@pytest.mark.gpu
def test_present_gpu_has_a_model_table():
    gpu = calibration.model_gpu_for(torch.cuda.get_device_name())
    if "H200" in torch.cuda.get_device_name().upper().split():
        assert gpu.key == "h200"
