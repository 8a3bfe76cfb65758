"""From a typed request (requests.py) to the CLI arguments of a job, checked as the CLI checks them, with
every path confined to the service's roots. A refusal is a QrtrainError whose message the API returns (422).

    qrtrain serve --data-root ./data        # every path in a request must resolve under ./data or the root

The request is composed with Hydra, without any resolver that reads the environment, then the composed
and resolved config is checked: every value the schema marks as a path must resolve (symbolic links
followed) under a --data-root or the artifact root; the job is given those resolved, absolute paths.
"""

import re
from pathlib import Path

from qrtrain.errors import QrtrainError
from qrtrain.service import requests

NAME_RE = re.compile(requests.NAME_PATTERN)
VERSION_RE = re.compile(r"v[1-9][0-9]{0,8}")


def check_name(name: str, what: str = "artifact name") -> str:
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise QrtrainError(f"{what} {name[:80]!r}: expected letters, digits, '.', '_' or '-' (no '/', no '..')")
    return name


def check_version(version: str) -> str:
    if not VERSION_RE.fullmatch(version):
        raise QrtrainError(f"version {version[:80]!r}: expected v<N>, e.g. v3")
    return version


def under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def confined(value: str, key: str, roots: list[Path]) -> Path:
    """The path, resolved (symlinks followed), if it lies under one of the roots; else a refusal. A relative
    path is taken from the first root (the first --data-root)."""
    path = Path(value)
    if ".." in path.parts:
        raise QrtrainError(f"{key}={value}: '..' is not allowed in paths sent to the service")
    resolved = (path if path.is_absolute() else roots[0] / path).resolve()
    if any(under(resolved, root) for root in roots):
        return resolved
    raise QrtrainError(f"{key}={value}: outside the service's data roots ({', '.join(map(str, roots))}); "
                       "put the file under one of them, or start the service with --data-root")


def artifact_folder(root: Path, reference: str, what: str = "target") -> Path:
    """NAME or NAME/vN as a real folder under the artifact root (no symbolic link on the way)."""
    name, _, version = reference.partition("/")
    folder = root / check_name(name) / (check_version(version) if version else "")
    if folder.is_symlink() or folder.parent.is_symlink() or not folder.is_dir() or not under(folder.resolve(), root):
        raise QrtrainError(f"{what} {reference!r}: no such artifact or version under {root}")
    return folder


def refuse_environment(name, default=None):
    raise QrtrainError(f"${{oc.env:{name}}}: the service does not read environment variables for requests")


def without_environment() -> None:
    """In the service's process, `${oc.env:...}` refuses instead of reading the environment."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("oc.env", refuse_environment, replace=True)


def check_choices(request) -> None:
    """Group options are files in conf/; extensions are names with the parameters their file documents."""
    from omegaconf import OmegaConf

    from qrtrain.config import conf_dir, group_options

    for field, group in requests.TRAIN_GROUPS.items():  # compare's groups are a part of these
        value = getattr(request, field, None)
        if value is not None and value not in group_options(group):
            raise QrtrainError(f"{field}={value!r}: expected one of {', '.join(group_options(group))}")
    suite = (getattr(request, "evaluation", None) or requests.EvaluationSettings()).suite
    if suite is not None and suite not in group_options("evaluation"):
        raise QrtrainError(f"evaluation.suite={suite!r}: expected one of {', '.join(group_options('evaluation'))}")
    for name, settings in (getattr(request, "extensions", None) or {}).items():
        if name not in group_options("extensions"):
            raise QrtrainError(f"extensions.{name}: no such extension; expected one of "
                               f"{', '.join(group_options('extensions'))}")
        documented = OmegaConf.to_container(OmegaConf.load(conf_dir() / "extensions" / f"{name}.yaml")) or {}
        for key, value in settings.items():
            default = documented.get(key)
            if key.startswith("_") or key not in documented:
                known = ", ".join(k for k in documented if not k.startswith("_")) or "none"
                raise QrtrainError(f"extensions.{name}.{key}: not a parameter of {name} (its parameters: {known})")
            if not same_kind(default, value):
                raise QrtrainError(f"extensions.{name}.{key}={value!r}: expected a {type(default).__name__} "
                                   f"like its default {default!r}")


def same_kind(default, value) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return default is None or type(default) is type(value)


def composed_args(request, config_name: str, groups: dict, keys: dict, roots: list[Path]) -> tuple[list[str], object]:
    """(the job's CLI tokens, the composed config), every path field replaced by its confined absolute path."""
    from omegaconf import OmegaConf

    from qrtrain.config import compose

    check_choices(request)
    tokens = requests.overrides(request, groups, keys)
    cfg = compose(tokens, config_name=config_name)
    try:
        OmegaConf.resolve(cfg)
    except QrtrainError:
        raise
    except Exception as error:  # an interpolation in conf/ that cannot resolve: not the request's doing
        raise QrtrainError(f"config: {str(error).splitlines()[0]}") from None
    for field, _ in requests.path_fields(request):
        key = keys.get(field, field)
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue
        values = list(value) if OmegaConf.is_list(value) else [value]
        paths = [str(confined(str(v), key, roots)) for v in values]
        checked = f"{key}={requests.hydra_value(paths if OmegaConf.is_list(value) else paths[0])}"
        tokens = [checked if t.startswith(f"{key}=") else t for t in tokens]
    return tokens, cfg


def train_args(request: requests.TrainRequest, roots: list[Path]) -> list[str]:
    from qrtrain.config import check_config

    tokens, cfg = composed_args(request, "train", requests.TRAIN_GROUPS, requests.TRAIN_KEYS, roots)
    check_config(cfg)
    return tokens


def evaluate_args(request: requests.EvaluateRequest, root: Path, roots: list[Path]) -> list[str]:
    target = artifact_folder(root, request.target)
    tokens, _ = composed_args(request, "evaluate", {}, requests.EVALUATE_KEYS, roots)
    return [str(target), *tokens]


def compare_args(request: requests.CompareRequest, root: Path, roots: list[Path]) -> list[str]:
    tokens, _ = composed_args(request, "compare", requests.COMPARE_GROUPS, requests.COMPARE_KEYS, roots)
    if request.adapters:
        folders = [str(artifact_folder(root, a, "adapter")) for a in request.adapters]
        tokens = [t for t in tokens if not t.startswith("adapters=")] + [f"adapters={requests.hydra_value(folders)}"]
    return tokens
