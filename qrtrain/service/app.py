"""The service's HTTP API and dashboard (FastAPI): one router per resource over the service's state.

    qrtrain serve                                   # http://127.0.0.1:8765/ ; OpenAPI at /docs
    curl localhost:8765/api/jobs
    curl -N localhost:8765/api/jobs/1/events        # Server-Sent Events, replayed from the start, then live

Routers: routes/jobs.py (training jobs, their events and reports), routes/evaluations.py (evaluate and
compare jobs), routes/models.py (the registry), routes/reports.py (every report under the root),
routes/system.py (health, statistics, options, the page), routes/inference.py (the OpenAI-compatible /v1 route
to deployments), routes/deployments.py (endpoints, versions, health and usage).
Every request passes security.Guard first (Host, token, Origin, body size, audit).
"""

import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from qrtrain import __version__
from qrtrain.errors import QrtrainError
from qrtrain.service import checks, jobs, store
from qrtrain.service.routes import deployments, evaluations, inference, models, reports, system
from qrtrain.service.routes import jobs as job_routes
from qrtrain.service.security import Guard

STATIC = Path(__file__).parent / "static"


@dataclass
class ServiceState:
    """What every route works on: the artifact root, the job database, where request paths may point."""

    root: Path
    db: Path
    roots: list[Path]
    workers: int
    token: str | None
    progress: dict = field(default_factory=dict)  # job id -> (events offset, newest training event, newest event)
    trust: object = None  # qrtrain.artifacts.signing.TrustWith: the public keys signatures are checked with
    deployments: Path | None = None  # the deployments' database (qrtrain/deploy/records.py)
    split: dict = field(default_factory=dict)  # endpoint -> requests routed so far (the canary split)
    split_lock: threading.Lock = field(default_factory=threading.Lock)
    route_lock: threading.Lock = field(default_factory=threading.Lock)
    route_db: object = None  # the /v1 route's SQLite connection (qrtrain/service/forwarding.py)
    http: object = None  # the httpx.AsyncClient that forwards /v1 requests to engines


def create_app(root: Path, workers: int = 1, token: str | None = None, data_roots: list[Path] | None = None,
               loopback: bool = True, port: int | None = None, trusted_key: Path | None = None,
               health_interval: float = 10) -> FastAPI:
    """The app for one artifact root. Jobs start when the app starts (uvicorn's lifespan)."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    checks.without_environment()
    from qrtrain.deploy import records

    state = ServiceState(root=root, db=store.database(root), workers=workers, token=token,
                         roots=[Path(r).resolve() for r in (data_roots or [Path.cwd()])] + [root],
                         deployments=records.database(root))
    if trusted_key is not None:
        from qrtrain.artifacts.signing import TrustWith

        state.trust = TrustWith(key=Path(trusted_key).resolve())

    @asynccontextmanager
    async def lifespan(app):
        stop = threading.Event()
        loop = threading.Thread(target=jobs.run_jobs, args=(state.db, root, workers, stop), name="qrtrain-jobs",
                                daemon=True)
        loop.start()
        watch = threading.Thread(target=watch_deployments, args=(root, health_interval, stop), name="qrtrain-health",
                                 daemon=True)
        if health_interval > 0:
            watch.start()
        import httpx

        state.http = httpx.AsyncClient(timeout=httpx.Timeout(600, connect=5),
                                       limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        yield
        await state.http.aclose()
        stop.set()  # job and engine processes are left running: a restarted service adopts them
        loop.join(timeout=5)

    app = FastAPI(title="qrtrain", version=__version__, lifespan=lifespan,
                  description="Training jobs, live progress events and the artifact registry of one artifact root. "
                              "Request bodies are typed: unknown fields are refused (422).")
    app.state.service = state
    app.add_middleware(Guard, root=root, token=token, loopback=loopback, port=port)

    @app.exception_handler(QrtrainError)
    async def refused(request: Request, error: QrtrainError):
        return JSONResponse({"detail": error.message}, status_code=422)

    for router in (job_routes.router, evaluations.router, models.router, reports.router, system.router,
                   inference.router, deployments.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def watch_deployments(root: Path, interval: float, stop: threading.Event) -> None:
    """The deployments' health checks every `interval` seconds; an unhealthy one (and its auto-rollback) is
    also an audit entry."""
    from qrtrain.deploy.health import check_deployments
    from qrtrain.service.security import write_audit

    while not stop.wait(interval):
        try:
            for change in check_deployments(root):
                write_audit(root, {"client": "health-check", "method": "HEALTH", **change})
        except Exception as failure:  # a damaged database must not end the checks: the next round tries again
            write_audit(root, {"client": "health-check", "method": "HEALTH", "error": repr(failure)[:300]})
