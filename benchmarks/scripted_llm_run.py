"""An `evolve run` with the LLM proposer against the scripted OpenAI-compatible server: the figures the
LLM proposer's closing note reports (calls, failures by kind, tokens, proposals that applied, their
verdicts, and evaluator idle time while calls were in flight).

    python benchmarks/scripted_llm_run.py [--evals 24] [--seed 1] [--out DIR]

Everything is real except the model: the CLI, a local Ray cluster, the judge (CPU: the labelled
performance model ranks, figures are MODELLED), the openai client talking HTTP to tests/llm_server.py
on loopback, which replays answers drawn (under --seed) from what real endpoints send: valid
SEARCH/REPLACE edits, a whole module, an edit outside the EVOLVE-BLOCKs, prose without code, a SEARCH
text that is not there, 429 with Retry-After, 500, and a truncated answer, each after 1-5 s.
Minutes on 2 cores; not part of `make bench` (its figures are counts, not timings to compare).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from llm_server import ScriptedServer  # noqa: E402
from tiny_run import SEED, write_run  # noqa: E402

from evolve.store import Store  # noqa: E402 - after the path

SKINNY = "        return dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4)"
LARGE = "    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)"
RUN_TAIL = """
[[proposers]]
kind = "mutator"
[[proposers]]
kind = "llm"
model = "scripted"
concurrency = 2
max_retries = 1
price_in = 0.15
price_out = 0.60
[population]
islands = 2
"""


def _diff(old: str, new: str) -> str:
    return f"Changed a config.\n```\n<<<<<<< SEARCH\n{old}\n=======\n{new}\n>>>>>>> REPLACE\n```"


def answers(rng: random.Random, n: int) -> list[dict]:
    """`n` scripted answers drawn from the kinds real endpoints send (tests/llm_server.py's keys)."""
    source = SEED.read_text()
    smaller = SKINNY.replace("BLOCK_M=32, BLOCK_N=64, BLOCK_K=64", "BLOCK_M=16, BLOCK_N=16, BLOCK_K=128")
    kinds = [
        {"text": _diff(SKINNY, smaller.replace("num_warps=4", "num_warps=2")), "delay_s": 3},
        {"text": _diff(LARGE, LARGE.replace("num_stages=3", "num_stages=4")), "delay_s": 2},
        {"text": _diff(LARGE, LARGE.replace("BLOCK_N=128", "BLOCK_N=256")), "delay_s": 4},
        {
            "text": "Here:\n```python\n"
            + source.replace(SKINNY, SKINNY.replace("GROUP_M=8", "GROUP_M=4"))
            + "```",
            "delay_s": 5,
        },  # fmt: skip
        {"text": _diff("import triton", "import os\nimport triton"), "delay_s": 2},  # outside the regions
        {"text": "I would try larger tiles.", "delay_s": 1},  # prose, no code
        {"text": _diff("    return dict(BLOCK_M=999)", "x"), "delay_s": 2},  # SEARCH text not there
        {"status": 429, "headers": {"Retry-After": "1"}, "error": "slow down"},
        {"status": 500, "error": "boom"},
        {"text": _diff(LARGE, LARGE[:40]), "finish_reason": "length", "delay_s": 3},
    ]
    return [rng.choice(kinds) for _ in range(n)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evals", type=int, default=24, help="the run's max_evals")
    parser.add_argument("--seed", type=int, default=1, help="the run's seed and the script's draw")
    parser.add_argument("--out", help="folder for the run (default: a temporary one)")
    args = parser.parse_args()
    folder = Path(args.out or tempfile.mkdtemp(prefix="scripted-llm-run-"))
    folder.mkdir(parents=True, exist_ok=True)
    write_run(folder, seed=args.seed, max_evals=args.evals, name="m", tail=RUN_TAIL)
    with ScriptedServer(answers(random.Random(args.seed), 400)) as server:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": "sk-scripted-0123456789",
               "OPENAI_BASE_URL": server.url}  # fmt: skip
        started = time.time()
        out = subprocess.run([sys.executable, "-m", "evolve.cli", "run", "run.toml"], cwd=folder, env=env,
                             capture_output=True, text=True, timeout=3600)  # fmt: skip
        wall, requests = time.time() - started, len(server.requests)
    if out.returncode != 0:
        print(out.stdout[-3000:], out.stderr[-3000:], sep="\n")
        return out.returncode
    with Store.open(folder / "runs" / "m" / "run.sqlite", readonly=True) as store:
        calls = store.llm_calls()
        rows = store.all_evaluated()
        bandits = store.bandits()
    children = {r["id"]: r for r in rows}
    report = {
        "wall_s": round(wall),
        "http_requests": requests,
        "llm_calls": len(calls),
        "call_status": dict(Counter(c["status"] for c in calls)),
        "edit_status": dict(Counter(c["edit_status"] for c in calls)),
        "tokens_in": sum(c["prompt_tokens"] for c in calls),
        "tokens_out": sum(c["completion_tokens"] for c in calls),
        "cost_usd": sum(c["cost"] for c in calls),
        "applied_children_verdicts": dict(
            Counter(children[c["candidate_id"]]["status"] for c in calls if c["candidate_id"] in children)
        ),  # fmt: skip
        "verdicts_by_proposer": {
            f"{p} {s}": n for (p, s), n in Counter((r["proposer"], r["status"]) for r in rows).items()
        },  # fmt: skip
        "best_modelled": max(
            ((r["fitness"], r["proposer"]) for r in rows if r["status"] == "ok"), default=None
        ),
        "seed_modelled": next((r["fitness"] for r in rows if r["proposer"] == "seed"), None),
        "bandits": {
            k: {a["arm"]: [a["pulls"], round(a["mean"], 3)] for a in v["arms"]} for k, v in bandits.items()
        },
        "idle_line": next((line for line in out.stdout.splitlines() if "evaluators idle" in line), ""),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
