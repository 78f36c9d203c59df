"""The GPU child's stages (child side): the JIT's compile per shape, the device set-up, timing.

Run by evaluators/child.py's `Child` (its `compile_jit`, `prepare_cuda`, `time_pair`): CUDA only, so
kept apart from the CPU stages; each takes the Child serving the candidate (its channel, its
recorded launches and kernels, its guards).
"""

from __future__ import annotations


def compile_jit(child, module, task: dict) -> dict:
    """On a GPU the real JIT compiles at first launch; record what it built, per training and
    held-out shape."""
    launches = []
    child.phase = "entry"
    for kind, shapes in (("train", task["train"]), ("held_out", task.get("held_out", []))):
        for shape in shapes:
            for layout in task["layouts"]:
                child.where = {"shape": list(shape), "layout": layout}
                launches.append(warm_up_shape(child, module, kind, tuple(shape), layout, task["dtype"]))
    return {"kernels": child.kernels, "launches": launches}


def warm_up_shape(child, module, kind: str, shape: tuple, layout: str, dtype: str) -> dict:
    """Call the entry point twice on one shape: the first call JIT-compiles and, for
    @triton.autotune kernels, runs the real autotuner (benchmarking its configs); the second
    launches what every later call will, which is what gets recorded."""
    from . import compat
    from . import compile as comp
    from .correctness import input_generator, make_inputs
    from .standins import config_text

    torch = child.torch
    a, b = make_inputs(shape, layout, dtype, input_generator(0, "cuda"))
    module.matmul(a, b)
    torch.cuda.synchronize()
    child.recorded_kernels.clear()
    module.matmul(a, b)
    torch.cuda.synchronize()
    del a, b  # freed before the next shape's inputs are drawn
    entry = {"shape": list(shape), "layout": layout, "kind": kind, "calls": []}
    chosen = {
        name: config_text(t.best_config)
        for name, t in compat.autotuners(module).items()
        if getattr(t, "best_config", None) is not None
    }
    if chosen:
        entry["autotune"] = chosen
    for fn, kernel in child.recorded_kernels:
        built = compat.kernel_facts(kernel)
        key = f"{fn.__name__}-{built['hash']}" if built["hash"] else fn.__name__
        entry["calls"].append({"kernel": fn.__name__, "key": key})
        facts = comp.compiled_facts(
            built["asm"], built["shared"], built["num_warps"], built["num_stages"], built["metadata"]
        )
        facts.update(kernel=fn.__name__, regs=built["regs"], spill_bytes=built["spills"])
        child.kernels[key] = facts
    return entry


def time_pair(child, module, task: dict, cmd: dict) -> None:  # pragma: no cover - needs a GPU
    """Candidate vs torch.matmul, interleaved (evaluators/timing.py), then a cache probe.

    The probe refills every timed buffer in place (same addresses, new values) and
    calls the candidate once more: a result cached by pointer or shape is then wrong.
    """
    from . import timing
    from .correctness import input_generator, make_inputs

    torch = child.torch
    shape, layout, dtype = tuple(cmd["shape"]), cmd["layout"], task["dtype"]

    def inputs_for(seed: int):
        return make_inputs(shape, layout, dtype, input_generator(int(seed), "cuda"))

    child.retain()  # the check trials' tensors are not needed any more
    inputs = [inputs_for(seed) for seed in cmd["seeds"]]
    protocol = timing.TimingProtocol(**cmd.get("protocol", {}))
    if protocol.flush_bytes_min > child.cuda_device.flush_bytes:
        raise RuntimeError(
            f"judge inconsistency: protocol.flush_bytes_min={protocol.flush_bytes_min} but the device "
            f"was set up with a {child.cuda_device.flush_bytes}-byte flush (the job's protocol)"
        )
    pair = timing.time_pair(module.matmul, child.baseline, inputs, child.cuda_device, protocol)
    child.launch_signatures.clear()  # thousands of timed launches; only the checked runs compare them
    out = {f"timed{i}": o for i, o in pair.rechecks}
    for j, seed in enumerate(cmd["probe_seeds"]):
        a, b = inputs[j + 1]
        fresh_a, fresh_b = inputs_for(seed)
        a.copy_(fresh_a)
        b.copy_(fresh_b)
        out[f"probe{j + 1}"] = module.matmul(a, b)
    torch.cuda.synchronize()
    stats = {"candidate": plain(pair.candidate.__dict__), "baseline": plain(pair.baseline.__dict__)}
    child.send(
        {
            "event": "timed",
            "stats": stats,
            "wall_median_s": pair.wall_median_s,
            "notes": list(pair.notes),
            "batch": list(pair.batch),
            "guard_median_s": list(pair.guard_median_s),
        },
        {k: v for k, v in out.items() if type(v) is torch.Tensor},
    )


def prepare_cuda(child, task: dict) -> dict:  # pragma: no cover - needs a GPU
    """Cap the GPU memory, set the baseline's TF32 rule, bind the timing device; say what was set.

    The cap (torch.cuda.set_per_process_memory_fraction, EvalOptions.gpu_memory_fraction)
    bounds the caching allocator, through which every tensor the candidate can make goes
    (it cannot call cudaMalloc itself: the static rules allow no ctypes). Beyond it the
    allocation raises torch.OutOfMemoryError: `crashed`, out of GPU memory.
    """
    from .cuda_device import CudaDevice, set_baseline_precision
    from .timing import TimingProtocol

    torch = child.torch
    fraction = float(task.get("gpu_memory_fraction", 0.5))
    torch.cuda.set_per_process_memory_fraction(fraction)
    precision = set_baseline_precision(task["dtype"], bool(task.get("allow_tf32", False)))
    protocol = TimingProtocol(**task.get("protocol", {}))
    # Binds sync, events and the flush buffer (protocol.flush_bytes_min honoured) now.
    child.cuda_device = CudaDevice(flush_bytes_min=protocol.flush_bytes_min)
    return {
        "gpu_memory_fraction": fraction,
        "baseline_precision": precision,
        "flush_bytes": child.cuda_device.flush_bytes,
        "device_notes": list(child.cuda_device.notes),
    }


def plain(value):
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
