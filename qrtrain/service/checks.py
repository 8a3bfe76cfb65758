"""What the service accepts: overrides composed and checked as the CLI would, paths confined to the
configured roots, names that are names. A refusal is a QrtrainError whose message the API returns (422).

    qrtrain serve --data-root ./data        # data.train / data.eval / model.path must lie under ./data
"""

import re
from pathlib import Path

from qrtrain.errors import QrtrainError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
VERSION_RE = re.compile(r"v[1-9][0-9]{0,8}")
RESERVED = ("hydra", "+hydra", "~", "-", "artifact.root", "output_dir")  # the service decides where jobs write
PATH_KEYS = ("data.train", "data.eval", "model.path", "evaluation.questions")


def check_name(name: str, what: str = "artifact name") -> str:
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise QrtrainError(f"{what} {name[:80]!r}: expected letters, digits, '.', '_' or '-' (no '/', no '..')")
    return name


def check_version(version: str) -> str:
    if not VERSION_RE.fullmatch(version):
        raise QrtrainError(f"version {version[:80]!r}: expected v<N>, e.g. v3")
    return version


def confined(value: str, key: str, roots: list[Path]) -> Path:
    """The path, resolved (symlinks followed), if it lies under one of the roots; else a refusal. A relative
    path is taken from the first root (the first --data-root)."""
    path = Path(value)
    if ".." in path.parts:
        raise QrtrainError(f"{key}={value}: '..' is not allowed in paths sent to the service")
    resolved = (path if path.is_absolute() else roots[0] / path).resolve()
    if any(resolved == root or root in resolved.parents for root in roots):
        return resolved
    raise QrtrainError(f"{key}={value}: outside the service's data roots ({', '.join(map(str, roots))}); "
                       "put the file under one of them, or start the service with --data-root")


def check_overrides(overrides: list, config_name: str, roots: list[Path]) -> list[str]:
    """The overrides with confined, absolute paths; composed and checked like the CLI does."""
    from qrtrain.config import check_config, compose
    from qrtrain.training.run import check_override_syntax

    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise QrtrainError("overrides: expected a list of key=value strings, e.g. [\"model=tiny\"]")
    if len(overrides) > 100:
        raise QrtrainError(f"overrides: {len(overrides)} given, at most 100")
    for token in overrides:
        if token.startswith(RESERVED):
            raise QrtrainError(f"override {token!r}: the service sets where jobs write and how Hydra runs; "
                               "leave out hydra.*, artifact.root, output_dir and flags")
        if "=" not in token:
            raise QrtrainError(f"override {token!r}: expected key=value")
    check_override_syntax(overrides)
    cfg = compose(overrides, config_name=config_name)
    if config_name == "train":
        check_config(cfg)
    checked = []
    for token in overrides:
        key, value = token.split("=", 1)
        if key.lstrip("+") in PATH_KEYS and value not in ("null", ""):
            values = [v.strip() for v in value.strip("[]").split(",")] if value.startswith("[") else [value]
            paths = [str(confined(v, key, roots)) for v in values if v]
            token = f"{key}=[{','.join(paths)}]" if value.startswith("[") else f"{key}={paths[0]}"
        checked.append(token)
    return checked
