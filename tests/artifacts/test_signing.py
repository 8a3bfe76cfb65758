"""Signatures (OpenSSF model signing) and the provenance statement: signed at publish time or later, checked
by `qrtrain verify` and by the `model_signing` library alone; every kind of tampering fails with its message."""

import datetime
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import invoke


def write_key_pair(folder: Path, name: str):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, private, public


def write_certificates(folder: Path, name: str):
    """A root CA and a code-signing leaf certificate it issued: (leaf key, leaf certificate, CA certificate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key, _, _ = write_key_pair(folder, f"{name}-ca")
    leaf_key, leaf_private, _ = write_key_pair(folder, f"{name}-leaf")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} root")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trainer")]))
            .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    leaf_file, ca_file = folder / f"{name}-leaf.crt", folder / f"{name}-ca.crt"
    leaf_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return leaf_private, leaf_file, ca_file


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    _, private, public = write_key_pair(folder, "signer")
    _, other_private, other_public = write_key_pair(folder, "other")
    return {"private": private, "public": public, "other_private": other_private, "other_public": other_public,
            "folder": folder}


@pytest.fixture(scope="module")
def published(tmp_path_factory, keys, model_cache):
    """v1 signed as it was published (artifact.sign_key), v2 the same training unsigned."""
    root = tmp_path_factory.mktemp("signed")
    for extra in ([f"artifact.sign_key={keys['private']}"], []):
        result = invoke("train", "model=tiny", "training.max_steps=2", f"artifact.root={root}", "artifact.name=s",
                        *extra)
        assert result.exit_code == 0, result.output
    return root / "s"


@pytest.fixture
def signed(published, tmp_path):
    copy = tmp_path / "s" / "v1"
    shutil.copytree(published / "v1", copy)
    return copy


def verify_json(*args):
    result = invoke("verify", *args, "--json")
    assert result.output.startswith("{"), (result.output, result.exception)
    return result.exit_code, json.loads(result.output)["versions"][0]


def test_a_version_signed_at_publish_verifies_with_its_key(signed, keys):
    assert (signed / "model.sig").is_file()
    code, result = verify_json(signed, "--key", keys["public"], "--require-signature")
    assert code == 0 and result["signature"]["state"] == "valid", result
    assert "model.sig" not in json.dumps(json.loads((signed / "checksums.json").read_text()))  # it signs the manifest
    code, result = verify_json(signed)  # without a key: verified, the signature named but not checked
    assert code == 0 and result["signature"]["state"] == "present"


def test_the_model_signing_library_and_cli_verify_it_alone(signed, keys):
    import model_signing.verifying

    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=keys["public"]).verify(
        signed, signed / "model.sig")
    cli = Path(sys.executable).parent / "model_signing"
    out = subprocess.run([str(cli), "verify", "key", str(signed), "--signature", str(signed / "model.sig"),
                          "--public_key", str(keys["public"])], capture_output=True, text=True)
    assert out.returncode == 0 and "Verification succeeded" in out.stdout + out.stderr, out.stdout + out.stderr
    (signed / "adapter_config.json").write_text("{}")
    out = subprocess.run([str(cli), "verify", "key", str(signed), "--signature", str(signed / "model.sig"),
                          "--public_key", str(keys["public"])], capture_output=True, text=True)
    assert out.returncode != 0


def test_one_flipped_byte_in_any_file_fails(published, keys, tmp_path):
    files = sorted(p.relative_to(published / "v1") for p in (published / "v1").rglob("*") if p.is_file())
    assert Path("model.sig") in files and Path("provenance.intoto.json") in files
    rng = random.Random(0)
    for relative in files:
        copy = tmp_path / relative.as_posix().replace("/", "_") / "v1"
        shutil.copytree(published / "v1", copy)
        data = bytearray((copy / relative).read_bytes())
        data[rng.randrange(len(data))] ^= 0x01
        (copy / relative).write_bytes(bytes(data))
        code, result = verify_json(copy, "--key", keys["public"])
        assert code in (1, 3) and not result["verified"], relative
        if relative.name != "model.sig":  # the content check names the file; the signature fails too
            assert any(p["file"] == relative.as_posix() for p in result["problems"]), (relative, result["problems"])
        assert any(p["check"] == "signature" for p in result["problems"]), (relative, result["problems"])


def test_a_swapped_signature_a_wrong_key_and_an_unsigned_version_fail_with_exit_3(published, signed, keys, tmp_path):
    unsigned = tmp_path / "s" / "v2"
    shutil.copytree(published / "v2", unsigned)
    code, result = verify_json(unsigned, "--key", keys["public"], "--require-signature")
    assert code == 3 and "unsigned" in result["problems"][0]["message"]
    assert verify_json(unsigned, "--key", keys["public"])[0] == 0  # not required: an unsigned version verifies
    shutil.copyfile(signed / "model.sig", unsigned / "model.sig")  # v1's signature on v2's files
    code, result = verify_json(unsigned, "--key", keys["public"])
    assert code == 3 and "signed digests differ" in result["problems"][0]["message"], result["problems"]
    code, result = verify_json(signed, "--key", keys["other_public"])
    assert code == 3 and "does not verify with the public key" in result["problems"][0]["message"]
    (signed / "model.sig").write_text("not a bundle")
    code, result = verify_json(signed)
    assert code == 3 and "not JSON" in result["problems"][0]["message"]


def test_sign_later_certificates_and_refusals(published, keys, tmp_path):
    version = tmp_path / "s" / "v2"
    shutil.copytree(published / "v2", version)
    leaf_key, leaf, ca = write_certificates(tmp_path, "team")
    _, _, other_ca = write_certificates(tmp_path, "elsewhere")
    result = invoke("sign", version, "--key", leaf_key, "--certificate", leaf, "--certificate-chain", ca)
    assert result.exit_code == 0, result.output
    assert verify_json(version, "--certificate-chain", ca, "--require-signature")[0] == 0
    code, checked = verify_json(version, "--certificate-chain", other_ca)
    assert code == 3 and checked["signature"]["state"] == "invalid"
    result = invoke("sign", "s/v2", "--root", tmp_path, "--key", keys["other_private"])  # NAME/vN, re-signed
    assert result.exit_code == 0 and "earlier signature replaced" in result.output, result.output
    assert verify_json(version, "--key", keys["other_public"])[0] == 0
    (version / "README.md").write_text("changed")
    result = invoke("sign", version, "--key", keys["private"])
    assert result.exit_code == 1 and "fails verification, so it is not signed" in result.output
    result = invoke("sign", version, "--key", keys["public"])
    assert result.exit_code == 2 and "not an unencrypted PEM private key" in result.output
    result = invoke("train", "model=tiny", f"artifact.root={tmp_path}", "artifact.sign_key=/no/key.pem")
    assert result.exit_code == 2 and "artifact.sign_key /no/key.pem: no such file" in result.output


def test_packages_carry_the_signature(published, keys, tmp_path):
    bundle = tmp_path / "b.tar.gz"
    assert invoke("package", published / "v1", "--format", "bundle", "--output", bundle).exit_code == 0
    result = invoke("unpack", bundle, tmp_path / "here")
    assert result.exit_code == 0, result.output
    assert verify_json(tmp_path / "here" / "s-v1", "--key", keys["public"], "--require-signature")[0] == 0
    result = invoke("package", published / "v1", "--format", "hf", "--output", tmp_path / "hf")
    assert result.exit_code == 2 and "--sign-key" in result.output
    result = invoke("package", published / "v1", "--format", "hf", "--output", tmp_path / "hf",
                    "--sign-key", keys["private"])
    assert result.exit_code == 0, result.output
    assert verify_json(tmp_path / "hf", "--key", keys["public"], "--require-signature")[0] == 0


def test_the_provenance_statement_validates_against_the_in_toto_and_slsa_schemas(published):
    from google.protobuf import json_format
    from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.v1.statement import Statement

    version = published / "v1"
    document = json.loads((version / "provenance.intoto.json").read_text())
    statement = json_format.ParseDict(document, statement_pb2.Statement())  # unknown fields are refused
    Statement.copy_from_pb(statement).validate()
    assert document["predicateType"] == "https://slsa.dev/provenance/v1"
    provenance = json_format.ParseDict(document["predicate"], provenance_pb2.Provenance())
    assert provenance.build_definition.build_type and provenance.run_details.builder.id  # SLSA's required fields
    assert provenance.build_definition.HasField("external_parameters")
    for descriptor in provenance.build_definition.resolved_dependencies:
        ResourceDescriptor.copy_from_pb(descriptor).validate()
    manifest = {e["path"]: e["sha256"] for e in json.loads((version / "checksums.json").read_text())["files"]}
    subjects = {s["name"]: s["digest"]["sha256"] for s in document["subject"]}
    assert subjects == {p: d for p, d in manifest.items() if p != "provenance.intoto.json"}
    metadata = json.loads((version / "metadata.json").read_text())
    inputs = {d.name: dict(d.digest) for d in provenance.build_definition.resolved_dependencies}
    for name, digest in metadata["base_model"]["files"].items():
        assert inputs[f"base/{name}"] == {"sha256": digest}
    assert any(n.startswith("data/train/") for n in inputs)
    assert document["predicate"]["buildDefinition"]["externalParameters"]["config"]["training"]["max_steps"] == 2
