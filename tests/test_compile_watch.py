"""evaluators/compile_watch.py: the compile stage's budget, its timeout text, and what it keeps."""

import time

import pytest

from evaluators import sandbox
from evaluators.compile import CompileCache
from evaluators.compile_watch import CompileWatch


class FakeBox:
    """Frames as the compile child sends them; past them, the deadline passes (ChildTimeout)."""

    def __init__(self, frames):
        self.frames = list(frames)
        self.deadlines = []

    def read(self, deadline):
        self.deadlines.append(deadline)
        if not self.frames:
            raise sandbox.ChildTimeout()
        return self.frames.pop(0), {}


def test_budget_grows_per_specialisation_and_built_ones_are_kept_on_a_timeout(tmp_path):
    frames = [
        {"event": "captured", "specs": 12, "new": 10},
        {"event": "compiled", "key": "k1", "facts": {"kernel": "mm", "shared": 1}},
        {"event": "compiled", "key": "k2", "facts": {"kernel": "mm", "shared": 2}},
    ]
    cache = CompileCache(tmp_path)
    box = FakeBox(frames)
    watch = CompileWatch(box, cache, "src", "sm_90", base_s=30.0, per_spec_s=5.0)
    start_deadline = watch.deadline
    with pytest.raises(sandbox.ChildTimeout):
        watch.finish()
    assert watch.deadline == pytest.approx(start_deadline + 10 * 5.0)  # 10 new specialisations x 5 s
    assert box.deadlines[-1] == watch.deadline
    assert set(CompileCache(tmp_path).get("src", "sm_90")) == {"k1", "k2"}  # kept as they came
    text = watch.timeout_feedback()
    assert "timeout in the compile stage: compiling 10 specialisation(s) for sm_90" in text
    assert "2 built, kept in the compile cache" in text and "30 s + 5 s x 10 specialisations" in text
    assert "machine load" in text
    assert watch.counts() == {"specialisations": 12, "compiled": 2, "from_cache": 2}


def test_a_capture_that_never_ends_is_named(tmp_path):
    watch = CompileWatch(FakeBox([]), CompileCache(tmp_path), "src", "sm_90", base_s=1.0, per_spec_s=5.0)
    with pytest.raises(sandbox.ChildTimeout):
        watch.finish()
    assert "capturing its launches on every shape did not finish" in watch.timeout_feedback()


def test_errors_and_too_many_specialisations_end_the_stage(tmp_path):
    cache = CompileCache(tmp_path)
    error = {"event": "error", "phase": "compile", "where": {"kernel": "mm"}, "message": "PTXAS boom"}
    watch = CompileWatch(FakeBox([error]), cache, "s", "sm_90", 30.0, 5.0)
    with pytest.raises(Exception, match="failed to compile") as raised:
        watch.finish()
    assert raised.value.status == "compile_error"
    many = CompileWatch(
        FakeBox([{"event": "captured", "specs": 300, "new": 300}]), cache, "s", "sm_90", 30, 5
    )
    with pytest.raises(Exception, match="300 specialisations") as raised:
        many.finish()
    assert raised.value.status == "rejected" and time.monotonic() < many.deadline
