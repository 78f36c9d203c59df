"""The sandboxed child process: loads one untrusted candidate and answers the parent.

Started by evaluators/sandbox.py with a scrubbed environment, resource limits and a
temporary working directory, ahead of time (torch and triton already imported) but
used for one candidate only. Protocol (frames from evaluators/wire.py):

    child  -> {"event": "ready"}
    parent -> {"cmd": "job", mode, source, task}   mode: compile | check | cuda
    child  -> {"event": "loaded", ...}  (compile facts for compile/cuda) | {"event": "error", stage, message}
    parent -> {"cmd": "run", shape, layout, seed}         (repeated)
    child  -> {"event": "result", ...} + tensor "out"    | {"event": "error", ...}
    parent -> {"cmd": "time", shape, layout, seeds, protocol}   (GPU only)
    child  -> {"event": "timed", ...} + recheck tensors
    parent -> {"cmd": "stop"}

Everything the child says is checked by the parent; the child never decides a status.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import traceback


def _private_channels() -> tuple[int, int]:
    """Keep stdin/stdout for the protocol; the candidate's prints go to stderr."""
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    return proto_in, proto_out


def _tail(exc: BaseException, limit: int = 1200) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith("candidate.py")]
    if frames:
        text = f"candidate.py line {frames[-1].lineno}: " + text
    return text[:limit]


