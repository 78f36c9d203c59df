"""The model-vs-measured table (evaluators/model/calibration.py): rank correlations, the perf-model
table for a device name, modelling from compile facts, the join, correlations and the files."""

import json
import math

import pytest

from evaluators.model import calibration

# ---------------------------------------------------------------- rank correlations


def test_ranks_spearman_kendall():
    assert calibration.ranks([5, 1, 5, 3]) == [3.5, 1.0, 3.5, 2.0]
    assert calibration.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert calibration.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert calibration.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)
    assert calibration.kendall_tau([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / 30**0.5)
    assert (
        calibration.spearman([1, 2], [1, 2]) is None and calibration.kendall_tau([1, 1, 1], [1, 2, 3]) is None
    )
    with pytest.raises(ValueError, match="equal lengths"):
        calibration.kendall_tau([1, 2, 3], [1, 2])


# ---------------------------------------------------------------- the GPU present -> the model's table


NAMES = [("NVIDIA H200", "h200", False), ("NVIDIA H200 NVL", "h200", True), ("NVIDIA H100 80GB HBM3", "h100", False),
         ("NVIDIA H100 PCIe", "h100", True), ("NVIDIA H100 NVL", "h100_nvl", False), ("NVIDIA A100-SXM4-80GB", "a100", False),
         ("NVIDIA A100-PCIE-40GB", "a100", True)]  # fmt: skip


@pytest.mark.parametrize("name, key, caveat", NAMES)
def test_model_gpu_for_device_names(name, key, caveat):
    gpu = calibration.model_gpu_for(name)
    assert gpu.key == key and bool(gpu.note) == caveat


def test_h200_is_not_modelled_as_the_sm90_default():
    from evaluators.model.constants import GPUS

    assert calibration.model_gpu_for("NVIDIA H200").key == "h200"
    assert GPUS["h200"].hbm_gbps != GPUS["h100"].hbm_gbps  # a different table, not a renamed default


@pytest.mark.parametrize("name", ["NVIDIA GH200 480GB", "NVIDIA L40S", "Tesla V100-SXM2-16GB"])
def test_unknown_gpu_names_the_fix(name):
    with pytest.raises(ValueError, match=r"no performance-model table.*--model-gpu"):
        calibration.model_gpu_for(name)


# ---------------------------------------------------------------- modelling from compile facts


FACTS = {
    "kernel": "k", "shared": 98304, "num_warps": 8, "num_stages": 3, "uses_wgmma": True, "uses_tma": False,
    "dots": [{"precision": "tf32", "a": "bf16", "b": "bf16", "tile": [128, 128, 64]}], "atomics": False,
    "regs": 116, "spill_bytes": 0,
}  # fmt: skip
LAUNCHES = [{"shape": [4096, 4096, 4096], "layout": "nn", "calls": [{"key": "k1", "grid": [1024]}]}]


def test_model_launches_uses_the_named_gpu():
    h200 = calibration.model_launches({"k1": FACTS}, LAUNCHES, "bf16", False, "h200")
    a100 = calibration.model_launches({"k1": FACTS}, LAUNCHES, "bf16", False, "a100")
    m = h200[((4096, 4096, 4096), "nn")]
    assert m.bound in ("compute", "memory", "latency") and 0 < m.tflops < 989.4
    assert m.facts["tile"] == [128, 128, 64] and m.facts["regs"] == 116
    assert a100[((4096, 4096, 4096), "nn")].tflops < m.tflops  # another GPU table, another figure
    with pytest.raises(KeyError):
        calibration.model_launches({}, LAUNCHES, "bf16", False, "h200")


# ---------------------------------------------------------------- the table


def _modelled(time_s: float, bound: str = "compute") -> calibration.Modelled:
    tflops = calibration.flops((64, 64, 64)) / time_s / 1e12 if math.isfinite(time_s) else 0.0
    return calibration.Modelled(time_s, tflops, 0.1, bound, "l2", None)


def _table():
    """Configs 0..3 modelled ever faster; measured, configs 2 and 3 swap; config 9 invalid, unmeasured."""
    mod = {("tutorial03", i, (64, 64, 64), "nn"): _modelled(1e-3 / (i + 1)) for i in range(4)}
    mod[("tutorial03", 9, (64, 64, 64), "nn")] = _modelled(math.inf, "invalid")
    meas = [calibration.Measurement("torch.matmul", (64, 64, 64), "nn", "do_bench", 1e-4)]
    for i, t in enumerate([4e-4, 3e-4, 1e-4, 2e-4]):
        meas.append(calibration.Measurement("tutorial03", (64, 64, 64), "nn", "do_bench", t, f"c{i}", i,
                                            torch_time_s=1e-4))  # fmt: skip
    meas.append(calibration.Measurement("seed", (64, 64, 64), "nn", "judge", 5e-4, torch_time_s=1e-4))
    return calibration.build_rows(meas, mod)


def test_rows_join_measured_and_modelled():
    rows = _table()
    by = {(r["kernel"], r["config_index"], r["protocol"]): r for r in rows}
    r0 = by[("tutorial03", 0, "do_bench")]
    assert r0["measured_tflops"] == pytest.approx(2 * 64**3 / 4e-4 / 1e12)
    assert r0["ratio"] == pytest.approx(r0["measured_tflops"] / r0["modelled_tflops"])
    assert (
        r0["speedup_vs_torch"] == pytest.approx(0.25)
        and by[("torch.matmul", None, "do_bench")]["speedup_vs_torch"] is None
    )
    invalid = by[("tutorial03", 9, None)]
    assert invalid["status"] == "not measured" and invalid["modelled_time_s"] is None  # inf is not JSON
    assert (
        by[("seed", None, "judge")]["modelled_tflops"] is None
        and by[("seed", None, "judge")]["ratio"] is None
    )


def test_correlations_overall_and_within_a_shape():
    corr = calibration.correlations(_table())
    # modelled order 3 > 2 > 1 > 0; measured 2 > 3 > 1 > 0: one swapped pair of six
    assert corr["overall"]["pairs"] == 4  # do_bench rows with both figures: not torch, not the judge's seed
    assert corr["overall"]["kendall_tau"] == pytest.approx(4 / 6)
    assert corr["overall"]["spearman"] == pytest.approx(0.8)
    assert corr["by_shape"] == [{"shape": [64, 64, 64], "layout": "nn", "pairs": 4, "spearman": pytest.approx(0.8),
                                 "kendall_tau": pytest.approx(4 / 6)}]  # fmt: skip
    assert corr["within_shape_mean"]["spearman"] == pytest.approx(0.8)


def test_write_and_read_the_table(tmp_path):
    meta = {"gpu": {"device_name": None, "model_gpu": "h200", "model_note": ""}, "task": {"name": "t"},
            "mode": "dry-run", "provenance": {"torch": "x", "odd": math.inf},
            "steps": [{"name": "model", "status": "ok", "seconds": 1.0, "detail": "a | b"}],
            "seed_evaluation": None}  # fmt: skip
    json_path, md_path = calibration.write_table(calibration.table(meta, _table()), tmp_path / "out")
    doc = calibration.read_table(json_path)
    assert doc["schema"] == calibration.SCHEMA and len(doc["rows"]) == 7 and doc["provenance"]["odd"] is None
    documented = calibration.__doc__
    for field in [*doc["rows"][0], *doc, *doc["correlations"]]:
        assert field in documented, f"field {field} is not documented in evaluators/model/calibration.py"
    md = md_path.read_text()
    assert "| overall | 4 | +0.800 | +0.667 |" in md and "| model | ok | 1.0 | a / b |" in md
    assert md.count("\n| 64x64x64 | nn |") == 7
    (tmp_path / "other.json").write_text(json.dumps({"schema": "other/1"}))
    with pytest.raises(ValueError, match="schema 'other/1'"):
        calibration.read_table(tmp_path / "other.json")
