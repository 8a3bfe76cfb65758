"""Progress events as JSON Lines: one object per line, written and flushed as it happens, so `tail -f`,
the service (`qrtrain serve`) and CI can follow a run.

    qrtrain train model=tiny training.max_steps=20 & tail -f outputs/.runs/tiny-dialogue/*/events.jsonl
    QRTRAIN_EVENTS=/tmp/eval.jsonl qrtrain evaluate outputs/tiny-dialogue

Every event has `time` (Unix seconds) and `phase`: validating_data, loading_model, training, evaluating,
publishing, packaging, done, failed, interrupted. `training` events add step, total_steps, loss,
learning_rate, tokens_per_s and eta_s; `done` names what was written (`version`, `report` or `output`);
`failed` and `interrupted` carry `message` and `exit_code`.

`qrtrain train` writes events.jsonl in its run folder; every verb also writes to the file QRTRAIN_EVENTS
names (the service sets it for its jobs): a regular file or /dev/null, anything else is refused (exit 2).
Without either, emit() does nothing.
"""

import json
import os
import stat
import time
from pathlib import Path

TERMINAL_PHASES = ("done", "failed", "interrupted")
_paths: list[Path] = []


def check_events_file() -> None:
    """QRTRAIN_EVENTS must name a regular file (or one to be created), or /dev/null: a pipe, a device or a
    folder is refused at start (exit 2), so no run ever hangs or writes into one."""
    named = os.environ.get("QRTRAIN_EVENTS")
    if not named:
        return
    path = Path(named)
    if path == Path(os.devnull) or not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_file():
        from qrtrain.errors import QrtrainError

        raise QrtrainError(f"QRTRAIN_EVENTS={named}: not a regular file (a pipe, device, folder or link); "
                           "name a file to append JSON lines to, or unset it")


def write_events_to(*paths: Path | None) -> None:
    """Send this process's events to these files (and to QRTRAIN_EVENTS), from now on."""
    named = os.environ.get("QRTRAIN_EVENTS")
    chosen = [Path(p) for p in (*paths, named) if p]
    _paths[:] = list(dict.fromkeys(p.resolve() for p in chosen))


def emit(phase: str, **fields) -> None:
    """Append one event to each events file; a file that cannot be written never stops the run, and
    anything but a regular file is never written (opened without blocking, checked once open)."""
    if not _paths and os.environ.get("QRTRAIN_EVENTS"):
        write_events_to()
    line = json.dumps({"time": round(time.time(), 3), "phase": phase, **fields}, ensure_ascii=False,
                      default=str) + "\n"
    for path in _paths:
        if path == Path(os.devnull):
            continue
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0),
                         0o644)
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.write(fd, line.encode("utf-8"))
        except OSError:
            pass
        finally:
            os.close(fd)


def read_events(path: Path, start: int = 0) -> tuple[list[dict], int]:
    """The whole events after byte offset `start`, and the offset after the last whole line read."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return [], start
    events, used = [], 0
    for line in data.split(b"\n")[:-1]:  # a line still being written has no newline yet
        used += len(line) + 1
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events, start + used
