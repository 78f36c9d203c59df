"""The race check's bookkeeping (evaluators/race_check.py) on small synthetic kernels under Triton's
interpreter, in one fresh process (TRITON_INTERPRET must precede the triton import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

KERNELS = """
import torch
import triton
import triton.language as tl


@triton.jit
def rmw(c_ptr, B: tl.constexpr):
    # every program adds 1 into the same tile with a plain load and store
    offs = tl.arange(0, B)
    tl.store(c_ptr + offs, tl.load(c_ptr + offs) + 1.0)


@triton.jit
def store_same(c_ptr, B: tl.constexpr):
    # every program writes the whole tile, no loads
    offs = tl.arange(0, B)
    tl.store(c_ptr + offs, tl.zeros((B,), tl.float32) + tl.program_id(0))


@triton.jit
def own_tile(c_ptr, B: tl.constexpr):
    # each program stores its own tile twice, and reads it back: no other program touches it
    offs = tl.program_id(0) * B + tl.arange(0, B)
    tl.store(c_ptr + offs, tl.zeros((B,), tl.float32))
    tl.store(c_ptr + offs, tl.load(c_ptr + offs) + 1.0)


@triton.jit
def overlap(c_ptr, B: tl.constexpr, SAME: tl.constexpr):
    # tiles of B elements starting every B // 2: neighbours overlap by half a tile. SAME: each
    # element gets the same value from both programs (its index), else each program's own id
    offs = tl.program_id(0) * (B // 2) + tl.arange(0, B)
    if SAME:
        tl.store(c_ptr + offs, offs.to(tl.float32))
    else:
        tl.store(c_ptr + offs, tl.zeros((B,), tl.float32) + tl.program_id(0))


@triton.jit
def masked_off_load(c_ptr, out_ptr, B: tl.constexpr):
    # after the first program's store, loads whose every lane is masked off
    offs = tl.arange(0, B)
    if tl.program_id(0) == 0:
        tl.store(c_ptr + offs, tl.zeros((B,), tl.float32))
    x = tl.load(c_ptr + offs, mask=offs < 0, other=1.0)
    tl.store(out_ptr + tl.program_id(0) * B + offs, x)


@triton.jit
def atomic_adds(c_ptr, B: tl.constexpr):
    offs = tl.arange(0, B)
    tl.atomic_add(c_ptr + offs, tl.zeros((B,), tl.float32) + 1.0)


@triton.jit
def first_stores_then_atomics(c_ptr, B: tl.constexpr):
    # program 0 stores, the others add atomically: on a GPU the store may land after the adds
    offs = tl.arange(0, B)
    if tl.program_id(0) == 0:
        tl.store(c_ptr + offs, tl.zeros((B,), tl.float32) + 1.0)
    else:
        tl.atomic_add(c_ptr + offs, tl.zeros((B,), tl.float32) + 1.0)


@triton.jit
def last_reduces(c_ptr, ws_ptr, count_ptr, SPLITS: tl.constexpr, B: tl.constexpr, BEFORE: tl.constexpr,
                 SEM: tl.constexpr):
    # each program stores its partial in the workspace and bumps the arrival counter; the last to
    # arrive sums the partials. BEFORE: the counter is bumped before the partial is stored (racy).
    pid = tl.program_id(0)
    offs = tl.arange(0, B)
    partial = tl.zeros((B,), tl.float32) + pid + 1.0
    if BEFORE:
        arrived = tl.atomic_add(count_ptr, 1, sem=SEM)
        tl.store(ws_ptr + pid * B + offs, partial)
    else:
        tl.store(ws_ptr + pid * B + offs, partial)
        arrived = tl.atomic_add(count_ptr, 1, sem=SEM)
    if arrived == SPLITS - 1:
        acc = tl.zeros((B,), tl.float32)
        for s in range(SPLITS):
            acc += tl.load(ws_ptr + s * B + offs)
        tl.store(c_ptr + offs, acc)
        tl.atomic_xchg(count_ptr, 0)


@triton.jit
def locked_rmw(c_ptr, lock_ptr, B: tl.constexpr):
    # load-add-store inside a spin lock: ordered through the lock, transitively
    offs = tl.arange(0, B)
    while tl.atomic_cas(lock_ptr, 0, 1) == 1:
        pass
    tl.store(c_ptr + offs, tl.load(c_ptr + offs) + 1.0)
    tl.atomic_xchg(lock_ptr, 0)


@triton.jit
def read_other(c_ptr, out_ptr, B: tl.constexpr):
    # a second launch reads what the first wrote: launches are stream-ordered
    offs = tl.arange(0, B)
    tl.store(out_ptr + tl.program_id(0) * B + offs, tl.load(c_ptr + offs))


@triton.jit
def rmw_2d(c_ptr, stride, B: tl.constexpr):
    # a grid of (tiles, splits): split programs of one tile add into the same 2-D tile of c
    offs_m = tl.program_id(0) * B + tl.arange(0, B)
    offs_n = tl.arange(0, B)
    ptrs = c_ptr + offs_m[:, None] * stride + offs_n[None, :]
    tl.store(ptrs, tl.load(ptrs) + 1.0)
"""

DRIVER = """
import json, sys, importlib.util
import torch
from evaluators.race_check import RaceCheck

check = RaceCheck()
check.install()
spec = importlib.util.spec_from_file_location("k", sys.argv[1])
k = importlib.util.module_from_spec(spec); spec.loader.exec_module(k)
out = {}

def launch(kernel, grid, *args, **kw):
    check.begin(kernel.__name__, kernel.arg_names, args, kw)
    kernel[grid](*args, **kw)

def case(name, run, output=None):
    check.clear()
    result = run()
    out[name] = {"races": check.messages(output if output is not None else result), "errors": list(check.errors)}

B = 16
c = torch.zeros(B)
case("rmw", lambda: launch(k.rmw, (3,), c, B=B), c)
case("store_same", lambda: launch(k.store_same, (2,), c, B=B), c)
wide = torch.zeros(4 * B)
case("own_tile", lambda: launch(k.own_tile, (4,), wide, B=B), wide)
case("atomic_adds", lambda: launch(k.atomic_adds, (4,), c, B=B), c)
for same in (True, False):
    line = torch.zeros(5 * B // 2)
    case(f"overlap_{same}", lambda: launch(k.overlap, (4,), line, B=B, SAME=same), line)
spread = torch.zeros(3 * B)
case("masked_off_load", lambda: launch(k.masked_off_load, (3,), c, spread, B=B), spread)
case("first_stores_then_atomics", lambda: launch(k.first_stores_then_atomics, (3,), c, B=B), c)
for before in (False, True):
    for sem in ("acq_rel", "relaxed"):
        ws, count = torch.zeros(4 * B), torch.zeros(1, dtype=torch.int32)
        c = torch.zeros(B)
        case(f"last_reduces_{'before' if before else 'after'}_{sem}",
             lambda: launch(k.last_reduces, (4,), c, ws, count, SPLITS=4, B=B, BEFORE=before, SEM=sem), c)
        out[f"last_reduces_{'before' if before else 'after'}_{sem}"]["value"] = float(c[0])
lock = torch.zeros(1, dtype=torch.int32)
c = torch.zeros(B)
case("locked_rmw", lambda: launch(k.locked_rmw, (4,), c, lock, B=B), c)
out["locked_rmw"]["value"] = float(c[0])
c, other = torch.zeros(B), torch.zeros(3 * B)
def two_launches():
    launch(k.store_same, (1,), c, B=B)
    launch(k.read_other, (3,), c, other, B=B)
case("two_launches", two_launches, other)
c2 = torch.zeros(4 * B, 3 * B)
case("rmw_2d", lambda: launch(k.rmw_2d, (4, 2), c2[:, B:], c2.stride(0), B=B), c2[:, B:])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def found(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("race") / "kernels.py"
    path.write_text(KERNELS)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run(
        [sys.executable, "-c", DRIVER, str(path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert all(not v["errors"] for v in out.values()), out  # the check never failed on its own
    return out


def test_read_modify_write_without_atomics_is_a_race(found):
    (race,) = found["rmw"]["races"]
    # program 1 reads what program 0 stored, unordered; named as C, the call's output
    assert race.startswith("kernel rmw: program (1, 0, 0) read C[0], which program (0, 0, 0) stored"), race


def test_two_programs_storing_one_element_is_a_race(found):
    (race,) = found["store_same"]["races"]
    assert "programs (0, 0, 0) and (1, 0, 0) both wrote C[0] with plain stores" in race, race


def test_a_program_rewriting_its_own_elements_is_fine(found):
    assert found["own_tile"]["races"] == []


def test_atomics_from_several_programs_are_fine(found):
    assert found["atomic_adds"]["races"] == []


def test_overlapping_tiles_storing_the_same_bits_lose_nothing(found):
    assert found["overlap_True"]["races"] == []
    (race,) = found["overlap_False"]["races"]
    assert "programs (0, 0, 0) and (1, 0, 0) both wrote C[8] with plain stores" in race, race


def test_a_load_with_every_lane_masked_off_reads_nothing(found):
    assert found["masked_off_load"]["races"] == []  # and the check did not fail (errors, in `found`)


def test_an_atomic_over_another_programs_plain_store_is_a_race(found):
    (race,) = found["first_stores_then_atomics"]["races"]
    assert "program (1, 0, 0) updated C[0] with an atomic over the plain store of program (0, 0, 0)" in race


def test_last_to_arrive_after_storing_is_ordered(found):
    case = found["last_reduces_after_acq_rel"]
    assert case["races"] == [] and case["value"] == 1 + 2 + 3 + 4


def test_counter_bumped_before_the_store_is_an_ordering_race(found):
    case = found["last_reduces_before_acq_rel"]
    assert case["value"] == 10  # right when programs run one after another...
    (race,) = case["races"]  # ...but program 3 reads program 0's partial, stored after its release
    assert race.startswith(
        "kernel last_reduces: program (3, 0, 0) read ws_ptr[0] (argument ws_ptr: 64 float32)"
    )
    assert "which program (0, 0, 0) stored in the same launch, but that store is not ordered" in race


def test_a_relaxed_counter_orders_nothing(found):
    (race,) = found["last_reduces_after_relaxed"]["races"]
    assert "read ws_ptr[0]" in race and "program (0, 0, 0)" in race
    assert len(found["last_reduces_before_relaxed"]["races"]) == 1


def test_a_spin_lock_orders_the_critical_sections_transitively(found):
    case = found["locked_rmw"]
    assert case["races"] == [] and case["value"] == 4


def test_writes_in_an_earlier_launch_are_never_races(found):
    assert found["two_launches"]["races"] == []


def test_elements_are_named_by_their_index_in_a_strided_output(found):
    (race,) = found["rmw_2d"]["races"]
    # grid (4, 2): program (0, 1) is the second split of tile 0; C is a column slice of a wider tensor
    assert race.startswith("kernel rmw_2d: program (0, 1, 0) read C[0, 0], which program (0, 0, 0)"), race
