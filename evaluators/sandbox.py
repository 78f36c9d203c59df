"""Run the child (evaluators/child.py) in its own process with hard limits.

Spawned with subprocess (never forked from a process holding CUDA or Ray state),
in a fresh temporary directory, with an environment stripped of secrets, its own
process group (so a hang is killed with everything it started), an address-space
limit (CPU only: CUDA reserves huge virtual ranges) and a wall-clock deadline on
every read. One spare child is started ahead of time so torch and triton are
already imported when a candidate arrives; each child serves one candidate only.
"""

from __future__ import annotations

import atexit
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from . import wire

SECRET = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH)", re.IGNORECASE)
KEEP = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "CUDA_VISIBLE_DEVICES",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "TRITON_CACHE_DIR",
    "TRITON_HOME",
    "LD_LIBRARY_PATH",
)
DEFAULT_MEMORY_LIMIT = 12 << 30  # bytes of address space on CPU


class ChildTimeout(Exception):
    pass


class ChildDied(Exception):
    pass


def scrubbed_env(extra: dict | None = None) -> dict:
    """Only what the child needs to run; nothing that looks like a credential."""
    env = {k: v for k, v in os.environ.items() if k in KEEP and not SECRET.search(k)}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
            "TRITON_DEFAULT_FP_FUSION": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    env.update(extra or {})
    return env


def _limits(memory_bytes: int | None):
    def apply() -> None:
        import resource

        os.setsid()
        if memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


class Sandbox:
    """One child process; `request()` sends a frame and waits for the reply with a deadline."""

    def __init__(self, mode: str = "check", memory_bytes: int | None = DEFAULT_MEMORY_LIMIT) -> None:
        """mode: "compile" (offline compile, CPU), "check" (Triton interpreter, CPU) or "cuda"."""
        self.mode = mode
        self.workdir = tempfile.mkdtemp(prefix="triton-evolve-child-")
        self.stderr_path = os.path.join(self.workdir, "stderr.log")
        stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - handed to the child
        env = scrubbed_env(
            {
                "TRITON_CACHE_DIR": os.path.join(self.workdir, "triton-cache"),
                "TRITON_INTERPRET": "1" if mode == "check" else "0",
            }
        )
        # The child imports evaluators from wherever this package lives.
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "evaluators.child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=self.workdir,
            env=env,
            preexec_fn=_limits(memory_bytes if mode != "cuda" else None),
        )
        stderr.close()
        self.ready = False

    def wait_ready(self, deadline: float) -> float:
        if not self.ready:
            header, _ = self.read(deadline)
            if header.get("event") != "ready":
                raise ChildDied(f"child failed to start: {header.get('message', header)}")
            self.ready = True
        return time.perf_counter() - self.started

    def send(self, header: dict) -> None:
        try:
            wire.write_frame(self.proc.stdin.fileno(), header)
        except (BrokenPipeError, OSError):
            raise ChildDied(self.death_message()) from None

    def read(self, deadline: float):
        fd = self.proc.stdout.fileno()
        left = deadline - time.monotonic()
        if left <= 0:
            raise ChildTimeout()
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            raise ChildTimeout()
        try:
            # Once the first byte is there the frame follows; a child that stalls mid-frame is
            # still bounded by the deadline through the alarm below.
            with _alarm(max(deadline - time.monotonic(), 0.01)):
                return wire.read_frame(fd)
        except EOFError:
            raise ChildDied(self.death_message()) from None

    def request(self, header: dict, deadline: float):
        self.send(header)
        return self.read(deadline)

    def death_message(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.returncode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            hint = " (out of memory?)" if -code in (signal.SIGKILL, signal.SIGSEGV, signal.SIGBUS) else ""
            text = f"the candidate's process was killed by {name}{hint} before it reported a result"
        else:
            text = f"the candidate's process exited with code {code} before it reported a result"
        tail = " ".join(self.stderr_tail(300).split())
        return f"{text}; its last output: {tail}" if tail else text

    def stderr_tail(self, limit: int = 800) -> str:
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - limit))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "stop"})
                self.proc.wait(timeout=2)
            except (ChildDied, subprocess.TimeoutExpired):
                pass
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        shutil.rmtree(self.workdir, ignore_errors=True)


class _alarm:
    """SIGALRM-based bound on a blocking read (main thread only; elsewhere unbounded mid-frame)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.active = False

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
            self.active = True
        return self

    def _fire(self, *_):
        raise ChildTimeout()

    def __exit__(self, *exc):
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
        return False


_spares: dict[str, Sandbox] = {}


def take(mode: str, memory_bytes: int | None = DEFAULT_MEMORY_LIMIT, prestart: bool = True) -> Sandbox:
    """A started child for one candidate, and (optionally) the next one started behind it."""
    key = f"{mode}:{memory_bytes}"
    box = _spares.pop(key, None)
    if box is None or box.proc.poll() is not None:
        if box is not None:
            box.close()
        box = Sandbox(mode, memory_bytes)
    if prestart:
        _spares[key] = Sandbox(mode, memory_bytes)
    return box


def shutdown_spares() -> None:
    while _spares:
        _, box = _spares.popitem()
        box.close()


atexit.register(shutdown_spares)