class Child:
    def __init__(self, proto_in: int, proto_out: int) -> None:
        import torch

        from . import guards, wire

        self.torch, self.guards, self.wire = torch, guards, wire
        self.baseline = torch.matmul  # captured before any candidate code runs
        self.proto_in, self.proto_out = proto_in, proto_out
        self.launch = guards.LaunchDepth()
        self.previous: tuple = ()  # the last trial's tensors, see retain()
        self.kept: list = []  # outputs of the independent calls, held until the re-check (check_stage.py)
        self.recorded_kernels: list = []
        self.capture = None  # set while the compile run captures launches instead of running them
        self.phase, self.where = "start", None  # what the child is doing, said with an error
        self.failed_launch: str | None = None  # the kernel whose launch raised, in this call
        self.current_kernel = "?"  # the kernel being launched (named by the input-write guard)
        self.write_guard = None  # check and cuda modes: evaluators/write_guard.py
        self.written: dict = {}  # compiled kernel hash -> the pointer parameters it writes through
        self.race_check = None  # check mode: evaluators/race_check.py
        self.bounds_check = None  # check mode: evaluators/bounds_check.py
        self.program_sample = None  # check mode: evaluators/program_sample.py (full-size sampled runs)
        self.work_count = None  # check mode: evaluators/work_count.py (executed work per program)
        from .standins import AutotuneStandIn

        self.autotune = AutotuneStandIn()
        self._wrap_launchers()

    # -- launch interception, installed before the candidate is imported
    def _wrap_launchers(self) -> None:
        from .compat import launcher_classes

        launch = self.launch
        recorded = self.recorded_kernels
        signatures = self.launch_signatures = []
        for cls in launcher_classes():
            original = cls.run

            def run(fn_self, *args, _original=original, **kwargs):
                if self.capture is not None:
                    return self.capture(fn_self, args, kwargs)
                signatures.append(
                    self.guards.launch_signature(fn_self.__name__, fn_self.arg_names, args, kwargs)
                )
                launch.launches += 1
                launch.depth += 1
                self.current_kernel = fn_self.__name__
                if self.race_check is not None:  # its bookkeeping starts afresh with each launch
                    self.race_check.begin(fn_self.__name__, fn_self.arg_names, args, kwargs)
                if self.bounds_check is not None:
                    self.bounds_check.begin(fn_self.__name__, fn_self.arg_names, args, kwargs)
                try:
                    result = _original(fn_self, *args, **kwargs)
                except BaseException:
                    self.failed_launch = self.failed_launch or fn_self.__name__
                    raise
                finally:
                    launch.depth -= 1
                if result is not None and hasattr(result, "metadata"):
                    recorded.append((fn_self, result))
                    if self.write_guard is not None and self.write_guard.ranges:  # GPU: from the TTIR
                        written = self.written_arguments(result)
                        self.write_guard.check_launch(
                            fn_self.__name__, fn_self.arg_names, args, kwargs, written
                        )
                return result

            cls.run = run

    def written_arguments(self, kernel) -> list[str]:
        """The pointer parameters a compiled kernel writes through (its TTIR; cached by its hash)."""
        from .compat import kernel_facts
        from .dataflow import written_arguments

        facts = kernel_facts(kernel)
        key = facts["hash"] or id(kernel)
        if key not in self.written:
            self.written[key] = written_arguments(facts["asm"].get("ttir", ""))
        return self.written[key]

    def send(self, header: dict, tensors: dict | None = None) -> None:
        self.wire.write_frame(self.proto_out, header, tensors)

    def load(self, path: str, name: str, interpret: bool):
        # The interpreter must be chosen before triton is imported (triton.language's own
        # jit helpers are built at import), so the sandbox starts check children with it set.
        if interpret != (os.environ.get("TRITON_INTERPRET") == "1"):
            raise RuntimeError(f"child started with TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')}")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    def retain(self, *tensors) -> None:
        """Keep this trial's tensors alive until the next trial, then poison and drop them.

        Alive: the next trial's inputs and output cannot take their addresses, so consecutive
        trials never share an address (a cache keyed by pointer misses). Bounded: only one
        trial is kept (keeping every trial's tensors held ~71 GiB on a GPU for llm_bf16).
        Poisoned (filled with POISON) before release: an output left uninitialised that lands on
        a freed block, or a result the candidate kept from an earlier call, reads garbage
        instead of a stale right answer (the Sakana uninitialised-output exploit). Finite, so
        the verdict names the worst element ("C[i,j] = 8192, expected ...") rather than NaN.
        """
        for old in self.previous:
            if type(old) is self.torch.Tensor and old.numel():
                try:
                    old.fill_(POISON)
                except RuntimeError:  # an overlapping view (e.g. expanded) cannot be written; drop it
                    pass
        self.previous = tuple(tensors)

    # -- stages
    def compile_offline(self, path: str, task: dict) -> dict:
        """Capture, cover and compile every launch (evaluators/compile_child.py)."""
        from .compile_child import compile_offline

        return compile_offline(self, path, task)

    def compile_jit(self, module, task: dict) -> dict:
        """GPU: what the real JIT built per training and held-out shape (evaluators/cuda_child.py)."""
        from .cuda_child import compile_jit

        return compile_jit(self, module, task)

    def run_once(self, module, task: dict, cmd: dict) -> None:
        from .correctness import input_generator, make_inputs

        torch, guards = self.torch, self.guards
        device = "cuda" if task["device"] == "cuda" else "cpu"
        gen = input_generator(int(cmd["seed"]), device)  # drawn on the device, as the parent does
        a, b = make_inputs(
            tuple(cmd["shape"]), cmd["layout"], task["dtype"], gen, cmd.get("inputs", "normal")
        )
        a_before, b_before = a.clone(), b.clone()
        recorder = guards.OpRecorder(self.launch)
        self.launch.launches = 0
        self.launch_signatures.clear()
        self.phase, self.where, self.failed_launch = (
            "entry",
            {"shape": cmd["shape"], "layout": cmd["layout"]},
            None,
        )
        # CPU: the config each autotuned launch takes, as the parent chose it from the model.
        self.autotune.choices, self.autotune.chosen = list(cmd.get("autotune", [])), []
        if self.write_guard is not None:
            self.write_guard.hits.clear()
            self.write_guard.protect({"A": a, "B": b})
        if self.race_check is not None:
            self.race_check.clear()
        if self.bounds_check is not None:
            self.bounds_check.clear()
        sample = self.program_sample if "sample" in cmd else None
        if sample is not None:  # a full-size shape: only sampled programs run (program_sample.py)
            self.retain()  # the last trial's tensors go before full-size ones are drawn
            spec = cmd["sample"]
            sample.begin(int(spec["seed"]), int(spec.get("random", 1)), list(spec.get("programs") or []))
        counted = self.work_count if cmd.get("count_work") else None
        if counted is not None:
            counted.begin()
        try:
            with recorder:
                out = module.matmul(a, b)
        finally:
            if sample is not None:
                sample.end()
            if counted is not None:
                counted.end()
            if self.write_guard is not None:
                self.write_guard.protect({})
        if device == "cuda":
            torch.cuda.synchronize()
        race = self.race_check
        facts = {
            "out_of_bounds": self.bounds_check.messages() if self.bounds_check is not None else [],
            "races": race.messages(out if type(out) is torch.Tensor else None) if race is not None else [],
            "race_check_errors": list(race.errors) if race is not None else [],
            "event": "result",
            "autotune_chosen": list(self.autotune.chosen),
            "input_writes": list(self.write_guard.hits) if self.write_guard is not None else [],
            "ops": recorder.ops,
            "launch_ops": recorder.launch_ops,
            "launch_signatures": list(self.launch_signatures),
            "launches": self.launch.launches,
            "output_type": type(out).__module__ + "." + type(out).__qualname__,
            "inputs_changed": not (_same(a, a_before) and _same(b, b_before)),
        }
        if counted is not None:
            facts["work"] = counted.summary()
        if cmd.get("owners") and race is not None and type(out) is torch.Tensor:
            facts["owners"] = race.edge_owners(out)  # the programs that stored C's last row and column
        if type(out) is not torch.Tensor:
            self.retain(a, b, a_before, b_before)
            self.send(facts)
            return
        facts.update(
            dtype=str(out.dtype).replace("torch.", ""),
            shape=list(out.shape),
            device=out.device.type,
            aliases_input=_shares_memory(out, a) or _shares_memory(out, b),
            shares_storage_with=next(
                (n for n, old in enumerate(self.kept) if _shares_memory(out, old)), None
            ),
        )
        if sample is not None:  # never kept: full-size tensors live for this call only
            from .program_sample import sampled_output

            extra, tensors = sampled_output(sample, out)
            self.send({**facts, **extra}, tensors)
            return
        if cmd.get("keep"):  # held as a caller holds a result, re-checked after every later call
            self.kept.append(out)
            self.retain(a, b, a_before, b_before)
        else:
            self.retain(a, b, a_before, b_before, out)
        self.send(facts, {"out": _wire(out)})

    def time_pair(self, module, task: dict, cmd: dict) -> None:  # pragma: no cover - needs a GPU
        from .cuda_child import time_pair

        time_pair(self, module, task, cmd)

    def prepare_cuda(self, task: dict) -> dict:  # pragma: no cover - needs a GPU
        from .cuda_child import prepare_cuda

        return prepare_cuda(self, task)

    def error_facts(self, stage: str, e: BaseException) -> dict:
        """What the parent needs to name a failure; it decides the status (evaluators/failures.py)."""
        return {
            "event": "error",
            "stage": stage,
            "phase": self.phase,  # load | entry (the entry point's own code or a launch) | compile
            "where": self.where,
            "message": _tail(e),
            "memory": self.out_of_memory(e),
            "timing_guard": type(e).__name__ == "TimingError",
            "failed_launch": self.failed_launch,  # the kernel whose launch raised, if one did
            "raised_in": _raised_in(e),  # the Triton file the innermost exception came from, if any
            "exception": type(_root_cause(e)).__name__,
            # Kept when the candidate caught the access's exception and raised something else.
            "out_of_bounds": self.bounds_check.messages() if self.bounds_check is not None else [],
        }

    def out_of_memory(self, e: BaseException) -> bool:
        # torch's CPU allocator raises a plain RuntimeError ("can't allocate memory").
        return isinstance(e, MemoryError | self.torch.OutOfMemoryError) or "allocate" in str(e)

    def serve(self) -> None:
        """One candidate: compile (offline, CPU), check (interpreter, CPU) or both plus timing (cuda)."""
        self.send({"event": "ready", "pid": os.getpid()})
        job, _ = self.wire.read_frame(self.proto_in)
        task, mode = job["task"], job["mode"]
        path = os.path.abspath("candidate.py")
        with open(path, "w") as f:
            f.write(job["source"])
        self.kernels: dict = {}
        started = time.perf_counter()
        try:
            if mode in ("compile", "check"):
                from .standins import answer_device_queries

                answer_device_queries(task["target"])  # before candidate code exists
                self.autotune.install()
            if mode == "compile":
                report = self.compile_offline(path, task)
            elif mode == "check":
                from . import compat
                from .interp_fix import ensure_interpreter_fixes
                from .write_guard import InputWriteGuard

                self.write_guard = InputWriteGuard()
                self.write_guard.install()
                self.write_guard.kernel = lambda: self.current_kernel
                self.phase = "load"
                module = self.load(path, "candidate", interpret=True)
                report = {"interp_fixes": ensure_interpreter_fixes()}
                # After the fixes, so its wrappers are outermost and see the bf16 atomic fix's adds too.
                from .race_check import DESCRIPTION, RaceCheck

                self.race_check = RaceCheck()
                self.race_check.install()
                report["race_check"] = DESCRIPTION
                from . import bounds_check

                # After the race check, so an access out of bounds is named as such before its race.
                self.bounds_check = bounds_check.BoundsCheck()
                self.bounds_check.install()
                report["bounds_check"] = bounds_check.DESCRIPTION
                from .program_sample import ProgramSample

                self.program_sample = ProgramSample()
                self.program_sample.install()
                from .work_count import WorkCount

                self.work_count = WorkCount()
                self.work_count.install()
                report["autotuned"] = sorted(compat.autotuners(module))
            else:
                from . import compat

                report = self.prepare_cuda(task)  # before candidate code exists
                from .write_guard import InputWriteGuard

                self.write_guard = InputWriteGuard()  # launches only (check_launch): nothing to install
                compat.install_scratch_allocator()
                self.phase = "load"
                module = self.load(path, "candidate", interpret=False)
                report.update(self.compile_jit(module, task))
        except BaseException as e:  # noqa: BLE001 - every failure becomes a message for the parent
            self.send(self.error_facts(mode, e))
            return
        self.send({"event": "loaded", "seconds": round(time.perf_counter() - started, 3), **report})
        while True:
            cmd, _ = self.wire.read_frame(self.proto_in)
            if cmd.get("cmd") not in ("run", "time", "recheck"):
                return
            try:
                if cmd["cmd"] == "run":
                    self.run_once(module, task, cmd)
                elif cmd["cmd"] == "recheck":
                    self.send({"event": "result"}, {f"out{n}": _wire(out) for n, out in enumerate(self.kept)})
                else:
                    self.time_pair(module, task, cmd)
            except BaseException as e:  # noqa: BLE001
                self.send(self.error_facts(cmd["cmd"], e))


