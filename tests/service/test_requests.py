"""The typed request schema turned into the CLI's tokens and composed, without a service (fast).

    .venv/bin/pytest tests/service/test_requests.py
"""

import pytest

from qrtrain.service import checks, requests


def test_the_ecosystem_choices_become_config(tmp_path):
    body = requests.TrainRequest.model_validate({
        "model": "tiny", "tracking": ["tensorboard", "mlflow"], "training": {"optim": "adafactor"},
        "lora": {"use_dora": True, "use_rslora": True, "init": "gaussian"}})
    tokens = checks.train_args(body, [tmp_path])
    assert "tracking=[tensorboard,mlflow]" in tokens and "training.optim='adafactor'" in tokens
    assert {"lora.use_dora=true", "lora.use_rslora=true", "lora.init='gaussian'"} <= set(tokens)


def test_benchmarks_are_task_names_only(tmp_path):
    body = requests.EvaluateRequest.model_validate({"target": "x/v1", "benchmarks": {"tasks": ["mmlu"], "limit": 50}})
    assert requests.overrides(body, {}, requests.EVALUATE_KEYS) == ["benchmarks.tasks=['mmlu']", "benchmarks.limit=50"]
    for bad in ({"tasks": ["mmlu"], "include_path": "tasks/"}, {"tasks": ["../x"]}, {"tasks": []}):
        with pytest.raises(ValueError):
            requests.EvaluateRequest.model_validate({"target": "x/v1", "benchmarks": bad})
