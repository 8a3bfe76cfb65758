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
    if (target / LATEST_NAME).exists() and not (target / MANIFEST_NAME).exists():
        target = read_latest(target)
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
