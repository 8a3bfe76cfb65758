"""Signatures of artifact versions in the OpenSSF Model Signing format (the `model-signing` library).

    openssl ecparam -name prime256v1 -genkey -noout -out key.pem && openssl ec -in key.pem -pubout -out pub.pem
    qrtrain sign outputs/NAME/v1 --key key.pem
    qrtrain verify outputs/NAME/v1 --key pub.pem --require-signature
    model_signing verify key outputs/NAME/v1 --signature outputs/NAME/v1/model.sig --public_key pub.pem

The signature is `model.sig` inside the version (the `model_signing` CLI's own default name): a Sigstore
bundle whose signed in-toto statement lists the sha256 of every other file of the version, checksums.json
and the provenance statement included. It is the one file the manifest cannot list (it signs the manifest),
so `qrtrain verify` allows exactly that name beside the manifest's files, and checks it when given a key,
a certificate chain or a Sigstore identity. Imports `model_signing` only to sign or to check.
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from qrtrain.errors import QrtrainError
from qrtrain.files import read_text

SIGNATURE_NAME = "model.sig"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle"


@dataclass
class SignWith:
    """How to sign: a private key (EC, PEM), that key with its certificate and chain, or Sigstore (online)."""
    key: Path | None = None
    certificate: Path | None = None
    chain: list[Path] = field(default_factory=list)
    sigstore: bool = False

    def describe(self) -> str:
        if self.sigstore:
            return "Sigstore (keyless, online)"
        return f"key {self.key}" + (f" with certificate {self.certificate}" if self.certificate else "")


@dataclass
class TrustWith:
    """How to check: a public key, a certificate chain, or a Sigstore identity and issuer; `require` fails a
    version that is unsigned."""
    key: Path | None = None
    chain: list[Path] = field(default_factory=list)
    identity: str | None = None
    issuer: str | None = None
    require: bool = False

    def checks(self) -> bool:
        return self.key is not None or bool(self.chain) or self.identity is not None


def check_sign_with(sign_with: SignWith, where: str = "--key") -> None:
    """Refuse before any work: a key that is missing, not a private key, a certificate without its key."""
    if sign_with.sigstore:
        return
    if sign_with.key is None:
        raise QrtrainError(f"{where}: give the private key that signs (PEM, elliptic curve), or use Sigstore")
    from cryptography.hazmat.primitives import serialization

    for label, path in [(where, sign_with.key)] + [("certificate", p) for p in
                                                   ([sign_with.certificate] if sign_with.certificate else [])
                                                   + list(sign_with.chain)]:
        if not Path(path).is_file():
            raise QrtrainError(f"{label} {path}: no such file")
    try:
        serialization.load_pem_private_key(Path(sign_with.key).read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        raise QrtrainError(f"{where} {sign_with.key}: not an unencrypted PEM private key ({error}); make one with "
                           "`openssl ecparam -name prime256v1 -genkey -noout -out key.pem`") from None


def sign_folder(folder: Path, sign_with: SignWith) -> Path:
    """Sign every file of the folder but the signature; written beside, then renamed to model.sig."""
    import model_signing.hashing
    import model_signing.signing

    check_sign_with(sign_with)
    folder = Path(folder)
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=[SIGNATURE_NAME], ignore_git_paths=False)
    config = model_signing.signing.Config().set_hashing_config(hashing)
    if sign_with.sigstore:
        config.use_sigstore_signer()
    elif sign_with.certificate:
        config.use_certificate_signer(private_key=sign_with.key, signing_certificate=sign_with.certificate,
                                      certificate_chain=sign_with.chain)
    else:
        config.use_elliptic_key_signer(private_key=sign_with.key)
    partial = folder.parent / f".{folder.name}.{SIGNATURE_NAME}.{os.getpid()}"  # outside what is hashed
    try:
        config.sign(folder, partial)
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, folder / SIGNATURE_NAME)
    except Exception as error:  # the library's errors vary by signer: every one means no signature
        raise QrtrainError(f"signing {folder} with {sign_with.describe()} failed: {error}", exit_code=1) from None
    finally:
        partial.unlink(missing_ok=True)
    return folder / SIGNATURE_NAME


def signature_problem(folder: Path) -> str | None:
    """What is wrong with model.sig's form (a small JSON Sigstore bundle), without checking the signature."""
    text, problem = read_text(Path(folder) / SIGNATURE_NAME, limit=1 << 20)
    if problem:
        return problem
    try:
        bundle = json.loads(text)
    except ValueError:
        return "not JSON: expected the Sigstore bundle `qrtrain sign` or `model_signing sign` writes"
    if not (isinstance(bundle, dict) and str(bundle.get("mediaType", "")).startswith(BUNDLE_MEDIA_TYPE)):
        return f"not a Sigstore bundle (mediaType {BUNDLE_MEDIA_TYPE}...)"
    return None


