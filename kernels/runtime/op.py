"""The custom op "<namespace>::matmul": the kernel as an op torch knows (fake impl, autograd).

`define_op(namespace, impl)` registers `torch.library.custom_op(f"{namespace}::matmul")` for 2-D
inputs, whose real implementation calls `impl(a, b, backward)` (the dispatcher: Triton kernel or
fallback), a fake (meta) implementation for torch.compile and meta tensors, and autograd through the
same op:

    C = A·B   ->   dA = dC·Bᵀ,   dB = Aᵀ·dC

The backward products are calls of the op on transposed views (no copies) with backward=True: the
dispatcher runs the kernel there only where it was judged on the backward products (their shapes:
dB's inner dimension is the token count) and falls back otherwise. Only APIs torch 2.11 already has
(custom_op with a defaulted bool, register_fake, register_autograd).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable

import torch

# The current implementation of every namespace's op, in one process-wide place: importing (or
# reloading) an exported module a second time finds its op already registered (torch cannot drop it)
# and points it at the new module's dispatcher instead of failing.
_REGISTRY_MODULE = "_triton_evolve_op_registry"


def _registry() -> dict:
    module = sys.modules.get(_REGISTRY_MODULE)
    if module is None:
        module = types.ModuleType(_REGISTRY_MODULE, "Implementations of triton-evolve custom ops")
        module.impls = {}
        sys.modules[_REGISTRY_MODULE] = module
    return module.impls


def op_registered(namespace: str) -> bool:
    """Whether `namespace`::matmul exists in this process."""
    return hasattr(getattr(torch.ops, namespace), "matmul")


def define_op(namespace: str, impl: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]):
    """Register (once per process) and return the op `torch.ops.<namespace>.matmul.default`: a 2-D
    matmul whose real work is `impl(a, b, backward)` (backward: the call is a backward product of
    autograd); a later call with the same namespace only swaps `impl`."""
    if not namespace.isidentifier():
        raise ValueError(f"op namespace {namespace!r} must be a Python identifier (letters, digits, _)")
    impls = _registry()
    first = namespace not in impls and not op_registered(namespace)
    impls[namespace] = impl
    if first:
        _register(namespace)
    return getattr(torch.ops, namespace).matmul.default


def _register(namespace: str) -> None:
    name = f"{namespace}::matmul"
    impls = _registry()

    @torch.library.custom_op(name, mutates_args=())
    def matmul_op(a: torch.Tensor, b: torch.Tensor, backward: bool = False) -> torch.Tensor:
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
            raise ValueError(f"{name} takes a (M, K) and b (K, N); got {tuple(a.shape)} and {tuple(b.shape)}")
        return impls[namespace](a, b, backward)  # a fresh tensor: the kernel's output or torch.matmul's

    @matmul_op.register_fake
    def _(a: torch.Tensor, b: torch.Tensor, backward: bool = False) -> torch.Tensor:
        if a.dim() != 2 or b.dim() != 2:
            raise ValueError(f"{name} takes 2-D a and b; got {a.dim()}-D and {b.dim()}-D")
        return a.new_empty((a.shape[0], b.shape[1]))

    def setup_context(ctx, inputs, output) -> None:
        a, b, _ = inputs
        # dA needs B and dB needs A: keep only what a needed gradient uses.
        ctx.save_for_backward(b if ctx.needs_input_grad[0] else None, a if ctx.needs_input_grad[1] else None)

    def backward(ctx, grad: torch.Tensor):
        b, a = ctx.saved_tensors
        op = getattr(torch.ops, namespace).matmul.default
        grad_a = op(grad, b.t(), True) if ctx.needs_input_grad[0] else None  # dA = dC·Bᵀ
        grad_b = op(a.t(), grad, True) if ctx.needs_input_grad[1] else None  # dB = Aᵀ·dC
        return grad_a, grad_b, None

    matmul_op.register_autograd(backward, setup_context=setup_context)
