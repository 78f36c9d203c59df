"""evolve/screen.py without Ray: two in-process pools behind the pool interface (test doubles, named
so), to follow the screen's bookkeeping exactly: what is final at the screen, what waits for a GPU,
and a screen that loses its last actor (its candidates go straight to the GPUs, none lost)."""

from evolve.pool import Job, PoolExhausted
from evolve.screen import ScreenedPool

BACKEND = "cuda:STAND-IN"


class ListPool:
    """A pool double: `slots` workers; a job's verdict is `verdicts[candidate_id]` (default ok) and
    comes back at the next poll; `exhaust` makes the next poll raise PoolExhausted as WorkerPool does
    when its last actor is gone."""

    def __init__(self, slots: int, verdicts: dict | None = None) -> None:
        self.slots, self.verdicts, self.busy, self.exhaust, self.seen = slots, verdicts or {}, [], False, []
        self.size = slots

    def idle_slots(self) -> int:
        return self.slots - len(self.busy)

    def in_flight(self) -> int:
        return len(self.busy)

    def waiting_on(self) -> list:
        return []

    def submit(self, job: Job, attempt: int = 1) -> None:
        self.busy.append(job)
        self.seen.append((job.candidate_id, job.options["device"]))

    def poll(self, timeout: float) -> list:
        if self.exhaust:
            raise PoolExhausted("no evaluator left")
        done, self.busy = self.busy, []
        return [
            (j.candidate_id, {"status": self.verdicts.get(j.candidate_id, "ok"), "feedback": "f"})
            for j in done
        ]

    def shutdown(self) -> None:
        self.busy = []


def job(cid: int) -> Job:
    return Job(cid, f"# {cid}", {}, {"device": "cuda", "stage": "verified"})


def test_final_verdicts_stop_at_the_screen_and_the_rest_go_on_with_their_job():
    screen, gpus = ListPool(2, {1: "incorrect", 2: "unsupported"}), ListPool(1)
    pool = ScreenedPool(screen, gpus, BACKEND)
    pool.submit(job(1))
    pool.submit(job(2))
    assert screen.seen == [(1, "cpu"), (2, "cpu")] and pool.idle_slots() == 0
    (final,) = pool.poll(0)  # 1 is final; 2 (the CPU cannot run it) goes to the GPU
    assert final[0] == 1 and final[1]["backend"] == BACKEND and final[1]["status"] == "incorrect"
    assert gpus.seen == [(2, "cuda")]  # the job as submitted
    assert pool.poll(0) == [(2, {"status": "ok", "feedback": "f"})]
    assert pool.screened == {"final": 1, "passed": 1} and pool.in_flight() == 0


def test_a_screen_without_workers_is_dropped_and_its_candidates_reach_the_gpus():
    screen, gpus = ListPool(2), ListPool(2)
    pool = ScreenedPool(screen, gpus, BACKEND)
    pool.submit(job(1))
    pool.submit(job(2))
    screen.exhaust = True
    assert pool.poll(0) == [] and pool.screen is None
    assert sorted(cid for cid, _ in gpus.seen) == [1, 2] and pool.in_flight() == 2  # none lost
    assert sorted(cid for cid, _ in pool.poll(0)) == [1, 2]
    pool.submit(job(3))  # later ones skip the screen
    assert gpus.seen[-1] == (3, "cuda") and pool.idle_slots() == 1
