"""Executed work per program (child side, under Triton's interpreter): what the model prices.

The compiled IR says what a kernel *could* do; a decoy `tl.dot` on a masked-off tile, a main loop on
CUDA cores, programs that exit at once all compile to IR that reads like a fast kernel. So the
model (evaluators/model/perf_model.py) is fed, at the verified stage, what the programs the judge
ran actually executed, counted here per program of each launch:

- every `tl.dot` by its FLOPs, 2*M*N*K of the operand tiles it multiplied (batched dots times the
  batch), keyed by the operands' type and, for fp32 operands, the input precision (a dot on zeros
  counts like any other: the tensor cores do the same work);
- the rest of the floating-point arithmetic, in flop-equivalents of the CUDA cores: one per element
  of a float add, subtract, multiply, divide, min/max and per element a float sum reduces; two per
  fma; MUFU_FLOPS per element of a transcendental (exp, log, sqrt, rsqrt, sin, cos, erf). An add
  whose operand is a dot's result is free: Triton's compiler folds `acc + tl.dot(a, b)` into the
  dot's accumulator (CombineDotAddFPattern, lib/Dialect/Triton/Transforms/Combine.td).

Integer arithmetic (addresses, masks, program ids) is not counted: the kernel's data never reaches
it (evaluators/dataflow.py forbids control flow on data, and integer math on a float's bits would be
a bitcast the precision rules see). `begin` / `end` bracket a counted call; `summary` is plain data.
"""

from __future__ import annotations

import numpy as np

from . import compat

# A transcendental costs 8 FMA issue slots: 16 results/clk/SM on the MUFU against 128 fp32 FMA/clk/SM
# on cc 8.0-9.0 (CUDA C++ Programming Guide, "Arithmetic Instructions" throughput table), and an FMA
# counts 2 flops.
MUFU_FLOPS = 16
RECENT_DOTS = 4  # dot results remembered for the add that folds into them
_FLOAT_BINARY = ("create_fadd", "create_fsub", "create_fmul", "create_fdiv", "create_precise_divf",
                 "create_approx_divf", "create_frem", "create_minimumf", "create_maximumf",
                 "create_minnumf", "create_maxnumf")  # fmt: skip
_MUFU = ("create_exp", "create_exp2", "create_log", "create_log2", "create_sqrt", "create_precise_sqrt",
         "create_rsqrt", "create_sin", "create_cos", "create_erf")  # fmt: skip
_FP8 = {"fp8e4nv", "fp8e5", "fp8e4b15", "fp8e4b8", "fp8e5b16"}


def dot_key(a_dtype: str, input_precision) -> str:
    """The rate a dot runs at, from its operand type (a tl dtype name) and input precision:
    "fp16", "bf16", "fp8", and for fp32 operands "tf32", "tf32x3" or "fp32" (IEEE: CUDA cores)."""
    if a_dtype in _FP8:
        return "fp8"
    if a_dtype in ("fp16", "bf16"):
        return a_dtype
    if a_dtype == "fp32":
        name = str(input_precision).split(".")[-1].lower() if input_precision is not None else "ieee"
        return name if name in ("tf32", "tf32x3") else "fp32"
    return a_dtype  # int8 and the like: priced by the model as it knows them


