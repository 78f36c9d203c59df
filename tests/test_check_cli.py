"""`python -m evaluators check` always answers (issue 9, item 2).

A problem with the command (files, task, options) is one `error:` line and exit 2; anything
the judge itself fails at is a `judge_error` verdict, printed like any other (human and
--json), exit 1; never a traceback. The held-out figure is shown beside the fitness.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import uuid

import pytest

import evaluators.__main__ as cli
from evaluators.evaluation import Evaluation, ShapeResult

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEED = str(ROOT / "kernels" / "seeds" / "tiled_matmul.py")
TASK = str(ROOT / "runs" / "demo_cpu.toml")


def _no_traceback(out: str) -> None:
    assert "Traceback" not in out, out


def test_task_file_that_is_not_text_is_a_usage_error(tmp_path, capsys):
    task = tmp_path / "task.toml"
    task.write_bytes(b"\xff\xfe\x00garbage")
    assert cli.main(["check", SEED, "--task", str(task), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "cannot read the task file" in err
    _no_traceback(err)


def test_kernel_file_that_cannot_be_read_is_a_usage_error(tmp_path, capsys, monkeypatch):
    kernel = tmp_path / "k.py"
    kernel.write_text("x = 1\n")
    real = pathlib.Path.read_text

    def denied(self, *args, **kwargs):  # as root, chmod 000 does not stop a read: fail it here
        if self == kernel:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", denied)
    assert cli.main(["check", str(kernel), "--task", TASK, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "cannot read the kernel file" in err and "PermissionError" in err


def test_unknown_model_gpu_is_refused_before_judging(capsys, monkeypatch):
    monkeypatch.setattr(cli, "evaluate", lambda *a, **k: pytest.fail("evaluate must not run"))
    assert cli.main(["check", SEED, "--task", TASK, "--device", "cpu", "--model-gpu", "v100"]) == 2
    err = capsys.readouterr().err
    assert "--model-gpu 'v100' is unknown" in err and "h100" in err


@pytest.mark.parametrize("value", ["0", "-3", "nan", "soon"])
def test_timeout_must_be_positive_seconds(value, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["check", SEED, "--task", TASK, "--timeout", value])
    assert stop.value.code == 2 and "--timeout" in capsys.readouterr().err


@pytest.mark.parametrize("as_json", [False, True])
def test_judge_failure_outside_the_cascade_is_a_verdict(as_json, capsys, monkeypatch):
    """The real evaluate(), broken in its set-up (before its own try): provenance raises."""

    def broken(device):
        raise RuntimeError("injected: provenance cannot read the driver")

    # the package exports the function evaluate, which hides the module of the same name
    monkeypatch.setattr(sys.modules["evaluators.evaluate"], "provenance", broken)
    argv = ["check", SEED, "--task", TASK, "--device", "cpu"] + (["--json"] if as_json else [])
    assert cli.main(argv) == 1
    out = capsys.readouterr()
    _no_traceback(out.out + out.err)
    if as_json:
        record = json.loads(out.out.strip().splitlines()[-1])
        assert record["status"] == "judge_error" and record["backend"] == "model:h100"
        feedback = record["feedback"]
    else:
        assert "JUDGE_ERROR" in out.out
        feedback = out.out
    assert (
        "injected: provenance" in feedback
        and "RuntimeError" in feedback
        and "not the kernel's fault" in feedback
    )


def test_model_failure_inside_the_cascade_prints_judge_error(monkeypatch, capsys):
    """A real judge run (compile, checks) whose performance model raises: judge_error, exit 1."""

    def broken(*args, **kwargs):
        raise ZeroDivisionError("injected: division by zero in the model")

    monkeypatch.setattr("evaluators.model.perf_model.estimate_shape", broken)
    source = pathlib.Path(SEED).read_text() + f"\n# {uuid.uuid4().hex}: not in the verdict cache\n"
    kernel = ROOT / ".pytest_cache" / f"check_cli_{uuid.uuid4().hex}.py"
    kernel.parent.mkdir(exist_ok=True)
    kernel.write_text(source)
    try:
        code = cli.main(
            ["check", str(kernel), "--task", TASK, "--device", "cpu", "--json", "--stage", "provisional"]
        )
    finally:
        kernel.unlink()
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1 and record["status"] == "judge_error", record
    assert "ZeroDivisionError" in record["feedback"]


def _modelled(held_out: float | None) -> Evaluation:
    return Evaluation(
        status="ok",
        backend="model:h100",
        fitness=0.4321,
        fitness_kind="modelled",
        held_out=held_out,
        shapes=[
            ShapeResult((4096, 4096, 4096), kind="train", tflops=420.0, fraction_of_peak=0.4321),
            ShapeResult((5120, 5120, 5120), kind="held_out", tflops=390.0, fraction_of_peak=0.3946),
        ],
    )


def test_held_out_shown_beside_the_fitness():
    text = cli.render(_modelled(0.3946), "k.py", "demo_cpu")
    fitness_line = next(line for line in text.splitlines() if line.startswith("fitness"))
    assert "0.4321" in fitness_line and "held-out (modelled): 0.3946" in fitness_line
    assert any("held_out" in line and "(5120, 5120, 5120)" in line for line in text.splitlines())
    assert "held-out" not in cli.render(_modelled(None), "k.py", "demo_cpu")


def test_render_survives_odd_records():
    ev = _modelled(None)
    ev.compile = [{"kernel": "k"}]  # no key
    ev.seconds = {"compile": None, "check": "n/a"}
    text = cli.render(ev, "k.py", "demo_cpu")
    assert "kernel k [?]" in text and "compile -" in text and "check n/a" in text


def test_module_entry_point_prints_one_error_line():
    """As a user runs it: a missing task file is one line on stderr, exit 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "evaluators", "check", SEED, "--task", "nope.toml", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: nope.toml"), proc.stderr
    _no_traceback(proc.stderr)
