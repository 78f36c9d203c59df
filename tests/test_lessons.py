"""Lessons from the run so far (evolve/meta/lessons.py): counts, phrases, ordering, max_lines, determinism."""

from __future__ import annotations

import dataclasses

import pytest

from evolve.meta.lessons import Lessons, Outcome, changes, distil, failure_kind

SMEM = (
    "kernel k failed to compile for the target: out of resource: shared memory, "
    "Required: 262144, Hardware limit: 232448"
)


def _ok(cid: str, note: str, child: float, parent: float = 1.0) -> Outcome:
    return Outcome(cid, "mutator", note, "ok", "", parent, child)


def _fail(cid: str, note: str, status: str, feedback: str) -> Outcome:
    return Outcome(cid, "mutator", note, status, feedback, 1.0, 0.0)


def _run() -> list[Outcome]:
    """A small run: raising BLOCK_N helps 3 of 4 times, lowering stages hurts, shared memory runs out
    twice, one static rule fires twice, one shape fails, and an unsupported verdict teaches nothing."""
    return [
        _ok("c1", "tiles 128x128x64 -> 128x256x64", 1.15),
        _ok("c2", "tiles 64x128x64 -> 64x256x64, warps 4 -> 8", 1.10),
        _ok("c3", "numeric edit: BLOCK_N 128 -> 256 (line 3)", 1.20),
        _ok("c4", "tiles 128x64x64 -> 128x128x64", 0.90),
        _ok("c5", "stages 3 -> 2", 0.90),
        _ok("c6", "stages 4 -> 2", 0.94),
        _ok("c7", "stages 3 -> 1", 1.01),  # within noise: neither helped nor worse
        _fail("c8", "tiles 128x128x64 -> 256x256x64, stages 3 -> 4", "compile_error", SMEM),
        _fail("c9", "tiles 128x128x128 -> 256x128x128", "compile_error", SMEM.replace("262144", "300000")),
        _fail(
            "c10",
            "Use os for caching",
            "rejected",
            "static checks failed (1 violations):\n- line 3: import os is not allowed",
        ),
        _fail(
            "c11",
            "Cache via os module",
            "rejected",
            "static checks failed (2 violations):\n- line 9: import os is not allowed\n- line 12: x",
        ),
        _fail(
            "c12",
            "split_k 1 -> 4",
            "incorrect",
            "shape (300, 260, 280) layout nn: max scaled error 3.2 > tolerance 0.01 "
            "(first worst element C[0,1] = 2)",
        ),
        Outcome(
            "c13",
            "llm:x",
            "template gemm -> persistent",
            "unsupported",
            "the CPU backend cannot run kernel k",
            1.0,
            0.0,
        ),
        Outcome("c14", "llm:x", "template gemm -> persistent", "ok", "", 1.0, 1.30),
    ]


def test_changes_are_parsed_into_knobs_and_directions():
    assert changes("adopted pick_config; tiles 128x128x64 -> 128x256x64, warps 4 -> 8 for M>=1024") == [
        ("BLOCK_N", "raise", "256"),
        ("num_warps", "raise", "8"),
    ]
    assert changes("split_k 4 -> 1") == [("SPLIT_K", "lower", "1")]
    assert changes("template gemm -> persistent (grid = min(NUM_SMS, tiles))") == [
        ("template", "switch", "persistent")
    ]
    assert changes("Use a persistent kernel with swizzling") == [("use persistent kernel", "free", "")]
    assert changes("") == []


def test_helpful_and_harmful_changes_with_counts():
    lines = distil(_run(), version=3, max_lines=50).text.splitlines()
    assert lines[0] == "Lessons from 14 evaluations:"
    # BLOCK_N: raised in c1, c2, c3 (helped: +15%, +10%, +20%), c4 (-10%), c8 (failed): 3 of 5, median +12.5%.
    assert "Raising BLOCK_N to 256 helped 3 of 5 times (+12% median)" in lines
    # num_stages lowered in c5, c6 (worse), c7 (noise): median of -10%, -6%, +1% is -6%.
    assert (
        "Avoid lowering num_stages to 2: worse in 2 of 3 tries (-6% median)"
    )  # c7 (to 1) was noise in lines
    assert "Switching template to persistent helped 1 of 1 time (+30% median)" in lines  # c13 not counted
    assert "Avoid raising SPLIT_K to 4: failed in 1 of 1 try" in lines
    assert not any("Lowering num_stages" in line for line in lines)


