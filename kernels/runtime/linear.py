"""`Linear`: torch.nn.Linear through the exported kernel; `patch(model)` swaps a model's layers.

nn.Linear computes x @ Wᵀ with W of shape (out, in): here b = Wᵀ is a transposed view of W (strides
(1, in), the "nt" layout), so the kernel runs the forward only if it was judged on nt, and the
backward products dA = dC·W (nn) and dW (= (Xᵀ·dC)ᵀ, tn) only as far as the verdict on the backward
products allows; `explain(x, layer.weight.t(), backward=True)` says which run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .dispatch import matmul


class Linear(torch.nn.Linear):
    """torch.nn.Linear (same parameters, state_dict, init) whose product runs `matmul`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out = matmul(input, self.weight.t())
        return out if self.bias is None else out + self.bias


def patch(model: torch.nn.Module, filter: Callable[[str, torch.nn.Module], bool] | None = None) -> int:
    """Make every plain torch.nn.Linear of `model` (itself included) a `Linear`, in place, and return
    how many. The modules keep their parameters, buffers, hooks and device (only their class
    changes), so an optimizer built before still holds the same parameters. Subclasses of nn.Linear
    are left alone (their forward may differ). `filter(name, module)` -> False skips a layer."""
    count = 0
    for name, module in model.named_modules():
        if type(module) is torch.nn.Linear and (filter is None or filter(name, module)):
            module.__class__ = Linear
            count += 1
    return count


def unpatch(model: torch.nn.Module) -> int:
    """Undo `patch`: every `Linear` of `model` becomes a torch.nn.Linear again; returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is Linear:
            module.__class__ = torch.nn.Linear
            count += 1
    return count