POISON = 8192.0  # 2^13: exact in fp16/bf16/fp32, far outside what randn inputs give (|C| ~ sqrt(K))


def _same(x, y) -> bool:
    """Equal element for element, a NaN equal to a NaN (inputs may hold NaN on purpose)."""
    return bool(((x == y) | (x.isnan() & y.isnan())).all())


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while id(exc) not in seen and (exc.__cause__ or exc.__context__) is not None:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return exc


def _raised_in(exc: BaseException) -> str | None:
    """'triton/runtime/interpreter.py' when the innermost frame of the root exception is inside
    the triton package (its interpreter, its compiler); None when it is the candidate's code."""
    frames = traceback.extract_tb(_root_cause(exc).__traceback__)
    if not frames:
        return None
    path = frames[-1].filename.replace(os.sep, "/")
    return "triton/" + path.rsplit("/triton/", 1)[1] if "/triton/" in path else None


def _wire(out):
    """An output as it travels: its own dtype when the wire carries it, else float32."""
    import torch

    return out if out.dtype in (torch.float16, torch.bfloat16, torch.float32) else out.float()


def _shares_memory(x, y) -> bool:
    xs, ys = x.untyped_storage(), y.untyped_storage()
    x0, y0 = xs.data_ptr(), ys.data_ptr()
    return x0 < y0 + ys.nbytes() and y0 < x0 + xs.nbytes() and xs.nbytes() > 0 and ys.nbytes() > 0


def serve_channels(proto_in: int, proto_out: int) -> None:
    """Serve one candidate on these protocol fds, then exit the process (never returns).

    Used by a spawned child (main) and by a child forked from the fork server (zygote.py)."""
    try:
        child = Child(proto_in, proto_out)
    except BaseException as e:  # noqa: BLE001
        from . import wire

        wire.write_frame(proto_out, {"event": "error", "stage": "start", "message": _tail(e)})
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    child.serve()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: nothing of the candidate's should run after us


def main() -> None:
    serve_channels(*_private_channels())


if __name__ == "__main__":
    main()
