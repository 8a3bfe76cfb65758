"""The model catalog (conf/model/, `qrtrain models`): every catalog model composes with the facts training needs,
loads from the local Hugging Face cache only, and its family's tiny stand-in goes end to end with the family's
chat template: train (the loss mask checked token by token), verify, evaluate, package.

    .venv/bin/pytest tests/models/test_catalog.py
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from qrtrain.config import PACKAGE_DIR, check_config, compose, conf_dir
from qrtrain.errors import QrtrainError
from qrtrain.models.loading import HUB_ID_RE, chat_template_text, load_tokenizer, model_folder, renders_alike
from tests.conftest import invoke
from tests.test_cli import HEAVY
from tests.training.test_train import build

OPTIONS = {p.stem: OmegaConf.load(p) for p in sorted((conf_dir() / "model").glob("*.yaml"))}
CATALOG = sorted(name for name, option in OPTIONS.items() if option.source == "hub")
STAND_INS = sorted({OPTIONS[name].stand_in for name in CATALOG})
FACTS = ("architecture", "params", "context_length", "max_length", "target_modules", "training_template",
         "end_of_turn", "stop_tokens", "stand_in", "gated")

# What each family's model learns to write for a reply (the assistant-only loss mask, as text), and for the
# conversation's last reply when it differs: its training template's {% generation %} blocks.
REPLY = {
    "tiny-gemma3": "{content}<end_of_turn>\n",
    "tiny-llama3.1": "{content}<|eot_id|>",
    "tiny-llama3.2": "{content}<|eot_id|>",
    "tiny-mistral": " {content}</s>",
    "tiny-phi4-mini": ("{content}<|end|>", "{content}<|end|><|endoftext|>"),
    "tiny-qwen2.5": "\n{content}<|im_end|>\n",
    "tiny-qwen3": "<think>\n\n</think>\n\n{content}<|im_end|>\n",
    "tiny-smollm2": "{content}<|im_end|>",
    "tiny-smollm3": "<|im_start|>assistant\n{content}<|im_end|>\n",  # SmolLM3's own markers take the role line too
}
# qrtrain package --format gguf: exit 0 for a plain Llama; the rest exit 2 today, saying why
GGUF = {"tiny-smollm2": None, "tiny-llama3.1": "rope scaling 'llama3'", "tiny-llama3.2": "rope scaling 'llama3'"}


def family_options(stand_in: str) -> list[str]:
    return [name for name in CATALOG if OPTIONS[name].stand_in == stand_in]


@pytest.mark.parametrize("name", CATALOG)
def test_every_catalog_model_composes_with_the_facts_training_needs(name):
    from trl.chat_template_utils import has_generation_markers

    cfg = compose([f"model={name}"])
    check_config(cfg)
    model = cfg.model
    assert model.name == name and model.path is None and all(model.get(key) is not None for key in FACTS)
    # the name is the one model.path=HUB_ID records (qrtrain.models.loading.name_the_base): both routes name it alike
    assert re.fullmatch(HUB_ID_RE, model.hub_id) and model.hub_id.split("/")[-1].lower() == name
    assert model.end_of_turn in model.stop_tokens and 0 < model.max_length <= model.context_length
    if model.training_template != "own":
        assert has_generation_markers(chat_template_text(model.training_template))
    stand_in = compose([f"model={model.stand_in}"]).model
    assert stand_in.source == "stand_in"
    assert [stand_in[k] for k in ("training_template", "end_of_turn", "stop_tokens")] == \
        [model[k] for k in ("training_template", "end_of_turn", "stop_tokens")]
    text_model = {"Gemma3ForConditionalGeneration": "Gemma3ForCausalLM"}.get(model.architecture, model.architecture)
    assert stand_in.architecture == text_model


@pytest.mark.parametrize("stand_in", STAND_INS)
def test_every_stand_in_is_its_familys_architecture_with_its_tokens_and_template(stand_in):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    option = compose([f"model={stand_in}"]).model
    folder = model_folder(option)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == option.architecture and model.num_parameters() < 300_000
    assert tokenizer.chat_template == chat_template_text(option.chat_template)
    assert tokenizer.eos_token == option.tokens.eos and tokenizer.bos_token == option.tokens.bos
    for token in [*option.tokens.special, *option.tokens.get("added", [])]:
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    stops = GenerationConfig.from_pretrained(folder).eos_token_id
    assert tokenizer.convert_ids_to_tokens(stops if isinstance(stops, list) else [stops]) == list(option.stop_tokens)
    trained = load_tokenizer(folder, "dialogue").chat_template
    assert trained == (tokenizer.chat_template if option.training_template == "own"
                       else chat_template_text(option.training_template))


@pytest.mark.parametrize("original,training", [
    ("trl/llama3_1.jinja", "llama3_1_training.jinja"), ("trl/llama3_2.jinja", "llama3_2_training.jinja"),
    ("qrtrain/mistral_v0_3.jinja", "mistral_v0_3_training.jinja"),
    ("qrtrain/phi4_mini.jinja", "phi4_mini_training.jinja"),
    ("qrtrain/smollm2.jinja", "smollm2_training.jinja"),
])
def test_qrtrains_training_templates_render_like_the_models_own_and_only_like_it(tiny_folder, original, training):
    from transformers import AutoTokenizer

    from qrtrain.models.loading import TRAINING_TEMPLATES

    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    tokenizer.chat_template = chat_template_text(original)
    alike = [name for name in TRAINING_TEMPLATES if renders_alike(tokenizer, chat_template_text(f"qrtrain/{name}"))]
    assert alike == [training]
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Capital?"},
                {"role": "assistant", "content": " Quillhaven. "}, {"role": "user", "content": "River?"}]
    for prompt in (True, False):
        rendered = [tokenizer.apply_chat_template(messages[:n], tokenize=False, add_generation_prompt=prompt,
                                                  chat_template=template)
                    for n in (2, 3, 4) for template in (None, chat_template_text(f"qrtrain/{training}"))]
        assert rendered[0::2] == rendered[1::2]


def test_a_template_nobody_has_a_training_version_of_is_refused(tiny_folder):
    from transformers import AutoTokenizer

    from qrtrain.models.loading import training_chat_template

    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(QrtrainError, match="neither TRL nor qrtrain has a training version") as error:
        training_chat_template(tokenizer)
    assert error.value.exit_code == 2


def reply_spans(text: str, messages: list[dict], reply) -> list[tuple[int, int]]:
    """Where each assistant reply, as the family's model writes it (REPLY), stands in the rendered text."""
    formats = (reply, reply) if isinstance(reply, str) else reply
    replies = [m for m in messages if m["role"] == "assistant"]
    spans, start = [], 0
    for n, message in enumerate(replies):
        written = formats[n == len(replies) - 1].format(content=message["content"].strip())
        begin = text.index(written, start)
        start = begin + len(written)
        spans.append((begin, start))
    return spans


