"""Deployments and their usage: one SQLite file, `<root>/.deployments/deployments.db`, shared by
`qrtrain deploy` (which starts, checks and switches engines) and `qrtrain serve` (which routes /v1 requests,
records their usage and runs the health checks).

    sqlite3 outputs/.deployments/deployments.db 'select id, endpoint, version, status, port from deployments'

A deployment is one engine process serving one version for one endpoint. Its status:
starting (being checked) -> live (takes the endpoint's traffic) | canary (takes `share` percent of it) ->
standby (the previous live one, still running, what a rollback returns to) -> stopped; failed (a check
failed before it took traffic) and unhealthy (it failed its health checks while serving) are ends too.
Every change of state is one transaction, and one line in `<root>/.deployments/events.jsonl`.
"""

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

RUNNING = ("starting", "live", "canary", "standby")
SERVING = ("live", "canary")

SCHEMA = """
create table if not exists deployments (
    id integer primary key autoincrement,
    endpoint text not null,             -- the name clients send as `model`
    version text not null,              -- NAME/vN
    version_path text not null,
    root_digest text not null,          -- the version's manifest digest when it was deployed
    engine text not null,               -- transformers | vllm | llama.cpp | ollama
    model_id text not null,             -- what the engine calls the model
    folder text not null,               -- logs and the build
    port integer,
    pid integer,
    status text not null,
    share integer not null default 0,   -- canary: percent of the endpoint's requests
    created real not null,
    updated real not null,
    checks text,                        -- JSON: readiness, smoke, equivalence figures
    error text,
    health_failures integer not null default 0,
    checked real                        -- time of the last health check
);
create table if not exists usage (
    deployment integer not null,
    time real not null,
    route text not null,                -- chat | completions
    status integer not null,            -- the HTTP status the client got
    latency_s real not null,
    prompt_tokens integer,
    completion_tokens integer,
    stream integer not null
);
create index if not exists usage_by_deployment on usage (deployment);
"""


def folder(root: Path) -> Path:
    path = Path(root) / ".deployments"
    path.mkdir(parents=True, exist_ok=True)
    return path


def database(root: Path) -> Path:
    path = folder(root) / "deployments.db"
    with connect(path) as db:
        db.executescript(SCHEMA)
    return path


def connect(path: Path, shared: bool = False) -> sqlite3.Connection:
    """A connection (autocommit; transactions are explicit). `shared`: one the service keeps for its /v1 route,
    used from several threads under a lock, writing usage rows without an fsync each (WAL with synchronous=NORMAL
    stays consistent; a power cut may lose the last rows of usage, never a deployment's state)."""
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=not shared)
    if shared:
        db.execute("pragma synchronous=normal")
    db.execute("pragma journal_mode=wal")
    db.row_factory = sqlite3.Row
    return db


def as_dict(row) -> dict:
    found = dict(row)
    found["checks"] = json.loads(found["checks"]) if found.get("checks") else None
    return found


def add(db_path: Path, **fields) -> dict:
    now = time.time()
    fields = {**fields, "created": now, "updated": now}
    with connect(db_path) as db:
        cursor = db.execute(f"insert into deployments ({', '.join(fields)}) values ({', '.join('?' for _ in fields)})",
                            list(fields.values()))
    return get(db_path, cursor.lastrowid)


def get(db_path: Path, deployment_id: int) -> dict | None:
    with connect(db_path) as db:
        row = db.execute("select * from deployments where id = ?", (deployment_id,)).fetchone()
    return as_dict(row) if row else None


def update(db_path: Path, deployment_id: int, **fields) -> None:
    if "checks" in fields and not isinstance(fields["checks"], (str, type(None))):
        fields["checks"] = json.dumps(fields["checks"])
    fields["updated"] = time.time()
    with connect(db_path) as db:
        db.execute(f"update deployments set {', '.join(f'{k} = ?' for k in fields)} where id = ?",
                   [*fields.values(), deployment_id])