def test_failures_grouped_with_count_phrase_example_and_advice():
    lines = distil(_run(), version=1, max_lines=50).text.splitlines()
    smem = [line for line in lines if "out of shared memory" in line]
    assert smem == [
        "2 children failed to compile: out of shared memory "
        "(e.g. tiles 128x128x64 -> 256x256x64, stages 3 -> 4): "
        "keep (BLOCK_M + BLOCK_N) * BLOCK_K * num_stages under the shared-memory limit"
    ]
    assert "2 children were rejected: import os is not allowed (e.g. Use os for caching)" in lines
    wrong = [line for line in lines if line.startswith("1 child gave wrong results")]
    assert wrong == [
        "1 child gave wrong results: wrong values on shape (300, 260, 280) (e.g. split_k 1 -> 4): "
        "check the edge masks and the K loop on these shapes"
    ]
    assert not any("CPU backend" in line for line in lines)  # unsupported: the judge's limit, no lesson


def test_unknown_failures_keep_their_own_words_without_numbers():
    assert failure_kind("shape (1, 64, 64) layout nn: the entry point raised: ValueError: bad 42") == (
        "the entry point raised: ValueError: bad N",
        "",
    )
    assert failure_kind("") == ("no feedback", "")


def test_order_is_helped_then_hurt_then_failures():
    lines = distil(_run(), version=1, max_lines=50).text.splitlines()[1:]
    kinds = [
        "helped" if " helped " in line else "avoid" if line.startswith("Avoid") else "failure"
        for line in lines
    ]
    assert kinds == sorted(kinds, key=["helped", "avoid", "failure"].index), lines
    assert kinds.count("failure") == 3
    helped = [line for line in lines if " helped " in line]
    assert helped[0].startswith("Raising BLOCK_N")  # 3 helped before 1 helped


def test_max_lines_keeps_the_best_evidence():
    full = distil(_run(), version=1, max_lines=50).text.splitlines()
    assert len(full) == 13 and len(distil(_run(), version=1).text.splitlines()) == 12  # the default
    short = distil(_run(), version=1, max_lines=4).text.splitlines()
    assert len(full) > 4 and len(short) == 4
    assert short[0] == full[0]
    # Evidence: BLOCK_N helped 3; then 2-children lines, ties going to the earlier section (avoid lines
    # before the shared-memory and os failures).
    assert short[1:] == [
        "Raising BLOCK_N to 256 helped 3 of 5 times (+12% median)",
        "Avoid lowering num_stages to 2: worse in 2 of 3 tries (-6% median)",
        "Avoid raising BLOCK_M to 256: failed in 2 of 2 tries",
    ]
    assert all(line in full for line in short)
    assert [full.index(line) for line in short] == sorted(full.index(line) for line in short)  # order kept
    assert distil(_run(), version=1, max_lines=1).text == full[0]
    with pytest.raises(ValueError, match="max_lines"):
        distil(_run(), version=1, max_lines=0)


def test_deterministic_and_dicts_accepted():
    a = distil(_run(), version=2)
    b = distil([dataclasses.asdict(o) | {"extra_column": 1} for o in _run()], version=2)
    assert a == b
    assert a == Lessons(2, 14, a.text)
    assert distil(_run(), version=2).text == a.text  # same input, same text


def test_empty_and_uninformative_input():
    empty = distil([], version=0)
    assert empty == Lessons(0, 0, "No evaluations yet: nothing learned so far.")
    seeds = distil([Outcome("s1", "seed", "", "ok", "", None, 1.0)], version=1)
    assert seeds.text == "Lessons from 1 evaluation: no change has clearly helped, hurt or failed yet."
    assert seeds.evaluations == 1


def test_malformed_outcomes_are_refused():
    with pytest.raises(ValueError, match="unknown status"):
        Outcome("c1", status="fine")
    with pytest.raises(ValueError, match="candidate"):
        distil([{"status": "ok"}], version=1)
