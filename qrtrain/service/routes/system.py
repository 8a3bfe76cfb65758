"""The service itself: health, statistics, the form's options, and the dashboard page.

    curl localhost:8765/api/health
    curl localhost:8765/api/statistics
"""

import hmac
import shutil
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse

from qrtrain import __version__
from qrtrain.files import read_json
from qrtrain.service import store
from qrtrain.service.routes import service

router = APIRouter(tags=["service"])
STATIC = Path(__file__).resolve().parent.parent / "static"
_device = {}


@router.get("/api/health", summary="Device, free disk and GPU memory, queue length, version")
def health(state=Depends(service)):
    return {"status": "ok", "version": __version__, **device_info(),
            "disk_free_gib": round(shutil.disk_usage(state.root).free / 2**30, 2),
            "queued": len(store.list_jobs(state.db, "queued")), "running": len(store.list_jobs(state.db, "running")),
            "workers": state.workers, "root": str(state.root)}


@router.get("/api/statistics", summary="Jobs by status, success rate, median training time, tokens trained")
def statistics(state=Depends(service)):
    tokens, damaged = 0, []
    for job in store.list_jobs(state.db, "done"):
        if job["kind"] != "train" or not job["version"]:
            continue
        metrics, problem = read_json(Path(job["version"]) / "training_metrics.json")
        final = (metrics or {}).get("final")
        counted = final.get("num_tokens") if isinstance(final, dict) else None
        if isinstance(counted, (int, float)) and not isinstance(counted, bool):
            tokens += int(counted)
        elif problem != "missing":  # a deleted version is not damage
            damaged.append(job["id"])
    return {**store.statistics(state.db), "tokens_trained": tokens, "jobs_with_damaged_metrics": damaged}


@router.get("/api/options", summary="The config groups' options and the typed choices, for the dashboard's form")
def options():
    from qrtrain.config import LORA_INITS, OPTIMIZERS, group_options

    found = {group: group_options(group) for group in
             ("model", "model_type", "method", "strategy", "quantization", "extensions", "evaluation", "tracking")}
    return {**found, "optim": list(OPTIMIZERS), "lora_init": list(LORA_INITS)}


@router.get("/", include_in_schema=False)
def page(request: Request, state=Depends(service)):
    """The dashboard; `/?token=T` (the right token) also sets it as an HttpOnly, SameSite=Strict cookie."""
    response = FileResponse(STATIC / "index.html")
    given = request.query_params.get("token")
    if state.token is not None and given and hmac.compare_digest(given.encode(), state.token.encode()):
        response.set_cookie("qrtrain_token", state.token, httponly=True, samesite="strict")
    return response


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
