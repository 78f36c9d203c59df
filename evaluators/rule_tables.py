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

EVOLVE_START, EVOLVE_END = "# EVOLVE-BLOCK-START", "# EVOLVE-BLOCK-END"


def is_matrix(name: str) -> bool:
    """A library matrix product's name; in-place variants (`addmm_`) count as the same product."""
    return name in MATRIX_NAMES or name.rstrip("_") in MATRIX_NAMES
