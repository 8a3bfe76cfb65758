"""Publish a new version of a named artifact: assembled aside, then renamed into place.

    qrtrain train model=tiny training.max_steps=2 artifact.root=/tmp/a artifact.name=demo
    ls /tmp/a/demo        # v1 v2 ... latest

A version is complete or absent: it is written in a hidden temporary folder beside
its final place, flushed, given its manifest, and renamed to v<N> under a lock, so
two runs publishing at once get different versions. `latest` is a file naming the
newest version; `.highest` holds the highest number ever given, so a deleted vN is
never reused.
"""

import fcntl
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from qrtrain.artifacts.manifest import write_manifest
from qrtrain.errors import QrtrainError
from qrtrain.files import fsync_dir, fsync_tree, read_text, write_json

VERSION_RE = re.compile(r"v(\d+)")
LATEST_NAME = "latest"
HIGHEST_NAME = ".highest"


def versions(name_dir: Path) -> list[int]:
    """Published version numbers under an artifact name folder, ascending (symbolic links are not versions)."""
    if not name_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in name_dir.iterdir()
                  if not p.is_symlink() and p.is_dir() and (m := VERSION_RE.fullmatch(p.name)))


@contextmanager
def staging_folder(root: Path, name: str):
    """A temporary folder beside the versions; removed unless it was published."""
    name_dir = Path(root) / name
    name_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(name_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{os.getpid()}-", dir=name_dir))
    staging.chmod(0o755)  # mkdtemp makes it private; a published version is readable like any output
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_stale_staging(name_dir: Path) -> None:
    """Staging folders left by a killed run (their process is gone) are removed by the next publish."""
    for folder in name_dir.glob(".staging-*"):
        pid = folder.name.split("-")[1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # another user's live process
            pass


def publish_version(staging: Path, metadata: dict, config: dict | None = None, sign_with=None) -> Path:
    """Give the staged files their metadata, provenance statement and manifest, sign them when `sign_with`
    says how (qrtrain/artifacts/signing.py: the version is never unsigned in between), and rename them to
    the next v<N>."""
    from datetime import datetime, timezone

    from qrtrain.artifacts.statement import STATEMENT_NAME, provenance_statement

    name_dir = staging.parent
    with open(name_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        number = max([highest_published(name_dir), *versions(name_dir)]) + 1
        metadata = {**metadata, "version": f"v{number}"}
        write_json(staging / "metadata.json", metadata)
        finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(staging / STATEMENT_NAME, provenance_statement(staging, metadata, config or {}, finished))
        write_manifest(staging)
        if sign_with is not None:
            from qrtrain.artifacts.signing import sign_folder

            sign_folder(staging, sign_with)
        fsync_tree(staging)
        final = name_dir / f"v{number}"
        os.rename(staging, final)
        _write_small(name_dir, HIGHEST_NAME, str(number))
        _write_latest(name_dir, f"v{number}")
        fsync_dir(name_dir)
    return final


def read_latest(name_dir: Path) -> Path:
    """The version folder `latest` names, checked: a v<N> folder inside this artifact, never a path elsewhere."""
    problem, text = latest_problem(name_dir)
    if problem:
        raise QrtrainError(f"{name_dir / LATEST_NAME}: {problem}; name a version explicitly ({name_dir}/vN, see "
                           "`qrtrain list`), or publish again to rewrite it")
    return name_dir / text


def latest_problem(name_dir: Path) -> tuple[str | None, str | None]:
    """(what is wrong with `latest`, or None; the version it names). It must be a small regular file naming
    an existing v<N> folder of this artifact, and the newest one."""
    file = name_dir / LATEST_NAME
    if file.is_symlink() or not file.is_file():
        return "missing, or not a regular file", None
    with open(file, "rb") as f:
        raw = f.read(65)
    text = raw.decode("utf-8", errors="replace").strip()
    if len(raw) > 64 or not VERSION_RE.fullmatch(text):
        return f"holds {text[:40]!r}, not a version name like v3", None
    if (name_dir / text).is_symlink() or not (name_dir / text).is_dir():
        return f"names {text}, which is not a version folder of {name_dir.name}", text
    newest = versions(name_dir)[-1]
    if int(text[1:]) != newest:
        return f"names {text}, but v{newest} is the newest version", text
    return None, text


def highest_published(name_dir: Path) -> int:
    """The highest version number ever published here (kept in `.highest`, under the publishing lock), so a
    deleted vN is never given to other weights: old job records, reports and NAME/vN references stay true."""
    text, problem = read_text(name_dir / HIGHEST_NAME, limit=32)
    if problem == "missing":
        return 0
    if problem or not text.strip().isdigit():
        raise QrtrainError(f"{name_dir / HIGHEST_NAME}: {problem or 'not a version number'}; it records the highest "
                           "version ever published here (write the highest vN you know of into it)")
    return int(text.strip())


def _write_latest(name_dir: Path, version: str) -> None:
    _write_small(name_dir, LATEST_NAME, version)


def _write_small(name_dir: Path, name: str, text: str) -> None:
    tmp = name_dir / f".{name}.tmp"
    with open(tmp, "w") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, name_dir / name)


def check_writable(root: Path) -> None:
    """Fail before training, not after, when the artifact root cannot be written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
    except OSError as error:
        raise QrtrainError(f"artifact.root={root} is not writable ({error.strerror}); choose another "
                           "artifact.root or fix its permissions") from None


def delete_version(name_dir: Path, version: str, force: bool = False) -> str | None:
    """Remove one version (renamed aside under the publishing lock, then deleted). The version `latest`
    names is refused unless forced; then `latest` moves to the newest remaining version (or goes).
    Returns what `latest` names afterwards."""
    with open(name_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        folder = name_dir / version
        if not VERSION_RE.fullmatch(version) or folder.is_symlink() or not folder.is_dir():
            raise QrtrainError(f"{folder}: no such version (see `qrtrain list`)")
        _, current = latest_problem(name_dir)
        if current == version and not force:
            raise QrtrainError(f"{folder} is the version `latest` names; delete it with force, and `latest` will "
                               "name the newest version left")
        aside = Path(tempfile.mkdtemp(prefix=f".deleting-{version}-", dir=name_dir))
        os.rename(folder, aside / version)
        remaining = [f"v{n}" for n in versions(name_dir)]
        if current == version:
            if remaining:
                _write_latest(name_dir, remaining[-1])
            else:
                (name_dir / LATEST_NAME).unlink(missing_ok=True)
        fsync_dir(name_dir)
    shutil.rmtree(aside, ignore_errors=True)
    if current != version:
        return current
    return remaining[-1] if remaining else None
