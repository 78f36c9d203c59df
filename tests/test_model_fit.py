"""The model's calibration: the table (evaluators/model/figures.toml), the fit and its leave-one-out.

Fast tests use synthetic rows whose truth is known: predictors built from hand-made KernelLaunch
facts and the real estimate_shape, so nothing compiles. The compile of the real table and the
interpreter check of the tutorial-09 kernels are behind @pytest.mark.slow.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evaluators.model import classes, fit, fit_report, fit_rows, sources
from evaluators.model.calibration import SCHEMA as CALIBRATION_SCHEMA
from evaluators.model.constants import FITTED_PATH, GPUS, Constants
from evaluators.model.figures import (
    FIGURES_PATH,
    MEASURED_WEIGHT,
    ROOT,
    FiguresError,
    load_figures,
    measured_rows,
)
from evaluators.model.launch import KernelLaunch
from evaluators.model.perf_model import estimate_shape

H100 = GPUS["h100"]


# ---------------------------------------------------------------- the table


def test_table_parses_and_every_row_has_a_source_and_a_kernel_that_renders():
    rows, ceilings = load_figures()
    assert len(rows) >= 7 and ceilings
    for row in rows:
        assert row.source.startswith("https://github.com/") and row.quote, row.id
        source = (ROOT / row.kernel).read_text()
        rendered = fit_rows.variants(row, source)  # every setting names a line of the kernel file
        assert rendered and all("def matmul(" in s for s in rendered), row.id
        if row.autotune:
            assert len(rendered) == fit_rows.config_count(source) > 1
    fitted = [r for r in rows if not r.exclude]
    assert {classes.shape_class(r.shape) for r in fitted} >= {"large", "small_k"}
    for c in ceilings:  # vendor-library figures (cuBLAS, CUTLASS) are ceilings only, never rows
        assert any(lib in c.library.lower() for lib in ("cublas", "cutlass")) and c.source


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "figures.toml"
    path.write_text(text)
    return path


ROW = """
[[row]]
id = "{id}"
gpu = "h100"
dtype = "fp16"
shape = [1024, 1024, 1024]
layout = "nn"
kernel = "kernels/baselines/tutorial_matmul.py"
settings = {{ CONFIG_INDEX = 0 }}
tflops = {tflops}
source = "https://github.com/triton-lang/triton/issues/3672"
quote = "a line"
"""


def test_errors_name_the_file_the_row_and_the_field(tmp_path):
    path = _write(tmp_path, ROW.format(id="ok", tflops=100) + ROW.format(id="bad", tflops='"fast"'))
    with pytest.raises(FiguresError) as e:
        load_figures(path)
    assert str(path) in str(e.value) and "row 1 (bad)" in str(e.value) and "'tflops'" in str(e.value)

    path = _write(tmp_path, ROW.format(id="x", tflops=1).replace("tutorial_matmul.py", "missing.py"))
    with pytest.raises(FiguresError, match=r"row 0 \(x\): field 'kernel' = 'kernels/baselines/missing.py'"):
        load_figures(path)
    path = _write(tmp_path, ROW.format(id="x", tflops=1) + ROW.format(id="x", tflops=2))
    with pytest.raises(FiguresError, match=r"row 1 \(x\): field 'id' repeats"):
        load_figures(path)
    path = _write(tmp_path, ROW.format(id="x", tflops=1).replace('gpu = "h100"', 'gpu = "h100"\nspeed = 3'))
    with pytest.raises(FiguresError, match=r"row 0 \(x\): unknown field\(s\) speed"):
        load_figures(path)
    path = _write(tmp_path, ROW.format(id="x", tflops=1).replace("[1024, 1024, 1024]", "[1024, 0]"))
    with pytest.raises(FiguresError, match=r"row 0 \(x\): field 'shape' must be \[M, N, K\]"):
        load_figures(path)
    path = _write(tmp_path, "[[row]\n")
    with pytest.raises(FiguresError, match="not valid TOML"):
        load_figures(path)


def test_the_command_stops_with_the_tables_problem(tmp_path, capsys):
    path = _write(tmp_path, ROW.format(id="x", tflops=-1))
    assert fit.main(["--figures", str(path), "--out", str(tmp_path / "fitted.json")]) == 1
    assert f"{path}: row 0 (x): field 'tflops'" in capsys.readouterr().err
    assert not (tmp_path / "fitted.json").exists()


def test_render_names_the_setting_it_cannot_set():
    source = "CONFIG_INDEX = 0  # the config\nVARIANT = 'naive'\n"
    assert (
        fit_rows.render(source, {"VARIANT": "persistent"})
        == "CONFIG_INDEX = 0  # the config\nVARIANT = 'persistent'\n"
    )
    with pytest.raises(ValueError, match="k.py: needs exactly one 'CAST_FP8 = ...' line"):
        fit_rows.render(source, {"CAST_FP8": True}, "k.py")


def test_measured_tables_become_weighted_rows_and_ceilings(tmp_path):
    folder = tmp_path / "h200-run"
    folder.mkdir()
    base = {
        "protocol": "do_bench",
        "status": "ok",
        "shape": [4096, 4096, 4096],
        "layout": "nn",
        "config": "c",
    }
    doc = {"schema": CALIBRATION_SCHEMA, "gpu": {"model_gpu": "h200"}, "task": {"dtype": "bf16"}, "rows": [
        {**base, "kernel": "tutorial03", "config_index": 2, "measured_tflops": 600.0},
        {**base, "kernel": "torch.matmul", "config_index": None, "measured_tflops": 750.0},
        {**base, "kernel": "tutorial03", "config_index": 3, "measured_tflops": None, "protocol": None},
    ]}  # fmt: skip
    (folder / "calibration.json").write_text(json.dumps(doc))
    rows, ceilings = measured_rows(tmp_path)
    assert [(r.kernel, r.settings, r.tflops, r.weight, r.kind) for r in rows] == [
        ("kernels/baselines/tutorial_matmul.py", {"CONFIG_INDEX": 2}, 600.0, MEASURED_WEIGHT, "measured")
    ]
    assert [(c.library, c.tflops) for c in ceilings] == [("torch.matmul (measured)", 750.0)]
    published, _ = load_figures(FIGURES_PATH)
    # measured rows carry no source factor: they are the judge's own protocol and anchor the model
    assert sources.row_sources([published[0], rows[0]]) == [published[0].source, None]
    (folder / "calibration.json").write_text(json.dumps({**doc, "schema": "other"}))
    with pytest.raises(FiguresError, match="calibration.json: schema 'other'"):
        measured_rows(tmp_path)


# ---------------------------------------------------------------- the fit on a synthetic table


def _launch(tile, warps, stages, shape, persistent=False, tma=False) -> KernelLaunch:
    bm, bn, bk = tile
    tiles = -(-shape[0] // bm) * -(-shape[1] // bn)
    shared = (bm * bk + bk * bn) * 2 * max(1, stages - 1)
    grid = (min(tiles, H100.sm_count) if persistent else tiles,)
    return KernelLaunch(tile, grid, warps, stages, shared, 168, 0, True, tma, False)


SYNTHETIC = [  # (launch, shape): compute-bound, small-K and mid shapes, plain and persistent
    (_launch((128, 256, 64), 8, 3, (8192, 8192, 8192)), (8192, 8192, 8192)),
    (_launch((128, 128, 64), 4, 4, (4096, 4096, 4096)), (4096, 4096, 4096)),
    (_launch((128, 256, 64), 8, 3, (8192, 8192, 512)), (8192, 8192, 512)),
    (_launch((128, 256, 64), 8, 3, (8192, 8192, 512), persistent=True), (8192, 8192, 512)),
    (_launch((64, 64, 32), 4, 4, (1024, 1024, 1024)), (1024, 1024, 1024)),
    (_launch((128, 128, 32), 4, 4, (2048, 2048, 512)), (2048, 2048, 512)),
]
TRUTH = dataclasses.replace(Constants(), epilogue_latency=1800.0, cta_start=350.0, wgmma_efficiency=0.8)


def _predictors():
    def make(launch, shape):
        return lambda c: estimate_shape([launch], shape, "fp16", H100, constants=c).tflops

    return [make(launch, shape) for launch, shape in SYNTHETIC]


def test_the_fit_recovers_known_constants_and_lowers_the_error():
    predicts = _predictors()
    published = [p(TRUTH) for p in predicts]
    weights = [1.0] * len(predicts)
    free = ("epilogue_latency", "cta_start", "wgmma_efficiency")
    before = fit.loss(predicts, published, weights, Constants())
    fitted = fit.fit_constants(predicts, published, weights, free)
    after = fit.loss(predicts, published, weights, fitted)
    assert before > 1e-3 and after < before / 100
    assert fitted.wgmma_efficiency == pytest.approx(0.8, rel=0.03)
    assert fitted.epilogue_latency == pytest.approx(1800, rel=0.15)
    for name in ("launch_s", "issue_cycles", "dram_latency"):  # what is not free does not move
        assert getattr(fitted, name) == getattr(Constants(), name)


def test_fitted_constants_stay_inside_their_bounds():
    predicts = _predictors()
    published = [p(TRUTH) * 10 for p in predicts]  # a table no constant inside the bounds reaches
    fitted = fit.fit_constants(predicts, published, [1.0] * len(predicts), ("epilogue_latency", "cta_start"))
    for name in ("epilogue_latency", "cta_start"):
        lo, hi = fit.BOUNDS[name]
        assert lo <= getattr(fitted, name) <= hi
    with pytest.raises(ValueError, match="no bounds for free constant"):
        fit.fit_constants(predicts, published, [1.0] * len(predicts), ("clock_ghz",))


def test_leave_one_out_is_out_of_sample():
    """Changing a row's published figure changes every other row's held-out prediction's fit, but
    never its own: the held-out row does not enter its own fit."""
    predicts = _predictors()
    published = [p(TRUTH) for p in predicts]
    weights = [1.0] * len(predicts)
    free = ("epilogue_latency", "cta_start")
    loo = fit.leave_one_out(predicts, published, weights, free)
    moved = list(published)
    moved[2] *= 3.0
    loo_moved = fit.leave_one_out(predicts, moved, weights, free)
    assert loo_moved[2] == loo[2]
    assert all(factor == 1.0 for _, factor in loo)  # no sources: no factors
    assert any(
        not math.isclose(a[0], b[0], rel_tol=1e-6)
        for i, (a, b) in enumerate(zip(loo, loo_moved, strict=True))
        if i != 2
    )
    assert fit.leave_one_out(predicts[:1], published[:1], weights[:1], free) == [None]


def test_a_source_factor_is_the_mean_log_ratio_of_its_rows_and_needs_two_of_them():
    # source "slow" runs every figure at half the model's; "one" has a single row; None is measured
    modelled = [100.0, 200.0, 300.0, 100.0, 100.0, 50.0, 50.0]
    published = [50.0, 100.0, 200.0, 50.0, 80.0, 0.5, 0.5]
    weights = [1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    srcs = ["slow", "slow", "slow", "one", None, "wild", "wild"]
    f = sources.source_factors(modelled, published, weights, srcs)
    assert set(f) == {"slow", "wild"}  # one row cannot tell a source's level from the model's
    assert f["slow"] == pytest.approx(math.exp((2 * math.log(0.5) + 2 * math.log(2 / 3)) / 4))  # weighted
    assert f["wild"] == sources.FACTOR_BOUNDS[0]  # 0.01 clipped to the bound
    assert sources.factor_of(None, f) == 1.0 and sources.factor_of("one", f) == 1.0
    # a row the model cannot price neither informs its source's factor nor counts towards its rows
    assert sources.source_factors([0.0, 100.0], [50.0, 50.0], [1.0, 1.0], ["s", "s"]) == {}
    g = sources.source_factors([0.0, 100.0, 100.0], [50.0, 50.0, 50.0], [1.0] * 3, ["s"] * 3)
    assert g["s"] == pytest.approx(0.5)


def test_source_factors_keep_a_slow_harness_out_of_the_constants():
    """One source ran every kernel at 40% of the truth (a throttled machine, a host-bound harness):
    fitted as published, the constants bend to it; with a factor per source they come back, and the
    held-out rows are predicted within a few percent once their source's level is fitted."""
    predicts = _predictors() * 2  # the same kernels, measured by two sources
    truth = [p(TRUTH) for p in predicts]
    n = len(SYNTHETIC)
    published = truth[:n] + [0.4 * t for t in truth[n:]]
    weights = [1.0] * len(predicts)
    srcs = ["fast"] * n + ["slow"] * n
    free = ("epilogue_latency", "wgmma_efficiency")
    plain = fit.fit_constants(predicts, published, weights, free)
    with_sources = fit.fit_constants(predicts, published, weights, free, sources=srcs)
    assert with_sources.wgmma_efficiency == pytest.approx(0.8, rel=0.05)
    assert abs(plain.wgmma_efficiency - 0.8) > 3 * abs(with_sources.wgmma_efficiency - 0.8)
    assert fit.loss(predicts, published, weights, with_sources, srcs) < fit.loss(
        predicts, published, weights, plain
    )
    loo = fit.leave_one_out(predicts, published, weights, free, sources=srcs)
    for (m, factor), p, s in zip(loo, published, srcs, strict=True):
        assert factor < 0.6 if s == "slow" else factor > 0.9
        assert m * factor == pytest.approx(p, rel=0.15)
    # the held-out row enters neither the constants nor its source's factor
    moved = list(published)
    moved[n] *= 3.0
    assert fit.leave_one_out(predicts, moved, weights, free, sources=srcs)[n] == loo[n]


