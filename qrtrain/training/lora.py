"""LoRA: the PEFT config (with PEFT's variants: DoRA, rsLoRA, and its initialisations), the check that only
LoRA parameters train, and a digest of the frozen base.

    qrtrain train model=tiny lora.r=8 lora.alpha=16 lora.target_modules=[q_proj,v_proj]
    qrtrain train model=tiny lora.use_dora=true lora.use_rslora=true lora.init=pissa

lora.init: `default` (PEFT's: Kaiming-uniform A, zero B), `gaussian`, `pissa` and `olora` (the adapter starts
as the base's principal / QR part, which is taken out of the base in memory; the published adapter is
converted by PEFT into a plain LoRA of rank 2r over the original base), `eva` (data-driven: SVD of the
layers' inputs on a few training batches) and `loftq` (with an nf4 base: A and B start as the quantization
error's low-rank part). All are PEFT's own implementations.
"""

import hashlib
from pathlib import Path

from qrtrain.config import LORA_INITS
from qrtrain.errors import QrtrainError


INITS = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora", "eva": "eva", "loftq": True}
assert tuple(INITS) == LORA_INITS  # the config check's list (qrtrain/config.py)
CONVERTED_INITS = ("pissa", "olora")  # they change the base in memory: the published adapter is converted
EVA_BATCHES = 4


def lora_init(cfg) -> str:
    return cfg.lora.get("init") or "default"


def lora_config(cfg):
    from omegaconf import OmegaConf
    from peft import EvaConfig, LoraConfig

    targets = cfg.lora.target_modules
    frozen_vision = cfg.model_type.name == "multimodal" and not cfg.model_type.get("train_vision_tower", False)
    init = lora_init(cfg)
    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=targets if isinstance(targets, str) else OmegaConf.to_container(targets),
        exclude_modules=VISION_MODULES if frozen_vision else None,
        task_type="CAUSAL_LM",
        use_dora=bool(cfg.lora.get("use_dora", False)),
        use_rslora=bool(cfg.lora.get("use_rslora", False)),
        init_lora_weights=INITS[init],
        eva_config=EvaConfig(rho=float(cfg.lora.get("eva_rho") or 2.0)) if init == "eva" else None,
    )


def add_lora(model, cfg, base_folder=None, eva_batches=None):
    """PEFT's get_peft_model with qrtrain's LoraConfig, then the data- or quantization-driven initialisations
    (eva, loftq); target modules that name nothing are bad input."""
    import torch
    from peft import get_peft_model
    from peft.utils.error import NoMatchingPeftModuleError

    init = lora_init(cfg)
    try:
        model = get_peft_model(model, lora_config(cfg), low_cpu_mem_usage=init == "eva")
    except NoMatchingPeftModuleError:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear) or "Linear" in type(module).__name__})
        raise QrtrainError(f"lora.target_modules={cfg.lora.target_modules}: no module of this model has that name; "
                           f"its linear layers are {', '.join(linear[:12])}; name some of them, e.g. "
                           "[q_proj,v_proj], or use all-linear") from None
    if init == "eva":
        from peft import initialize_lora_eva_weights

        initialize_lora_eva_weights(model, dataloader=eva_batches, show_progress_bar=False)
    elif init == "loftq":
        from peft import replace_lora_weights_loftq

        if not torch.cuda.is_available():
            raise QrtrainError("lora.init=loftq: PEFT's LoftQ computes its initialisation on a CUDA GPU, and there is "
                               "none here; use lora.init=default with quantization=nf4 on this machine")

        weights = sorted(Path(base_folder).glob("*.safetensors"))
        if len(weights) != 1:
            raise QrtrainError(f"lora.init=loftq reads the base's full-precision weights from one safetensors file; "
                               f"{base_folder} has {len(weights)}: use lora.init=default")
        replace_lora_weights_loftq(model, model_path=str(weights[0]))
    return model


def save_initial_adapter(model, cfg, folder: Path) -> Path | None:
    """PiSSA and OLoRA: the adapter as initialised (a plain LoRA), which PEFT needs at publishing to convert
    the trained adapter into one over the original base; None for the other initialisations."""
    init = lora_init(cfg)
    if init not in CONVERTED_INITS:
        return None
    config = model.peft_config["default"]
    config.init_lora_weights = True  # saved as a plain LoRA, as PEFT's conversion expects
    try:
        model.save_pretrained(folder, selected_adapters=["default"])
    finally:
        config.init_lora_weights = INITS[init]
    return folder


def eva_batches(train_set, pad_id: int, batch_size: int, count: int = EVA_BATCHES) -> list[dict]:
    """A few padded batches of the tokenized training rows, for EVA's SVD of the layers' inputs."""
    import torch

    rows = [row["input_ids"] for row in train_set.select(range(min(len(train_set), batch_size * count)))]
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, r in enumerate(chunk):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def continue_lora(model, parent):
    """The parent version's LoRA (init_adapter), trainable. DPO and KTO copy it, frozen, into an adapter named
    `ref` that they use as the reference model (TRL 1.16's DPOTrainer/KTOTrainer given a PeftModel): the
    reference is the parent, at the cost of a second copy of the LoRA weights, not of the base."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(parent.folder), is_trainable=True)


# Module names of the vision side of common vision-language models (LLaVA, Idefics3/SmolVLM, Qwen-VL).
VISION_MODULES = r".*(vision_tower|vision_model|visual|multi_modal_projector|mm_projector|connector).*"


def check_only_lora_trainable(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; fails if anything but LoRA weights would train."""
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    others = [name for name in trainable if "lora_" not in name]
    if others:
        raise QrtrainError(f"{len(others)} non-LoRA parameters would train (e.g. {others[0]}); only LoRA weights may", exit_code=1)
    if not trainable:
        raise QrtrainError("no LoRA parameters to train: lora.target_modules matched no module of this model; "
                           "name modules it has (e.g. [q_proj,v_proj]) or use all-linear")
    total = sum(p.numel() for _, p in model.named_parameters())
    return sum(p.numel() for _, p in model.named_parameters() if p.requires_grad), total


def keep_lora_inputs_in_compute_dtype(model, dtype) -> int:
    """On a bf16/fp16 base, stop PEFT from copying every LoRA layer's input to float32 (the LoRA weights'
    dtype): the Trainer's autocast runs the LoRA matmuls in the compute dtype anyway, so the copy only costs
    memory and time. Float32 training is untouched. Returns the number of LoRA layers changed."""
    import torch

    if dtype not in (torch.bfloat16, torch.float16):
        return 0
    layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled") and hasattr(m, "lora_A")]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    return len(layers)


def frozen_digest(model) -> str:
    """sha256 over every non-LoRA parameter and buffer in memory, in name order."""
    import torch

    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        if "lora_" in name:
            continue
        tensor = state[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
