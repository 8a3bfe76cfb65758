"""Integrity under attack: a file changed while packaging, `latest` pointing elsewhere, headers the library
refuses, base paths outside the base folder, unsafe or tampered bundles, outputs inside an artifact tree,
a damaged model cache. Each case checks the exit code, the message and what is on disk afterwards."""

import io
import json
import os
import shutil
import struct
import tarfile
from pathlib import Path

import pytest

from qrtrain.artifacts.manifest import write_manifest
from tests.conftest import invoke

FORMATS = ["bundle", "hf", "merged", "ollama", "gguf"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, model_cache):
    root = tmp_path_factory.mktemp("integrity")
    result = invoke("train", "model=tiny", "training.max_steps=2", f"artifact.root={root}", "artifact.name=a")
    assert result.exit_code == 0, result.output
    return root / "a" / "v1"


@pytest.fixture
def artifact(trained, tmp_path):
    """A private copy of a published artifact: root/a/{v1, latest}."""
    shutil.copytree(trained.parent, tmp_path / "root" / "a", ignore=shutil.ignore_patterns(".lock", ".staging-*"))
    return tmp_path / "root" / "a"


def flip_byte(path: Path, at: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_file_changed_after_verification_never_comes_out_verified(artifact, tmp_path, monkeypatch, fmt):
    """The version is verified, then a byte changes before the copy: the package fails, nothing is written."""
    import qrtrain.artifacts.resolve as resolve

    original = resolve.resolve_target

    def verify_then_tamper(target):
        found = original(target)
        flip_byte(artifact / "v1" / "adapter_model.safetensors")
        return found

    monkeypatch.setattr(resolve, "resolve_target", verify_then_tamper)
    out = tmp_path / "pkg" / f"out-{fmt}"
    result = invoke("package", artifact / "v1", "--format", fmt, "--output", out)
    assert result.exit_code == 1 and "changed while it was being packaged" in result.output, result.output
    assert not out.exists() and list((tmp_path / "pkg").iterdir()) == []


def test_a_change_after_the_private_copy_does_not_reach_the_package(artifact, tmp_path, monkeypatch):
    import qrtrain.artifacts.package as package

    original_bytes = (artifact / "v1" / "adapter_model.safetensors").read_bytes()
    copy = package.verified_copy

    def copy_then_tamper(version, into):
        made = copy(version, into)
        flip_byte(version / "adapter_model.safetensors")
        return made

    monkeypatch.setattr(package, "verified_copy", copy_then_tamper)
    out = tmp_path / "hf"
    assert invoke("package", artifact / "v1", "--format", "hf", "--output", out).exit_code == 0
    assert (out / "adapter_model.safetensors").read_bytes() == original_bytes
    assert invoke("verify", out).exit_code == 0


@pytest.mark.parametrize("latest", ["/etc", "../x", "v9", "v1/../../x", "not a version", ""])
def test_latest_naming_anything_but_a_version_here_is_refused(artifact, tmp_path, latest):
    (artifact / "latest").write_text(latest + "\n")
    (tmp_path / "x").mkdir()
    for args in (["evaluate", artifact], ["package", artifact, "--format", "bundle", "--output", tmp_path / "b.tar.gz"]):
        result = invoke(*args)
        assert result.exit_code == 2 and "latest" in result.output, (args, result.output)
    assert not (tmp_path / "b.tar.gz").exists() and list((tmp_path / "x").iterdir()) == []
    result = invoke("verify", artifact)
    assert result.exit_code == 1 and "latest" in result.output


def test_latest_that_is_not_the_newest_version_fails_verify(artifact):
    shutil.copytree(artifact / "v1", artifact / "v2")
    (artifact / "latest").write_text("v1\n")
    data = json.loads(invoke("verify", artifact, "--json").output)
    assert not data["verified"]
    assert any(p["check"] == "latest" and "v2 is the newest" in p["message"] for v in data["versions"] for p in v["problems"])
    (artifact / "latest").write_text("v2\n")
    data = json.loads(invoke("verify", artifact, "--json").output)  # latest is right now; v2 is a copy of v1
    assert [(p["check"], p["message"]) for v in data["versions"] for p in v["problems"]] == [
        ("version", "the folder is v2 but its metadata records v1")]


def rewrite_header(path: Path, edit) -> None:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = edit(json.loads(data[8:8 + length]))
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])


@pytest.mark.parametrize("value", [1, None, ["a"], {"k": "v"}, True])
def test_a_header_the_safetensors_library_refuses_fails_verify(artifact, value):
    from safetensors import safe_open

    adapter = artifact / "v1" / "adapter_model.safetensors"
    rewrite_header(adapter, lambda h: {**h, "__metadata__": {"format": "pt", "note": value}})
    write_manifest(artifact / "v1")
    with pytest.raises(Exception):  # the premise: the reference parser refuses it
        with safe_open(str(adapter), framework="numpy"):
            pass
    result = invoke("verify", artifact / "v1")
    assert result.exit_code == 1 and "__metadata__" in result.output
    bundle = artifact.parent / "a.tar.gz"
    with tarfile.open(bundle, "w:gz") as tar:  # the same file inside a bundle
        for path in sorted(p for p in (artifact / "v1").iterdir()):
            tar.add(path, arcname=f"a-v1/{path.name}")
    assert invoke("verify", bundle).exit_code == 1


