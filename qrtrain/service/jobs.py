"""Jobs as processes: each job runs the qrtrain CLI (`python -m qrtrain train ...`) as its own process in its
own session, at most `workers` at once, the rest waiting in the order they came.

    curl -X POST localhost:8765/api/jobs -H 'content-type: application/json' \\
         -d '{"overrides": ["model=tiny", "training.max_steps=20"]}'

A job's folder (`<root>/.service/jobs/<id>/`) holds its events.jsonl (QRTRAIN_EVENTS), stdout.log,
stderr.log and, for training, the Hydra run folder. How a job ended is read from its last event
(done, failed, interrupted) and its exit code; a process that ends without a final event was killed.

When the service stops or dies, its job processes do not: they finish (or fail) on their own and write
their events. A restarted service adopts every job process still alive (its pid, whose command line
names the job's folder) and settles the others from their events: done, failed, or `interrupted` when
the process died without a word (resumable: POST /api/jobs/{id}/resume continues from its checkpoint).
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from qrtrain.events import TERMINAL_PHASES, read_events
from qrtrain.service import store

POLL_S = 0.25


def job_folder(root: Path, job_id: int) -> Path:
    return Path(root).resolve() / ".service" / "jobs" / str(job_id)


def command(job: dict, root: Path, folder: Path) -> list[str]:
    """The CLI command a job runs: the user's arguments, with the service's artifact root and output places."""
    cli = [sys.executable, "-m", "qrtrain", job["kind"]]
    if job["kind"] == "train":
        return [*cli, *job["args"], f"artifact.root={Path(root).resolve()}", f"hydra.run.dir={folder / 'run'}"]
    if job["kind"] == "compare":
        return [*cli, *job["args"], f"artifact.root={Path(root).resolve()}", f"output_dir={folder / 'report'}"]
    return [*cli, *job["args"], f"output_dir={folder / 'report'}"]  # evaluate TARGET overrides


def start_job(db: Path, root: Path, job: dict, children: dict) -> bool:
    """Claim the queued job (atomically: a cancel that came first wins), then start its process."""
    folder = job_folder(root, job["id"])
    if not store.claim_job(db, job["id"], started=time.time(), pid=None, folder=str(folder),
                           attempts=job["attempts"] + 1, finished=None, exit_code=None, error=None):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    events = folder / "events.jsonl"
    if events.is_symlink() or (events.exists() and not events.is_file()):
        events.unlink()
    env = dict(os.environ, QRTRAIN_EVENTS=str(events), PYTHONUNBUFFERED="1")
    try:
        with open(folder / "stdout.log", "ab") as out, open(folder / "stderr.log", "ab") as err:
            process = subprocess.Popen(command(job, root, folder), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                       env=env, start_new_session=True)
    except OSError as error:
        store.update_job(db, job["id"], status="failed", finished=time.time(), error=f"could not start: {error}")
        return False
    children[job["id"]] = process
    store.update_job(db, job["id"], pid=process.pid)
    return True


def is_job_process(pid: int, folder: str) -> bool:
    """The process with this pid is alive and is this job's (its command line names the job's folder)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():  # no /proc (macOS): the pid alone
        return True
    try:
        text = cmdline.read_bytes().decode(errors="replace")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return folder in text and state != "Z"


def last_event(folder: str | None) -> dict | None:
    if not folder:
        return None
    events, _ = read_events(Path(folder) / "events.jsonl")
    return events[-1] if events else None


