"""PEFT's LoRA variants through qrtrain: DoRA, rsLoRA and each initialisation (gaussian, pissa, olora, eva,
loftq on an nf4 base) train the tiny model, publish a version that verifies, load in PEFT alone with the
logits of the model as trained, and merge with the package's logit check.

    .venv/bin/pytest tests/training/test_lora_variants.py
"""

import json

import pytest
import torch

from tests.conftest import invoke

VARIANTS = {
    "dora": ["lora.use_dora=true"],
    "rslora": ["lora.use_rslora=true"],
    "gaussian": ["lora.init=gaussian"],
    "pissa": ["lora.init=pissa"],
    "olora": ["lora.init=olora"],
    "eva": ["lora.init=eva"],
}
if torch.cuda.is_available():  # PEFT's LoftQ computes on the GPU (on CPU it is exit 2: tested below)
    VARIANTS["loftq"] = ["lora.init=loftq", "quantization=nf4"]
PROMPT = "Which town serves as the capital of Veloria?"


def train_capturing_the_model(tmp_path, overrides):
    """Train in-process and keep the model as it ended training (captured at the base-weight check, the phase
    right after training), with the published version."""
    from qrtrain.config import compose
    from qrtrain.training import train as recipe

    captured = {}
    check = recipe.check_base_untouched

    def keep(loaded):
        captured["model"] = loaded.model
        return check(loaded)

    cfg = compose(["model=tiny", "training.max_steps=4", "training.eval_steps=0", "training.learning_rate=1e-2",
                   "checkpoint.every_steps=0", f"artifact.root={tmp_path / 'outputs'}", "artifact.name=variant",
                   *overrides])
    recipe.check_base_untouched = keep
    try:
        result = recipe.train(cfg, tmp_path / "run")
    finally:
        recipe.check_base_untouched = check
    assert result.exit_code == 0 and result.version is not None, result.message
    return captured["model"], result.version


def logits(model, tokenizer):
    ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids["input_ids"].to(model.device), attention_mask=ids["attention_mask"].to(model.device)
                     ).logits.float().cpu()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_trains_verifies_loads_in_peft_alone_and_merges(tmp_path, tiny_folder, variant):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from qrtrain.models.loading import load_chat_tokenizer

    trained, version = train_capturing_the_model(tmp_path, VARIANTS[variant])
    assert invoke("verify", version).exit_code == 0
    config = json.loads((version / "adapter_config.json").read_text())
    tokenizer = load_chat_tokenizer(version)
    expected = logits(trained, tokenizer)

    if variant == "loftq":  # the adapter corrects the nf4 base it was trained on: load it over that base
        from transformers import BitsAndBytesConfig

        base = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32, quantization_config=
                                                    BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                                       bnb_4bit_compute_dtype=torch.float32))
    else:
        base = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32)
    alone = PeftModel.from_pretrained(base, version)
    difference = (logits(alone, tokenizer) - expected).abs().max().item()
    assert difference < (1e-3 if variant == "loftq" else 1e-4), difference

    if variant == "dora":
        assert config["use_dora"] is True
        assert any("lora_magnitude_vector" in name for name, _ in alone.named_parameters())
    if variant == "rslora":
        assert config["use_rslora"] is True
    if variant in ("pissa", "olora"):  # converted by PEFT into a plain LoRA of rank 2r over the original base
        assert config["r"] == 2 * 16 and config["init_lora_weights"] is True
    if variant == "eva":
        assert config["init_lora_weights"] == "eva"
    if variant != "loftq":
        merged = invoke("package", version, "--format", "merged", "--output", tmp_path / "merged")
        assert merged.exit_code == 0, merged.output
        check = json.loads((tmp_path / "merged" / "metadata.json").read_text())["package"]["merge_check"]
        assert check["max_abs_logit_difference"] <= check["tolerance"]


def test_ollama_refuses_what_llama_cpp_adapters_cannot_carry(tmp_path):
    _, version = train_capturing_the_model(tmp_path, ["lora.use_dora=true"])
    result = invoke("package", version, "--format", "ollama", "--output", tmp_path / "ollama")
    assert result.exit_code == 2 and "DoRA" in result.output
    assert not (tmp_path / "ollama").exists()


@pytest.mark.parametrize("overrides, message", [
    (["lora.init=loftq"], "use it with quantization=nf4"),
    (["lora.init=pissa", "quantization=nf4"], "needs full-precision base weights"),
    (["lora.init=svd"], "lora.init=svd: expected one of"),
    (["lora.use_dora=maybe"], "lora.use_dora"),
] + ([] if torch.cuda.is_available() else [(["lora.init=loftq", "quantization=nf4"], "computes its initialisation on a CUDA GPU")]))
def test_settings_that_cannot_work_are_exit_2(tmp_path, overrides, message):
    result = invoke("train", "model=tiny", "training.max_steps=1", f"artifact.root={tmp_path}", *overrides)
    assert result.exit_code == 2 and message in result.output
    assert not list(tmp_path.glob("*/v1"))
