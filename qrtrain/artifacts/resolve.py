"""What a command that takes an artifact works on: a version folder, the version an artifact's `latest`
names, or a plain model folder; a version only once it verifies.

    qrtrain evaluate outputs/tiny-dialogue        # its latest version
    qrtrain package outputs/tiny-dialogue/v2 --format bundle
"""

import json
from pathlib import Path

from qrtrain.artifacts.manifest import MANIFEST_NAME
from qrtrain.artifacts.verify import verify_version
from qrtrain.artifacts.versions import LATEST_NAME, read_latest
from qrtrain.errors import QrtrainError


def resolve_target(target: Path) -> tuple[Path | None, Path]:
    """(artifact version folder or None, base model folder) for an artifact version, artifact folder or model folder."""
    target = Path(target)
    if not target.exists():
        raise QrtrainError(f"{target}: no such file or folder; `qrtrain list` shows the artifacts and their versions")
    if (target / LATEST_NAME).exists() and not (target / MANIFEST_NAME).exists():
        target = read_latest(target)
    if (target / MANIFEST_NAME).exists():
        result = verify_version(target)
        if not result["verified"]:
            listed = "; ".join(f"{p['file']}: {p['message']}" for p in result["problems"][:5])
            raise QrtrainError(f"{target} fails verification, so it is not evaluated ({listed}); "
                               f"see `qrtrain verify {target}`")
        metadata = json.loads((target / "metadata.json").read_text())
        return target, locate_base(metadata)
    if (target / "config.json").is_file():
        return None, target
    raise QrtrainError(f"{target}: not an artifact version (no {MANIFEST_NAME}), an artifact folder (no latest) "
                       "or a model folder (no config.json)")


def locate_base(metadata: dict) -> Path:
    """The base model folder on this machine, by the file hashes recorded at training time: the recorded
    folder if it is here and unchanged, else the model option of that name (built or converted into this
    machine's cache), else the Hub id in the local Hugging Face cache. Nothing matching: the recorded path,
    which the caller reports as missing (with model.path=FOLDER / --base FOLDER to name one)."""
    base = metadata.get("base_model") or {}
    recorded = Path(str(base.get("path") or ""))
    files = base.get("files") if isinstance(base.get("files"), dict) else {}

    def matches(folder: Path) -> bool:
        from qrtrain.files import sha256_file

        return bool(files) and (folder / "config.json").is_file() and all(
            isinstance(name, str) and "/" not in name and (folder / name).is_file()
            and sha256_file(folder / name) == digest for name, digest in files.items())

    if recorded.is_dir() and matches(recorded):
        return recorded
    for find in (_model_option_folder, _hub_cache_folder):
        folder = find(base)
        if folder is not None and matches(folder):
            return folder
    return recorded


def _model_option_folder(base: dict) -> Path | None:
    from qrtrain.config import compose, group_options

    if base.get("name") not in group_options("model"):
        return None
    from qrtrain.models.loading import model_folder

    try:
        return model_folder(compose([f"model={base['name']}"]).model)
    except QrtrainError:
        return None


def _hub_cache_folder(base: dict) -> Path | None:
    hub_id = base.get("hub_id")
    if not isinstance(hub_id, str) or hub_id.count("/") != 1:
        return None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:  # not in this machine's Hugging Face cache
        return None
