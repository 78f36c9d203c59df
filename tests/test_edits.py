"""Applying LLM answers to the seed kernel: SEARCH/REPLACE diffs, whole-module rewrites, and every
way an answer is refused (with a reason that names the block and the fix)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from evaluators.static_rules import check_source
from evolve.proposers.edits import EditResult, apply_answer, evolve_regions

ROOT = Path(__file__).resolve().parents[1]
SEED = (ROOT / "kernels/seeds/tiled_matmul.py").read_text()

SKINNY_OLD = "        return dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4)"
SKINNY_NEW = "        return dict(BLOCK_M=16, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=5)"
LARGE_OLD = "    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)"
SIG = "def pick_config(M: int, N: int, K: int) -> dict:"
LARGE_NEW = "    return dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=32, GROUP_M=4, num_warps=8, num_stages=4)"


def block(search: str, replace: str) -> str:
    return f"<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE"


def judge_outside(source: str) -> list[str]:
    return [v.message for v in check_source(source, parent_source=SEED) if v.rule == "evolve-block"]


def test_seed_regions_are_the_kernel_with_its_configs_and_the_entry_points_body() -> None:
    lines = SEED.split("\n")
    [(first, last), (body_first, body_last)] = evolve_regions(SEED)
    assert lines[first - 2] == "# EVOLVE-BLOCK-START"
    assert lines[first - 1] == "@triton.jit" and SIG in lines[first - 1 : last]
    assert lines[last] == "# EVOLVE-BLOCK-END"
    assert (
        lines[body_first - 3].startswith("def matmul(")
        and lines[body_first - 2] == "    # EVOLVE-BLOCK-START"
    )
    assert lines[body_last - 1] == "    return c" and lines[body_last] == "    # EVOLVE-BLOCK-END"
    assert evolve_regions("import torch\n") == []
    assert evolve_regions("# EVOLVE-BLOCK-START\nx = 1\n") == []  # unbalanced: constrains nothing


def test_diff_with_prose_and_fence_is_applied_and_passes_the_judge_rule() -> None:
    answer = (
        "Skinny shapes are memory bound, so a narrower row tile and a deeper pipeline should help.\n\n"
        f"```python\n{block(SKINNY_OLD, SKINNY_NEW)}\n```\n\n"
        "This keeps the rest of the kernel as it is."
    )
    result = apply_answer(SEED, answer)
    assert result == EditResult("applied", result.source, "diff", 1, result.reason)
    assert SKINNY_NEW in result.source and SKINNY_OLD not in result.source
    assert result.source == SEED.replace(SKINNY_OLD, SKINNY_NEW)
    ast.parse(result.source)
    assert judge_outside(result.source) == []


def test_two_blocks_apply_in_order_with_crlf_and_sloppy_markers() -> None:
    # The second block searches for text the first one wrote, so order matters.
    answer = (
        "Two changes:\r\n\r\n"
        "<<<<<<< SEARCH   \r\n" + LARGE_OLD + "\r\n=========\r\n" + LARGE_NEW + "\r\n>>>>>>>> REPLACE\r\n\r\n"
        "<<<<<<< SEARCH\r\n" + LARGE_NEW + "\r\n=======\r\n"
        "    if K >= 4096:\r\n"
        "        return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4)\r\n"
        + LARGE_NEW
        + "\r\n>>>>>>> REPLACE\r\n"
    )
    result = apply_answer(SEED, answer)
    assert (result.status, result.mode, result.edits) == ("applied", "diff", 2), result.reason
    assert "\r" not in result.source
    assert "    if K >= 4096:\n" in result.source
    assert result.source.index("if K >= 4096") < result.source.index(LARGE_NEW)
    assert LARGE_OLD not in result.source
    ast.parse(result.source)
    assert judge_outside(result.source) == []


def test_indentation_drift_is_matched_and_replacement_reindented() -> None:
    # The model quoted the branch with four extra spaces, and a trailing space after the `if`.
    comment = "        # Skinny (decode-like) products: small row tiles waste less work.\n"
    search = "    if M <= 64:  \n" + comment + SKINNY_OLD
    replace = "    if M <= 32:\n" + comment + SKINNY_NEW
    answer = "Here is the fix:\n\n" + block(textwrap_indent(search), textwrap_indent(replace)) + "\n"
    result = apply_answer(SEED, answer)
    assert result.status == "applied", result.reason
    assert "\n    if M <= 32:\n" + comment + SKINNY_NEW + "\n" in result.source
    ast.parse(result.source)


def textwrap_indent(text: str) -> str:
    return "\n".join("    " + line for line in text.split("\n"))


def test_absent_search_names_the_block_and_its_first_line() -> None:
    answer = (
        block(SKINNY_OLD, SKINNY_NEW)
        + "\n\n"
        + block(
            "    if M <= 128:\n        return dict(BLOCK_M=64)", "    if M <= 256:\n        return dict()"
        )
    )
    result = apply_answer(SEED, answer)
    assert (result.status, result.source, result.edits) == ("search_not_found", SEED, 0)
    assert "Block 2" in result.reason and "`if M <= 128:`" in result.reason


def test_ambiguous_search_is_refused() -> None:
    # Unindented parameter names match both the kernel's signature and the launch's arguments.
    result = apply_answer(SEED, "```\n" + block("M,\nN,\nK,", "M,\nN,\nK,\nsplit_k,") + "\n```")
    assert result.status == "search_not_found"
    assert "Block 1" in result.reason and "occurs 2 times" in result.reason


def test_search_made_ambiguous_by_an_earlier_block_is_refused() -> None:
    # Block 1 writes SKINNY_NEW twice (a new branch with the same config), so block 2 cannot pick one.
    answer = (
        block(SKINNY_OLD, SKINNY_NEW + "\n    if M <= 128:\n" + SKINNY_NEW)
        + "\n"
        + block(SKINNY_NEW, SKINNY_OLD)
    )
    assert apply_answer(SEED, block(SKINNY_OLD, SKINNY_NEW) + "\n" + block(SKINNY_NEW, LARGE_NEW)).edits == 2
    result = apply_answer(SEED, answer)
    assert result.status == "search_not_found"
    assert "Block 2" in result.reason and "occurs 2 times" in result.reason


def test_edit_of_an_import_line_is_outside_the_evolve_block() -> None:
    answer = "Use the libdevice helpers:\n" + block(
        "import triton.language as tl", "import triton.language as tl\nimport math"
    )
    result = apply_answer(SEED, answer)
    assert (result.status, result.source, result.mode) == ("outside_evolve_block", SEED, "diff")
    assert "Block 1" in result.reason and "line 12" in result.reason


def test_copied_marker_context_is_fine_but_moving_a_marker_is_not() -> None:
    jit = "@triton.jit"
    ok = block(f"# EVOLVE-BLOCK-START\n{jit}", f"# EVOLVE-BLOCK-START\nBIG = 4096\n\n\n{jit}")
    assert apply_answer(SEED, ok).status == "applied"
    moved = block(f"# EVOLVE-BLOCK-START\n{jit}", f"{jit}\n# EVOLVE-BLOCK-START")
    result = apply_answer(SEED, moved)
    assert result.status == "outside_evolve_block", result.reason
    assert "marker" in result.reason


def test_whole_module_rewrite_in_a_fence_is_applied() -> None:
    new = SEED.replace(LARGE_OLD, LARGE_NEW)
    answer = (
        "I could not express this as a diff, so here is the full kernel:\n\n"
        "```python\nprint('example')\n```\n\nFirst draft:\n\n"
        f"```python\n{SEED}```\n\nOn reflection, the final version:\n\n"
        f"```python\n{new}```\n\nIt should be faster on large squares."
    )
    result = apply_answer(SEED, answer)
    assert (result.status, result.mode, result.edits) == ("applied", "rewrite", 1), result.reason
    assert result.source == new


def test_rewrite_changing_the_entry_point_signature_is_outside() -> None:
    new = SEED.replace(LARGE_OLD, LARGE_NEW).replace(
        "def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:",
        "def matmul(a: torch.Tensor, b: torch.Tensor, split_k: int = 1) -> torch.Tensor:",
    )
    assert new != SEED.replace(LARGE_OLD, LARGE_NEW)
    result = apply_answer(SEED, f"```python\n{new}```")
    assert (result.status, result.mode, result.source) == ("outside_evolve_block", "rewrite", SEED)
    assert "line 83" in result.reason  # the entry point's signature


def test_prose_only_is_no_code() -> None:
    answer = (
        "I would try BLOCK_N=256 for large shapes and fewer stages for skinny ones.\n```\nBLOCK_N=256\n```"
    )
    result = apply_answer(SEED, answer)
    assert (result.status, result.mode, result.source) == ("no_code", "", SEED)
    assert "SEARCH" in result.reason


def test_unclosed_block_is_not_applied() -> None:
    answer = block(SKINNY_OLD, SKINNY_NEW) + "\n<<<<<<< SEARCH\n" + LARGE_OLD + "\n=======\n"
    result = apply_answer(SEED, answer)
    assert (result.status, result.source) == ("no_code", SEED)
    assert "incomplete" in result.reason


@pytest.mark.parametrize("max_tokens", [None, 2048])
def test_truncated_answer_applies_nothing(max_tokens: int | None) -> None:
    answer = block(SKINNY_OLD, SKINNY_NEW) + "\n<<<<<<< SEARCH\n" + LARGE_OLD + "\n======="
    result = apply_answer(SEED, answer, truncated=True, max_tokens=max_tokens)
    assert (result.status, result.source, result.edits) == ("truncated", SEED, 0)
    assert "cut off" in result.reason
    assert ("2048 tokens" in result.reason) == (max_tokens == 2048)
    assert apply_answer(SEED, block(SKINNY_OLD, SKINNY_NEW)).status == "applied"  # not truncated: applied


def test_edit_that_changes_nothing_is_unchanged() -> None:
    result = apply_answer(SEED, block(SKINNY_OLD, SKINNY_OLD + "   \n"))
    assert (result.status, result.source, result.mode, result.edits) == ("unchanged", SEED, "diff", 1)


def test_parent_without_markers_constrains_nothing() -> None:
    bare = SEED.replace("# EVOLVE-BLOCK-START\n", "").replace("# EVOLVE-BLOCK-END\n", "")
    result = apply_answer(
        bare, block("import triton.language as tl", "import triton.language as tl\nimport math")
    )
    assert result.status == "applied", result.reason
    assert "import math\n" in result.source
