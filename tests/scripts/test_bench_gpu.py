"""scripts/bench_gpu.py (--smoke, on CPU): a failed or refused run is recorded and the benchmark still
ends with its summary; a run shorter than the profile window still writes its profile table."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def bench(tmp_path: Path, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, list[dict]]:
    progress = tmp_path / "progress.jsonl"
    command = [sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), "--smoke", "--work", str(tmp_path / "work"),
               "--progress", str(progress), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    return result, [json.loads(line) for line in progress.read_text().splitlines()] if progress.exists() else []


@pytest.mark.slow
def test_a_failed_run_is_recorded_and_the_benchmark_ends(tmp_path):
    import os

    (tmp_path / "a-folder").mkdir()
    env = dict(os.environ, QRTRAIN_EVENTS=str(tmp_path / "a-folder"))  # qrtrain exits 2 on it; the plain script runs
    result, lines = bench(tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = {line["side"]: line for line in lines if "side" in line}
    assert runs["qrtrain"]["failed"] and "QRTRAIN_EVENTS" in runs["qrtrain"]["reason"]
    assert runs["plain"]["tokens_per_s"] > 0
    summary = next(line["result"] for line in lines if "result" in line)
    assert summary["speedup"] is None and summary["failures"]["qrtrain"]
    assert "failed runs" in result.stdout


@pytest.mark.slow
def test_a_short_run_is_profiled(tmp_path):
    result, lines = bench(tmp_path, "--steps", "3", "--profile")
    assert result.returncode == 0, result.stderr[-2000:]
    profile = next(line["result"]["profile"] for line in lines if "result" in line)
    assert all(len(table) > 3 and not table[0].startswith("no profile") for table in profile.values()), profile
