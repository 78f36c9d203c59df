"""Cover shapes (evaluators/coverage.py): the identity of a launch, when two launches take the same
path, and the search that halves a training shape while its path holds."""

from __future__ import annotations

from evaluators import coverage


def launch(shape, layout="nn", block=128, m_arg=None, outcomes=(), programs=1):
    M, N, K = shape
    facts = {
        "kernel": "mm",
        "constexprs": {"BLOCK_M": block},
        "options": (4, 3),
        "args": [None, None, None, M if m_arg is None else m_arg, N, K, True],  # tensors, ints, a bool
        "grid": [programs],
        "outcomes": outcomes,
    }
    return coverage.identity(shape, layout, [facts])


def test_relations_name_the_quantities_up_to_powers_of_two():
    known = coverage.quantities((4096, 1024, 96), "nn")
    assert coverage.relations(4096, known) == {("M", 1.0), ("N", 4.0), ("b.stride(0)", 4.0)}
    assert ("M", 0.5) in coverage.relations(2048, known)
    assert coverage.relations(4095, known) == frozenset({("value", 4095)})  # a constant
    assert len(launch((64, 64, 64))[0].scalars) == 3  # ints only: the bool is a flag, not a size


def test_same_path_needs_the_same_kernels_constexprs_and_relations():
    big = launch((4096, 4096, 4096))
    assert coverage.same_path(launch((128, 4096, 16)), big)
    assert not coverage.same_path(launch((128, 4096, 16), block=64), big)  # another config
    half = launch((4096, 4096, 4096), m_arg=2048)  # the entry point passes M // 2 on big shapes
    assert coverage.same_path(launch((512, 4096, 16), m_arg=256), half)
    assert not coverage.same_path(launch((512, 4096, 16)), half)  # full M: the other path
    assert not coverage.same_path(
        launch((64, 64, 64), outcomes=(0, None)), launch((64, 64, 64), outcomes=(1, 0))
    )
    assert coverage.same_path(launch((64, 64, 64), outcomes=(0, None)), launch((64, 64, 64), outcomes=(0, 1)))


def fake_entry_point(shape, layout):
    """Config by size, as the seed's pick_config: 128-row tiles once M * N > 512 * 512."""
    M, N, K = shape
    block = 128 if M > 64 and M * N > 512 * 512 else 64
    programs = -(-M // block) * -(-N // block)
    return launch(shape, layout, block=block, programs=programs)


def test_search_halves_each_dimension_while_the_path_holds():
    found, reason = coverage.search(
        (4096, 4096, 4096), "nn", fake_entry_point((4096, 4096, 4096), "nn"), fake_entry_point
    )
    assert reason == "" and found == (128, 4096, coverage.MIN_K)  # M * N must stay above 512 * 512
    assert coverage.same_path(fake_entry_point(found, "nn"), fake_entry_point((4096, 4096, 4096), "nn"))


def test_a_path_too_large_for_the_interpreter_is_left_out_with_the_reason():
    def huge(shape, layout):  # every shape smaller than the training one takes another path
        return launch(shape, layout, block=128 if shape == (8192, 8192, 8192) else 64, programs=4096)

    found, reason = coverage.search((8192, 8192, 8192), "nn", huge((8192, 8192, 8192), "nn"), huge)
    assert found == (8192, 8192, 8192) and "too large for the interpreter" in reason


def test_uncovered_lists_each_path_once():
    entries = [
        {"kind": "train", "shape": (4096, 4096, 4096), "layout": "nn", "identity": fake_entry_point((4096,) * 3, "nn")},
        {"kind": "train", "shape": (8192, 4096, 4096), "layout": "nn", "identity": fake_entry_point((8192, 4096, 4096), "nn")},
        {"kind": "train", "shape": (64, 4096, 4096), "layout": "nn", "identity": fake_entry_point((64, 4096, 4096), "nn")},
        {"kind": "check", "shape": (64, 64, 64), "layout": "nn", "identity": fake_entry_point((64, 64, 64), "nn")},
    ]  # fmt: skip
    assert [e["shape"] for e in coverage.uncovered(entries)] == [(4096, 4096, 4096)]  # 8192: the same path
