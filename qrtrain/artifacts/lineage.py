"""A version started from another (`init_adapter`): finding that parent, recording it, checking it.

    qrtrain train method=dpo init_adapter=smollm2-135m-instruct-dialogue/v1
    qrtrain verify outputs/smollm2-135m-instruct-dialogue-dpo/v1     # checks the recorded parent too
    qrtrain list                                                      # the `from` column

metadata.json's `parent` is {name, version, root_digest}: the root digest of the parent's manifest when
training started. `verify` checks it (`verify.check_parent`): the parent beside the version
(<artifact root>/<name>/<version>) must verify and have that root digest; a version copied alone to
another machine verifies with a note. Imports nothing heavy.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from qrtrain.artifacts.manifest import MANIFEST_NAME
from qrtrain.errors import QrtrainError
from qrtrain.files import sha256_file


@dataclass
class Parent:
    """A verified version a run continues from."""
    folder: Path
    name: str
    version: str
    root_digest: str
    metadata: dict

    def record(self) -> dict:
        return {"name": self.name, "version": self.version, "root_digest": self.root_digest}

    def label(self) -> str:
        return f"{self.name}/{self.version}"


def find_version(reference: str, root: Path) -> Path | None:
    """NAME/vN or NAME (its latest) under the artifact root, or a version folder given as an absolute or
    ./relative path."""
    from qrtrain.artifacts.versions import LATEST_NAME, read_latest

    as_folder = Path(reference).is_absolute() or reference.startswith(".")  # NAME/vN is always under the root
    for candidate in [Path(root) / reference] + ([Path(reference)] if as_folder else []):
        if (candidate / LATEST_NAME).is_file() and not (candidate / MANIFEST_NAME).exists():
            candidate = read_latest(candidate)
        if not as_folder and Path(root).resolve() not in candidate.resolve().parents:
            return None  # NAME/vN names a folder of the root, never a link out of it (as `qrtrain list` sees it)
        if (candidate / MANIFEST_NAME).is_file():
            return candidate
    return None


def resolve_parent(reference: str, root: Path) -> Parent:
    """The init_adapter version, verified; anything else is bad input (exit 2) saying what to do."""
    from qrtrain.artifacts.verify import verify_version

    folder = find_version(reference, root)
    if folder is None:
        raise QrtrainError(f"init_adapter={reference}: no such version under {root} (nor a version folder); "
                           "give NAME/vN as `qrtrain list` shows it, or a version folder as /path or ./path")
    result = verify_version(folder)
    if not result["verified"]:
        listed = "; ".join(f"{p['file']}: {p['message']}" for p in result["problems"][:5])
        raise QrtrainError(f"init_adapter={reference}: {folder} fails verification ({listed}); training does not "
                           f"start from it; see `qrtrain verify {folder}`")
    metadata = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
    if (metadata.get("package") or {}).get("format"):
        raise QrtrainError(f"init_adapter={reference}: {folder} is a package, not a trained version; "
                           "give the version it was packaged from")
    return Parent(folder, str(metadata.get("name")), str(metadata.get("version")), result["root_digest"], metadata)


def check_same_base(parent: Parent, base_folder: Path, model_type: str) -> None:
    """A LoRA continues only on the base (same file hashes) and model type it was trained with."""
    recorded = (parent.metadata.get("base_model") or {}).get("files") or {}
    differing = sorted(name for name, digest in recorded.items()
                       if not (base_folder / name).is_file() or sha256_file(base_folder / name) != digest)
    if differing:
        raise QrtrainError(f"init_adapter={parent.label()} was trained on another base: {', '.join(differing[:5])} "
                           f"differ in {base_folder}; choose the model it was trained on "
                           f"(model={parent.metadata.get('base_model', {}).get('name')})")
    if parent.metadata.get("model_type") != model_type:
        raise QrtrainError(f"init_adapter={parent.label()} was trained with model_type="
                           f"{parent.metadata.get('model_type')}; continue it with the same model_type "
                           f"(model_type={parent.metadata.get('model_type')})")
