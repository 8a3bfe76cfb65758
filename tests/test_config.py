"""Every option of every config group composes; bad values are all reported at once."""

import pytest

from qrtrain.config import check_config, compose, conf_dir, group_options
from qrtrain.errors import QrtrainError

GROUPS = ["model", "model_type", "method", "strategy", "quantization"]
CASES = [(group, option) for group in GROUPS for option in group_options(group)]


def test_groups_have_their_documented_options():
    assert set(group_options("model")) >= {"smollm2-135m-instruct", "tiny"}
    assert set(group_options("model_type")) >= {"standard", "dialogue"}
    assert set(group_options("strategy")) >= {"standard", "finetune"}
    assert set(group_options("quantization")) >= {"none", "int8", "nf4"}
    assert set(group_options("method")) >= {"sft", "dpo", "kto", "orpo", "simpo"}


@pytest.mark.parametrize("group,option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_option_composes_and_checks(group, option):
    cfg = compose([f"{group}={option}"])
    assert cfg[group].name == option
    check_config(cfg)


@pytest.mark.parametrize("extension", sorted(p.stem for p in (conf_dir() / "extensions").glob("*.yaml")) or [None])
def test_every_extension_composes(extension):
    if extension is None:
        pytest.skip("no extension options shipped yet")
    cfg = compose([f"extensions=[{extension}]"])
    assert "_target_" in cfg.extensions[extension]


@pytest.mark.parametrize("tracker", sorted(p.stem for p in (conf_dir() / "tracking").glob("*.yaml")))
def test_every_tracker_composes_and_checks(tracker):
    cfg = compose([f"tracking=[{tracker}]"])
    assert list(cfg.tracking) == [tracker]
    check_config(cfg)  # every tracker's package is installed with qrtrain[track]


def test_keys_that_users_rely_on():
    cfg = compose(["training.max_steps=3", "artifact.root=/tmp/x", "artifact.name=abc"])
    assert (cfg.training.max_steps, cfg.artifact.root, cfg.artifact.name) == (3, "/tmp/x", "abc")


def test_all_bad_values_reported_at_once():
    cfg = compose(["training.max_steps=abc", "lora.r=0", "training.lr_scheduler=sideways", "strategy.layer_decay=2"])
    with pytest.raises(QrtrainError) as caught:
        check_config(cfg)
    message = caught.value.message
    for expected in ("training.max_steps='abc'", "lora.r=0", "training.lr_scheduler='sideways'", "strategy.layer_decay=2"):
        assert expected in message
    assert caught.value.exit_code == 2
