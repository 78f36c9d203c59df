"""The sandbox and its fork server: isolation, limits, exits, death signals, restarts.

These tests drive `Sandbox` directly with small "candidates" whose import-time code
reports what the child sees (the static rules are the evaluator's, not the sandbox's).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from evaluators import sandbox
from evaluators.sandbox import scrubbed_env

PROBE = textwrap.dedent(
    """
    import json, os, resource, sys
    print("PROBE " + json.dumps({
        "pid": os.getpid(), "sid": os.getsid(0), "pgid": os.getpgid(0), "cwd": os.getcwd(),
        "env": dict(os.environ), "rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0],
        "ppid": os.getppid(),
    }), file=sys.stderr, flush=True)
    """
)


@pytest.fixture
def fresh_servers():
    """Each test starts its own fork servers (so the environment they were spawned with is known)."""
    sandbox.shutdown_spares()
    yield
    sandbox.shutdown_spares()


def _load(box, source: str, deadline: float):
    box.wait_ready(deadline)
    task = {"target": "sm_90", "dtype": "bf16", "train": [], "check": [], "layouts": [], "device": "cpu"}
    header, tensors = box.request({"cmd": "job", "mode": box.mode, "source": source, "task": task}, deadline)
    while header.get("event") in ("captured", "compiled"):  # the compile child's progress frames
        header, tensors = box.read(deadline)
    return header, tensors


def _probe(box) -> dict:
    line = next(x for x in box.stderr_tail(20000).splitlines() if x.startswith("PROBE "))
    return json.loads(line[len("PROBE ") :])


def test_secrets_never_reach_the_child(monkeypatch):
    for name in ("OPENAI_API_KEY", "HF_TOKEN", "MY_SECRET_THING", "DB_PASSWORD", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "sk-test-SECRET")
    monkeypatch.setenv("SOME_RANDOM_VAR", "x")
    env = scrubbed_env()
    assert "sk-test-SECRET" not in " ".join(env.values())
    assert "SOME_RANDOM_VAR" not in env  # only an allowlist passes
    assert "PATH" in env


def test_compiler_paths_pass_but_secret_shaped_names_do_not(monkeypatch):
    monkeypatch.setenv("CC", "/usr/bin/gcc")
    monkeypatch.setenv("TRITON_PTXAS_PATH", "/opt/cuda/bin/ptxas")
    monkeypatch.setenv("TRITON_LIBCUDA_PATH", "/usr/lib/x86_64-linux-gnu")
    monkeypatch.setenv("TRITON_TOKEN_PATH", "sk-test-SECRET")  # matches the pattern, looks like a secret
    env = scrubbed_env()
    assert env["CC"] == "/usr/bin/gcc" and env["TRITON_PTXAS_PATH"] == "/opt/cuda/bin/ptxas"
    assert env["TRITON_LIBCUDA_PATH"] == "/usr/lib/x86_64-linux-gnu"
    assert "TRITON_TOKEN_PATH" not in env


@pytest.mark.parametrize("mode", ["check", "compile"])
def test_forked_child_is_isolated(mode, monkeypatch, fresh_servers):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET123")
    box = sandbox.Sandbox(mode, memory_bytes=6 << 30)
    try:
        header, _ = _load(box, PROBE, time.monotonic() + 120)
        assert header["event"] == "loaded", header
        seen = _probe(box)
    finally:
        box.close()
    server = sandbox.fork_server(mode)
    assert "sk-test-SECRET123" not in json.dumps(seen["env"])
    assert seen["sid"] == seen["pid"] == seen["pgid"]  # its own session and process group
    assert seen["ppid"] == server.proc.pid  # forked from the zygote, not from the evaluator
    assert os.path.realpath(seen["cwd"]) == os.path.realpath(box.workdir)
    assert seen["rlimit_as"] == 6 << 30
    assert seen["env"]["TRITON_INTERPRET"] == ("1" if mode == "check" else "0")
    assert seen["env"]["TRITON_CACHE_DIR"] == sandbox.worker_triton_cache()


def test_two_children_get_their_own_process_and_directory(fresh_servers):
    boxes = [sandbox.Sandbox("check"), sandbox.Sandbox("check")]
    try:
        seen = []
        for box in boxes:
            _load(box, PROBE, time.monotonic() + 120)
            seen.append(_probe(box))
    finally:
        for box in boxes:
            box.close()
    assert seen[0]["pid"] != seen[1]["pid"] and seen[0]["cwd"] != seen[1]["cwd"]


def test_exit_code_signal_and_cpu_seconds_are_reported(fresh_servers):
    burn = "import os, time\nt = time.process_time()\nwhile time.process_time() - t < 0.3:\n    pass\nos._exit(3)\n"
    box = sandbox.Sandbox("check")
    try:
        with pytest.raises(sandbox.ChildDied, match="exited with code 3"):
            _load(box, burn, time.monotonic() + 120)
    finally:
        box.close()
    assert box.cpu_s is not None and box.cpu_s >= 0.25

    box = sandbox.Sandbox("check")
    try:
        with pytest.raises(sandbox.ChildDied, match="killed by SIGSEGV"):
            _load(box, "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", time.monotonic() + 120)
    finally:
        box.close()


def test_a_child_dying_inside_a_run_request_is_reported_and_the_next_child_works(fresh_servers):
    # The entry point kills its own process mid-request (the sandbox's concern: the static rules that
    # would refuse `os` are the evaluator's); the next child from the same fork server is unaffected.
    dying = "import os, signal\n\ndef matmul(a, b):\n    os.kill(os.getpid(), signal.SIGSEGV)\n"
    box = sandbox.Sandbox("check")
    try:
        header, _ = _load(box, dying, time.monotonic() + 120)
        assert header.get("event") == "loaded", header
        box.send({"cmd": "run", "shape": [16, 16, 16], "layout": "nn", "seed": 1, "inputs": "normal"})
        with pytest.raises(sandbox.ChildDied, match="killed by SIGSEGV.* before it reported a result"):
            print(box.read(time.monotonic() + 120)[0])  # what came instead, should the test fail
    finally:
        box.close()
    box = sandbox.Sandbox("check")
    try:
        assert _load(box, PROBE, time.monotonic() + 120)[0].get("event") == "loaded"
    finally:
        box.close()


def test_a_hang_is_killed_with_its_group(fresh_servers):
    box = sandbox.Sandbox("check")
    _load(box, PROBE, time.monotonic() + 120)  # a first job proves the child is up
    pid = box.proc.pid
    box.close()  # the child waits for a command; close stops it
    assert box.proc.poll() is not None

    box = sandbox.Sandbox("check")
    try:
        with pytest.raises(sandbox.ChildTimeout):
            _load(box, "while True:\n    pass\n", time.monotonic() + 3)
        pid = box.proc.pid
    finally:
        box.close()
    assert box.proc.poll() == -signal.SIGKILL
    assert not _alive(pid)


def test_fork_server_is_restarted_after_it_dies(fresh_servers):
    first = sandbox.fork_server("check")
    first.wait_ready(time.monotonic() + 120)
    first.proc.kill()
    first.proc.wait()
    box = sandbox.Sandbox("check")
    try:
        header, _ = _load(box, PROBE, time.monotonic() + 120)
    finally:
        box.close()
    assert header["event"] == "loaded"
    assert sandbox.fork_server("check") is not first


EVALUATOR = textwrap.dedent(
    """
    import sys, time
    from evaluators import sandbox
    box = sandbox.Sandbox("check")
    box.wait_ready(time.monotonic() + 120)
    box.send({"cmd": "job", "mode": "check", "source": "while True:\\n    pass\\n", "task": {"target": "sm_90"}})
    print(box.proc.pid, sandbox.fork_server("check").proc.pid, flush=True)
    time.sleep(600)
    """
)


def test_killing_the_evaluator_leaves_no_orphans():
    """SIGKILL the evaluator while its child hangs: the zygote and the child die with it."""
    evaluator = subprocess.Popen(
        [sys.executable, "-c", EVALUATOR],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        child, zygote = (int(x) for x in evaluator.stdout.readline().split())
        time.sleep(0.5)
        assert _alive(child) and _alive(zygote)
    finally:
        evaluator.kill()
        evaluator.wait()
    deadline = time.monotonic() + 10
    while (_alive(child) or _alive(zygote)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the candidate's child outlived its evaluator"
    assert not _alive(zygote), "the fork server outlived its evaluator"


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_children_die_with_their_fork_server(fresh_servers):
    """The death signal, not the zygote's goodwill: SIGKILL the zygote while a child hangs."""
    box = sandbox.Sandbox("check")
    try:
        box.wait_ready(time.monotonic() + 120)
        box.send(
            {"cmd": "job", "mode": "check", "source": "while True:\n    pass\n", "task": {"target": "sm_90"}}
        )
        time.sleep(0.3)
        pid = box.proc.pid
        assert _alive(pid)
        sandbox.fork_server("check").proc.kill()
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), "a child outlived its fork server"
    finally:
        box.close()


