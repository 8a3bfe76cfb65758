"""The service's state: one SQLite file, `<root>/.service/service.db`, a table of jobs.

    sqlite3 outputs/.service/service.db 'select id, kind, status, version from jobs'

A job row holds what was asked (kind, args), where it runs (folder, pid) and how it ended (status,
exit_code, error, version or report). Each call opens its own connection (WAL mode): the API's threads,
the runner and a restarted service read the same file safely.
"""

import json
import sqlite3
import time
from pathlib import Path

ACTIVE = ("queued", "running")
ENDED = ("done", "failed", "cancelled", "interrupted")
COLUMNS = ("id", "kind", "args", "status", "created", "started", "finished", "pid", "folder", "exit_code", "error",
           "version", "report", "cancel_requested", "attempts")

SCHEMA = """
create table if not exists jobs (
    id integer primary key autoincrement,
    kind text not null,                 -- train | evaluate | compare
    args text not null,                 -- JSON list: the CLI arguments the user gave
    status text not null,               -- queued | running | done | failed | cancelled | interrupted
    created real not null,
    started real,
    finished real,
    pid integer,
    folder text,                        -- the job's folder: events.jsonl, stdout.log, stderr.log, the run
    exit_code integer,
    error text,
    version text,                       -- train: the version published
    report text,                        -- evaluate, compare: the report folder
    cancel_requested integer not null default 0,   -- 1: asked; 2: the job loop has sent SIGTERM
    attempts integer not null default 0
);
"""


def database(root: Path) -> Path:
    folder = Path(root) / ".service"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "service.db"
    with connect(path) as db:
        db.executescript(SCHEMA)
    return path


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None)  # autocommit; `with` blocks are not transactions
    db.execute("pragma journal_mode=wal")
    db.row_factory = sqlite3.Row
    return db


def as_dict(row) -> dict:
    job = dict(row)
    job["args"] = json.loads(job["args"])
    return job


def add_job(path: Path, kind: str, args: list[str]) -> dict:
    with connect(path) as db:
        cursor = db.execute("insert into jobs (kind, args, status, created) values (?, ?, 'queued', ?)",
                            (kind, json.dumps(args), time.time()))
        return get_job(path, cursor.lastrowid)


def get_job(path: Path, job_id: int) -> dict | None:
    with connect(path) as db:
        row = db.execute("select * from jobs where id = ?", (job_id,)).fetchone()
    return as_dict(row) if row else None


def list_jobs(path: Path, status: str | None = None) -> list[dict]:
    with connect(path) as db:
        rows = (db.execute("select * from jobs where status = ? order by id", (status,)) if status
                else db.execute("select * from jobs order by id")).fetchall()
    return [as_dict(row) for row in rows]


def claim_job(path: Path, job_id: int, **fields) -> bool:
    """Move a queued job to running, atomically: True for the one caller whose update found it still queued
    (a cancel, or another loop, that came first wins instead)."""
    return update_job(path, job_id, only_if_status=("queued",), status="running", **fields)


def request_cancel(path: Path, job_id: int) -> bool:
    """Mark a running job to be cancelled (once: a second cancel changes nothing). False if it is not running."""
    with connect(path) as db:
        db.execute("update jobs set cancel_requested = 1 where id = ? and status = 'running' and cancel_requested = 0",
                    (job_id,))
        return db.execute("select status from jobs where id = ?", (job_id,)).fetchone()[0] == "running"


def update_job(path: Path, job_id: int, only_if_status: tuple[str, ...] | None = None, **fields) -> bool:
    """Set fields; with only_if_status, only while the job is in one of those states (True if it was)."""
    assignments = ", ".join(f"{key} = ?" for key in fields)
    query, values = f"update jobs set {assignments} where id = ?", [*fields.values(), job_id]
    if only_if_status:
        query += f" and status in ({', '.join('?' for _ in only_if_status)})"
        values += list(only_if_status)
    with connect(path) as db:
        return db.execute(query, values).rowcount == 1


def statistics(path: Path) -> dict:
    """Jobs by status, success rate of ended jobs, median training time of finished training jobs."""
    with connect(path) as db:
        by_status = dict(db.execute("select status, count(*) from jobs group by status").fetchall())
        durations = sorted(r[0] for r in db.execute(
            "select finished - started from jobs where kind = 'train' and status = 'done' and started is not null"))
    ended = sum(by_status.get(s, 0) for s in ENDED)
    median = None
    if durations:
        middle = len(durations) // 2
        median = durations[middle] if len(durations) % 2 else (durations[middle - 1] + durations[middle]) / 2
    return {"jobs": sum(by_status.values()), "by_status": by_status,
            "success_rate": round(by_status.get("done", 0) / ended, 4) if ended else None,
            "median_training_s": round(median, 2) if median is not None else None}