def test_summary_follows_the_classes_contract(tmp_path):
    rows = []
    for i, (group, shape, pub, oos) in enumerate([
        ("a", (8192, 8192, 8192), 600.0, 660.0), ("a", (8192, 8192, 8192), 500.0, 540.0),
        ("a", (8192, 8192, 8192), 400.0, 250.0), ("b", (8192, 8192, 512), 200.0, 400.0),
    ]):  # fmt: skip
        rows.append({"id": str(i), "class": classes.shape_class(shape), "group": group, "published": pub,
                     "out_of_sample": oos, "in_sample": oos, "error": oos / pub - 1, "fitted": True})  # fmt: skip
    summary = fit.summarise(rows)
    large = summary["classes"]["large"]
    assert large["rows"] == 3 and large["within_35"] == 2 and large["spearman"] == pytest.approx(1.0)
    assert large["ratio_error"] is not None and summary["classes"]["skinny"]["error"] is None
    assert summary["within_shape"] == [{"group": "a", "rows": 3, "spearman": pytest.approx(1.0)}]
    assert summary["targets"]["each_within_35"] is False
    path = tmp_path / "fitted.json"
    path.write_text(json.dumps({"constants": {}, **summary}))
    errors = classes.class_errors(path)
    assert classes.shape_error((8192, 8192, 8192), errors) == (large["error"], large["ratio_error"])
    assert classes.shape_error((8192, 8192, 512), errors) == (1.0, 1.0)  # no pairs: error stands for it
    assert classes.shape_error((1, 4096, 4096), errors) == (None, None)  # skinny: not calibrated


