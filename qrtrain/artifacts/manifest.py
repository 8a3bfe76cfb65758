"""The sha256 manifest (`checksums.json`) of an artifact folder: writing it and hashing files.

    python -c "from qrtrain.artifacts.manifest import build_manifest; print(build_manifest('outputs/NAME/v1'))"

Imports nothing heavy: `qrtrain verify` uses it.
"""

import hashlib
import json
import os
from pathlib import Path

MANIFEST_NAME = "checksums.json"
FORMAT_VERSION = 1
CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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


def write_json(path: Path, data) -> None:
    """Write JSON and flush it to disk."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def fsync_tree(folder: Path) -> None:
    """Flush every file below a folder, and the folder itself, to disk."""
    for path in Path(folder).rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(folder)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
