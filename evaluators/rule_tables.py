"""The static rules' tables: what a kernel module may import, name, call and decorate.

Data only; evaluators/static_rules.py walks the tree and applies them. The allowlist is a
small slice of torch and triton (an honest tiled / split-K / persistent matmul needs no
more), so anything outside it is rejected rather than reasoned about. Device-side names
(triton.language, its math libraries) are read from the installed triton, so a release that
adds a tl function does not need this file edited.
"""

from __future__ import annotations

import importlib
import math
import types
import typing

import triton.language as tl

ALLOWED_MODULES = frozenset({"triton", "triton.language", "torch", "math", "functools", "typing"})
ALLOWED_ROOTS = frozenset(m.split(".")[0] for m in ALLOWED_MODULES)

# Names reachable by reflection or that execute text: any reference is banned.
BANNED_NAMES = frozenset(
    "eval exec compile open __import__ getattr setattr delattr hasattr vars globals locals breakpoint "
    "input memoryview help exit quit type super object "
    "dir".split()  # class/attribute reflection; no honest kernel needs them
)

# Library matrix products (a candidate must compute C with its own Triton kernel).
MATRIX_NAMES = frozenset(
    "matmul mm bmm addmm baddbmm addbmm addmv addr einsum linear bilinear _scaled_mm _int_mm "
    "chain_matmul multi_dot tensordot mv dot vdot inner outer ger kron conv1d conv2d conv3d cublas "
    "cublasLt matrix_power "
    "ops".split()  # torch.ops.aten.mm and friends
)

# Streams, events, graphs and syncs: the timing harness owns them.
STREAM_NAMES = frozenset(
    "Stream ExternalStream stream set_stream current_stream default_stream Event CUDAGraph graph graphs "
    "make_graphed_callables synchronize cudart".split()
)

# Attributes that leak host data, storage, the interpreter or frames, or a jit kernel's Python body.
BANNED_ATTRS = frozenset(
    "tolist numpy item cpu untyped_storage storage set_ resize_ record_stream environ modules os sys "
    "builtins f_globals f_locals f_back f_code f_builtins gi_frame gi_code tb_frame cr_frame func_globals "
    "register_forward_hook "
    "fn".split()  # JITFunction.fn is the plain Python function: `k.fn(a, b)`
)

# Builtins a module may call at import time (constructors of plain data).
SAFE_TOPLEVEL_CALLS = frozenset("dict list tuple set frozenset int float str bool range min max len".split())

ALLOWED_DECORATORS = frozenset(
    {"triton.jit", "triton.autotune", "triton.heuristics", "functools.lru_cache", "functools.cache"}
)

_libdevice = importlib.import_module("triton.language.extra.libdevice")
# May be imported under an alias; their attributes are still checked name by name.
DEVICE_LIBRARIES = frozenset(
    {"triton.language.math", "triton.language.extra.libdevice", "triton.language.extra.cuda.libdevice"}
)


def public_names(module: types.ModuleType, prefix: str) -> set[str]:
    """Public, non-module names of `module` as dotted paths under `prefix`."""
    return {
        f"{prefix}.{name}"
        for name in dir(module)
        if not name.startswith("_") and not isinstance(getattr(module, name), types.ModuleType)
    }


_TORCH = (
    "empty empty_like empty_strided zeros zeros_like full ones float16 bfloat16 float32 float64 "
    "float8_e4m3fn float8_e5m2 int8 int16 int32 int64 bool Tensor Size dtype device finfo "
    "cuda.get_device_properties cuda.is_available cuda.current_device cuda.get_device_capability "
    "cuda.get_device_name"
).split()
_TRITON = "jit autotune heuristics Config cdiv next_power_of_2".split()
# A path is allowed when it equals one of these or extends one (`torch.float16.itemsize`).
ALLOWED_PATHS: frozenset[str] = frozenset(
    {f"torch.{n}" for n in _TORCH}
    | {f"triton.{n}" for n in _TRITON}
    | public_names(tl, "triton.language")
    # device-side math libraries: their functions only, never the modules they import
    # (tl.math.core leads to triton.knobs, tl.extra.modules to pkgutil)
    | public_names(tl.math, "triton.language.math")
    | public_names(_libdevice, "triton.language.extra.libdevice")
    | public_names(_libdevice, "triton.language.extra.cuda.libdevice")
    | public_names(math, "math")
    | {f"functools.{n}" for n in ("lru_cache", "cache", "partial", "reduce", "wraps")}
    | {f"typing.{n}" for n in typing.__all__ if n not in ("get_type_hints", "ForwardRef")}  # both eval text
)

