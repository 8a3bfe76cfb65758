"""Publish a new version of a named artifact: assembled aside, then renamed into place.

    qrtrain train model=tiny training.max_steps=2 artifact.root=/tmp/a artifact.name=demo
    ls /tmp/a/demo        # v1 v2 ... latest

A version is complete or absent: it is written in a hidden temporary folder beside
its final place, flushed, given its manifest, and renamed to v<N> under a lock, so
two runs publishing at once get different versions. `latest` is a file naming the
newest version.
"""

import fcntl
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from qrtrain.artifacts.manifest import MANIFEST_NAME, fsync_dir, fsync_tree, write_json, write_manifest
from qrtrain.errors import QrtrainError

VERSION_RE = re.compile(r"v(\d+)")
LATEST_NAME = "latest"


def versions(name_dir: Path) -> list[int]:
    """Published version numbers under an artifact name folder, ascending."""
    if not name_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in name_dir.iterdir() if p.is_dir() and (m := VERSION_RE.fullmatch(p.name)))


@contextmanager
def staging_folder(root: Path, name: str):
    """A temporary folder beside the versions; removed unless it was published."""
    name_dir = Path(root) / name
    name_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=name_dir))
    staging.chmod(0o755)  # mkdtemp makes it private; a published version is readable like any output
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_version(staging: Path, metadata: dict) -> Path:
    """Give the staged files their metadata and manifest and rename them to the next v<N>."""
    name_dir = staging.parent
    with open(name_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        number = (versions(name_dir) or [0])[-1] + 1
        write_json(staging / "metadata.json", {**metadata, "version": f"v{number}"})
        write_manifest(staging)
        fsync_tree(staging)
        final = name_dir / f"v{number}"
        os.rename(staging, final)
        _write_latest(name_dir, f"v{number}")
        fsync_dir(name_dir)
    return final


def _write_latest(name_dir: Path, version: str) -> None:
    tmp = name_dir / f".{LATEST_NAME}.tmp"
    with open(tmp, "w") as f:
        f.write(version + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, name_dir / LATEST_NAME)


def check_writable(root: Path) -> None:
    """Fail before training, not after, when the artifact root cannot be written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
    except OSError as error:
        raise QrtrainError(f"artifact.root={root} is not writable ({error.strerror}); choose another "
                           "artifact.root or fix its permissions") from None


def resolve_target(target: Path) -> tuple[Path | None, Path]:
    """(artifact version folder or None, base model folder) for an artifact version, artifact folder or model folder."""
    from qrtrain.artifacts.verify import verify_version

    target = Path(target)
    if (target / LATEST_NAME).is_file() and not (target / MANIFEST_NAME).exists():
        target = target / (target / LATEST_NAME).read_text().strip()
    if (target / MANIFEST_NAME).exists():
        result = verify_version(target)
        if not result["verified"]:
            listed = "; ".join(f"{p['file']}: {p['message']}" for p in result["problems"][:5])
            raise QrtrainError(f"{target} fails verification, so it is not evaluated ({listed}); "
                               f"see `qrtrain verify {target}`")
        metadata = json.loads((target / "metadata.json").read_text())
        return target, Path(metadata["base_model"]["path"])
    if (target / "config.json").is_file():
        return None, target
    raise QrtrainError(f"{target}: not an artifact version (no {MANIFEST_NAME}), an artifact folder (no latest) "
                       "or a model folder (no config.json)")
