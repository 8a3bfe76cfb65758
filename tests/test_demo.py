"""The embedded default model end to end (slow: converts the GGUF once, ~16 s, then trains)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def user_cache(monkeypatch):
    """The default model converts into the user's cache, so `make demo` and the tests share one conversion."""
    monkeypatch.delenv("QRTRAIN_CACHE", raising=False)


def test_default_model_trains_and_publishes(tmp_path, user_cache):
    qrtrain = Path(sys.executable).parent / "qrtrain"
    env = {k: v for k, v in os.environ.items() if k != "QRTRAIN_CACHE"}
    result = subprocess.run([str(qrtrain), "train", "training.max_steps=3", "training.eval_steps=0",
                             "training.batch_size=2", f"artifact.root={tmp_path}"],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    version = tmp_path / "smollm2-135m-instruct-dialogue" / "v1"
    assert result.stdout.strip().splitlines()[-1] == str(version)
    metadata = json.loads((version / "metadata.json").read_text())
    assert metadata["base_model"]["name"] == "smollm2-135m-instruct"
    adapter = json.loads((version / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and adapter["peft_type"] == "LORA"


def test_console_script_bad_input_exit_code(tmp_path):
    qrtrain = Path(sys.executable).parent / "qrtrain"
    result = subprocess.run([str(qrtrain), "train", "model=tiny", f"data.train={tmp_path}/missing.jsonl",
                             f"artifact.root={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "missing.jsonl: no such data file" in result.stderr and "Traceback" not in result.stderr
