"""The backward products an export must judge before autograd may run the kernel on them.

For C = A·B of shape (M, N, K) (C is M x N, the inner dimension K), autograd computes

    dA = dC·Bᵀ: (M, K, N)        dB = Aᵀ·dC: (K, N, M)

so the inner dimension of dB is the token count M (for a forward (16384, 14336, 4096): dA is
(16384, 4096, 14336), dB is (4096, 14336, 16384)), and the operands' layouts flip: a forward on layout
xy (x for A, y for B; n row-major, t column-major) takes dA on n + flip(y) and dB on flip(x) + n (dC
is a fresh row-major tensor). `backward_task(task)` is the task of those products; `backward_facts`
turns the judge's verdict on it into the runtime's judged["backward"]: the facts the backward products
are held to, or {"reason": ...} when they fall back (not ok; slower than torch.matmul; or never timed
where the forward was measured and modelled figures were not allowed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from evaluators.task import Task

from .facts import judged_facts

FLIP = {"n": "t", "t": "n"}
Shape = tuple[int, int, int]
Judge = Callable[[str, Task], dict]  # (source, task) -> Evaluation dict


def backward_shapes(shapes: list[Shape] | tuple[Shape, ...]) -> list[Shape]:
    """dA (M, K, N) and dB (K, N, M) of each (M, N, K), in order, each once."""
    out: list[Shape] = []
    for m, n, k in shapes:
        for shape in ((m, k, n), (k, n, m)):
            if shape not in out:
                out.append(shape)
    return out


def backward_layouts(layouts: list[str] | tuple[str, ...]) -> list[str]:
    """The layouts of dA and dB for forward layouts `layouts` ('nn', 'nt', 'tn'), sorted, each once."""
    out = set()
    for x, y in layouts:
        out.add("n" + FLIP[y])  # dA = dC·Bᵀ
        out.add(FLIP[x] + "n")  # dB = Aᵀ·dC
    return sorted(out)


def backward_task(task: Task) -> Task:
    """`task` on the backward products of its training shapes: those as training shapes, no held-out
    ones, the backward layouts; check shapes, trials and inputs as the task's."""
    return dataclasses.replace(
        task,
        name=f"{task.name}:backward",
        layouts=tuple(backward_layouts(task.layouts)),
        train=tuple(backward_shapes(task.train)),
        held_out=(),
    )


def backward_facts(verdict: dict, task: Task, forward_measured: bool, allow_modelled: bool) -> dict:
    """judged["backward"] from the judge's `verdict` (an Evaluation dict) on `task` (backward_task's):
    the facts the runtime holds backward products to (kernels/runtime/dispatch.py BACKWARD_KEYS, plus
    the shapes and figure), or {"reason": ...} for a verdict that is not ok, a measured one slower than
    torch.matmul, or a modelled one for a measured export without allow_modelled."""
    shapes = ", ".join("x".join(map(str, s)) for s in task.train)
    if verdict.get("status") != "ok":
        feedback = " ".join(str(verdict.get("feedback") or "").split())[:300]
        return {"reason": f"judged {verdict.get('status')} on the backward products ({shapes}): {feedback}"}
    if verdict.get("fitness_kind") == "measured":
        # a measured ok verdict's fitness is the geomean speedup over torch.matmul on its training rows
        speedup = float(verdict.get("fitness") or 0.0)
        if speedup < 1.0:
            return {"reason": f"slower than torch.matmul on the backward products ({speedup:.3g}x; {shapes})"}
    elif forward_measured and not allow_modelled:
        return {
            "reason": f"judged correct on the backward products ({shapes}) on {verdict.get('backend')}, never "
            "timed (no GPU where it was exported): export on a GPU machine, or pass --allow-modelled"
        }
    row = {"backend": verdict["backend"], "fitness_kind": verdict["fitness_kind"], "metrics": verdict}
    facts = judged_facts(row, task)
    facts.pop("cpu_device", None)  # the forward's facts carry it; one device for both
    facts["fitness"] = verdict.get("fitness")
    facts["shapes"] = [list(s) for s in task.train]
    return facts


def judge_backward(
    source: str, task: Task, judge: Judge, forward_measured: bool, allow_modelled: bool
) -> dict:
    """Judge `source` on the backward products of `task`'s training shapes; judged["backward"]."""
    bwd = backward_task(task)
    return backward_facts(judge(source, bwd), bwd, forward_measured, allow_modelled)
