"""The service's HTTP API and dashboard (FastAPI): jobs, live events, the registry, health and statistics.

    qrtrain serve                                   # http://127.0.0.1:8765/ ; OpenAPI at /docs
    curl localhost:8765/api/jobs
    curl -N localhost:8765/api/jobs/1/events        # Server-Sent Events, replayed from the start, then live

Every /api route and the page check the token when one is set (`Authorization: Bearer T`, the
`qrtrain_token` cookie that `/?token=T` sets, or `?token=T`). Request bodies are capped at MAX_BODY bytes
and need a Content-Length. Every request that changes something is appended to `.service/audit.jsonl`.
"""

import asyncio
import hmac
import json
import shutil
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Body, FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from qrtrain import __version__
from qrtrain.errors import QrtrainError
from qrtrain.events import read_events
from qrtrain.service import checks, jobs, store

MAX_BODY = 64 * 1024
STATIC = Path(__file__).parent / "static"
FOLLOW_S = 0.2
CHANGES = ("POST", "PUT", "PATCH", "DELETE")


def create_app(root: Path, workers: int = 1, token: str | None = None, data_roots: list[Path] | None = None) -> FastAPI:
    """The app for one artifact root. Jobs start when the app starts (uvicorn's lifespan)."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    db = store.database(root)
    audit_log = root / ".service" / "audit.jsonl"
    roots = [Path(r).resolve() for r in (data_roots or [Path.cwd()])] + [root]
    progress = {}  # job id -> (events offset, newest training event, newest event)

    @asynccontextmanager
    async def lifespan(app):
        stop = threading.Event()
        loop = threading.Thread(target=jobs.run_jobs, args=(db, root, workers, stop), name="qrtrain-jobs", daemon=True)
        loop.start()
        yield
        stop.set()  # job processes are left running: a restarted service adopts them
        loop.join(timeout=5)

    app = FastAPI(title="qrtrain", version=__version__, lifespan=lifespan,
                  description="Training jobs, live progress events and the artifact registry of one artifact root.")

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token is not None and not token_matches(request, token):
            return JSONResponse({"detail": "missing or wrong API token (Authorization: Bearer TOKEN)"}, status_code=401)
        if request.method in CHANGES:
            length = request.headers.get("content-length")
            if length is None and request.headers.get("transfer-encoding"):
                return JSONResponse({"detail": "a request body needs a Content-Length"}, status_code=411)
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
                return JSONResponse({"detail": f"request body over {MAX_BODY} bytes"}, status_code=413)
        response = await call_next(request)
        if request.method in CHANGES:
            audit(audit_log, request, response.status_code)
        if token is not None and request.query_params.get("token") and request.url.path == "/":
            response.set_cookie("qrtrain_token", token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(QrtrainError)
    async def refused(request: Request, error: QrtrainError):
        return JSONResponse({"detail": error.message}, status_code=422)

    # ---- jobs
    def job_view(job: dict) -> dict:
        offset, training, last = progress.get(job["id"], (0, None, None))
        if job["folder"]:
            events, offset = read_events(Path(job["folder"]) / "events.jsonl", offset)
            training = next((e for e in reversed(events) if e["phase"] == "training"), training)
            last = events[-1] if events else last
            progress[job["id"]] = (offset, training, last)
        metrics = None
        if job["version"]:  # a finished training job: its final metrics, as published
            metrics = (read_json(Path(job["version"]) / "training_metrics.json") or {}).get("final")
        return {**job, "phase": last["phase"] if last else None, "progress": training, "metrics": metrics}

    def job_or_404(job_id: int) -> dict:
        job = store.get_job(db, job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job

    @app.post("/api/jobs", status_code=201, summary="Queue a training job from Hydra overrides")
    def create_job(request: Request, body: Annotated[dict, Body(examples=[{"overrides": ["model=tiny", "training.max_steps=20"]}])]):
        overrides = checks.check_overrides(body.get("overrides", []), "train", roots)
        job = store.add_job(db, "train", overrides)
        request.state.audit = {"job": job["id"]}
        return job_view(job)

    @app.get("/api/jobs", summary="Every job, oldest first (filter by status)")
    def list_all_jobs(status: str | None = None):
        return [job_view(job) for job in store.list_jobs(db, status)]

    @app.get("/api/jobs/{job_id}", summary="One job: status, progress, metrics, folder, version, exit code, error")
    def get_job(job_id: int):
        return job_view(job_or_404(job_id))

    @app.post("/api/jobs/{job_id}/cancel", summary="Cancel: queued jobs at once, running ones by SIGTERM (checkpoint saved)")
    def cancel(request: Request, job_id: int):
        job = job_or_404(job_id)
        request.state.audit = {"job": job_id}
        if job["status"] not in store.ACTIVE:
            raise HTTPException(409, f"job {job_id} is {job['status']}; only queued or running jobs can be cancelled")
        return job_view(jobs.cancel_job(db, job))

    @app.post("/api/jobs/{job_id}/resume", summary="Queue a cancelled, interrupted or failed job again (from its checkpoint)")
    def resume(request: Request, job_id: int):
        job = job_or_404(job_id)
        request.state.audit = {"job": job_id}
        if not jobs.resume_job(db, job):
            raise HTTPException(409, f"job {job_id} is {job['status']}; only cancelled, interrupted or failed jobs resume")
        return job_view(store.get_job(db, job_id))

    async def follow(job_id: int, start: int = 0):
        """(line number, event) from the start, then live; ends once the job has ended and all is read."""
        offset, number = 0, 0
        while True:
            job = store.get_job(db, job_id)
            events, offset = read_events(Path(job["folder"]) / "events.jsonl", offset) if job["folder"] else ([], 0)
            for event in events:
                number += 1
                if number > start:
                    yield number, event
            if not events and job["status"] in store.ENDED:
                return
            if not events:
                await asyncio.sleep(FOLLOW_S)

    @app.get("/api/jobs/{job_id}/events", summary="Server-Sent Events: every event from the start, then live")
    async def events_stream(request: Request, job_id: int):
        job_or_404(job_id)
        start = int(request.headers.get("last-event-id", "0") or 0)

        async def sse():
            async for number, event in follow(job_id, start):
                yield f"id: {number}\nevent: {event['phase']}\ndata: {json.dumps(event)}\n\n"
            yield f"event: end\ndata: {json.dumps({'status': store.get_job(db, job_id)['status']})}\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"cache-control": "no-cache"})

    @app.websocket("/api/jobs/{job_id}/ws")
    async def events_socket(socket: WebSocket, job_id: int):
        if token is not None and not token_matches(socket, token):
            await socket.close(code=4401)
            return
        if store.get_job(db, job_id) is None:
            await socket.close(code=4404)
            return
        await socket.accept()
        try:
            async for _, event in follow(job_id):
                await socket.send_json(event)
            await socket.send_json({"phase": "end", "status": store.get_job(db, job_id)["status"]})
            await socket.close()
        except WebSocketDisconnect:
            pass

    @app.get("/api/jobs/{job_id}/report", summary="An evaluation or comparison job's report (JSON)")
    def job_report(job_id: int):
        job = job_or_404(job_id)
        if not job["report"]:
            raise HTTPException(404, f"job {job_id} has no report (status {job['status']})")
        folder = Path(job["report"])
        found = sorted(folder.glob("*.json"))
        if not found:
            raise HTTPException(404, f"{folder}: no report file")
        return {"folder": str(folder), "files": [p.name for p in sorted(folder.iterdir())],
                "report": json.loads(found[0].read_text())}

    @app.post("/api/evaluations", status_code=201, summary="Queue `qrtrain evaluate NAME/vN` as a job")
    def create_evaluation(request: Request, body: Annotated[dict, Body(examples=[{"target": "tiny-dialogue/v1", "overrides": []}])]):
        name, _, version = str(body.get("target", "")).partition("/")
        target = root / checks.check_name(name) / (checks.check_version(version) if version else "")
        if not target.is_dir():
            raise QrtrainError(f"target {body.get('target')!r}: no such artifact or version under {root}")
        overrides = checks.check_overrides(body.get("overrides", []), "evaluate", roots)
        job = store.add_job(db, "evaluate", [str(target), *overrides])
        request.state.audit = {"job": job["id"], "version": body.get("target")}
        return job_view(job)

    @app.post("/api/comparisons", status_code=201, summary="Queue `qrtrain compare` as a job")
    def create_comparison(request: Request, body: Annotated[dict, Body(examples=[{"overrides": ["systems=[base,adapter]"]}])]):
        overrides = checks.check_overrides(body.get("overrides", []), "compare", roots)
        job = store.add_job(db, "compare", overrides)
        request.state.audit = {"job": job["id"]}
        return job_view(job)

    # ---- registry
    @app.get("/api/models", summary="Every artifact version (filters: name, base_model, model_type, quantization)")
    def models(name: str | None = None, base_model: str | None = None, model_type: str | None = None,
               quantization: str | None = None):
        from qrtrain.artifacts.listing import list_versions

        wanted = {"artifact": name, "base_model": base_model, "model_type": model_type, "quantization": quantization}
        return [row for row in list_versions(root)
                if all(value is None or row.get(key) == value for key, value in wanted.items())]

    def version_folder(name: str, version: str) -> Path:
        folder = root / checks.check_name(name) / checks.check_version(version)
        if folder.is_symlink() or not folder.is_dir():
            raise HTTPException(404, f"no version {name}/{version}")
        return folder

    @app.get("/api/models/{name}/{version}", summary="A version's metadata, metrics and model card")
    def model(name: str, version: str):
        folder = version_folder(name, version)
        card = folder / "README.md"
        return {"path": str(folder), "metadata": read_json(folder / "metadata.json"),
                "metrics": read_json(folder / "training_metrics.json"),
                "model_card": card.read_text(encoding="utf-8") if card.is_file() else None,
                "files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())}

    @app.post("/api/models/{name}/{version}/verify", summary="The `qrtrain verify` checks, as JSON")
    def verify(request: Request, name: str, version: str):
        from qrtrain.artifacts.verify import verify_version

        request.state.audit = {"version": f"{name}/{version}"}
        return verify_version(version_folder(name, version))

    @app.delete("/api/models/{name}/{version}", summary="Delete a version (the one `latest` names only with force=true)")
    def delete(request: Request, name: str, version: str, force: bool = False):
        from qrtrain.artifacts.versions import delete_version

        request.state.audit = {"version": f"{name}/{version}", "force": force}
        folder = version_folder(name, version)
        try:
            latest = delete_version(folder.parent, version, force)
        except QrtrainError as error:
            raise HTTPException(409, error.message) from None
        return {"deleted": f"{name}/{version}", "latest": latest}

    # ---- service
    @app.get("/api/health", summary="Device, free disk and GPU memory, queue length, version")
    def health():
        return {"status": "ok", "version": __version__, **device_info(),
                "disk_free_gib": round(shutil.disk_usage(root).free / 2**30, 2),
                "queued": len(store.list_jobs(db, "queued")), "running": len(store.list_jobs(db, "running")),
                "workers": workers, "root": str(root)}

    @app.get("/api/statistics", summary="Jobs by status, success rate, median training time, tokens trained")
    def statistics():
        tokens = 0
        for job in store.list_jobs(db, "done"):
            metrics = Path(job["version"] or "/nonexistent") / "training_metrics.json"
            if job["kind"] == "train" and metrics.is_file():
                tokens += json.loads(metrics.read_text()).get("final", {}).get("num_tokens") or 0
        return {**store.statistics(db), "tokens_trained": tokens}

    @app.get("/api/options", summary="The config groups' options, for the dashboard's form")
    def options():
        from qrtrain.config import group_options

        return {group: group_options(group) for group in ("model", "model_type", "strategy", "quantization", "extensions")}

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() and not path.is_symlink() else None


def token_matches(request, token: str) -> bool:
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip() \
        or request.cookies.get("qrtrain_token") or request.query_params.get("token") or ""
    return hmac.compare_digest(given.encode(), token.encode())


def audit(path: Path, request: Request, status: int) -> None:
    """One JSON line per change: time, client, method, endpoint, job or version, result."""
    record = {"time": round(time.time(), 3), "client": request.client.host if request.client else None,
              "method": request.method, "endpoint": request.url.path, **getattr(request.state, "audit", {}),
              "status": status}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


_device = {}


def device_info() -> dict:
    """The training device and its free memory (torch is imported once, on the first health check)."""
    import torch

    if not _device:
        _device["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    info = dict(_device)
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        info.update(gpu_free_gib=round(free / 2**30, 2), gpu_total_gib=round(total / 2**30, 2))
    return info
