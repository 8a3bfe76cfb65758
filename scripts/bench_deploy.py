"""The /v1 route's added latency: the same chat completions sent straight to a deployed engine
(`transformers serve`) and through `qrtrain serve`'s route, with 1, 4 and 16 concurrent clients; p50/p99 of
each and their difference. Writes BENCHMARKS.md's deploy section.

    python scripts/bench_deploy.py             # ~3 min on 2 cores; a tiny version is trained and deployed

Each request asks for one new token, so the figures are the engine's shortest answer plus the route's
work (validation, the deployment lookup in SQLite, the forwarded HTTP call, the usage row). Direct and
routed rounds alternate, so drift in the machine's load falls on both alike.
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from benchmarks_md import write_section

QRTRAIN = str(Path(sys.executable).parent / "qrtrain")
CONCURRENCY = (1, 4, 16)
REQUESTS = 96       # per concurrency and path
ROUNDS = 3          # direct and routed alternate this many times


def run(*args: str, env: dict) -> None:
    done = subprocess.run([QRTRAIN, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"qrtrain {' '.join(args)} failed:\n{done.stderr[-2000:]}")


async def requests(url: str, model: str, concurrency: int, count: int) -> list[float]:
    latencies = []
    queue = asyncio.Queue()
    for n in range(count):
        queue.put_nowait(n)
    body = {"model": model, "max_tokens": 1, "temperature": 0}

    async def client_loop(client):
        while not queue.empty():
            n = queue.get_nowait()
            began = time.perf_counter()
            response = await client.post("/v1/chat/completions", json={
                **body, "messages": [{"role": "user", "content": f"Question {n}: where is Quillhaven?"}]})
            response.raise_for_status()
            latencies.append(time.perf_counter() - began)

    async with httpx.AsyncClient(base_url=url, timeout=300,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    return latencies


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "outputs"
        env = dict(os.environ, QRTRAIN_CACHE=os.environ.get("QRTRAIN_CACHE", str(Path(tmp) / "cache")))
        run("train", "model=tiny", "training.max_steps=5", "training.eval_steps=0", "artifact.name=bench",
            f"artifact.root={root}", env=env)
        run("deploy", "bench/v1", "--name", "bench", "--root", str(root), "--device", "cpu", env=env)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([QRTRAIN, "serve", "--port", str(port), "--root", str(root)],
                                  stderr=subprocess.DEVNULL, env=env)
        try:
            route = f"http://127.0.0.1:{port}"
            while True:
                try:
                    httpx.get(route + "/api/options", timeout=5)
                    break
                except httpx.TransportError:
                    time.sleep(0.3)
            deployment = httpx.get(route + "/api/deployments").json()["endpoints"][0]["live"]
            engine = f"http://127.0.0.1:{deployment['port']}"
            engine_model = next(d["model_id"] for d in httpx.get(route + "/api/deployments").json()["deployments"]
                                if d["id"] == deployment["id"])
            asyncio.run(requests(engine, engine_model, 4, 16))  # warm both paths
            asyncio.run(requests(route, "bench", 4, 16))
            rows = []
            for concurrency in CONCURRENCY:
                direct, routed = [], []
                for _ in range(ROUNDS):
                    direct += asyncio.run(requests(engine, engine_model, concurrency, REQUESTS // ROUNDS))
                    routed += asyncio.run(requests(route, "bench", concurrency, REQUESTS // ROUNDS))
                row = {"concurrency": concurrency, "requests": len(direct)}
                for p in (50, 99):
                    row[f"direct_p{p}_ms"] = round(percentile(direct, p) * 1000, 1)
                    row[f"route_p{p}_ms"] = round(percentile(routed, p) * 1000, 1)
                    row[f"added_p{p}_ms"] = round(row[f"route_p{p}_ms"] - row[f"direct_p{p}_ms"], 1)
                rows.append(row)
                print(json.dumps(row))
        finally:
            server.terminate()
            server.wait()
            subprocess.run([QRTRAIN, "deploy", "--name", "bench", "--stop", "--root", str(root)], env=env,
                           capture_output=True)
    table = "\n".join(f"| {r['concurrency']} | {r['requests']} | {r['direct_p50_ms']} ms | {r['route_p50_ms']} ms | "
                      f"{r['added_p50_ms']:+} ms | {r['direct_p99_ms']} ms | {r['route_p99_ms']} ms | "
                      f"{r['added_p99_ms']:+} ms |" for r in rows)
    section = f"""<!-- bench-deploy -->
## The /v1 route's added latency (CPU)

`python scripts/bench_deploy.py` on this machine (2 cores shared by the engine, the service and the clients): a
tiny version deployed with `transformers serve`; chat completions of one new token sent straight to the engine
and through `qrtrain serve`'s /v1 route (validation, the deployment lookup, forwarding, the usage row), with
concurrent clients; direct and routed rounds alternate. Alone, the route adds a few milliseconds per request (its
Python work: validation, lookup, the forwarded call, the usage row on one kept SQLite connection). With many
clients on 2 cores that work competes with the engine's generation for the same CPUs, so the engine's queue
drains more slowly and the added time grows with the queue; on a machine with spare cores (or a GPU engine)
the route's share stays near the single-client figure.

| clients | requests each way | direct p50 | route p50 | added p50 | direct p99 | route p99 | added p99 |
| --- | --- | --- | --- | --- | --- | --- | --- |
{table}
<!-- /bench-deploy -->
"""
    write_section("bench-deploy", section)


if __name__ == "__main__":
    main()
