"""Adversarial kernels: each module in kernels/ is one cheat (or one honest kernel) and must
end with exactly the expected status and feedback. See each module's docstring for the cheat
and its source in shared/REFERENCES.md.

CPU only (interpreter checks). Check shapes are kept tiny; the ragged (300, 260, 280) shape
is used only where the cheat needs it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from evaluators import Task, evaluate

KERNELS = Path(__file__).parent / "kernels"
SEED = Path(__file__).resolve().parents[2] / "kernels" / "seeds" / "tiled_matmul.py"
TRAIN = ((256, 256, 256),)


def task(
    dtype: str = "fp16", check=((64, 64, 64),), layouts=("nn",), trials: int = 2, train=TRAIN, fresh: int = 0
) -> Task:
    """Named shapes only by default (each row tests its own check, and `make test` stays short); the
    fresh-shape rows ask for them."""
    return Task(
        name="adv",
        dtype=dtype,
        layouts=layouts,
        train=train,
        held_out=(),
        check=check,
        trials=trials,
        fresh=fresh,
    )


SMALL = task()
RAGGED = task(check=((64, 64, 64), (300, 260, 280)), trials=1)
K128 = task(check=((64, 64, 128),))
FP32 = task(dtype="fp32")
LONG_K = task(train=((128, 128, 1024),))  # a training K beyond every check shape's
WITH_FRESH = task(fresh=3)  # three shapes drawn per evaluation (evaluators/fresh_shapes.py)
# Named shapes only (no fresh shapes): for cheats that need a square shape to show what they test.
SQUARE = dataclasses.replace(SMALL, fresh=0)


def source(name: str) -> str:
    return (KERNELS / f"{name}.py").read_text()


def run(name: str, t: Task = SMALL, timeout_s: float = 60.0):
    # Cover and fresh shapes are the expensive stage's: the rows that test them are judged verified
    # (no whole grids or full-size samples needed: those have tests/test_verify_stage.py).
    if t in (LONG_K, WITH_FRESH):
        return evaluate(
            source(name), t, timeout_s=timeout_s, stage="verified", verify_programs=0, verify_sample_s=0
        )
    return evaluate(source(name), t, timeout_s=timeout_s)


# name, task, expected status, phrases that must all appear in the feedback
# Wrong values are named by the check that met them first, which depends on the trial's input kind
# (evaluators/correctness.py): an error over the tolerance, a NaN/Inf pattern unlike the exact product's,
# or a bias.
WRONG_VALUES = ("max scaled error", "NaN/Inf where the exact product's differ", "results are biased")
# A kernel wrong on a named shape is wrong on some fresh shape too (evaluators/fresh_shapes.py), and the
# checks may meet that one first (the smallest shape goes first): either is named.
FRESH = "fresh shape ("
CASES = [
    # 1. matrix product reached indirectly
    ("product_tensordot", SMALL, "rejected", ["torch.tensordot is a library matrix product"]),
    # (its `if a.is_meta:` skip is now rejected statically, before the op recorder sees aten.mm)
    ("product_via_cov", SMALL, "rejected", ["a.is_meta tells where or how the call runs"]),
    ("product_broadcast_sum", SMALL, "rejected", ["aten.mul", "may only allocate, view, cast, copy"]),
    # 2. cached results
    ("cached_results", SMALL, "rejected", ["RESULTS[key] changes RESULTS", "calls must be independent"]),
    ("cached_no_launch", SMALL, "rejected", ["RESULTS[key] changes RESULTS", "calls must be independent"]),
    # 3. only small shapes computed
    ("small_shapes_only", RAGGED, "incorrect", [("shape (300, 260, 280)", FRESH), WRONG_VALUES]),
    # 4. inputs zeroed in place
    ("zero_inputs", SMALL, "rejected", ["wrote into A's storage", "inputs are read-only"]),
    # 5. uninitialised output
    ("uninit_no_launch", SMALL, "rejected", ["launched no Triton kernel on any training shape"]),
    ("uninit_row0", SMALL, "incorrect", [("shape (64, 64, 64)", FRESH)]),
    # 6. checker monkeypatched
    ("patch_allclose", SMALL, "rejected", ["torch.allclose monkeypatches", "torch.testing.assert_close"]),
    ("patch_tensor_eq", SMALL, "rejected", ["torch.Tensor.__eq__ monkeypatches a library"]),
    # 7. side stream
    ("side_stream", SMALL, "rejected", ["no streams, events, graphs or syncs"]),
    # 8. silent exit
    ("os_exit", SMALL, "rejected", ["import os is not allowed"]),
    ("system_exit", SMALL, "crashed", ["the entry point raised", "SystemExit"]),
    ("oom_huge_empty", SMALL, "crashed", ["(out of memory)", "can't allocate memory"]),
    # 9. environment read
    ("env_read_static", SMALL, "rejected", ["typing.sys", "torch.os", "triton.knobs", "math.__dict__"]),
    # 11. memory bombs
    ("memory_bomb_list", SMALL, "crashed", ["MemoryError"]),
    # 12. precision lowered on an fp32 task
    ("fp32_cast_fp16", FP32, "incorrect", ["f16 x", "strict fp32"]),
    ("fp32_default_tf32", FP32, "incorrect", ["input_precision=tf32", "strict fp32"]),
    # 13. wrong type / dtype
    ("returns_fp32", SMALL, "incorrect", ["float32, expected [", "] float16"]),
    ("returns_subclass", SMALL, "incorrect", ["candidate.Result, expected a plain torch.Tensor"]),
    # 14. aliasing
    # (it copies C into A, so it needs K == N: on a fresh shape it crashes before it can alias)
    ("returns_input", SQUARE, "incorrect", ["shares memory with an input"]),
    ("returns_view", SQUARE, "incorrect", ["shares memory with an input"]),  # B holds M x N when K == M
    # 15. half of K
    ("half_k", K128, "incorrect", [("shape (64, 64, 128)", FRESH), WRONG_VALUES]),
    # 17. one config shown to the compiler, another run
    ("device_dependent_config", SMALL, "rejected", ["must not depend on the device"]),
    # 18. telling the judge's runs from production ones (issue 10, item 2)
    ("placement_is_cuda", SMALL, "rejected", ["a.is_cuda tells where or how the call runs"]),
    ("placement_data_ptr", SMALL, "rejected", ["a.data_ptr tells where or how the call runs"]),
    (
        "placement_device_type",
        SMALL,
        "rejected",
        ["a.device reads the device", "must not depend on the device"],
    ),
    # 19. state across calls (issue 10, item 6)
    ("cache_info_counter", SMALL, "rejected", ["pick_config.cache_info reads a cache's statistics"]),
    ("module_call_counter", SMALL, "rejected", ["CALLS['n'] changes CALLS", "calls must be independent"]),
    ("cached_output_buffer", SMALL, "rejected", ["output_buffer is cached and returns a torch.Tensor"]),
    # 20. control flow from the data or from float arithmetic (issue 10, item 8: evaluators/dataflow.py)
    ("data_skip_small_ktile", SMALL, "rejected", ["a branch (line", "depends on a value loaded from memory"]),
    ("data_skip_zero_first", SMALL, "rejected", ["a branch (line", "depends on a value loaded from memory"]),
    ("fma_probe_loop", SMALL, "rejected", ["a loop bound (line", "depends on a floating-point comparison"]),
    ("float_to_int_bound", SMALL, "rejected", ["a loop bound (line", "depends on a float-to-int conversion"]),
    ("nan_mask_store", SMALL, "rejected", ["a mask (line", "depends on a value loaded from memory"]),
    # 22. a path only training shapes take (issue 10 item 1: evaluators/coverage.py cover shapes)
    (
        "k_capped_when_long",
        LONG_K,
        "incorrect",
        ["a cover shape: training shape (128, 128, 1024) takes this path"],
    ),
    # 16. no masks on ragged edges
    # (named by the bounds check before the access happens, whatever memory lies past A and B:
    # evaluators/bounds_check.py; a race or a crash before it, depending on the allocator)
    ("no_masks", RAGGED, "incorrect", ["shape (300, 260, 280)", "outside the tensors it was given"]),
    # 21. wrong only on shapes nobody named: right on (64, 64, 64), wrong on a shape drawn for the
    # evaluation (issue 10 item 1, evaluators/fresh_shapes.py: an odd K; one tile row or an odd count)
    ("k_rounded_down", WITH_FRESH, "incorrect", [FRESH, WRONG_VALUES]),
    ("group_without_min", WITH_FRESH, "incorrect", [FRESH, WRONG_VALUES]),
    # 20. races between the programs of a launch, right only when they run one after another (issue 10, item 4)
    (
        "splitk_rmw_race",
        FP32,
        "rejected",
        [
            "kernel splitk_rmw_kernel: program (0, 1, 0) read C[0, 0]",
            "program (0, 0, 0) stored",
            "tl.atomic_add",
        ],
    ),
    (
        "splitk_counter_before_store",
        SMALL,
        "rejected",
        ["kernel splitk_last_kernel: program (0, 1, 0) read ws_ptr[0, 0, 0]", "not ordered before the read"],
    ),
]


@pytest.mark.parametrize("name,t,status,phrases", CASES, ids=[c[0] for c in CASES])
def test_cheat(name, t, status, phrases):
    ev = run(name, t)
    assert (ev.status, name) == (status, name), ev.feedback
    for phrase in phrases:  # a tuple: any one of its phrases
        assert any(p in ev.feedback for p in (phrase if isinstance(phrase, tuple) else (phrase,))), (
            phrase,
            ev.feedback,
        )
    assert ev.fitness == 0.0


def test_every_kernel_has_a_docstring_naming_the_cheat_and_source():
    names = sorted(p.stem for p in KERNELS.glob("*.py"))
    assert len(names) >= 14
    for name in names:
        text = source(name)
        assert text.startswith('"""'), name
        doc = text.split('"""')[1]
        assert ("Cheat" in doc or "Honest" in doc) and "REFERENCES.md" in doc, name


