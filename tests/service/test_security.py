"""The service as an attacker sees it: one case (or more) per class of hole found in review, each asserting the
HTTP status and that nothing happened on disk (no file outside, nothing queued or published, no process).

    .venv/bin/pytest tests/service/test_security.py

Classes: 1 code execution through overrides, 2 path confinement, 3 environment disclosure, 4 DNS rebinding
and cross-site requests, 5 job-claim races, 6 one damaged file, 7 reused version numbers, 8 symlinked
artifact folders, 9 the events file, 10 the exit code after publishing, 11 the low items.
"""

import json
import os
import shutil
import signal
import subprocess
import time

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.service.conftest import QRTRAIN, TINY, Service, free_port, request_body

SECRET = "s3cr3t-from-the-environment-0042"


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_folder):
    """One service with one published version `sec/v1`, for the cases that only send requests."""
    base = tmp_path_factory.mktemp("security")
    (base / "data").mkdir()
    service = Service(base / "outputs", base / "data", env={"QRTRAIN_SECURITY_SECRET": SECRET}).start()
    job = service.submit("training.max_steps=2", "artifact.name=sec")
    service.wait(job["id"], lambda j: j["status"] == "done")
    yield service
    service.kill()
    service.stop_jobs()
    service.client.close()


def jobs_of(service: Service) -> list[dict]:
    return service.client.get("/api/jobs").json()


def refused(service: Service, path: str, body, status=(422,), **kwargs) -> httpx.Response:
    """POST a body, expect a refusal, and check that nothing was queued by it."""
    before = len(jobs_of(service))
    response = service.client.post(path, json=body, **kwargs)
    assert response.status_code in status, (body, response.status_code, response.text)
    assert len(jobs_of(service)) == before, body
    return response


# ---- 1. code execution through overrides


@pytest.mark.parametrize("body", [
    {"overrides": ["+extensions.x._target_=shutil.copyfile", "+extensions.x._args_=[/etc/hostname,MARK]"]},
    {"overrides": ["++hydra.callbacks.x._target_=builtins.open", "++hydra.callbacks.x.file=MARK"]},
    {"extensions": {"x": {"_target_": "shutil.copyfile", "_args_": ["/etc/hostname", "MARK"]}}},
    {"extensions": {"ema": {"_target_": "os.symlink"}}},
    {"extensions": {"ema": {"decay": 0.9, "_args_": ["MARK"]}}},
    {"hydra": {"callbacks": {"x": {"_target_": "numpy.savetxt", "fname": "MARK"}}}},
    {"+extensions": {"x": {}}},
    {"training": {"_target_": "builtins.open"}},
])
def test_no_request_can_name_code_to_run(shared, tmp_path, body):
    mark = tmp_path / "written-by-the-job"
    body = json.loads(json.dumps(body).replace("MARK", str(mark)))
    refused(shared, "/api/jobs", {"model": "tiny", **body})
    time.sleep(0.5)
    assert not mark.exists()


# ---- 2. path confinement


@pytest.mark.parametrize("path, body", [
    ("/api/jobs", {"data": "{train:/etc/hostname}"}),
    ("/api/jobs", {"model": {"path": "/usr"}}),
    ("/api/jobs", {"data": {"train": "${x}"}, "x": "../../f.jsonl"}),
    ("/api/jobs", {"data": {"train": "${oc.select:x}"}}),
    ("/api/jobs", {"data": {"eval": "/etc/hostname"}}),
    ("/api/jobs", {"data": {"train": ["ok.jsonl", "/etc/hostname"]}}),
    ("/api/jobs", {"data": {"train": "sub/../../../etc/hostname"}}),
    ("/api/jobs", {"model_path": "/usr/lib"}),
    ("/api/jobs", {"resume": "/tmp/some-checkpoint"}),
    ("/api/jobs", {"model": "tiny", "gguf_file": "../../x.gguf"}),
    ("/api/jobs", {"data": {"train": "'quoted.jsonl'"}}),
    ("/api/evaluations", {"target": "sec/v1", "evaluation": {"questions": "/etc/hostname"}}),
    ("/api/evaluations", {"target": "sec/v1", "model_path": "/usr"}),
    ("/api/evaluations", {"target": "../sec/v1"}),
    ("/api/evaluations", {"target": "/etc"}),
    ("/api/comparisons", {"adapters": ["/tmp"]}),
    ("/api/comparisons", {"adapters": ["../outside/v1"]}),
    ("/api/comparisons", {"evaluation": {"corpus": "/etc/hostname"}}),
    ("/api/comparisons", {"overrides": ["adapters=[/tmp]"]}),
])
def test_paths_stay_under_the_roots(shared, path, body):
    refused(shared, path, body)


