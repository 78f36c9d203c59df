"""One failure, one status, in every stage: the child's error facts turned into a verdict.

The children (compile on meta tensors, the interpreter's checks, the GPU's JIT) say what
failed and where (evaluators/child.py `error_facts`); the parent decides the status here,
so the same fault gets the same status and words whichever stage met it first:

- the module fails to import                              -> compile_error
- a kernel fails to compile for the target                -> compile_error
- the entry point (its own code, or a launch it makes) raises -> crashed, "the entry point raised"
- out of memory                                           -> crashed, "(out of memory)"
- the interpreter cannot run what compiled for the target -> unsupported (a limit of the CPU
  backend, not of the kernel: inline asm, data types it lacks; judged on a GPU instead)
"""

from __future__ import annotations

import os

from .compile import truncate
from .verdict import Stop

GPU_NEEDED = "judge it on a GPU (`evolve remeasure` re-judges unsupported candidates there)"


def where_text(where: dict | None) -> str:
    """'shape (64, 64, 64) layout nn' from the child's `where`, or ''."""
    if not where or "shape" not in where:
        return ""
    return f"shape {tuple(where['shape'])} layout {where.get('layout')}"


def from_child(header: dict, interpreter: bool) -> Stop:
    """The verdict for a child's {"event": "error"} frame. `interpreter`: the child ran the
    kernels under Triton's interpreter (the CPU check child)."""
    phase = header.get("phase", "entry")
    message = truncate(str(header.get("message")))
    where = where_text(header.get("where"))
    prefix = f"{where}: " if where else ""
    if phase == "load":
        return Stop("compile_error", f"the kernel module failed to load: {message}")
    if phase == "compile":
        kernel = (header.get("where") or {}).get("kernel", "?")
        return Stop("compile_error", f"kernel {kernel} failed to compile for the target: {message}")
    if header.get("memory"):
        return Stop("crashed", f"{prefix}the entry point raised (out of memory): {message}")
    if interpreter and backend_limit(header):
        return Stop(
            "unsupported",
            f"{prefix}the CPU backend (Triton's interpreter) cannot run kernel {header.get('failed_launch')}, "
            f"which compiles for the target: {message}. Not a fault of the kernel; {GPU_NEEDED}",
        )
    return Stop("crashed", f"{prefix}the entry point raised: {message}")


def backend_limit(header: dict) -> bool:
    """A kernel launch raised from inside Triton's interpreter itself (not from the candidate's
    own lines, and not a failed device_assert): what the interpreter cannot do, e.g. inline asm
    ("inline_asm not supported in interpreter mode") or a dtype its atomics lack."""
    raised_in = header.get("raised_in") or ""
    return (
        bool(header.get("failed_launch"))
        and raised_in.startswith("triton/")
        and (header.get("exception") not in ("AssertionError", "MemoryError"))
    )


def spin_wait_stop(kernels: dict, used: set[str]) -> Stop | None:
    """`unsupported` when a launched kernel spins on flags other programs set: on a GPU the
    programs run at once and the wait ends, the interpreter runs them one after another and
    the wait never would (so it is never reported as a timeout)."""
    for key in sorted(used):
        facts = kernels.get(key) or {}
        if facts.get("spin_wait"):
            return Stop(
                "unsupported",
                f"kernel {facts.get('kernel')} waits in a loop on memory other programs write (a spin-wait on "
                "flags, e.g. a stream-K fix-up): fine on a GPU, where programs run at once, but the CPU "
                "backend runs programs one at a time, so the wait could never end. Not a fault of the "
                f"kernel; {GPU_NEEDED}",
            )
    return None


def machine_load() -> str:
    """'load 1.9 on 2 cores' plus a warning when the machine was busier than its cores."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return "machine load unknown"
    cores = os.cpu_count() or 1
    text = f"machine load {load:.1f} on {cores} cores"
    if load > cores:
        text += " (loaded: the judge competed for CPU, so this may be the machine's fault; judged again next time)"
    return text
