"""Fresh shapes: a few small shapes drawn for each evaluation, checked like the task's `check` shapes.

The CPU judge runs the interpreter on the shapes a task names. A kernel wrong only on shapes nobody
named would pass: K rounded down to a multiple of the K tile, grouped program ordering that forgets
`min(rows left, GROUP_M)` in the last group, an `M == 1` path. So each evaluation draws
`task.fresh` more shapes (default 3) from randomness the candidate cannot predict (seeded from
`secrets`), and they join the check shapes for that evaluation only: the same interpreter checks,
input kinds, trials, race check, and the offline compile of every launch (a tile the target cannot
build on them is a `compile_error` like any check shape's). Each one guarantees a property, whatever
the draw (tests/test_fresh_shapes.py holds them to it over many draws):

- decode: M in 1..15 (M = 1, which Triton specialises as a constant and entry points branch on, a
  quarter of the time), K in 17..96 and N in 257..320 not multiples of 16 (every fresh shape then
  shares one divisibility specialisation), so every BLOCK_N up to 256 leaves two
  or more column tiles, the last one partial: grouped ordering whose last group is not cut to the
  rows left writes only the first column tiles here (one tile row, fewer than any GROUP_M >= 2);
- ragged: M and N in 17..112, neither a multiple of 16; K in 17..111 odd, so not a multiple of 2,
  4, 8 or 16: a K loop rounded down to any power-of-two tile drops the tail;
- tall: M = 512 * TALL_P + s with s in 1..15 (1025..1039), so for every BLOCK_M that is a power of
  two from 16 to 256 the tile-row count (1024/BLOCK_M + 1) is odd, never a multiple of a power-of-two
  GROUP_M, and for BLOCK_M up to 128 it is at least 9: a full group of any GROUP_M <= 8 and a partial
  last one (BLOCK_M = 256: 5 rows, one partial group). N in 33..63 and K in 17..47, neither a multiple
  of 16: a kernel whose BLOCK_N is below N has two or more column tiles here, the case where a wrong
  last group loses whole tiles. Cost: the interpreter spends ~9 ms per program whatever its tile
  (measured, seed kernel), so this shape costs its program count; TALL_P = 4 (>= 9 rows for BLOCK_M
  256 too) doubled it, and fresh shapes then added 30% to the judge's CPU time per candidate on
  runs/demo_cpu.toml, over the issue's budget.

A task's `fresh` field sets how many (0 turns them off: tests that need exact shapes); more than 3
cycle through the kinds again with new values. Drawn only for the CPU backend (on a GPU the checks
run every training and held-out shape at full size). A drawn shape equal to a named check shape is
drawn again.

Memo: a verdict is memoised by (source, task, backend, judge fingerprint), the task as named (its
`fresh` count, not the shapes drawn), so judging the same source again returns the verdict reached
on the earlier draw. That is acceptable: every draw carries the guarantees above, so another draw
tests the same properties with other values; the stored verdict's provenance names the shapes it
was reached on (`fresh_shapes`), and a new judge (fingerprint) or a new task misses the memo.
"""

from __future__ import annotations

import dataclasses
import random
import secrets

from .evaluation import Evaluation
from .task import Shape, Task

KINDS = ("decode", "ragged", "tall")
TALL_P = 2  # tall M = 512 * TALL_P + (1..15): tile-row counts odd, >= 9 for BLOCK_M <= 64 * TALL_P


def draw(task: Task, rng: random.Random | None = None) -> tuple[Shape, ...]:
    """`task.fresh` shapes, in turn decode, ragged, tall (see the module docstring for what each
    guarantees), none equal to a named check shape. `rng`: for tests; by default a generator seeded
    from `secrets`, so the candidate cannot predict the shapes."""
    rng = rng if rng is not None else random.Random(secrets.randbits(128))
    named = {tuple(s) for s in task.check}
    out: list[Shape] = []
    for i in range(task.fresh):
        shape = _DRAW[KINDS[i % len(KINDS)]](rng)
        while shape in named or shape in out:
            shape = _DRAW[KINDS[i % len(KINDS)]](rng)
        out.append(shape)
    return tuple(out)


def with_fresh(task: Task, shapes: tuple[Shape, ...]) -> Task:
    """The task of one evaluation: the named check shapes, then the fresh ones."""
    return dataclasses.replace(task, check=(*task.check, *shapes)) if shapes else task


def mark(evaluation: Evaluation, shapes: tuple[Shape, ...]) -> None:
    """Say which shapes were fresh: in the provenance, in the per-shape rows (kind "fresh") and in
    the feedback ("fresh shape (37, 40, 23)"), so a proposer knows the shape was none it was shown."""
    if not shapes:
        return
    evaluation.provenance["fresh_shapes"] = [list(s) for s in shapes]
    fresh = set(shapes)
    for row in evaluation.shapes:
        if row.kind == "check" and tuple(row.shape) in fresh:
            row.kind = "fresh"
    for shape in shapes:  # every stage names a shape as "shape (M, N, K)" (check, compile, crash)
        evaluation.feedback = evaluation.feedback.replace(f"shape {shape}", f"fresh shape {shape}")


def _ragged(rng: random.Random, low: int, high: int) -> int:
    """A value in low..high that is not a multiple of 16 (a partial last tile for any tile >= 16)."""
    while True:
        value = rng.randint(low, high)
        if value % 16:
            return value


def _decode(rng: random.Random) -> Shape:
    # Every dimension off a multiple of 16 (M = 1 aside): all fresh shapes then share Triton's
    # divisibility specialisation with each other and with a ragged named shape, so they seldom
    # bring a new one to compile (each costs ~0.5-1 s of the judge's time).
    m = 1 if rng.random() < 0.25 else _ragged(rng, 2, 15)
    return (m, _ragged(rng, 257, 320), _ragged(rng, 17, 96))


def _ragged_shape(rng: random.Random) -> Shape:
    return (_ragged(rng, 17, 112), _ragged(rng, 17, 112), rng.randrange(17, 112, 2))


def _tall(rng: random.Random) -> Shape:
    return (512 * TALL_P + rng.randint(1, 15), _ragged(rng, 33, 63), _ragged(rng, 17, 47))


_DRAW = {"decode": _decode, "ragged": _ragged_shape, "tall": _tall}