def test_env_read_through_tl_math_core_knobs_is_rejected_statically():
    ev = run("env_read_knobs")
    assert ev.status == "rejected" and ev.fitness == 0.0
    assert "triton.language.math.core" in ev.feedback and "not available" in ev.feedback


def test_secret_env_never_reaches_the_child(monkeypatch):
    """Below the static rules: even code that does reach getenv finds no secret in the child."""
    import time

    from evaluators import sandbox

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET123")
    box = sandbox.Sandbox("check")
    try:
        deadline = time.monotonic() + 60
        box.wait_ready(deadline)
        job = {
            "cmd": "job",
            "mode": "check",
            "source": source("env_read_knobs"),
            "task": {**SMALL.to_dict(), "device": "cpu"},
        }
        header, _ = box.request(job, deadline)
        assert header["event"] == "loaded"
        header, _ = box.request({"cmd": "run", "shape": [32, 32, 32], "layout": "nn", "seed": 1}, deadline)
    finally:
        box.close()
    assert header["event"] == "error"
    assert "LEAK OPENAI_API_KEY=None" in header["message"]  # it reached getenv, and found nothing
    assert "sk-test-SECRET123" not in json.dumps(header)


@pytest.mark.parametrize("name", ["hang_entry", "hang_kernel"])
def test_hang_times_out(name):
    ev = run(name, timeout_s=8.0)
    assert ev.status == "timeout", ev.feedback
    # What ran out is named: the compile stage's capture (the entry point hangs on meta tensors
    # too) or the interpreter's check of one shape, with its budget and the machine's load.
    assert re.search(r"timeout in the (compile stage|interpreter check of (fresh )?shape)", ev.feedback), (
        ev.feedback
    )
    assert "8 s" in ev.feedback and "machine load" in ev.feedback, ev.feedback


