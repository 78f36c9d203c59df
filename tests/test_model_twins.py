"""The model ranks what was compiled and what ran (issue 11): twins that must model alike, and
kernels whose names, claims or idle programs must not lift them.

Each twin is the seed (kernels/seeds/tiled_matmul.py) with one textual change, judged by the real
judge on small tasks: a renamed kernel, a num_stages claim the compiled loop does not keep,
programs that exit at once, a dot in fp32. The decoy-dot case (a dot on a masked-off tile, the
main loop on CUDA cores) is tests/test_judge_cases.py's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluators import Task, evaluate

SEED = (Path(__file__).resolve().parents[1] / "kernels" / "seeds" / "tiled_matmul.py").read_text()
# Compile facts price these (the cheap stage): one compute-bound and one skinny training shape.
COMPILED = Task(name="twins", dtype="bf16", layouts=("nn",), train=((2048, 2048, 2048), (16, 2048, 2048)),
                held_out=(), check=((64, 64, 64),), trials=1, fresh=0)  # fmt: skip
# Executed work prices these (the expensive stage runs every program): 16 and 8 tiles of C.
SMALL = Task(name="ran", dtype="bf16", layouts=("nn",), train=((256, 256, 256), (16, 512, 512)),
             held_out=(), check=((64, 64, 64),), trials=1, fresh=0)  # fmt: skip
# One compute-heavier shape, run whole at a reduced K (256 programs) and sampled at its full K.
MID = Task(name="mid", dtype="bf16", layouts=("nn",), train=((2048, 2048, 512),), held_out=(),
           check=((64, 64, 64),), trials=1, fresh=0)  # fmt: skip
VERIFY = {"stage": "verified", "verify_programs": 512, "verify_sample_s": 20.0}


def _twin(*edits: tuple[str, str]) -> str:
    source = SEED
    for old, new in edits:
        assert old in source, f"the seed no longer holds {old!r}: update this twin"
        source = source.replace(old, new)
    return source


def _judge(source: str, task: Task, **options):
    ev = evaluate(source, task, device="cpu", memo=False, **options)
    assert ev.ok, ev.feedback
    return ev


def _one_config(warps: int, stages: int) -> tuple[str, str]:
    """pick_config returning one config for every shape (the seed's large one, other warps/stages)."""
    return ("    if M <= 64:", f"    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, "
            f"num_warps={warps}, num_stages={stages})\n    if M <= 64:")  # fmt: skip


def test_a_name_is_not_a_fact():
    """A kernel that cannot use wgmma (2 warps: no warpgroup) named ..._wgmma_... models as its
    plainly named twin: facts come from PTX instruction lines, never from symbol names."""
    plain = _judge(_twin(_one_config(2, 3)), COMPILED)
    renamed = _judge(_twin(_one_config(2, 3), ("matmul_kernel", "matmul_wgmma_sm90a_tma_kernel")), COMPILED)
    assert renamed.fitness == pytest.approx(plain.fitness, rel=1e-6)
    assert not any(k.get("uses_wgmma") for k in renamed.compile), renamed.compile
    assert not any(k.get("uses_tma") for k in renamed.compile)


def test_a_stages_claim_is_not_a_pipeline():
    """num_stages=4 at the launch while the loop says tl.range(..., num_stages=1): nothing is copied
    asynchronously, so it models as the honest num_stages=1 launch, below the pipelined seed."""
    loop = (
        "for k in range(0, tl.cdiv(K, BLOCK_K)):",
        "for k in tl.range(0, tl.cdiv(K, BLOCK_K), num_stages=1):",
    )
    claim = _judge(_twin(_one_config(8, 4), loop), COMPILED)
    honest = _judge(_twin(_one_config(8, 1), loop), COMPILED)
    pipelined = _judge(_twin(_one_config(8, 4)), COMPILED)
    assert {k["pipeline_stages"] for k in claim.compile} == {1}
    assert claim.fitness == pytest.approx(honest.fitness, rel=0.02)
    assert claim.fitness < 0.9 * pipelined.fitness
    assert max(k["pipeline_stages"] for k in pipelined.compile) >= 3


def test_idle_programs_cost_their_launch_only():
    """Three of every four programs exit at once (a grid 4x the tiles): from the grid it reads as
    split-K 4; priced by what ran, it models as its twin that launches one program per tile."""
    idle = _twin(
        ("    pid = tl.program_id(0)\n", "    pid_raw = tl.program_id(0)\n    pid = pid_raw // 4\n"),
        ("for k in range(0, tl.cdiv(K, BLOCK_K)):",
         "for k in range(0, tl.cdiv(K, BLOCK_K) * (pid_raw % 4 == 0).to(tl.int32)):"),
        ("mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))",
         "mask=(offs_m[:, None] < M * (pid_raw % 4 == 0).to(tl.int32)) & (offs_n[None, :] < N))"),
        ('grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]),)',
         'grid = (4 * triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]),)'),
    )  # fmt: skip
    honest = _judge(SEED, SMALL, **VERIFY)
    ran = _judge(idle, SMALL, **VERIFY)
    rows = ran.provenance["executed_work"]
    assert all(call["working"] * 4 == call["programs"] for row in rows for call in row["calls"]), rows
    assert 0.9 * honest.fitness <= ran.fitness <= honest.fitness * 1.001, (ran.fitness, honest.fitness)
    compiled_only = _judge(idle, SMALL)  # provisional: the grid is all the model knows
    assert compiled_only.stage == "provisional"
    assert abs(compiled_only.fitness - honest.fitness) > abs(ran.fitness - honest.fitness)


def test_a_dot_in_fp32_is_priced_at_the_cuda_core_rate():
    """An honest path whose dot runs in fp32 (operands upcast, IEEE) is priced at the fp32 CUDA-core
    rate, not at the task's bf16 tensor-core rate."""
    fp32 = _twin(("acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)",
                  'acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")'))  # fmt: skip
    seed = _judge(SEED, COMPILED)
    slow = _judge(fp32, COMPILED)
    assert any(d["precision"] == "ieee" for k in slow.compile for d in k.get("dots", [])), slow.compile
    big = {tuple(s.shape): s for s in slow.shapes if s.kind == "train"}[(2048, 2048, 2048)]
    assert big.tflops < 67  # H100's fp32 CUDA-core peak (datasheet 66.9 TFLOP/s)
    assert slow.fitness < 0.5 * seed.fitness


def test_cuda_core_arithmetic_is_counted_and_a_folded_add_is_not():
    """`acc += tl.dot(a, b)` compiles into the dot's accumulator (free); the same product as
    multiply-and-sum on CUDA cores is counted, priced at the fp32 rate and models far below."""
    folded = _twin(("acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)",
                    "acc += tl.dot(a, b, input_precision=DOT_PRECISION)"))  # fmt: skip
    cores = _twin(("acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)",
                   "acc += tl.sum(a.to(tl.float32)[:, :, None] * b.to(tl.float32)[None, :, :], axis=1)"))  # fmt: skip
    dot = _judge(folded, MID, **VERIFY)
    cuda = _judge(cores, MID, **VERIFY)
    calls = [call for row in dot.provenance["executed_work"] for call in row["calls"]]
    assert all(call["cuda_gflop"] == 0 and call["dot_gflop"] > 0 for call in calls), calls
    calls = [call for row in cuda.provenance["executed_work"] for call in row["calls"]]
    assert all(call["cuda_gflop"] > 0 for call in calls), calls
    assert cuda.fitness < 0.5 * dot.fitness


def test_instruction_facts_read_instruction_lines_only():
    """wgmma and TMA are PTX instructions, predicated or not (TMA is issued by one thread:
    `@%p7 cp.async.bulk.tensor...`); a symbol or a comment that names them is not one."""
    from evaluators.compile import compiled_facts

    def facts(ptx: str) -> dict:
        return compiled_facts({"ptx": ptx, "ttir": ""}, 0, 4, 3)

    names = (
        ".visible .entry matmul_wgmma_tma_kernel(\n// cp.async.bulk.tensor in a comment\n\tmov.u32 %r1, 0;\n"
    )
    assert not facts(names)["uses_wgmma"] and not facts(names)["uses_tma"]
    issued = (
        "\t@%p7 cp.async.bulk.tensor.2d.shared::cta.global.mbarrier::complete_tx::bytes [%r19], [%rd18];\n"
        "\twgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%r1}, %rd20, %rd21, %p29, 1, 1, 0, 1;\n"
    )
    assert facts(issued)["uses_wgmma"] and facts(issued)["uses_tma"]
    assert facts(issued)["pipeline_stages"] == 1  # no TTGIR given: nothing copied asynchronously
