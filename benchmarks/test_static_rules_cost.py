"""What the static rules cost per candidate: the seed checked, and checked against its parent (the
EVOLVE-BLOCK comparison). Measured here, never asserted in a test (it was a 5 ms bound in
tests/test_static_rules.py, which a busy machine broke)."""

from pathlib import Path

from evaluators.static_rules import check_source

SEED = (Path(__file__).resolve().parents[1] / "kernels" / "seeds" / "tiled_matmul.py").read_text()


def test_static_rules_cost_per_candidate(benchmark):
    violations = benchmark(lambda: check_source(SEED, parent_source=SEED))
    assert violations == []
