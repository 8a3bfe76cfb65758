"""The job API, the event streams and the registry through a real uvicorn server on localhost, with
tiny-model training jobs.

    .venv/bin/pytest tests/service/test_app.py
"""

import json
import time

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect


def test_job_streams_events_to_done_and_its_version_verifies(make_service):
    service = make_service()
    job = service.submit("training.max_steps=6", "artifact.name=api-demo")
    assert job["status"] in ("queued", "running") and job["kind"] == "train"

    events = service.events(job["id"])
    phases = [e["phase"] for e in events]
    assert phases[0] == "validating_data" and phases[-1] == "done"
    assert phases.index("loading_model") < phases.index("training") < phases.index("publishing")
    steps = sorted({e["step"] for e in events if e["phase"] == "training"})
    assert steps == [1, 2, 3, 4, 5, 6]
    last_training = [e for e in events if e["phase"] == "training"][-1]
    assert last_training["total_steps"] == 6 and isinstance(last_training["loss"], float)
    assert {"learning_rate", "tokens_per_s", "eta_s"} <= set(last_training)

    job = service.wait(job["id"], lambda j: j["status"] == "done")
    assert job["exit_code"] == 0 and job["version"] == events[-1]["version"]
    assert job["progress"]["step"] == 6
    verified = service.client.post("/api/models/api-demo/v1/verify").json()
    assert verified["verified"], verified
    listed = service.client.get("/api/models", params={"name": "api-demo"}).json()
    assert [(v["artifact"], v["version"], v["verified"]) for v in listed] == [("api-demo", "v1", True)]
    assert service.client.get("/api/models", params={"model_type": "standard"}).json() == []
    detail = service.client.get("/api/models/api-demo/v1").json()
    assert detail["metadata"]["version"] == "v1" and "adapter_model.safetensors" in detail["files"]

    # the same events over a WebSocket, replayed from the start, ending on the final status
    with connect(service.url.replace("http", "ws") + f"/api/jobs/{job['id']}/ws") as socket:
        received = []
        while True:
            message = json.loads(socket.recv(timeout=30))
            received.append(message)
            if message["phase"] == "end":
                break
    assert received[:-1] == events and received[-1]["status"] == "done"

    # a report made on the command line under the same root is served (and charted) like a job's
    import subprocess

    from tests.service.conftest import QRTRAIN

    assert subprocess.run([QRTRAIN, "evaluate", str(service.root / "api-demo" / "v1"), "generation.max_new_tokens=4"],
                          capture_output=True, timeout=300).returncode == 0
    (listed,) = service.client.get("/api/reports").json()
    assert listed["kind"] == "evaluation" and listed["path"].startswith("api-demo/evaluations/")
    assert service.client.get(f"/api/reports/{listed['path']}").json()["suite"] == "demo"
    assert service.client.get("/api/reports/api-demo/v1/metadata.json").status_code == 404

    statistics = service.client.get("/api/statistics").json()
    assert statistics["by_status"] == {"done": 1} and statistics["success_rate"] == 1.0
    assert statistics["tokens_trained"] > 0 and statistics["median_training_s"] > 0
    health = service.client.get("/api/health").json()
    assert health["queued"] == 0 and health["device"] and health["disk_free_gib"] > 0


def test_events_file_in_the_run_folder_is_flushed_per_line(make_service):
    service = make_service()
    job = service.submit("training.max_steps=3")
    job = service.wait(job["id"], lambda j: j["status"] == "done")
    run_events = (service.root / ".service" / "jobs" / str(job["id"]) / "events.jsonl").read_text().splitlines()
    assert all(json.loads(line)["time"] > 0 for line in run_events)