def settle(db: Path, job: dict, exit_code: int | None) -> None:
    """Record how a job's process ended, from its last event and its exit code (None: not our child)."""
    event = last_event(job["folder"]) or {}
    fields = {"finished": time.time(), "exit_code": exit_code, "pid": None}
    phase = event.get("phase") if event.get("phase") in TERMINAL_PHASES else None
    if phase == "done" and exit_code in (0, None):
        fields.update(status="done", version=event.get("version"), report=event.get("report") or event.get("output"),
                      exit_code=0)
    elif job["cancel_requested"] and (phase == "interrupted" or exit_code is not None):
        fields.update(status="cancelled", error=event.get("message") or "cancelled",
                      exit_code=event.get("exit_code", exit_code))
    elif phase in ("failed", "interrupted"):
        fields.update(status=phase, error=event.get("message"), exit_code=event.get("exit_code", exit_code))
    elif exit_code is None:
        fields.update(status="interrupted", error="the job's process ended while the service was not running, "
                                                  "without a final event; resume it to continue from its checkpoint")
    else:
        how = f"killed by {signal.Signals(-exit_code).name}" if exit_code < 0 else f"exit code {exit_code}"
        fields.update(status="failed", error=f"the job's process ended ({how}) without a final event: killed, or out "
                                             "of memory? see stderr.log; resume it to continue from its checkpoint")
    store.update_job(db, job["id"], **fields)


def adopt_after_restart(db: Path) -> None:
    """A job marked running whose process is gone is settled now; one still alive is left running (watched)."""
    for job in store.list_jobs(db, "running"):
        if not (job["pid"] and is_job_process(job["pid"], job["folder"] or "")):
            settle(db, job, None)


def check_running(db: Path, children: dict) -> None:
    for job in store.list_jobs(db, "running"):
        process = children.get(job["id"])
        if process is not None:
            code = process.poll()
            if code is not None:
                children.pop(job["id"])
                settle(db, store.get_job(db, job["id"]), code)
        elif not (job["pid"] and is_job_process(job["pid"], job["folder"] or "")):  # adopted after a restart
            settle(db, store.get_job(db, job["id"]), None)


def start_queued(db: Path, root: Path, workers: int, children: dict) -> None:
    free = workers - len(store.list_jobs(db, "running"))
    for job in store.list_jobs(db, "queued"):
        if free <= 0:
            return
        free -= start_job(db, root, job, children)


def signal_cancelled(db: Path) -> None:
    """Send SIGTERM, once, to each running job whose cancel was asked for (only this loop signals jobs, so a
    cancel that arrives while a job is being started is never lost, and never sent twice)."""
    for job in store.list_jobs(db, "running"):
        if job["cancel_requested"] == 1 and job["pid"] and is_job_process(job["pid"], job["folder"] or ""):
            try:
                os.killpg(job["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
            store.update_job(db, job["id"], cancel_requested=2)


def cancel_job(db: Path, job_id: int) -> dict | None:
    """Queued: cancelled at once. Running: marked, and the job loop sends SIGTERM to its process group; the
    run saves a checkpoint and exits 143, and the job becomes `cancelled` (resumable). Each step is one
    conditional update, so a job being claimed at the same moment is either cancelled before it starts or
    marked and signalled once it runs. None: the job had already ended."""
    if store.update_job(db, job_id, only_if_status=("queued",), status="cancelled", finished=time.time(),
                        error="cancelled before it started"):
        return store.get_job(db, job_id)
    if store.request_cancel(db, job_id):
        return store.get_job(db, job_id)
    return None


def resume_job(db: Path, job: dict) -> bool:
    """Queue an ended, unfinished job again; training resumes from its newest complete checkpoint."""
    return store.update_job(db, job["id"], only_if_status=("cancelled", "interrupted", "failed"), status="queued",
                            cancel_requested=0, finished=None, error=None, exit_code=None)


def run_jobs(db: Path, root: Path, workers: int, stop: threading.Event) -> dict:
    """The service's job loop (a thread): settle ended jobs, start queued ones, every POLL_S seconds."""
    children: dict = {}
    adopt_after_restart(db)
    while not stop.is_set():
        check_running(db, children)
        signal_cancelled(db)
        start_queued(db, root, workers, children)
        signal_cancelled(db)
        stop.wait(POLL_S)
    return children