@pytest.fixture(scope="module")
def three_questions(tmp_path_factory):
    path = tmp_path_factory.mktemp("questions") / "three.jsonl"
    lines = (PACKAGE_DIR / "data" / "demo" / "qa_heldout.jsonl").read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    return path


FAST_STAND_INS = ("tiny-gemma3", "tiny-llama3.2", "tiny-qwen3", "tiny-smollm2")  # the others in `make test-slow`


@pytest.mark.parametrize("stand_in", [s if s in FAST_STAND_INS else pytest.param(s, marks=pytest.mark.slow)
                                      for s in STAND_INS])
def test_each_familys_stand_in_trains_on_replies_only_verifies_evaluates_and_packages(stand_in, tmp_path,
                                                                                      three_questions):
    from qrtrain.training.datasets import load_datasets

    option = compose([f"model={stand_in}"]).model
    targets = OPTIONS[next(n for n in family_options(stand_in) if OPTIONS[n].architecture == option.architecture)]
    lora_targets = f"lora.target_modules=[{','.join(targets.target_modules)}]"  # the catalog's names fit the model

    # the loss mask, token by token: exactly each reply as the family's model writes it
    cfg, _, trainer = build(tmp_path / "mask", f"model={stand_in}", "model_type=dialogue", "training.max_steps=1",
                            lora_targets)
    tokenizer = trainer.processing_class
    rows = load_datasets(cfg)[0]
    for n, example in enumerate(trainer.train_dataset.select(range(4))):
        batch = trainer.data_collator([example])
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        messages = rows[n]["messages"]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        assert encoding["input_ids"] == ids, "collated ids differ from the rendered conversation"
        spans = reply_spans(text, messages, REPLY[stand_in])
        expected = [any(b <= s and e <= end for b, end in spans) for s, e in encoding["offset_mapping"]]
        assert [label != -100 for label in labels] == expected
        if option.tokens.add_bos:  # the template writes BOS; nothing adds a second one
            assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1

    # the whole story through the CLI: train, verify, evaluate, package
    root = tmp_path / "out"
    result = invoke("train", f"model={stand_in}", "training.max_steps=2", "training.batch_size=4",
                    "training.learning_rate=1e-2", "data.eval_max_examples=4", lora_targets,
                    f"artifact.root={root}", "artifact.name=v")
    assert result.exit_code == 0, result.output
    version = root / "v" / "v1"
    metadata = json.loads((version / "metadata.json").read_text())
    assert metadata["base_model"]["name"] == stand_in and metadata["base_model"]["hub_id"] is None
    assert invoke("verify", version).exit_code == 0

    result = invoke("evaluate", version, "generation.max_new_tokens=4", f"evaluation.questions={three_questions}")
    assert result.exit_code == 0, result.output
    report = json.loads(next((root / "v" / "evaluations").glob("v1-*/report.json")).read_text())
    assert len(report["items"]) == 3 and report["max_new_tokens"] == 4

    result = invoke("package", version, "--format", "merged", "--output", tmp_path / "merged")
    assert result.exit_code == 0, result.output
    check = json.loads((tmp_path / "merged" / "metadata.json").read_text())["package"]["merge_check"]
    assert check["max_abs_logit_difference"] <= check["tolerance"]

    result = invoke("package", version, "--format", "gguf", "--output", tmp_path / "gguf")
    if option.architecture == "LlamaForCausalLM" and GGUF.get(stand_in) is None:
        assert result.exit_code == 0, result.output
        assert invoke("verify", tmp_path / "gguf").exit_code == 0
    else:
        assert result.exit_code == 2, result.output
        assert GGUF.get(stand_in, "writes Llama-architecture models") in result.output
        assert not (tmp_path / "gguf").exists()