def listing(db_path: Path, endpoint: str | None = None, statuses: tuple[str, ...] | None = None, db=None) -> list[dict]:
    query, values = "select * from deployments where 1", []
    if endpoint is not None:
        query, values = query + " and endpoint = ?", [endpoint]
    if statuses:
        query += f" and status in ({', '.join('?' for _ in statuses)})"
        values += list(statuses)
    if db is not None:
        return [as_dict(row) for row in db.execute(query + " order by id", values).fetchall()]
    with connect(db_path) as own:
        return [as_dict(row) for row in own.execute(query + " order by id", values).fetchall()]


def endpoint_state(db_path: Path, endpoint: str) -> dict:
    """{live, canary, standby}: the endpoint's deployment in each role, or None."""
    found = {status: None for status in ("live", "canary", "standby")}
    for deployment in listing(db_path, endpoint, ("live", "canary", "standby")):
        found[deployment["status"]] = deployment
    return found


def switch(db_path: Path, changes: dict[int, str], expected: dict[int, str]) -> bool:
    """Set each deployment's status in one transaction, only if every one is still as `expected`
    (False, and nothing changed, when another command or the health check came first)."""
    now = time.time()
    with connect(db_path) as db:
        db.execute("begin immediate")
        try:
            for deployment_id, status in expected.items():
                row = db.execute("select status from deployments where id = ?", (deployment_id,)).fetchone()
                if row is None or row[0] != status:
                    db.execute("rollback")
                    return False
            for deployment_id, status in changes.items():
                db.execute("update deployments set status = ?, updated = ? where id = ?", (status, now, deployment_id))
            db.execute("commit")
        except BaseException:
            db.execute("rollback")
            raise
    return True


def record_usage(db_path: Path, deployment_id: int, route: str, status: int, latency_s: float,
                 prompt_tokens: int | None, completion_tokens: int | None, stream: bool, db=None) -> None:
    """One usage row; `db` is a connection the caller keeps open (the service's, shared under its lock)."""
    row = (deployment_id, time.time(), route, status, latency_s, prompt_tokens, completion_tokens, int(stream))
    if db is not None:
        db.execute("insert into usage values (?, ?, ?, ?, ?, ?, ?, ?)", row)
        return
    with connect(db_path) as own:
        own.execute("insert into usage values (?, ?, ?, ?, ?, ?, ?, ?)", row)


def usage_summary(db_path: Path, deployment_id: int) -> dict:
    """Requests, errors (status >= 400), latency p50/p99 (seconds) and tokens of one deployment."""
    with connect(db_path) as db:
        rows = db.execute("select status, latency_s, prompt_tokens, completion_tokens from usage where deployment = ?",
                          (deployment_id,)).fetchall()
    latencies = sorted(r["latency_s"] for r in rows)

    def percentile(p: float):
        return round(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))], 4) if latencies else None

    return {"requests": len(rows), "errors": sum(r["status"] >= 400 for r in rows),
            "latency_p50_s": percentile(50), "latency_p99_s": percentile(99),
            "prompt_tokens": sum(r["prompt_tokens"] or 0 for r in rows),
            "completion_tokens": sum(r["completion_tokens"] or 0 for r in rows)}


def record_event(root: Path, event: str, **fields) -> None:
    """One JSON line in <root>/.deployments/events.jsonl: deployed, failed, promoted, rolled_back, stopped,
    unhealthy (with auto_rollback when traffic went back to the previous version)."""
    with open(folder(root) / "events.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"time": round(time.time(), 3), "event": event, **fields}) + "\n")


def process_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stop_process(pid: int | None, wait_s: float = 20) -> None:
    """SIGTERM the engine's process group, SIGKILL it if it is still there after wait_s."""
    if not pid:
        return
    for sig, wait in ((signal.SIGTERM, wait_s), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            except ChildProcessError:  # not our child: poll for it
                if not process_alive(pid):
                    return
            time.sleep(0.1)
