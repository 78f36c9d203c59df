"""The TTIR dataflow rule (evaluators/dataflow.py) on small real kernels compiled for sm_90 offline:
what it must flag (branches, loop bounds, masks and addresses fed by loaded data or float arithmetic)
and what it must leave alone (atomics' results, loop-carried state, selects on values, names the
printer reuses in sibling regions)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from evaluators import compat, dataflow


def ttir(kernel, *args, **constexprs) -> str:
    target, backend = compat.cuda_backend(90)
    spec = compat.specialise(kernel, backend, args, constexprs)
    return compat.compile_for(kernel, spec, target).asm["ttir"]


def ptr(dtype=torch.float32):
    return torch.empty(1024, dtype=dtype, device="meta")


def whats(text: str) -> list[tuple[str, str]]:
    return [(f.what, f.source) for f in dataflow.check(text)]


@triton.jit
def persistent_with_atomics(a_ptr, c_ptr, counter_ptr, n_tiles, BLOCK: tl.constexpr, SPLITS: tl.constexpr):
    # Honest: a persistent loop carrying an accumulator, an arrival counter's result in a branch,
    # a clamp through tl.where on the values. Two sibling regions reuse names in the printed IR.
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for tile in range(tl.program_id(0), n_tiles, 4):
        acc += tl.load(a_ptr + tile * BLOCK + offs)
    arrived = tl.atomic_add(counter_ptr, 1)
    if arrived == SPLITS - 1:
        x = tl.load(a_ptr + offs)
        tl.store(c_ptr + offs, tl.where(x > 0, acc, 0.0))
    else:
        y = tl.load(a_ptr + BLOCK + offs)
        tl.store(c_ptr + offs, y)


@triton.jit
def skips_on_data(a_ptr, c_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(a_ptr + offs)
    if tl.max(tl.abs(x)) > 1e-3:
        tl.store(c_ptr + offs, x)


@triton.jit
def spins_on_a_load(a_ptr, c_ptr):
    i = 0
    x = tl.load(a_ptr)
    while x > 0:
        i += 1
        x = tl.load(a_ptr + i)
    tl.store(c_ptr, x)


@triton.jit
def gathers_by_loaded_index(idx_ptr, a_ptr, c_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    idx = tl.load(idx_ptr + offs)
    tl.store(c_ptr + offs, tl.load(a_ptr + idx))


@triton.jit
def offsets_from_float_bits(a_ptr, c_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    half = (tl.program_id(0).to(tl.float32) * 0.5).to(tl.int32, bitcast=True)
    tl.store(c_ptr + offs, tl.load(a_ptr + offs + (half & 7)))


def test_honest_control_flow_is_left_alone():
    text = ttir(persistent_with_atomics, ptr(), ptr(), ptr(torch.int32), 8, BLOCK=64, SPLITS=4)
    assert "scf.for" in text and "scf.if" in text
    assert dataflow.check(text) == []


def test_a_branch_on_loaded_values_is_named_with_its_lines():
    found = dataflow.check(ttir(skips_on_data, ptr(), ptr(), BLOCK=64))
    assert [(f.what, f.source) for f in found] == [("branch", "a value loaded from memory")]
    assert found[0].line is not None and found[0].source_line is not None
    assert found[0].source_line < found[0].line  # the load comes before the branch on it
    assert "kernel skips_on_data: a branch (line" in dataflow.feedback("skips_on_data", found)


def test_a_while_loop_on_loaded_values_is_flagged():
    assert ("loop condition", "a value loaded from memory") in whats(ttir(spins_on_a_load, ptr(), ptr()))


def test_an_address_from_a_loaded_index_is_flagged():
    text = ttir(gathers_by_loaded_index, ptr(torch.int32), ptr(), ptr(), BLOCK=64)
    assert ("memory address", "a value loaded from memory") in whats(text)


def test_float_bits_in_an_address_are_flagged():
    assert ("memory address", "a float reinterpreted as bits") in whats(
        ttir(offsets_from_float_bits, ptr(), ptr(), BLOCK=64)
    )


def test_a_printed_while_loop_binds_its_arguments_by_position():
    # Hand-written TTIR: the loop carries a loaded value (%v) beside a counter (%i); only what
    # depends on %v is tainted, so an address built from the counter alone is fine.
    text = """
    %c1 = arith.constant 1 : i32 loc(#loc1)
    %x = tt.load %p : !tt.ptr<i32> loc(#loc1)
    %r:2 = scf.while (%i = %c1, %v = %x) : (i32, i32) -> (i32, i32) {
      %go = arith.cmpi slt, %i, %n : i32 loc(#loc1)
      scf.condition(%go) %i, %v : i32, i32 loc(#loc1)
    } do {
    ^bb0(%i2: i32 loc(#loc1), %v2: i32 loc(#loc1)):
      %i3 = arith.addi %i2, %c1 : i32 loc(#loc1)
      scf.yield %i3, %v2 : i32, i32 loc(#loc1)
    } loc(#loc1)
    %q = tt.addptr %p, %r#0 : !tt.ptr<i32>, i32 loc(#loc1)
    %y = tt.load %q : !tt.ptr<i32> loc(#loc1)
    %q2 = tt.addptr %p, %r#1 : !tt.ptr<i32>, i32 loc(#loc1)
    %z = tt.load %q2 : !tt.ptr<i32> loc(#loc1)
    """
    found = dataflow.check(text)
    assert [f.what for f in found] == ["memory address"]  # the second load only


@triton.jit
def writes_through_b(a_ptr, b_ptr, c_ptr, ws_ptr, n, BLOCK: tl.constexpr):
    # A cheat's shape: B "transposed in place" (written), C written, a workspace updated by an
    # atomic through an offset pointer; A only read.
    offs = tl.arange(0, BLOCK)
    x = tl.load(a_ptr + offs, mask=offs < n)
    tl.store(b_ptr + offs, x, mask=offs < n)
    tl.store(c_ptr + offs, x * 2)
    tl.atomic_add(ws_ptr + 1 + offs, x)


def test_the_written_pointer_arguments_are_named():
    text = ttir(writes_through_b, ptr(), ptr(), ptr(), ptr(), 64, BLOCK=64)
    assert dataflow.written_arguments(text) == ["b_ptr", "c_ptr", "ws_ptr"]
    honest = ttir(persistent_with_atomics, ptr(), ptr(), ptr(torch.int32), 8, BLOCK=64, SPLITS=4)
    assert dataflow.written_arguments(honest) == ["c_ptr", "counter_ptr"]  # a_ptr is only read
