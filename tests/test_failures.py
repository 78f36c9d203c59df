"""evaluators/failures.py: the child's error facts -> one status, the same in every stage."""

import pytest

from evaluators import failures

ENTRY = {"event": "error", "phase": "entry", "where": {"shape": [64, 64, 64], "layout": "nt"}}


@pytest.mark.parametrize(
    "header,interpreter,status,words",
    [
        ({"phase": "load", "message": "SyntaxError: x"}, False, "compile_error", "failed to load"),
        ({"phase": "load", "message": "NameError: y"}, True, "compile_error", "failed to load"),
        (
            {"phase": "compile", "where": {"kernel": "k", "key": "ab"}, "message": "PTXASError"},
            False,
            "compile_error",
            "kernel k failed to compile",
        ),
        # The entry point's own assert: crashed, in the compile child and in the interpreter child alike.
        (
            {**ENTRY, "message": "AssertionError: b", "exception": "AssertionError"},
            False,
            "crashed",
            "raised",
        ),
        ({**ENTRY, "message": "AssertionError: b", "exception": "AssertionError"}, True, "crashed", "raised"),
        ({**ENTRY, "message": "can't allocate", "memory": True}, True, "crashed", "out of memory"),
        # Raised from inside Triton's interpreter during a launch: a limit of the CPU backend.
        (
            {
                **ENTRY,
                "message": "NotImplementedError('inline_asm not supported in interpreter mode')",
                "failed_launch": "k",
                "raised_in": "triton/runtime/interpreter.py",
                "exception": "NotImplementedError",
            },
            True,
            "unsupported",
            "cannot run kernel k",
        ),
        # The same raise in the compile child (meta capture) is not the interpreter's limit.
        (
            {
                **ENTRY,
                "message": "x",
                "failed_launch": "k",
                "raised_in": "triton/runtime/jit.py",
                "exception": "E",
            },
            False,
            "crashed",
            "raised",
        ),
        # A failed device_assert inside the interpreter is the kernel's fault, not the backend's.
        (
            {
                **ENTRY,
                "message": "AssertionError",
                "failed_launch": "k",
                "raised_in": "triton/runtime/interpreter.py",
                "exception": "AssertionError",
            },
            True,
            "crashed",
            "raised",
        ),
        # The candidate's own code raising inside a launch (its frames, not Triton's).
        (
            {**ENTRY, "message": "ValueError", "failed_launch": "k", "raised_in": None},
            True,
            "crashed",
            "raised",
        ),
    ],
)
def test_status_from_child_facts(header, interpreter, status, words):
    stop = failures.from_child({"event": "error", **header}, interpreter=interpreter)
    assert stop.status == status and words in stop.feedback, stop.feedback
    if header.get("where", {}).get("shape"):
        assert "shape (64, 64, 64) layout nt" in stop.feedback


def test_spin_wait_only_for_launched_kernels():
    kernels = {"a": {"kernel": "fixup", "spin_wait": True}, "b": {"kernel": "plain", "spin_wait": False}}
    assert failures.spin_wait_stop(kernels, {"b"}) is None
    stop = failures.spin_wait_stop(kernels, {"a", "b"})
    assert stop.status == "unsupported" and "fixup" in stop.feedback and "spin-wait" in stop.feedback


def test_machine_load_says_cores():
    assert "cores" in failures.machine_load()
