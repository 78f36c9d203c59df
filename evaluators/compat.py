"""Torch/Triton/numpy compatibility: the version gate, and every call into Triton internals.

The gate. The judge is tested on two pairs (`.ci/constraints/`, one file per pair):
torch 2.13 + triton 3.9 (the default, CPU) and torch 2.11 + triton 3.6 (the GPU image's
pair; `make test-compat`). `TESTED` is the range those pairs span, declared alike in
pyproject.toml (tests/test_compat.py holds the two to each other). Outside it the judge
refuses to start with one message naming the versions found, the range and the fix:
a Triton whose internals moved would otherwise end every candidate `crashed` or, worse,
judge them wrongly. `TRITON_EVOLVE_ALLOW_UNTESTED=1` turns that refusal into a warning
for users who want to try a newer release; it never lifts a known break (`KNOWN_BREAKS`),
since there the outcome is known: every candidate fails for the judge's reasons, not its own.

A known break disables one judge mode only. Triton 3.6's interpreter casts one-element
arrays with `int(self.handle.data)`, which numpy >= 2.4 refuses (3.8 reads
`int(self.handle.data.squeeze())`; 3.7 was not checked, so it is treated as broken), so with
those versions the CPU judge (`--device cpu`, whose checks run under the interpreter) is
refused while `--device cuda` (the JIT only) runs.

The door. Triton has no stable API for what the compile stage needs (its binder, the JIT's
argument packing, an offline `compile` for a chosen target) nor for what the sandbox and
the bf16 fix patch (the launchers' `run`, the interpreter's `create_dot`). Every such use is
a function here; 3.6 and 3.9 agree on all of them (read against both sources), and
`internals_problem()` says which one moved when a release changes them.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import inspect
import os
import re
import warnings
from collections.abc import Mapping

ALLOW_UNTESTED_ENV = "TRITON_EVOLVE_ALLOW_UNTESTED"

# Tested range per package, [low, high) on (major, minor); the pairs in .ci/constraints/.
TESTED: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "torch": ((2, 11), (2, 14)),
    "triton": ((3, 6), (3, 10)),
    "numpy": ((2, 3), (2, 6)),
}

# What each --device needs: "compile" is Triton's binder + compiler (offline on CPU, the JIT on
# a GPU); "interpreter" is TRITON_INTERPRET=1, where the CPU judge runs its checks.
MODES_BY_DEVICE: dict[str, tuple[str, ...]] = {"cpu": ("compile", "interpreter"), "cuda": ("compile",)}


@dataclasses.dataclass(frozen=True)
class KnownBreak:
    """A combination inside the tested range where one judge mode is known not to work."""

    mode: str  # the mode it breaks: a value in MODES_BY_DEVICE
    triton_below: tuple[int, int]  # applies to triton < this (major, minor)
    numpy_from: tuple[int, int]  # ... with numpy >= this
    reason: str  # what fails, for the message
    fix: str  # what the user can do


KNOWN_BREAKS: tuple[KnownBreak, ...] = (
    KnownBreak(
        mode="interpreter",
        triton_below=(3, 8),
        numpy_from=(2, 4),
        reason="Triton's interpreter converts one-element arrays with int(self.handle.data), which "
        "numpy >= 2.4 refuses, so every candidate would end 'crashed' in the CPU checks",
        fix="install numpy<2.4 (pip install 'numpy==2.3.5'), or triton>=3.8 with a matching torch",
    ),
)


class UnsupportedEnvironment(RuntimeError):
    """The installed torch/triton/numpy cannot run the requested judge mode (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Decision:
    """The gate's answer for one device: `refusal` stops the judge, `warning` is printed and allowed."""

    refusal: str | None = None
    warning: str | None = None


def parse_version(text: str) -> tuple[int, int]:
    """(major, minor) of a version string: '2.11.0+cu130' -> (2, 11). ValueError if none."""
    m = re.match(r"\s*(\d+)\.(\d+)", text)
    if not m:
        raise ValueError(f"cannot read a version from {text!r}")
    return int(m.group(1)), int(m.group(2))


@functools.cache
def installed_versions() -> dict[str, str]:
    """Installed version of each package in TESTED, from its metadata (no import), else its
    `__version__`; 'missing' when it is not installed. Read once per process."""
    found = {}
    for name in TESTED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            try:
                found[name] = str(importlib.import_module(name).__version__)
            except ImportError:
                found[name] = "missing"
    return found


def _range_text(name: str) -> str:
    (lo_a, lo_b), (hi_a, hi_b) = TESTED[name]
    return f"{name}>={lo_a}.{lo_b},<{hi_a}.{hi_b}"


def decide(device: str, versions: Mapping[str, str], allow_untested: bool = False) -> Decision:
    """The gate's decision for `device` ("cpu" or "cuda") given package versions by name.

    Pure (the tests feed it version strings). Outside TESTED: a refusal, or a warning when
    `allow_untested`. A KNOWN_BREAKS entry that hits a mode the device needs: always a refusal.
    """
    if device not in MODES_BY_DEVICE:
        raise ValueError(f"unknown device {device!r}; expected one of {sorted(MODES_BY_DEVICE)}")
    found = ", ".join(f"{n} {versions.get(n, 'missing')}" for n in TESTED)
    outside = []
    parsed: dict[str, tuple[int, int]] = {}
    for name, (low, high) in TESTED.items():
        try:
            parsed[name] = parse_version(versions.get(name, "missing"))
        except ValueError:
            outside.append(name)
            continue
        if not low <= parsed[name] < high:
            outside.append(name)
    if outside:
        tested = ", ".join(_range_text(n) for n in TESTED)
        text = (
            f"untested {' and '.join(outside)}: found {found}; the judge is tested with {tested} "
            "(pairs in .ci/constraints/). Fix: pip install -c .ci/constraints/torch2.13-triton3.9.txt "
            "torch triton numpy (or the torch2.11-triton3.6 pair)"
        )
        if allow_untested:
            return Decision(warning=f"{text}; running anyway because {ALLOW_UNTESTED_ENV}=1")
        return Decision(refusal=f"{text}, or set {ALLOW_UNTESTED_ENV}=1 to try at your own risk.")
    for brk in KNOWN_BREAKS:
        if (
            brk.mode in MODES_BY_DEVICE[device]
            and parsed["triton"] < brk.triton_below
            and parsed["numpy"] >= brk.numpy_from
        ):
            usable = [d for d, modes in MODES_BY_DEVICE.items() if brk.mode not in modes]
            return Decision(
                refusal=f"--device {device} needs Triton's {brk.mode}, which does not work with {found}: "
                f"{brk.reason}. --device {', '.join(usable)} still works here. Fix: {brk.fix}."
            )
    return Decision()


def require_tested_environment(device: str) -> None:
    """Stop before judging anything on `device` when the installed versions cannot do it.

    Raises UnsupportedEnvironment (one message: versions found, range tested, the fix); warns
    (UserWarning) when outside the tested range with TRITON_EVOLVE_ALLOW_UNTESTED=1, unless the
    Triton internals it calls have moved (internals_problem), which is refused even then.
    """
    decision = decide(device, dict(installed_versions()), os.environ.get(ALLOW_UNTESTED_ENV) == "1")
    if decision.refusal:
        raise UnsupportedEnvironment(decision.refusal)
    if decision.warning:
        # Allowed to try an untested release, but not one whose internals visibly moved:
        # then every candidate would end `crashed` for the judge's reasons.
        moved = internals_problem()
        if moved:
            raise UnsupportedEnvironment(f"{decision.warning}, but: {moved}")
        warnings.warn(decision.warning, stacklevel=2)


# ---------------------------------------------------------------- Triton internals


def launcher_classes() -> tuple[type, ...]:
    """The classes whose `run(self, *args, grid, warmup, **kwargs)` every kernel launch goes
    through: the JIT's and the interpreter's (the sandbox wraps both)."""
    from triton.runtime import interpreter, jit

    return jit.JITFunction, interpreter.InterpretedFunction


def autotuner_class() -> type:
    """`triton.runtime.autotuner.Autotuner`, whose `run(self, *args, **kwargs)` benchmarks each
    pruned config once per tuning key (evaluators/standins.py replaces it on CPU)."""
    from triton.runtime.autotuner import Autotuner

    return Autotuner


def base_function_name(kernel) -> str:
    """The name of the Python function under a (possibly nested) autotune/heuristics wrapper."""
    fn = kernel
    while hasattr(fn, "fn"):
        fn = fn.fn
    return getattr(fn, "__name__", type(kernel).__name__)


def autotuners(module) -> dict:
    """{kernel name: Autotuner} for each @triton.autotune kernel among `module`'s globals (also
    under a @triton.heuristics wrapper). `Autotuner.best_config` is the config it last launched."""
    Autotuner = autotuner_class()
    found = {}
    for value in vars(module).values():
        kernel = value
        while kernel is not None and not isinstance(kernel, Autotuner):
            kernel = getattr(kernel, "fn", None) if hasattr(kernel, "run") else None
        if kernel is not None:
            found[base_function_name(kernel)] = kernel
    return found


def install_scratch_allocator() -> None:
    """Give kernels the global scratch memory Triton asks the host for at launch (in-kernel TMA
    descriptors, `global_scratch_size > 0` in the compile metadata): `triton.set_allocator` with
    torch's caching allocator on the current device and stream. Part of the candidate contract:
    the judge's GPU child installs it, and so must code that runs an exported winner."""
    import torch
    import triton

    def allocate(size: int, alignment: int, stream):
        return torch.empty(size, device="cuda", dtype=torch.int8)

    triton.set_allocator(allocate)


def tuning_key(tuner, args: tuple, kwargs: dict) -> tuple:
    """The key the autotuner caches its choice under: the `key` arguments' values, then the
    dtypes of the tensor arguments (Autotuner.run, Triton 3.6-3.9)."""
    named = {**dict(zip(tuner.arg_names, args, strict=False)), **kwargs}
    named = {k: v for k, v in named.items() if k in tuner.arg_names}
    key = [named[k] for k in tuner.keys if k in named]
    key += [str(v.dtype) for v in named.values() if hasattr(v, "dtype")]
    return tuple(key)


def interpreted(fn):
    """`fn` (a plain Python kernel body) as the interpreter runs it, launchable as kernel[grid](...)."""
    from triton.runtime.interpreter import InterpretedFunction

    return InterpretedFunction(fn)


def cuda_backend(capability: int):
    """(target, backend) of Triton's CUDA compiler for compute capability `capability` (e.g. 90),
    usable without a GPU."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    target = GPUTarget("cuda", capability, 32)
    return target, make_backend(target)


def specialise(jit_fn, backend, args: tuple, kwargs: dict) -> dict:
    """What the JIT's binder derives from one launch's arguments: signature, constexprs,
    attrs (divisibility-16 and the like) and compile options, as the JIT would compile them."""
    from triton.runtime import jit as tjit

    binder = tjit.create_function_from_signature(jit_fn.signature, jit_fn.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = jit_fn._pack_args(
        backend, dict(kwargs), bound_args, specialization, options
    )
    return {"signature": signature, "constexprs": constexprs, "attrs": attrs, "options": options}


def compile_for(jit_fn, spec: dict, target):
    """Compile `jit_fn` ahead of time for `target` with a `specialise` result; the CompiledKernel."""
    import triton
    from triton.compiler import ASTSource

    src = ASTSource(jit_fn, spec["signature"], spec["constexprs"], spec["attrs"])
    return triton.compile(src, target=target, options=spec["options"].__dict__)


def kernel_facts(kernel) -> dict:
    """Plain data from a CompiledKernel: asm (by stage), shared bytes, warps, stages, and registers
    and spills when the kernel was loaded on a GPU (None otherwise: Triton sets them on load)."""
    meta = kernel.metadata
    return {
        "asm": kernel.asm,
        "shared": meta.shared,
        "num_warps": meta.num_warps,
        "num_stages": meta.num_stages,
        "regs": getattr(kernel, "n_regs", None),
        "spills": getattr(kernel, "n_spills", None),
        "hash": getattr(kernel, "hash", None),
        "metadata": meta,
    }


def interpreter_dot():
    """(InterpreterBuilder class, TensorHandle class) of the interpreter, for the bf16 dot fix
    (evaluators/interp_fix.py), which wraps `InterpreterBuilder.create_dot(self, a, b, d,
    input_precision, max_num_imprecise_acc)` and builds `TensorHandle(data, dtype)`."""
    from triton.runtime import interpreter

    return interpreter.InterpreterBuilder, interpreter.TensorHandle


def interpreter_atomics():
    """(InterpreterBuilder, TensorHandle, load, store, FADD) for the bf16 atomic-add fix
    (evaluators/interp_fix.py), which wraps `InterpreterBuilder.create_atomic_rmw(self, rmwOp,
    ptr, val, mask, sem, scope)`; `load(ptrs, mask, other, np_dtype)` and `store(ptrs, values,
    mask)` read and write memory at raw addresses, as the interpreter's own masked load/store do."""
    from triton._C.libtriton import interpreter as native
    from triton._C.libtriton import ir
    from triton.runtime import interpreter

    return (
        interpreter.InterpreterBuilder,
        interpreter.TensorHandle,
        native.load,
        native.store,
        ir.ATOMIC_OP.FADD,
    )


def interpreter_writers():
    """(InterpreterBuilder, {method: (index of its pointer argument, index of its mask or None)})
    for every way the interpreter writes memory, Triton 3.6-3.9 (evaluators/write_guard.py wraps
    them; indices count after `self`, a method a version lacks is skipped)."""
    from triton.runtime import interpreter

    writers = {
        "create_store": (0, None),
        "create_masked_store": (0, 2),
        "create_atomic_store": (0, 2),
        "create_atomic_rmw": (1, 3),
        "create_atomic_cas": (0, None),
        "create_tensor_pointer_store": (0, None),
        "create_descriptor_store": (0, None),
        "create_descriptor_scatter": (0, None),
    }
    return interpreter.InterpreterBuilder, writers


def interpreter_accesses():
    """What evaluators/race_check.py wraps to see every memory access of the interpreter, Triton 3.6-3.9:
    (InterpreterBuilder, plain, atomics, launch).

    plain: {method: ("load" | "store", pointer index, mask index, value index or None)}. Every
    plain load and store goes through create_masked_load / create_masked_store (create_load,
    create_store, block pointers and descriptors call them on `self`). atomics: {method: (pointer index, mask index or None, sem index)}
    (3.9's create_atomic_load/store/poll call the plain ones inside). launch: the method each launch
    calls once with its grid, before its first program (`set_grid_dim(nx, ny, nz)`); the program
    running is the builder's `grid_idx` (x, y, z), programs run x-major, z fastest. Indices count
    after `self`; a method a version lacks is skipped."""
    from triton.runtime import interpreter

    plain = {"create_masked_load": ("load", 0, 1, None), "create_masked_store": ("store", 0, 2, 1)}
    atomics = {
        "create_atomic_rmw": (1, 3, 4),
        "create_atomic_cas": (0, None, 3),
        "create_atomic_load": (0, 1, 2),
        "create_atomic_store": (0, 2, 3),
        "create_atomic_poll": (0, None, 3),
    }
    return interpreter.InterpreterBuilder, plain, atomics, "set_grid_dim"


def on_interpreter_launch(callback) -> None:
    """Call `callback(grid)` (the launch's grid, a tuple of ints) at the start of every interpreted
    launch, before its first program (interpreter_accesses' launch method); wrappers installed later
    run first."""
    builder, _, _, launch = interpreter_accesses()
    original = getattr(builder, launch)

    def start(builder_self, *grid):
        callback(tuple(int(g) for g in grid))
        return original(builder_self, *grid)

    setattr(builder, launch, start)


def program_index(grid: tuple, index) -> int:
    """Flat id of the program at grid index (x, y, z) of a 3-D `grid`: the interpreter runs programs
    x-major, z fastest, so this is also their order."""
    _, ny, nz = grid
    return (int(index[0]) * ny + int(index[1])) * nz + int(index[2])


def interpreter_grid() -> tuple[type, object]:
    """What evaluators/program_sample.py wraps to run only some programs of a launch, Triton 3.6-3.9:
    (GridExecutor, interpreter_builder). Each interpreted launch builds a GridExecutor(fn, arg_names,
    grid, ...) whose call reads `self.fn` (its signature, its globals) and then calls `self.fn(**args)`
    once per program, after `interpreter_builder.set_grid_idx(x, y, z)`; `interpreter_builder.grid_idx`
    is the program running."""
    from triton.runtime import interpreter

    return interpreter.GridExecutor, interpreter.interpreter_builder


def interpreter_reduce():
    """The interpreter's ReduceOps class, Triton 3.6-3.9, or None: `sum(self, input)` reduces a float
    sum with numpy in one call (evaluators/work_count.py counts its elements)."""
    from triton.runtime import interpreter

    return getattr(interpreter, "ReduceOps", None)


def interpreter_builder():
    """The interpreter's one InterpreterBuilder instance (its `grid_idx` is the program running)."""
    from triton.runtime import interpreter

    return interpreter.interpreter_builder


def memory_order(sem) -> tuple[bool, bool]:
    """(acquires, releases) of an atomic's memory semantic as the interpreter receives it (an
    `ir.MEM_SEMANTIC`, Triton 3.6-3.9): acq_rel (tl.atomic_*'s default) both, relaxed neither."""
    return _memory_orders().get(sem, (True, True))


@functools.cache
def _memory_orders() -> dict:
    from triton._C.libtriton import ir

    return {
        ir.MEM_SEMANTIC.ACQUIRE_RELEASE: (True, True),
        ir.MEM_SEMANTIC.ACQUIRE: (True, False),
        ir.MEM_SEMANTIC.RELEASE: (False, True),
        ir.MEM_SEMANTIC.RELAXED: (False, False),
    }


# Parameters of each internal the door calls, as 3.6 and 3.9 declare them.
_EXPECTED_PARAMS = {
    "triton.runtime.jit:create_function_from_signature": "sig kparams backend",
    "triton.runtime.jit:JITFunction._pack_args": "self backend kwargs bound_args specialization options",
    "triton.runtime.jit:JITFunction.run": "self args grid warmup kwargs",
    "triton.runtime.interpreter:InterpretedFunction.run": "self args grid warmup kwargs",
    "triton.runtime.autotuner:Autotuner.run": "self args kwargs",
    "triton.runtime.autotuner:Autotuner.prune_configs": "self kwargs",
    "triton.runtime.interpreter:InterpreterBuilder.create_dot": "self a b d input_precision max_num_imprecise_acc",
    "triton.runtime.interpreter:TensorHandle": "data dtype attr",
    "triton.runtime.interpreter:InterpreterBuilder.create_atomic_rmw": "self rmwOp ptr val mask sem scope",
    "triton.runtime.interpreter:GridExecutor.__init__": "self fn arg_names grid pre_run_hooks",
    "triton.compiler:ASTSource": "fn signature constexprs attrs",
    "triton.compiler:make_backend": "target",
    "triton.backends.compiler:GPUTarget": "backend arch warp_size",
}


def internals_problem(expected_params: Mapping[str, str] | None = None) -> str | None:
    """None when every Triton internal this module calls has the parameters it passes; else
    which moved (worth a look before trusting a triton outside the tested range).

    `expected_params`: "module:attr.path" -> space-separated parameter names; default: what
    3.6 and 3.9 declare for everything this module calls."""
    moved = []
    for where, expected in (expected_params or _EXPECTED_PARAMS).items():
        module_name, attr_path = where.split(":")
        try:
            obj = importlib.import_module(module_name)
            for part in attr_path.split("."):
                obj = getattr(obj, part)
            params = list(inspect.signature(obj).parameters)
        except (ImportError, AttributeError, ValueError, TypeError) as e:
            moved.append(f"{where}: {type(e).__name__}: {e}")
            continue
        if params != expected.split():
            moved.append(f"{where}: parameters {params}, expected {expected.split()}")
    if not moved:
        return None
    return "Triton internals the judge calls have changed: " + "; ".join(moved)
