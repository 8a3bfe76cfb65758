"""Where the Hydra configs live, composing them, and checking a composed config.

    qrtrain train --cfg job          # the composed config
    python -c "from qrtrain.config import compose; print(compose(['model=tiny']))"
"""

import functools
import math
import re
from pathlib import Path

from qrtrain.errors import QrtrainError

PACKAGE_DIR = Path(__file__).resolve().parent


def conf_dir() -> Path:
    """The `conf/` folder: inside the installed wheel, or at the top of a source checkout."""
    for candidate in (PACKAGE_DIR / "conf", PACKAGE_DIR.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise QrtrainError(f"qrtrain's config folder is missing (looked in {PACKAGE_DIR / 'conf'} and {PACKAGE_DIR.parent / 'conf'}); reinstall qrtrain")


def group_options(group: str) -> list[str]:
    """The options of a config group: the YAML files in conf/<group>/."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def compose(overrides: list[str] | None = None, config_name: str = "train"):
    """Compose a config with Hydra's compose API (for tests and for verbs that do not sweep)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        try:
            return hydra_compose(config_name=config_name, overrides=list(overrides or []))
        except (HydraException, OmegaConfBaseException) as error:
            raise QrtrainError(f"config: {str(error).splitlines()[0]} (overrides: {' '.join(overrides or []) or 'none'})") from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_config(cfg) -> None:
    """Check a composed training config; report every problem at once as one QrtrainError."""
    problems: list[str] = []

    def need(key: str, ok: bool, expected: str) -> None:
        if not ok:
            value = _select(cfg, key)
            problems.append(f"{key}={value!r}: expected {expected}")

    t = cfg.training
    for key in ("max_steps", "batch_size", "gradient_accumulation_steps", "max_length", "logging_steps"):
        need(f"training.{key}", _is_int(t[key]) and t[key] > 0, "a whole number above 0")
    need("training.eval_steps", _is_int(t.eval_steps) and t.eval_steps >= 0, "a whole number, 0 or more")
    need("training.learning_rate", _is_number(t.learning_rate) and t.learning_rate > 0, "a number above 0, e.g. 2e-4")
    need("training.weight_decay", _is_number(t.weight_decay) and t.weight_decay >= 0, "a number, 0 or more")
    need("training.warmup_ratio", _is_number(t.warmup_ratio) and 0 <= t.warmup_ratio < 1, "a number in [0, 1)")
    need("training.lr_scheduler", t.lr_scheduler in ("cosine", "linear", "constant"), "one of cosine, linear, constant")
    need("training.dtype", t.dtype in ("auto", "float32", "bfloat16", "float16"), "one of auto, float32, bfloat16, float16")
    need("training.device", t.device in ("auto", "cpu", "cuda"), "one of auto, cpu, cuda")
    need("training.threads", t.threads == "auto" or (_is_int(t.threads) and t.threads > 0), "auto or a whole number above 0")
    need("training.packing", isinstance(t.packing, bool), "true or false")
    for key in ("gradient_checkpointing", "padding_free", "liger_kernel", "release_freed_memory"):
        need(f"training.{key}", isinstance(t[key], bool) or t[key] == "auto", "auto, true or false")
    need("training.memory_budget_gib", t.memory_budget_gib is None
         or (_is_number(t.memory_budget_gib) and t.memory_budget_gib > 0), "null or a number of GiB above 0")
    need("seed", _is_int(cfg.seed) and cfg.seed >= 0, "a whole number, 0 or more")

    lora = cfg.lora
    need("lora.r", _is_int(lora.r) and lora.r > 0, "a whole number above 0, e.g. 16")
    need("lora.alpha", _is_number(lora.alpha) and lora.alpha > 0, "a number above 0, e.g. 32")
    need("lora.dropout", _is_number(lora.dropout) and 0 <= lora.dropout < 1, "a number in [0, 1)")
    targets = lora.target_modules
    need("lora.target_modules", isinstance(targets, str) and targets != ""
         or (_is_list(targets) and len(targets) > 0 and all(isinstance(x, str) and x for x in targets)),
         "all-linear or a list of module names, e.g. [q_proj,v_proj]")

    problems += method_problems(cfg)
    problems += optimizer_problems(t.optim)
    problems += lora_problems(cfg)
    problems += tracking_problems(cfg)

    decay = cfg.strategy.layer_decay
    need("strategy.layer_decay", decay is None or (_is_number(decay) and 0 < decay <= 1), "null or a number in (0, 1]")

    data = cfg.data
    need("data.eval_fraction", _is_number(data.eval_fraction) and 0 <= data.eval_fraction < 1, "a number in [0, 1)")
    need("data.eval_max_examples", _is_int(data.eval_max_examples) and data.eval_max_examples > 0, "a whole number above 0")
    need("data.train", data.train is None or (isinstance(data.train, str) and data.train != "")
         or (_is_list(data.train) and len(data.train) > 0 and all(isinstance(x, str) and x for x in data.train)),
         "a path or a non-empty list of paths (null, the default, trains on the shipped demo)")
    sources = train_sources(cfg)
    if data.weights is not None:
        weights = data.weights
        need("data.weights", _is_list(weights) and len(weights) == len(sources)
             and all(_is_number(w) and 0 < w < math.inf for w in weights),
             f"null or a list of {len(sources)} positive, finite numbers, one per data.train source")
    need("artifact.name", isinstance(cfg.artifact.name, str) and len(cfg.artifact.name) <= 100
         and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cfg.artifact.name) is not None,
         "a name of at most 100 letters, digits, '.', '_' and '-', e.g. my-adapter")
    ck = cfg.checkpoint
    need("checkpoint.every_steps", _is_int(ck.every_steps) and ck.every_steps >= 0, "a whole number, 0 or more")
    need("checkpoint.keep_last", _is_int(ck.keep_last) and ck.keep_last >= 1, "a whole number, 1 or more")
    need("checkpoint.greater_is_better", isinstance(ck.greater_is_better, bool), "true or false")
    need("resume", isinstance(cfg.resume, str) and cfg.resume != "", "auto, never or a checkpoint folder")
    need("artifact.root", isinstance(cfg.artifact.root, str) and cfg.artifact.root != "", "a folder path")
    if cfg.artifact.get("sign_certificate") and not cfg.artifact.get("sign_key"):
        problems.append(f"artifact.sign_certificate={cfg.artifact.sign_certificate!r}: needs artifact.sign_key, the "
                        "private key of that certificate")

    problems += unknown_keys(cfg)
    if problems:
        raise QrtrainError("invalid config:\n  " + "\n  ".join(problems) + "\nfix these overrides (qrtrain train --help lists the keys)")


DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")  # TRL 1.16's DPOConfig


def method_problems(cfg) -> list[str]:
    """What is wrong with the method's settings (conf/method/) and with what it is combined with."""
    m, problems = cfg.method, []

    def need(key: str, ok: bool, expected: str) -> None:
        if not ok:
            problems.append(f"{key}={_select(cfg, key)!r}: expected {expected}")

    need("init_adapter", cfg.init_adapter is None or (isinstance(cfg.init_adapter, str) and cfg.init_adapter != ""),
         "null or a version: NAME/vN, NAME (its latest) or a version folder")
    if m.name == "sft":
        return problems
    need("method.beta", _is_number(m.beta) and m.beta > 0, "a number above 0, e.g. 0.1")
    if cfg.model_type.name == "multimodal":
        problems.append(f"method={m.name} with model_type=multimodal: preference tuning takes text (dialogue or "
                        "standard); use method=sft for images")
    if cfg.training.packing is True:
        problems.append(f"training.packing=true with method={m.name}: preference pairs are not packed; "
                        "set training.packing=false")
    if cfg.training.padding_free is True:
        problems.append(f"training.padding_free=true with method={m.name}: TRL's preference trainers pad their "
                        "batches (TRL 1.16); use training.padding_free=auto")
    if m.name == "dpo":
        losses = [m.loss_type] if isinstance(m.loss_type, str) else list(m.loss_type or [])
        need("method.loss_type", bool(losses) and all(x in DPO_LOSSES for x in losses),
             f"one of {', '.join(DPO_LOSSES)}, or a list of them")
        need("method.loss_weights", m.loss_weights is None or (_is_list(m.loss_weights) and len(m.loss_weights)
             == len(losses) and all(_is_number(w) and w >= 0 for w in m.loss_weights)),
             f"null or {len(losses)} numbers, one per method.loss_type")
        need("method.label_smoothing", _is_number(m.label_smoothing) and 0 <= m.label_smoothing < 0.5,
             "a number in [0, 0.5)")
    if m.name == "kto":
        need("method.loss_type", m.loss_type in ("kto", "apo_zero_unpaired"), "kto or apo_zero_unpaired")
        for key in ("desirable_weight", "undesirable_weight"):
            need(f"method.{key}", _is_number(m[key]) and m[key] > 0, "a number above 0")
    if m.name == "simpo":
        need("method.gamma", _is_number(m.gamma) and m.gamma >= 0, "a number, 0 or more, e.g. 0.5")
        need("method.cpo_alpha", _is_number(m.cpo_alpha) and m.cpo_alpha >= 0, "a number, 0 or more")
        need("method.label_smoothing", _is_number(m.label_smoothing) and 0 <= m.label_smoothing < 0.5,
             "a number in [0, 0.5)")
    return problems


