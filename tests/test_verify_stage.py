"""The expensive stage on CPU (evaluators/verify_stage.py, program_sample.py, coverage.reduced_k):
whole grids at a reduced K, sampled programs at full size, and the stage a verdict says it reached."""

from __future__ import annotations

from pathlib import Path

from evaluators import Task, coverage, evaluate

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "tests" / "adversarial" / "kernels"
SEED = ROOT / "kernels" / "seeds" / "tiled_matmul.py"
HONEST = ROOT / "tests" / "honest"
# One training shape of 1024 programs (32x32 tiles) for the cheats; check shapes far smaller.
RARE = Task(name="r", dtype="fp16", layouts=("nn",), train=((640, 640, 64),), held_out=(), check=((64, 64, 64),),
            trials=1, fresh=0)  # 400 programs of 32x32  # fmt: skip
BIG_GRID = Task(name="v", dtype="fp16", layouts=("nn",), train=((1024, 1024, 64),), held_out=(),
                check=((64, 64, 64),), trials=1, fresh=0)  # fmt: skip
SMALL = Task(name="s", dtype="fp16", layouts=("nn", "nt"), train=((256, 192, 512),), held_out=((128, 320, 256),),
             check=((64, 64, 64),), trials=1, fresh=0)  # fmt: skip


def _launch(k_arg: int, programs: int, k: int):
    facts = {"kernel": "mm", "constexprs": {"BLOCK_K": 64}, "options": (4, 3), "args": [None, 384, 384, k_arg],
             "grid": [programs]}  # fmt: skip
    return coverage.identity((384, 384, k), "nn", [facts])


