"""`evolve report`: the HTML page of a run, loaded in a real browser (headless Chromium).

The store is built with Store itself from real Evaluation dicts shaped like a CPU demo run's (modelled
on model:h100: check, train and held-out shapes, fraction of peak and TFLOP/s; plus a few measured
cuda:* verdicts on a second backend), with failures, a provisional verdict, a pending candidate, a
crossover, bandit arms, lessons and an LLM call. Untrusted text (sources, notes, LLM answers) carries
HTML that would run if it were not escaped.

Chromium (Debian's `chromium`, installed by .ci/run) is required in CI (CI=true): missing, the browser
tests fail there; elsewhere they skip with the reason.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from evaluators.evaluation import Evaluation, ShapeResult
from evolve.report import add_report_parser, main_report, write_report
from evolve.store import Store

REPO = Path(__file__).resolve().parents[1]
JUDGE = "testjudge0000001"
MODEL, GPU = "model:h100", "cuda:FAKE H100"
TRAIN = [(4096, 4096, 4096), (8192, 4096, 4096), (16, 4096, 4096)]
HELD = [(5120, 5120, 5120)]
EVIL_NOTE = "tiles 64x64 <script>document.body.dataset.pwned='note'</script>"
EVIL_SOURCE = "</pre><img src=x onerror=\"document.body.dataset.pwned='source'\"><pre>"
EVIL_ANSWER = (
    "I changed the tiles.\n<script>document.body.dataset.pwned='answer'</script>\n```python\n...\n```"
)


def browser() -> str:
    """The Chromium binary; fails in CI when there is none, skips elsewhere."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: CI must install Debian's chromium (.ci/run does, with apt)")
    pytest.skip("chromium is not installed (apt-get install chromium): the report's browser test needs it")


def source(i: int, extra: str = "") -> str:
    return f"import triton\nimport triton.language as tl\n\n\ndef matmul(a, b):\n    return {i}\n{extra}"


def modelled(fit: float, status: str = "ok", stage: str = "verified", judge: str = JUDGE) -> dict:
    """A modelled verdict like the CPU judge's: check shapes (errors only), then training and held-out
    shapes with fraction of peak, TFLOP/s and the model's class error."""
    shapes = [
        ShapeResult((64, 64, 64), layout, "check", max_abs_err=0.1, max_scaled_err=0.002, tolerance=0.0078)
        for layout in ("nn", "nt")
    ]
    for kind, group in (("train", TRAIN), ("held_out", HELD)):
        for j, shape in enumerate(group):
            for layout in ("nn", "nt"):
                frac = fit * (0.1 if shape[0] == 16 else 1.0) * (1.0 + 0.05 * j)
                shapes.append(
                    ShapeResult(
                        shape,
                        layout,
                        kind,
                        tflops=989.0 * frac,
                        fraction_of_peak=frac,
                        bound="compute",
                        model_class="large",
                        model_error=0.23,
                    )
                )
    ok = status == "ok"
    return Evaluation(
        status,
        MODEL,
        fitness=fit if ok else 0.0,
        fitness_kind="modelled" if ok else "none",
        feedback="MODELLED (not measured) on h100"
        if ok
        else f"{status}: shape (16, 4096, 4096) <b>wrong</b>",
        shapes=shapes if ok else shapes[:2],
        seconds={"compile": 1.5, "model": 0.2},
        held_out=fit * 1.1 if ok else None,
        judge=judge,
        stage=stage,
        model_error=0.53 if ok else None,
    ).to_dict()


def measured(speedup: float) -> dict:
    shapes = [
        ShapeResult(
            s,
            "nn",
            "train",
            time_s=1e-3,
            torch_time_s=1e-3 * speedup * (1 + 0.1 * j),
            speedup=speedup * (1 + 0.1 * j),
            tflops=500.0,
        )
        for j, s in enumerate(TRAIN)
    ]
    return Evaluation(
        "ok",
        GPU,
        fitness=speedup,
        fitness_kind="measured",
        shapes=shapes,
        judge=JUDGE,
        stage="verified",
        held_out=speedup,
    ).to_dict()


