"""The offline mutator: determinism, every transformation's output passes the static rules and
(one evaluation each, under the CPU interpreter) the full evaluator on the demo task."""

from __future__ import annotations

import ast
import dataclasses
import random
import re
from pathlib import Path

import pytest

from evaluators import evaluate, load_task
from evaluators.static_rules import check_source
from evolve.candidate import Parent, ProposalContext, normalised_hash
from evolve.proposers.kernel_templates import Genome, adopt, parse_bounds, read_genome, render
from evolve.proposers.mutator import (
    TRANSFORMS,
    Env,
    OfflineMutator,
    genome_of,
    mutate,
    numeric_edit,
    rule_index,
)

ROOT = Path(__file__).resolve().parents[1]
SEED = (ROOT / "kernels/seeds/tiled_matmul.py").read_text()
TASK = load_task(ROOT / "runs/demo_cpu.toml")
TASK_D = TASK.to_dict()
NAMES = [*TRANSFORMS, "crossover"]

# The seed with its pick_config replaced by one dict literal: no genome, nothing to adopt.
FOREIGN = re.sub(
    r"def pick_config.*?\n\n\n",
    'CONFIG = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}\n\n\n',
    SEED,
    flags=re.S,
).replace("cfg = pick_config(M, N, K)", "cfg = CONFIG")
RICH = render(
    Genome(
        "splitk",
        True,
        True,
        True,
        (
            {
                "when": {"M_max": 64},
                "BLOCK_M": 32,
                "BLOCK_N": 64,
                "BLOCK_K": 64,
                "GROUP_M": 8,
                "SPLIT_K": 4,
                "num_warps": 4,
                "num_stages": 4,
            },
            {
                "when": {},
                "BLOCK_M": 128,
                "BLOCK_N": 128,
                "BLOCK_K": 64,
                "GROUP_M": 8,
                "SPLIT_K": 1,
                "num_warps": 8,
                "num_stages": 3,
            },
        ),
    )
)


def context(seed: int, count: int = 4) -> ProposalContext:
    return ProposalContext(task=TASK_D, island=0, generation=1, seed=seed, count=count)


def parent(pid: int, source: str) -> Parent:
    return Parent(id=pid, source=source, fitness=0.0, backend="cpu:interpreter", feedback="")


def first(name: str, base: str, accept=lambda src, note: True, task=None, other=None) -> tuple[str, str]:
    """The first seed's output of a transformation that `accept` takes."""
    for s in range(60):
        made = mutate(base, name, random.Random(s), task or TASK_D, other)
        if made is not None and accept(*made):
            return made
    raise AssertionError(f"{name} produced nothing acceptable")


