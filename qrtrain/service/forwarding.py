"""Forwarding a checked /v1 request to the deployment that serves its endpoint, and recording its usage.

    qrtrain deploy tiny-dialogue/v1 --name support && qrtrain serve
    curl localhost:8765/v1/chat/completions -H 'content-type: application/json' \\
         -d '{"model": "support", "messages": [{"role": "user", "content": "Hi"}]}'

The deployment is the endpoint's live one, or its canary for `share` percent of the requests, split
evenly (request k goes to the canary when floor((k+1)*share/100) > floor(k*share/100)), so N requests send
exactly share*N/100 (rounded) to it. The answer carries `x-qrtrain-version: NAME/vN`. Requests, status,
latency and tokens are recorded per deployment (qrtrain/deploy/records.py); httpx streams the engine's
answer through unchanged.
"""

import json
import time

from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from qrtrain.deploy import records


def pick(state, endpoint: str) -> dict | None:
    """The deployment this request goes to: live, or the canary for its share (None: nothing serves it)."""
    with state.route_lock:
        serving = {d["status"]: d for d in records.listing(state.deployments, endpoint, records.SERVING,
                                                           db=route_db(state))}
    live, canary = serving.get("live"), serving.get("canary")
    if canary is None or live is None:
        return live or canary
    with state.split_lock:
        count = state.split.get(endpoint, 0)
        state.split[endpoint] = count + 1
    return canary if (count + 1) * canary["share"] // 100 > count * canary["share"] // 100 else live


def route_db(state):
    """The route's one SQLite connection (opened on first use), shared by its threads under state.route_lock."""
    if state.route_db is None:
        state.route_db = records.connect(state.deployments, shared=True)
    return state.route_db


def record(state, *usage) -> None:
    with state.route_lock:
        records.record_usage(state.deployments, *usage, db=route_db(state))


def error(status: int, message: str, kind: str) -> JSONResponse:
    """An OpenAI-style error body (the `openai` client raises it as the matching exception)."""
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


async def forward(state, route: str, body) -> Response:
    """Send the request to its deployment's engine; the engine's answer, streamed when asked."""
    import httpx

    deployment = await run_in_threadpool(pick, state, body.model)
    if deployment is None:
        return error(404, f"no deployment serves the endpoint {body.model!r}; deploy one with `qrtrain deploy "
                          f"NAME/vN --name {body.model}` (GET /v1/models lists them)", "not_found_error")
    payload = body.model_dump(exclude_none=True)
    payload["model"] = deployment["model_id"]
    url = f"http://127.0.0.1:{deployment['port']}/v1/{'chat/completions' if route == 'chat' else 'completions'}"
    headers = {"x-qrtrain-version": deployment["version"], "x-qrtrain-deployment": str(deployment["id"])}
    began = time.perf_counter()

    async def note(status: int, usage: dict | None, chunks: int | None = None):
        usage = usage or {}
        await run_in_threadpool(record, state, deployment["id"], route, status, time.perf_counter() - began,
                                usage.get("prompt_tokens"), usage.get("completion_tokens", chunks), body.stream)

    try:
        upstream = await state.http.send(state.http.build_request("POST", url, json=payload), stream=True)
    except httpx.HTTPError as failure:
        await note(502, None)
        return error(502, f"the engine of {deployment['version']} did not answer ({type(failure).__name__})",
                     "engine_error")
    if not body.stream or upstream.status_code != 200:
        content = await upstream.aread()
        await upstream.aclose()
        try:
            usage = json.loads(content).get("usage")
        except (ValueError, AttributeError):
            usage = None
        await note(upstream.status_code, usage if isinstance(usage, dict) else None)
        return Response(content, status_code=upstream.status_code, headers=headers,
                        media_type=upstream.headers.get("content-type", "application/json"))

    async def relay():
        usage, chunks, status = None, 0, 200
        try:
            async for line in upstream.aiter_lines():
                if line.startswith("data: {"):
                    chunks += 1
                    if '"usage"' in line:
                        found = json.loads(line[6:]).get("usage")
                        usage = found if isinstance(found, dict) else usage
                yield line + "\n"
        except httpx.HTTPError:
            status = 502  # the engine broke off mid-answer: the client sees the stream end early
        finally:
            await upstream.aclose()
            await note(status, usage, chunks)

    return StreamingResponse(relay(), status_code=200, headers=headers, media_type="text/event-stream")


def models(state) -> dict:
    """/v1/models: one entry per endpoint that has a serving deployment, owned by qrtrain, with its version."""
    seen = {}
    for deployment in records.listing(state.deployments, statuses=records.SERVING):
        entry = seen.setdefault(deployment["endpoint"], {"id": deployment["endpoint"], "object": "model",
                                                         "created": int(deployment["created"]), "owned_by": "qrtrain"})
        entry[deployment["status"]] = deployment["version"]
    return {"object": "list", "data": list(seen.values())}