@pytest.mark.parametrize("body, message", [
    ({"training": {"max_steps": -1}}, "greater than or equal to 1"),
    ({"model": "nosuch"}, "expected one of"),
    ({"training": {"nosuch": 1}}, "Extra inputs are not permitted"),
    ({"artifact": {"root": "/tmp/elsewhere"}}, "Extra inputs are not permitted"),
    ({"hydra": {"run": {"dir": "/tmp/x"}}}, "Extra inputs are not permitted"),
    ({"data": {"train": "../../etc/passwd"}}, "'..' is not allowed"),
    ({"data": {"train": "/etc/passwd"}}, "outside the service's data roots"),
    ({"data": {"train": ["a.jsonl", "/etc/hostname"]}}, "outside the service's data roots"),
    ({"overrides": ["training.max_steps=5"]}, "Extra inputs are not permitted"),
    ({"method": {"name": "sft", "beta": 0.1}}, "method sft has no setting beta"),
    ({"method": {"name": "dpo", "gamma": 1.0}}, "method dpo has no setting gamma"),
    ({"method": {"name": "nosuch"}}, "Input should be"),
    ({"method": {"name": "dpo", "loss_type": "${oc.env:HOME}"}}, "Input should be"),
    ({"method": {"name": "dpo", "beta": -1.0}}, "greater than 0"),
    ({"init_adapter": "../elsewhere/v1"}, "String should match pattern"),
    ({"init_adapter": "/etc/v1"}, "String should match pattern"),
    ({"lora": {"init": "${oc.env:HOME}"}}, "Input should be"),
    ({"training": {"optim": "galore_adamw"}}, "Input should be"),
    ({"tracking": ["mlflow", "neptune"]}, "Input should be"),
    ({"tracking": {"mlflow": {"tracking_uri": "http://elsewhere"}}}, "Input should be a valid list"),
])
def test_bad_requests_are_refused_with_422_and_nothing_is_queued(make_service, body, message):
    service = make_service()
    response = service.client.post("/api/jobs", json={"model": "tiny", **body})
    assert response.status_code == 422, response.text
    assert message in json.dumps(response.json()["detail"])
    assert service.client.get("/api/jobs").json() == []


def test_symlink_out_of_the_data_root_is_refused(make_service, tmp_path):
    service = make_service()
    (service.data / "escape.jsonl").symlink_to("/etc/hostname")
    response = service.client.post("/api/jobs", json={"model": "tiny", "data": {"train": "escape.jsonl"}})
    assert response.status_code == 422 and "outside" in response.json()["detail"]


def test_version_names_cannot_leave_the_root(make_service):
    service = make_service()
    for path in ("/api/models/..%2F..%2Fetc/v1", "/api/models/a/..%2F..", "/api/models/a/v1%2F..%2F..",
                 "/api/models/.service/v1"):
        response = service.client.get(path)
        assert response.status_code in (404, 422), (path, response.status_code)
    response = service.client.delete("/api/models/..%2Fx/v1")
    assert response.status_code in (404, 422)


def test_oversized_and_unsized_requests_are_refused(make_service):
    service = make_service()
    big = {"model": "tiny", "data": {"train": ["a.jsonl"] * 20000}}
    assert service.client.post("/api/jobs", json=big).status_code == 413

    def chunks():
        yield b'{"model": "tiny"}'

    assert service.client.post("/api/jobs", content=chunks(), headers={"content-type": "application/json"}
                               ).status_code == 411
    assert service.client.get("/api/jobs").json() == []


