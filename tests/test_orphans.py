"""No child outlives its judge: real processes, real SIGKILLs, the process table read from /proc.

The judge's children call setsid, so they are not found by process group: each test walks
/proc/*/stat parent links from the judge while it is alive and records every descendant
(pid and start time, so a reused pid is never mistaken for a survivor), SIGKILLs the judge
in the middle of a hang, and then waits for every recorded process to be gone (a zombie
waiting for its reaper counts as gone: it runs nothing). The hanging kernel is
tests/adversarial/kernels/hang_kernel.py (a K-loop whose counter never advances: it passes
the static rules and compiles, and spins forever under the interpreter).

Run with -s to see the measured times.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from evaluators import sandbox
from evaluators.zygote import on_lasting_thread, set_death_signal

ROOT = Path(__file__).resolve().parents[1]
HANG = ROOT / "tests" / "adversarial" / "kernels" / "hang_kernel.py"
GONE_WITHIN_S = 2.0  # after the judge is SIGKILLed, every sandbox process is gone within this
# Under `evolve run` the judge is a Ray worker: it exits only once it notices its raylet died with
# the driver (measured 1.4-2.4 s), and its fork servers and their children die with it.
RUN_GONE_WITHIN_S = 8.0
RAY_WATCH_S = 10.0  # how long the Ray test watches Ray's own processes after the kill (reported only)
SANDBOX_MARKS = ("evaluators.zygote", "evaluators.child")
RAY_MARKS = ("/ray/", "ray::")  # run from the ray package, or retitled by Ray once started

# ------------------------------------------------------------------ the process table


def _stat(pid: int) -> tuple[str, int, int, float] | None:
    """(state, parent pid, start time in ticks, CPU seconds) of `pid`; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return fields[0], int(fields[1]), int(fields[19]), cpu


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _cpu_limit(pid: int) -> str:
    """The soft "Max cpu time" of `pid` as /proc/PID/limits shows it ("unlimited" or seconds)."""
    with open(f"/proc/{pid}/limits") as f:
        line = next(x for x in f if x.startswith("Max cpu time"))
    return line.split()[3]


