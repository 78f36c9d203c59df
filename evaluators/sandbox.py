"""Run the child (evaluators/child.py) in its own process with hard limits.

CPU modes ("compile", "check") fork each child from a clean fork server of that mode
(evaluators/zygote.py): spawned once per evaluator process with the scrubbed
environment, torch and triton imported and warmed up, nothing of the evaluator's state
inherited; a child is ready in milliseconds. GPU children ("cuda") are spawned with
subprocess, since CUDA cannot be forked, and one spare is started ahead of time.

Every child runs in a fresh temporary directory, with an environment stripped of
secrets, its own session and process group (a hang is killed with everything it
started), a death signal tied to its parent (the chain judge -> fork server -> child, or
judge -> GPU child; each process is started from a thread that lives as long as the judge),
an address-space limit (CPU only: CUDA reserves huge virtual ranges), a wall-clock deadline
on every read and, as a backstop, a CPU-time limit (`cpu_limit_s`). Each child
serves one candidate only. Triton's own cache is kept per evaluator process across
candidates (safe: Triton keys it by the kernel's source, specialisation and compiler),
so a kernel the search has compiled before is not compiled again.
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
from .zygote import (
    ForkServer,
    ForkServerDied,
    file_tail,
    on_lasting_thread,
    process_cpu_s,
    raise_cpu_limit,
    set_death_signal,
)

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
    "TRITON_HOME",
    "LD_LIBRARY_PATH",
    # What Triton's compiler and launcher builds need on a GPU host (a C compiler, libcuda, ptxas).
    "CC",
    "CXX",
    "CUDA_HOME",
    "CUDA_PATH",
)
KEEP_PATTERN = re.compile(r"^TRITON_\w+_PATH$")  # TRITON_LIBCUDA_PATH, TRITON_PTXAS_PATH, ...
DEFAULT_MEMORY_LIMIT = 12 << 30  # bytes of address space on CPU
FORK_MODES = ("compile", "check")
SERVER_START_S = 300.0  # a fork server imports torch and triton and warms up: seconds, minutes under load
# RLIMIT_CPU of a candidate's child, from the wall-clock time its judge gives it (cpu_limit_s).
CPU_LIMIT_FACTOR = 4
CPU_LIMIT_FLOOR_S = 30
CPU_LIMIT_STEP_S = 1.0  # a later deadline raises the limit only when it is this much later


class ChildTimeout(Exception):
    pass


class ChildDied(Exception):
    pass


def scrubbed_env(extra: dict | None = None) -> dict:
    """Only what the child needs to run; nothing that looks like a credential."""
    env = {
        k: v for k, v in os.environ.items() if (k in KEEP or KEEP_PATTERN.match(k)) and not SECRET.search(k)
    }
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
            "TRITON_DEFAULT_FP_FUSION": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    # The child imports evaluators from wherever this package lives.
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


def cpu_limit_s(wall_left_s: float) -> int:
    """CPU seconds a child may use when its judge gives it `wall_left_s` seconds of wall clock.

    A backstop, not the limit: the judge kills the child at its deadline, so this one acts only
    when the judge cannot (it was killed and the child escaped its death signal, or it hangs
    itself); then a hung child stops burning CPU instead of spinning forever. It must never
    fire first on a child the judge is still waiting for, and a process's CPU time outruns the
    wall clock when its threads run side by side (torch's pool is pinned to one thread, but
    Triton's compiler and the CUDA runtime start their own; a GPU child spins while it waits on
    the device): hence a generous multiple of the wall time plus a floor for start-up. When the
    judge later waits with a later deadline (a compile's budget grows with its specialisations),
    `Sandbox.read` raises the limit to match."""
    return int(CPU_LIMIT_FACTOR * max(wall_left_s, 0.0) + CPU_LIMIT_FLOOR_S)


def _limits(memory_bytes: int | None):
    """preexec_fn of a spawned process: own session, death signal, no core dumps, memory cap."""
    parent = os.getpid()

    def apply() -> None:
        import resource

        os.setsid()
        set_death_signal(parent)
        if memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


_worker_dirs: dict[str, str] = {}


def worker_triton_cache() -> str:
    """This evaluator process's Triton cache directory, kept across candidates, removed at exit."""
    if "triton" not in _worker_dirs:
        _worker_dirs["triton"] = tempfile.mkdtemp(prefix=f"triton-evolve-cache-{os.getpid()}-")
    return _worker_dirs["triton"]


class _Spawned:
    """A child started with subprocess (GPU mode)."""

    def __init__(self, workdir: str, stderr_path: str, env: dict, memory_bytes: int | None) -> None:
        def spawn() -> subprocess.Popen:
            with open(stderr_path, "wb") as stderr:
                return subprocess.Popen(
                    [sys.executable, "-m", "evaluators.child"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    cwd=workdir,
                    env=env,
                    preexec_fn=_limits(memory_bytes),
                )

        self.popen = on_lasting_thread(spawn)  # its death signal follows the creating thread
        self.pid = self.popen.pid
        self.to_child, self.from_child = self.popen.stdin.fileno(), self.popen.stdout.fileno()
        self.cpu_s: float | None = None  # Popen reaps without rusage

    def poll(self) -> int | None:
        return self.popen.poll()

    def limit_cpu(self, soft: int) -> None:
        """Its CPU-time limit: `soft` CPU seconds in all. Set from the judge: a spare is spawned
        before its deadline is known. The pid is ours while the child is unreaped."""
        if self.popen.returncode is None:
            raise_cpu_limit(self.pid, soft)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.popen.kill()
            self.popen.wait()

    def close_pipes(self) -> None:
        for stream in (self.popen.stdin, self.popen.stdout):
            try:
                stream.close()
            except OSError:
                pass


class _Forked:
    """A child forked by the mode's fork server; the server reaps it and reports its exit."""

    def __init__(self, server: ForkServer, pid: int, to_child: int, from_child: int) -> None:
        self.server, self.pid, self.to_child, self.from_child = server, pid, to_child, from_child

    @property
    def cpu_s(self) -> float | None:
        ended = self.server.exits.get(self.pid)
        return ended[1] if ended else None

    def poll(self) -> int | None:
        ended = self.server.exit_of(self.pid, 0)
        return None if ended is None else ended[0]

    def wait(self, timeout: float) -> int:
        ended = self.server.exit_of(self.pid, timeout)
        if ended is None:
            raise subprocess.TimeoutExpired(f"forked child {self.pid}", timeout)
        return ended[0]

    def kill(self) -> None:
        self.server.kill(self.pid)
        self.server.exit_of(self.pid, 5.0)

    def limit_cpu(self, soft: int) -> None:
        self.server.limit_cpu(self.pid, soft)

    def close_pipes(self) -> None:
        for fd in (self.to_child, self.from_child):
            try:
                os.close(fd)
            except OSError:
                pass


class Sandbox:
    """One child process; `request()` sends a frame and waits for the reply with a deadline."""

    def __init__(self, mode: str = "check", memory_bytes: int | None = DEFAULT_MEMORY_LIMIT) -> None:
        """mode: "compile" (offline compile, CPU), "check" (Triton interpreter, CPU) or "cuda".

        A CPU child is forked from its mode's fork server in `wait_ready` (the server may still
        be warming up); a GPU child is spawned here.
        """
        self.mode = mode
        self.memory_bytes = memory_bytes if mode != "cuda" else None
        self.workdir = tempfile.mkdtemp(prefix="triton-evolve-child-")
        self.stderr_path = os.path.join(self.workdir, "stderr.log")
        self.started = time.perf_counter()
        self.ready = False
        # The child's RLIMIT_CPU (its CPU seconds in all): from wait_ready's deadline, raised by
        # later ones (read); or set before wait_ready, and then left as it is.
        self.cpu_limit: int | None = None
        self.limit_deadline: float | None = None  # the deadline cpu_limit was derived from
        self.proc: _Spawned | _Forked | None = None
        if mode == "cuda":
            env = scrubbed_env({"TRITON_CACHE_DIR": worker_triton_cache(), "TRITON_INTERPRET": "0"})
            self.proc = _Spawned(self.workdir, self.stderr_path, env, None)

    @property
    def cpu_s(self) -> float | None:
        """CPU seconds the child used (its own and what it waited for), once it has ended."""
        return self.proc.cpu_s if self.proc is not None else None

    def wait_ready(self, deadline: float) -> float:
        """Seconds from construction until the child said it is ready.

        The child's CPU-time limit is derived from `deadline` here (`cpu_limit_s`; or `cpu_limit`
        as set before), before any candidate code is sent."""
        if self.cpu_limit is None:
            self.limit_deadline = deadline
            self.cpu_limit = cpu_limit_s(deadline - time.monotonic())
            if isinstance(self.proc, _Spawned):  # it has run since it was spawned; forked: from 0
                self.cpu_limit += int(process_cpu_s(self.proc.pid)) + 1
        if self.proc is None:
            self.proc = self._fork(deadline)
        elif isinstance(self.proc, _Spawned) and not self.ready:
            self.proc.limit_cpu(self.cpu_limit)
        if not self.ready:
            header, _ = self.read(deadline)
            if header.get("event") != "ready":
                raise ChildDied(f"child failed to start: {header.get('message', header)}")
            self.ready = True
        return time.perf_counter() - self.started

    def _fork(self, deadline: float) -> _Forked:
        server = fork_server(self.mode)
        stderr = os.open(self.stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            env = {"TRITON_CACHE_DIR": worker_triton_cache()}
            pid, to_child, from_child = server.fork(
                self.workdir, stderr, self.memory_bytes, env, deadline, cpu_seconds=self.cpu_limit
            )
        except TimeoutError:
            raise ChildTimeout() from None
        except ForkServerDied as e:
            raise ChildDied(str(e)) from None
        finally:
            os.close(stderr)
        return _Forked(server, pid, to_child, from_child)

    def send(self, header: dict) -> None:
        try:
            wire.write_frame(self.proc.to_child, header)
        except (BrokenPipeError, OSError):
            raise ChildDied(self.death_message()) from None

    def read(self, deadline: float):
        self.follow_deadline(deadline)
        fd = self.proc.from_child
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

    def follow_deadline(self, deadline: float) -> None:
        """Raise the child's CPU-time limit when the judge now waits for it past the deadline the
        limit was derived from (never lower it): the backstop must not fire before the judge.
        `read` and `first_ready` call this with the deadline they wait for."""
        if self.limit_deadline is None or deadline <= self.limit_deadline + CPU_LIMIT_STEP_S:
            return
        self.limit_deadline = deadline
        soft = int(process_cpu_s(self.proc.pid)) + 1 + cpu_limit_s(deadline - time.monotonic())
        if soft > self.cpu_limit:
            self.cpu_limit = soft
            self.proc.limit_cpu(soft)

    def request(self, header: dict, deadline: float):
        self.send(header)
        return self.read(deadline)

    def death_message(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.poll()
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            hint = " (out of memory?)" if -code in (signal.SIGKILL, signal.SIGSEGV, signal.SIGBUS) else ""
            if -code == signal.SIGXCPU:
                hint = f" (it used up its CPU-time limit of {self.cpu_limit} s)"
            text = f"the candidate's process was killed by {name}{hint} before it reported a result"
        else:
            text = f"the candidate's process exited with code {code} before it reported a result"
        tail = " ".join(self.stderr_tail(300).split())
        return f"{text}; its last output: {tail}" if tail else text

    def stderr_tail(self, limit: int = 800) -> str:
        return file_tail(self.stderr_path, limit)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    self.send({"cmd": "stop"})
                    self.proc.wait(timeout=2)
                except (ChildDied, subprocess.TimeoutExpired):
                    pass
            self.kill()
            self.proc.close_pipes()
        shutil.rmtree(self.workdir, ignore_errors=True)


def first_ready(boxes: dict, deadline: float):
    """The key of the first of `boxes` (key -> Sandbox) with a reply waiting; ChildTimeout past
    `deadline`. The reply itself is read with `Sandbox.read`."""
    for box in boxes.values():
        box.follow_deadline(deadline)
    fds = {box.proc.from_child: key for key, box in boxes.items()}
    left = deadline - time.monotonic()
    if left <= 0:
        raise ChildTimeout()
    ready, _, _ = select.select(list(fds), [], [], left)
    if not ready:
        raise ChildTimeout()
    return fds[ready[0]]


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


_servers: dict[str, tuple[ForkServer, str]] = {}  # mode -> (server, its working directory)
_spares: dict[str, Sandbox] = {}


def fork_server(mode: str) -> ForkServer:
    """The running fork server for a CPU mode, started (or restarted after a death) on demand."""
    if mode not in FORK_MODES:
        raise ValueError(f"no fork server for mode {mode!r}; CPU modes are {FORK_MODES}")
    entry = _servers.get(mode)
    if entry is not None and entry[0].alive():
        return entry[0]
    if entry is not None:
        _close_server(mode)
    workdir = tempfile.mkdtemp(prefix=f"triton-evolve-zygote-{mode}-")
    env = scrubbed_env(
        {
            "TRITON_CACHE_DIR": os.path.join(workdir, "triton-cache"),
            # The interpreter must be chosen before triton is imported (triton.language builds
            # its helpers at import), hence one server per mode.
            "TRITON_INTERPRET": "1" if mode == "check" else "0",
        }
    )
    server = ForkServer(mode, env, workdir, os.path.join(workdir, "zygote.log"), _limits(None))
    _servers[mode] = (server, workdir)
    return server


def start_servers(modes: tuple[str, ...] = FORK_MODES, timeout_s: float = SERVER_START_S) -> float:
    """Start (if needed) and wait for the fork servers of `modes`, side by side; seconds waited.

    The judge calls this before a candidate's clock starts: a server's start-up is the judge's
    cost, not the candidate's. Raises ForkServerDied when one fails or is not ready in time."""
    start = time.monotonic()
    servers = [fork_server(mode) for mode in modes]
    for server in servers:
        try:
            server.wait_ready(start + timeout_s)
        except TimeoutError:
            raise ForkServerDied(
                f"the {server.mode} fork server was not ready within {timeout_s:g} s; {server.log_tail()}"
            ) from None
    return time.monotonic() - start


def _close_server(mode: str) -> None:
    server, workdir = _servers.pop(mode)
    server.close()
    shutil.rmtree(workdir, ignore_errors=True)


def take(mode: str, memory_bytes: int | None = DEFAULT_MEMORY_LIMIT, prestart: bool = True) -> Sandbox:
    """A child for one candidate. CPU modes fork on demand (the fork server is started once,
    here, when `prestart`); GPU mode hands out the spare started last time and starts the next."""
    if mode in FORK_MODES:
        if prestart:
            fork_server(mode)
        return Sandbox(mode, memory_bytes)
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
    """Stop spare children and fork servers; remove this process's Triton cache."""
    while _spares:
        _, box = _spares.popitem()
        box.close()
    for mode in list(_servers):
        _close_server(mode)
    for path in _worker_dirs.values():
        shutil.rmtree(path, ignore_errors=True)
    _worker_dirs.clear()


atexit.register(shutdown_spares)