def test_a_fork_server_that_cannot_start_is_a_judge_error(monkeypatch, fresh_servers):
    """Not the candidate's fault: the verdict says the judge failed, and nothing is memoised."""
    from pathlib import Path

    from evaluators import evaluate, load_task

    def starved(memory_bytes):
        def apply():
            import resource

            os.setsid()
            resource.setrlimit(resource.RLIMIT_AS, (64 << 20, 64 << 20))  # too small to import torch

        return apply

    monkeypatch.setattr(sandbox, "_limits", starved)
    source = Path("kernels/seeds/tiled_matmul.py").read_text()
    ev = evaluate(source, load_task("runs/demo_cpu.toml"), memo=False)
    assert ev.status == "judge_error", ev.feedback
    assert "fork server" in ev.feedback


def test_fork_server_start_is_not_the_candidates_time(fresh_servers):
    """A cold judge (fork servers not started) still gives a hang its whole limit."""
    from pathlib import Path

    from evaluators import evaluate, load_task

    source = Path("tests/adversarial/kernels/hang_entry.py").read_text()
    ev = evaluate(source, load_task("runs/demo_cpu.toml"), memo=False, timeout_s=3.0)
    assert ev.status == "timeout", ev.feedback
    assert "starting the child" not in ev.feedback  # the clock ran out on the candidate's own work
    assert ev.seconds["judge_start"] > 0.5  # the servers were started inside this call