def test_a_symlink_out_of_the_data_root_is_followed_and_refused(shared):
    (shared.data / "escape.jsonl").unlink(missing_ok=True)
    (shared.data / "escape.jsonl").symlink_to("/etc/hostname")
    (shared.data / "linked").unlink(missing_ok=True)
    (shared.data / "linked").symlink_to("/etc")
    refused(shared, "/api/jobs", {"data": {"train": "escape.jsonl"}})
    refused(shared, "/api/jobs", {"data": {"train": "linked/hostname"}})
    refused(shared, "/api/evaluations", {"target": "sec/v1", "evaluation": {"questions": "escape.jsonl"}})


# ---- 3. environment disclosure


@pytest.mark.parametrize("path, body", [
    ("/api/jobs", {"data": {"train": "${oc.env:QRTRAIN_SECURITY_SECRET}"}}),
    ("/api/jobs", {"artifact": {"name": "${oc.env:QRTRAIN_SECURITY_SECRET}"}}),
    ("/api/jobs", {"extensions": {"early_stopping": {"metric": "${oc.env:QRTRAIN_SECURITY_SECRET}"}}}),
    ("/api/jobs", {"overrides": ["data.train=${oc.env:QRTRAIN_SECURITY_SECRET}"]}),
    ("/api/evaluations", {"target": "sec/v1", "evaluation": {"questions": "${oc.env:QRTRAIN_SECURITY_SECRET}"}}),
])
def test_no_request_reads_the_environment(shared, path, body):
    response = refused(shared, path, body)
    assert SECRET not in response.text


# ---- 4. DNS rebinding and cross-site requests


def test_a_rebound_host_name_is_refused(shared):
    for method, path in (("GET", "/api/jobs"), ("GET", "/api/models/sec/v1"), ("POST", "/api/jobs"), ("GET", "/")):
        response = httpx.request(method, shared.url + path, headers={"host": f"attacker.example:{shared.port}"},
                                 json={"model": "tiny"} if method == "POST" else None)
        assert response.status_code == 400, (method, path, response.status_code)
    assert httpx.get(shared.url + "/api/jobs", headers={"host": f"localhost:{shared.port}"}).status_code == 200
    assert httpx.get(shared.url + "/api/jobs", headers={"host": f"127.0.0.1:{shared.port + 1}"}).status_code == 400


def test_cross_site_changes_and_sockets_are_refused(shared):
    before = jobs_of(shared)
    evil = {"origin": "http://attacker.example"}
    refused(shared, "/api/jobs", {"model": "tiny"}, status=(403,), headers=evil)
    refused(shared, "/api/jobs", {"model": "tiny"}, status=(403,), headers={"sec-fetch-site": "cross-site"})
    refused(shared, "/api/jobs", {"model": "tiny"}, status=(403,), headers={"origin": "null"})
    form = httpx.post(shared.url + "/api/jobs", content=b'{"model": "tiny"}',
                      headers={**evil, "content-type": "text/plain"})
    assert form.status_code == 403
    job = before[0]["id"]
    assert httpx.post(shared.url + f"/api/jobs/{job}/resume", headers=evil).status_code == 403
    assert httpx.delete(shared.url + "/api/models/sec/v1?force=true", headers=evil).status_code == 403
    assert httpx.post(shared.url + "/api/models/sec/v1/verify", headers=evil).status_code == 403
    assert (shared.root / "sec" / "v1").is_dir() and jobs_of(shared) == before
    ws = shared.url.replace("http", "ws") + f"/api/jobs/{job}/ws"
    with pytest.raises(InvalidStatus):
        connect(ws, origin="http://attacker.example")
    with connect(ws, origin=shared.url) as socket:  # the service's own page may
        assert json.loads(socket.recv(timeout=30))["phase"]
    same = httpx.post(shared.url + "/api/models/sec/v1/verify", headers={"origin": shared.url})
    assert same.status_code == 200 and same.json()["verified"]