def test_answers_stop_at_the_end_of_turn_token_the_generation_config_names(tmp_path):
    """Gemma 3 ends a turn with <end_of_turn>, not its EOS: generation stops there, as generation_config.json says."""
    import torch
    from transformers import AutoModelForCausalLM

    from qrtrain.models.generation import generate_answers, stop_token_ids
    from qrtrain.models.loading import load_chat_tokenizer

    folder = model_folder(compose(["model=tiny-gemma3"]).model)
    tokenizer = load_chat_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert tokenizer.eos_token_id != end_of_turn and end_of_turn in stop_token_ids(model, tokenizer)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size)  # always says <end_of_turn>
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(end_of_turn), model.config.vocab_size) * 10.0)
    model.lm_head = head
    [answer] = generate_answers(model, tokenizer, [[{"role": "user", "content": "Capital?"}]], 1, 8, 0)
    assert answer["stopped"] and answer["answer"] == "" and answer["new_tokens"] == 1


def fake_hub_cache(cache: Path, hub_id: str, files: Path) -> Path:
    """A Hugging Face cache holding `files` as hub_id's main revision, laid out as `hf download` lays it out."""
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(files, snapshot, ignore=shutil.ignore_patterns(".complete"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline: what `hf download` would have filled."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.mark.parametrize("name", CATALOG)
def test_a_catalog_model_not_in_the_cache_says_how_to_get_it(hub_cache, name):
    option = compose([f"model={name}"]).model
    with pytest.raises(QrtrainError, match=re.escape(f"`hf download {option.hub_id}`")) as error:
        model_folder(option)
    assert error.value.exit_code == 2 and "model.path=FOLDER" in error.value.message
    assert ("hf auth login" in error.value.message) == option.gated


def test_train_a_catalog_model_not_in_the_cache_exits_2_and_publishes_nothing(hub_cache, tmp_path):
    result = invoke("train", "model=qwen2.5-0.5b-instruct", f"artifact.root={tmp_path / 'out'}")
    assert result.exit_code == 2 and "hf download Qwen/Qwen2.5-0.5B-Instruct" in result.output
    assert not list((tmp_path / "out").glob("*/v*"))


def test_a_cached_catalog_model_trains_and_is_named_as_model_path_names_it(hub_cache, tmp_path):
    """The Qwen2.5 stand-in's files put in the cache as Qwen/Qwen2.5-0.5B-Instruct: model=qwen2.5-0.5b-instruct
    loads them from there (`qrtrain models` says cached), and records the same base as model.path=HUB_ID."""
    snapshot = fake_hub_cache(hub_cache, "Qwen/Qwen2.5-0.5B-Instruct",
                              model_folder(compose(["model=tiny-qwen2.5"]).model))
    listed = {row["name"]: row for row in json.loads(invoke("models", "--json").stdout)}
    assert listed["qwen2.5-0.5b-instruct"]["cached"] and not listed["qwen2.5-1.5b-instruct"]["cached"]
    bases = []
    for model in ("model=qwen2.5-0.5b-instruct", "model.path=Qwen/Qwen2.5-0.5B-Instruct"):
        root = tmp_path / model.split("=")[0]
        result = invoke("train", model, "training.max_steps=1", "training.batch_size=2", "data.eval_max_examples=2",
                        f"artifact.root={root}", "artifact.name=q")
        assert result.exit_code == 0, result.output
        bases.append(json.loads((root / "q" / "v1" / "metadata.json").read_text())["base_model"])
    assert {(b["name"], b["hub_id"]) for b in bases} == {("qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct")}
    assert bases[0]["files"] == bases[1]["files"] and Path(bases[0]["path"]) == snapshot

    (snapshot / "model.safetensors").unlink()  # a download cut short
    with pytest.raises(QrtrainError, match="lacks model.safetensors: its download was interrupted"):
        model_folder(compose(["model=qwen2.5-0.5b-instruct"]).model)


def test_qrtrain_models_lists_the_catalog_without_importing_torch(tmp_path):
    code = ("import sys, runpy; sys.argv=['qrtrain','models']\n"
            "try: runpy.run_module('qrtrain', run_name='__main__')\n"
            "except SystemExit: pass\n"
            f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1", "COLUMNS": "300"})
    assert "HEAVY []" in run.stdout, run.stdout + run.stderr
    for name in CATALOG:
        assert name in run.stdout and OPTIONS[name].hub_id in run.stdout
    rows = json.loads(invoke("models", "--json").stdout)
    assert [r["name"] for r in rows if r["source"] == "hub"] == CATALOG
    assert {r["name"] for r in rows} == set(OPTIONS)
