"""Load on `qrtrain serve`: with a tiny training job running, 50 clients follow its event stream (SSE) while
200 status requests a second arrive for 30 s. Reports errors, dropped events and status latency (p50/p99),
and writes BENCHMARKS.md's service section.

    python scripts/bench_serve.py              # ~1 min; the service, the job and the clients share this machine

The job is cancelled after the load; every stream must then have delivered every line of the job's
events.jsonl, in order (ids 1..N without a gap), and ended.
"""

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from benchmarks_md import write_section

QRTRAIN = str(Path(sys.executable).parent / "qrtrain")
CLIENTS, RATE, SECONDS = 50, 200, 30


async def follow(client: httpx.AsyncClient, job_id: int) -> list[int]:
    ids = []
    async with client.stream("GET", f"/api/jobs/{job_id}/events", timeout=None) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                ids.append(int(line[4:]))
    return ids


async def poll_status(client: httpx.AsyncClient, job_id: int) -> tuple[list[float], int]:
    latencies, errors, tasks = [], 0, []

    async def one():
        nonlocal errors
        started = time.perf_counter()
        try:
            response = await client.get(f"/api/jobs/{job_id}")
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)
        except httpx.HTTPError:
            errors += 1

    begin = time.perf_counter()
    for n in range(RATE * SECONDS):  # open loop: request n leaves at n / RATE seconds, whatever came before
        await asyncio.sleep(max(begin + n / RATE - time.perf_counter(), 0))
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return latencies, errors


async def load(url: str, root: Path) -> dict:
    limits = httpx.Limits(max_connections=CLIENTS + 300, max_keepalive_connections=CLIENTS + 300)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        job = (await client.post("/api/jobs", json={
            "model": "tiny", "training": {"max_steps": 100000, "logging_steps": 1, "eval_steps": 0},
            "checkpoint": {"every_steps": 0}})).json()
        while (await client.get(f"/api/jobs/{job['id']}")).json()["status"] != "running":
            await asyncio.sleep(0.2)
        streams = [asyncio.create_task(follow(client, job["id"])) for _ in range(CLIENTS)]
        latencies, errors = await poll_status(client, job["id"])
        await client.post(f"/api/jobs/{job['id']}/cancel")
        received = await asyncio.gather(*streams, return_exceptions=True)
    written = len((root / ".service" / "jobs" / str(job["id"]) / "events.jsonl").read_text().splitlines())
    stream_errors = [r for r in received if isinstance(r, Exception)]
    complete = [r for r in received if not isinstance(r, Exception) and r == list(range(1, written + 1))]
    latencies.sort()
    return {"clients": CLIENTS, "rate_per_s": RATE, "seconds": SECONDS, "requests": RATE * SECONDS,
            "request_errors": errors, "stream_errors": len(stream_errors), "events_written": written,
            "streams_complete": len(complete),
            "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
            "max_ms": round(latencies[-1] * 1000, 1)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "outputs"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([QRTRAIN, "serve", "--port", str(port), "--root", str(root)],
                                  stderr=subprocess.DEVNULL, env=dict(os.environ))
        try:
            url = f"http://127.0.0.1:{port}"
            while True:
                try:
                    httpx.get(url + "/api/health", timeout=5)
                    break
                except httpx.TransportError:
                    time.sleep(0.3)
            result = asyncio.run(load(url, root))
        finally:
            server.terminate()
            server.wait()
    print(json.dumps(result, indent=1))
    section = f"""<!-- bench-serve -->
## Service under load (CPU)

`python scripts/bench_serve.py` on this machine (2 cores shared by the service, a tiny-model training job and
the load): {result['clients']} clients follow the job's event stream while {result['rate_per_s']} status requests a second
(`GET /api/jobs/ID`, open loop) arrive for {result['seconds']} s; then the job is cancelled and every stream must end
having delivered every event the job wrote.

| requests | errors | status p50 | status p99 | max | events written | streams complete | stream errors |
| --- | --- | --- | --- | --- | --- | --- | --- |
| {result['requests']} | {result['request_errors']} | {result['p50_ms']} ms | {result['p99_ms']} ms | {result['max_ms']} ms | {result['events_written']} | {result['streams_complete']} of {result['clients']} | {result['stream_errors']} |
<!-- /bench-serve -->
"""
    write_section("bench-serve", section)
    if result["request_errors"] or result["stream_errors"] or result["streams_complete"] != result["clients"]:
        raise SystemExit("errors or dropped events: see above")


if __name__ == "__main__":
    main()
