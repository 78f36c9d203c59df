"""Fresh shapes (evaluators/fresh_shapes.py): what each drawn shape guarantees, over many draws;
the task field's validation; how a verdict names them; and that the two kernels they exist for
pass the named shapes (fresh = 0) and fail with them."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from evaluators import Task, evaluate
from evaluators.evaluation import Evaluation, ShapeResult
from evaluators.fresh_shapes import draw, mark, with_fresh
from evaluators.task import TaskError, load_task

ROOT = Path(__file__).resolve().parents[1]
TASK = Task(
    name="t", dtype="fp16", layouts=("nn",), train=((256, 256, 256),), held_out=(), check=((64, 64, 64),)
)
DRAWS = 400
BLOCKS = (16, 32, 64, 128, 256)  # BLOCK_M / BLOCK_N a kernel might use (powers of two, tl.dot >= 16)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def grouped_tiles(rows: int, cols: int, group: int, with_min: bool) -> set[tuple[int, int]]:
    """The (tile row, tile column) pairs a grouped-ordering launch writes (the seed's mapping)."""
    written = set()
    for pid in range(rows * cols):
        per_group = group * cols
        first = pid // per_group * group
        group_rows = min(rows - first, group) if with_min else group
        m, n = first + pid % per_group % group_rows, pid % per_group // group_rows
        if m < rows:  # rows past M are masked out
            written.add((m, n))
    return written


def loses_tiles(m: int, n: int, block_m: int, block_n: int, group: int) -> bool:
    rows, cols = cdiv(m, block_m), cdiv(n, block_n)
    assert grouped_tiles(rows, cols, group, with_min=True) == {
        (r, c) for r in range(rows) for c in range(cols)
    }
    return len(grouped_tiles(rows, cols, group, with_min=False)) < rows * cols


@pytest.fixture(scope="module")
def drawn() -> list[tuple]:
    rng = random.Random(1234)
    return [draw(TASK, rng) for _ in range(DRAWS)]


def test_three_shapes_by_default_none_a_named_one(drawn):
    assert TASK.fresh == 3
    assert all(len(shapes) == 3 and (64, 64, 64) not in shapes for shapes in drawn)
    assert len({shapes for shapes in drawn}) > DRAWS * 0.99  # a new draw each time


def test_decode_shape(drawn):
    ms = [shapes[0][0] for shapes in drawn]
    assert set(ms) == set(range(1, 16))
    assert 0.18 < ms.count(1) / DRAWS < 0.32  # M = 1, a path of its own, a quarter of the time
    for m, n, k in (shapes[0] for shapes in drawn):
        assert 257 <= n <= 320 and n % 16 and 17 <= k <= 96 and k % 16  # one divisibility class
        # One tile row: a last group not cut to the rows left drops column tiles, for any tiles.
        for block_m in BLOCKS:
            for block_n in BLOCKS:
                assert loses_tiles(m, n, block_m, block_n, 8), (m, n, block_m, block_n)


def test_ragged_shape_k_is_no_multiple_of_a_tile(drawn):
    for m, n, k in (shapes[1] for shapes in drawn):
        assert m % 16 and n % 16 and 17 <= m <= 112 and 17 <= n <= 112
        assert k % 2 == 1 and k % 8 and k % 16 and 17 <= k <= 111
        assert k // 16 * 16 < k  # the K tail a rounded-down loop drops


def test_tall_shape_tile_rows(drawn):
    seen_m = set()
    for m, n, k in (shapes[2] for shapes in drawn):
        seen_m.add(m)
        assert 33 <= n <= 63 and n % 16 and 17 <= k <= 47 and k % 16
        for block_m in BLOCKS:
            rows = cdiv(m, block_m)
            assert rows % 2 == 1, (m, block_m)  # never a multiple of GROUP_M 2, 4, 8, ...
            assert rows >= (9 if block_m <= 128 else 5), (m, block_m)  # a full group and a partial one
            for group in (2, 4, 8):
                for block_n in (b for b in BLOCKS if b < n):  # two or more column tiles
                    assert loses_tiles(m, n, block_m, block_n, group), (m, n, block_m, block_n, group)
    assert seen_m == set(range(1025, 1040))


def test_cost_stays_small(drawn):
    # The interpreter's cost grows with M*N*K padded to the tiles; the ragged (300, 260, 280) shape
    # of runs/demo_cpu.toml is 21.8 M, and each fresh shape stays well below it.
    for shapes in drawn:
        assert all(m * n * k <= 8_000_000 for m, n, k in shapes), shapes


def test_count_zero_and_more_than_three():
    assert draw(dataclasses.replace(TASK, fresh=0)) == ()
    six = draw(dataclasses.replace(TASK, fresh=6), random.Random(5))
    assert len(set(six)) == 6
    assert six[3][0] <= 16 and six[5][0] > 1024  # the kinds again, in turn


def test_default_draw_is_unpredictable():
    assert len({draw(TASK) for _ in range(20)}) == 20  # seeded from secrets, not a fixed seed


def test_with_fresh_and_mark():
    shapes = ((5, 300, 40), (37, 40, 23), (2050, 50, 30))
    assert with_fresh(TASK, shapes).check == ((64, 64, 64), *shapes)
    assert with_fresh(TASK, ()) is TASK
    ev = Evaluation(
        status="incorrect",
        backend="model:h100",
        feedback="shape (37, 40, 23) layout nn, normal inputs: max scaled error; not shape (37, 40, 2)",
        shapes=[
            ShapeResult(shape=(64, 64, 64)),
            ShapeResult(shape=(37, 40, 23)),
            ShapeResult((37, 40, 23), kind="train"),
        ],
    )
    mark(ev, shapes)
    assert (
        ev.feedback.startswith("fresh shape (37, 40, 23) layout nn")
        and "not shape (37, 40, 2)" in ev.feedback
    )
    assert [s.kind for s in ev.shapes] == ["check", "fresh", "train"]
    assert ev.provenance["fresh_shapes"] == [list(s) for s in shapes]


# ------------------------------------------------------------------ the task field


def _task_file(tmp_path, line: str) -> Path:
    path = tmp_path / "task.toml"
    path.write_text(
        f'[task]\nname = "t"\ndtype = "fp16"\n{line}\n[shapes]\ntrain = [[64, 64, 64]]\ncheck = [[16, 16, 16]]\n'
    )
    return path


def test_task_field_fresh(tmp_path):
    assert load_task(_task_file(tmp_path, "")).fresh == 3
    assert load_task(_task_file(tmp_path, "fresh = 0")).fresh == 0
    assert load_task(ROOT / "runs" / "demo_cpu.toml").fresh == 3
    assert Task.from_dict(dataclasses.replace(TASK, fresh=5).to_dict()).fresh == 5
    for bad in ("fresh = -1", "fresh = 10", "fresh = true", 'fresh = "3"', "fresh = 1.5"):
        with pytest.raises(TaskError) as info:
            load_task(_task_file(tmp_path, bad))
        text = str(info.value)
        assert (
            "task.toml" in text and "'fresh'" in text and "from 0 to 9" in text and "0 turns them off" in text
        )


# ------------------------------------------------------------------ judged for real (CPU, seconds each)

KERNELS = ROOT / "tests" / "adversarial" / "kernels"


@pytest.mark.parametrize("name", ["k_rounded_down", "group_without_min"])
def test_cheats_pass_the_named_shapes_and_fail_a_fresh_one(name):
    source = (KERNELS / f"{name}.py").read_text()
    named = evaluate(source, dataclasses.replace(TASK, fresh=0), memo=False, timeout_s=60.0)
    assert named.status == "ok", named.feedback  # the named shapes alone let it through
    assert "fresh_shapes" not in named.provenance
    fresh = evaluate(source, TASK, memo=False, timeout_s=60.0, stage="verified")  # fresh shapes: verified
    assert fresh.status == "incorrect", fresh.feedback
    assert "fresh shape (" in fresh.feedback
    assert len(fresh.provenance["fresh_shapes"]) == 3
    assert [s.kind for s in fresh.shapes].count("fresh") >= 1


def test_group_without_min_fails_the_tall_shape_alone():
    source = (KERNELS / "group_without_min.py").read_text()
    tall = draw(TASK)[2]
    ev = evaluate(
        source, dataclasses.replace(TASK, check=(tall,), fresh=0, trials=1), memo=False, timeout_s=60.0
    )
    assert ev.status == "incorrect", ev.feedback
    assert f"shape {tall}" in ev.feedback


def test_seed_is_ok_with_fresh_shapes_and_a_memo_hit_keeps_the_draw(tmp_path):
    from evaluators.compile import CompileCache

    source = (ROOT / "kernels" / "seeds" / "tiled_matmul.py").read_text()
    cache = CompileCache(tmp_path)
    # fresh shapes belong to the expensive stage; no whole grids or samples needed here
    quick = {"stage": "verified", "verify_programs": 0, "verify_sample_s": 0.0}
    first = evaluate(source, TASK, cache=cache, timeout_s=60.0, **quick)
    assert first.status == "ok", first.feedback
    fresh = [tuple(s) for s in first.provenance["fresh_shapes"]]
    assert [tuple(s.shape) for s in first.shapes if s.kind == "fresh"] == fresh
    again = evaluate(source, TASK, cache=cache, timeout_s=60.0, **quick)
    assert again.provenance.get("memo_hit") and again.status == "ok"
    assert again.provenance["fresh_shapes"] == first.provenance["fresh_shapes"]
