"""Training jobs: create (a typed TrainRequest), list, one job, cancel, resume, live events, reports.

    curl -X POST localhost:8765/api/jobs -H 'content-type: application/json' -d '{"model": "tiny"}'
    curl -N localhost:8765/api/jobs/1/events
"""

import asyncio
import json
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse

from qrtrain.events import read_events
from qrtrain.files import read_json
from qrtrain.service import checks, jobs, store
from qrtrain.service.requests import TrainRequest
from qrtrain.service.routes import service

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
JobId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="A job id")]
FOLLOW_S = 0.2


def job_view(state, job: dict) -> dict:
    """A job row with its phase, newest training progress and (trained) final metrics; a damaged metrics
    file shows as `metrics_problem` on this job only."""
    offset, training, last = state.progress.get(job["id"], (0, None, None))
    if job["folder"]:
        events, offset = read_events(Path(job["folder"]) / "events.jsonl", offset)
        training = next((e for e in reversed(events) if e.get("phase") == "training"), training)
        last = events[-1] if events else last
        state.progress[job["id"]] = (offset, training, last)
    metrics, problem = None, None
    if job["version"]:
        found, problem = read_json(Path(job["version"]) / "training_metrics.json")
        final = (found or {}).get("final")
        metrics = final if isinstance(final, dict) else None
        if found is not None and metrics is None:
            problem = "no `final` metrics"
    return {**job, "cancel_requested": bool(job["cancel_requested"]), "phase": last.get("phase") if last else None,
            "progress": training, "metrics": metrics, **({"metrics_problem": problem} if problem else {})}


def job_or_404(state, job_id: int) -> dict:
    job = store.get_job(state.db, job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return job


@router.post("", status_code=201, summary="Queue a training job (`qrtrain train` with these settings)")
def create_job(request: Request, body: TrainRequest, state=Depends(service)):
    args = checks.train_args(body, state.roots)
    job = store.add_job(state.db, "train", args)
    request.state.audit = {"job": job["id"]}
    return job_view(state, job)


@router.get("", summary="Every job, oldest first (filter by status)")
def list_all_jobs(status: str | None = None, state=Depends(service)):
    return [job_view(state, job) for job in store.list_jobs(state.db, status)]


@router.get("/{job_id}", summary="One job: status, progress, metrics, folder, version, exit code, error")
def get_job(job_id: JobId, state=Depends(service)):
    return job_view(state, job_or_404(state, job_id))


@router.post("/{job_id}/cancel", summary="Cancel: queued jobs at once, running ones by SIGTERM (checkpoint saved)")
def cancel(request: Request, job_id: JobId, state=Depends(service)):
    job_or_404(state, job_id)
    request.state.audit = {"job": job_id}
    job = jobs.cancel_job(state.db, job_id)
    if job is None:
        status = store.get_job(state.db, job_id)["status"]
        raise HTTPException(409, f"job {job_id} is {status}; only queued or running jobs can be cancelled")
    return job_view(state, job)


@router.post("/{job_id}/resume", summary="Queue a cancelled, interrupted or failed job again (from its checkpoint)")
def resume(request: Request, job_id: JobId, state=Depends(service)):
    job = job_or_404(state, job_id)
    request.state.audit = {"job": job_id}
    if not jobs.resume_job(state.db, job):
        raise HTTPException(409, f"job {job_id} is {job['status']}; only cancelled, interrupted or failed jobs resume")
    return job_view(state, store.get_job(state.db, job_id))


async def follow(state, job_id: int, start: int = 0):
    """(line number, event) from the start, then live; ends once the job has ended and all is read."""
    offset, number = 0, 0
    while True:
        job = store.get_job(state.db, job_id)
        events, offset = read_events(Path(job["folder"]) / "events.jsonl", offset) if job["folder"] else ([], 0)
        for event in events:
            number += 1
            if number > start:
                yield number, event
        if not events and job["status"] in store.ENDED:
            return
        if not events:
            await asyncio.sleep(FOLLOW_S)


@router.get("/{job_id}/events", summary="Server-Sent Events: every event from the start, then live")
async def events_stream(job_id: JobId, state=Depends(service),
                        last_event_id: Annotated[int | None, Header(ge=0, le=2**63 - 1)] = None):
    job_or_404(state, job_id)

    async def sse():
        async for number, event in follow(state, job_id, last_event_id or 0):
            yield f"id: {number}\nevent: {event.get('phase')}\ndata: {json.dumps(event)}\n\n"
        yield f"event: end\ndata: {json.dumps({'status': store.get_job(state.db, job_id)['status']})}\n\n"

    return StreamingResponse(sse(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


@router.websocket("/{job_id}/ws")
async def events_socket(socket: WebSocket, job_id: int):
    state = socket.app.state.service  # Host, token and Origin were checked by security.Guard
    if not 1 <= job_id < 2**63 or store.get_job(state.db, job_id) is None:
        await socket.close(code=4404)
        return
    await socket.accept()
    try:
        async for _, event in follow(state, job_id):
            await socket.send_json(event)
        await socket.send_json({"phase": "end", "status": store.get_job(state.db, job_id)["status"]})
        await socket.close()
    except WebSocketDisconnect:
        pass


@router.get("/{job_id}/report", summary="An evaluation or comparison job's report (JSON)")
def job_report(job_id: JobId, state=Depends(service)):
    job = job_or_404(state, job_id)
    if not job["report"]:
        raise HTTPException(404, f"job {job_id} has no report (status {job['status']})")
    folder = Path(job["report"])
    found = sorted(p for p in folder.glob("*.json") if not p.is_symlink())
    if not found:
        raise HTTPException(404, f"{folder}: no report file")
    report, problem = read_json(found[0])
    return {"folder": str(folder), "files": sorted(p.name for p in folder.iterdir()), "report": report,
            **({"report_problem": problem} if problem else {})}
