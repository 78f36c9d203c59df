"""What the performance model costs per candidate once the compile facts exist.

Target (issue 3): < 1 s per candidate after compile. A candidate on runs/llm_bf16.toml
has 24 training shapes x 3 layouts = 72 modelled entry-point calls.
"""

from evaluators import load_task
from evaluators.model.constants import GPUS
from evaluators.model.launch import launch_from_facts
from evaluators.model.perf_model import estimate_shape, modelled_fitness

# Compile facts of the seed's large-tile kernel for sm_90 (what evaluators/compile.py records).
FACTS = {"shared": 98304, "num_warps": 8, "num_stages": 3, "uses_wgmma": True, "uses_tma": False,
         "atomics": False, "regs": 116, "spill_bytes": 0,
         "dots": [{"precision": "tf32", "a": "bf16", "b": "bf16", "tile": [128, 128, 64]}]}  # fmt: skip


def _model_all(task):
    estimates = []
    for M, N, K in task.train:
        for _layout in task.layouts:
            grid = [-(-M // 128) * -(-N // 128)]
            estimates.append(
                estimate_shape([launch_from_facts(FACTS, grid)], (M, N, K), "bf16", GPUS["h100"])
            )
    return modelled_fitness(estimates)


def test_model_cost_per_candidate(benchmark):
    task = load_task("runs/llm_bf16.toml")
    fitness = benchmark(_model_all, task)
    assert 0 < fitness < 1