# ---- 5. job claims


def test_cancel_racing_the_job_loop_never_leaves_a_job_running(make_service):
    service = make_service()
    answers = []
    for delay in (0, 0.05, 0.1, 0.2, 0.3, 0.5):
        job = service.submit("training.max_steps=100000", "checkpoint.every_steps=0", f"artifact.name=race-{delay}")
        time.sleep(delay)
        response = service.client.post(f"/api/jobs/{job['id']}/cancel")
        assert response.status_code == 200, response.text
        answers.append(response.json())
        ended = service.wait(job["id"], lambda j: j["status"] not in ("queued", "running"), timeout=120)
        assert ended["status"] == "cancelled", ended
        if response.json()["status"] == "cancelled":  # cancelled before it started: it never ran
            assert ended["pid"] is None and ended["attempts"] == 0 and ended["folder"] is None, ended
        else:
            assert response.json()["status"] == "running" and response.json()["cancel_requested"]
    assert {a["status"] for a in answers} <= {"cancelled", "running"}
    assert list(service.root.glob("race-*/v*")) == []
    for job in jobs_of(service):
        assert job["pid"] is None


def test_a_second_service_on_the_same_root_refuses_to_start(make_service):
    service = make_service()
    second = subprocess.run([QRTRAIN, "serve", "--port", str(free_port()), "--root", str(service.root),
                             "--data-root", str(service.data)], capture_output=True, text=True, timeout=60)
    assert second.returncode == 2 and "another qrtrain serve" in second.stderr, second.stderr
    assert service.client.get("/api/health").status_code == 200


# ---- 6. one damaged file


@pytest.mark.parametrize("damage", ["garbage", "list", "final-not-dict", "fifo", "huge"])
def test_a_damaged_metrics_file_shows_on_its_row_and_nothing_fails(shared, damage):
    metrics = shared.root / "sec" / "v1" / "training_metrics.json"
    saved = shared.root.parent / "metrics.saved"
    if not saved.exists():
        shutil.copy(metrics, saved)
    metrics.unlink()
    if damage == "fifo":
        os.mkfifo(metrics)
    else:
        metrics.write_text({"garbage": "{not json", "list": "[1, 2]", "final-not-dict": '{"final": 3}',
                            "huge": "[" + "0," * (9 << 20) + "0]"}[damage])
    try:
        rows = shared.client.get("/api/jobs", timeout=20)
        assert rows.status_code == 200
        row = next(r for r in rows.json() if r["version"] and r["version"].endswith("sec/v1"))
        assert row["metrics"] is None and row["metrics_problem"]
        assert shared.client.get("/api/statistics", timeout=20).status_code == 200
        version = shared.client.get("/api/models/sec/v1", timeout=20)
        assert version.status_code == 200
        assert damage == "final-not-dict" or "training_metrics.json" in version.json()["problems"]
        listed = shared.client.get("/api/models", timeout=20)
        assert listed.status_code == 200 and [v["verified"] for v in listed.json()] == [False]
    finally:
        metrics.unlink()
        shutil.copy(saved, metrics)
    assert shared.client.post("/api/models/sec/v1/verify").json()["verified"]


# ---- 7. version numbers


@pytest.mark.slow  # ~30-50 s: in the slow suite to keep make test near 10 min
def test_a_deleted_version_number_is_never_given_again(make_service):
    service = make_service()
    for _ in range(2):
        job = service.submit("training.max_steps=2", "artifact.name=numbers")
        service.wait(job["id"], lambda j: j["status"] == "done")
    assert service.client.delete("/api/models/numbers/v2", params={"force": "true"}).json()["latest"] == "v1"
    job = service.submit("training.max_steps=2", "artifact.name=numbers", "seed=7")
    job = service.wait(job["id"], lambda j: j["status"] == "done")
    assert job["version"].endswith("numbers/v3")
    assert sorted(p.name for p in (service.root / "numbers").glob("v*")) == ["v1", "v3"]
    assert service.client.get("/api/models/numbers/v2").status_code == 404
    response = service.client.post("/api/comparisons", json={"adapters": ["numbers/v2"]})
    assert response.status_code == 422 and "numbers/v2" in response.text


