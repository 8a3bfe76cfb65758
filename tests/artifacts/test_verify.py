"""qrtrain verify: every change to an artifact is caught and named; untouched artifacts pass."""

import json
import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from qrtrain.artifacts.manifest import write_manifest
from tests.conftest import invoke

HEAVY = ("torch", "transformers", "trl", "peft")



@pytest.fixture(scope="module")
def trained(tmp_path_factory, model_cache):
    root = tmp_path_factory.mktemp("artifacts")
    result = invoke("train", "model=tiny", "training.max_steps=2", f"artifact.root={root}", "artifact.name=a")
    assert result.exit_code == 0, result.output
    return root / "a" / "v1"


@pytest.fixture
def version(trained, tmp_path):
    copy = tmp_path / "v1"
    shutil.copytree(trained, copy)
    return copy


def manifest(folder):
    return json.loads((folder / "checksums.json").read_text())


def save_manifest(folder, data):
    (folder / "checksums.json").write_text(json.dumps(data))


def test_untouched_artifact_verifies(version):
    result = invoke("verify", version)
    assert result.exit_code == 0, result.output
    assert "verified" in result.output
    data = json.loads(invoke("verify", version, "--json").output)
    assert data["verified"] and data["versions"][0]["problems"] == []


def test_artifact_folder_verifies_every_version(version):
    shutil.copytree(version, version.parent / "v2")
    data = json.loads(invoke("verify", version.parent, "--json").output)
    assert [Path(v["path"]).name for v in data["versions"]] == ["v1", "v2"]


def test_one_changed_byte_in_any_file_is_caught_and_named(version):
    rng = random.Random(0)
    files = sorted(p for p in version.rglob("*") if p.is_file())
    assert {"adapter_model.safetensors", "checksums.json", "metadata.json"} <= {p.name for p in files}
    for path in files:
        original = path.read_bytes()
        data = bytearray(original)
        position = rng.randrange(len(data))
        if path.name == "adapter_model.safetensors":  # also once inside the tensor data, past the header
            header_end = 8 + struct.unpack("<Q", original[:8])[0]
            position = rng.randrange(header_end, len(data))
        data[position] ^= rng.randrange(1, 256)
        path.write_bytes(bytes(data))
        result = invoke("verify", version)
        assert result.exit_code == 1, (path.name, result.output)
        assert path.name in result.output, (path.name, result.output)
        path.write_bytes(original)
    assert invoke("verify", version).exit_code == 0


def tamper_extra(v):
    (v / "notes.txt").write_text("hi")
    return "notes.txt"


def tamper_missing(v):
    (v / "tokenizer.json").unlink()
    return "tokenizer.json"


def tamper_renamed(v):
    (v / "tokenizer.json").rename(v / "tok.json")
    return "renamed to tok.json"


def tamper_root_digest(v):
    m = manifest(v)
    m["root_digest"] = "0" * 64
    save_manifest(v, m)
    return "root digest"


def tamper_duplicate(v):
    m = manifest(v)
    m["files"].append(m["files"][0])
    save_manifest(v, m)
    return "listed twice"


def tamper_dotdot(v):
    m = manifest(v)
    m["files"][0]["path"] = "../" + m["files"][0]["path"]
    save_manifest(v, m)
    return "unsafe path"


def tamper_absolute(v):
    m = manifest(v)
    m["files"][0]["path"] = "/etc/passwd"
    save_manifest(v, m)
    return "/etc/passwd"


def tamper_symlink(v):
    (v / "tokenizer.json").unlink()
    (v / "tokenizer.json").symlink_to("/etc/hostname")
    return "symbolic link"


def tamper_truncated_safetensors(v):
    path = v / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    write_manifest(v)  # a manifest that matches: only the header check can catch it
    return "header describes"


def tamper_corrupt_header(v):
    path = v / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    header = data[8:8 + struct.unpack("<Q", data[:8])[0]].decode()
    data[8:8 + len(header)] = header.replace('"F32"', '"F64"', 1).encode()
    path.write_bytes(bytes(data))
    write_manifest(v)
    return "adapter_model.safetensors"


def tamper_pickle(v):
    (v / "extra.bin").write_bytes(b"\x80\x04pickle")
    write_manifest(v)
    return "extra.bin"


TAMPERS = {f.__name__.removeprefix("tamper_"): f for f in [
    tamper_extra, tamper_missing, tamper_renamed, tamper_root_digest, tamper_duplicate, tamper_dotdot,
    tamper_absolute, tamper_symlink, tamper_truncated_safetensors, tamper_corrupt_header, tamper_pickle]}


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_tampering_fails_with_a_named_problem(version, name):
    expected = TAMPERS[name](version)
    result = invoke("verify", version)
    assert result.exit_code == 1, result.output
    assert expected in result.output
    data = json.loads(invoke("verify", version, "--json").output)
    assert any(expected in json.dumps(p) for p in data["versions"][0]["problems"]), data


def test_usage_errors_exit_2(tmp_path):
    assert invoke("verify", tmp_path / "missing").exit_code == 2
    assert invoke("verify", tmp_path).exit_code == 2  # an empty folder is neither a version nor an artifact
    assert invoke("verify").exit_code == 2


def test_base_model_check(version, tiny_folder, tmp_path):
    assert invoke("verify", version, "--base", tiny_folder).exit_code == 0
    changed = tmp_path / "base"
    shutil.copytree(tiny_folder, changed)
    (changed / "config.json").write_text((changed / "config.json").read_text() + " ")
    result = invoke("verify", version, "--base", changed, "--json")
    assert result.exit_code == 1 and "base:config.json" in result.output


