"""qrtrain package and unpack: every format verifies and behaves like the trained adapter."""

import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from qrtrain.config import PACKAGE_DIR
from tests.conftest import invoke


@pytest.fixture(scope="module")
def artifact(tiny_version):
    return tiny_version  # shared with test_gguf_export.py (conftest.py)


@pytest.fixture(scope="module")
def packages(artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("packages")
    made = {}
    for fmt in ("bundle", "hf", "merged", "ollama"):
        made[fmt] = out / ("p.tar.gz" if fmt == "bundle" else f"p-{fmt}")
        result = invoke("package", artifact, "--format", fmt, "--output", made[fmt])
        assert result.exit_code == 0, result.output
        assert str(made[fmt]) in result.output
    return made


@pytest.mark.parametrize("fmt", ["bundle", "hf", "merged", "ollama"])
def test_every_format_verifies_and_points_back(packages, artifact, fmt):
    result = invoke("verify", packages[fmt], "--json")
    assert result.exit_code == 0, result.output
    if fmt != "bundle":
        package = json.loads((packages[fmt] / "metadata.json").read_text())["package"]
        source = json.loads((artifact / "checksums.json").read_text())["root_digest"]
        assert package["format"] == fmt and package["source_root_digest"] == source
        if fmt == "hf":  # for a public place: names and digests, no local path
            assert package["source_version"] == "p/v1"
        else:
            assert Path(package["source_version"]) == artifact.resolve()


def test_the_hf_package_carries_no_local_path(packages, artifact):
    text = " ".join(p.read_text(errors="replace") for p in packages["hf"].iterdir()
                    if p.suffix in (".json", ".yaml", ".md", ".jinja"))
    for local in (str(artifact.parent.parent), str(Path.home()), "/tmp/", "/root/", ".cache/qrtrain"):
        assert local not in text, local
    metadata = json.loads((packages["hf"] / "metadata.json").read_text())
    assert "path" not in metadata["base_model"] and metadata["base_model"]["files"]
    assert all("/" not in d["path"] for d in metadata["datasets"]) and all(d["sha256"] for d in metadata["datasets"])
    assert metadata["package"]["upload"].startswith("hf upload ")


def test_bundle_unpacks_to_the_same_version(packages, artifact, tmp_path):
    result = invoke("unpack", packages["bundle"], tmp_path / "dest")
    assert result.exit_code == 0, result.output
    unpacked = tmp_path / "dest" / "p-v1"
    assert str(unpacked) in result.output
    assert sorted(p.name for p in unpacked.iterdir()) == sorted(p.name for p in artifact.iterdir())
    assert invoke("verify", unpacked).exit_code == 0


def test_tampered_bundle_fails_verify(packages, tmp_path):
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(packages["bundle"]) as src, tarfile.open(bad, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name.endswith("adapter_config.json"):
                data = data.replace(b'"r": 16', b'"r": 17')
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    result = invoke("verify", bad)
    assert result.exit_code == 1 and "adapter_config.json" in result.output


def test_merged_logits_match_base_plus_adapter(packages, artifact, tiny_folder):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check = json.loads((packages["merged"] / "metadata.json").read_text())["package"]["merge_check"]
    assert check["max_abs_logit_difference"] <= check["tolerance"] <= 1e-3
    tokenizer = AutoTokenizer.from_pretrained(packages["merged"])
    ids = tokenizer("Where is Quillhaven? The capital of Veloria.", return_tensors="pt")
    merged = AutoModelForCausalLM.from_pretrained(packages["merged"]).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_folder), artifact).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_folder).eval()
    with torch.no_grad():
        merged_logits, adapted_logits, base_logits = merged(**ids).logits, adapted(**ids).logits, base(**ids).logits
    assert (merged_logits - adapted_logits).abs().max() <= 1e-4
    assert (adapted_logits - base_logits).abs().max() > 1e-3  # the adapter really changes the model