# ---- 8. symbolic links in the artifact root


def test_a_symlinked_artifact_folder_is_not_listed_served_or_deleted(shared, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(shared.root / "sec", elsewhere, symlinks=True)
    (shared.root / "ext").symlink_to(elsewhere)
    try:
        assert [v["artifact"] for v in shared.client.get("/api/models").json()] == ["sec"]
        assert shared.client.get("/api/models/ext/v1").status_code == 404
        assert shared.client.post("/api/models/ext/v1/verify").status_code == 404
        assert shared.client.delete("/api/models/ext/v1", params={"force": "true"}).status_code == 404
        assert (elsewhere / "v1" / "adapter_model.safetensors").is_file()
        refused(shared, "/api/evaluations", {"target": "ext/v1"})
    finally:
        (shared.root / "ext").unlink()


def test_a_symlinked_model_card_is_not_served(shared):
    card = shared.root / "sec" / "v1" / "README.md"
    kept = card.read_bytes()
    card.unlink()
    card.symlink_to("/etc/hostname")
    try:
        detail = shared.client.get("/api/models/sec/v1").json()
        assert detail["model_card"] is None and "README.md" not in detail["files"]
    finally:
        card.unlink()
        card.write_bytes(kept)


# ---- 9. the events file


def test_an_events_fifo_is_refused_at_once(tmp_path, tiny_folder):
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    env = {**os.environ, "QRTRAIN_EVENTS": str(fifo)}
    for args in (["verify", str(tmp_path)], ["train", *TINY, "training.max_steps=1", f"artifact.root={tmp_path}"]):
        run = subprocess.run([QRTRAIN, *args], capture_output=True, text=True, timeout=120, env=env)
        assert run.returncode == 2 and "QRTRAIN_EVENTS" in run.stderr, run.stderr
    assert not (tmp_path / "tiny-dialogue").exists()


# ---- 10. the exit code after publishing


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_signal_after_published_still_exits_0(tmp_path, tiny_folder, signum):
    process = subprocess.Popen([QRTRAIN, "train", *TINY, "training.max_steps=2", f"artifact.root={tmp_path}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith(str(tmp_path)):  # the version path, printed after "published ..."
            process.send_signal(signum)
            break
    rest, errors = process.communicate(timeout=120)
    assert process.returncode == 0, errors
    assert "Traceback" not in errors and "KeyboardInterrupt" not in errors
    assert (tmp_path / "tiny-dialogue" / "v1").is_dir()


# ---- 11. the low items


def test_out_of_range_ids_and_bad_event_ids_are_4xx(shared):
    assert shared.client.get(f"/api/jobs/{2**64}").status_code == 422
    assert shared.client.get("/api/jobs/0").status_code == 422
    assert shared.client.get(f"/api/jobs/{2**62}").status_code == 404
    assert shared.client.post(f"/api/jobs/{2**70}/cancel").status_code == 422
    assert shared.client.get("/api/jobs/1/events", headers={"last-event-id": "abc"}).status_code == 422


def test_refusals_are_audited_and_forwarded_for_is_not_believed(shared):
    shared.client.post("/api/jobs", json={"x": 1}, headers={"x-forwarded-for": "203.0.113.9"})
    httpx.post(shared.url + "/api/jobs", json={}, headers={"host": "attacker.example"})
    audit = [json.loads(line) for line in (shared.root / ".service" / "audit.jsonl").read_text().splitlines()]
    assert audit[-2]["status"] == 422 and audit[-2]["client"] == "127.0.0.1"
    assert audit[-1]["status"] == 400 and "refused" in audit[-1]


def test_tokens_any_case_bearer_refusals_audited_and_a_chosen_token_never_printed(make_service):
    token = "chosen-token-for-the-tests-0123456789"
    service = make_service(host="0.0.0.0", env={"QRTRAIN_API_TOKEN": token})
    assert httpx.get(service.url + "/api/jobs", headers={"authorization": f"bearer {token}"}).status_code == 200
    assert httpx.get(service.url + "/api/jobs", headers={"authorization": f"Bearer {token}x"}).status_code == 401
    assert httpx.post(service.url + "/api/jobs", json={"model": "tiny"}).status_code == 401
    log = (service.root.parent / f"serve-{service.port}.log").read_text()
    assert token not in log
    audit = [json.loads(line) for line in (service.root / ".service" / "audit.jsonl").read_text().splitlines()]
    assert [(a["method"], a["status"]) for a in audit[-2:]] == [("GET", 401), ("POST", 401)]


def test_a_version_copied_under_another_number_fails_verify(shared, tmp_path):
    copy = tmp_path / "sec" / "v537"
    shutil.copytree(shared.root / "sec" / "v1", copy)
    run = subprocess.run([QRTRAIN, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "v537" in run.stdout + run.stderr


def test_sizes_do_not_count_through_symlinks(shared, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (5 << 20))
    before = shared.client.get("/api/models").json()[0]["size_bytes"]
    link = shared.root / "sec" / "v1" / "link.bin"
    link.symlink_to(big)
    try:
        row = shared.client.get("/api/models").json()[0]
        assert row["size_bytes"] == before and not row["verified"]  # a link in a version fails verify too
    finally:
        link.unlink()


def test_evaluations_and_comparisons_are_checked_like_training(shared):
    refused(shared, "/api/evaluations", {"target": "sec/v1", "generation": {"max_new_tokens": -5}})
    refused(shared, "/api/evaluations", {"target": "sec/v1", "nosuch": 1})
    refused(shared, "/api/evaluations", {"target": "nosuch/v1"})
    refused(shared, "/api/comparisons", {"systems": ["base", "shell"]})
    refused(shared, "/api/comparisons", {"model": "nosuch"})
    refused(shared, "/api/comparisons", {"retrieval": {"k": 10**12}})


def test_synth_refuses_a_format_width_and_bounds_passages(tmp_path):
    from qrtrain.errors import QrtrainError
    from qrtrain.evaluation.retrieval import chunk_documents
    from qrtrain.synth.sources import fill_templates

    for prompt in ("Name {a:>300000000}", "Name {a!r}", "Name {a.__class__}", "Name {a[0]}"):
        with pytest.raises(QrtrainError, match="not a plain slot"):
            fill_templates([{"prompt": prompt, "slots": {"a": ["x"]}}])
    chunks = chunk_documents([{"id": "d", "text": "word " * 50_000}], 30, 0)  # no sentence end anywhere
    assert len(chunks) == 50_000 // 30 + 1 and max(len(c["text"].split()) for c in chunks) == 30


def test_valid_requests_still_run(shared):
    (shared.data / "mine.jsonl").write_text("".join(json.dumps(
        {"messages": [{"role": "user", "content": f"q{i}?"}, {"role": "assistant", "content": f"a{i}."}]}) + "\n"
        for i in range(12)))
    body = request_body(*TINY, "training.max_steps=2", "artifact.name=mine", "data.train=mine.jsonl")
    response = shared.client.post("/api/jobs", json={**body, "extensions": {"ema": {"decay": 0.9}}})
    assert response.status_code == 201, response.text
    assert str(shared.data / "mine.jsonl") in " ".join(response.json()["args"])
    job = shared.wait(response.json()["id"], lambda j: j["status"] not in ("queued", "running"))
    assert job["status"] == "done", job
    evaluation = shared.client.post("/api/evaluations", json={"target": "mine", "generation": {"max_new_tokens": 4}})
    assert evaluation.status_code == 201, evaluation.text  # run to its end by the dashboard test (slow)
    assert shared.client.post(f"/api/jobs/{evaluation.json()['id']}/cancel").status_code == 200


def test_a_preference_job_continues_a_version_under_the_root(shared):
    body = request_body(*TINY, "training.max_steps=2", "artifact.name=sec-dpo")
    response = shared.client.post("/api/jobs", json={**body, "method": {"name": "dpo", "beta": 0.2},
                                                     "init_adapter": "sec/v1"})
    assert response.status_code == 201, response.text
    assert {"method=dpo", "method.beta=0.2", "init_adapter='sec/v1'"} <= set(response.json()["args"])
    job = shared.wait(response.json()["id"], lambda j: j["status"] not in ("queued", "running"))
    assert job["status"] == "done", job
    row = next(r for r in shared.client.get("/api/models").json() if r["artifact"] == "sec-dpo")
    assert row["method"] == "dpo" and row["parent"]["name"] == "sec" and row["verified"]
