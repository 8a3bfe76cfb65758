"""Progress events as JSON Lines: one object per line, written and flushed as it happens, so `tail -f`,
the service (`qrtrain serve`) and CI can follow a run.

    qrtrain train model=tiny training.max_steps=20 & tail -f outputs/.runs/tiny-dialogue/*/events.jsonl
    QRTRAIN_EVENTS=/tmp/eval.jsonl qrtrain evaluate outputs/tiny-dialogue

Every event has `time` (Unix seconds) and `phase`: validating_data, loading_model, training, evaluating,
publishing, packaging, done, failed, interrupted. `training` events add step, total_steps, loss,
learning_rate, tokens_per_s and eta_s; `done` names what was written (`version`, `report` or `output`);
`failed` and `interrupted` carry `message` and `exit_code`.

`qrtrain train` writes events.jsonl in its run folder; every verb also writes to the file QRTRAIN_EVENTS
names (the service sets it for its jobs). Without either, emit() does nothing.
"""

import json
import os
import time
from pathlib import Path

TERMINAL_PHASES = ("done", "failed", "interrupted")
_paths: list[Path] = []


def write_events_to(*paths: Path | None) -> None:
    """Send this process's events to these files (and to QRTRAIN_EVENTS), from now on."""
    named = os.environ.get("QRTRAIN_EVENTS")
    chosen = [Path(p) for p in (*paths, named) if p]
    _paths[:] = list(dict.fromkeys(p.resolve() for p in chosen))


def emit(phase: str, **fields) -> None:
    """Append one event to each events file; a file that cannot be written never stops the run."""
    if not _paths and os.environ.get("QRTRAIN_EVENTS"):
        write_events_to()
    line = json.dumps({"time": round(time.time(), 3), "phase": phase, **fields}, ensure_ascii=False,
                      default=str) + "\n"
    for path in _paths:
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError:
            pass


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
