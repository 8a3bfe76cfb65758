"""Training extensions: `transformers.TrainerCallback`s named by `_target_` in conf/extensions/*.yaml.

    qrtrain train extensions=[grokfast,ema]
    qrtrain train --config-dir my_conf extensions=[my_extension]     # your own, no change to qrtrain

Hook points are the Trainer's: on_train_begin/end, on_step_begin, on_pre_optimizer_step (after
gradients and clipping, before the optimizer step), on_step_end, on_evaluate, on_save, on_log.
An extension with state defines `state_dict()` (tensors and numbers) and `load_state_dict(state)`:
qrtrain saves it in every checkpoint and restores it on resume (the "save" and "load" points).
"""

import json
from pathlib import Path

STATE_FOLDER = "extensions"


def build_extensions(cfg) -> dict:
    """{name: callback} for every selected extension, instantiated from its config node."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from qrtrain.errors import QrtrainError

    built = {}
    for name, node in (cfg.get("extensions") or {}).items():
        if not OmegaConf.is_dict(node) or "_target_" not in node:
            raise QrtrainError(f"extensions.{name}: expected a config with `_target_` (a TrainerCallback class)")
        try:
            built[name] = instantiate(node)
        except Exception as error:
            raise QrtrainError(f"extensions.{name}: cannot build {node._target_} ({str(error).splitlines()[0]})") from None
    return built


def save_states(extensions: dict, checkpoint: Path) -> None:
    """Write each stateful extension's state: tensors to safetensors, everything else to JSON."""
    from safetensors.torch import save_file

    folder = Path(checkpoint) / STATE_FOLDER
    for name, extension in extensions.items():
        if not hasattr(extension, "state_dict"):
            continue
        folder.mkdir(exist_ok=True)
        state = extension.state_dict()
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items() if hasattr(v, "detach")}
        plain = {k: v for k, v in state.items() if k not in tensors}
        save_file(tensors, folder / f"{name}.safetensors")
        (folder / f"{name}.json").write_text(json.dumps(plain))


def load_states(extensions: dict, checkpoint: Path, device: str = "cpu") -> None:
    """Restore each stateful extension's state from a checkpoint, its tensors on the model's device."""
    from safetensors.torch import load_file

    folder = Path(checkpoint) / STATE_FOLDER
    for name, extension in extensions.items():
        if hasattr(extension, "load_state_dict") and (folder / f"{name}.json").is_file():
            state = json.loads((folder / f"{name}.json").read_text())
            state.update(load_file(folder / f"{name}.safetensors", device=device))
            extension.load_state_dict(state)


def describe(cfg) -> dict:
    """The selected extensions and their parameters, for metadata.json."""
    from omegaconf import OmegaConf

    selected = cfg.get("extensions")
    return OmegaConf.to_container(selected, resolve=True) if selected else {}