def build_run(root: Path) -> tuple[Store, dict[str, int]]:
    """runs/rpt/run.sqlite under `root`, left open for writing (the run is "going")."""
    store = Store.create(root / "runs" / "rpt" / "run.sqlite", "rpt", {"task": "tasks/demo.toml"}, seed=1)
    ids: dict[str, int] = {}

    def add(key: str, parents: list[str], gen: int, island: int, note: str, extra: str = "", **kw) -> int:
        cid = store.add_candidate(
            source(len(ids), extra),
            parent_ids=[ids[p] for p in parents],
            proposer=kw.pop("proposer", "mutator"),
            island=island,
            generation=gen,
            note=note,
            **kw,
        )
        assert cid is not None
        ids[key] = cid
        return cid

    store.set_run_status("running")
    add("seed", [], 0, 0, "seed kernels/seeds/tiled_matmul.py", proposer="seed")
    store.add_evaluation(ids["seed"], modelled(0.156))
    plan = [  # key, parents, generation, island, fitness or failing status, stage
        ("a", ["seed"], 1, 0, 0.18, "verified"),
        ("b", ["seed"], 1, 1, "incorrect", ""),
        ("c", ["seed"], 1, 1, 0.12, "verified"),
        ("d", ["a"], 2, 0, "compile_error", ""),
        ("e", ["a"], 2, 0, 0.23, "verified"),
        ("f", ["c"], 2, 1, 0.21, "provisional"),
        ("g", ["c"], 2, 1, "rejected", ""),
        ("h", ["e", "c"], 3, 0, 0.25, "verified"),
        ("i", ["h"], 4, 0, 0.20, "verified"),
    ]
    best = {0: 0.156, 1: 0.156}
    for key, parents, gen, island, outcome, stage in plan:
        llm = key == "h"
        add(
            key,
            parents,
            gen,
            island,
            EVIL_NOTE if llm else f"change {key}",
            EVIL_SOURCE if llm else "",
            **({"proposer": "llm:<i>m</i>", "model": "m"} if llm else {}),
        )
        ev = modelled(outcome, stage=stage) if isinstance(outcome, float) else modelled(0.0, status=outcome)
        store.add_evaluation(ids[key], ev)
        fit = outcome if isinstance(outcome, float) else 0.0
        store.update_proposer_stats(
            "llm:<i>m</i>" if llm else "mutator", island, ev["status"], fit > best[island]
        )
        best[island] = max(best[island], fit)
    call = store.add_llm_call(
        proposer="llm:<i>m</i>",
        model="m",
        template="default",
        status="ok",
        edit_status="applied",
        prompt_tokens=900,
        completion_tokens=300,
        cost=0.01,
        latency_s=2.0,
        error="",
        answer=EVIL_ANSWER,
        island=0,
        parent_id=ids["e"],
    )
    store.set_llm_call_candidate(call, ids["h"])
    store.save_bandit(
        "arms",
        {
            "format": 1,
            "arms": [
                {"arm": "mutator", "weight": 1.0, "pulls": 8, "mean": 0.09, "m2": 0.1, "cost": 0.0},
                {"arm": "llm:<i>m</i>", "weight": 1.0, "pulls": 1, "mean": 0.2, "m2": 0.0, "cost": 0.01},
            ],
        },
    )
    store.add_lessons(1, 10, "Split-K helps skinny shapes. <script>alert(1)</script>")
    for key, speedup in (("seed", 0.9), ("e", 1.3)):  # a second, measured backend: never mixed in
        store.add_evaluation(ids[key], measured(speedup))
    add("queued", ["i"], 5, 0, "in flight", pending=True)
    # Spread the verdicts over ~10 minutes, as a run stores them (the test built them in milliseconds).
    with store.transaction():
        store.connection.execute("UPDATE evaluations SET created = created + 60 * id")
    return store, ids


@pytest.fixture
def live_run(tmp_path):
    store, ids = build_run(tmp_path)
    yield store, ids
    store.close()