def cheap(source: str, _note: str = "") -> bool:
    """At most 200 tile-steps (programs x K-slabs) per check shape, so the interpreter stays quick."""
    g = read_genome(source)
    steps = lambda r, m, n, k: -(-m // r["BLOCK_M"]) * -(-n // r["BLOCK_N"]) * -(-k // r["BLOCK_K"])  # noqa: E731
    return all(steps(g.rules[rule_index(g, *shape)], *shape) <= 200 for shape in TASK.check)


# ------------------------------------------------------------------------------ determinism


def test_same_seed_same_proposals_and_different_seed_differs():
    parents = [parent(1, SEED), parent(2, RICH)]
    one = OfflineMutator().propose(parents, context(7))
    two = OfflineMutator().propose(parents, context(7))
    assert len(one) == 4 and one == two
    assert [p.source for p in one] != [p.source for p in OfflineMutator().propose(parents, context(8))]
    assert all(p.proposer == "mutator" and p.note and p.parent_ids for p in one)


def test_proposals_are_new_and_pass_static_rules():
    mutator = OfflineMutator()
    proposals = mutator.propose([parent(1, SEED), parent(2, RICH)], context(3, count=12))
    assert len(proposals) == 12
    assert len({p.source for p in proposals} | {SEED, RICH}) == 14
    for p in proposals:
        assert check_source(p.source) == [], p.note
        assert p.source_hash == normalised_hash(p.source)  # computed once, handed to the store


def test_a_given_hash_is_the_one_the_store_deduplicates_by(tmp_path):
    from evolve.store import Store

    with Store.create(tmp_path / "run.sqlite", "h", {}, 0) as store:
        proposals = OfflineMutator().propose([parent(1, SEED)], context(3, count=2))
        assert all(store.add_proposal(p, 0, 1) is not None for p in proposals)
        assert store.add_proposal(proposals[0], 0, 1) is None  # the same kernel again
        assert set(store.all_hashes()) >= {p.source_hash for p in proposals}


def test_weights_select_transformations():
    only = {name: 0.0 for name in NAMES} | {"hints": 1.0}
    proposals = OfflineMutator(only).propose([parent(1, SEED)], context(1, count=1))
    assert "hints on" in proposals[0].note
    with pytest.raises(ValueError):
        OfflineMutator({"unrolling": 1.0})


def test_an_asked_family_is_tried_first_and_named_in_the_proposal():
    mutator = OfflineMutator()
    assert set(mutator.families) == set(NAMES) | {"crossover"}
    for family in ("split_k", "hints", "grouping"):
        ctx = dataclasses.replace(context(5, count=2), family=family)  # one child per parent
        proposals = mutator.propose([parent(1, SEED), parent(2, RICH)], ctx)
        assert proposals and all(p.template == family for p in proposals), [p.note for p in proposals]
    free = OfflineMutator().propose([parent(1, SEED), parent(2, RICH)], context(5, count=12))
    assert len({p.template for p in free}) > 1  # without a family the weights draw several


def test_a_family_that_cannot_apply_falls_back_and_says_which_applied():
    # crossover needs a second parent; with one the mutator draws another family, named in the proposal
    ctx = dataclasses.replace(context(2, count=2), family="crossover")
    proposals = OfflineMutator().propose([parent(1, SEED)], ctx)
    assert len(proposals) == 2 and all(p.template not in ("", "crossover") for p in proposals)
    # a kernel without a genome is edited in place whatever was asked
    foreign = OfflineMutator().propose(
        [parent(3, FOREIGN)], dataclasses.replace(context(1, 1), family="tiles")
    )
    assert [p.template for p in foreign] == ["numeric"]
    # zero weights leave a family out of the arms
    assert "hints" not in OfflineMutator({"hints": 0.0}).families


# ------------------------------------------------------------------------------ each transformation


@pytest.mark.parametrize("base", [SEED, RICH], ids=["seed", "rendered"])
@pytest.mark.parametrize("name", NAMES)
def test_transformation_passes_static_rules(name, base):
    other = RICH if base == SEED else SEED
    for s in range(4):
        made = mutate(base, name, random.Random(s), TASK_D, other)
        if made is None:
            continue
        source, note = made
        assert check_source(source) == [], note
        assert source != base and note
        assert read_genome(source) is not None
        if base == RICH:
            assert "adopted" not in note


def test_split_k_targets_the_skinny_training_shape():
    source, note = first("split_k", SEED)
    g = read_genome(source)
    assert g.template == "splitk" and "SPLIT_K" in note
    assert g.rules[rule_index(g, 16, 4096, 4096)]["SPLIT_K"] > 1
    assert g.rules[rule_index(g, 4096, 4096, 4096)]["SPLIT_K"] == 1


def test_rendered_template_features():
    g = read_genome(RICH)
    persistent = render(Genome("persistent", False, False, False, tuple(dict(r, SPLIT_K=1) for r in g.rules)))
    assert "range(tl.program_id(0), num_tiles, NUM_SMS)" in persistent
    assert "get_device_properties(a.device).multi_processor_count" in persistent and "132" not in persistent
    assert "if EVEN_M and EVEN_K:" in RICH and "tl.multiple_of" in RICH and ".sum(0).to(a.dtype)" in RICH
    assert "EVEN_K" not in persistent and "GROUP_M: tl.constexpr" not in persistent
    for source in (RICH, persistent):
        assert 'precision = "ieee" if a.dtype == torch.float32' in source
        assert "# EVOLVE-BLOCK-START" in source and "# EVOLVE-BLOCK-END" in source


# ------------------------------------------------------------------------------ adoption, crossover, fallback


def test_adopt_seed_keeps_its_decisions():
    g = adopt(SEED)
    assert g is not None and g.template == "tiled" and g.grouped and len(g.rules) == 3
    assert [r["when"] for r in g.rules] == [{"M_max": 64}, {"MN_max": 512 * 512}, {}]
    namespace: dict = {}
    pick = next(s for s in ast.parse(SEED).body if getattr(s, "name", "") == "pick_config")
    exec(compile(ast.Module([pick], []), "seed", "exec"), namespace)
    for shape in [(16, 4096, 4096), (64, 64, 64), (300, 260, 280), (512, 512, 64), (8192, 4096, 4096)]:
        rule = g.rules[rule_index(g, *shape)]
        assert {k: rule[k] for k in namespace["pick_config"](*shape)} == namespace["pick_config"](*shape)


def test_condition_forms():
    parse = lambda text: parse_bounds(ast.parse(text, mode="eval").body)  # noqa: E731
    assert parse("64 >= M") == {"M_max": 64}
    assert parse("M < 128 and K > 1024") == {"M_max": 127, "K_min": 1025}
    assert parse("N * M <= 1 << 20") == {"MN_max": 1 << 20}
    assert parse("M == 64") is None and parse("M <= x") is None


def test_crossover_takes_rules_from_one_and_template_from_other():
    tuned, _ = first("tiles", SEED)
    source, note = mutate(RICH, "crossover", random.Random(0), TASK_D, tuned)
    child, mine, theirs = read_genome(source), read_genome(RICH), read_genome(tuned)
    assert "crossover" in note
    assert (child.template, child.grouped, child.even_masks, child.hints) == ("splitk", True, True, True)
    assert child.rules == theirs.rules and child.rules != mine.rules
    assert mutate(RICH, "crossover", random.Random(0), TASK_D, None) is None


def test_numeric_edit_on_foreign_kernel():
    assert genome_of(FOREIGN, Env.from_task(TASK_D)) is None and check_source(FOREIGN) == []
    proposals = OfflineMutator().propose([parent(5, FOREIGN)], context(2, count=3))
    assert len(proposals) == 3
    for p in proposals:
        assert p.note.startswith("numeric edit:") and check_source(p.source, parent_source=FOREIGN) == []
        assert p.source != FOREIGN


def test_invalid_count_when_nothing_applies():
    bare = (
        FOREIGN.replace("CONFIG = {", "CONFIG = {'X': 1, ")
        .replace(": 64,", ": None,")
        .replace(": 8,", ": None,")
    )
    bare = re.sub(r'"(num_warps|num_stages)": \d+', r'"\1": None', bare)
    assert numeric_edit(bare, random.Random(0)) is None
    mutator = OfflineMutator()
    assert mutator.propose([parent(9, bare)], context(0, count=2)) == []
    assert mutator.invalid_count == 2 * mutator.attempts_per_proposal
    assert (
        mutator.propose([], context(0)) == []
        and mutator.invalid_count == 2 * mutator.attempts_per_proposal + 1
    )
    assert mutate(bare, "tiles", random.Random(0), TASK_D) is None


# ------------------------------------------------------------------------------ the full evaluator


def _cheap_numeric(_source: str, note: str) -> bool:
    value = int(re.search(r"-> (\d+)", note).group(1))
    return "BLOCK" not in note or value >= 64


def _evaluated(name: str) -> str:
    if name == "numeric":
        return first("numeric", FOREIGN, _cheap_numeric)[0]
    if name == "split_k":
        # Split-K aimed at the ragged check shape, so the interpreter runs the split path on K = 280.
        source, _ = first("split_k", SEED, cheap, task=dict(TASK_D, train=[[300, 260, 280]]))
        g = read_genome(source)
        assert g.rules[rule_index(g, 300, 260, 280)]["SPLIT_K"] > 1
        return source
    if name == "crossover":
        persistent, _ = first("persistent", RICH)
        return first("crossover", persistent, cheap, other=first("tiles", SEED, cheap)[0])[0]
    base = SEED if name in ("tiles", "rule_table", "even_masks") else first("even_masks", SEED)[0]
    return first(name, base, cheap)[0]


@pytest.mark.parametrize("name", [*NAMES, "numeric"])
def test_transformation_output_passes_evaluator(name):
    source = _evaluated(name)
    ev = evaluate(source, TASK, timeout_s=180)
    assert ev.status == "ok", ev.feedback