def test_summary_and_report_give_the_source_adjusted_figures_beside_the_model_s_own():
    rows = []
    for i, (shape, pub, oos, factor) in enumerate([
        ((8192, 8192, 8192), 600.0, 1200.0, 0.5), ((8192, 8192, 8192), 500.0, 1000.0, 0.55),
        ((8192, 8192, 512), 200.0, 210.0, 1.0),
    ]):  # fmt: skip
        rows.append({"id": str(i), "class": classes.shape_class(shape), "group": str(shape), "published": pub,
                     "out_of_sample": oos, "in_sample": oos, "error": oos / pub - 1, "fitted": True,
                     "source_factor": factor, "error_adjusted": oos * factor / pub - 1,
                     "modelled_default": oos, "source": "s", "excluded": None})  # fmt: skip
    summary = fit.summarise(rows)
    large = summary["classes"]["large"]
    assert large["within_35"] == 0 and large["within_35_adjusted"] == 2  # +100% / +100%, then 0% / +10%
    assert large["error_adjusted"] == pytest.approx(0.08) and large["max_error_adjusted"] == pytest.approx(
        0.1
    )
    assert (
        summary["targets"]["each_within_35"] is False
        and summary["targets"]["each_within_35_adjusted"] is True
    )
    doc = {"created": "now", "command": "python -m evaluators.model.fit", "triton": "x", "constants": {},
           "free": {}, "defaults": {}, "loss": {"default": 1.0, "fitted": 0.5}, "rows": rows, "ceilings": [],
           "source_factors": True, "sources": [{"source": "s", "rows": 3, "factor": 0.52}], **summary}  # fmt: skip
    text = fit_report.markdown(doc)
    assert "| s | 3 | 0.52 |" in text and "(1/3; source-adjusted: 3/3)" in text
    assert "| 0 | large | 600.0 | 1200.0 | 1200.0 | 1200.0 | +100% | 0.50 | +0% | s |" in text