def expected_gguf_layout(b: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary row order, written out row by row: in each head, rows k and d/2+k interleave."""
    head_dim = b.shape[0] // n_head
    out = np.empty_like(b)
    for h in range(n_head):
        for k in range(head_dim // 2):
            for t in range(2):
                out[h * head_dim + 2 * k + t] = b[h * head_dim + t * (head_dim // 2) + k]
    return out


def test_gguf_adapter_reads_back_equal(packages, artifact, tiny_folder):
    import gguf
    from safetensors.numpy import load_file

    reader = gguf.GGUFReader(packages["ollama"] / "adapter.gguf")
    fields = {name: reader.fields[name] for name in ("general.type", "adapter.type", "adapter.lora.alpha")}
    assert bytes(fields["general.type"].parts[-1]).decode() == "adapter"
    assert bytes(fields["adapter.type"].parts[-1]).decode() == "lora"
    assert float(fields["adapter.lora.alpha"].parts[-1][0]) == json.loads((artifact / "adapter_config.json").read_text())["lora_alpha"]
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    config = json.loads((tiny_folder / "config.json").read_text())
    adapter = load_file(artifact / "adapter_model.safetensors")
    assert len(tensors) == len(adapter)
    for name, value in adapter.items():
        layer = int(re.search(r"layers\.(\d+)\.", name).group(1))
        module = name.split(".lora_")[0].rsplit(".", 1)[1]
        gguf_module = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
                       "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}[module]
        part = "lora_a" if ".lora_A." in name else "lora_b"
        expected = value
        if part == "lora_b" and module in ("q_proj", "k_proj"):
            expected = expected_gguf_layout(value, config["num_attention_heads"] if module == "q_proj"
                                            else config["num_key_value_heads"])
        stored = tensors[f"blk.{layer}.{gguf_module}.weight.{part}"]
        assert stored.shape == expected.shape and np.array_equal(stored, expected), name


def render_like_ollama(template: str, modelfile_system: str | None, messages: list[dict]) -> str:
    """Ollama's rendering: Go's own text/template over Ollama's values (tests/artifacts/ollama_render)."""
    request = {"template": template, "system": modelfile_system or "", "messages": messages}
    result = subprocess.run(["go", "run", str(Path(__file__).parent / "ollama_render" / "main.go")],
                            input=json.dumps(request), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(shutil.which("go") is None, reason="needs Go (Debian: golang-go; .ci/run installs it)")
@pytest.mark.parametrize("template_file", ["tiny.jinja", "smollm2.jinja"])
def test_modelfile_template_renders_like_the_chat_template(tiny_folder, template_file, packages):
    from transformers import AutoTokenizer

    from qrtrain.artifacts.package import ollama_template

    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    tokenizer.chat_template = (PACKAGE_DIR / "models" / "chat_templates" / template_file).read_text()
    template, default_system = ollama_template(tokenizer)
    conversations = [
        [{"role": "user", "content": "Where is Quillhaven?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Capital?"}],
    ]
    for messages in conversations:
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert render_like_ollama(template, default_system, messages) == expected
        assert expected.count("<|im_start|>system") <= 1  # the system prompt once, whoever supplies it
    if template_file == "smollm2.jinja":
        assert default_system.startswith("You are a helpful AI assistant named SmolLM")
    modelfile = (packages["ollama"] / "Modelfile").read_text()
    assert "ADAPTER ./adapter.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile


def malicious_bundle(path: Path, kind: str, outside: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("p-v1/notes.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        bad = tarfile.TarInfo({"dotdot": "p-v1/../../escaped.txt", "absolute": str(outside / "abs.txt"),
                               "symlink": "p-v1/link", "device": "p-v1/dev"}[kind])
        if kind == "symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, str(outside)
        elif kind == "device":
            bad.type, bad.devmajor, bad.devminor = tarfile.CHRTYPE, 1, 3
        else:
            bad.size = 3
        tar.addfile(bad, io.BytesIO(b"bad") if bad.isfile() else None)
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "device"])
def test_malicious_bundles_are_refused_and_nothing_is_written(tmp_path, kind):
    outside = tmp_path / "outside"
    outside.mkdir()
    bundle = malicious_bundle(tmp_path / f"{kind}.tar.gz", kind, outside)
    dest = tmp_path / "work" / "dest"
    result = invoke("unpack", bundle, dest)
    assert result.exit_code == 2 and "unsafe" in result.output
    assert not dest.exists()
    assert list(outside.iterdir()) == [] and not (tmp_path / "escaped.txt").exists()
    assert invoke("verify", bundle).exit_code in (1, 2)


def test_package_refuses_an_artifact_that_fails_verify(artifact, tmp_path):
    broken = tmp_path / "p" / "v1"
    shutil.copytree(artifact, broken)
    (broken / "README.md").write_text("changed")
    result = invoke("package", broken, "--format", "hf", "--output", tmp_path / "out")
    assert result.exit_code == 2 and "fails verification" in result.output
    assert not (tmp_path / "out").exists()
