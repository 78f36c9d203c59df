"""The bounds check (evaluators/bounds_check.py) on small kernels under Triton's interpreter, in one
fresh process (TRITON_INTERPRET must precede the triton import), and its lane arithmetic on
storages the test lays out itself (where the allocator puts two tensors is not the test's to choose)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluators.bounds_check import BoundsCheck
from evaluators.race_check import launch_tensors

ROOT = Path(__file__).resolve().parents[1]

KERNELS = """
import triton
import triton.language as tl


@triton.jit
def copy(x_ptr, y_ptr, n, B: tl.constexpr, MASKED: tl.constexpr):
    # y = x, one tile of B per program; unmasked, the last tile runs past both ends when B does not divide n
    offs = tl.program_id(0) * B + tl.arange(0, B)
    if MASKED:
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n, other=0.0), mask=offs < n)
    else:
        tl.store(y_ptr + offs, tl.load(x_ptr + offs))


@triton.jit
def store_before(y_ptr, B: tl.constexpr):
    # a store one tile before y's first element
    offs = tl.arange(0, B) - B
    tl.store(y_ptr + offs, tl.zeros((B,), tl.float32))


@triton.jit
def atomic_past(y_ptr, n, B: tl.constexpr):
    offs = n + tl.arange(0, B)
    tl.atomic_add(y_ptr + offs, tl.zeros((B,), tl.float32) + 1.0)


@triton.jit
def padding(x_ptr, y_ptr, stride, B: tl.constexpr):
    # x is a column slice of a wider tensor: reading past its columns stays inside its storage
    rows = tl.arange(0, B)
    cols = tl.arange(0, 2 * B)
    tl.store(y_ptr + rows[:, None] * 2 * B + cols[None, :], tl.load(x_ptr + rows[:, None] * stride + cols[None, :]))


@triton.jit
def pair(xs, y_ptr, B: tl.constexpr):
    # the tensors of a tuple argument
    offs = tl.arange(0, B)
    tl.store(y_ptr + offs, tl.load(xs[0] + offs) + tl.load(xs[1] + offs))
"""

DRIVER = """
import json, sys, importlib.util
import torch
from evaluators.bounds_check import BoundsCheck, OutOfBounds

check = BoundsCheck()
check.install()
spec = importlib.util.spec_from_file_location("k", sys.argv[1])
k = importlib.util.module_from_spec(spec); spec.loader.exec_module(k)
out = {}

def launch(kernel, grid, *args, **kw):
    check.begin(kernel.__name__, kernel.arg_names, args, kw)
    kernel[grid](*args, **kw)

def case(name, run, guard=None):
    check.clear()
    before = None if guard is None else guard.clone()
    raised = None
    try:
        run()
    except Exception as e:
        # the interpreter wraps what a builder method raises (InterpreterError)
        raised = "OutOfBounds" if "OutOfBounds" in repr(e) else type(e).__name__ + ": " + str(e)[-300:]
    out[name] = {"found": check.messages(), "raised": raised,
                 "guard_kept": None if guard is None else bool(torch.equal(before, guard))}