def test_reduced_k_halves_while_launches_and_grids_hold():
    want = _launch(4096, 16, 4096)
    assert coverage.reduced_k((384, 384, 4096), "nn", want, lambda s, lay: _launch(s[2], 16, s[2])) == 16

    # split-K: the grid grows with K, so the whole grid is only the same at the training K's
    def split_k(shape, layout):
        return _launch(shape[2], 16 * max(1, shape[2] // 1024), shape[2])

    assert coverage.reduced_k((384, 384, 4096), "nn", _launch(4096, 64, 4096), split_k) == 4096
    # a K capped by the entry point (min(K, 512)) is a constant past 512: the path changes below it
    assert coverage.reduced_k((384, 384, 4096), "nn", _launch(512, 16, 4096),
                              lambda s, lay: _launch(min(s[2], 512), 16, s[2])) == 4096  # fmt: skip
    # multiples of 16 stay multiples of 16 (the same compiled specialisation); others go down to 16
    same = lambda s, lay: _launch(s[2], 16, s[2])  # noqa: E731
    assert (
        coverage.reduced_k((384, 384, 4000), "nn", _launch(4000, 16, 4000), same) == 2000
    )  # 1000 = 16 * 62.5
    assert coverage.reduced_k((384, 384, 4100), "nn", _launch(4100, 16, 4100), same) == 16
    assert (
        coverage.reduced_k((384, 384, 80), "nn", _launch(80, 16, 80), lambda s, lay: _launch(s[2], 16, s[2]))
        == 80
    )
    assert coverage.reduced_k((384, 384, 8), "nn", _launch(8, 16, 8), lambda s, lay: None) == 8


def test_the_seed_is_verified_on_whole_grids_and_sampled_programs():
    ev = evaluate(SEED.read_text(), SMALL, memo=False, stage="verified")
    assert (ev.status, ev.stage) == ("ok", "verified"), ev.feedback
    rows = ev.provenance["verification"]
    # every training and held-out shape and layout ran whole, at a K with the same launches
    assert {(tuple(r["shape"]), r["layout"]) for r in rows} == {
        (s, lay) for s in ((256, 192, 512), (128, 320, 256)) for lay in ("nn", "nt")
    }
    assert all("left_out" not in r["whole_grid"] and r["whole_grid"]["K"] < r["shape"][2] for r in rows)
    reduced = [s for s in ev.shapes if s.kind == "reduced"]
    assert len(reduced) == 4 and all(s.max_scaled_err is not None for s in reduced)
    # one layout per shape ran at full size on sampled programs, their written elements compared
    sampled = [r["sampled"] for r in rows if "sampled" in r]
    assert len(sampled) == 2 and all(s["compared"] > 0 for s in sampled), sampled
    # besides the first, last and a random one: the programs that own the ends and middles of C's last
    # row and column (64x64 tiles: 256 x 192 has 4 x 3 programs; those corners and middles are 4 or 5)
    big = next(r["sampled"] for r in rows if "sampled" in r and r["shape"] == [256, 192, 512])
    assert int(big["programs"].split(" of ")[0]) >= 5, big
    assert sum(s.kind == "sampled" for s in ev.shapes) == 2
    assert ev.seconds["whole_grids"] > 0 and ev.seconds["sampled"] > 0


def test_provisional_is_the_cheap_stage_only_and_the_default():
    ev = evaluate(SEED.read_text(), SMALL, memo=False)
    assert (ev.status, ev.stage) == ("ok", "provisional") and not ev.rankable
    assert "verification" not in ev.provenance and not any(
        s.kind in ("reduced", "sampled") for s in ev.shapes
    )


def test_a_rare_skipped_program_passes_the_cheap_stage_and_fails_the_whole_grid():
    source = (KERNELS / "rare_program_skip.py").read_text()
    cheap = evaluate(source, RARE, memo=False, stage="provisional")
    assert (cheap.status, cheap.stage) == ("ok", "provisional"), cheap.feedback
    ev = evaluate(source, RARE, memo=False, stage="verified")
    assert (ev.status, ev.stage) == ("incorrect", "verified"), ev.feedback
    assert "training shape (640, 640, 64) run whole (400 programs, every one) at K = 16" in ev.feedback


def test_sampled_programs_at_full_size_catch_what_only_the_full_size_does():
    """With the whole grids' budget at 0, the sampled programs at the training shape are the net."""
    source = (KERNELS / "skip_when_mn_large.py").read_text()
    ev = evaluate(source, BIG_GRID, memo=False, stage="verified", verify_programs=0)
    assert (ev.status, ev.stage) == ("incorrect", "verified"), ev.feedback
    assert "training shape (1024, 1024, 64) layout nn at full size (sampled programs)" in ev.feedback
    rows = ev.provenance["verification"]
    assert "over the 0 left of EvalOptions.verify_programs" in rows[0]["whole_grid"]["left_out"]


def test_partials_combined_across_programs_are_compared_on_the_whole_grid_only():
    source = (HONEST / "splitk_atomic_bf16.py").read_text()
    task = Task(name="k", dtype="bf16", layouts=("nn",), train=((128, 128, 2048),), held_out=(),
                check=((64, 64, 256),), trials=1, fresh=0)  # fmt: skip
    ev = evaluate(source, task, memo=False, stage="verified")
    assert (ev.status, ev.stage) == ("ok", "verified"), ev.feedback
    row = ev.provenance["verification"][0]
    assert "atomics" in row["sampled"]["not_compared"] and "reduced K" in row["sampled"]["not_compared"]
    assert "left_out" not in row["whole_grid"]


def test_a_spent_sample_budget_lists_what_it_left_out():
    ev = evaluate(
        SEED.read_text(), SMALL, memo=False, stage="verified", verify_programs=0, verify_sample_s=0.0
    )
    assert ev.ok, ev.feedback
    left = [r["sampled"]["left_out"] for r in ev.provenance["verification"] if "sampled" in r]
    assert left and all("verify_sample_s" in x for x in left)


def test_a_shape_too_large_for_the_child_is_left_out_with_the_reason():
    """45000 x 45000 in fp32: C alone is 8 GB, over half the check child's 12 GiB address space."""
    task = Task(name="big", dtype="fp32", layouts=("nn",), train=((45000, 45000, 64),), held_out=(),
                check=((64, 64, 64),), trials=1, fresh=0)  # fmt: skip
    ev = evaluate(SEED.read_text(), task, memo=False, stage="verified", verify_programs=0)
    assert ev.ok, ev.feedback
    row = ev.provenance["verification"][0]
    assert "need ~7.6 GiB, over the 6.0 GiB a check child may use" in row["sampled"]["left_out"], row