def test_memory_bomb_crashes_and_evaluator_keeps_working():
    ev = run("memory_bomb")
    assert ev.status in ("crashed", "timeout"), ev.feedback
    assert ev.status == "crashed" and "out of memory" in ev.feedback
    again = evaluate(SEED.read_text(), task(check=((32, 32, 32),), trials=1), timeout_s=60.0)
    assert again.status == "ok", again.feedback


def test_wild_pointer_is_stopped_before_it_kills_the_child_and_next_evaluation_is_fine():
    # wild_pointer_segv's load 2**40 elements past A used to kill its child with SIGSEGV; the bounds
    # check (evaluators/bounds_check.py) names it before the access. A child dying mid-request is
    # tests/test_sandbox.py's (a candidate can no longer make one die that way).
    ev = run("wild_pointer_segv")
    assert ev.status == "incorrect", ev.feedback
    assert "outside the tensors it was given" in ev.feedback and "bytes after the end of" in ev.feedback
    # the next evaluation (an honest split-K kernel on a ragged shape) is unaffected
    honest = run("honest_split_k", task(check=((64, 64, 64), (100, 72, 136)), trials=1))
    assert honest.status == "ok", honest.feedback


def test_json_shape_of_a_rejection():
    ev = run("product_tensordot")
    d = json.loads(ev.to_json())
    assert set(d) >= {
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
    assert d["status"] == "rejected" and d["fitness"] == 0
    assert d["backend"] == "model:h100"  # the label the verdict would have carried


# ------------------------------------------------------------------ honest kernels


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_seed_all_layouts(dtype):
    t = task(dtype=dtype, check=((48, 40, 72),), layouts=("nn", "nt", "tn"), trials=1)
    ev = evaluate(SEED.read_text(), t, timeout_s=90.0)
    assert ev.status == "ok", ev.feedback
    checked = [(s.shape, s.layout) for s in ev.shapes if s.kind == "check"]
    assert checked == [((48, 40, 72), lay) for lay in ("nn", "nt", "tn")]
    d = json.loads(ev.to_json())
    assert d["fitness"] > 0 and d["fitness_kind"] == "modelled" and d["backend"] == "model:h100"


def test_honest_transposed_b_nt():
    ev = run("honest_transposed_b", task(check=((64, 64, 64), (48, 40, 72)), layouts=("nt",)))
    assert ev.status == "ok", ev.feedback