def render_in_browser(page: Path, tmp: Path) -> tuple[str, np.ndarray]:
    """Load `page` in headless Chromium: the DOM after load (scripts run) and a 1200x3000 screenshot."""
    exe = browser()
    common = [
        exe,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={tmp / 'chromium-profile'}",
    ]
    url = page.resolve().as_uri()
    dom = subprocess.run(
        [*common, "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    shot = tmp / f"{page.stem}.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1200,3000", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    return dom, imread(shot)


def check_rendered(page: Path, tmp: Path, min_images: int) -> str:
    """The browser decoded every image of the page, ran no injected script, and painted a real page."""
    text = page.read_text(encoding="utf-8")
    sources = re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", text)
    assert len(sources) >= min_images, f"{len(sources)} figures in {page}"
    assert all(s.startswith("data:image/png;base64,") for s in sources), "an image is not inlined"
    assert not re.search(r"<(link|iframe|object|embed)\b|<script[^>]*\ssrc=", text), "the page loads an asset"
    dom, pixels = render_in_browser(page, tmp)
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert f'data-images="{len(sources)}/{len(sources)}"' in body, f"not every image decoded: {body}"
    assert "pwned" not in body, f"untrusted text ran as HTML: {body}"
    rgb = pixels[..., :3]
    q = (rgb * 255).astype(np.uint32)
    colours = np.unique((q[..., 0] << 16) | (q[..., 1] << 8) | q[..., 2])  # packed: fast on 3.6 M pixels
    assert rgb.std() > 0.05 and len(colours) > 50, "the screenshot is blank or nearly so"
    assert (rgb.mean(axis=2) < 0.9).mean() > 0.05, "the screenshot is almost all white"
    return dom


def test_report_renders_in_a_browser_while_the_run_is_going(live_run, tmp_path):
    store, ids = live_run
    page = write_report(store.path.parent, judge=JUDGE)
    assert page == store.path.parent / "report.html"
    text = page.read_text(encoding="utf-8")
    dom = check_rendered(page, tmp_path, min_images=5)  # progress, statuses, heatmap, lineage, proposers
    # The winner (#h, the crossover the LLM wrote) with its lineage back to the seed, its escaped source
    # and answer; untrusted HTML shows as text.
    assert f"Winner: #{ids['h']}" in text
    assert "&lt;script&gt;document.body.dataset.pwned=&#x27;note&#x27;&lt;/script&gt;" in text
    assert "&lt;/pre&gt;&lt;img src=x onerror=" in text and 'onerror="document' not in text
    assert "&lt;script&gt;document.body.dataset.pwned=&#x27;answer&#x27;" in text
    assert "<i>m</i>" not in text and "llm:&lt;i&gt;m&lt;/i&gt;" in text
    assert "I changed the tiles." in dom
    # One backend only: modelled, labelled, the measured one named and never plotted with it.
    assert "MODELLED" in text and "model:h100" in text and f"{GPU}: 2" in text
    # A snapshot of a live run: the pending candidate and the provisional verdict are said, not ranked.
    assert "still running" in text and re.search(r"pending \(queued, not judged yet\)</td><td>1<", text)
    assert "ok, provisional" in text
    # The writer still works after the read-only report: one more verdict shows in the next report.
    store.add_evaluation(ids["queued"], modelled(0.3))
    again = write_report(store.path.parent, tmp_path / "second.html", judge=JUDGE).read_text(encoding="utf-8")
    assert f"Winner: #{ids['queued']}" in again


def test_measured_backend_has_its_own_report(live_run, tmp_path):
    store, ids = live_run
    page = write_report(store.path, tmp_path / "measured.html", backend=GPU, judge=JUDGE)
    text = page.read_text(encoding="utf-8")
    assert "MEASURED" in text and "speedup over torch.matmul" in text and "MODELLED" not in text
    assert f"Winner: #{ids['e']}" in text and f"{MODEL}: " in text  # the modelled one named, not mixed in
    check_rendered(page, tmp_path, min_images=4)


def test_report_of_a_killed_run(live_run, tmp_path):
    """A writer SIGKILLed in the middle of a run leaves its WAL behind; the report reads it all."""
    store, ids = live_run
    store.close()
    script = textwrap.dedent(f"""
        import os, signal
        from evolve.store import Store
        s = Store.open({str(store.path)!r}, readonly=False)
        cid = s.add_candidate("def matmul(a, b):\\n    return 'last'\\n", parent_ids=[{ids["i"]}],
                              proposer="mutator", island=0, generation=5, note="last before the kill")
        s.add_evaluation(cid, {{"status": "timeout", "backend": {MODEL!r}, "fitness": 0.0}})
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    before = hashlib.sha256(store.path.read_bytes()).hexdigest()
    text = write_report(store.path.parent, judge=JUDGE).read_text(encoding="utf-8")
    assert "<td>timeout</td>" in text and "still running" in text
    assert hashlib.sha256(store.path.read_bytes()).hexdigest() == before  # read-only: the store is untouched


def test_empty_run_and_missing_backend(tmp_path):
    with Store.create(tmp_path / "e" / "run.sqlite", "e", {}, seed=0):
        pass
    text = write_report(tmp_path / "e", judge=JUDGE).read_text(encoding="utf-8")
    assert "No ranked kernel yet" in text and "Nothing to draw yet" in text and "<img" not in text
    with Store.open(tmp_path / "e" / "run.sqlite", readonly=False) as store:  # only failures so far
        cid = store.add_candidate(source(0), proposer="seed", island=0, generation=0)
        store.add_evaluation(cid, modelled(0.0, status="judge_error"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. matplotlib's "no artists with labels" for an empty legend
        text = write_report(tmp_path / "e", judge=JUDGE).read_text(encoding="utf-8")
    assert (
        text.count("<img") == 1
        and '<img alt="cumulative verdicts per status' in text
        and "judge_error" in text
    )
    store, _ = build_run(tmp_path / "other")
    store.close()
    from evolve.config import UsageError

    with pytest.raises(
        UsageError, match=r"backend 'cuda:NOPE' has no evaluations.*cuda:FAKE H100, model:h100"
    ):
        write_report(store.path.parent, backend="cuda:NOPE", judge=JUDGE)


def test_cli_entry_point(live_run, tmp_path, monkeypatch, capsys):
    store, _ = live_run
    monkeypatch.chdir(tmp_path)  # run_dir looks in ./runs
    parser = argparse.ArgumentParser(prog="evolve")
    add_report_parser(parser.add_subparsers(dest="command"))
    assert main_report(parser.parse_args(["report", "nope"])) == 2
    err = capsys.readouterr().err
    assert "error: no run named 'nope'; runs in runs/: rpt" in err  # lists what exists
    out = tmp_path / "out" / "r.html"
    assert main_report(parser.parse_args(["report", "rpt", "-o", str(out), "--top", "3"])) == 0
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out
    # Today's judge ranks: this run's verdicts (of the test's judge) are stale, so no winner is claimed.
    assert "No ranked kernel yet" in out.read_text(encoding="utf-8")
