"""The sha256 manifest (`checksums.json`) of an artifact folder: writing it and hashing files.

    python -c "from qrtrain.artifacts.manifest import build_manifest; print(build_manifest('outputs/NAME/v1'))"

Imports nothing heavy: `qrtrain verify` uses it.
"""

import hashlib
from pathlib import Path

from qrtrain.files import sha256_file, write_json

MANIFEST_NAME = "checksums.json"
FORMAT_VERSION = 1


def root_digest(files: list[dict]) -> str:
    """sha256 over the sorted entries, one `path size sha256` line each."""
    lines = "".join(f"{f['path']}\t{f['size']}\t{f['sha256']}\n" for f in sorted(files, key=lambda f: f["path"]))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def build_manifest(folder: Path) -> dict:
    folder = Path(folder)
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and relative != MANIFEST_NAME:
            files.append({"path": relative, "size": path.stat().st_size, "sha256": sha256_file(path)})
    return {"format_version": FORMAT_VERSION, "algorithm": "sha256", "files": files, "root_digest": root_digest(files)}


def write_manifest(folder: Path) -> dict:
    manifest = build_manifest(folder)
    write_json(Path(folder) / MANIFEST_NAME, manifest)
    return manifest
