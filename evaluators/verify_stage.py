"""The expensive stage on CPU: what the judge ranks, it has run (evaluation.STAGES, "verified").

The cheap stage checks the small `check` shapes under the interpreter and only compiles the
training shapes. The expensive stage runs the training and held-out shapes themselves, within a
budget (a whole grid at full size is out of reach: ~15 ms per 128x128 program even with one
K-step, ~0.4 s at K = 4096), after the fresh shapes drawn for this evaluation:

1. *Cover shapes* (evaluators/coverage.py): the paths training shapes take that no check shape took.
2. *Whole grids at a reduced K*: for each training and held-out shape and layout, the same M and N
   at the smallest K with the same launches, grids included (found on `meta` tensors by the compile
   child, coverage.reduced_k); every program runs and the whole output is compared, so tile
   ownership, coverage, races and a rarely skipped program show. Smallest grids first, within
   EvalOptions.verify_programs programs and a memory bound on the parent's reference.
3. *Sampled programs at full size* (evaluators/program_sample.py): each training and held-out shape
   at full K, one layout each (in turn), the first, last and a random program of each launch, and
   the programs the whole grid at a reduced K saw store C's last row and column (when it ran); the
   elements they wrote are compared with a float64 reference computed on those rows and columns
   only; the launches must equal those captured on `meta`. Within EvalOptions.verify_sample_s.

Each shape says what it got (provenance "verification"); what a budget left out is listed, never
silently passed. `VerifyStage` is one part of the evaluation run (evaluators/evaluate.py `_Run`).
"""

from __future__ import annotations

import re
import secrets
import time

import torch

from .correctness import compare, input_generator, layout_views, make_inputs, reference
from .evaluation import ShapeResult
from .verdict import Stop

# The parent holds ~6 float64 M x N arrays per reduced-K reference (exact, scale, torch's output,
# differences): 48 bytes per output element; a grid whose output needs more is left out.
REFERENCE_BYTES_PER_ELEMENT = 48
MAX_REFERENCE_BYTES = 2 << 30
# The whole grids' time limit grows by this per program run (~10x the ~15-25 ms measured per 128x128
# program at one K-step on a busy core): the judge chose that work, so a slow machine is no timeout.
SECONDS_PER_PROGRAM = 0.25


def sampled_bytes(shape: tuple[int, int, int], dtype: str) -> int:
    """Bytes a full-size sampled call holds in the child: A and B with their before-call copies (the
    input-write check), the float32 values they are drawn from, and C."""
    M, N, K = shape
    size = 4 if dtype == "fp32" else 2
    return (M * K + K * N) * (2 * size + 4) + M * N * size


def programs_of(entry: dict) -> int:
    """Programs of every launch of one captured entry point call."""
    total = 0
    for call in entry.get("calls", []):
        n = 1
        for g in call.get("grid") or [1]:
            n *= max(0, int(g))
        total += n
    return total


