"""The LLM proposer in the controller: real Ray actors (num_cpus=0) calling a scripted OpenAI-compatible
server on loopback through the real openai client; the judge is a stand-in pool that takes real time
(the end-to-end run with the real judge is tests/test_llm_run.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="needs ray (the LLM actors), which is not installed here")

from evaluators import load_task  # noqa: E402 - after the importorskip of ray
from evaluators.fingerprint import judge_fingerprint  # noqa: E402
from evolve.config import ConfigError, ProposerConfig, RunConfig, UsageError, load_run_config  # noqa: E402
from evolve.controller import MAX_BARREN_PROPOSALS, Controller  # noqa: E402
from evolve.pool import start_ray  # noqa: E402
from evolve.population import Population, PopulationConfig  # noqa: E402
from evolve.proposers.llm import LLMProposer, LLMProposerConfig  # noqa: E402
from evolve.proposers.mutator import OfflineMutator  # noqa: E402
from evolve.proposers.remote import RemoteProposer  # noqa: E402
from evolve.runner import make_proposers, parse_proposer_flags, take_keys  # noqa: E402
from evolve.store import Store  # noqa: E402
from evolve.ui import render_proposing_summary  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from llm_server import ScriptedServer  # noqa: E402

SEED_PATH = Path(__file__).resolve().parents[1] / "kernels" / "seeds" / "tiled_matmul.py"
SEED = SEED_PATH.read_text()
LARGE_OLD = "    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)"
LARGE_NEW = "    return dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)"
SKINNY_OLD = "        return dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4)"
SKINNY_NEW = "        return dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=5)"
KEY = "sk-test-not-a-real-key-0123456789"


def diff(old: str, new: str) -> str:
    return (
        f"Wider tiles for large shapes.\n```\n<<<<<<< SEARCH\n{old}\n=======\n{new}\n>>>>>>> REPLACE\n```\n"
    )


class TimedPool:
    """Judges each job in `seconds` of real time, as a pool of `workers` evaluators would; records when
    each job started (the controller's view: submit) and its options."""

    def __init__(self, workers: int, seconds: float) -> None:
        self.size, self.seconds = workers, seconds
        self.running: list = []  # (done at, job)
        self.started: list[tuple[float, object]] = []
        self.judge = judge_fingerprint()

    def idle_slots(self) -> int:
        return self.size - len(self.running)

    def in_flight(self) -> int:
        return len(self.running)

    def submit(self, job) -> None:
        self.running.append((time.monotonic() + self.seconds, job))
        self.started.append((time.time(), job))  # wall time, to compare with the store's call times

    def poll(self, timeout: float):
        if not self.running:
            return []
        first = min(t for t, _ in self.running)
        time.sleep(max(0.0, min(timeout, first - time.monotonic())))
        now, out = time.monotonic(), []
        for done_at, job in list(self.running):
            if done_at <= now:
                self.running.remove((done_at, job))
                fitness = 0.1 + job.candidate_id / 1000  # each child a little better than those before
                out.append((job.candidate_id, {
                    "status": "ok", "backend": "model:h100", "fitness": fitness, "fitness_kind": "modelled",
                    "feedback": "", "shapes": [], "compile": [], "seconds": {}, "provenance": {},
                    "judge": self.judge, "stage": job.options["stage"]}))  # fmt: skip
        return out


@pytest.fixture(scope="module")
def cluster():
    start_ray(None, 1)
    yield
    ray.shutdown()


def _run(tmp_path, server, *, llm_options=None, mutator=False, max_evals=4, pool=None, on_progress=None,
         **config_fields):  # fmt: skip
    settings = {"model": "test-model", "base_url": server.url, "max_retries": 1, "timeout_s": 5,
                **(llm_options or {})}  # fmt: skip
    concurrency = settings.pop("concurrency", 1)
    llm = LLMProposer(LLMProposerConfig(settings, 1.0, concurrency, ("default",)))
    llm.start(KEY)
    config = RunConfig(name="c", task="runs/demo_cpu.toml", seeds=(str(SEED_PATH),), max_evals=max_evals,
                       population=PopulationConfig(islands=1), **config_fields)  # fmt: skip
    store = Store.create(tmp_path / "run.sqlite", "c", config.to_dict(), 0)
    pool = pool or TimedPool(2, 0.05)
    sync = [(RemoteProposer(OfflineMutator()), 1.0)] if mutator else []  # in a Ray actor, as runs do
    controller = Controller(config, load_task(config.task), store, Population(config.population), sync, pool,
                            {}, "model:h100", on_progress, llms=[llm])  # fmt: skip
    try:
        reason = controller.run()
    finally:
        controller.proposing.shutdown()
    return controller, store, pool, reason


def test_every_answer_kind_is_recorded_and_applied_children_are_judged_in_their_parents_regions(
    cluster, tmp_path
):
    script = [
        {"text": diff(LARGE_OLD, LARGE_NEW)},
        {"text": "Here is the module:\n```python\n" + SEED.replace(SKINNY_OLD, SKINNY_NEW) + "```\n"},
        {"text": diff("import triton", "import triton  # edited")},  # outside every region
        {"text": "I would raise BLOCK_N for large shapes."},  # prose, no code
        {"status": 429, "headers": {"Retry-After": "0"}, "error": "slow down"},  # the client retries
        {"text": diff(LARGE_OLD, LARGE_OLD.replace("num_stages=3", "num_stages=4"))},
        {"text": diff(LARGE_OLD, LARGE_NEW[:30]), "finish_reason": "length"},
        {"status": 500, "error": "boom"},
        {"status": 500, "error": "boom"},  # the retry fails too: server_error
    ]
    # then prose for ever: a model whose answers never apply stops the run, it does not spin
    with ScriptedServer(script, default={"text": "I am not sure."}) as server:
        controller, store, pool, reason = _run(tmp_path, server, max_evals=20)
        requests = list(server.requests)
    assert reason == f"{MAX_BARREN_PROPOSALS} proposals in a row were duplicates or invalid"
    calls = store.llm_calls()
    outcome = [(c["status"], c["edit_status"]) for c in calls[:7]]
    assert outcome == [
        ("ok", "applied"), ("ok", "applied"), ("ok", "outside_evolve_block"), ("ok", "no_code"),
        ("ok", "applied"), ("truncated", "truncated"), ("server_error", ""),
    ]  # fmt: skip
    assert len(requests) >= 9  # the 429 and the first 500 were retried by the client
    assert all(r.authorization == f"Bearer {KEY}" for r in requests)
    children = [c for c in calls if c["candidate_id"]]
    assert len(children) >= 3 and {c["proposer"] for c in calls} == {"llm:test-model"}
    rows = store.candidates([c["candidate_id"] for c in children])
    assert all(r["proposer"] == "llm:test-model" and r["model"] == "test-model" for r in rows)
    assert LARGE_NEW in rows[0]["source"] and SKINNY_NEW in rows[1]["source"]
    assert (
        rows[0]["note"] == "Wider tiles for large shapes. (diff, 1 edit(s), test-model)"
    )  # what the model said
    # each LLM child was judged against its parent's EVOLVE-BLOCK regions
    jobs = {job.candidate_id: job for _, job in pool.started}
    parents = {r["id"]: store.candidate(r["parent_ids"][0])["source"] for r in rows}
    assert all(jobs[r["id"]].options.get("parent_source") == parents[r["id"]] for r in rows)
    assert parents[rows[0]["id"]] == SEED
    assert "outside the EVOLVE-BLOCK" in calls[2]["error"] or "outside" in calls[2]["error"]
    assert calls[0]["answer"].startswith("Wider tiles") and calls[0]["prompt_tokens"] > 0
    # the refused edit's reason reached a later prompt on the island
    later = " ".join(m["content"] for r in requests[4:] for m in r.body["messages"])
    assert "edit outside_evolve_block" in later
    # nothing of the key in what was stored
    raw = (tmp_path / "run.sqlite").read_bytes()
    assert KEY.encode() not in raw
    # each ok LLM child got constant sweeps of its own source (evolve/meta/sweeps.py) before its arm was paid
    evaluated = store.all_evaluated()
    swept = [r for r in evaluated if r["proposer"] == "sweep"]
    assert {r["parent_ids"][0] for r in swept} == {r["id"] for r in rows}
    for r in swept:
        child, parent = store.candidate(r["id"])["source"], store.candidate(r["parent_ids"][0])["source"]
        assert (
            r["note"].startswith("sweep: ")
            and sum(a != b for a, b in zip(child.split("\n"), parent.split("\n"), strict=True)) == 1
        )
    summary = render_proposing_summary(store)
    assert f"llm:test-model: {len(calls)} calls" in summary and "edits: applied 3" in summary
    assert "arms (pulls, mean reward, cost): llm:test-model|default" in summary
    bandit = store.load_bandit("arms")
    assert bandit and any(a["arm"] == "llm:test-model|default" and a["pulls"] >= 5 for a in bandit["arms"])


@pytest.mark.slow  # ~30 s: `make test-slow`, which CI runs too
def test_evaluators_stay_busy_while_slow_calls_are_in_flight(cluster, tmp_path):
    slow = {"text": diff(LARGE_OLD, LARGE_NEW), "delay_s": 1.5}
    with ScriptedServer([slow, slow], default={"text": "no code", "delay_s": 1.5}) as server:
        pool = TimedPool(2, 0.3)  # a Ray round trip to the mutator's actor is ~10 ms of each 300
        controller, store, _, reason = _run(tmp_path, server, mutator=True, max_evals=40, pool=pool,
                                            llm_options={"concurrency": 2})  # fmt: skip
    progress = controller.progress
    assert store.llm_totals()["calls"] >= 2
    lessons = store.all_lessons()  # distilled every 10 evaluations (evolve/proposing.py LESSONS_EVERY)
    assert [entry["version"] for entry in lessons] == list(range(1, len(lessons) + 1)) and len(lessons) >= 3
    assert lessons[-1]["text"].startswith("Lessons from")
    # while LLM calls were in flight, the mutator kept the evaluators judging
    assert progress.llm_window_s > 1.0
    assert progress.llm_idle_s < 0.3 * progress.llm_window_s, (progress.llm_idle_s, progress.llm_window_s)
    first = store.llm_calls()[0]
    window = (first["created"] - first["latency_s"], first["created"])
    judged_during = [t for t, _ in pool.started if window[0] <= t <= window[1]]
    assert len(judged_during) >= 5, (window, [t for t, _ in pool.started])


def test_the_run_stops_at_the_cost_cap_within_one_calls_cost(cluster, tmp_path):
    usage = {"prompt_tokens": 1000, "completion_tokens": 1000, "total_tokens": 2000}
    answer = {"text": "still thinking", "usage": usage}
    # $5 + $5 per million tokens: each call costs $0.01
    with ScriptedServer([], default=answer) as server:
        controller, store, _, reason = _run(
            tmp_path, server, max_evals=50, max_cost=0.035, llm_options={"price_in": 5.0, "price_out": 5.0}
        )
    totals = store.llm_totals()
    assert "budget is spent" in reason and "max_cost" in reason
    assert 0.035 <= totals["cost"] <= 0.035 + 0.01 + 1e-9


def test_repeated_failures_back_off_and_the_mutator_goes_on(cluster, tmp_path):
    with ScriptedServer([], default={"status": 500, "error": "down"}) as server:
        controller, store, _, reason = _run(
            tmp_path, server, mutator=True, max_evals=8, pool=TimedPool(2, 0.2)
        )
    assert reason == "max_evals 8 reached"
    assert store.llm_totals()["by_status"] == {"server_error": 3}  # then it backed off
    assert "backing off" in controller.progress.llm and "server_error" in controller.progress.llm


@pytest.mark.slow  # ~30 s (it waits out a backoff): `make test-slow`, which CI runs too
def test_an_endpoint_down_for_a_while_then_back(cluster, tmp_path, monkeypatch):
    """Down: 3 failed calls, the proposer backs off (said on the live line) while the mutator goes on;
    back: the LLM's proposals resume and become children; every call is in the store, in order."""
    import evolve.proposers.llm as llm_module

    monkeypatch.setattr(llm_module, "BACKOFF_FIRST_S", 1.0)  # the driver-side handle counts the failures
    lines: list[str] = []
    down = [{"status": 500, "error": "down"}] * 6  # 3 calls, each retried once by the client (max_retries 1)
    # an edit of a line the seed and every module the mutator renders share: it applies to any parent
    edit = diff("    c = acc.to(c_ptr.dtype.element_ty)", "    c = (acc * 1.0).to(c_ptr.dtype.element_ty)")
    with ScriptedServer(down, default={"text": edit}) as server:
        controller, store, _, reason = _run(
            tmp_path, server, mutator=True, max_evals=14, pool=TimedPool(2, 1.0),
            on_progress=lambda p: lines.append(p.llm),
        )  # fmt: skip
    assert reason == "max_evals 14 reached"
    calls = sorted(store.llm_calls(), key=lambda c: c["id"])
    assert [c["status"] for c in calls[:3]] == ["server_error"] * 3 and calls[3]["status"] == "ok"
    assert calls[3]["created"] - calls[2]["created"] >= 1.0  # it waited out the pause before calling again
    assert any("backing off" in line and "server_error" in line for line in lines)
    assert not any("backing off" in line for line in lines[-3:])  # and the live line says it is over
    back = calls[3:]  # proposals again: each answer applied as a child or refused with its reason
    assert back and all(c["status"] == "ok" and c["edit_status"] for c in back), [
        c["edit_status"] for c in back
    ]
    children = {r["id"] for r in store.all_evaluated() if r["proposer"] == "llm:test-model"}
    assert {c["candidate_id"] for c in back if c["edit_status"] == "applied"} - {None} <= children
    assert children, [c["edit_status"] for c in back]
    mutated = [r for r in store.all_evaluated() if r["proposer"] == "mutator"]
    assert mutated  # the mutator went on while the endpoint was down


# ------------------------------------------------------------------------------------ configuration


def _write(tmp_path, proposers: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(f'[run]\nname = "x"\ntask = "runs/demo_cpu.toml"\n\n{proposers}')
    return path


def test_run_file_llm_proposers_are_checked_field_by_field(tmp_path):
    good = _write(tmp_path, '[[proposers]]\nkind = "llm"\nmodel = "m"\nconcurrency = 2\nprice_in = 0.5\n'
                            '\n[[proposers]]\nkind = "mutator"\n')  # fmt: skip
    config = load_run_config(good)
    assert [p.kind for p in config.proposers] == ["llm", "mutator"]
    cases = {
        '[[proposers]]\nkind = "llm"\n': "needs model",
        '[[proposers]]\nkind = "llm"\nmodel = "m"\nmodle = 1\n': "unknown field(s) ['modle']",
        '[[proposers]]\nkind = "llm"\nmodel = "m"\napi_key = "sk-abc"\n': "never put an API key",
        '[[proposers]]\nkind = "llm"\nmodel = "m"\nconcurrency = "4"\n': "proposers[0].concurrency' must be a int",
        '[[proposers]]\nkind = "llm"\nmodel = "m"\nconcurrency = 0\n': "at least 1",
        '[[proposers]]\nkind = "mutator"\nmodel = "m"\n': "(mutator) has unknown field(s) ['model']",
        '[[proposers]]\nkind = "llm"\nmodel = "m"\ntemplates = ["fancy"]\n': "names ['fancy']; the templates are",
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError, match=None) as err:
            load_run_config(_write(tmp_path, text))
        assert message in str(err.value) and "run.toml" in str(err.value)


def test_auto_uses_the_llm_only_with_a_model_and_a_key_and_says_why(tmp_path):
    config = RunConfig(name="x", task="t", proposers=(ProposerConfig("auto", 1.0, {"model": "m"}),))
    sync, llms, notes = make_proposers(config, environ={})
    assert [p.name for p, _ in sync] == ["mutator"] and llms == []
    assert "offline mutator" in notes[0] and "OPENAI_API_KEY" in notes[0]
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    sync, llms, notes = make_proposers(config, environ=env)
    assert sync == [] and llms[0].settings["base_url"] == "http://127.0.0.1:9/v1"
    assert "the LLM m at http://127.0.0.1:9/v1" in notes[0] and KEY not in notes[0]


def test_keys_leave_the_environment_before_ray_starts_and_a_missing_one_is_named():
    config = RunConfig(name="x", task="t", proposers=parse_proposer_flags(["llm:m", "mutator"]))
    _, llms, _ = make_proposers(config, environ={})
    env = {"OPENAI_API_KEY": KEY, "OTHER_API_KEY": "sk-other-123456789", "PATH": "/bin"}
    assert take_keys(llms, env) == {"OPENAI_API_KEY": KEY}
    assert env == {"PATH": "/bin"}
    with pytest.raises(UsageError, match="OPENAI_API_KEY, which is not set"):
        take_keys(llms, {})
    with pytest.raises(UsageError, match="--proposer gpt"):
        parse_proposer_flags(["gpt"])


def test_the_key_reaches_the_llm_actor_by_a_call_never_by_its_environment(cluster):
    llm = LLMProposer(LLMProposerConfig({"model": "m", "base_url": "http://127.0.0.1:9/v1"}))
    llm.start(KEY)
    try:
        assert KEY not in ray.get(llm.actor.environ.remote())
    finally:
        llm.shutdown()


VARIANT = """VARIANT-MARKER: think about tile occupancy first.
$task_summary
$parent_figures
```python
$parent_source
```
$failures
$lessons
$evolve_regions
Answer with SEARCH/REPLACE blocks.
"""


def test_prompt_variants_are_written_kept_tried_and_exported(cluster, tmp_path, monkeypatch, capsys):
    from evolve.cli import main
    from evolve.meta import prompt_evolution

    monkeypatch.setattr(prompt_evolution, "EVOLVE_EVERY", 3)
    # one answer for every request: a kernel request finds no code in it, a variant request a template
    answer = {"text": f"A clearer prompt:\n```markdown\n{VARIANT}```\n"}
    with ScriptedServer([], default=answer) as server:
        controller, store, _, reason = _run(tmp_path, server, max_evals=10, llm_options={"concurrency": 2})
        requests = list(server.requests)
    variants = store.prompt_variants()
    assert variants and variants[0]["id"] == "v1" and variants[0]["base"] == "default"
    assert variants[0]["text"].startswith("VARIANT-MARKER")
    calls = store.llm_calls()
    assert any(
        c["edit_status"] == "prompt_variant" and c["template"] == "prompt-evolution:default" for c in calls
    )
    asked = [r for r in requests if "improve the prompt templates" in r.body["messages"][0]["content"]]
    assert asked and "$parent_source" in asked[0].body["messages"][-1]["content"]
    # the variant became an arm and was tried: a later kernel prompt is the variant's text
    assert any(a["arm"] == "llm:test-model|v1" and a["pulls"] > 0 for a in store.load_bandit("arms")["arms"])
    assert any(r.body["messages"][-1]["content"].startswith("VARIANT-MARKER") for r in requests)
    # a variant that drops the parent's source is refused, with the reason recorded
    text, why = prompt_evolution.variant_from_answer("```markdown\nno placeholders\n```", "base")
    assert text is None and "$parent_source" in why
    store.close()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "c").mkdir(parents=True)
    (tmp_path / "run.sqlite").rename(tmp_path / "runs" / "c" / "run.sqlite")
    assert main(["export-prompts", "c"]) == 0
    written = capsys.readouterr().out.split(":")[0]
    assert Path(written).read_text().startswith(("VARIANT-MARKER", "Make this Triton"))
    good = _write(tmp_path, f'[[proposers]]\nkind = "llm"\nmodel = "m"\ntemplates = ["file:{written}"]\n')
    assert load_run_config(good).proposers[0].options["templates"] == [f"file:{written}"]
