"""int32 wraps found by interval arithmetic over the TTIR (evaluators/ranges.py), at one launch's
arguments: the seed's `offs_m * stride_cm` wraps once C passes 2^31 elements, not before; an int64
offset never wraps; values the analysis cannot bound are never reported."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from evaluators import compat, ranges


def ttir(kernel, *args, **constexprs) -> str:
    target, backend = compat.cuda_backend(90)
    spec = compat.specialise(kernel, backend, args, constexprs)
    return compat.compile_for(kernel, spec, target).asm["ttir"]


@triton.jit
def store_rows(c_ptr, M, N, stride_cm, BLOCK: tl.constexpr, WIDE: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs_n = tl.arange(0, BLOCK)
    if WIDE:
        offs_m = offs_m.to(tl.int64)
    ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :]
    tl.store(
        ptrs, tl.zeros((BLOCK, BLOCK), dtype=tl.float32), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N)
    )


@triton.jit
def loop_carried_offsets(c_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    for _ in range(n):
        offs = offs * 3 + 1  # unbounded across iterations: the analysis cannot say, so it says nothing
    tl.store(c_ptr + offs, tl.zeros((BLOCK,), dtype=tl.float32))


def c_ptr():
    return torch.empty(16, device="meta")


def test_int32_row_offsets_wrap_past_2_31_elements_only():
    text = ttir(store_rows, c_ptr(), 64, 64, 64, BLOCK=64, WIDE=False)
    grid = lambda M: (triton.cdiv(M, 64),)  # noqa: E731
    wraps = ranges.check(text, {"M": 65536, "N": 65536, "stride_cm": 65536}, grid(65536))
    assert len(wraps) == 1 and wraps[0].op == "multiplication" and wraps[0].interval[1] == 65535 * 65536
    assert wraps[0].line is not None and "past int32's range" in wraps[0].describe()
    assert ranges.check(text, {"M": 32768, "N": 65536, "stride_cm": 65536}, grid(32768)) == []  # 2^31 - 2^16


def test_int64_offsets_never_wrap():
    text = ttir(store_rows, c_ptr(), 64, 64, 64, BLOCK=64, WIDE=True)
    assert ranges.check(text, {"M": 65536, "N": 65536, "stride_cm": 65536}, (1024,)) == []


def test_what_cannot_be_bounded_is_never_reported():
    text = ttir(loop_carried_offsets, c_ptr(), 5, BLOCK=16)
    assert ranges.check(text, {"n": 10**6}, (1,)) == []


def test_first_wrap_names_the_shape_and_the_fix():
    text = ttir(store_rows, c_ptr(), 64, 64, 64, BLOCK=64, WIDE=False)
    call = {
        "key": "k",
        "arg_names": ["c_ptr", "M", "N", "stride_cm", "BLOCK", "WIDE"],
        "signature": [
            "store_rows",
            [1024],
            [["tensor"], 65536, 65536, 65536],
            [["BLOCK", 64], ["WIDE", False]],
        ],
    }
    launches = [{"shape": [65536, 65536, 128], "layout": "nn", "calls": [call]}]
    message = ranges.first_wrap(launches, {"k": {"ttir": text}})
    assert message.startswith("shape (65536, 65536, 128) layout nn: kernel store_rows: line ")
    assert "int64" in message
    call["signature"][1], call["signature"][2][1] = [16], 1024  # M = 1024: 16 programs of 64 rows
    assert ranges.first_wrap(launches, {"k": {"ttir": text}}) is None
