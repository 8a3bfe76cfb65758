"""`qrtrain deploy` with real engines (`transformers serve`) behind a real `qrtrain serve`, on localhost.

    .venv/bin/pytest tests/deploy/test_deploy.py

Two tiny versions are trained and evaluated once; v1 is deployed and the official `openai` client talks to
the service's /v1 route. The tests then run in file order over the same endpoint: a canary split, promote,
rollback, an engine that dies, a gate that fails, and the health check's auto-rollback.
"""

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import invoke
from tests.service.conftest import Service

DEMO = Path(__file__).resolve().parents[2] / "qrtrain" / "data" / "demo" / "qa_heldout.jsonl"
ENDPOINT = "support"


def deploy(root, *args):
    return invoke("deploy", *args, "--root", root)


def engines_running(root: Path) -> list[str]:
    """Command lines of live processes that run from a deployment folder under this root."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            state = (proc / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if cwd.startswith(str((root / ".deployments").resolve())) and state != "Z":
            found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
    return found


def deployments(root: Path) -> dict:
    from qrtrain.deploy.deploy import deployments as listing

    return {d["id"]: d for d in listing(root)}


def live_version(root: Path, endpoint: str = ENDPOINT) -> str | None:
    return next((d["version"] for d in deployments(root).values() if d["endpoint"] == endpoint
                 and d["status"] == "live"), None)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_folder):
    """Two evaluated tiny versions (v1, v2), v1 live at `support`, and a running service (health every 1 s)."""
    tmp = tmp_path_factory.mktemp("deploy")
    root = tmp / "outputs"
    questions = tmp / "questions.jsonl"
    questions.write_text("".join(DEMO.read_text().splitlines(keepends=True)[:6]))
    for steps in (120, 60):  # at this rate v1 answers in varied sentences (greedy answers to compare)
        trained = invoke("train", "model=tiny", f"training.max_steps={steps}", "training.eval_steps=0",
                         "training.learning_rate=3e-3",
                         "artifact.name=tiny-chat", f"artifact.root={root}")
        assert trained.exit_code == 0, trained.output
    for version in ("v1", "v2"):
        evaluated = invoke("evaluate", root / "tiny-chat" / version, f"evaluation.questions={questions}",
                           "generation.max_new_tokens=12")
        assert evaluated.exit_code == 0, evaluated.output
    done = deploy(root, "tiny-chat/v1", "--name", ENDPOINT, "--device", "cpu")
    assert done.exit_code == 0, done.output
    service = Service(root, tmp, extra=["--health-interval", "1"]).start()
    yield {"root": root, "service": service, "questions": questions, "tmp": tmp}
    service.kill()
    service.client.close()
    for endpoint in {d["endpoint"] for d in deployments(root).values() if d["status"] in ("live", "canary", "standby")}:
        deploy(root, "--name", endpoint, "--stop")
    assert engines_running(root) == []


def report(root: Path, version: str) -> dict:
    path = max((root / "tiny-chat" / "evaluations").glob(f"{version}-*/report.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(path.read_text())


def test_openai_client_gets_evaluates_greedy_answers_through_the_route(setup):
    from openai import OpenAI

    root, service = setup["root"], setup["service"]
    recorded = report(root, "v1")
    assert len({item["answer"] for item in recorded["items"]}) >= 2, recorded["items"]  # not one repeated answer
    first = deployments(root)[1]
    assert first["status"] == "live" and first["checks"]["equivalence"]["answer_agreement"] == 1.0
    client = OpenAI(base_url=service.url + "/v1", api_key="unused-on-localhost")
    assert [m.id for m in client.models.list().data] == [ENDPOINT]
    rows = [json.loads(line) for line in setup["questions"].read_text().splitlines()]
    for row, expected in zip(rows, recorded["items"]):
        messages = row["messages"][:-1]
        answer = client.chat.completions.create(model=ENDPOINT, messages=messages, temperature=0,
                                                max_tokens=recorded["max_new_tokens"])
        assert answer.choices[0].message.content.strip() == expected["answer"]
        streamed = client.chat.completions.create(model=ENDPOINT, messages=messages, temperature=0, stream=True,
                                                  max_tokens=recorded["max_new_tokens"])
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices).strip() == expected["answer"]
    text = client.completions.create(model=ENDPOINT, prompt="The capital of Veloria is", max_tokens=4, temperature=0)
    assert text.choices[0].text and text.usage.completion_tokens >= 1
    raw = service.client.post("/v1/chat/completions", json={"model": ENDPOINT, "max_tokens": 2,
                                                            "messages": [{"role": "user", "content": "Hi"}]})
    assert raw.status_code == 200 and raw.headers["x-qrtrain-version"] == "tiny-chat/v1"
    usage = service.client.get("/api/deployments").json()["endpoints"][0]["live"]["usage"]
    assert usage["requests"] == 2 * len(rows) + 2 and usage["errors"] == 0
    assert usage["completion_tokens"] > 0 and usage["latency_p50_s"] > 0


def test_requests_are_checked_before_they_are_forwarded(setup):
    service = setup["service"]
    chat = {"model": ENDPOINT, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert service.client.post("/v1/chat/completions", json={**chat, "tools": []}).status_code == 422
    assert service.client.post("/v1/chat/completions", json={**chat, "model": "../etc"}).status_code == 422
    assert service.client.post("/v1/chat/completions", json={**chat, "max_tokens": 10**6}).status_code == 422
    assert service.client.post("/v1/chat/completions", json={**chat, "messages": [
        {"role": "tool", "content": "x"}]}).status_code == 422
    missing = service.client.post("/v1/chat/completions", json={**chat, "model": "nobody"})
    assert missing.status_code == 404 and "qrtrain deploy" in missing.json()["error"]["message"]
    big = service.client.post("/v1/completions", content=b"{" + b" " * (1024 * 1024 + 10) + b"}",
                              headers={"content-type": "application/json"})
    assert big.status_code == 413
    rebound = httpx.post(service.url + "/v1/chat/completions", json=chat, headers={"Host": "evil.example"})
    assert rebound.status_code == 400


def test_canary_split_promote_and_rollback(setup):
    root, service = setup["root"], setup["service"]
    done = deploy(root, "tiny-chat/v2", "--name", ENDPOINT, "--canary", "25", "--device", "cpu")
    assert done.exit_code == 0, done.output
    assert live_version(root) == "tiny-chat/v1"
    served = [service.client.post("/v1/chat/completions", json={
        "model": ENDPOINT, "max_tokens": 1, "messages": [{"role": "user", "content": f"Hi {n}"}]}
    ).headers["x-qrtrain-version"] for n in range(20)]
    assert served.count("tiny-chat/v2") == 5 and served.count("tiny-chat/v1") == 15
    side_by_side = service.client.get("/api/deployments").json()["endpoints"][0]
    assert side_by_side["canary"]["version"] == "tiny-chat/v2" and side_by_side["canary"]["usage"]["requests"] == 5
    assert deploy(root, "tiny-chat/v1", "--name", ENDPOINT).exit_code == 2  # promote or roll back the canary first

    assert deploy(root, "--name", ENDPOINT, "--promote").exit_code == 0
    assert live_version(root) == "tiny-chat/v2"
    assert service.client.post("/v1/completions", json={"model": ENDPOINT, "prompt": "A", "max_tokens": 1}
                               ).headers["x-qrtrain-version"] == "tiny-chat/v2"
    rolled = deploy(root, "--name", ENDPOINT, "--rollback")
    assert rolled.exit_code == 0, rolled.output
    assert live_version(root) == "tiny-chat/v1"
    stopped = [d for d in deployments(root).values() if d["version"] == "tiny-chat/v2" and d["status"] == "stopped"]
    assert stopped and not stopped[-1]["alive"]
    assert len(engines_running(root)) == 1
    events = [json.loads(line)["event"] for line in (root / ".deployments" / "events.jsonl").read_text().splitlines()]
    assert events[-3:] == ["canary", "promoted", "rolled_back"]


def test_an_engine_that_dies_leaves_the_previous_version_serving(setup):
    root, service = setup["root"], setup["service"]
    before = engines_running(root)
    failed = deploy(root, "tiny-chat/v2", "--name", ENDPOINT, "--device", "cuda:7")  # no such device: it exits
    assert failed.exit_code == 1
    assert "readiness" in failed.output and "tiny-chat/v1 keeps serving" in failed.output
    assert live_version(root) == "tiny-chat/v1" and engines_running(root) == before
    assert service.client.post("/v1/completions", json={"model": ENDPOINT, "prompt": "A", "max_tokens": 1}
                               ).status_code == 200


def test_a_failed_equivalence_gate_leaves_the_previous_version_serving(setup):
    """The recorded answers say what greedy decoding of v2 gives; a newer report that says otherwise (as a
    lossy export or a wrong template would make the engine disagree) fails the gate."""
    root = setup["root"]
    before = engines_running(root)
    recorded = report(root, "v2")
    altered = root / "tiny-chat" / "evaluations" / "v2-questions-9999-altered"
    altered.mkdir()
    recorded["items"] = [{**item, "answer": "Quillhaven is the capital."} for item in recorded["items"]]
    (altered / "report.json").write_text(json.dumps(recorded))
    try:
        failed = deploy(root, "tiny-chat/v2", "--name", ENDPOINT, "--device", "cpu")
    finally:
        shutil.rmtree(altered)
    assert failed.exit_code == 1
    assert "equivalence gate failed" in failed.output and "answer agreement 0.000" in failed.output
    assert live_version(root) == "tiny-chat/v1" and engines_running(root) == before


def test_health_check_rolls_back_to_the_previous_version_when_the_live_engine_dies(setup):
    from qrtrain.deploy import records

    root, service = setup["root"], setup["service"]
    done = deploy(root, "tiny-chat/v2", "--name", ENDPOINT, "--device", "cpu")
    assert done.exit_code == 0, done.output
    live = next(d for d in deployments(root).values() if d["status"] == "live")
    assert live["version"] == "tiny-chat/v2"
    os.killpg(live["pid"], 9)
    deadline = time.time() + 30
    while time.time() < deadline and live_version(root) != "tiny-chat/v1":
        time.sleep(0.5)
    assert live_version(root) == "tiny-chat/v1"
    assert deployments(root)[live["id"]]["status"] == "unhealthy"
    event = json.loads((root / ".deployments" / "events.jsonl").read_text().splitlines()[-1])
    assert event["event"] == "unhealthy" and event["auto_rollback"] == "tiny-chat/v1"
    audit = [json.loads(line) for line in (root / ".service" / "audit.jsonl").read_text().splitlines()]
    assert any(a.get("event") == "unhealthy" and a.get("deployment") == live["id"] for a in audit)
    assert service.client.post("/v1/completions", json={"model": ENDPOINT, "prompt": "A", "max_tokens": 1}
                               ).headers["x-qrtrain-version"] == "tiny-chat/v1"
    assert not records.process_alive(live["pid"])


@pytest.mark.parametrize("args, message", [
    (["tiny-chat/v9", "--name", "x"], "no such version"),
    (["tiny-chat/v1", "--name", "../x"], "an endpoint name is"),
    (["tiny-chat/v1", "--name", "x", "--engine", "tgi"], "--engine tgi"),
    (["tiny-chat/v1", "--name", "x", "--canary", "10"], "no live version"),
    (["tiny-chat/v1"], "--name ENDPOINT is needed"),
    (["--name", "x", "--promote", "--stop"], "one action at a time"),
    (["--name", "x", "--promote"], "no canary to promote"),
    (["--name", "x", "--rollback"], "no canary and no previous version"),
])
def test_bad_input_is_exit_2_and_starts_nothing(setup, args, message):
    root = setup["root"]
    before = engines_running(root)
    result = deploy(root, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert engines_running(root) == before


def test_a_port_in_use_and_a_missing_engine_are_exit_2(setup):
    import socket

    root = setup["root"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = deploy(root, "tiny-chat/v1", "--name", "x", "--port", str(taken.getsockname()[1]))
    assert result.exit_code == 2 and "already in use" in result.output
    if shutil.which("vllm") is None:
        result = deploy(root, "tiny-chat/v1", "--name", "x", "--engine", "vllm")
        assert result.exit_code == 2 and "`vllm` is not installed" in result.output


def test_a_version_that_does_not_verify_is_not_deployed(setup, tmp_path):
    copy = tmp_path / "tiny-chat" / "v1"
    shutil.copytree(setup["root"] / "tiny-chat" / "v1", copy)
    with open(copy / "adapter_model.safetensors", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    result = deploy(setup["root"], copy, "--name", "broken")
    assert result.exit_code == 2 and "fails verification" in result.output
    assert not any(d["endpoint"] == "broken" for d in deployments(setup["root"]).values())


def test_list_shows_every_deployment_with_usage(setup):
    result = deploy(setup["root"], "--json")
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert {r["status"] for r in rows} >= {"live", "failed", "stopped"}
    assert all({"requests", "errors", "latency_p99_s"} <= set(r["usage"]) for r in rows)


@pytest.mark.slow
def test_dashboard_shows_live_and_canary_side_by_side(setup, browser):
    """In headless Chromium: the Endpoints table lists the live version and a canary with their shares, health
    and request counts; a screenshot is saved (QRTRAIN_SCREENSHOT, else the test's tmp folder)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root, service = setup["root"], setup["service"]
    done = deploy(root, "tiny-chat/v2", "--name", ENDPOINT, "--canary", "50", "--device", "cpu")
    assert done.exit_code == 0, done.output
    try:
        for n in range(4):
            service.client.post("/v1/completions", json={"model": ENDPOINT, "prompt": f"A{n}", "max_tokens": 1})
        browser.get(service.url + "/")
        wait = WebDriverWait(browser, 60, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,))
        rows = wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#endpoints tr[data-role]")) == 2
                          and b.find_elements(By.CSS_SELECTOR, "#endpoints tr[data-role]"))
        cells = {row.get_attribute("data-role"): [td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows}
        assert cells["live"][2] == "tiny-chat/v1" and cells["live"][4] == "50%" and cells["live"][5] == "healthy"
        assert cells["canary"][2] == "tiny-chat/v2" and cells["canary"][4] == "50%" and cells["canary"][6] == "2"
        screenshot = Path(os.environ.get("QRTRAIN_SCREENSHOT", setup["tmp"] / "endpoints.png"))
        browser.find_element(By.ID, "endpoints").screenshot(str(screenshot))
        assert screenshot.stat().st_size > 0
    finally:
        assert deploy(root, "--name", ENDPOINT, "--rollback").exit_code == 0


def test_engine_command_lines(monkeypatch, tmp_path):
    """What each engine is started with (the program itself need not be installed for this)."""
    from qrtrain.deploy import engines

    monkeypatch.setattr(engines, "program", lambda engine: engines.ENGINES[engine]["program"])
    build, base = tmp_path / "build", tmp_path / "base"
    assert engines.command("transformers", build, 9001, str(build), []) == [
        "transformers", "serve", str(build), "--host", "127.0.0.1", "--port", "9001", "--device", "auto",
        "--log-level", "info"]
    assert engines.command("vllm", tmp_path / "v3", 9002, "support", ["--gpu-memory-utilization", "0.5"],
                           base=base, lora_rank=32) == [
        "vllm", "serve", str(base), "--host", "127.0.0.1", "--port", "9002", "--enable-lora", "--lora-modules",
        f"support={tmp_path / 'v3'}", "--max-lora-rank", "32", "--served-model-name", "support-base",
        "--generation-config", "auto", "--gpu-memory-utilization", "0.5"]
    assert engines.command("llama.cpp", tmp_path / "m.q8_0.gguf", 9003, "support", []) == [
        "llama-server", "-m", str(tmp_path / "m.q8_0.gguf"), "--host", "127.0.0.1", "--port", "9003", "--jinja",
        "--alias", "support", "-np", "1"]
    assert engines.command("ollama", tmp_path, 9004, "support", []) == ["ollama", "serve"]
    assert engines.model_id_for("transformers", "support", build) == str(build)
    assert {engines.model_id_for(e, "support", build) for e in ("vllm", "llama.cpp", "ollama")} == {"support"}


@pytest.mark.parametrize("engine", ["vllm", "llama.cpp", "ollama"])
def test_deploy_through_an_installed_engine(setup, engine):
    """Where the engine's program is installed: deployed, answering through the route, stopped. The gate's
    agreement is reported, not required (a q8_0 GGUF's answers may differ from float32's)."""
    from qrtrain.deploy.engines import ENGINES

    if shutil.which(ENGINES[engine]["program"]) is None:
        pytest.skip(f"{ENGINES[engine]['program']} is not installed ({ENGINES[engine]['install']})")
    root, service = setup["root"], setup["service"]
    endpoint = f"through-{engine.replace('.', '')}"
    done = deploy(root, "tiny-chat/v1", "--name", endpoint, "--engine", engine, "--min-agreement", "0", "--json")
    assert done.exit_code == 0, done.output
    try:
        answer = service.client.post("/v1/chat/completions", json={
            "model": endpoint, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]})
        assert answer.status_code == 200 and answer.headers["x-qrtrain-version"] == "tiny-chat/v1"
    finally:
        assert deploy(root, "--name", endpoint, "--stop").exit_code == 0
