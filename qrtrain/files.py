"""File utilities every area uses: hashing, durable writes, and one defensive JSON reader.

    python -c "from qrtrain.files import read_json; print(read_json('outputs/NAME/v1/metadata.json'))"

Imports nothing heavy (`qrtrain verify`, `qrtrain list` and the service use it).
"""

import hashlib
import json
import os
import stat
from pathlib import Path

CHUNK = 1 << 20
JSON_LIMIT = 16 << 20  # bytes: metadata, metrics and reports are far smaller


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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


def read_json(path: Path, expect: type | None = dict, limit: int = JSON_LIMIT):
    """(the file's JSON value, None) or (None, what is wrong with it), through read_text's checks; never
    raises, so one damaged file cannot take down a listing."""
    text, problem = read_text(path, limit)
    if problem:
        return None, problem
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as error:
        return None, f"not valid JSON ({str(error).splitlines()[0][:120]})"
    if expect is not None and not isinstance(value, expect):
        return None, f"expected a JSON {'object' if expect is dict else expect.__name__}, got {type(value).__name__}"
    return value, None


def read_text(path: Path, limit: int = JSON_LIMIT) -> tuple[str | None, str | None]:
    """(a small regular file's text, None) or (None, what is wrong): never through a symbolic link, never
    blocking on a pipe, at most `limit` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None, "missing"
    except OSError as error:
        return None, f"unreadable ({error.strerror or error})"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None, "not a regular file"
        if info.st_size > limit:
            return None, f"too large ({info.st_size} bytes, at most {limit})"
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit).decode("utf-8", errors="replace"), None
    except OSError as error:
        return None, f"unreadable ({error.strerror or error})"
    finally:
        os.close(fd)


def regular_files(folder: Path) -> list[Path]:
    """Every regular file below a folder, without following symbolic links (links are not counted)."""
    found = []
    for parent, folders, files in os.walk(folder):
        folders[:] = sorted(f for f in folders if not os.path.islink(os.path.join(parent, f)))
        found += [Path(parent) / f for f in sorted(files) if stat.S_ISREG(os.lstat(os.path.join(parent, f)).st_mode)]
    return found