# transformers 5.24's OptimizerNames (tests/training/test_optimizers.py holds these lists to it). qrtrain builds the
# optimizer through the Trainer's get_optimizer_cls_and_kwargs over its own parameter groups (strategy.py).
LORA_INITS = ("default", "gaussian", "pissa", "olora", "eva", "loftq")  # lora.init: PEFT's initialisations


def lora_problems(cfg) -> list[str]:
    """LoRA settings that cannot work together (qrtrain/training/lora.py applies them)."""
    init = cfg.lora.get("init") or "default"
    quantization = cfg.quantization.name
    problems = []
    for key in ("use_dora", "use_rslora"):
        if not isinstance(cfg.lora.get(key, False), bool):
            problems.append(f"lora.{key}={cfg.lora.get(key)!r}: expected true or false")
    if init not in LORA_INITS:
        problems.append(f"lora.init={init}: expected one of {', '.join(LORA_INITS)}")
    elif init == "loftq" and quantization != "nf4":
        problems.append("lora.init=loftq: LoftQ starts A and B from a quantized base's error; use it with "
                        "quantization=nf4 (or choose lora.init=default)")
    elif init in ("pissa", "olora", "eva") and quantization != "none":
        problems.append(f"lora.init={init} needs full-precision base weights (quantization=none); with "
                        f"quantization={quantization} use loftq or default")
    if init in ("eva", "loftq") and cfg.model_type.name == "multimodal":
        problems.append(f"lora.init={init}: not for multimodal models; use default, gaussian, pissa or olora")
    if init != "default" and cfg.get("init_adapter"):
        problems.append(f"lora.init={init} with init_adapter: a continued adapter keeps its parent's weights; "
                        "leave lora.init out")
    return problems


OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop",
              # bitsandbytes (a dependency): 8-bit state on CPU and CUDA; the paged ones need CUDA
              "adamw_8bit", "adamw_bnb_8bit", "ademamix", "ademamix_8bit", "lion_8bit", "lion_32bit", "rmsprop_bnb",
              "rmsprop_bnb_8bit", "rmsprop_bnb_32bit", "paged_adamw_8bit", "paged_adamw_32bit", "paged_ademamix_8bit",
              "paged_ademamix_32bit", "paged_lion_8bit", "paged_lion_32bit",
              # their own packages, not installed with qrtrain
              "adamw_torch_4bit", "adamw_torch_8bit", "schedule_free_adamw", "schedule_free_radam", "schedule_free_sgd",
              "grokadamw", "stable_adamw")
