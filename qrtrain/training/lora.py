"""LoRA: the PEFT config, the check that only LoRA parameters train, and a digest of the frozen base.

    qrtrain train model=tiny lora.r=8 lora.alpha=16 lora.target_modules=[q_proj,v_proj]
"""

import hashlib

from qrtrain.errors import QrtrainError


def lora_config(cfg):
    from omegaconf import OmegaConf
    from peft import LoraConfig

    targets = cfg.lora.target_modules
    frozen_vision = cfg.model_type.name == "multimodal" and not cfg.model_type.get("train_vision_tower", False)
    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=targets if isinstance(targets, str) else OmegaConf.to_container(targets),
        exclude_modules=VISION_MODULES if frozen_vision else None,
        task_type="CAUSAL_LM",
    )


def add_lora(model, cfg):
    """PEFT's get_peft_model with qrtrain's LoraConfig; target modules that name nothing are bad input."""
    import torch
    from peft import get_peft_model
    from peft.utils.error import NoMatchingPeftModuleError

    try:
        return get_peft_model(model, lora_config(cfg))
    except NoMatchingPeftModuleError:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear) or "Linear" in type(module).__name__})
        raise QrtrainError(f"lora.target_modules={cfg.lora.target_modules}: no module of this model has that name; "
                           f"its linear layers are {', '.join(linear[:12])}; name some of them, e.g. "
                           "[q_proj,v_proj], or use all-linear") from None


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
