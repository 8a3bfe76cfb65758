"""Preference tuning on the tiny model: each method trains for real and publishes a version that verifies;
DPO's loss is the formula; bad rows are named; a version from a parent records it and verify checks it."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qrtrain.artifacts.manifest import write_manifest
from qrtrain.data.preference import row_problem
from tests.conftest import compose_cfg, invoke

FAST = ["model=tiny", "training.max_steps=8", "training.batch_size=4", "training.learning_rate=5e-3",
        "training.warmup_ratio=0", "training.logging_steps=1", "training.eval_steps=0", "checkpoint.every_steps=0"]


def train(root: Path, *overrides: str):
    result = invoke("train", *FAST, f"artifact.root={root}", *overrides)
    assert result.exit_code == 0, result.output[-3000:]
    return Path(result.output.strip().splitlines()[-1])


def logged_losses(version: Path) -> list[float]:
    history = json.loads((version / "training_metrics.json").read_text())["history"]
    return [entry["loss"] for entry in history if "loss" in entry]


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    """An SFT version and a DPO version trained from it, in one artifact root (shared: read, never changed)."""
    root = tmp_path_factory.mktemp("lineage")
    sft = train(root, "training.max_steps=4")
    dpo = train(root, "method=dpo", "init_adapter=tiny-dialogue/v1")
    return root, sft, dpo


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


STRING_PAIRS = [{"prompt": f"Q{i}: what is {i} plus {i}?\nA:", "chosen": f" {2 * i}.", "rejected": f" {2 * i + 3}."}
                for i in range(12)]


@pytest.mark.parametrize("method,model_type", [("dpo", "dialogue"), ("dpo", "standard"), ("kto", "dialogue"),
                                               ("orpo", "dialogue"), ("simpo", "standard")])
def test_each_method_trains_and_publishes_a_version_that_verifies(tmp_path, method, model_type):
    data = [] if model_type == "dialogue" else [f"data.train={write_rows(tmp_path / 'pairs.jsonl', STRING_PAIRS)}"]
    version = train(tmp_path / "out", f"method={method}", f"model_type={model_type}", *data)
    assert version.name == "v1" and version.parent.name.endswith(f"-{method}")
    assert invoke("verify", version).exit_code == 0
    metadata = json.loads((version / "metadata.json").read_text())
    assert metadata["method"]["name"] == method and metadata["parent"] is None
    assert metadata["base_weights_check"]["unchanged"] is True  # checked against the frozen digest before publishing
    adapter = load_file(version / "adapter_model.safetensors")
    assert not any(".ref." in name for name in adapter), "the frozen reference adapter must not be published"
    assert all(t.abs().sum() > 0 for n, t in adapter.items() if "lora_B" in n), "LoRA B stayed at its zero init"
    losses = logged_losses(version)
    assert len(losses) == 8
    if method == "kto":  # a batch of 4 unpaired rows may hold only one side: its loss is noisy; its reward is not
        history = json.loads((version / "training_metrics.json").read_text())["history"]
        assert min(e["rewards/chosen"] for e in history[4:8]) > 0, history
    else:
        assert losses[-1] < losses[0], losses


def test_dpo_loss_on_a_hand_built_pair_equals_the_formula(tmp_path):
    from datasets import Dataset
    from peft import get_peft_model

    from qrtrain.evaluation.preference import answer_logps
    from qrtrain.models import loading as models
    from qrtrain.training.lora import lora_config
    from qrtrain.training.preference import build_preference_trainer

    cfg = compose_cfg("method=dpo", "method.beta=0.3", "method.loss_type=sigmoid", "model_type=standard")
    folder = models.model_folder(cfg.model)
    tokenizer = models.load_tokenizer(folder, "standard")
    model = get_peft_model(models.load_model(folder, cfg, "cpu", torch.float32, "sdpa"), lora_config(cfg))
    torch.manual_seed(0)
    for name, param in model.named_parameters():  # LoRA away from zero: the reference copy is this adapter
        if "lora_B" in name:
            param.data.normal_(0, 0.05)
    pair = {"prompt": "The capital of Veloria is", "chosen": " Quillhaven.", "rejected": " Brennport, a city."}
    trainer = build_preference_trainer(cfg, model, tokenizer, Dataset.from_list([pair]), None, tmp_path, "cpu",
                                       torch.float32, continuing=True)  # as from init_adapter: `ref` is a copy
    for name, param in model.named_parameters():  # then move the policy: policy and reference now differ
        if "lora_B" in name and ".default." in name:
            param.data.add_(torch.randn_like(param) * 0.05)
    model.eval()
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[0]]))
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch).item()

    rows = [(pair["prompt"], pair["chosen"]), (pair["prompt"], pair["rejected"])]
    policy_chosen, policy_rejected = answer_logps(model, tokenizer, rows)
    model.set_adapter("ref")
    ref_chosen, ref_rejected = answer_logps(model, tokenizer, rows)
    model.set_adapter("default")
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    expected = -torch.nn.functional.logsigmoid(torch.tensor(0.3 * margin)).item()
    assert abs(margin) > 1e-3, "policy and reference must differ for the check to mean anything"
    assert loss == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("row,expected", [
    ({"prompt": "q", "chosen": "a"}, "expected a JSON object with `prompt`, `chosen` and `rejected`"),
    ({"prompt": "q", "chosen": "a", "rejected": "a"}, "the same answer"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "`prompt` must be a non-empty"),
    ({"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}, "`prompt` is a string"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}, "`chosen` is a string"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}],
      "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
     "ends with an assistant turn"),
    ({"prompt": [{"role": "robot", "content": "q"}], "chosen": [], "rejected": []}, "prompt[0].role"),
    ({"messages": [{"role": "user", "content": "q"}]}, "SFT data"),
    ([1, 2], "got list"),
])
def test_bad_preference_rows_are_named(row, expected):
    assert expected in row_problem(row, "dpo")


def test_kto_rows_need_a_boolean_label():
    assert row_problem({"prompt": "q", "completion": "a", "label": True}, "kto") is None
    assert "`label` must be true" in row_problem({"prompt": "q", "completion": "a", "label": "yes"}, "kto")
    assert row_problem({"prompt": "q", "chosen": "a", "rejected": "b"}, "kto") is None  # pairs are unpaired by TRL


def test_bad_preference_rows_exit_2_naming_file_and_line(tmp_path):
    path = write_rows(tmp_path / "pairs.jsonl", [STRING_PAIRS[0], {"prompt": "q", "chosen": "a"}, STRING_PAIRS[1],
                                                 {"prompt": "q", "chosen": "same", "rejected": "same"}])
    result = invoke("train", *FAST, "method=dpo", "model_type=standard", f"data.train={path}",
                    f"artifact.root={tmp_path / 'out'}")
    assert result.exit_code == 2, result.output
    assert f"{path} line 2: expected a JSON object with `prompt`, `chosen` and `rejected`" in result.output
    assert f"{path} line 4: `chosen` and `rejected` are the same answer" in result.output
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*/v1"))


def test_method_settings_are_checked_before_loading(tmp_path):
    result = invoke("train", *FAST, "method=dpo", "method.loss_type=sideways", "method.beta=0",
                    "method.label_smoothing=0.7", f"artifact.root={tmp_path}")
    assert result.exit_code == 2
    for expected in ("method.loss_type='sideways'", "method.beta=0", "method.label_smoothing=0.7"):
        assert expected in result.output


def test_a_version_from_a_parent_records_it_and_verify_checks_it(lineage, tmp_path):
    root, sft, dpo = lineage
    manifest = json.loads((sft / "checksums.json").read_text())
    metadata = json.loads((dpo / "metadata.json").read_text())
    assert metadata["parent"] == {"name": "tiny-dialogue", "version": "v1", "root_digest": manifest["root_digest"]}
    assert dpo.parent.name == "tiny-dialogue-dpo"
    parent_adapter, adapter = load_file(sft / "adapter_model.safetensors"), load_file(dpo / "adapter_model.safetensors")
    assert parent_adapter.keys() == adapter.keys()  # the parent's LoRA continued, not a new one
    assert any(not torch.equal(parent_adapter[k], adapter[k]) for k in adapter)
    assert invoke("verify", dpo).exit_code == 0

    listed = json.loads(invoke("list", "--root", root, "--json").output)
    row = next(r for r in listed if r["artifact"] == "tiny-dialogue-dpo")
    assert row["method"] == "dpo" and row["parent"]["version"] == "v1"

    copy = tmp_path / "copy"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".checkpoints", ".runs"))
    parent_copy, child_copy = copy / "tiny-dialogue" / "v1", copy / "tiny-dialogue-dpo" / "v1"
    (parent_copy / "README.md").write_text("replaced, then re-manifested: a different parent that verifies\n")
    write_manifest(parent_copy)
    assert invoke("verify", parent_copy).exit_code == 0
    result = invoke("verify", child_copy)
    assert result.exit_code == 1 and "not the" in result.output and "this version was trained from" in result.output

    with open(parent_copy / "adapter_model.safetensors", "r+b") as f:  # a parent that no longer verifies
        f.seek(-1, 2)
        byte = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([byte[0] ^ 1]))
    result = invoke("verify", child_copy)
    assert result.exit_code == 1 and "the parent tiny-dialogue/v1 fails verification" in result.output

    alone = tmp_path / "alone" / "tiny-dialogue-dpo" / "v1"  # copied to another machine without its parent
    shutil.copytree(dpo, alone)
    result = invoke("verify", alone)
    assert result.exit_code == 0 and "is not in this artifact root" in result.output


def test_init_adapter_that_is_not_a_version_exits_2(lineage, tmp_path):
    root, sft, _ = lineage
    result = invoke("train", *FAST, "method=dpo", "init_adapter=nothing/v9", f"artifact.root={root}")
    assert result.exit_code == 2 and "init_adapter=nothing/v9: no such version" in result.output
    other = tmp_path / "other"
    other.mkdir()
    (other / "linked").symlink_to(sft.parent)  # a NAME that links out of the artifact root is not a version of it
    result = invoke("train", *FAST, "method=dpo", "init_adapter=linked/v1", f"artifact.root={other}")
    assert result.exit_code == 2 and "init_adapter=linked/v1: no such version" in result.output
    assert not (other / "tiny-dialogue-dpo").exists()


def test_evaluate_reports_reward_accuracy_against_the_parent(lineage):
    _, sft, dpo = lineage
    result = invoke("evaluate", dpo, "generation.max_new_tokens=4")
    assert result.exit_code == 0, result.output[-2000:]
    report = json.loads(next((dpo.parent / "evaluations").glob("v1-demo-*/report.json")).read_text())
    metrics = report["metrics"]
    for key in ("reward_accuracy", "reward_margin", "chosen_logps", "rejected_logps", "preference_accuracy"):
        assert metrics[key]["n"] == 26 and metrics[key]["mean"] is not None
    assert report["pairs"]["reference"] == "parent tiny-dialogue/v1"
    rows = report["pairs"]["rows"]
    accuracy = sum(r["chosen_reward"] > r["rejected_reward"] for r in rows) / len(rows)
    assert metrics["reward_accuracy"]["mean"] == pytest.approx(accuracy)
    assert "f1" in metrics and "loss" in metrics  # and the generation metrics it reports today


@pytest.mark.slow
def test_sigint_during_dpo_saves_a_checkpoint_and_the_same_command_resumes_it(tmp_path):
    import signal

    from tests.training.test_checkpoints import checkpoints, start, wait_for_checkpoint
    from tests.training.test_checkpoints import train as train_cli

    root = tmp_path / "r"
    process = start(root, "method=dpo", "training.max_steps=200")
    wait_for_checkpoint(root, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-2000:]
    step = int(checkpoints(root)[-1].name.split("-")[1])
    assert f"checkpoint saved at step {step}" in stderr and "resume with: qrtrain train" in stderr
    assert not list(root.glob("*/v1"))
    resumed = train_cli(root, "method=dpo", "training.max_steps=200")
    assert f"resuming from step {step}" in resumed.stderr
    version = root / "tiny-dialogue-dpo" / "v1"
    assert json.loads((version / "training_metrics.json").read_text())["final"]["global_step"] == 200
    assert invoke("verify", version).exit_code == 0


def test_a_rerun_on_the_same_pairs_takes_trls_prepared_sets_from_the_data_cache(tmp_path):
    path = write_rows(tmp_path / "pairs.jsonl", STRING_PAIRS)
    first = invoke("train", *FAST, "method=dpo", "model_type=standard", f"data.train={path}",
                   f"artifact.root={tmp_path / 'a'}", "training.max_steps=3")
    second = invoke("train", *FAST, "method=dpo", "model_type=standard", f"data.train={path}",
                    f"artifact.root={tmp_path / 'b'}", "training.max_steps=3")
    assert first.exit_code == 0 and second.exit_code == 0, second.output[-2000:]
    assert "from the data cache" in second.output and "11 preference rows (0 chosen, 0 rejected" in second.output, second.output
    a, b = (next((tmp_path / r).glob("*/v1")) / "adapter_model.safetensors" for r in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()  # the same training, from TRL's prepared sets


def test_a_new_adapter_takes_the_base_as_reference_with_the_same_loss_as_trls_copy(tmp_path):
    from datasets import Dataset
    from peft import get_peft_model

    from qrtrain.models import loading as models
    from qrtrain.training.lora import lora_config
    from qrtrain.training.preference import build_preference_trainer

    cfg = compose_cfg("method=dpo", "model_type=standard")
    folder = models.model_folder(cfg.model)
    tokenizer = models.load_tokenizer(folder, "standard")
    model = get_peft_model(models.load_model(folder, cfg, "cpu", torch.float32, "sdpa"), lora_config(cfg))
    pairs = Dataset.from_list(STRING_PAIRS[:4])
    trainer = build_preference_trainer(cfg, model, tokenizer, pairs, None, tmp_path, "cpu", torch.float32,
                                       continuing=True)
    assert "ref" in model.peft_config  # TRL's copy of the new (zero-B) adapter
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name and ".default." in name:
            param.data.normal_(0, 0.05)
    model.eval()
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    with torch.no_grad():
        with_copy = trainer.compute_loss(model, batch).item()
        model.delete_adapter("ref")  # what build_preference_trainer does for a new adapter
        model.set_adapter("default")
        with_base = trainer.compute_loss(model, batch).item()
    assert with_base == pytest.approx(with_copy, abs=1e-6) and abs(with_copy - 0.6931) > 1e-3
    fresh = get_peft_model(models.load_model(folder, cfg, "cpu", torch.float32, "sdpa"), lora_config(cfg))
    build_preference_trainer(cfg, fresh, tokenizer, pairs, None, tmp_path / "b", "cpu", torch.float32)
    assert "ref" not in fresh.peft_config and all(p.requires_grad for n, p in fresh.named_parameters() if "lora_" in n)


def test_diff_puts_the_sft_and_dpo_versions_side_by_side(lineage):
    root, _, _ = lineage
    result = invoke("diff", "--root", root, "tiny-dialogue/v1", "tiny-dialogue-dpo/v1", "--json")
    assert result.exit_code == 0, result.output
    diff = json.loads(result.output)
    assert (diff["a"]["method"], diff["b"]["method"]) == ("sft", "dpo")
    assert diff["b"]["parent"]["version"] == "v1" and diff["a"]["verified"] and diff["b"]["verified"]
    changed = {row["key"]: (row["a"], row["b"]) for row in diff["config"]}
    assert changed["method.name"] == ("sft", "dpo") and changed["init_adapter"] == (None, "tiny-dialogue/v1")
    assert {row["source"] for row in diff["data"]} >= {"train:qa_train.jsonl", "train:pairs_train.jsonl"}
    loss = next(row for row in diff["metrics"] if row["metric"] == "train_loss")
    assert loss["delta"] == pytest.approx(loss["b"] - loss["a"])
    assert invoke("diff", "--root", root, "tiny-dialogue/v1", "nothing/v3").exit_code == 2