class VerifyStage:
    def verify(self, boxes: list, deadline: float) -> None:
        """The expensive stage (module doc); raises Stop for the first failure."""
        start = time.perf_counter()
        self.verification: list[dict] = []
        self.provenance["verification"] = self.verification
        self.verify_covers(boxes, deadline)
        self.verify_whole_grids(boxes, deadline)
        self.verify_sampled(boxes[0], deadline)
        checked = [e for e in self.launches if e.get("kind") in ("cover", "reduced", "train", "held_out")]
        self.compare_launches(checked)  # what ran at these shapes is what was captured and compiled
        self.seconds["verify"] = time.perf_counter() - start

    def verify_covers(self, boxes: list, deadline: float) -> None:
        covers = [e for e in self.launches if e.get("kind") == "cover"]
        left_out = (self.compile_header or {}).get("uncovered") or []
        self.provenance["cover_shapes"] = [
            {"shape": e["shape"], "layout": e["layout"], "covers": e.get("covers")} for e in covers
        ]
        if left_out:
            self.provenance["uncovered_paths"] = left_out
        if not covers:
            return
        start = time.perf_counter()
        names = {
            (tuple(e["shape"]), e["layout"]): (
                f"a cover shape: training shape {tuple(e['covers'])} takes this path, which no check shape "
                f"took; shape {tuple(e['shape'])} layout {e['layout']}"
            )
            for e in covers
        }
        self.check(boxes, self.fresh_deadline(deadline), None, list(names), "cover", names)
        self.seconds["cover_shapes"] = time.perf_counter() - start

    def verify_whole_grids(self, boxes: list, deadline: float) -> None:
        start = time.perf_counter()
        entries = sorted(
            (e for e in self.launches if e.get("kind") == "reduced"),
            key=lambda e: (programs_of(e), e["shape"], e["layout"]),
        )
        budget = self.options.verify_programs
        names, groups = {}, []
        for e in entries:
            shape, full, programs = tuple(e["shape"]), tuple(e["reduces"]), programs_of(e)
            row = {"shape": list(full), "layout": e["layout"], "kind": e.get("of", "train"),
                   "whole_grid": {"K": shape[2], "programs": programs}}  # fmt: skip
            memory = shape[0] * shape[1] * REFERENCE_BYTES_PER_ELEMENT
            if programs > budget:
                row["whole_grid"]["left_out"] = (
                    f"{programs} programs, over the {budget} left of EvalOptions.verify_programs"
                )
            elif memory > MAX_REFERENCE_BYTES:
                row["whole_grid"]["left_out"] = (
                    f"its float64 reference needs {memory / 2**30:.1f} GiB, over the judge's "
                    f"{MAX_REFERENCE_BYTES / 2**30:.0f} GiB per check"
                )
            else:
                budget -= programs
                groups.append((shape, e["layout"]))
                names[(shape, e["layout"])] = (
                    f"training shape {full} run whole ({programs} programs, every one) at K = {shape[2]} "
                    f"(the same launches as K = {full[2]}), layout {e['layout']}"
                )
            self.verification.append(row)
        if groups:  # the checks' own limit, plus an allowance per program this stage chose to run
            spent = self.options.verify_programs - budget
            limit = max(deadline, time.monotonic() + self.options.timeout_s + spent * SECONDS_PER_PROGRAM)
            # One trial each, on N(0,1) inputs: a whole grid checks who writes what, and a kind whose
            # products underflow the dtype (fp16 "small") would pass a tile nobody wrote.
            self.check(boxes, limit, None, groups, "reduced", names, inputs=("normal",))
        self.seconds["whole_grids"] = time.perf_counter() - start

    def verify_sampled(self, box, deadline: float) -> None:
        """Sampled programs at full size, one layout per shape in turn, within verify_sample_s."""
        start = time.perf_counter()
        entries = [e for e in self.launches if e.get("kind") in ("train", "held_out")]
        shapes = list(dict.fromkeys(tuple(e["shape"]) for e in entries))
        layouts = self.task.layouts
        by_key = {(tuple(e["shape"]), e["layout"]): e for e in entries}
        for n, shape in enumerate(shapes):
            layout = layouts[n % len(layouts)]
            entry = by_key.get((shape, layout))
            if entry is None:
                continue
            row = self.sampled_row(entry)
            if time.perf_counter() - start > self.options.verify_sample_s:
                row["sampled"] = {
                    "left_out": f"over the {self.options.verify_sample_s:g} s of verify_sample_s"
                }
                continue
            if shape[0] * shape[1] == 0 or not entry["calls"]:
                continue
            need, room = sampled_bytes(shape, self.task.dtype), self.sample_room()
            if need > room:
                row["sampled"] = {
                    "left_out": f"its full-size inputs and output need ~{need / 2**30:.1f} GiB, over the "
                    f"{room / 2**30:.1f} GiB a check child may use (EvalOptions.memory_bytes / 2)"
                }
                continue
            row["sampled"] = self.run_sampled(box, entry, deadline)
        self.seconds["sampled"] = time.perf_counter() - start

    def sample_room(self) -> int:
        """Bytes a full-size sampled call may take in the child: half its address-space limit (the
        rest is torch, triton and the interpreter); the parent draws the same inputs."""
        limit = self.options.memory_bytes
        return (limit // 2) if limit else 1 << 62

    def sampled_row(self, entry: dict) -> dict:
        key = (list(entry["shape"]), entry["layout"])
        for row in self.verification:
            if (row["shape"], row["layout"]) == key:
                return row
        row = {"shape": key[0], "layout": key[1], "kind": entry.get("kind", "train")}
        self.verification.append(row)
        return row

    def run_sampled(self, box, entry: dict, deadline: float) -> dict:
        """One full-size call with sampled programs; the written elements compared (module doc)."""
        shape, layout = tuple(entry["shape"]), entry["layout"]
        M, N, K = shape
        where = f"training shape {shape} layout {layout} at full size (sampled programs)"
        if entry.get("kind") == "held_out":
            where = where.replace("training", "held-out")
        seed = secrets.randbits(63)
        # Besides the first, last and a random program: those the whole grid at a reduced K saw store
        # C's last row and column (the same launch, so the same owners), when it ran for this layout.
        owners = self.edge_owners.get((M, N, layout), [])
        request = {"cmd": "run", "shape": list(shape), "layout": layout, "seed": seed, "inputs": "normal",
                   "sample": {"seed": secrets.randbits(63), "random": 1, "programs": owners},
                   "count_work": True}  # fmt: skip
        chosen = self.choices.get((shape, layout, entry.get("kind", "train")))
        if chosen:
            request["autotune"] = [c.index for c in chosen]
        self.waiting = f"the interpreter's sampled run of {where}"
        box.send(request)
        header, tensors = box.read(self.fresh_deadline(deadline))
        self.judge_facts(header, shape, where)
        if isinstance(header.get("work"), list):  # what the sampled programs executed (the model prices it)
            self.executed[(M, N, layout, "sampled")] = header["work"]
        a, b = layout_views(shape, layout, torch.float16)  # packed strides, as on meta
        self.run_signatures[(shape, layout, (a.stride(), b.stride(), 0, 0))] = header.get("launch_signatures")
        launches = header.get("sampled_launches") or []
        ran = ", ".join(f"{len(x['ran'])} of {x['programs']}" for x in launches)
        result = {"programs": ran, "written": int(header.get("written", 0))}
        if header.get("combines"):
            result["not_compared"] = header["combines"] + "; the whole grid at a reduced K compares it"
            return result
        rows, cols = header.get("rows") or [], header.get("cols") or []
        block, written = tensors.get("block"), tensors.get("written")
        if not rows:
            result["not_compared"] = "the sampled programs wrote no element of C (idle programs)"
            return result
        if block is None or written is None or list(block.shape) != [len(rows), len(cols)]:
            raise Stop("incorrect", f"{where}: the sampled output did not arrive intact")
        if any(not 0 <= r < M for r in rows) or any(not 0 <= c < N for c in cols):
            raise Stop("crashed", f"{where}: the child named elements outside C")
        full_a, full_b = make_inputs(shape, layout, self.task.dtype, input_generator(seed, "cpu"), "normal")
        ref = reference(full_a[torch.tensor(rows)], full_b[:, torch.tensor(cols)])
        del full_a, full_b
        mine = written.bool()
        # Elements of the block other programs own were not run: they take the reference's value.
        block = torch.where(mine, block.double(), ref.exact).to(block.dtype)
        verdict = compare(block, ref, self.task.dtype, K, self.task.allow_tf32)
        self.shapes.append(
            ShapeResult(
                shape=shape,
                layout=layout,
                kind="sampled",
                max_abs_err=verdict.max_abs_err,
                max_scaled_err=verdict.max_scaled_err,
                tolerance=verdict.tolerance,
            )  # fmt: skip
        )
        if not verdict.ok:
            raise Stop("incorrect", f"{where}: {_real_indices(verdict.message, rows, cols)}")
        result["compared"] = int(mine.sum())
        return result

    def fresh_deadline(self, deadline: float) -> float:
        """Each part of the expensive stage gets the checks' own limit (timeout_s) from now."""
        return max(deadline, time.monotonic() + self.options.timeout_s)


def _real_indices(message: str, rows: list[int], cols: list[int]) -> str:
    """compare()'s 'C[i,j]' in the block's coordinates, named in C's."""

    def real(match: re.Match) -> str:
        i, j = int(match.group(1)), int(match.group(2))
        return f"C[{rows[i]},{cols[j]}]" if i < len(rows) and j < len(cols) else match.group(0)

    return re.sub(r"C\[(\d+),(\d+)\]", real, message)