OPTIMIZER_PACKAGES = {  # name: (module, pip package)
    "adamw_torch_4bit": ("torchao", "torchao"), "adamw_torch_8bit": ("torchao", "torchao"),
    "schedule_free_adamw": ("schedulefree", "schedulefree"), "schedule_free_radam": ("schedulefree", "schedulefree"),
    "schedule_free_sgd": ("schedulefree", "schedulefree"), "grokadamw": ("grokadamw", "grokadamw"),
    "stable_adamw": ("optimi", "torch-optimi"),
}
OPTIMIZERS_NOT_TAKEN = {  # the Trainer has them; qrtrain's LoRA training cannot use them, for these reasons
    **dict.fromkeys(("galore_adamw", "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise",
                     "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise", "apollo_adamw",
                     "apollo_adamw_layerwise"),
                    "it projects the gradients of the base's linear weights, which LoRA keeps frozen"),
    **dict.fromkeys(("lomo", "adalomo"), "it updates weights inside the backward pass and takes no parameter groups "
                                         "(strategy=finetune's per-layer learning rates)"),
    "adamw_torch_xla": "it needs a TPU (torch_xla)",
    "adamw_torch_npu_fused": "it needs an Ascend NPU (torch_npu)",
    "adamw_anyprecision": "it needs torchdistx, which is not on PyPI",
}


def optimizer_problems(name) -> list[str]:
    """What is wrong with training.optim: an unknown name, one qrtrain cannot use, or a missing package."""
    import importlib.util

    if name in OPTIMIZERS_NOT_TAKEN:
        return [f"training.optim={name!r}: not for LoRA training with qrtrain: {OPTIMIZERS_NOT_TAKEN[name]}; "
                f"use one of {', '.join(OPTIMIZERS)}"]
    if name not in OPTIMIZERS:
        return [f"training.optim={name!r}: expected one of {', '.join(OPTIMIZERS)}"]
    module, package = OPTIMIZER_PACKAGES.get(name, (None, None))
    if module is not None and importlib.util.find_spec(module) is None:
        return [f"training.optim={name}: needs the {package} package: pip install {package}"]
    return []


# tracking=[...] (conf/tracking/): the Python module each tracker needs, and the pip package that brings it
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny"),
            "wandb": ("wandb", "wandb"), "trackio": ("trackio", "trackio")}


def tracker_installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def tracking_problems(cfg) -> list[str]:
    """Trackers whose package is missing, and W&B modes that are not offline or online."""
    problems = []
    for name, node in (cfg.get("tracking") or {}).items():
        if name not in TRACKERS:
            problems.append(f"tracking.{name}: not a tracker qrtrain knows; expected some of {', '.join(TRACKERS)}")
            continue
        module, package = TRACKERS[name]
        if not tracker_installed(module):
            problems.append(f"tracking={name}: the {package} package is not installed: pip install {package} (or "
                            f"pip install 'qrtrain[track]'), or leave {name} out of tracking=[...]")
        if name == "wandb" and node.mode not in ("offline", "online"):
            problems.append(f"tracking.wandb.mode={node.mode!r}: expected offline or online")
    return problems


GROUPS = ("model", "model_type", "method", "strategy", "quantization")
MULTI_GROUPS = ("tracking",)  # several options at once, each under its own key: tracking.mlflow.experiment
OPEN_SECTIONS = ("extensions", "hydra")  # extensions take user config folders; hydra is Hydra's


