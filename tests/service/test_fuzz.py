"""Generated hostile request bodies against a real service: every one is refused with a 4xx and starts
nothing; valid bodies built the same way still run (the /v1 route's, with no deployment here, are 404).

    .venv/bin/pytest tests/service/test_fuzz.py                 # 300 bodies
    .venv/bin/pytest -m slow tests/service/test_fuzz.py         # 2,000 more

Each body starts from a valid one (random settings within their ranges) and gets one to three hostile
mutations: a key no schema has (`_target_`, `+x`, `~x`, `hydra`, dotted keys, `${...}`), or a value that no
field accepts (interpolations, path escapes, huge numbers, unicode, nested `_target_` objects, lists).
"""

import json
import random

import pytest

from tests.service.conftest import TINY, request_body

HOSTILE_KEYS = ["_target_", "_args_", "+training", "++hydra", "~data", "hydra", "overrides", "${x}", "__class__",
                "training.max_steps", "artifact.root", "output_dir", "extensions.x._target_", "Ω", "a b"]
HOSTILE_VALUES = ["${oc.env:HOME}", "${x}", "${oc.select:training}", "../../etc/passwd", "/etc/passwd",
                  "sub/../../etc/passwd", 10**30, -10**30, 1e300, "ünïcødé\u202e", "a\nb", "'quoted'", "\"q\"",
                  {"_target_": "os.system", "_args_": ["id"]}, ["${x}"], [10**30], {"nested": {"deeper": {}}},
                  "x=y", "[a,b]", "\\x00", "%2e%2e/etc", "~/.ssh/id_rsa", "\u0000"]
ENDPOINTS = ["/api/jobs", "/api/evaluations", "/api/comparisons", "/v1/chat/completions", "/v1/completions"]


def valid_body(rng: random.Random, endpoint: str) -> dict:
    """A body every field of which is within the schema."""
    if endpoint == "/api/evaluations":
        body = {"target": "fuzz/v1"}
        if rng.random() < 0.5:
            body["generation"] = {"max_new_tokens": rng.randint(1, 16), "batch_size": rng.randint(1, 8)}
        return body
    if endpoint.startswith("/v1/"):  # no endpoint is deployed here: a valid body is 404, a hostile one 422
        body = {"model": f"endpoint-{rng.randint(0, 9)}", "max_tokens": rng.randint(1, 64),
                "temperature": rng.choice([0, 0.7, 1.0]), "stream": rng.random() < 0.5}
        if endpoint.endswith("/completions") and "chat" not in endpoint:
            return {**body, "prompt": "The capital of Veloria is"}
        return {**body, "messages": [{"role": "system", "content": "Answer briefly."},
                                     {"role": "user", "content": "Where is Quillhaven?"}]}
    if endpoint == "/api/comparisons":
        body = {"systems": rng.sample(["base", "rag", "adapter", "adapter_rag"], rng.randint(1, 4))}
        if rng.random() < 0.5:
            body["retrieval"] = {"k": rng.randint(1, 4)}
        return body
    body = request_body(*TINY, f"training.max_steps={rng.randint(1, 3)}")
    if rng.random() < 0.5:
        body["lora"] = {"r": rng.choice([2, 4, 8]), "alpha": rng.choice([4.0, 8, 16])}
    if rng.random() < 0.3:
        body["extensions"] = {"ema": {"decay": rng.choice([0.5, 0.9])}}
    if rng.random() < 0.3:
        body["artifact"] = {"name": f"fuzz-{rng.randint(0, 9)}"}
    return body


def places(node, path=()):
    """Every dict in the body (where a key can be added) and every (dict, key) (where a value can be replaced)."""
    found = [("dict", node, path)]
    for key, value in list(node.items()):
        found.append(("value", node, path + (key,)))
        if isinstance(value, dict):
            found += places(value, path + (key,))
    return found


def mutate(rng: random.Random, body: dict) -> dict:
    body = json.loads(json.dumps(body))
    for _ in range(rng.randint(1, 3)):
        kind, node, path = rng.choice(places(body))
        if kind == "dict" or rng.random() < 0.3:  # a fresh copy each time: no object shared between places
            node[rng.choice(HOSTILE_KEYS)] = json.loads(json.dumps(rng.choice(HOSTILE_VALUES + [1, "tiny", {}])))
        else:
            node[path[-1]] = json.loads(json.dumps(rng.choice(HOSTILE_VALUES)))
    return body


def send_hostile(service, count: int, seed: int) -> list:
    rng = random.Random(seed)
    accepted = []
    for _ in range(count):
        endpoint = rng.choice(ENDPOINTS)
        body = mutate(rng, valid_body(rng, endpoint))
        response = service.client.post(endpoint, json=body)
        if not 400 <= response.status_code < 500:
            accepted.append((endpoint, body, response.status_code, response.text[:300]))
    return accepted


@pytest.fixture
def fuzz_service(make_service):
    service = make_service()
    job = service.submit("training.max_steps=1", "artifact.name=fuzz")
    assert service.wait(job["id"], lambda j: j["status"] not in ("queued", "running"))["status"] == "done"
    return service


def test_hostile_bodies_are_refused_and_valid_ones_run(fuzz_service):
    service = fuzz_service
    assert send_hostile(service, 300, seed=0) == []
    assert [j["id"] for j in service.client.get("/api/jobs").json()] == [1]  # nothing queued by any of them
    assert sorted(p.name for p in service.root.iterdir() if p.name != ".checkpoints") == [".deployments", ".service", "fuzz"]
    assert not list((service.root / ".deployments").glob("*/"))  # no deployment folder either
    assert sorted(p.name for p in (service.root / ".service" / "jobs").iterdir()) == ["1"]  # no job folder either

    response = service.client.post("/api/jobs", json=valid_body(random.Random(1), "/api/jobs"))
    assert response.status_code == 201, response.text
    job = service.wait(response.json()["id"], lambda j: j["status"] not in ("queued", "running"))
    assert job["status"] == "done", job


@pytest.mark.slow
def test_many_more_hostile_bodies_are_refused(fuzz_service):
    assert send_hostile(fuzz_service, 2000, seed=2) == []
    assert len(fuzz_service.client.get("/api/jobs").json()) == 1
