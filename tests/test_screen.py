"""evolve/screen.py on a real local Ray cluster that declares one GPU: CPU actors screen each candidate
with the real CPU judge; what is wrong for good never reaches the GPU actor, the rest does, placed
with num_gpus=1 (Ray hands it GPU 0) and given the job as submitted; screened candidates wait for the
GPU in a bounded queue (backpressure). The GPU actor is a stand-in (no GPU here), clearly named."""

import dataclasses
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="needs ray (the worker pool), which is not installed here")

from evaluators import EvalOptions, Evaluation, Task  # noqa: E402 - after the importorskip of ray
from evolve.pool import EvaluatorActor, Job, WorkerPool  # noqa: E402
from evolve.screen import ScreenedPool, screen_options, with_screen  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the stand-in travels by value

pytestmark = pytest.mark.slow  # a Ray cluster and the real CPU judge: ~1 min
SEED = (Path(__file__).resolve().parents[1] / "kernels" / "seeds" / "tiled_matmul.py").read_text()
TINY = Task(name="tiny", dtype="fp16", layouts=("nn",), train=((1024, 1024, 1024),), held_out=(),
            check=((32, 40, 48),), trials=1)  # fmt: skip
BACKEND = "cuda:GPU STAND-IN"
WRONG = "import torch\n\n\ndef matmul(a, b):\n    return torch.matmul(a, b)  # no Triton kernel at all\n"


class GpuStandIn(EvaluatorActor):
    """Stands in for the GPU judge: waits until the test's release file exists, then answers ok with
    what it was given (the job's options) and the GPU ids Ray assigned it."""

    release: str = ""

    def evaluate(self, job: Job) -> dict:
        deadline = time.monotonic() + 120
        while self.release and not Path(self.release).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        verdict = Evaluation("ok", BACKEND, 1.0, "measured", stage="verified").to_dict()
        verdict["provenance"] = {
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "device": job.options["device"],
        }
        return verdict


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ray.init(address="local", num_cpus=3, num_gpus=1, include_dashboard=False)
    yield tmp_path_factory.mktemp("screen")
    ray.shutdown()


def _job(cid: int, source: str) -> Job:
    options = dataclasses.asdict(EvalOptions(device="cuda", timeout_s=120))
    return Job(cid, source, TINY.to_dict(), options)


def test_screen_options_are_the_cpu_judges_cheap_stage():
    options = dataclasses.asdict(EvalOptions(device="cuda", timeout_s=77))
    assert screen_options(options) == {**options, "device": "cpu", "stage": "provisional"}


def test_wrong_candidates_stop_at_the_screen_and_the_rest_wait_for_the_gpu(cluster):
    release = cluster / "release"
    stand_in = type("GpuStandInHeld", (GpuStandIn,), {"release": str(release)})
    pool = ScreenedPool(WorkerPool(2, use_gpus=False), WorkerPool(1, use_gpus=True, actor=stand_in), BACKEND)
    try:
        assert pool.size == 1 and pool.idle_slots() == 2
        pool.submit(_job(1, WRONG))
        pool.submit(_job(2, SEED))
        results, deadline = [], time.monotonic() + 300
        while not results and time.monotonic() < deadline:
            results += pool.poll(0.5)
        # #1's screen slot is free again; so is #2's if it passed the screen in the same poll (it is then
        # held on the GPU): which of the two depends on the machine's load, not on the pool
        assert pool.idle_slots() == (1 if pool.screened["passed"] == 0 else 2)
        pool.submit(_job(3, SEED + "\n# another\n"))
        while pool.screened["passed"] < 2 and time.monotonic() < deadline:
            results += pool.poll(0.5)
            if pool.passed:  # a screened candidate waits for the GPU: the screen takes nothing new
                assert pool.idle_slots() == 0
        # #1 was found wrong by the screen: recorded on the run's backend, never on the GPU.
        assert [cid for cid, _ in results] == [1], results
        verdict = results[0][1]
        assert verdict["status"] == "rejected" and verdict["backend"] == BACKEND
        assert verdict["feedback"].startswith("found by the CPU screen, before any GPU time: ")
        assert verdict["provenance"]["screen"] == "cpu"
        # #2 and #3 passed: one on the GPU (held there), one waiting, so no new job is taken.
        assert len(pool.passed) == 1 and pool.idle_slots() == 0 and pool.in_flight() == 2
        release.touch()
        while len(results) < 3 and time.monotonic() < deadline:
            results += pool.poll(0.5)
        gpu = dict(results[1:])
        assert sorted(gpu) == [2, 3]
        for v in gpu.values():  # placed with num_gpus=1: Ray gave the actor GPU 0; the job as submitted
            assert v["status"] == "ok" and v["provenance"]["gpu_ids"] == ["0"]
            assert v["provenance"]["device"] == "cuda"
        assert pool.in_flight() == 0 and pool.idle_slots() == 2
        assert pool.screened == {"final": 1, "passed": 2}
        assert pool.judge()  # both pools run one judge
    finally:
        pool.shutdown()


def test_with_screen_sizes_the_screen_to_the_cpus_beside_the_gpus(cluster, capsys):
    gpus = WorkerPool(1, use_gpus=True, actor=GpuStandIn)
    try:
        assert with_screen(gpus, 0, "cuda", 1, BACKEND) is gpus  # none asked for
        assert with_screen(gpus, 2, "cpu", 1, BACKEND) is gpus  # a CPU run's judge is its screen
        assert "applies to GPU runs" in capsys.readouterr().out
        screened = with_screen(gpus, 5, "cuda", 1, BACKEND)  # 3 CPUs, 1 taken by the GPU actor
        assert isinstance(screened, ScreenedPool) and screened.screen.size == 2
        assert "5 screen workers asked, the cluster has 2 CPU(s)" in capsys.readouterr().err
        screened.screen.shutdown()
    finally:
        gpus.shutdown()


class NamedGpuStandIn(GpuStandIn):
    """A GPU worker stand-in that names its GPU as a real one would (`EvaluatorActor.backend`)."""

    def backend(self, task: dict, options: dict) -> str:
        return BACKEND


def test_the_gpu_workers_name_the_runs_backend(cluster):
    """The driver may have no GPU (or another one): on a GPU run the backend label is the workers'.
    Here the real EvaluatorActor.backend on a worker Ray gave a GPU that CUDA cannot see is refused
    with the fix; a stand-in naming its GPU gives the label."""
    from evolve.config import UsageError
    from evolve.runner import gpu_backend

    options = dataclasses.asdict(EvalOptions(device="cuda"))
    for actor, check in ((GpuStandIn, "refused"), (NamedGpuStandIn, BACKEND)):
        pool = WorkerPool(1, use_gpus=True, actor=actor)
        try:
            labels = pool.backends(TINY.to_dict(), options)
        finally:
            pool.shutdown()
        if check == "refused":
            assert labels == ["cuda:?"]
            with pytest.raises(UsageError, match="sees no CUDA device"):
                gpu_backend(labels)
        else:
            assert gpu_backend(labels) == BACKEND