B = 16
x, y = torch.randn(40), torch.zeros(40)
case("masked", lambda: launch(k.copy, (3,), x, y, 40, B=B, MASKED=True))
out["masked"]["right"] = bool(torch.equal(x, y))
case("store_before", lambda: launch(k.store_before, (1,), torch.zeros(B), B=B))
# a view in the middle of a wider buffer: before it is the buffer's own storage
wide = torch.full((5 * B,), 7.0)
case("store_before_view", lambda: launch(k.store_before, (1,), wide[2 * B: 3 * B], B=B))
case("unmasked", lambda: launch(k.copy, (3,), x, y, 40, B=B, MASKED=False))
y = torch.zeros(40)
case("atomic_past", lambda: launch(k.atomic_past, (1,), y, 40, B=B), guard=y)
wider = torch.randn(B, 3 * B)
flat = torch.zeros(B * 2 * B)
case("padding", lambda: launch(k.padding, (1,), wider[:, :B], flat, wider.stride(0), B=B))
a, b, s = torch.randn(B), torch.randn(B), torch.zeros(B)
case("pair", lambda: launch(k.pair, (1,), (a, b), s, B=B))
out["pair"]["right"] = bool(torch.allclose(s, a + b))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def found(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("bounds") / "kernels.py"
    path.write_text(KERNELS)
    run = subprocess.run(
        [sys.executable, "-c", DRIVER, str(path)],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_masked_edges_pass_and_compute(found):
    assert found["masked"] == {"found": [], "raised": None, "guard_kept": None, "right": True}


def test_unmasked_load_past_the_end_is_found_before_it_happens(found):
    case = found["unmasked"]
    assert case["raised"] == "OutOfBounds"
    (message,) = case["found"]
    # the third program's tile covers elements 32..47 of a 40-element x: 8 lanes past the end
    assert (
        "kernel copy: program (2, 0, 0) loaded 8 of 16 elements outside the tensors it was given" in message
    )
    assert "right after the end of x_ptr (40 float32)" in message
    assert "Mask the loads and stores" in message


def test_store_before_the_start_is_found(found):
    assert found["store_before"]["raised"] == "OutOfBounds"
    (message,) = found["store_before"]["found"]
    assert (
        "stored 16 of 16 elements" in message and "64 bytes before the start of y_ptr (16 float32)" in message
    )
    # before a view but inside its storage is memory the GPU has: the values check's to judge
    assert found["store_before_view"]["found"] == []


def test_atomic_past_the_end_is_found_and_not_made(found):
    case = found["atomic_past"]
    assert case["raised"] == "OutOfBounds"
    assert "made an atomic on 16 of 16 elements" in case["found"][0]
    assert case["guard_kept"] is True


def test_reading_a_views_padding_inside_its_storage_is_not_out_of_bounds(found):
    assert found["padding"]["found"] == [] and found["padding"]["raised"] is None


def test_tensors_inside_a_tuple_argument_count(found):
    assert found["pair"] == {"found": [], "raised": None, "guard_kept": None, "right": True}


class _Pointers:
    """What the interpreter hands an access: pointer values and the pointee's type."""

    def __init__(self, addresses, bits: int = 32):
        self.data = np.asarray(addresses, dtype=np.uint64)
        self.bits = bits

    def get_element_ty(self):
        return type("Ty", (), {"primitive_bitwidth": self.bits})()


class _Builder:
    grid_idx = (1, 0, 0)


def _check_over(**tensors) -> BoundsCheck:
    check = BoundsCheck()
    check.begin("k", list(tensors), tuple(tensors.values()), {})
    return check


def test_a_tile_running_from_one_tensor_into_the_next_is_out_of_bounds():
    # A and C laid out back to back in one buffer, given as two tensors with storages of their own
    a, c = torch.zeros(64), torch.zeros(64)
    check = _check_over(a_ptr=a, c_ptr=c)
    facts = {f.name: f for _, _, f in check.storages}
    check.storages = [(0, 256, facts["a_ptr"]), (256, 512, facts["c_ptr"])]
    finding = check._inspect("load", _Builder(), _Pointers(np.arange(192, 320, 4)), None)
    assert finding is not None and (finding.outside, finding.lanes) == (16, 32)
    assert (
        "right after the end of a_ptr (64 float32), inside the memory of c_ptr (64 float32)" in finding.text()
    )


def test_lanes_the_mask_turns_off_are_not_looked_at():
    a = torch.zeros(64)
    check = _check_over(a_ptr=a)
    first, last, facts = check.storages[0]
    lanes = first + 4 * np.arange(80)
    mask = np.arange(80) < 64
    assert check._inspect("load", _Builder(), _Pointers(lanes), mask) is None
    finding = check._inspect("load", _Builder(), _Pointers(lanes), np.arange(80) < 65)
    assert finding is not None and finding.outside == 1


def test_an_element_overhanging_the_end_is_out_of_bounds():
    # the first byte is inside, the last bytes of the 4-byte element are not
    a = torch.zeros(64)
    check = _check_over(a_ptr=a)
    first, last, _ = check.storages[0]
    assert check._inspect("load", _Builder(), _Pointers([first, last - 2]), None) is not None
    assert check._inspect("load", _Builder(), _Pointers([first, last - 4]), None) is None


def test_memory_outside_every_tensor_names_the_nearest():
    a, b = torch.zeros(64), torch.zeros(64)
    check = _check_over(a_ptr=a, b_ptr=b)
    facts = {f.name: f for _, _, f in check.storages}
    check.storages = [(1000, 1256, facts["a_ptr"]), (5000, 5256, facts["b_ptr"])]
    finding = check._inspect("store", _Builder(), _Pointers([4900]), None)
    assert "100 bytes before the start of b_ptr (64 float32) (the nearest tensor)" in finding.text()


def test_launch_tensors_names_views_tuples_and_descriptor_bases():
    a = torch.zeros(8, 8)

    class Descriptor:
        base = a

    facts = launch_tensors(["x", "pair", "desc", "n"], (a[:, 2:], (a, a.t()), Descriptor(), 3), {})
    assert [f.name for f in facts] == ["x", "pair[0]", "pair[1]", "desc.base"]
    assert all(f.storage == facts[0].storage for f in facts)
