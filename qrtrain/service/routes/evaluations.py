"""Evaluation and comparison jobs: `qrtrain evaluate` and `qrtrain compare` from typed requests.

    curl -X POST localhost:8765/api/evaluations -H 'content-type: application/json' -d '{"target": "tiny-dialogue/v1"}'
    curl -X POST localhost:8765/api/comparisons -H 'content-type: application/json' -d '{"systems": ["base", "adapter"]}'
"""

from fastapi import APIRouter, Depends, Request

from qrtrain.service import checks, store
from qrtrain.service.requests import CompareRequest, EvaluateRequest
from qrtrain.service.routes import service
from qrtrain.service.routes.jobs import job_view

router = APIRouter(prefix="/api", tags=["evaluations"])


@router.post("/evaluations", status_code=201, summary="Queue `qrtrain evaluate NAME[/vN]` as a job")
def create_evaluation(request: Request, body: EvaluateRequest, state=Depends(service)):
    args = checks.evaluate_args(body, state.root, state.roots)
    job = store.add_job(state.db, "evaluate", args)
    request.state.audit = {"job": job["id"], "version": body.target}
    return job_view(state, job)


@router.post("/comparisons", status_code=201, summary="Queue `qrtrain compare` as a job")
def create_comparison(request: Request, body: CompareRequest, state=Depends(service)):
    args = checks.compare_args(body, state.root, state.roots)
    job = store.add_job(state.db, "compare", args)
    request.state.audit = {"job": job["id"]}
    return job_view(state, job)