def test_committed_fit_is_readable_by_the_model_and_classes():
    doc = json.loads(FITTED_PATH.read_text())
    assert doc["schema"] == fit.SCHEMA and doc["command"].startswith("python -m evaluators.model.fit")
    errors = classes.class_errors(FITTED_PATH)
    assert set(errors) == set(classes.CLASSES)
    assert errors["large"]["rows"] >= 4 and errors["large"]["error"] is not None
    figures_rows, _ = load_figures(FIGURES_PATH)
    assert [r["id"] for r in doc["rows"]][: len(figures_rows)] == [r.id for r in figures_rows]
    for r in doc["rows"]:
        if r["fitted"]:
            assert r["out_of_sample"] is not None and r["error"] == pytest.approx(
                r["out_of_sample"] / r["published"] - 1
            )


# ---------------------------------------------------------------- slow: compile and interpret


@pytest.mark.slow
def test_the_fit_runs_on_the_real_table(tmp_path):
    """make calibrate's command end to end (facts from the cache when a run left them)."""
    out = tmp_path / "fitted.json"
    assert fit.main(["--out", str(out), "--results", str(tmp_path / "none")]) == 0
    doc = json.loads(out.read_text())
    assert doc["loss"]["fitted"] <= doc["loss"]["default"]
    assert (tmp_path / "fit.md").read_text().startswith("# Model calibration")