@functools.lru_cache(maxsize=1)
def known_keys() -> frozenset[str]:
    """Every dotted key a training config may hold: conf/train.yaml's, and each group's (the union of its
    options' keys)."""
    from omegaconf import OmegaConf

    def flatten(node, prefix: str) -> set[str]:
        keys = set()
        for key, value in (node or {}).items():
            keys.add(prefix + str(key))
            if isinstance(value, dict):
                keys |= flatten(value, f"{prefix}{key}.")
        return keys

    reference = OmegaConf.to_container(OmegaConf.load(conf_dir() / "train.yaml"), resolve=False)
    reference.pop("defaults", None)
    keys = flatten(reference, "") | set(GROUPS) | set(MULTI_GROUPS) | set(OPEN_SECTIONS)
    for group in GROUPS + MULTI_GROUPS:
        for option in group_options(group):
            node = OmegaConf.to_container(OmegaConf.load(conf_dir() / group / f"{option}.yaml"), resolve=False)
            prefix = f"{group}.{option}." if group in MULTI_GROUPS else f"{group}."
            keys |= flatten(node, prefix) | ({prefix[:-1]} if group in MULTI_GROUPS else set())
    return frozenset(keys)


def unknown_key_problem(key: str, known: set[str]) -> str | None:
    """"KEY: not a qrtrain setting; did you mean training.max_steps?" for a key qrtrain does not have."""
    import difflib

    if key in known or re.split(r"[./]", key)[0] in OPEN_SECTIONS:  # hydra/launcher is a group of Hydra's
        return None
    same_depth = sorted(k for k in known if k.count(".") == key.count("."))
    close = difflib.get_close_matches(key, same_depth, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else " (qrtrain train --cfg job shows every key)"
    return f"{key}: not a qrtrain setting{hint}"


def unknown_override_keys(overrides: list[str]) -> list[str]:
    """The overrides whose key is no qrtrain setting, with or without Hydra's `+` (a typo would otherwise be
    refused in Hydra's words, which suggest adding it with `+`, or be added and silently ignored)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    known, problems = known_keys(), []
    parser = OverridesParser.create()
    for token in overrides:
        if token.startswith("-") or "=" not in token:
            continue
        try:
            override = parser.parse_overrides([token])[0]
        except HydraException:
            continue  # a syntax error: reported as one by the caller
        if override.is_delete():
            continue
        problem = unknown_key_problem(override.key_or_group.split("@")[0], known)
        if problem:
            problems.append(problem)
    return problems


def unknown_keys(cfg) -> list[str]:
    """Keys of a composed config that qrtrain does not have, at any level (added with `+`, or by a sweep)."""
    from omegaconf import OmegaConf

    known = known_keys()
    found = []

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            dotted = prefix + str(key)
            problem = unknown_key_problem(dotted, known)
            if problem:
                found.append(problem)
            elif isinstance(value, dict) and dotted.split(".")[0] not in OPEN_SECTIONS:
                walk(value, dotted + ".")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return found


def name_for_data(cfg) -> None:
    """The default artifact name keeps data apart: with data.train set and artifact.name left at its default
    (`<model>-<model_type>`, the demo's), a run publishes to `<model>-<data file stem>-<model_type>`, so a new
    file never becomes the next version of the demo's artifact (or of another file's)."""
    from omegaconf import OmegaConf, open_dict

    sources = train_sources(cfg)
    if not sources or not OmegaConf.is_interpolation(cfg.artifact, "name"):
        return
    stem = re.sub(r"[^a-z0-9._-]+", "-", Path(sources[0]).stem.lower()).strip("-.") or "data"
    stem = stem[:40] + (f"-and-{len(sources) - 1}-more" if len(sources) > 1 else "")
    with open_dict(cfg):
        cfg.artifact.name = f"{cfg.model.name}-{stem}-{cfg.model_type.name}{cfg.method.suffix}"[:100].rstrip("-.")


def demo_option(cfg):
    """Where the shipped demo data of this run is named: the method's pairs for preference tuning, else the
    model type's examples (demo_train, demo_eval)."""
    return cfg.method if cfg.method.name != "sft" else cfg.model_type


def train_sources(cfg) -> list[str]:
    """data.train as a list of paths ([] means the shipped demo)."""
    value = cfg.data.train
    if value is None:
        return []
    return [str(value)] if not _is_list(value) else [str(v) for v in value]


def _is_list(value) -> bool:
    from omegaconf import ListConfig

    return isinstance(value, (list, tuple, ListConfig))


def _select(cfg, key: str):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key)