def test_verify_imports_nothing_heavy(version):
    code = ("import sys, qrtrain.artifacts.verify\n"
            "from qrtrain.cli import main\n"
            f"sys.argv = ['qrtrain', 'verify', {str(version)!r}]\n"
            "try: main()\n"
            "except SystemExit as e: print('EXIT', e.code)\n"
            f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "EXIT 0" in out and "HEAVY []" in out, out


def mutate(rng, data: bytes) -> bytes:
    data = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0 and data:
        data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:
        del data[rng.randrange(len(data) + 1):]
    elif kind == 2:
        position = rng.randrange(len(data) + 1)
        data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
    else:
        for _ in range(rng.randrange(1, 8)):
            if data:
                data[rng.randrange(len(data))] = rng.choice(b'{}[]",:0123456789-e.ntfu\\')
    return bytes(data)


def parsed(data: bytes, safetensors: bool):
    """What a file means to verify: the JSON of checksums.json, or the tensor entries of a safetensors header."""
    try:
        if safetensors:
            length = struct.unpack("<Q", data[:8])[0]
            header = json.loads(data[8:8 + length])
            header.pop("__metadata__", None)
            return length, header, len(data)
        return json.loads(data)
    except Exception:
        return None


def fuzz(version, cases: int, seed: int):
    rng = random.Random(seed)
    safetensors, checksums = version / "adapter_model.safetensors", version / "checksums.json"
    originals = {p: p.read_bytes() for p in (safetensors, checksums)}
    manifest_bytes = checksums.read_bytes()
    neutral = 0
    for case in range(cases):
        target = rng.choice(list(originals))
        if target is safetensors:  # mutate the header region (first 8 bytes + JSON); sometimes re-seal the manifest
            head = 8 + struct.unpack("<Q", originals[safetensors][:8])[0]
            target.write_bytes(mutate(rng, originals[safetensors][:head]) + originals[safetensors][head:])
            resealed = rng.random() < 0.5
            if resealed:
                write_manifest(version)
            same = resealed and parsed(target.read_bytes(), True) == parsed(originals[safetensors], True)
        else:
            target.write_bytes(mutate(rng, originals[checksums]))
            same = parsed(target.read_bytes(), False) == parsed(originals[checksums], False)
        result = invoke("verify", version, "--json")
        assert result.exception is None or isinstance(result.exception, SystemExit), (case, repr(result.exception))
        assert result.output.strip(), case
        # a mutation that changes nothing verify reads (JSON whitespace, __metadata__ text) still verifies
        assert result.exit_code == (0 if same else 1) or (not same and result.exit_code == 2), (case, result.output)
        neutral += same
        for path, data in originals.items():
            path.write_bytes(data)
        checksums.write_bytes(manifest_bytes)
    assert neutral < cases // 4, "most mutations should change something"


def test_fuzz_header_and_manifest_few(version):
    fuzz(version, 40, seed=1)


@pytest.mark.slow
def test_fuzz_header_and_manifest_many(version):
    fuzz(version, 1000, seed=2)


def test_two_trainings_at_once_publish_two_versions(tmp_path):
    qrtrain = Path(sys.executable).parent / "qrtrain"
    command = [str(qrtrain), "train", "model=tiny", "training.max_steps=2", f"artifact.root={tmp_path}", "artifact.name=c"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
            for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    published = sorted(out.strip().splitlines()[-1] for out, _ in outputs)
    assert published == [str(tmp_path / "c" / "v1"), str(tmp_path / "c" / "v2")]
    assert invoke("verify", tmp_path / "c").exit_code == 0
    assert (tmp_path / "c" / "latest").read_text().strip() == "v2"


def test_base_weight_change_fails_training_and_publishes_nothing(tmp_path, monkeypatch):
    import torch
    from transformers import TrainerCallback

    import qrtrain.training.train as train_module
    import qrtrain.training.trainer as trainer_module
    from qrtrain.errors import QrtrainError
    from tests.conftest import compose_cfg

    class ChangeABaseWeight(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            name, weight = next((n, p) for n, p in model.named_parameters() if "lora_" not in n and p.dim() == 2)
            with torch.no_grad():
                weight[0, 0] += 1.0

    original = trainer_module.build_trainer

    def build_with_tamper(*args, **kwargs):
        trainer = original(*args, **kwargs)
        trainer.add_callback(ChangeABaseWeight())
        return trainer

    monkeypatch.setattr(trainer_module, "build_trainer", build_with_tamper)
    cfg = compose_cfg("training.max_steps=2", root=tmp_path)
    with pytest.raises(QrtrainError, match="base weights changed") as caught:
        train_module.train(cfg, tmp_path / "run")
    assert caught.value.exit_code == 1
    assert not list(tmp_path.glob("*/v*"))


def test_list_shows_versions_and_their_state(version, tmp_path):
    root = tmp_path / "root"
    (root / "art").mkdir(parents=True)
    shutil.move(str(version), str(root / "art" / "v1"))
    shutil.copytree(root / "art" / "v1", root / "art" / "v2")
    (root / "art" / "v2" / "metadata.json").write_text("{}")
    rows = json.loads(invoke("list", "--root", root, "--json").output)
    assert [(r["artifact"], r["version"], r["verified"]) for r in rows] == [("art", "v1", True), ("art", "v2", False)]
    assert rows[0]["base_model"] == "tiny" and rows[0]["eval_loss"] is not None
    assert "art" in invoke("list", "--root", root).output
    assert invoke("list", "--root", root / "nope").exit_code == 2