# What each root offers, for the message when a name outside ALLOWED_PATHS is used.
ALLOWED_HINT = {
    "torch": "empty, empty_like, empty_strided, zeros, zeros_like, full, ones, dtypes, Tensor, Size, "
    "device, finfo, cuda.get_device_properties and other cuda device queries",
    "triton": "jit, autotune, heuristics, Config, cdiv, next_power_of_2 and triton.language",
    "functools": "lru_cache, cache, partial, reduce, wraps",
}

# -- evaluators/independence_rules.py: placement, state across calls, caches ----------------------

# Attributes that tell where or how a call runs (a judge's meta/CPU run from a GPU one, a training
# step's autograd state): never read. `x.device` and, in host code, `.type` are judged apart
# (a device may be passed on to an allocation). Storage is in BANNED_ATTRS.
PLACEMENT_ATTRS = frozenset(
    "is_cuda is_meta is_cpu is_xpu is_mps is_mtia is_hpu is_ipu is_xla is_vulkan is_lazy is_mkldnn "
    "is_pinned is_shared data_ptr get_device storage_type requires_grad grad_fn grad is_leaf "
    "is_inference retains_grad is_available device_count is_initialized".split()
)
# A jit kernel's or autotuner's runtime state (compile caches, tuned configs, hooks, compiled
# binaries): it differs between the judge's runs and production, and grows from call to call.
KERNEL_STATE_ATTRS = frozenset(
    "device_caches run warmup preload add_pre_run_hook pre_run_hooks launch_metadata used_global_vals "
    "kernel cache_key create_binder get_capture_scope cache best_config configs_timings bench "
    "prune_configs do_bench nargs pre_hook post_hook".split()
)
# Calls that may take `x.device` as a positional argument (the judge answers them on CPU).
DEVICE_QUERIES = frozenset(
    f"torch.cuda.{n}" for n in ("get_device_properties", "get_device_capability", "get_device_name")
)
TEXT_BUILTINS = frozenset({"str", "repr", "format", "ascii"})  # a tensor's text names its device
FRESH_CONSTRUCTORS = frozenset({"dict", "list", "set"})  # calls that build a new container
# Methods that change a list, dict or set in place (allowed only on a container the function built).
MUTATING_METHODS = frozenset(
    "append extend insert remove pop popitem clear update setdefault add discard sort reverse "
    "difference_update intersection_update symmetric_difference_update".split()
)
CACHE_DECORATORS = frozenset({"functools.lru_cache", "functools.cache"})
CACHE_STAT_ATTRS = frozenset({"cache_info", "cache_parameters", "cache_clear"})
PLAIN_ANNOTATIONS = frozenset({"int", "bool", "float", "str"})  # what a cached function may take
# What a cached (pure config) function may call: plain builtins, math.*, these library paths,
# dict/list reads, and other cached functions.
CACHED_BODY_BUILTINS = frozenset(
    "int float bool str len abs round min max range divmod pow sorted list dict set tuple frozenset "
    "sum any all isinstance".split()  # no zip/enumerate/reversed: a cached iterator counts calls
)
CACHED_BODY_CALLS = DEVICE_QUERIES | {
    "triton.cdiv",
    "triton.next_power_of_2",
    "triton.Config",
    "torch.cuda.current_device",
}
CACHED_BODY_METHODS = frozenset("get items keys values index count copy".split())
# What an argument of a cached function may read (evaluators/cache_rules.py): attributes and
# methods whose value is never a tensor (shapes, strides, dtypes, device properties).
PLAIN_ATTRS = frozenset(
    "shape ndim dtype itemsize multi_processor_count major minor name total_memory L2_cache_size "
    "shared_memory_per_block shared_memory_per_block_optin shared_memory_per_multiprocessor "
    "regs_per_multiprocessor warp_size max_threads_per_multi_processor".split()
)
PLAIN_METHODS = frozenset("stride size numel dim storage_offset element_size is_contiguous".split())

EVOLVE_START, EVOLVE_END = "# EVOLVE-BLOCK-START", "# EVOLVE-BLOCK-END"


def is_matrix(name: str) -> bool:
    """A library matrix product's name; in-place variants (`addmm_`) count as the same product."""
    return name in MATRIX_NAMES or name.rstrip("_") in MATRIX_NAMES
