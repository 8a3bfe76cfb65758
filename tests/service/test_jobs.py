"""Jobs as processes: cancel saves a checkpoint and resume finishes from it, two workers run two jobs while a
third waits, and a service killed with -9 loses nothing when it starts again.

    .venv/bin/pytest tests/service/test_jobs.py
"""

import os
import signal
import time

import pytest

LONG = ["training.max_steps=400", "checkpoint.every_steps=5"]
LONGER = ["training.max_steps=1500", "checkpoint.every_steps=250"]  # still running after a service restart
ENDLESS = ["training.max_steps=100000", "checkpoint.every_steps=0"]  # only ever cancelled


def running_at_step(service, job_id: int, step: int = 6) -> dict:
    return service.wait(job_id, lambda j: j["status"] == "running" and (j["progress"] or {}).get("step", 0) >= step)


@pytest.mark.slow  # ~30-50 s: in the slow suite to keep make test near 10 min
def test_cancel_saves_a_checkpoint_and_resume_finishes_from_it(make_service):
    service = make_service()
    job = service.submit(*LONG, "artifact.name=cancelled")
    running_at_step(service, job["id"])
    assert service.client.post(f"/api/jobs/{job['id']}/cancel").status_code == 200
    job = service.wait(job["id"], lambda j: j["status"] not in ("queued", "running"))
    assert job["status"] == "cancelled" and job["exit_code"] == 143, job
    assert "checkpoint saved at step" in job["error"]
    stopped_at = job["progress"]["step"]
    assert service.client.post(f"/api/jobs/{job['id']}/cancel").status_code == 409  # ended: nothing to cancel

    assert service.client.post(f"/api/jobs/{job['id']}/resume").json()["status"] == "queued"
    job = service.wait(job["id"], lambda j: j["status"] == "done", timeout=300)
    assert job["attempts"] == 2 and job["version"].endswith("cancelled/v1")
    events = service.events(job["id"])
    interrupted = [i for i, e in enumerate(events) if e["phase"] == "interrupted"]
    assert len(interrupted) == 1
    resumed_steps = [e["step"] for e in events[interrupted[0]:] if e["phase"] == "training"]
    assert 1 < resumed_steps[0] <= stopped_at + 1 and resumed_steps[-1] == 400  # from the checkpoint, not step 1
    assert service.client.post(f"/api/jobs/{job['id']}/resume").status_code == 409  # done: nothing to resume


@pytest.mark.slow
def test_two_workers_run_two_jobs_and_a_third_waits(make_service):
    service = make_service(workers=2)
    jobs = [service.submit(*ENDLESS, f"artifact.name=parallel-{i}") for i in range(3)]
    running_at_step(service, jobs[0]["id"], 2)
    running_at_step(service, jobs[1]["id"], 2)
    for _ in range(10):
        statuses = [service.job(j["id"])["status"] for j in jobs]
        assert statuses == ["running", "running", "queued"], statuses
        time.sleep(0.2)
    service.client.post(f"/api/jobs/{jobs[0]['id']}/cancel")
    running_at_step(service, jobs[2]["id"], 1)  # the third starts once a worker is free
    assert service.job(jobs[0]["id"])["status"] == "cancelled"
    queued_then_cancelled = service.submit(*ENDLESS)
    assert service.client.post(f"/api/jobs/{queued_then_cancelled['id']}/cancel").json()["status"] == "cancelled"
    for job in jobs[1:]:
        service.client.post(f"/api/jobs/{job['id']}/cancel")
    statuses = [service.wait(j["id"], lambda j: j["status"] not in ("queued", "running"))["status"] for j in jobs]
    assert statuses == ["cancelled"] * 3


@pytest.mark.slow  # 75 s here: a job long enough to outlive a service restart
def test_a_killed_service_restarts_and_adopts_its_running_job(make_service):
    service = make_service()
    job = service.submit(*LONGER, "artifact.name=adopted")
    pid = running_at_step(service, job["id"])["pid"]
    service.kill(signal.SIGKILL)
    os.kill(pid, 0)  # the job's process outlives the service

    again = make_service(root=service.root)
    job = again.job(job["id"])
    assert job["status"] == "running" and job["pid"] == pid
    job = again.wait(job["id"], lambda j: j["status"] == "done", timeout=300)
    assert job["version"].endswith("adopted/v1") and job["exit_code"] == 0
    assert again.client.post("/api/models/adopted/v1/verify").json()["verified"]
    assert [e["phase"] for e in again.events(job["id"])][-1] == "done"


@pytest.mark.slow
def test_a_job_that_died_with_the_service_is_interrupted_and_resumes(make_service):
    service = make_service()
    job = service.submit(*LONG, "artifact.name=orphan")
    pid = running_at_step(service, job["id"], 8)["pid"]
    service.kill(signal.SIGKILL)
    os.killpg(pid, signal.SIGKILL)  # the machine lost the job too (OOM killer, reboot)
    time.sleep(0.5)

    again = make_service(root=service.root)
    job = again.job(job["id"])
    assert job["status"] == "interrupted" and "resume" in job["error"], job
    assert again.client.post(f"/api/jobs/{job['id']}/resume").status_code == 200
    job = again.wait(job["id"], lambda j: j["status"] == "done", timeout=300)
    events = again.events(job["id"])
    second = [i for i, e in enumerate(events) if e["phase"] == "validating_data"][1]  # the resumed attempt
    steps = [e["step"] for e in events[second:] if e["phase"] == "training"]
    assert steps[0] > 1  # resumed from a checkpoint (the kill may land just after one: steps need not go back)
