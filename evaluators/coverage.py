"""Every path a training shape takes is checked on CPU: cover shapes (child side, compile capture).

The interpreter runs the `check` shapes; the training and held-out shapes are only compiled and
modelled. An entry point that dispatches on the shape (a config table keyed by M*N, a split-K
factor chosen from K, half of M passed to the kernel once M*N is large) launches, at the training
shapes, kernels no check shape ever launched, and nothing ran them. Here each training and
held-out launch gets an *identity*: per launched kernel its name, constexprs, warps and stages,
and for each integer argument how it relates to the shape (M, N, K, the inputs' strides, each up
to a power-of-two ratio, else its value). Two launches take the same path when their kernels,
constexprs and options are equal and each integer argument has a relation in common (`M // 2` at
one shape and at another; a constant only with itself). A training launch that no check launch matches gets a *cover shape*: the
training shape halved, dimension by dimension, for as long as the launch keeps its identity, so
the interpreter can run the very path at a size it can afford. The checks then run it like any
check shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

# A cover shape keeps at least a 64-wide tile's worth in each dimension (or the training shape's own,
# if smaller), so the path's tiles are exercised past their masks, not only at their edges.
MIN_K = 64
MIN_MN = 64
MAX_PROBES = 96  # captures per search (each a call of the entry point on meta tensors, ~1 ms)
MAX_PROGRAMS = 512  # a cover shape whose grid is larger is too slow for the interpreter: left out
MAX_WORK = 2**28  # M*N*K of a cover shape, likewise


@dataclasses.dataclass(frozen=True)
class KernelLaunch:
    """One launch's identity: what decides the path it takes, and the quantities each scalar equals."""

    kernel: str
    constexprs: tuple
    options: tuple
    scalars: tuple[frozenset, ...]  # per integer argument: its relations() to the shape
    programs: int
    # the kernel's own shape-keyed choices at these arguments (evaluators/ranges.py branch_outcomes:
    # `if M * N > X`, min(K, 512)); () when its TTIR was not at hand
    outcomes: tuple = ()

    def same_path(self, other: KernelLaunch) -> bool:
        if (self.kernel, self.constexprs, self.options) != (other.kernel, other.constexprs, other.options):
            return False
        if len(self.outcomes) == len(other.outcomes) and any(
            a is not None and b is not None and a != b
            for a, b in zip(self.outcomes, other.outcomes, strict=True)
        ):
            return False  # a choice both launches decide, decided differently
        if len(self.scalars) != len(other.scalars):
            return False
        return all(bool(a & b) for a, b in zip(self.scalars, other.scalars, strict=True))


def quantities(shape: tuple[int, int, int], layout: str) -> dict[str, int]:
    """The shape quantities an argument may equal: M, N, K and the packed inputs' strides."""
    M, N, K = shape
    a_strides = (1, M) if layout == "tn" else (K, 1)
    b_strides = (1, K) if layout == "nt" else (N, 1)
    return {"M": M, "N": N, "K": K, "a.stride(0)": a_strides[0], "a.stride(1)": a_strides[1],
            "b.stride(0)": b_strides[0], "b.stride(1)": b_strides[1]}  # fmt: skip


RATIOS = tuple(2.0**e for e in range(-6, 7))  # M // 2, 4 * K, ...: the scalings entry points use


def relations(value: int, known: dict[str, int]) -> frozenset:
    """How an integer argument relates to the shape: {(quantity, ratio)} for each quantity it equals
    up to a power-of-two ratio (M, M // 2 when M is even, ...), else {("value", v)}: a constant, which
    must then be equal for two launches to take the same path."""
    found = frozenset((q, r) for q, v in known.items() for r in RATIOS if v and value == v * r)
    return found or frozenset({("value", value)})