class Tree:
    """Every process seen below some roots: pid -> (start time, command line)."""

    def __init__(self, *roots: int) -> None:
        self.seen: dict[int, tuple[int, str]] = {}
        for pid in roots:
            self._add(pid)

    def _add(self, pid: int) -> None:
        st = _stat(pid)
        if st is not None and pid not in self.seen:
            self.seen[pid] = (st[2], _cmdline(pid))

    def walk(self) -> None:
        """Record the descendants of every process recorded so far (new ones until none is new)."""
        parents = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                st = _stat(int(name))
                if st is not None:
                    parents[int(name)] = st[1]
        grew = True
        while grew:
            grew = False
            for pid, ppid in parents.items():
                if ppid in self.seen and pid not in self.seen and self.alive(ppid):
                    self._add(pid)
                    grew = pid in self.seen or grew
        for pid, (start, _) in self.seen.items():  # one seen between fork and exec has changed since
            cmd = _cmdline(pid) if self.alive(pid) else ""
            if cmd:
                self.seen[pid] = (start, cmd)

    def alive(self, pid: int) -> bool:
        """Running and still the process recorded (not a zombie, not a new one with the same pid)."""
        st = _stat(pid)
        return st is not None and st[0] != "Z" and st[2] == self.seen[pid][0]

    def living(self, marks: tuple[str, ...] | None = None, exclude: tuple[int, ...] = ()) -> list[int]:
        """Recorded processes still alive, those whose command line names one of `marks` if given."""
        return [
            pid
            for pid, (_, cmd) in self.seen.items()
            if pid not in exclude and (marks is None or any(m in cmd for m in marks)) and self.alive(pid)
        ]

    def hanging_check_child(self) -> int | None:
        """A candidate's interpreter child (forked by the check fork server) with >= 1.5 CPU-s spent."""
        for pid, (_, cmd) in self.seen.items():
            st = _stat(pid)
            if st is None or "evaluators.zygote check" not in cmd or not self.alive(pid):
                continue
            if "evaluators.zygote check" in self.seen.get(st[1], (0, ""))[1] and st[3] >= 1.5:
                return pid
        return None

    def kill_survivors(self) -> None:
        """Clean up after a failed test: SIGKILL what is still alive of what we recorded."""
        for pid in self.living():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _wait_for_hang(judge: subprocess.Popen, tree: Tree, timeout: float, log: Path) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tree.walk()
        child = tree.hanging_check_child()
        if child is not None:
            return child
        if judge.poll() is not None:
            pytest.fail(f"the judge exited ({judge.returncode}) before the hang: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    pytest.fail(f"no candidate child was hanging after {timeout:g} s: {log.read_text()[-2000:]}")


def _gone_after(tree: Tree, marks, within: float, exclude=()) -> tuple[float, list[int]]:
    """Seconds until every recorded process matching `marks` is gone (walking on: a process
    started after the kill counts too), or `within` and the survivors' pids."""
    start = time.monotonic()
    while True:
        tree.walk()
        living = tree.living(marks, exclude)
        elapsed = time.monotonic() - start
        if not living or elapsed >= within:
            return elapsed, living
        time.sleep(0.05)


def _describe(tree: Tree, pids: list[int]) -> str:
    return "; ".join(f"{pid}: {tree.seen[pid][1][:120]}" for pid in pids)


# ------------------------------------------------------------------ python -m evaluators check


def test_check_cli_killed_mid_hang_leaves_no_child(tmp_path):
    """judge -> fork servers -> candidate children: SIGKILL the judge, all are gone within 2 s."""
    log = tmp_path / "judge.log"
    with open(log, "wb") as out:
        judge = subprocess.Popen(
            [sys.executable, "-m", "evaluators", "check", str(HANG), "--task", "runs/demo_cpu.toml",
             "--device", "cpu", "--timeout", "300"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    tree = Tree(judge.pid)
    try:
        child = _wait_for_hang(judge, tree, 50, log)
        tree.walk()
        servers = [pid for pid in tree.living() if (_stat(pid) or ("", 0))[1] == judge.pid]
        assert len(servers) == 2 and all("evaluators.zygote" in tree.seen[p][1] for p in servers)
        # The CPU-time backstop is on the candidate's child (from its 300 s), never on the fork servers.
        assert sandbox.cpu_limit_s(250) <= int(_cpu_limit(child)) <= sandbox.cpu_limit_s(300) + 60
        assert all(_cpu_limit(p) == "unlimited" for p in servers)
        recorded = tree.living(exclude=(judge.pid,))
        judge.send_signal(signal.SIGKILL)
        judge.wait()
        took, left = _gone_after(tree, None, 10.0, exclude=(judge.pid,))
        print(f"\ncheck CLI: {len(recorded)} processes below the judge, all gone {took:.2f} s after SIGKILL")
        assert not left, f"still alive {took:.1f} s after the judge was killed: {_describe(tree, left)}"
        assert took <= GONE_WITHIN_S, f"the children took {took:.2f} s to die"
    finally:
        if judge.poll() is None:
            judge.kill()
            judge.wait()
        tree.kill_survivors()


# ------------------------------------------------------------------ evolve run

TASK = """
[task]
name = "orphans"
dtype = "fp16"
layouts = ["nn"]
trials = 1
[shapes]
train = [[2048, 2048, 2048]]
check = [[64, 64, 64]]
"""

RUN = """
[run]
name = "orphans"
task = "task.toml"
seeds = ["{seed}"]
seed = 1
max_evals = 3
workers = 1
device = "cpu"
timeout_s = 300

[[proposers]]
kind = "mutator"

[population]
islands = 1
"""


@pytest.mark.slow
def test_evolve_run_killed_mid_hang_leaves_no_sandbox_child(tmp_path):
    """The run's evaluator actor judges a hanging seed; SIGKILL `evolve run`: no fork server or
    candidate child is left a few seconds later. Ray's own processes are measured and reported."""
    (tmp_path / "task.toml").write_text(TASK)
    (tmp_path / "run.toml").write_text(RUN.format(seed=HANG))
    log = tmp_path / "run.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as out:
        driver = subprocess.Popen(
            [sys.executable, "-m", "evolve.cli", "run", "run.toml"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    tree = Tree(driver.pid)
    try:
        _wait_for_hang(driver, tree, 55, log)
        tree.walk()
        sandboxed = tree.living(SANDBOX_MARKS)
        ray_side = tree.living(RAY_MARKS, exclude=(driver.pid, *sandboxed))
        killed = time.monotonic()
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        took, left = _gone_after(tree, SANDBOX_MARKS, 10.0)
        _, ray_left = _gone_after(
            tree, RAY_MARKS, max(0.0, RAY_WATCH_S - (time.monotonic() - killed)), (driver.pid, *sandboxed)
        )
        ray_s = time.monotonic() - killed
        ray_text = f"all gone {ray_s:.2f} s after" if not ray_left else (
            f"{len(ray_left)} still alive {ray_s:.0f} s after (then killed by this test): {_describe(tree, ray_left)}"
        )  # fmt: skip
        print(f"\nevolve run: {len(sandboxed)} sandbox processes gone {took:.2f} s after SIGKILL; "
              f"{len(ray_side)} Ray processes: {ray_text}")  # fmt: skip
        assert len(sandboxed) >= 3  # two fork servers and at least the hanging child
        assert not left, (
            f"sandbox processes alive {took:.1f} s after the run was killed: {_describe(tree, left)}"
        )
        assert took <= RUN_GONE_WITHIN_S, f"the sandbox processes took {took:.2f} s to die"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        tree.kill_survivors()


# ------------------------------------------------------------------ the creating thread


def _spawn_sleeper() -> subprocess.Popen:
    parent = os.getpid()
    return subprocess.Popen(["sleep", "60"], preexec_fn=lambda: set_death_signal(parent))


def _from_short_thread(fn):
    got = []
    thread = threading.Thread(target=lambda: got.append(fn()))
    thread.start()
    thread.join()  # the thread has ended here
    return got[0]


def test_death_signal_follows_the_creating_thread_and_the_lasting_thread_keeps_it():
    """Why children are started through on_lasting_thread: a process started with a death signal
    from a thread that ends is killed then, though its parent process lives on."""
    direct = _from_short_thread(_spawn_sleeper)
    lasting = _from_short_thread(lambda: on_lasting_thread(_spawn_sleeper))
    try:
        try:
            direct.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pytest.fail("the kernel did not kill a child whose creating thread ended (the hazard is gone?)")
        assert direct.returncode == -signal.SIGKILL
        time.sleep(0.5)
        assert lasting.poll() is None, "a child started on the lasting thread died with the caller's thread"
    finally:
        lasting.kill()
        lasting.wait()
        direct.wait()


SPAWNER = textwrap.dedent(
    """
    import threading, time
    from evaluators import sandbox
    boxes = {}

    def start():  # from a thread that ends, as a threaded Ray actor or an executor would
        boxes["check"] = sandbox.Sandbox("check")
        boxes["check"].wait_ready(time.monotonic() + 120)
        boxes["cuda"] = sandbox.Sandbox("cuda")  # spawned, not forked: the GPU path's link
        boxes["cuda"].wait_ready(time.monotonic() + 120)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    time.sleep(1.0)  # were they tied to the thread, they would be dead now
    server = sandbox.fork_server("check")
    print(boxes["check"].proc.pid, server.proc.pid, boxes["cuda"].proc.pid, flush=True)
    time.sleep(600)
    """
)


def test_children_started_from_an_ended_thread_live_with_the_judge_and_die_with_it():
    """Fork server, forked child and spawned (GPU-path) child, all created from a thread that has
    ended: alive while the judge is, SIGKILLed with it, each with its CPU-time limit."""
    judge = subprocess.Popen([sys.executable, "-c", SPAWNER], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    tree = Tree(judge.pid)
    try:
        line = judge.stdout.readline()
        assert line, "the judge script failed before it started its children"
        forked, server, spawned = (int(x) for x in line.split())
        tree.walk()
        assert all(tree.alive(p) for p in (forked, server, spawned)), (
            "a child died with the thread that made it"
        )
        assert _cpu_limit(server) == "unlimited"
        assert 30 <= int(_cpu_limit(forked)) <= 4 * 120 + 30
        assert 30 <= int(_cpu_limit(spawned)) <= 4 * 120 + 30 + 60  # + what it used to start
        judge.send_signal(signal.SIGKILL)
        judge.wait()
        took, left = _gone_after(tree, None, 10.0, exclude=(judge.pid,))
        assert not left, f"alive {took:.1f} s after the judge was killed: {_describe(tree, left)}"
        assert took <= GONE_WITHIN_S
    finally:
        if judge.poll() is None:
            judge.kill()
            judge.wait()
        tree.kill_survivors()


@pytest.fixture
def fresh_servers():
    sandbox.shutdown_spares()
    yield
    sandbox.shutdown_spares()


def test_the_cpu_time_limit_stops_a_child_and_the_verdict_says_so(fresh_servers):
    """The backstop itself, on a real forked child: with a 1 s limit, an endless loop is stopped
    by SIGXCPU (the judge is alive here, but its deadline is far away)."""
    box = sandbox.Sandbox("check")
    box.cpu_limit = 1  # instead of cpu_limit_s(wall time): the mechanism, without waiting minutes
    try:
        box.wait_ready(time.monotonic() + 120)
        task = {"target": "sm_90", "dtype": "bf16", "train": [], "check": [], "layouts": []}
        start = time.monotonic()
        with pytest.raises(sandbox.ChildDied, match=r"SIGXCPU \(it used up its CPU-time limit of 1 s\)"):
            box.request({"cmd": "job", "mode": "check", "source": "while True:\n    pass\n", "task": task},
                        time.monotonic() + 60)  # fmt: skip
        assert time.monotonic() - start < 30
    finally:
        box.close()
    assert box.proc.poll() == -signal.SIGXCPU


def test_the_cpu_time_limit_follows_a_later_deadline(fresh_servers):
    """When the judge waits longer than the deadline the limit came from (a compile's budget
    grows with its specialisations), the child's limit is raised before the wait: the backstop
    never fires before the judge would."""
    box = sandbox.Sandbox("check")
    try:
        box.wait_ready(time.monotonic() + 10)
        pid = box.proc.pid
        assert int(_cpu_limit(pid)) == box.cpu_limit <= sandbox.cpu_limit_s(10)
        task = {"target": "sm_90", "dtype": "bf16", "train": [], "check": [], "layouts": []}
        box.send({"cmd": "job", "mode": "check", "source": "x = 1\n", "task": task})
        box.read(time.monotonic() + 100)  # the reply itself does not matter here
        assert box.cpu_limit >= sandbox.cpu_limit_s(99)
        deadline = time.monotonic() + 5  # the fork server applies it (it owns the pid)
        while int(_cpu_limit(pid)) != box.cpu_limit and time.monotonic() < deadline:
            time.sleep(0.05)
        assert int(_cpu_limit(pid)) == box.cpu_limit
    finally:
        box.close()


def test_cpu_limit_is_a_generous_multiple_of_the_wall_time():
    assert sandbox.cpu_limit_s(120) == 4 * 120 + 30
    assert sandbox.cpu_limit_s(-5) == 30  # a deadline already passed: the floor, never zero