def test_beyond_localhost_every_endpoint_needs_the_token(make_service):
    token = "t0ken-for-the-tests-0123456789"
    service = make_service(host="0.0.0.0", env={"QRTRAIN_API_TOKEN": token})
    for method, path in (("GET", "/api/jobs"), ("GET", "/api/models"), ("GET", "/api/health"), ("GET", "/"),
                         ("GET", "/docs"), ("POST", "/api/jobs"), ("DELETE", "/api/models/a/v1")):
        assert httpx.request(method, service.url + path).status_code == 401, path
    assert httpx.get(service.url + "/api/jobs", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(service.url + "/api/jobs", headers={"authorization": f"Bearer {token}"}).json() == []
    page = httpx.get(service.url + f"/?token={token}")
    assert page.status_code == 200 and "qrtrain_token" in page.headers["set-cookie"]
    assert httpx.get(service.url + "/api/jobs", cookies={"qrtrain_token": token}).status_code == 200
    with pytest.raises(InvalidStatus):  # refused before the handshake completes
        connect(service.url.replace("http", "ws") + "/api/jobs/1/ws")


def test_a_generated_token_is_printed_once_when_none_is_set(make_service):
    service = make_service(host="0.0.0.0", env={"QRTRAIN_API_TOKEN": None})
    log = (service.root.parent / f"serve-{service.port}.log").read_text()
    token = log.split("API token (shown once; set QRTRAIN_API_TOKEN to choose it): ")[1].split()[0]
    assert httpx.get(service.url + "/api/jobs").status_code == 401
    assert httpx.get(service.url + "/api/jobs", headers={"authorization": f"Bearer {token}"}).status_code == 200


def test_changes_are_audited_and_latest_is_protected(make_service):
    service = make_service()
    first = service.submit("training.max_steps=2", "artifact.name=audited")
    service.wait(first["id"], lambda j: j["status"] == "done")
    second = service.submit("training.max_steps=2", "artifact.name=audited")
    service.wait(second["id"], lambda j: j["status"] == "done")
    assert service.client.delete("/api/models/audited/v2").status_code == 409  # `latest` names it
    assert service.client.delete("/api/models/audited/v1").json() == {"deleted": "audited/v1", "latest": "v2"}
    assert service.client.delete("/api/models/audited/v2", params={"force": "true"}).json()["latest"] is None
    assert service.client.get("/api/models").json() == []
    assert service.client.post("/api/jobs", json={"training": {"max_steps": 0}}).status_code == 422

    audit = [json.loads(line) for line in (service.root / ".service" / "audit.jsonl").read_text().splitlines()]
    assert [(a["method"], a["endpoint"], a["status"]) for a in audit] == [
        ("POST", "/api/jobs", 201), ("POST", "/api/jobs", 201), ("DELETE", "/api/models/audited/v2", 409),
        ("DELETE", "/api/models/audited/v1", 200), ("DELETE", "/api/models/audited/v2", 200),
        ("POST", "/api/jobs", 422)]
    assert audit[0]["job"] == first["id"] and audit[4]["force"] is True
    assert all(a["client"] == "127.0.0.1" and a["time"] <= time.time() for a in audit)


def test_the_registry_shows_signatures_the_provenance_statement_and_diffs(make_service, tmp_path):
    from tests.artifacts.test_signing import write_key_pair
    from tests.conftest import invoke

    _, private, public = write_key_pair(tmp_path, "service")
    root = tmp_path / "outputs"
    for extra in ([f"artifact.sign_key={private}"], ["training.max_steps=3"]):
        result = invoke("train", "model=tiny", "training.max_steps=2", f"artifact.root={root}", "artifact.name=x",
                        *extra)
        assert result.exit_code == 0, result.output
    service = make_service(root=root, extra=["--trusted-key", str(public)])
    listed = service.client.get("/api/models").json()
    assert [(v["version"], v["verified"], v["signature"]) for v in listed] == [("v1", True, "valid"),
                                                                                ("v2", True, "unsigned")]
    assert service.client.post("/api/models/x/v1/verify").json()["signature"]["state"] == "valid"
    statement = service.client.get("/api/models/x/v1/provenance").json()
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1" and statement["subject"]
    diff = service.client.get("/api/models/diff", params={"a": "x/v1", "b": "x/v2"}).json()
    assert {"key": "training.max_steps", "a": 2, "b": 3} in diff["config"]
    for a, b in (("../x/v1", "x/v2"), ("x/v1", "/etc"), ("x", "x/v2"), ("x/v1", "x/v9")):
        assert service.client.get("/api/models/diff", params={"a": a, "b": b}).status_code == 404, (a, b)
