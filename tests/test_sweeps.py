"""Constant sweeps (evolve/meta/sweeps.py): neighbours of a module that move one launch constant, in place."""

import random
from pathlib import Path

from evaluators.static_rules import check_source
from evolve.meta.sweeps import constants, sweeps

SEED = (Path(__file__).resolve().parents[1] / "kernels" / "seeds" / "tiled_matmul.py").read_text()


def test_the_seeds_constants_are_found_inside_its_regions_only():
    found = constants(SEED)
    knobs = {k for k, *_ in found}
    assert knobs == {"BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages"}
    assert len(found) == 18  # three configs of six constants in pick_config
    lines = SEED.split("\n")
    assert all("return dict(" in lines[line - 1] for _, _, line, _ in found)
    outside = SEED.replace("# EVOLVE-BLOCK-START\n@triton.jit", "@triton.jit").replace(
        "\n# EVOLVE-BLOCK-END\n", "\n"
    )
    assert outside != SEED and constants(outside) == []  # pick_config outside every region now


def test_each_sweep_moves_one_constant_one_step_and_keeps_the_rest_byte_identical():
    out = sweeps(SEED, 6, random.Random(0))
    assert len(out) == 6 and len({s for s, _ in out}) == 6
    for child, note in out:
        changed = [(a, b) for a, b in zip(SEED.split("\n"), child.split("\n"), strict=True) if a != b]
        assert len(changed) == 1, note
        old, new = changed[0]
        assert note.startswith("sweep: ") and f"(line {SEED.split(chr(10)).index(old) + 1})" in note
        knob, move = note.removeprefix("sweep: ").split(" (")[0].split(" ", 1)
        before, after = move.split(" -> ")
        assert f"{knob}={before}" in old and f"{knob}={after}" in new
        assert old.replace(f"{knob}={before}", f"{knob}={after}") == new
        assert not [v for v in check_source(child, parent_source=SEED) if v.rule == "evolve-block"]


def test_dict_entries_and_launch_keywords_count_and_odd_literals_are_left_alone():
    src = (
        "CONFIGS = [{'BLOCK_N': 128, 'num_stages': 3}]\n"
        "def f(k, grid):\n    k[grid](x, BLOCK_M=64, num_warps=0x4, num_stages=7)\n"
    )
    found = {(k, v) for k, v, *_ in constants(src)}
    assert found == {("BLOCK_N", 128), ("num_stages", 3), ("BLOCK_M", 64), ("num_warps", 4)}
    moved = {note for _, note in sweeps(src, 20, random.Random(1))}
    assert not any("num_warps" in n for n in moved)  # written 0x4: not edited as "4"
    assert "sweep: BLOCK_N 128 -> 256 (line 1)" in moved and "sweep: BLOCK_M 64 -> 32 (line 3)" in moved
    assert sweeps("def broken(:\n", 3, random.Random(0)) == []
