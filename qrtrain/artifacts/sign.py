"""`qrtrain sign`: sign a version that verifies (the format and the checks: qrtrain/artifacts/signing.py).

    qrtrain sign outputs/NAME/v1 --key key.pem
    qrtrain sign NAME/v1 --key leaf.key --certificate leaf.crt --certificate-chain ca.crt
"""

from pathlib import Path

from qrtrain.artifacts.lineage import find_version
from qrtrain.artifacts.signing import SIGNATURE_NAME, SignWith, check_sign_with, sign_folder
from qrtrain.artifacts.verify import verify_version
from qrtrain.errors import QrtrainError


def sign(target: Path, root: Path, sign_with: SignWith) -> Path:
    """`qrtrain sign`: a version that verifies is signed; one that does not is refused (exit 1)."""
    check_sign_with(sign_with)
    folder = find_version(str(target), Path(root)) if not Path(target).is_dir() else Path(target)
    if folder is None or not (folder / "checksums.json").is_file():
        raise QrtrainError(f"{target}: no such version under {root} (nor a version folder); `qrtrain list` shows "
                           "the versions")
    result = verify_version(folder)
    if not result["verified"]:
        listed = "; ".join(f"{p['file']}: {p['message']}" for p in result["problems"][:5])
        raise QrtrainError(f"{folder} fails verification, so it is not signed ({listed})", exit_code=1)
    replaced = (folder / SIGNATURE_NAME).exists()
    path = sign_folder(folder, sign_with)
    from qrtrain.terminal import say

    say(f"signed {folder} with {sign_with.describe()}" + (" (the earlier signature replaced)" if replaced else "")
        + f"; check it with: qrtrain verify {folder} --key PUBLIC_KEY --require-signature")
    return path
