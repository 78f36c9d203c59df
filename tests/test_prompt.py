"""The LLM proposer's prompt: template files, rendering, and the texts built from plain data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from evaluators.evaluation import Evaluation, ShapeResult
from evaluators.task import Task
from evolve.proposers import prompt
from evolve.proposers.edits import apply_answer

ROOT = Path(__file__).resolve().parent.parent
SEED = (ROOT / "kernels" / "seeds" / "tiled_matmul.py").read_text()
TASK = Task(
    name="t",
    dtype="bf16",
    layouts=("nn", "nt"),
    train=((4096, 4096, 4096), (16, 4096, 4096)),
    held_out=((5120, 5120, 5120), (300, 260, 280)),
    check=((64, 64, 64),),
    target="sm_90",
).to_dict()
PLACEHOLDER = re.compile(r"\$\{?[A-Za-z_]")


def modelled() -> dict:
    return Evaluation(
        status="ok",
        backend="model:H100 SXM",
        fitness=0.41,
        fitness_kind="modelled",
        stage="verified",
        model_error=0.08,
        held_out=0.39,
        shapes=[
            ShapeResult((64, 64, 64), kind="check", max_scaled_err=1e-3),
            ShapeResult(
                (4096, 4096, 4096),
                kind="train",
                tflops=412.0,
                fraction_of_peak=0.416,
                bound="compute",
                model_error=0.12,
                speedup=9.9,  # must not be shown: a modelled record has no measured speedup
            ),
            ShapeResult((16, 4096, 4096), kind="train", tflops=50.0, fraction_of_peak=0.05, bound="memory"),
            ShapeResult((5120, 5120, 5120), kind="held_out", tflops=400.0, fraction_of_peak=0.4),
        ],
    ).to_dict()


def measured() -> dict:
    return Evaluation(
        status="ok",
        backend="cuda:NVIDIA H200",
        fitness=1.123,
        fitness_kind="measured",
        stage="verified",
        shapes=[
            ShapeResult(
                (4096, 4096, 4096),
                kind="train",
                time_s=0.00019,
                torch_time_s=0.00021,
                tflops=723.4,
                speedup=1.105,
            ),
        ],
    ).to_dict()


def full_fields(**changes: str) -> prompt.PromptFields:
    fields = prompt.PromptFields(
        task_summary=prompt.task_summary(TASK),
        target=prompt.target_name(TASK),
        parent_source=SEED,
        parent_figures=prompt.figures(modelled()),
        evolve_regions=prompt.regions_text(SEED),
        inspirations=prompt.inspirations([("island 2 best", SEED.replace("GROUP_M=8", "GROUP_M=4"))]),
        failures=prompt.failures(
            [{"status": "compile_error", "feedback": "out of shared memory", "note": "x"}]
        ),
        lessons="Raising BLOCK_N helped 3 of 4 times (+12% median)",
    )
    return prompt.PromptFields(**{**fields.__dict__, **changes})


@pytest.mark.parametrize("template_id", prompt.TEMPLATES)
def test_each_template_renders_every_field_and_leaves_no_placeholder(template_id: str) -> None:
    text = prompt.load_template(template_id)
    named = set(re.findall(r"\$(\w+)", text))
    assert named == set(prompt.FIELD_NAMES), "a template shows every field and only fields"
    out = prompt.render(text, full_fields())
    assert not PLACEHOLDER.search(out), PLACEHOLDER.search(out)
    assert SEED in out  # the parent verbatim: SEARCH parts must match it byte for byte
    assert "island 2 best" in out and "GROUP_M=4" in out
    assert "Raising BLOCK_N helped" in out
    assert "EVOLVE-BLOCK-START" in out and "EVOLVE-BLOCK-END" in out
    assert "byte-identical" in out


def test_default_asks_for_the_exact_search_replace_format_and_rewrite_for_a_module() -> None:
    default = prompt.render(prompt.load_template("default"), full_fields())
    fmt = "<<<<<<< SEARCH\nexact lines from the parent\n=======\nnew lines\n>>>>>>> REPLACE\n"
    assert fmt in default
    rewrite = prompt.render(prompt.load_template("rewrite"), full_fields())
    assert "<<<<<<< SEARCH" not in rewrite and "whole module" in rewrite and "```python fence" in rewrite


def test_the_format_example_is_one_the_edit_parser_applies() -> None:
    # What the prompt shows must be what edits.apply_answer reads: a block in that exact shape applies.
    answer = "raise GROUP_M\n<<<<<<< SEARCH\n" + (
        "        return dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4)\n"
        "=======\n"
        "        return dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, GROUP_M=4, num_warps=4, num_stages=4)\n"
        ">>>>>>> REPLACE\n"
    )
    assert apply_answer(SEED, answer).status == "applied"


def test_system_prompt_states_the_contract_and_the_checks() -> None:
    system = prompt.system_prompt()
    assert not PLACEHOLDER.search(system)
    assert prompt.render(system, full_fields()) == system
    for phrase in (
        "triton, triton.language, torch, math, functools, typing",
        "`matmul(a, b)`",
        "allocates the output C",
        "torch.matmul, mm, bmm",
        "No try/except",
        "never on the data, pointers, the call count or where the call runs",
        "never from floating-point values",
        "ragged edges",
        "fresh ragged shapes",
        "strided slices, exact zeros, small and large magnitudes, NaN and Inf",
        "races between programs",
        "precision of each tl.dot",
        "full size on sampled programs",
        "rejected",
        "compile_error",
        "incorrect",
    ):
        assert phrase in system, phrase


def test_modelled_figures_are_labelled_modelled_never_measured() -> None:
    text = prompt.figures(modelled())
    assert "modelled" in text and "0.410" in text
    assert "measured" not in text.lower() and "speedup" not in text.lower()
    assert (
        "4096x4096x4096 nn: modelled 412.0 TFLOP/s, 41.6% of peak, compute-bound, model error +-12%" in text
    )
    assert "16x4096x4096 nn: modelled 50.0 TFLOP/s" in text and "not calibrated" in text
    assert "5120x5120x5120" not in text  # held-out rows are summarised, never listed as fitness shapes
    assert "Held-out shapes (modelled, not in the fitness): 0.390" in text
    assert "64x64x64" not in text  # check rows carry no performance


def test_measured_figures_show_the_speedup() -> None:
    text = prompt.figures(measured())
    assert "Fitness 1.123: measured geometric-mean speedup over torch.matmul" in text
    assert (
        "4096x4096x4096 nn: measured 0.190 ms, 723.4 TFLOP/s, speedup 1.10x over torch.matmul (0.210 ms)"
        in text
    )
    assert "modelled" not in text


def test_a_failed_or_unranked_parent_shows_its_feedback_or_no_figures() -> None:
    failed = Evaluation(
        "incorrect", "model:H100 SXM", feedback="shape 300x260x280 nn: max error 3.1\nmore"
    ).to_dict()
    text = prompt.figures(failed)
    assert text.startswith("Verdict: incorrect on model:H100 SXM.") and "max error 3.1 / more" in text
    cpu = Evaluation("ok", "cpu:interpreter", shapes=[ShapeResult((64, 64, 64), kind="train", tflops=1.0)])
    text = prompt.figures(cpu.to_dict())
    assert "No performance figures" in text and "TFLOP/s" not in text


def test_failures_are_listed_and_cut() -> None:
    long_feedback = "shared memory overflow " * 40 + "\nsecond line\nthird line\nfourth line never shown"
    rows = [
        {"status": "compile_error", "feedback": long_feedback, "note": "BLOCK_K 64 -> 256"},
        {"status": "incorrect", "feedback": "shape 300x260x280: wrong\nat row 257", "note": ""},
        {"status": "search_not_found", "reason": "SEARCH block 1 does not occur in the parent"},
        {"status": "timeout", "feedback": "x"},
    ]
    text = prompt.failures(rows, limit=3)
    lines = text.split("\n")
    assert len(lines) == 3 and all(line.startswith("- ") for line in lines)
    assert lines[0].startswith("- compile_error (change: BLOCK_K 64 -> 256): shared memory overflow")
    assert len(lines[0]) < prompt.FEEDBACK_CHARS + 60 and lines[0].endswith("…")
    assert "fourth line" not in text
    assert lines[1] == "- incorrect: shape 300x260x280: wrong / at row 257"
    assert "does not occur in the parent" in lines[2]
    assert prompt.failures([]) == ""
    assert prompt.render("$failures", full_fields(failures="")) == prompt.NONE_TEXT


def test_task_summary_names_the_task_and_the_target_limits() -> None:
    text = prompt.task_summary(TASK)
    for phrase in (
        "bf16",
        "nn (A[M,K] @ B[K,N]), nt (B stored [N,K])",
        "4096x4096x4096, 16x4096x4096",
        "2 held-out shape(s)",
        "NVIDIA H100 80GB HBM3 (sm_90)",
        "compute capability 9.0",
        "132 SMs",
        "227 KiB shared memory per block",
        "255 per thread",
    ):
        assert phrase in text, phrase
    assert "5120" not in text  # held-out shapes are counted, never shown
    strict = prompt.task_summary({**TASK, "dtype": "fp32"})
    assert 'input_precision="ieee"' in strict
    assert prompt.target_name(TASK, "cuda:NVIDIA H200") == "NVIDIA H200"


def test_inspirations_and_regions() -> None:
    text = prompt.inspirations([("a", "x = 1\n"), ("b", 'doc = """```"""\n')])
    assert text.startswith("### a\n```python\nx = 1\n```")
    assert "### b\n````python\n" in text  # a longer fence than the source's own backticks
    assert prompt.inspirations([]) == ""
    regions = prompt.regions_text(SEED)
    first = SEED.split("\n").index("# EVOLVE-BLOCK-START") + 2
    assert f"lines {first}-" in regions and "`@triton.jit`" in regions
    assert "no EVOLVE-BLOCK markers" in prompt.regions_text("def matmul(a, b):\n    pass\n")


def test_unknown_template_and_unknown_field_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown prompt template 'fancy'.*default, rewrite"):
        prompt.load_template("fancy")
    with pytest.raises(ValueError, match=r"unknown field \$parent_code; the fields are task_summary, target"):
        prompt.render("Kernel:\n$parent_code\n", full_fields())
    with pytest.raises(ValueError, match=r"invalid placeholder.*\$\$"):
        prompt.render("costs $5", full_fields())
    assert (
        prompt.render("costs $$5 for $target", full_fields()) == "costs $5 for NVIDIA H100 80GB HBM3 (sm_90)"
    )


def test_prompt_files_ship_as_package_data() -> None:
    # An installed wheel carries only what pyproject.toml names; the templates are read as resources.
    text = (ROOT / "pyproject.toml").read_text()
    assert '"evolve.prompts" = ["*.md"]' in text