def signer_of(folder: Path) -> str:
    """Who the signature says signed: a key's hint (sha256 of the public key), a certificate, or Sigstore."""
    text, _ = read_text(Path(folder) / SIGNATURE_NAME, limit=1 << 20)
    try:
        material = json.loads(text or "{}").get("verificationMaterial") or {}
    except (ValueError, AttributeError):
        return "unreadable"
    if material.get("publicKey"):
        return f"key {str(material['publicKey'].get('hint', ''))[:16]}..."
    if material.get("certificate") or material.get("x509CertificateChain"):
        return "certificate" + (" (Sigstore, logged)" if material.get("tlogEntries") else "")
    return "unknown signer"


def check_signature(folder: Path, trust: TrustWith) -> str | None:
    """None when model.sig is a valid signature of the folder's files by what `trust` names, else why not."""
    import logging

    import model_signing.verifying

    config = model_signing.verifying.Config()
    try:
        if trust.key is not None:
            config.use_elliptic_key_verifier(public_key=trust.key)
        elif trust.chain:
            config.use_certificate_verifier(certificate_chain=trust.chain)
        else:
            config.use_sigstore_verifier(identity=trust.identity, oidc_issuer=trust.issuer)
    except Exception as error:
        raise QrtrainError(f"cannot check signatures with {trust_label(trust)}: {error}") from None
    logging.getLogger("model_signing").setLevel(logging.ERROR)  # it warns about certificate extensions
    try:
        config.verify(Path(folder), Path(folder) / SIGNATURE_NAME)
    except Exception as error:  # a mismatch, a bad signature, a wrong key: each is a failed check
        return f"does not verify with {trust_label(trust)}: {mismatch_summary(str(error) or type(error).__name__)}"
    return None


def mismatch_summary(message: str) -> str:
    """The library's message, with its per-file digest dumps reduced to the names of the files concerned."""
    import re

    changed = re.findall(r"Hash mismatch for '([^']+)'", message)
    unsigned = re.findall(r"Extra files found in model '[^']*': ([^\"']+)", message)
    missing = re.findall(r"Missing files in model '[^']*': ([^\"']+)", message)
    if not (changed or unsigned or missing):
        return message.splitlines()[0][:300]
    parts = ([f"signed digests differ for {', '.join(changed)} (changed since signing, or another version's "
              "signature)"] if changed else []) + [f"not signed: {u}" for u in unsigned] \
        + [f"signed but missing: {m}" for m in missing]
    return "; ".join(parts)


def trust_label(trust: TrustWith) -> str:
    if trust.key is not None:
        return f"the public key {trust.key}"
    if trust.chain:
        return f"the certificate chain {', '.join(map(str, trust.chain))}"
    return f"the Sigstore identity {trust.identity} ({trust.issuer})"


def signature_result(folder: Path | None, trust: TrustWith | None, files_verified: bool) -> dict:
    """{state, signer, message}: unsigned, present (not checked), valid or invalid."""
    if folder is None or not (Path(folder) / SIGNATURE_NAME).exists():
        return {"state": "unsigned", "signer": None, "message": "no model.sig"}
    problem = signature_problem(folder)
    if problem:
        return {"state": "invalid", "signer": None, "message": f"model.sig: {problem}"}
    signer = signer_of(folder)
    if trust is None or not trust.checks():
        return {"state": "present", "signer": signer, "message": "signed, not checked (give --key, "
                "--certificate-chain or --identity/--issuer)"}
    problem = check_signature(folder, trust)
    return {"state": "invalid" if problem else "valid", "signer": signer,
            "message": problem or f"valid signature by {trust_label(trust)}"
            + ("" if files_verified else " (but the files fail the manifest)")}
