"""The checks: fresh inputs each trial, the reference from the parent's own copy, every layout
(CPU: the check shapes under the interpreter; GPU: every training and held-out shape at full size).

`CheckStage` is one part of the evaluation run (evaluators/evaluate.py `_Run`). It reads the
run's task, options, budget and choices, and fills `shapes`, `run_signatures`, `seconds`;
on a timeout it says what ran out (`timeout_text`).
"""

from __future__ import annotations

import secrets
import time

import torch

from . import failures, guards, sandbox
from .compile_watch import CompileWatch
from .correctness import compare, input_generator, make_inputs, reference
from .evaluation import ShapeResult
from .verdict import Stop


class CheckStage:
    def check(
        self,
        boxes: list[sandbox.Sandbox],
        deadline: float,
        watch: CompileWatch | None = None,
        groups: list[tuple] | None = None,
        kind: str = "cover",
        names: dict | None = None,
        inputs: tuple[str, ...] | None = None,
    ) -> None:
        """Fresh inputs each trial; reference from the parent's own copy; every layout.

        Each (shape, layout) goes, with all its trials, to one of `boxes` (balanced by M*N*K);
        the boxes run side by side, one request each in flight, answers judged as they come.
        `watch`: the CPU compile child, followed meanwhile; its failure ends the checks at once.
        `groups`: (shape, layout) pairs to check once each instead, after the first round, without
        its independent calls (CPU, the expensive stage: cover shapes, whole grids at a reduced K),
        their rows of this `kind`; `names`: (shape, layout) -> how a failure names it (default
        "shape S layout L"); `inputs`: the input kinds to take in turn (default: the task's)."""
        start = time.perf_counter()
        # CPU: the check shapes under the interpreter; GPU: every training and held-out shape at full size.
        cpu = self.options.device == "cpu"
        shapes = self.task.check if cpu else (*self.task.train, *self.task.held_out)
        device = self.input_device
        trials = self.task.trials if groups is None else 1
        first_round = groups is None
        round_kind = "check" if first_round else kind
        if groups is None:
            groups = [(tuple(shape), layout) for shape in shapes for layout in self.task.layouts]
        results = {}
        for shape, layout in groups:
            # Errors stay None until a trial of the shape is judged: an unchecked shape never shows 0.
            results[(shape, layout)] = ShapeResult(
                shape=shape, layout=layout, kind="check" if first_round else kind
            )
            self.shapes.append(results[(shape, layout)])
        queues = [
            [group for group in share for _ in range(1 if group[0] in self.fresh else trials)]
            for share in split_work(groups, len(boxes))
        ]
        queues += [[] for _ in range(len(boxes) - len(queues))]  # fewer groups than boxes (cover shapes)
        # Calls are independent: first, some dozens of calls on the smallest check shape in one child,
        # every output kept there (none may share storage with an earlier one), re-checked at the end.
        calls_shape = min((tuple(s) for s in self.task.check), key=lambda s: s[0] * s[1] * s[2])
        calls = [(calls_shape, self.task.layouts[0], "keep")] * (
            MANY_CALLS + secrets.randbelow(MANY_CALLS + 1)
        )
        queues[0][:0] = calls if first_round else []
        kept: list[tuple] = []  # (reference, where) of each kept call, in order
        in_flight: dict[int, tuple] = {}  # box index -> (shape, layout, reference, deadline)
        kinds = inputs or self.task.inputs  # one kind per trial, in turn from a random start (make_inputs)
        sent = [secrets.randbelow(len(kinds))]
        self.input_kinds: dict[tuple, str] = {}  # box index -> the kind of its trial in flight
        self.input_geometry: dict[int, tuple] = {}  # box index -> its inputs' strides and offsets

        def send_next(i: int) -> None:
            if not queues[i]:
                return
            shape, layout, *keep = queues[i].pop(0)
            kind = kinds[sent[0] % len(kinds)]
            sent[0] += 1
            self.input_kinds[i] = kind
            where = f"shape {shape} layout {layout}"
            self.waiting = f"the {'interpreter ' if device == 'cpu' else ''}check of {where}"
            seed = secrets.randbits(63)
            # Drawn where they are used (the child draws the same from the same seed and device).
            a, b = make_inputs(shape, layout, self.task.dtype, input_generator(seed, device), kind)
            ref = reference(a, b)
            # Launch arguments follow strides and offsets (sliced inputs draw their padding): calls
            # are compared with calls on the same geometry.
            self.input_geometry[i] = (a.stride(), b.stride(), a.storage_offset(), b.storage_offset())
            del a, b
            request_deadline = deadline
            if (
                self.budget is not None and (shape, layout) in self.budget.check_s
            ):  # a share of the GPU budget
                request_deadline = self.deadline_for(self.budget.check_s[(shape, layout)])
            request = {"cmd": "run", "shape": list(shape), "layout": layout, "seed": seed, "inputs": kind}
            if round_kind == "reduced":  # which programs own C's last row and column (verify_stage.py)
                request["owners"] = True
                request["count_work"] = True  # and what each program executed (the model prices it)
            if keep:
                request["keep"] = True
                kept.append(
                    (ref, f"shape {shape} layout {layout}, call {len(kept) + 1} of {len(calls)}", shape[2])
                )
            chosen = self.choices.get((shape, layout, "check"))
            if chosen:
                request["autotune"] = [c.index for c in chosen]
            boxes[i].send(request)
            in_flight[i] = (shape, layout, ref, request_deadline)

        for i in range(len(boxes)):
            send_next(i)
        while in_flight:
            waiting = {j: boxes[j] for j in in_flight}
            soonest = min(d for *_, d in in_flight.values())
            if watch is not None and not watch.done:
                waiting["compile"] = watch.box
                soonest = min(soonest, watch.deadline)
            i = self.first_reply(waiting, soonest, in_flight, watch)
            if i == "compile":
                watch.read_one()
                if watch.stop is not None:
                    raise watch.stop
                if watch.done:
                    self.resolve_compile(watch.header)
                    stop = failures.spin_wait_stop(
                        self.kernels, self.used_keys(("train", "held_out", "check"))
                    )
                    if stop is not None:
                        raise stop
                continue
            shape, layout, ref, request_deadline = in_flight.pop(i)
            header, tensors = boxes[i].read(request_deadline)
            named = (names or {}).get((shape, layout)) or f"shape {shape} layout {layout}"
            where = f"{named}, {self.input_kinds[i]} inputs"
            verdict = self.judge_output(header, tensors, ref, shape, where)
            if header.get("owners"):
                self.edge_owners[(shape[0], shape[1], layout)] = [int(p) for p in header["owners"]][:16]
            if round_kind == "reduced" and isinstance(header.get("work"), list):
                self.executed[(shape[0], shape[1], layout, "reduced")] = (shape[2], header["work"])
            signatures = header.get("launch_signatures")
            # Sliced inputs have other strides, so other launch arguments: they are compared with
            # calls on the same geometry, packed ones with packed ones (and with the meta capture,
            # compare_launches).
            geometry = self.input_geometry[i]
            if self.run_signatures.setdefault((shape, layout, geometry), signatures) != signatures:
                raise Stop(
                    "rejected",
                    f"{where}: the entry point launched different kernels on "
                    "two calls with the same shape; launches must depend on shapes only",
                )
            if header.get("shares_storage_with") is not None:
                raise Stop(
                    "rejected",
                    f"{where}: the output shares storage with the output of call {header['shares_storage_with'] + 1} "
                    "of this child, which the caller still holds: calls must be independent; allocate each "
                    "output anew (a cached or reused buffer is overwritten by the next call)",
                )
            result = results.get((shape, layout))
            if result is None:  # the independent calls' shape, on a GPU (not one of the timed shapes)
                send_next(i)
                continue
            result.max_abs_err = max(result.max_abs_err or 0.0, verdict.max_abs_err)
            # Trials of other input kinds have other tolerances: keep the trial nearest its own bound.
            if result.tolerance is None or (
                verdict.max_scaled_err * result.tolerance >= result.max_scaled_err * verdict.tolerance
            ):
                result.max_scaled_err, result.tolerance = verdict.max_scaled_err, verdict.tolerance
            del ref, tensors
            if device == "cuda" and (shape, layout) not in queues[i]:
                torch.cuda.empty_cache()  # the child shares the GPU: give back what this shape took
            send_next(i)
        if kept:
            self.recheck_kept(boxes[0], kept, deadline)
        if first_round:
            self.seconds["correctness"] = time.perf_counter() - start

    def recheck_kept(self, box: sandbox.Sandbox, kept: list[tuple], deadline: float) -> None:
        """Every output the calls kept, judged again after every later call: a result the candidate
        kept, cached or reused and overwrote since is wrong now."""
        self.waiting = f"the re-check of {len(kept)} kept outputs"
        box.send({"cmd": "recheck"})
        header, tensors = box.read(deadline)
        if header.get("event") == "error":
            raise failures.from_child(header, interpreter=self.options.device == "cpu")
        for n, (ref, where, K) in enumerate(kept):
            out = tensors.get(f"out{n}")
            if out is None:
                raise Stop("incorrect", f"{where}: the kept output did not arrive for the re-check")
            verdict = compare(out.to(ref.exact.device), ref, self.task.dtype, K, self.task.allow_tf32)
            if not verdict.ok:
                raise Stop(
                    "incorrect",
                    f"{where}: right when returned, wrong after {len(kept) - n - 1} later calls "
                    f"({verdict.message}): calls must be independent (a result kept, cached or reused by a "
                    "later call is overwritten)",
                )
        self.provenance["independent_calls"] = len(kept)

    def first_reply(self, waiting: dict, deadline: float, in_flight: dict, watch: CompileWatch | None):
        """The key of the first box in `waiting` with a reply; on a timeout, say what ran out."""
        if len(waiting) == 1:
            return next(iter(waiting))  # its read waits with its own deadline
        try:
            return sandbox.first_ready(waiting, deadline)
        except sandbox.ChildTimeout:
            if watch is not None and not watch.done and watch.deadline <= deadline:
                self.timeout_text = watch.timeout_feedback()
            else:  # the check that timed out, not the last one sent: timeout_feedback() names it
                shape, layout = next((s, lay) for s, lay, _, d in in_flight.values() if d <= deadline)
                cpu = self.options.device == "cpu"
                self.waiting = f"the {'interpreter ' if cpu else ''}check of shape {shape} layout {layout}"
            raise

    def judge_output(self, header: dict, tensors: dict, ref, shape, where: str):
        self.judge_facts(header, shape, where)
        out = tensors.get("out")
        M, N, _K = shape
        if out is None or list(out.shape) != [M, N] or str(out.dtype) != f"torch.{self.expected_dtype()}":
            raise Stop("incorrect", f"{where}: the output did not arrive intact")
        verdict = compare(out.to(ref.exact.device), ref, self.task.dtype, shape[2], self.task.allow_tf32)
        if not verdict.ok:
            raise Stop("incorrect", f"{where}: {verdict.message}")
        return verdict

    def expected_dtype(self) -> str:
        return {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}[self.task.dtype]

    def judge_facts(self, header: dict, shape, where: str) -> None:
        """Everything the child says about one call but its values: errors, input writes, forbidden
        ops, launches, races, the output's type, shape, dtype and memory."""
        outside = header.get("out_of_bounds") or []
        if outside:  # before an error: the access raised (evaluators/bounds_check.py), or led to one
            raise Stop("incorrect", f"{where}: {outside[0]}")
        if header.get("event") == "error":
            raise failures.from_child(header, interpreter=self.options.device == "cpu")
        writes = header.get("input_writes") or []
        if writes:
            raise Stop(
                "rejected",
                f"{where}: {writes[0]}: the inputs are read-only, inside the kernels too (even written and "
                "restored); write into C or a workspace the entry point allocates",
            )
        forbidden = guards.describe_forbidden(
            [str(o) for o in header.get("ops", [])], [str(o) for o in header.get("launch_ops", [])]
        )
        if forbidden:
            raise Stop("rejected", f"{where}: {forbidden}")
        if int(header.get("launches", 0)) < 1:
            raise Stop(
                "rejected", f"{where}: the call launched no Triton kernel; the work must happen in Triton"
            )
        if header.get("race_check_errors"):  # the check's own failure: a judge_error, never the kernel's
            raise RuntimeError(f"{where}: {header['race_check_errors'][0]}")
        races = header.get("races") or []
        if races:
            raise Stop("rejected", f"{where}: {races[0]}. {RACE_ADVICE}")
        if header.get("output_type") != "torch.Tensor":
            raise Stop(
                "incorrect", f"{where}: returned {header.get('output_type')}, expected a plain torch.Tensor"
            )
        M, N, _K = shape
        expected_dtype = self.expected_dtype()
        if header.get("shape") != [M, N] or header.get("dtype") != expected_dtype:
            raise Stop(
                "incorrect",
                f"{where}: returned shape {header.get('shape')} {header.get('dtype')}, "
                f"expected [{M}, {N}] {expected_dtype}",
            )
        if header.get("aliases_input"):
            raise Stop("incorrect", f"{where}: the output shares memory with an input; allocate a new tensor")
        if header.get("inputs_changed"):
            raise Stop("incorrect", f"{where}: the entry point modified its inputs; they must be read-only")


# The independent calls: MANY_CALLS + 0..MANY_CALLS of them, a number the candidate cannot know.
MANY_CALLS = 12

RACE_ADVICE = (
    "On a GPU the programs of a launch run at once (the interpreter runs them one after another, so the "
    "result looked right here): use tl.atomic_add, or order the reads after the writer's atomic (store, "
    "then an atomic with sem acq_rel or release; read only after an atomic on the same address that sees it)"
)


def split_work(groups: list[tuple], parts: int) -> list[list[tuple]]:
    """(shape, layout) groups dealt to `parts` workers, largest M*N*K first to the least loaded
    (greedy; the interpreter's time grows with the shape's work). Keeps each share in the
    groups' own order, and never returns an empty share for parts <= len(groups)."""
    shares: list[list[tuple]] = [[] for _ in range(max(1, parts))]
    loads = [0] * len(shares)
    for group in sorted(groups, key=lambda g: -(g[0][0] * g[0][1] * g[0][2])):
        i = loads.index(min(loads))
        shares[i].append(group)
        loads[i] += group[0][0] * group[0][1] * group[0][2]
    order = {group: n for n, group in enumerate(groups)}
    return [sorted(share, key=order.__getitem__) for share in shares if share]
