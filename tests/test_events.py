"""Progress events: `qrtrain train` writes events.jsonl into its run folder as it goes; evaluate and package
write theirs where QRTRAIN_EVENTS says; a failure ends on `failed` with the message and exit code.

    .venv/bin/pytest tests/test_events.py
"""

import json

from qrtrain.events import emit, read_events, write_events_to
from tests.conftest import invoke


def phases(path) -> list[str]:
    return [json.loads(line)["phase"] for line in path.read_text().splitlines()]


def test_train_writes_its_events_into_the_run_folder(tmp_path, model_cache):
    result = invoke("train", "model=tiny", "training.max_steps=4", "training.eval_steps=2", "training.logging_steps=2",
                    f"artifact.root={tmp_path}")
    assert result.exit_code == 0, result.output
    [events_file] = (tmp_path / ".runs").rglob("events.jsonl")
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    names = [e["phase"] for e in events]
    assert names[:2] == ["validating_data", "loading_model"] and names[-2:] == ["publishing", "done"]
    assert "evaluating" in names
    training = [e for e in events if e["phase"] == "training"]
    assert sorted({e["step"] for e in training}) == [1, 2, 3, 4]
    assert all(e["total_steps"] == 4 for e in training)
    logged = [e for e in training if e.get("loss") is not None]
    assert logged and all(e["learning_rate"] is not None and e["tokens_per_s"] > 0 for e in logged)
    # each loss names the step it was logged at: one loss per logging step, no staircase of repeats
    assert sorted({e["loss_step"] for e in logged}) == [2, 4]
    assert len({e["loss"] for e in logged if e["loss_step"] == 2}) == 1
    assert training[-1]["eta_s"] == 0
    assert events[-1]["version"] == str(tmp_path / "tiny-dialogue" / "v1")
    assert all(a["time"] <= b["time"] for a, b in zip(events, events[1:]))


def test_a_failed_run_ends_on_failed_with_its_message(tmp_path, model_cache):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": "not a list"}\n')
    result = invoke("train", "model=tiny", f"data.train={bad}", f"artifact.root={tmp_path}")
    assert result.exit_code == 2
    [events_file] = (tmp_path / ".runs").rglob("events.jsonl")
    last = json.loads(events_file.read_text().splitlines()[-1])
    assert last["phase"] == "failed" and last["exit_code"] == 2 and "bad.jsonl" in last["message"]


def test_evaluate_and_package_write_to_qrtrain_events(tmp_path, model_cache, monkeypatch):
    assert invoke("train", "model=tiny", "training.max_steps=2", f"artifact.root={tmp_path}").exit_code == 0
    version = tmp_path / "tiny-dialogue" / "v1"
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("QRTRAIN_EVENTS", str(events))
    write_events_to()
    assert invoke("package", version, "--format", "bundle", "--output", tmp_path / "b.tar.gz").exit_code == 0
    assert invoke("package", version, "--format", "nosuch").exit_code == 2
    assert phases(events) == ["packaging", "done", "packaging", "failed"]
    result = invoke("evaluate", version, "generation.max_new_tokens=4", f"output_dir={tmp_path / 'report'}")
    assert result.exit_code == 0, result.output
    assert phases(events)[-2:] == ["evaluating", "done"]
    assert json.loads(events.read_text().splitlines()[-1])["report"] == str(tmp_path / "report")


def test_read_events_skips_a_partial_last_line(tmp_path):
    path = tmp_path / "events.jsonl"
    write_events_to(path)
    emit("training", step=1)
    with open(path, "a") as f:
        f.write('{"phase": "trai')  # a writer in the middle of a line
    events, offset = read_events(path)
    assert [e["step"] for e in events] == [1] and offset == len(path.read_text().splitlines()[0]) + 1
    with open(path, "a") as f:
        f.write('ning", "step": 2}\n')
    more, _ = read_events(path, offset)
    assert [e["step"] for e in more] == [2]
