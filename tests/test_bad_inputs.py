"""Every bad input gets its clear message and a non-zero exit, and loses nothing that was there before.

Each row runs `qrtrain train` against a copy of an artifact root that already holds a published
version and the checkpoints of an interrupted training; afterwards both must be byte-identical.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qrtrain.artifacts.manifest import build_manifest
from qrtrain.cli import app

QRTRAIN = str(Path(sys.executable).parent / "qrtrain")
INTERRUPTED = ["model=tiny", "training.max_steps=400", "checkpoint.every_steps=10", "training.eval_steps=0"]
CONVERSATION = {"messages": [{"role": "user", "content": "Capital?"}, {"role": "assistant", "content": "Quillhaven."}]}


def data_file(name: str, content) -> callable:
    """A row whose data.train is a file with this content (str, bytes or a list of JSON lines)."""
    def make(tmp: Path) -> list[str]:
        path = tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, list):
            path.write_text("".join(json.dumps(row) + "\n" for row in content))
        else:
            path.write_text(content)
        return [f"data.train={path}"]
    return make


def overrides(*values: str) -> callable:
    return lambda tmp: list(values)


def corrupt_model(tmp: Path, damage: str) -> list[str]:
    from qrtrain.config import compose
    from qrtrain.models.loading import model_folder

    folder = tmp / "model"
    shutil.copytree(model_folder(compose(["model=tiny"]).model), folder)
    target = folder / ("model.safetensors" if damage == "weights" else "config.json")
    target.write_bytes(target.read_bytes()[:200])
    return [f"model.path={folder}"]


def damage_checkpoint(tmp: Path, damage: str) -> list[str]:
    """Damage the newest checkpoint and name it: a checkpoint named with resume=PATH must be whole
    (resume=auto skips a damaged one: tests/training/test_checkpoints.py)."""
    checkpoint = max(tmp.glob("root/.checkpoints/*/checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if damage == "truncated":
        path = checkpoint / "adapter_model.safetensors"
        path.write_bytes(path.read_bytes()[:-64])
    elif damage == "optimizer":
        path = checkpoint / "optimizer.pt"
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif damage == "steps":
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        (checkpoint / "trainer_state.json").write_text(json.dumps({**state, "global_step": 100000}))
    else:
        (checkpoint / "trainer_state.json").unlink()
    return [*INTERRUPTED, f"resume={checkpoint}"]


def file_as_root(tmp: Path) -> list[str]:
    (tmp / "plain-file").write_text("not a folder")
    return [f"artifact.root={tmp / 'plain-file' / 'outputs'}"]


ROWS = {
    # data files
    "malformed json at line 3": (data_file("d.jsonl", json.dumps(CONVERSATION) + "\n" + json.dumps(CONVERSATION) + '\n{"messages": [\n'), "d.jsonl line 3: not valid JSON"),
    "a list, not an object": (data_file("d.jsonl", [[1, 2]]), "d.jsonl line 1: expected a JSON object"),
    "a null line": (data_file("d.jsonl", "null\n"), "got null"),
    "text is a number": (data_file("d.jsonl", [{"text": 5}]), "`text` must be a non-empty string"),
    "empty file": (data_file("d.jsonl", ""), "no examples (the file is empty)"),
    "only blank lines": (data_file("d.jsonl", "\n\n  \n"), "no examples (the file is empty)"),
    "unknown fields": (data_file("d.jsonl", [{"question": "q", "reply": "a"}]), "got keys ['question', 'reply']"),
    "messages is a string": (data_file("d.jsonl", [{"messages": "hi"}]), "`messages` must be a non-empty list"),
    "messages is empty": (data_file("d.jsonl", [{"messages": []}]), "`messages` must be a non-empty list"),
    "message without content": (data_file("d.jsonl", [{"messages": [{"role": "user"}]}]), "messages[0] must be an object with `role` and `content`"),
    "unknown role": (data_file("d.jsonl", [{"messages": [{"role": "bot", "content": "x"}]}]), "messages[0].role is 'bot'"),
    "content not a string": (data_file("d.jsonl", [{"messages": [{"role": "user", "content": ["x"]}]}]), "messages[0].content[0] must be {type: image} or {type: text, text: ...}"),
    "no assistant turn": (data_file("d.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}]), "no assistant turn"),
    "empty assistant turn": (data_file("d.jsonl", [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}]), "no assistant turn"),
    "bad utf-8": (data_file("d.jsonl", b'{"text": "caf\xe9"}\n'), "d.jsonl line 1: not UTF-8 text"),
    "huge single line": (data_file("d.jsonl", '{"text": "' + "x" * 3_000_000 + "\n"), "d.jsonl line 1: not valid JSON"),
    "over-long: every answer cut": (data_file("d.jsonl", [{"messages": [{"role": "user", "content": "word " * 2000}, {"role": "assistant", "content": "ok"}]}]), "lose every loss token"),
    "mixed formats in one file": (data_file("d.jsonl", [CONVERSATION, {"text": "plain"}]), "mixes formats"),
    "prompt not a string": (data_file("d.jsonl", [{"prompt": 1, "completion": "x"}]), "`prompt` must be a string"),
    "empty completion": (data_file("d.jsonl", [{"prompt": "p", "completion": ""}]), "`completion` must be a non-empty string"),
    "alpaca without output": (data_file("d.jsonl", [{"instruction": "do it"}]), "got keys ['instruction']"),
    "json object, not a list": (data_file("d.json", '{"text": "a"}'), "expected a JSON list of examples"),
    "invalid json file": (data_file("d.json", '[{"text": "a"},\n  {"text": }]'), "d.json line 2: not valid JSON"),
    "unsupported file type": (data_file("d.csv", "text\nhello\n"), "unsupported data file type '.csv'"),
    "corrupt parquet": (data_file("d.parquet", b"PAR1 this is not parquet"), "not a readable Parquet file"),
    "missing data file": (overrides("data.train=/no/such/file.jsonl"), "/no/such/file.jsonl: no such data file"),
    "deeply nested JSON": (data_file("d.jsonl", '{"messages": ' + "[" * 100000 + "]" * 100000 + "}\n"), "d.jsonl line 1: nested too deeply"),
    "a lone surrogate": (data_file("d.jsonl", '{"text": "caf\\ud800"}\n'), "d.jsonl line 1: contains a lone UTF-16 surrogate"),
    "duplicate JSON keys": (data_file("d.jsonl", '{"text": "a", "text": "b"}\n'), "d.jsonl line 1: key 'text' appears twice"),
    "duplicate keys in a .json file": (data_file("d.json", '[{"prompt": "a", "prompt": "b", "completion": "c"}]'), "key 'prompt' appears twice"),
    "empty parquet file": (data_file("d.parquet", b""), "d.parquet: the file is empty (0 bytes)"),
    "corrupt saved dataset": (lambda tmp: (tmp / "ds").mkdir() or (tmp / "ds" / "state.json").write_text("{") and [f"data.train={tmp / 'ds'}"], "not a dataset folder saved with datasets.save_to_disk"),
    "a pipe as data": (lambda tmp: os.mkfifo(tmp / "p.jsonl") or [f"data.train={tmp / 'p.jsonl'}"], "not a regular file (a pipe"),
    "/dev/zero as data": (overrides("data.train=/dev/zero"), "/dev/zero: not a regular file"),
    "empty data.train list": (overrides("data.train=[]"), "data.train=[]: expected a path or a non-empty list"),
    "data.eval is data.train": (lambda tmp: data_file("d.jsonl", [CONVERSATION] * 4)(tmp) + [f"data.eval={tmp / 'd.jsonl'}"], "is the same data as data.train"),
    "data.eval is a copy of data.train": (lambda tmp: data_file("d.jsonl", [CONVERSATION] * 4)(tmp) + data_file("e.jsonl", [CONVERSATION] * 4)(tmp)[:0] + [f"data.eval={tmp / 'e.jsonl'}"], "is the same data as data.train"),
    "messages for model_type=standard": (data_file("d.jsonl", [CONVERSATION]), None),
    # config overrides
    "negative max_steps": (overrides("training.max_steps=-1"), "training.max_steps=-1: expected a whole number above 0"),
    "dropout out of range": (overrides("lora.dropout=1.5"), "lora.dropout=1.5: expected a number in [0, 1)"),
    "weights do not match sources": (overrides("data.train=[a.jsonl]", "data.weights=[1,2]"), "data.weights"),
    "unknown key": (overrides("training.stepz=3"), "stepz"),
    "unknown key added with +": (overrides("+training.nosuch=1"), "training.nosuch: not a qrtrain setting"),
    "misspelt section": (overrides("trainig.max_steps=5"), "did you mean training.max_steps?"),
    "misspelt section added with +": (overrides("+trainig.max_steps=5"), "did you mean training.max_steps?"),
    "misspelt key": (overrides("lora.rr=4"), "lora.rr: not a qrtrain setting; did you mean lora.r?"),
    "unknown top-level key added with +": (overrides("+sede=3"), "sede: not a qrtrain setting; did you mean seed?"),
    "a misspelt key added with +": (overrides("+lora.alfa=8"), "did you mean lora.alpha?"),
    "weights with inf": (lambda tmp: data_file("d.jsonl", [CONVERSATION])(tmp)[:0] + [f"data.train=[{tmp / 'd.jsonl'},{tmp / 'd.jsonl'}]", "data.weights=[1,inf]"], "positive, finite numbers"),
    "very long artifact.name": (overrides("artifact.name=" + "a" * 300), "at most 100 letters"),
    "target modules naming nothing": (overrides("lora.target_modules=[nosuch]"), "no module of this model has that name"),
    "unknown option": (overrides("quantization=int3"), "int3"),
    "resume from nowhere": (overrides("resume=/no/such/checkpoint"), "not a complete qrtrain checkpoint"),
    # models
    "missing model folder": (overrides("model.path=/no/such/model"), "no such model folder"),
    "folder without config.json": (lambda tmp: [f"model.path={tmp}"], "no config.json"),
    "truncated model weights": (lambda tmp: corrupt_model(tmp, "weights"), "could not load the model"),
    "corrupt config.json": (lambda tmp: corrupt_model(tmp, "config"), "could not load the model"),
    # checkpoints
    "truncated checkpoint safetensors": (lambda tmp: damage_checkpoint(tmp, "truncated"), "is damaged: adapter_model.safetensors"),
    "checkpoint without trainer state": (lambda tmp: damage_checkpoint(tmp, "state"), "is damaged: trainer_state.json is missing"),
    "checkpoint with a truncated optimizer": (lambda tmp: damage_checkpoint(tmp, "optimizer"), "is damaged: optimizer.pt is"),
    "checkpoint claiming steps beyond max_steps": (lambda tmp: damage_checkpoint(tmp, "steps"), "claims step 100000, outside"),
    # the machine
    "artifact root not writable": (file_as_root, "is not writable"),
}
ROWS["messages for model_type=standard"] = (
    lambda tmp: data_file("d.jsonl", [CONVERSATION])(tmp) + ["model_type=standard"], "use model_type=dialogue")


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, model_cache):
    """An artifact root with a published v1 and the checkpoints of an interrupted training."""
    root = tmp_path_factory.mktemp("earlier") / "root"
    assert CliRunner().invoke(app, ["train", "model=tiny", "training.max_steps=2", f"artifact.root={root}"]).exit_code == 0
    process = subprocess.Popen([QRTRAIN, "train", *INTERRUPTED, f"artifact.root={root}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    while not list(root.glob(".checkpoints/*/checkpoint-*/.complete")):
        assert process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=300) == 130
    return root


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and ".runs" not in p.parts and p.name != ".lock"}


@pytest.mark.parametrize("row", sorted(ROWS))
def test_bad_input_row(row, earlier, tmp_path):
    make, expected = ROWS[row]
    root = tmp_path / "root"
    shutil.copytree(earlier, root)
    extra = make(tmp_path)
    before = snapshot(root)
    result = CliRunner().invoke(app, ["train", "model=tiny", "training.max_steps=2", f"artifact.root={root}", *extra])
    assert result.exit_code == 2, result.output[-2000:]
    assert expected in result.output, result.output[-2000:]
    assert "Traceback" not in result.output
    after = snapshot(root)
    damaged = {k for k in before if before[k] != after.get(k)}
    if row.startswith(("truncated checkpoint", "checkpoint with")):
        damaged = set()  # the row damaged it itself, before the run
    assert not damaged, f"changed or lost: {sorted(damaged)[:5]}"
    assert sorted(p.name for p in (root / "tiny-dialogue").glob("v*")) == ["v1"]


def test_full_disk_while_publishing_loses_nothing(earlier, tmp_path, monkeypatch):
    import qrtrain.artifacts.versions

    root = tmp_path / "root"
    shutil.copytree(earlier, root)
    before = snapshot(root)

    def disk_full(folder):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(qrtrain.artifacts.versions, "write_manifest", disk_full)
    result = CliRunner().invoke(app, ["train", "model=tiny", "training.max_steps=2", f"artifact.root={root}"])
    assert result.exit_code == 1 and "No space left on device" in result.output and "nothing was published" in result.output
    after = snapshot(root)
    assert all(after.get(k) == v for k, v in before.items())
    assert not list((root / "tiny-dialogue").glob(".staging-*")) and sorted(p.name for p in (root / "tiny-dialogue").glob("v*")) == ["v1"]
    assert build_manifest(root / "tiny-dialogue" / "v1")["root_digest"] == json.loads((root / "tiny-dialogue" / "v1" / "checksums.json").read_text())["root_digest"]


@pytest.mark.parametrize("variable", ["QRTRAIN_CACHE", "HOME"])
def test_an_unwritable_cache_or_home_is_bad_input(tmp_path, monkeypatch, variable):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder should be")
    monkeypatch.delenv("QRTRAIN_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv(variable, str(blocked / "cache"))
    result = CliRunner().invoke(app, ["train", "model=tiny", "training.max_steps=1", f"artifact.root={tmp_path / 'out'}"])
    assert result.exit_code == 2 and "cannot be written" in result.output and "QRTRAIN_CACHE" in result.output
    assert "Traceback" not in result.output and not list((tmp_path / "out").glob("*/v*"))


def test_list_and_verify_do_not_hang_on_pipes(earlier, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(earlier, root)
    version = root / "tiny-dialogue" / "v1"
    (version / "training_metrics.json").unlink()
    os.mkfifo(version / "training_metrics.json")
    result = CliRunner().invoke(app, ["list", "--root", str(root), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)[0]["verified"] is False
    assert CliRunner().invoke(app, ["verify", str(version)]).exit_code == 1