class WorkCount:
    """Install once per interpreter child; `begin` / `end` bracket a counted call."""

    def __init__(self) -> None:
        self.active = False
        self.launches: list[dict] = []
        self.grid = (1, 1, 1)
        # The latest dot results (held, so their ids stay theirs): the add that folds one into an
        # accumulator follows its dot at once. TensorHandle is not hashable, so ids are compared.
        self.dot_results: list = []

    def install(self) -> None:
        builder_class = compat.interpreter_accesses()[0]
        count = self
        compat.on_interpreter_launch(lambda grid: count._launch(grid) if count.active else None)
        if hasattr(builder_class, "create_dot"):
            builder_class.create_dot = self._wrap_dot(builder_class.create_dot)
        for name in _FLOAT_BINARY:
            if hasattr(builder_class, name):
                setattr(builder_class, name, self._wrap_float(getattr(builder_class, name), name, 1))
        if hasattr(builder_class, "create_fma"):
            builder_class.create_fma = self._wrap_float(builder_class.create_fma, "create_fma", 2)
        for name in _MUFU:
            if hasattr(builder_class, name):
                setattr(builder_class, name, self._wrap_float(getattr(builder_class, name), name, MUFU_FLOPS))
        reduce_ops = compat.interpreter_reduce()
        if reduce_ops is not None and hasattr(reduce_ops, "sum"):
            original_sum = reduce_ops.sum

            def reduce_sum(ops_self, input):
                if count.active:
                    data = np.asarray(input.handle.data)
                    if data.dtype.kind == "f":
                        count._add_cuda(compat.interpreter_builder(), data.size)
                return original_sum(ops_self, input)

            reduce_ops.sum = reduce_sum

    def begin(self) -> None:
        self.active, self.launches = True, []

    def end(self) -> None:
        self.active = False

    def summary(self) -> list[dict]:
        """Per launch: {"grid": [x, y, z], "programs": {flat id: {"dot": {"RATE:MxNxK": FLOPs}, "cuda":
        flops}}} for the programs that executed arithmetic (the others are absent: they did none)."""
        return [
            {"grid": list(launch["grid"]), "programs": {str(p): w for p, w in launch["programs"].items()}}
            for launch in self.launches
        ]

    # -- per launch and program
    def _launch(self, grid: tuple) -> None:
        self.grid = grid + (1,) * (3 - len(grid))
        self.launches.append({"grid": self.grid, "programs": {}})
        self.dot_results = []

    def _program(self, builder) -> dict:
        if not self.launches:
            self._launch((1, 1, 1))
        flat = compat.program_index(self.grid, builder.grid_idx)
        programs = self.launches[-1]["programs"]
        if flat not in programs:
            programs[flat] = {"dot": {}, "cuda": 0}
        return programs[flat]

    def _add_cuda(self, builder, flops: int) -> None:
        self._program(builder)["cuda"] += int(flops)

    def _wrap_dot(self, original):
        count = self

        def dot(builder_self, a, b, d, input_precision, *rest, **kwargs):
            out = original(builder_self, a, b, d, input_precision, *rest, **kwargs)
            if count.active:
                a_shape, b_shape = np.shape(a.data), np.shape(b.data)
                if len(a_shape) >= 2 and len(b_shape) >= 2:
                    batch = int(np.prod(a_shape[:-2])) if len(a_shape) > 2 else 1
                    flops = 2 * batch * a_shape[-2] * b_shape[-1] * a_shape[-1]
                    rate = dot_key(
                        a.dtype.name if hasattr(a.dtype, "name") else str(a.dtype), input_precision
                    )
                    key = f"{rate}:{a_shape[-2]}x{b_shape[-1]}x{a_shape[-1]}"  # rate and tile (M x N x K)
                    work = count._program(builder_self)["dot"]
                    work[key] = work.get(key, 0) + int(flops)
                count.dot_results = [*count.dot_results[-(RECENT_DOTS - 1) :], out]
            return out

        return dot

    def _folds(self, operands) -> bool:
        """Whether an add takes a dot's result as an operand (the compiler folds it into the dot)."""
        ids = {id(r) for r in self.dot_results}
        return any(id(x) in ids for x in operands)

    def _wrap_float(self, original, name: str, flops: int):
        count = self
        adds = name in ("create_fadd", "create_fsub")

        def arithmetic(builder_self, *args, **kwargs):
            out = original(builder_self, *args, **kwargs)
            if count.active:
                data = np.asarray(getattr(out, "data", None))
                if data.dtype.kind == "f" and not (adds and count._folds(args[:2])):
                    count._add_cuda(builder_self, data.size * flops)
            return out

        return arithmetic
