"""Fork server: one clean, pre-imported process per CPU mode that forks a child per candidate.

Importing torch and triton costs seconds of CPU; a candidate's own work on the demo task
is a few seconds more. So for each CPU mode ("compile": offline compile; "check": Triton's
interpreter, which must be chosen before triton is imported) the sandbox spawns one
*zygote*: a fresh interpreter (never forked from the evaluator, so nothing of the
evaluator's state, credentials or CUDA is inherited) with the scrubbed environment,
torch, triton and the child code imported and warmed up. Each candidate then gets a
child forked from it in milliseconds, which before running anything:

- starts its own session and process group (a hang is killed with all it started);
- asks the kernel for SIGKILL when the zygote dies (PR_SET_PDEATHSIG), and the zygote
  asked the same of the evaluator, so killing the evaluator leaves no orphan; each link
  checks afterwards that its parent is still the one it expected (the parent may have died
  before the request), and the zygote is spawned from a thread that lives as long as the
  evaluator (`on_lasting_thread`: the signal fires when the creating *thread* ends);
- takes its own working directory, address-space limit, CPU-time limit (a backstop for a
  child that outlived its judge anyway; see sandbox.cpu_limit_s) and protocol pipes;
- closes the zygote's control socket, resets signal handlers and reseeds torch.

CUDA cannot be forked, so GPU children are still spawned (evaluators/sandbox.py).

Control protocol (AF_UNIX SOCK_SEQPACKET, one JSON object per message):

    zygote -> {"event": "ready", "pid", "warm_s"}
    parent -> {"cmd": "fork", "workdir", "memory_bytes", "cpu_seconds", "env"}
              + fds [proto_in, proto_out, stderr]
    zygote -> {"event": "forked", "pid"}
    zygote -> {"event": "exit", "pid", "code", "cpu_s"}   (whenever a child ends; code as Popen's)
    parent -> {"cmd": "kill", "pid"}     (only children not yet reaped: no pid reuse race)
    parent -> {"cmd": "limit_cpu", "pid", "soft"}   (raise a live child's CPU-time limit; same rule)
    parent -> {"cmd": "stop"} or EOF     (the zygote kills its children and exits)
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
MAX_MESSAGE = 1 << 16

# Resolved once here, in the parent: dlopen() between fork and exec (in a preexec_fn) could
# wait forever on a loader lock held by another thread at the time of the fork.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def set_death_signal(expected_parent: int) -> None:
    """SIGKILL this process when its parent dies (Linux); exit now if it already has.

    Call it in the new process before anything untrusted runs. The parent may die between
    the fork and the prctl, and then the request is too late (the process was re-parented and
    no signal comes): hence the check of getppid() against `expected_parent`, which the
    caller must take *before* forking (os.getpid() in the parent), never from getppid() in
    the child. The kernel sends the signal when the parent *thread* that forked this process
    ends, not its process: create children from a thread that lives as long as the process
    (`on_lasting_thread`)."""
    if _PRCTL is not None and _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed: no death signal, so no start")
    if os.getppid() != expected_parent:
        os._exit(1)


def set_cpu_limit(seconds: int) -> None:
    """RLIMIT_CPU for this process: SIGXCPU, whose default action ends it, after `seconds` of CPU.

    Only the soft limit: the judge raises it when it grants the child more time (a compile of
    many specialisations), and raising a hard limit needs privilege. The signal's default
    action is restored here; candidate code cannot change it (the static rules allow no
    `signal` import)."""
    import resource

    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (_capped(int(seconds), hard), hard))


def raise_cpu_limit(pid: int, soft: int) -> None:
    """Set the soft RLIMIT_CPU of our unreaped child `pid` to `soft` CPU seconds (its total)."""
    import resource

    try:
        _, hard = resource.prlimit(pid, resource.RLIMIT_CPU)
        resource.prlimit(pid, resource.RLIMIT_CPU, (_capped(int(soft), hard), hard))
    except (ProcessLookupError, PermissionError):
        pass  # it has ended: its exit is reported on its own


def _capped(soft: int, hard: int) -> int:
    import resource

    return soft if hard == resource.RLIM_INFINITY else min(soft, hard)


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) `pid` has used so far; 0.0 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, IndexError, ValueError):
        return 0.0


class _LastingThread:
    """One daemon thread that runs what it is handed, for as long as the process lives."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="triton-evolve-spawner", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            fn, args, done = self.jobs.get()
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(fn(*args))
                except BaseException as e:  # noqa: BLE001 - handed back to the caller
                    done.set_exception(e)

    def run(self, fn, args: tuple):
        done: Future = Future()
        self.jobs.put((fn, args, done))
        return done.result()