INTERPRET = """
import sys, types, torch
torch.cuda.get_device_properties = lambda device=None: types.SimpleNamespace(multi_processor_count=3)
sys.path.insert(0, {root!r})
import importlib.util
spec = importlib.util.spec_from_file_location("pm", {path!r})
pm = importlib.util.module_from_spec(spec); spec.loader.exec_module(pm)
torch.manual_seed(0)
a = torch.randn(200, 150, dtype=torch.float16)
b = torch.randn(300, 150, dtype=torch.float16).t()  # B as the [K, N] view of [N, K], as tutorial 09 passes it
ref = (a.float() @ b.float())
for variant in ("naive", "persistent"):
    c = pm.launch(a, b, pm.CONFIGS[0], variant).float()
    err = ((c - ref).abs().max() / ref.abs().max()).item()
    assert err < 2e-3, (variant, err)
print("ok")
"""


@pytest.mark.slow
def test_tutorial09_kernels_compute_the_product_under_the_interpreter():
    path = ROOT / "kernels" / "baselines" / "persistent_matmul.py"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    code = INTERPRET.format(root=str(ROOT), path=str(path))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


VLLM_INTERPRET = """
import sys, types, torch
torch.cuda.get_device_properties = lambda device=None: types.SimpleNamespace(multi_processor_count=3)
import importlib.util
spec = importlib.util.spec_from_file_location("vm", {path!r})
vm = importlib.util.module_from_spec(spec); spec.loader.exec_module(vm)
torch.manual_seed(0)
for m, cfg in ((5, (16, 64, 128, 4, 3)), (200, (64, 128, 64, 4, 3))):
    a = torch.randn(m, 150, dtype=torch.float16)  # K = 150: a masked K tail in both configs
    b = torch.randn(300, 150, dtype=torch.float16).t()  # B as the [K, N] view of a Linear weight [N, K]
    bm, bn, bk, warps, stages = cfg
    config = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=warps, num_stages=stages)
    c = vm.launch(a, b, config).float()
    ref = a.float() @ b.float()
    err = ((c - ref).abs().max() / ref.abs().max()).item()
    assert err < 2e-3, (m, cfg, err)
print("ok")
"""


@pytest.mark.slow
def test_vllm_persistent_kernel_computes_the_product_under_the_interpreter():
    """The vLLM batch-invariant baseline (figures.toml's vllm-bi rows): a skinny M = 5 launch with
    16-row tiles and a 200-row one, both with a K tail and more tiles than programs (3 'SMs')."""
    path = ROOT / "kernels" / "baselines" / "vllm_persistent_matmul.py"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    code = VLLM_INTERPRET.format(path=str(path))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
