"""`train()` is a recipe over typed phases: it returns a TrainResult (published, or interrupted with how to
resume) and never exits the process itself; `qrtrain train` turns that result into the exit code."""

import signal

from qrtrain.training.train import TrainResult, train
from tests.conftest import compose_cfg, published_versions


def test_a_published_run_returns_its_version_and_metrics(tmp_path, model_cache):
    result = train(compose_cfg("training.max_steps=2", root=tmp_path / "out"), tmp_path / "run")
    assert isinstance(result, TrainResult) and result.exit_code == 0 and result.message is None
    assert result.version == tmp_path / "out" / "tiny-dialogue" / "v1" and result.version.is_dir()
    assert result.metrics["global_step"] == 2 and result.objective == result.metrics["eval_loss"]


def test_an_interrupted_run_returns_how_to_resume_instead_of_exiting(tmp_path, model_cache, monkeypatch):
    from qrtrain.training import checkpoints

    install = checkpoints.StopOnSignal.install

    def install_and_receive(self):  # as if SIGINT came during the first step
        install(self)
        self.received = signal.SIGINT

    monkeypatch.setattr(checkpoints.StopOnSignal, "install", install_and_receive)
    cfg = compose_cfg("training.max_steps=50", "checkpoint.every_steps=10", root=tmp_path / "out")
    result = train(cfg, tmp_path / "run")  # a sys.exit here would raise SystemExit and fail the test
    assert result.exit_code == 130 and result.version is None
    assert result.message.startswith("interrupted: ") and "resume with: qrtrain train" in result.message
    assert published_versions(tmp_path / "out") == []