_lasting: _LastingThread | None = None
_lasting_lock = threading.Lock()


def on_lasting_thread(fn, *args):
    """fn(*args), called on a thread that ends only with this process; its result or exception.

    Start every process that carries a death signal through this. PR_SET_PDEATHSIG fires when
    the *thread* that forked the child exits: a fork server or GPU child started from a
    short-lived thread (an executor's, a threaded Ray actor's) would be SIGKILLed when that
    thread ends, while its judge still runs. The main thread is such a thread already; any
    other caller is handed to one daemon thread kept for the purpose (it never exits: daemon
    threads end with the process)."""
    global _lasting
    if threading.current_thread() is threading.main_thread():
        return fn(*args)
    with _lasting_lock:
        if _lasting is None or _lasting.pid != os.getpid() or not _lasting.thread.is_alive():
            _lasting = _LastingThread()  # first use, or a forked copy of this process
        lasting = _lasting
    return lasting.run(fn, args)


def file_tail(path: str, limit: int) -> str:
    """The last `limit` bytes of a log file as text ("" when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _send(sock: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


# ------------------------------------------------------------------ zygote process


def _warm(mode: str) -> None:
    """Import and exercise what every child of this mode needs, once, here."""
    import torch
    import triton  # noqa: F401

    from . import child, correctness, guards, wire  # noqa: F401

    # The first dispatch-mode region imports ~800 modules (torch._dynamo and friends): 1.1 CPU-s
    # measured on the first checked call, paid here once instead of in every child.
    with guards.OpRecorder(guards.LaunchDepth()):
        torch.ones(2) + torch.ones(2)
    if mode == "check":
        from .interp_fix import ensure_interpreter_fixes

        ensure_interpreter_fixes()  # a tiny interpreted bf16 dot and atomic add; children inherit the verdicts
    else:
        _compile_tiny_kernel()


def _compile_tiny_kernel() -> None:
    """One small offline compile for sm_90 loads the backend, LLVM and ptxas paths (~0.5 s saved
    per child). Same public steps as child.compile_offline; the result is thrown away."""
    import torch
    import triton
    import triton.language as tl

    from . import compile as comp

    @triton.jit
    def tile_dot(a_ptr, b_ptr, c_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        a = tl.load(a_ptr + offs[:, None] * BLOCK + offs[None, :])
        b = tl.load(b_ptr + offs[:, None] * BLOCK + offs[None, :])
        tl.store(c_ptr + offs[:, None] * BLOCK + offs[None, :], tl.dot(a, b))

    target, backend = comp.child_backend(90)
    x = torch.empty(32, 32, dtype=torch.float16, device="meta")
    spec = comp.child_specialise(tile_dot, backend, (x, x, x), {"BLOCK": 32})
    comp.child_compile(tile_dot, spec, target)


def _become_child(control: socket.socket, fds: list[int], command: dict) -> None:
    """In the forked process: isolate, then serve one candidate (never returns)."""
    try:
        control.close()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        set_death_signal(int(command["zygote"]))  # the zygote's pid, taken before the fork
        proto_in, proto_out, stderr = fds
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(stderr, 2)
        os.dup2(devnull, 0)
        os.dup2(2, 1)  # the candidate's prints go to the stderr log, never the protocol
        os.close(stderr)
        os.close(devnull)
        os.chdir(command["workdir"])
        os.environ.update(command.get("env", {}))
        memory = command.get("memory_bytes")
        import resource

        if memory:
            resource.setrlimit(resource.RLIMIT_AS, (int(memory), int(memory)))
        if command.get("cpu_seconds"):
            set_cpu_limit(int(command["cpu_seconds"]))  # this child's clock only: it starts at 0
        import torch

        torch.seed()  # the zygote's generator state is shared by every fork; give each its own
        from .child import serve_channels

        serve_channels(proto_in, proto_out)  # never returns
    except BaseException as e:  # noqa: BLE001 - isolation failed: reported on the protocol pipe
        try:
            from . import wire

            wire.write_frame(fds[1], {"event": "error", "stage": "start", "message": repr(e)[:1200]})
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(1)  # only reached when isolation failed; never return into the zygote's loop


def serve(mode: str, control: socket.socket) -> None:
    """The zygote's loop: fork on request, reap children, report their exits."""
    started = time.perf_counter()
    _warm(mode)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake select through wake_w
    zygote = os.getpid()
    _send(control, {"event": "ready", "pid": zygote, "warm_s": round(time.perf_counter() - started, 3)})
    live: set[int] = set()
    try:
        while True:
            ready, _, _ = select.select([control, wake_r], [], [])
            if wake_r in ready:
                os.read(wake_r, 4096)
            _reap(control, live)
            if control not in ready:
                continue
            data, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, 3)
            if not data:
                return  # the evaluator is gone
            command = json.loads(data)
            if command.get("cmd") == "fork":
                pid = os.fork()
                if pid == 0:
                    os.close(wake_r)
                    os.close(wake_w)
                    # Our pid, not the child's getppid(): that would name whoever adopted the
                    # child if the zygote died first, and the race check would always pass.
                    _become_child(control, fds, {**command, "zygote": zygote})
                for fd in fds:
                    os.close(fd)
                live.add(pid)
                _send(control, {"event": "forked", "pid": pid})
            elif command.get("cmd") == "kill":
                pid = int(command["pid"])
                if pid in live:  # not reaped yet, so the pid is still ours
                    _kill_group(pid)
            elif command.get("cmd") == "limit_cpu":
                pid = int(command["pid"])
                if pid in live:
                    raise_cpu_limit(pid, int(command["soft"]))
            else:
                return
    finally:
        for pid in live:
            _kill_group(pid)


