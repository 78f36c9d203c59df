"""Memory outside the tensors a launch was given (child side, under Triton's interpreter).

A kernel without masks at the ragged edges reads (or writes) past the end of its tensors. On a GPU
that memory is whatever the allocator put there, or nothing at all (an illegal address); under the
interpreter it is whatever the host process has there, so the verdict of the values check, the race
check or the child's survival would depend on where the allocator happened to place A, B and C.
This check makes it a verdict of its own, before the access happens: every lane of a plain load,
store or atomic that its mask leaves on must lie inside the memory (the whole storage, padding of a
view included) of ONE tensor the launch was given (evaluators/compat.py `interpreter_accesses`
names the methods). One access of a Triton kernel has one base pointer, so lanes that leave the
storage most of them are in, for memory outside every tensor or for a neighbouring tensor's memory
(A's rows past the end running into C), are out of bounds. The access raises `OutOfBounds` and the
finding is kept, so a candidate that catches the exception is reported all the same.

Cost: a min and a max of each access's pointers, compared with the launch's few storages; the lanes
are looked at one by one only when that range leaves one storage (the edge tiles).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import compat
from .race_check import TensorFacts, access_addresses, launch_tensors

# What the check covers, for the verdict's provenance ("bounds_check").
DESCRIPTION = (
    "every load, store and atomic under the interpreter: each lane the mask leaves on lies in the "
    "storage of one tensor the launch was given"
)
ADVICE = (
    "On a GPU that memory holds anything, or is not mapped (an illegal memory access). Mask the loads "
    "and stores at the ragged edges (mask=(offs_m[:, None] < M) & (offs_k[None, :] < K - k), other=0.0), "
    "or use block pointers with boundary_check, or tensor descriptors, which pad with zeros"
)


class OutOfBounds(Exception):
    """Raised in place of an access that leaves the launch's tensors (the access does not happen)."""


@dataclasses.dataclass(frozen=True)
class Finding:
    """One access that left the launch's tensors."""

    kernel: str
    kind: str  # "load", "store", "atomic"
    program: tuple[int, ...]
    outside: int  # lanes outside
    lanes: int  # lanes the mask left on
    where: str  # where the first lane outside lies, in words

    def text(self) -> str:
        program = "(" + ", ".join(str(i) for i in self.program) + ")"
        verb = {"load": "loaded", "store": "stored", "atomic": "made an atomic on"}[self.kind]
        return (
            f"kernel {self.kernel}: program {program} {verb} {self.outside} of {self.lanes} elements "
            f"outside the tensors it was given: the first {self.where}"
        )


class BoundsCheck:
    """Install once per interpreter child, after the race check (so an access out of bounds is named
    as such, not as the race it may also make); `begin` names each launch's tensors."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.kernel = "?"
        self.arguments: tuple[TensorFacts, ...] = ()
        self.storages: list[tuple[int, int, TensorFacts]] = []
        self.known = False  # the launch's tensors were named (a launch nobody named is not judged)

    def install(self) -> None:
        builder, plain, atomics, _ = compat.interpreter_accesses()
        for name, (kind, ptr_index, mask_index, _) in plain.items():
            if hasattr(builder, name):
                setattr(builder, name, self._wrap(getattr(builder, name), kind, ptr_index, mask_index))
        for name, (ptr_index, mask_index, _) in atomics.items():
            if hasattr(builder, name):
                setattr(builder, name, self._wrap(getattr(builder, name), "atomic", ptr_index, mask_index))

    def begin(self, kernel: str, arg_names, args: tuple, kwargs: dict) -> None:
        """Name the launch about to run (the child's launcher calls this): its kernel, its tensors."""
        self.kernel = kernel
        self.arguments = launch_tensors(arg_names, args, kwargs)
        # One entry per storage (views of one storage share it), in address order.
        unique = {facts.storage: facts for facts in reversed(self.arguments)}
        self.storages = sorted((first, last, facts) for (first, last), facts in unique.items())
        self.known = True

    def messages(self) -> list[str]:
        """Each access found out of bounds since the last `clear`, in words, advice appended."""
        return [f"{finding.text()}. {ADVICE}" for finding in self.findings]

    def clear(self) -> None:
        self.findings.clear()

    # -- the check
    def _wrap(self, original, kind: str, ptr_index: int, mask_index: int | None):
        check = self

        def access(builder_self, *args, **kwargs):
            if check.known and len(args) > ptr_index:
                mask = args[mask_index] if mask_index is not None and len(args) > mask_index else None
                finding = check._inspect(kind, builder_self, args[ptr_index], mask)
                if finding is not None:
                    check.findings.append(finding)
                    raise OutOfBounds(finding.text())
            return original(builder_self, *args, **kwargs)

        return access

    def _inspect(self, kind: str, builder, handle, mask) -> Finding | None:
        data = np.asarray(getattr(handle, "data", handle))
        if data.size == 0 or data.dtype.kind not in "iu":
            return None
        size = _element_size(handle)
        low, high = int(data.min()), int(data.max()) + size
        if any(first <= low and high <= last for first, last, _ in self.storages):
            return None  # every lane, masked or not, inside one storage: the common case
        addresses, _ = access_addresses(data, mask)
        if addresses.size == 0:
            return None
        homes = np.full(addresses.shape, -1, dtype=np.int64)
        for i, (first, last, _) in enumerate(self.storages):
            inside = (addresses >= np.uint64(first)) & (addresses + np.uint64(size) <= np.uint64(last))
            homes[inside] = i
        counts = np.bincount(homes[homes >= 0], minlength=len(self.storages))
        home = int(np.argmax(counts)) if counts.size and counts.max() > 0 else -1
        outside = homes != home if home >= 0 else np.ones(addresses.shape, dtype=bool)
        if not outside.any():
            return None
        address = int(addresses[int(np.argmax(outside))])
        return Finding(
            self.kernel,
            kind,
            tuple(int(i) for i in builder.grid_idx),
            int(outside.sum()),
            int(addresses.size),
            self._describe(address, home),
        )

    def _describe(self, address: int, home: int) -> str:
        """Where `address` lies: after the end of (or before) the tensor the access's other lanes are in,
        or the nearest tensor when none is."""
        if home >= 0:
            text = _side(address, self.storages[home])
        else:
            nearest = min(self.storages, key=lambda s: min(abs(address - s[0]), abs(address - s[1])))
            text = _side(address, nearest) + " (the nearest tensor)"
        for first, last, facts in self.storages:
            if first <= address < last:
                return f"{text}, inside the memory of {_name(facts)}"
        return text


def _side(address: int, storage: tuple[int, int, TensorFacts]) -> str:
    first, last, facts = storage
    if address >= last:
        gap = address - last
        return f"lies {f'{gap} bytes after' if gap else 'right after'} the end of {_name(facts)}"
    return f"lies {first - address} bytes before the start of {_name(facts)}"


def _name(facts: TensorFacts) -> str:
    return f"{facts.name} ({'x'.join(str(s) for s in facts.shape)} {facts.dtype})"


def _element_size(handle) -> int:
    """Bytes per element of a pointer tensor's pointee (1 when the interpreter's handle does not say)."""
    try:
        return max(1, int(handle.get_element_ty().primitive_bitwidth) // 8)
    except Exception:  # noqa: BLE001 - a handle without a pointee type: first bytes only
        return 1
