"""Constant sweeps: neighbours of a kernel module that differ in one launch constant.

An LLM child carries a structural idea and whatever constants the model happened to write; a good
idea with a bad tile or stage count loses to its parent and is never tried again. Before it
competes, an LLM child that is correct gets a few sweeps (evolve/proposing.py): copies of ITS OWN
source with one integer constant moved to a neighbouring value (tiles halved or doubled, warps and
stages one step), each edited in place at the literal's position, never re-rendered from a template
(which would throw the idea away), and only inside the module's EVOLVE-BLOCK regions (the judge
refuses an edit outside them).

A constant is an integer literal given to one of KNOBS as a keyword argument (`dict(BLOCK_N=128)`,
`kernel[grid](..., num_stages=3)`, `triton.Config({...}, num_warps=8)`) or as a dict entry
(`{"BLOCK_N": 128}`), wherever the module writes one.
"""

from __future__ import annotations

import ast
import random

from evolve.proposers.edits import evolve_regions

# The knobs a sweep moves and the values each may take (powers of two for tiles and warps: what
# tl.arange and the MMA layouts accept; stages 2-6: what fits a Hopper SM's shared memory at most tiles).
KNOBS = {
    "BLOCK_M": (16, 32, 64, 128, 256),
    "BLOCK_N": (16, 32, 64, 128, 256),
    "BLOCK_K": (16, 32, 64, 128),
    "GROUP_M": (1, 2, 4, 8, 16),
    "num_warps": (2, 4, 8),
    "num_stages": (2, 3, 4, 5, 6),
}


def constants(source: str) -> list[tuple[str, int, int, int]]:
    """The sweepable constants of `source` inside its EVOLVE-BLOCK regions (the whole module when it has
    none): (knob, value, line, column) of each integer literal, in source order; [] when it does not parse."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    regions = evolve_regions(source)
    found = []
    for node in ast.walk(tree):
        pairs = []
        if isinstance(node, ast.keyword) and node.arg in KNOBS:
            pairs.append((node.arg, node.value))
        elif isinstance(node, ast.Dict):
            pairs += [(k.value, v) for k, v in zip(node.keys, node.values, strict=True)
                      if isinstance(k, ast.Constant) and k.value in KNOBS]  # fmt: skip
        for knob, value in pairs:
            if isinstance(value, ast.Constant) and type(value.value) is int and value.value in KNOBS[knob]:
                line = value.lineno
                if not regions or any(first <= line <= last for first, last in regions):
                    found.append((knob, value.value, line, value.col_offset))
    return sorted(found, key=lambda c: (c[2], c[3]))


def sweeps(source: str, count: int, rng: random.Random) -> list[tuple[str, str]]:
    """Up to `count` distinct neighbours of `source`, each one constant moved one step up or down its
    knob's values: (new source, note such as "sweep: BLOCK_N 128 -> 256 (line 74)"). Drawn from `rng`."""
    moves = []
    for knob, value, line, col in constants(source):
        values = KNOBS[knob]
        i = values.index(value)
        moves += [(knob, value, values[j], line, col) for j in (i - 1, i + 1) if 0 <= j < len(values)]
    rng.shuffle(moves)
    lines = source.split("\n")
    out, seen = [], set()
    for knob, old, new, line, col in moves:
        if len(out) >= count:
            break
        text = lines[line - 1]
        literal = str(old)
        if text[col : col + len(literal)] != literal:  # a literal written another way (1_024, 0x80)
            continue
        edited = lines.copy()
        edited[line - 1] = text[:col] + str(new) + text[col + len(literal) :]
        child = "\n".join(edited)
        if child not in seen:
            seen.add(child)
            out.append((child, f"sweep: {knob} {old} -> {new} (line {line})"))
    return out
