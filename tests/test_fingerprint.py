"""The judge's fingerprint: what changes it, what does not, and that every verdict carries it."""

import shutil
from pathlib import Path

import pytest

from evaluators import EvalOptions, Evaluation, evaluate, fingerprint, load_task
from evaluators import compile as comp
from evaluators.fingerprint import (
    LENGTH,
    PACKAGE_DIR,
    fingerprint_of,
    judge_fingerprint,
    judge_sources,
    library_versions,
)

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = {"torch": "2.13.0+cpu", "triton": "3.9.0", "numpy": "2.4.6"}


@pytest.fixture
def judge_copy(tmp_path) -> Path:
    """A copy of evaluators/ to edit (the real files are never touched)."""
    copy = tmp_path / "evaluators"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_same_sources_and_versions_same_short_fingerprint(judge_copy):
    first = fingerprint_of(judge_copy, VERSIONS)
    assert first == fingerprint_of(judge_copy, dict(reversed(VERSIONS.items())))  # order of versions: no
    assert len(first) == LENGTH and int(first, 16) >= 0
    assert first == fingerprint_of(PACKAGE_DIR, VERSIONS)  # where the files lie does not count


def test_any_change_to_a_judge_source_changes_it(judge_copy):
    before = fingerprint_of(judge_copy, VERSIONS)
    rules = judge_copy / "static_rules.py"
    rules.write_bytes(rules.read_bytes() + b"\n# one more line\n")
    edited = fingerprint_of(judge_copy, VERSIONS)
    assert edited != before
    (judge_copy / "new_check.py").write_text("X = 1\n")  # a new module of the judge
    added = fingerprint_of(judge_copy, VERSIONS)
    assert added not in (before, edited)
    (judge_copy / "new_check.py").rename(judge_copy / "other_check.py")  # the same bytes, moved
    assert fingerprint_of(judge_copy, VERSIONS) not in (before, edited, added)
    (judge_copy / "sub").mkdir()  # subpackages (shared/DESIGN.md's target layout) count too
    (judge_copy / "sub" / "rules.py").write_text("Y = 2\n")
    assert judge_copy / "sub" / "rules.py" in judge_sources(judge_copy)


def test_caches_and_non_python_files_do_not_count(judge_copy):
    before = fingerprint_of(judge_copy, VERSIONS)
    (judge_copy / "__pycache__").mkdir()
    (judge_copy / "__pycache__" / "stale.py").write_text("Z = 3\n")
    (judge_copy / "notes.txt").write_text("not code")
    assert fingerprint_of(judge_copy, VERSIONS) == before


@pytest.mark.parametrize("library", sorted(VERSIONS))
def test_a_library_version_changes_it(judge_copy, library):
    other = {**VERSIONS, library: VERSIONS[library] + ".post1"}
    assert fingerprint_of(judge_copy, other) != fingerprint_of(judge_copy, VERSIONS)


def test_this_process_judge_is_computed_once(monkeypatch):
    today = judge_fingerprint()
    assert today == fingerprint_of(PACKAGE_DIR, library_versions())
    assert set(library_versions()) == {"torch", "triton", "numpy"}
    assert "absent" not in library_versions().values()

    def must_not_run(*args):
        raise AssertionError("judge_fingerprint() read the files again")

    monkeypatch.setattr(fingerprint, "fingerprint_of", must_not_run)
    assert judge_fingerprint() == today


def test_a_missing_library_reads_absent():
    assert library_versions(("no-such-distribution-xyz",)) == {"no-such-distribution-xyz": "absent"}


def test_the_judge_field_round_trips_and_defaults_for_old_records():
    ev = Evaluation("ok", "model:h100", 0.5, "modelled", judge="abc123")
    assert Evaluation.from_dict(ev.to_dict()).judge == "abc123"
    old = ev.to_dict()
    del old["judge"]  # written before verdicts named their judge
    assert Evaluation.from_dict(old).judge == ""


def test_every_verdict_fresh_or_memoised_names_todays_judge(tmp_path):
    task = load_task(ROOT / "runs" / "demo_cpu.toml")
    cache = comp.CompileCache(tmp_path)
    source = "import os\n\n\ndef matmul(a, b):\n    return a\n"  # rejected by the static rules, fast
    fresh = evaluate(source, task, EvalOptions(prestart=False), cache=cache)
    assert fresh.status == "rejected" and fresh.judge == judge_fingerprint()
    again = evaluate(source, task, EvalOptions(prestart=False), cache=cache)
    assert again.provenance.get("memo_hit") and again.judge == judge_fingerprint()
    assert again.to_dict()["judge"] == judge_fingerprint()


def test_the_models_fitted_constants_count(judge_copy):
    """`make calibrate` rewrites evaluators/model/fitted.json: every modelled fitness changes with it."""
    fitted = judge_copy / "model" / "fitted.json"
    assert fitted in judge_sources(judge_copy)
    before = fingerprint_of(judge_copy, VERSIONS)
    fitted.write_text(fitted.read_text().replace('"constants"', '"constants" ', 1))
    after = fingerprint_of(judge_copy, VERSIONS)
    assert after != before
    (judge_copy / "model" / "fit.md").write_text("a report, not read by the judge")
    assert fingerprint_of(judge_copy, VERSIONS) == after
