"""The CPU half of the cascade: the offline compile and the interpreter's checks side by side,
autotuned launches resolved by the model, and the modelled fitness (evaluate.py's run uses it).

`CpuStages` is one part of the evaluation run (evaluators/evaluate.py `_Run`), kept apart so
each file holds one stage. It reads the run's task, options, cache, source and timing state
(`seconds`, `provenance`, `shapes`), and sets `kernels`, `launches`, `choices`, `watch`.
"""

from __future__ import annotations

import time

import torch

from . import autotune, failures, ranges, sandbox
from . import compile as comp
from .compile_watch import CompileWatch
from .correctness import layout_views
from .evaluation import Evaluation, ShapeResult
from .targets import TARGET_LIMITS
from .verdict import Stop

MODEL_FOR_TARGET = {"sm_90": "h100", "sm_80": "a100"}  # the GPU the model ranks for, per target


class CpuStages:
    def cpu_stages(self, boxes: list, deadline: float) -> Evaluation:
        """The offline compile and the interpreter need triton imported two different ways,
        so they run in two children, side by side (two cores). The compile's verdict wins; it is
        followed while the checks run, so a compile failure or a kernel the interpreter could
        never finish (a spin-wait) ends the checks at once."""
        compile_box = sandbox.take("compile", self.options.memory_bytes, self.options.prestart)
        groups = len(self.task.check) * len(self.task.layouts)
        check_boxes = [
            sandbox.take("check", self.options.memory_bytes, self.options.prestart)
            for _ in range(max(1, min(self.options.check_children, groups)))
        ]
        boxes += [compile_box, *check_boxes]
        self.wait(compile_box, "compile_child_wait", deadline)
        source_hash = comp.source_hash(self.source)
        known = self.cache.get(source_hash, self.task.target)
        self.send_job(compile_box, "compile", {"known_kernels": known})
        watch = self.watch = CompileWatch(
            compile_box,
            self.cache,
            source_hash,
            self.task.target,
            self.options.timeout_s,
            self.options.compile_s_per_kernel,
            self.options.max_specialisations,
        )
        check_failure: Exception | None = None
        try:
            for box in check_boxes:
                self.wait(box, "check_child_wait", deadline)
            autotuned = self.load_checkers(check_boxes, deadline)
            if autotuned:  # the checks launch the config the model chooses: the compile comes first
                self.waiting_for_compile(watch)
                self.resolve_compile(watch.header)
            # The checks' own budget (the kernel's run time) starts now.
            self.check(check_boxes, max(deadline, time.monotonic() + self.options.timeout_s), watch)
        except (Stop, sandbox.ChildTimeout, sandbox.ChildDied) as failure:
            check_failure = failure
        if watch.stop is None:
            self.waiting_for_compile(watch)
            if self.compile_header is None:
                self.resolve_compile(watch.header)
        if watch.stop is not None:
            raise watch.stop
        self.judge_compiled()
        if check_failure is not None:
            raise check_failure
        if self.options.stage == "verified":  # the expensive stage (evaluators/verify_stage.py)
            self.verify(check_boxes, deadline)
        if self.model_gpu:
            return self.model()
        return self.result(
            "ok",
            "correct on every check shape under the CPU interpreter; "
            "no fitness: nothing was timed or modelled on this backend",
        )

    def waiting_for_compile(self, watch: CompileWatch) -> None:
        try:
            watch.finish()
        except sandbox.ChildTimeout:
            self.timeout_text = watch.timeout_feedback()
            raise

    def load_checkers(self, boxes: list[sandbox.Sandbox], deadline: float) -> bool:
        """Load the candidate in the interpreter children; True when it has autotuned kernels."""
        start = time.perf_counter()
        self.waiting = "the interpreter child loading the kernel module"
        for box in boxes:
            self.send_job(box, "check", {})
        autotuned = False
        for box in boxes:
            header = self.receive_job(box, "check", deadline)
            fixes = header.get("interp_fixes") or {}
            self.provenance["interp_fixes"] = fixes
            self.provenance["interp_bf16_dot"] = fixes.get("bf16_dot")
            self.provenance["race_check"] = header.get("race_check")  # races between programs: checked
            self.provenance["bounds_check"] = header.get("bounds_check")  # memory outside the tensors
            autotuned = autotuned or bool(header.get("autotuned"))
        self.seconds["check_load"] = time.perf_counter() - start
        return autotuned

    def resolve_compile(self, header: dict) -> None:
        """The compile child's reply (CPU): facts kept, autotuned launches resolved to the config
        the model ranks best per shape (evaluators/autotune.py)."""
        from .model.constants import GPUS

        self.compile_header = header
        self.seconds["compile"] = float(header.get("seconds", 0.0))  # the child's own clock
        self.kernels = dict(header.get("kernels", {}))
        self.cache.put(comp.source_hash(self.source), self.task.target, self.kernels)
        model = self.model_gpu or MODEL_FOR_TARGET.get(self.task.target)
        self.launches, self.choices = autotune.resolve(
            header.get("launches", []),
            self.kernels,
            TARGET_LIMITS[self.task.target],
            GPUS.get(model) if model else None,
            self.task.dtype,
            self.task.allow_tf32,
        )
        if self.choices:
            self.provenance["autotune"] = [
                {"shape": list(shape), "layout": layout, "kind": kind, "kernel": c.kernel, "config": c.config}
                for (shape, layout, kind), chosen in self.choices.items()
                for c in chosen
            ]

    def used_keys(self, kinds: tuple[str, ...] = ("train", "held_out")) -> set[str]:
        """Specialisations the resolved launches of these kinds use (compiled ones only)."""
        return {
            call["key"]
            for entry in self.launches
            if entry.get("kind", "train") in kinds
            for call in entry["calls"]
            if call.get("key") in self.kernels
        }

    def judge_compiled(self) -> None:
        """What the compile says about the launches the candidate makes (CPU)."""
        train = [entry for entry in self.launches if entry.get("kind", "train") == "train"]
        if not any(entry["calls"] for entry in train):
            raise Stop("rejected", "the entry point launched no Triton kernel on any training shape")
        self.compare_launches(
            [entry for entry in self.launches if entry.get("kind") in ("check", "cover", "reduced")]
        )
        used = self.used_keys(("train", "held_out", "check", "cover", "reduced"))
        self.judge_kernels(used)
        wrap = ranges.first_wrap(self.launches, self.kernels)
        if wrap is not None:
            raise Stop("incorrect", wrap)
        stop = failures.spin_wait_stop(self.kernels, used)
        if stop is not None:
            raise stop

    def model(self) -> Evaluation:
        """Modelled fitness: geometric mean over training shapes and layouts of the modelled
        fraction of the GPU's dense peak (evaluators/model/perf_model.py). Labelled, never a measurement.
        Held-out shapes are modelled the same way and reported beside it, never in it. Verified: the
        model prices what the programs executed (evaluators/model/executed.py), not what the IR could
        do; each modelled figure carries its class's calibration error (evaluators/model/classes.py)."""
        from .model.classes import class_errors, shape_class, shape_error
        from .model.constants import GPUS
        from .model.launch import launch_from_facts
        from .model.perf_model import estimate_shape, modelled_fitness, slowed

        start = time.perf_counter()
        gpu = GPUS[self.model_gpu]
        errors = class_errors()
        estimates: dict[str, list] = {"train": [], "held_out": []}
        ratio_errors: list[float | None] = []
        modelled, unexecuted, slowdown = [], [], 1.0
        for entry in self.launches:
            kind = entry.get("kind", "train")
            if kind not in estimates:
                continue
            shape = tuple(entry["shape"])
            works = (
                self.executed_work(entry)
                if self.options.stage == "verified"
                else [None] * len(entry["calls"])
            )
            compiled = [launch_from_facts(self.kernels[call["key"]], call["grid"]) for call in entry["calls"]]
            estimate = estimate_shape(compiled, shape, self.task.dtype, gpu, self.task.allow_tf32)
            if any(works):
                launches = [launch_from_facts(self.kernels[call["key"]], call["grid"], work)
                            for call, work in zip(entry["calls"], works, strict=True)]  # fmt: skip
                ran = estimate_shape(launches, shape, self.task.dtype, gpu, self.task.allow_tf32)
                if estimate.time_s > 0 and ran.time_s < float("inf"):
                    slowdown = max(slowdown, ran.time_s / estimate.time_s)
                estimate = ran
            elif self.options.stage == "verified":
                unexecuted.append(len(modelled))
            modelled.append((entry, kind, shape, estimate))
        for i in unexecuted:  # not run within the budgets: no better than what ran says
            entry, kind, shape, estimate = modelled[i]
            why = "not run within the budgets; slowed as much as the slowest shape that ran"
            modelled[i] = (entry, kind, shape, slowed(estimate, slowdown, why))
        for entry, kind, shape, estimate in modelled:
            estimates[kind].append(estimate)
            error, ratio_error = shape_error(shape, errors)
            if kind == "train":
                ratio_errors.append(ratio_error)
            self.shapes.append(
                ShapeResult(
                    shape=shape,
                    layout=entry["layout"],
                    kind=kind,
                    tflops=round(estimate.tflops, 2),
                    fraction_of_peak=round(estimate.fraction_of_peak, 4),
                    bound=estimate.bound,
                    model_class=shape_class(shape),
                    model_error=None if error is None else round(error, 4),
                )
            )
        unexecuted_names = [f"{modelled[i][2]} {modelled[i][0]['layout']}" for i in unexecuted]
        fitness = modelled_fitness(estimates["train"])
        held_out = modelled_fitness(estimates["held_out"]) if estimates["held_out"] else None
        self.seconds["model"] = time.perf_counter() - start
        worst = min(estimates["train"], key=lambda e: e.fraction_of_peak)
        reason = worst.breakdown.get("reason", "")
        text = (
            f"correct on every check shape; MODELLED (not measured) on {gpu.name}: geometric mean "
            f"{fitness:.3f} of dense peak over {len(estimates['train'])} training shape/layouts; weakest "
            f"{worst.shape} at {worst.tflops:.1f} TFLOP/s ({worst.bound}{': ' + reason if reason else ''})"
        )
        known = [e for e in ratio_errors if e is not None]
        model_error = round(sum(known) / len(known), 4) if known and len(known) == len(ratio_errors) else None
        if model_error is not None:
            text += f" (model error +-{model_error:.0%} on ratios of candidates)"
        if self.options.stage == "verified":
            text += "; priced by the work its programs executed"
            if unexecuted_names:
                text += (
                    f" (not run within the budgets, so priced from compile facts slowed x{slowdown:.2f} as the "
                    f"shapes that ran were: {', '.join(unexecuted_names)})"
                )
        if held_out is not None:
            text += f"; held-out shapes (not in the fitness): {held_out:.3f}"
        tuned = autotune.summary(self.choices)
        if tuned:
            text += f". {tuned}"
        left_out = self.provenance.get("uncovered_paths") or []
        if left_out:
            shapes = ", ".join(sorted({str(tuple(e["shape"])) for e in left_out}))
            text += (
                f". Not run on CPU: the path training shape(s) {shapes} take (no check shape takes it, and "
                "the smallest shape on it is too large for the interpreter); a GPU check runs them"
            )
        evaluation = self.result("ok", text, fitness=fitness, kind="modelled")
        evaluation.held_out = held_out
        evaluation.model_error = model_error
        return evaluation

    def executed_work(self, entry: dict) -> list:
        """ExecutedWork per call of a training or held-out entry (None per call when nothing ran for
        it), from the whole grid at a reduced K of its layout and the full-size sample of its shape
        (its own layout's, else another layout's: call_work matches launches by grid)."""
        from .model.executed import call_work

        M, N, K = entry["shape"]
        reduced = self.executed.get((M, N, entry["layout"], "reduced"))
        sampled = self.executed.get((M, N, entry["layout"], "sampled"))
        if sampled is None:
            sampled = next((v for (m, n, _, kind), v in self.executed.items()
                            if (m, n, kind) == (M, N, "sampled")), None)  # fmt: skip
        try:
            works = call_work(entry["calls"], K, reduced, sampled)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
            raise Stop("crashed", f"shape {tuple(entry['shape'])}: the child's work counts did not arrive "
                       f"intact ({type(e).__name__}: {e})") from e  # fmt: skip
        rows = self.provenance.setdefault("executed_work", [])
        rows.append({"shape": list(entry["shape"]), "layout": entry["layout"], "calls": [
            None if w is None else {"programs": w.programs, "working": w.working, "source": w.source,
                                    "dot_gflop": round(sum(f for *_, f in w.dot_flops) / 1e9, 3),
                                    "cuda_gflop": round(w.cuda_flops / 1e9, 3)}
            for w in works]})  # fmt: skip
        return works

    def compare_launches(self, compiled: list) -> None:
        """The code that was compiled must be the code that was checked: on the check shapes the
        entry point must launch the same kernels, grids and arguments on `meta` tensors (compile
        run) as on real ones (interpreter run). A kernel module that looks at the device to
        behave differently is caught here."""
        for entry in compiled:
            a, b = layout_views(tuple(entry["shape"]), entry["layout"], torch.float16)  # packed, as on meta
            key = (tuple(entry["shape"]), entry["layout"], (a.stride(), b.stride(), 0, 0))
            signatures = [call.get("signature") for call in entry["calls"]]
            if key in self.run_signatures and self.run_signatures[key] != signatures:
                raise Stop(
                    "rejected",
                    f"shape {key[0]} layout {key[1]}: the entry point launches different kernels, grids or "
                    "arguments when compiled (meta tensors) than when checked; it must not depend on the device",
                )