def test_verify_base_confines_metadata_paths_to_the_base_folder(artifact, tmp_path):
    metadata = json.loads((artifact / "v1" / "metadata.json").read_text())
    empty = tmp_path / "empty-base"
    empty.mkdir()
    for name in ("../../etc/hostname", "/etc/hostname", "sub/../../x", ".."):
        metadata["base_model"]["files"] = {name: "0" * 64}
        (artifact / "v1" / "metadata.json").write_text(json.dumps(metadata))
        write_manifest(artifact / "v1")
        result = invoke("verify", artifact / "v1", "--base", empty)
        assert result.exit_code == 1 and "not a plain file name" in result.output, name


def bundle_of(version: Path, path: Path, extra: list[tuple[str, bytes]] = (), manifest_first: bool = True) -> Path:
    files = sorted(version.iterdir(), key=lambda p: (p.name != "checksums.json") == manifest_first)
    with tarfile.open(path, "w:gz") as tar:
        for file in files:
            tar.add(file, arcname=f"a-v1/{file.name}")
        for name, data in extra:
            info = tarfile.TarInfo(f"a-v1/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("case", ["duplicate", "second manifest", "manifest last", "extra big member"])
def test_bundles_that_verify_rejects_are_not_unpacked(artifact, tmp_path, case):
    v1 = artifact / "v1"
    extra = {"duplicate": [("adapter_config.json", b"{}")],
             "second manifest": [("checksums.json", b'{"files": []}')],
             "manifest last": [],
             "extra big member": [("zeros.bin", bytes(20 << 20))]}[case]
    bundle = bundle_of(v1, tmp_path / "b.tar.gz", extra, manifest_first=case != "manifest last")
    assert invoke("verify", bundle).exit_code == 1
    dest = tmp_path / "dest"
    result = invoke("unpack", bundle, dest)
    assert result.exit_code == 1 and "nothing was unpacked" in result.output, result.output
    assert not dest.exists() or list(dest.iterdir()) == []


def test_unpack_never_overwrites_and_leaves_nothing_half_written(artifact, tmp_path, monkeypatch):
    bundle = bundle_of(artifact / "v1", tmp_path / "b.tar.gz")
    dest = tmp_path / "dest"
    assert invoke("unpack", bundle, dest).exit_code == 0
    assert invoke("verify", dest / "a-v1").exit_code == 0
    before = {p: p.read_bytes() for p in (dest / "a-v1").iterdir()}
    result = invoke("unpack", bundle, dest)
    assert result.exit_code == 2 and "already exists" in result.output
    assert {p: p.read_bytes() for p in (dest / "a-v1").iterdir()} == before

    import qrtrain.artifacts.verify as verify

    shutil.rmtree(dest / "a-v1")
    monkeypatch.setattr(verify, "verify_version", lambda folder, base=None: {"verified": False, "root_digest": None})
    result = invoke("unpack", bundle, dest)
    assert result.exit_code == 1 and "nothing was unpacked" in result.output
    assert list(dest.iterdir()) == []  # no half tree, no leftover temporary folder


def test_unpack_refuses_what_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe.tar.gz"
    os.mkfifo(fifo)
    result = invoke("unpack", fifo, tmp_path / "dest")
    assert result.exit_code == 2 and "no such bundle file" in result.output


def test_package_output_inside_an_artifact_tree_is_refused(artifact):
    for output in (artifact / "v1" / "inside", artifact / "v2", artifact / "pkg"):
        result = invoke("package", artifact / "v1", "--format", "hf", "--output", output)
        assert result.exit_code == 2 and "--output" in result.output, output
        assert not output.exists()
    assert invoke("verify", artifact).exit_code == 0
    assert [v["version"] for v in json.loads(invoke("list", "--root", artifact.parent, "--json").output)] == ["v1"]


def test_a_flipped_byte_in_the_cached_base_model_stops_training(tmp_path, monkeypatch):
    monkeypatch.setenv("QRTRAIN_CACHE", str(tmp_path / "cache"))
    args = ["train", "model=tiny", "training.max_steps=1", f"artifact.root={tmp_path / 'out'}"]
    assert invoke(*args).exit_code == 0
    weights = next((tmp_path / "cache" / "models").glob("tiny-*/model.safetensors"))
    flip_byte(weights, at=len(weights.read_bytes()) // 2)
    result = invoke(*args)
    assert result.exit_code == 2 and "damaged" in result.output and "model.safetensors" in result.output
    assert sorted(p.name for p in (tmp_path / "out" / "tiny-dialogue").glob("v*")) == ["v1"]