def identity(shape: tuple, layout: str, calls: list[dict]) -> tuple[KernelLaunch, ...] | None:
    """The identity of one entry-point call from its captured launches (each: kernel, constexprs
    dict, options (num_warps, num_stages), args list, grid); None for an autotuned launch (its
    config is chosen per shape by the model, and every config is compiled)."""
    known = quantities(tuple(shape), layout)
    out = []
    for call in calls:
        if call.get("autotuned"):
            return None
        scalars = tuple(
            relations(value, known)
            for value in call["args"]
            if isinstance(value, int) and not isinstance(value, bool)
        )
        programs = 1
        for g in call["grid"]:
            programs *= max(0, int(g))
        out.append(
            KernelLaunch(
                call["kernel"],
                tuple(sorted((str(k), repr(v)) for k, v in call["constexprs"].items())),
                tuple(call["options"]),
                scalars,
                programs,
                tuple(call.get("outcomes") or ()),
            )
        )
    return tuple(out)


def same_path(a: tuple[KernelLaunch, ...], b: tuple[KernelLaunch, ...]) -> bool:
    return len(a) == len(b) and all(x.same_path(y) for x, y in zip(a, b, strict=True))


def search(
    shape: tuple[int, int, int], layout: str, want: tuple[KernelLaunch, ...], probe: Callable
) -> tuple[tuple[int, int, int], str] | None:
    """The smallest shape found by halving `shape` (K first, down to MIN_K; then M and N, down to
    MIN_MN) whose launches keep the identity `want`; `probe(shape, layout)` -> the identity there (or
    None when the entry point raises). Returns (shape, "") or (shape, reason) when the smallest is
    still too large for the interpreter (then the caller leaves it out and says why), or None when
    `probe` budget ran out before anything was found."""
    current = tuple(shape)
    probes = 0
    floors = (min(shape[0], MIN_MN), min(shape[1], MIN_MN), min(shape[2], MIN_K))
    for dim in (2, 0, 1):
        floor = floors[dim]
        while current[dim] > floor and probes < MAX_PROBES:
            smaller = list(current)
            smaller[dim] = max(floor, current[dim] // 2)
            probes += 1
            got = probe(tuple(smaller), layout)
            if got is None or not same_path(got, want):
                break
            current = tuple(smaller)
    final = probe(current, layout) or want
    programs = sum(k.programs for k in final)
    work = current[0] * current[1] * current[2]
    if programs > MAX_PROGRAMS or work > MAX_WORK:
        return current, f"{programs} programs, M*N*K = {work}: too large for the interpreter"
    return current, ""


MIN_REDUCED_K = 16  # the whole grid runs at a K down to this (or the shape's own, if smaller)


def same_launch(a: tuple[KernelLaunch, ...], b: tuple[KernelLaunch, ...]) -> bool:
    """The same path (same_path) with the same number of programs in each launch: the grid whose
    every program the expensive stage runs at a reduced K (evaluators/verify_stage.py)."""
    return same_path(a, b) and all(x.programs == y.programs for x, y in zip(a, b, strict=True))


def reduced_k(
    shape: tuple[int, int, int], layout: str, want: tuple[KernelLaunch, ...], probe: Callable
) -> int:
    """The smallest K found by halving `shape`'s K (down to MIN_REDUCED_K) whose launches keep the
    identity `want` and every grid (same_launch); K itself when no smaller one does. A K that is a
    multiple of 16 is only halved to multiples of 16 (the compiler specialises on divisibility by 16,
    so the reduced launch compiles to the same code)."""
    M, N, K = shape
    best = K
    for _ in range(MAX_PROBES):
        smaller = max(MIN_REDUCED_K, best // 2)
        if smaller >= best or (K % 16 == 0 and smaller % 16):
            break
        got = probe((M, N, smaller), layout)
        if got is None or not same_launch(got, want):
            break
        best = smaller
    return best


def uncovered(entries: list[dict]) -> list[dict]:
    """Training and held-out entries whose identity no check entry (nor an earlier uncovered
    entry, which will get its own cover shape) has: each {"shape", "layout", "identity"}."""
    checked = [
        e["identity"] for e in entries if e["kind"] in ("check", "cover") and e["identity"] is not None
    ]
    out: list[dict] = []
    for e in entries:
        if e["kind"] not in ("train", "held_out") or e["identity"] is None:
            continue
        if any(same_path(e["identity"], c) for c in checked + [u["identity"] for u in out]):
            continue
        out.append(e)
    return out