def _reap(control: socket.socket, live: set[int]) -> None:
    while live:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        live.discard(pid)
        cpu_s = usage.ru_utime + usage.ru_stime  # includes what the child waited for (ptxas)
        message = {"event": "exit", "pid": pid, "code": os.waitstatus_to_exitcode(status), "cpu_s": cpu_s}
        try:
            _send(control, message)
        except OSError:
            return


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def main() -> None:
    mode, fd, parent = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    set_death_signal(parent)
    control = socket.socket(fileno=fd)
    try:
        serve(mode, control)
    except BaseException as e:  # noqa: BLE001 - tell the evaluator why, then go
        try:
            _send(control, {"event": "error", "message": repr(e)[:1200]})
        except OSError:
            pass
        raise
    finally:
        os._exit(0)


# ------------------------------------------------------------------ evaluator side


class ForkServerDied(Exception):
    """The zygote exited or stopped answering; the sandbox starts a new one."""


class ForkServer:
    """The evaluator's handle on one zygote. Not thread-safe: one caller at a time."""

    def __init__(self, mode: str, env: dict, cwd: str, log_path: str, preexec_fn) -> None:
        """Spawn the zygote for `mode` ("compile" | "check") with `env` (already scrubbed)."""
        self.mode = mode
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours

        def spawn() -> subprocess.Popen:
            with open(log_path, "wb") as log:
                return subprocess.Popen(
                    [sys.executable, "-m", "evaluators.zygote", mode, str(theirs.fileno()), str(os.getpid())],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=cwd,
                    env=env,
                    pass_fds=(theirs.fileno(),),
                    preexec_fn=preexec_fn,
                )

        try:
            self.proc = on_lasting_thread(spawn)  # its death signal follows the creating thread
        finally:
            theirs.close()
        self.log_path = log_path
        self.exits: dict[int, tuple[int, float]] = {}  # pid -> (Popen-style code, CPU seconds)
        self.ready = False
        self.warm_s: float | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, deadline: float) -> None:
        if not self.ready:
            message = self._next(deadline, lambda m: m.get("event") in ("ready", "error"))
            if message.get("event") != "ready":
                raise ForkServerDied(f"the {self.mode} fork server failed to start: {message.get('message')}")
            self.ready, self.warm_s = True, message.get("warm_s")

    def fork(
        self,
        workdir: str,
        stderr_fd: int,
        memory_bytes: int | None,
        env: dict,
        deadline: float,
        cpu_seconds: int | None = None,
    ):
        """A new child serving one candidate: (pid, fd to write to it, fd to read from it).

        The child sets its address-space limit `memory_bytes` and CPU-time limit `cpu_seconds`
        (None: none) itself, before it reads the candidate."""
        self.wait_ready(deadline)
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        command = {
            "cmd": "fork",
            "workdir": workdir,
            "memory_bytes": memory_bytes,
            "cpu_seconds": cpu_seconds,
            "env": env,
        }
        try:
            _send(self.sock, command, [to_child_r, from_child_w, stderr_fd])
        except OSError as e:
            for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
                os.close(fd)
            raise ForkServerDied(f"the {self.mode} fork server is gone ({e})") from None
        os.close(to_child_r)
        os.close(from_child_w)
        message = self._next(deadline, lambda m: m.get("event") == "forked")
        return int(message["pid"]), to_child_w, from_child_r

    def exit_of(self, pid: int, timeout: float) -> tuple[int, float] | None:
        """(exit code as Popen reports it, CPU seconds) once `pid` ended; None if still running."""
        if pid not in self.exits:
            try:
                self._next(time.monotonic() + timeout, lambda m: m.get("event") == "exit" and m["pid"] == pid)
            except (TimeoutError, ForkServerDied):
                if pid not in self.exits and not self.alive():
                    # The zygote is gone, so was its child (death signal); no code to report.
                    self.exits[pid] = (-signal.SIGKILL, 0.0)
        return self.exits.get(pid)

    def kill(self, pid: int) -> None:
        if pid in self.exits:
            return
        try:
            _send(self.sock, {"cmd": "kill", "pid": pid})
        except OSError:
            pass  # zygote gone: its children died with it

    def limit_cpu(self, pid: int, soft: int) -> None:
        """Set child `pid`'s CPU-time limit to `soft` seconds in all (the zygote does it while the
        child is unreaped, so the pid cannot have been reused)."""
        if pid in self.exits:
            return
        try:
            _send(self.sock, {"cmd": "limit_cpu", "pid": pid, "soft": int(soft)})
        except OSError:
            pass  # zygote gone: its children died with it

    def close(self) -> None:
        try:
            _send(self.sock, {"cmd": "stop"})
        except OSError:
            pass
        self.sock.close()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _next(self, deadline: float, wanted) -> dict:
        """Read messages until one matches `wanted`; exit reports are kept on the way."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the {self.mode} fork server did not answer in time")
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                continue
            data = self.sock.recv(MAX_MESSAGE)
            if not data:
                raise ForkServerDied(f"the {self.mode} fork server exited; {self.log_tail()}")
            message = json.loads(data)
            if message.get("event") == "exit":
                self.exits[int(message["pid"])] = (int(message["code"]), float(message["cpu_s"]))
            if wanted(message):
                return message

    def log_tail(self, limit: int = 600) -> str:
        text = " ".join(file_tail(self.log_path, limit).split())
        return f"its last output: {text}" if text else "no output"


if __name__ == "__main__":
    main()
