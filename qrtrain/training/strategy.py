"""Optimizer parameter groups for the training strategy, and the optimizer of training.optim over them.

    qrtrain train strategy=finetune strategy.layer_decay=0.8
    qrtrain train training.optim=adamw_8bit strategy=finetune   # bitsandbytes' 8-bit AdamW, per-layer rates kept

strategy=standard: one group at training.learning_rate.
strategy=finetune: layer-wise learning-rate decay. Layer i of L gets lr * decay**(L-1-i);
embeddings get lr * decay**L (below the first layer), the output head and anything
outside the layers gets lr.

training.optim is one of the Trainer's optimizer names (conf/train.yaml; the list qrtrain takes is
qrtrain.config.OPTIMIZERS): the class and its settings come from the Trainer's own
`get_optimizer_cls_and_kwargs`, the parameter groups from here, so every optimizer keeps the
strategy's per-layer learning rates.
"""

import re

LAYER_RE = re.compile(r"\.layers\.(\d+)\.")


def layer_learning_rate(name: str, num_layers: int, lr: float, decay: float) -> float:
    if match := LAYER_RE.search(name):
        return lr * decay ** (num_layers - 1 - int(match.group(1)))
    if "embed_tokens" in name or "wte" in name or "embed_positions" in name:
        return lr * decay**num_layers
    return lr


def optimizer_groups(model, cfg) -> list[dict]:
    """AdamW parameter groups, one per distinct learning rate, trainable parameters only."""
    lr = cfg.training.learning_rate
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    decay = cfg.strategy.layer_decay
    if decay is None:
        return [{"params": [p for _, p in trainable], "lr": lr, "weight_decay": cfg.training.weight_decay}]
    num_layers = model.config.get_text_config().num_hidden_layers
    groups: dict[float, dict] = {}
    for name, p in trainable:
        group_lr = layer_learning_rate(name, num_layers, lr, decay)
        group = groups.setdefault(group_lr, {"params": [], "names": [], "lr": group_lr, "weight_decay": cfg.training.weight_decay})
        group["params"].append(p)
        group["names"].append(name)
    return sorted(groups.values(), key=lambda g: g["lr"])


def build_optimizer(model, cfg, args):
    """training.optim over `optimizer_groups`, built as the Trainer builds it from its TrainingArguments `args`
    (betas, epsilon, optim_args): `Trainer.get_optimizer_cls_and_kwargs(args, model)`."""
    from transformers import Trainer

    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    groups = [{k: v for k, v in g.items() if k != "names"} for g in optimizer_groups(model, cfg)]
    return optimizer_cls(groups, **kwargs)


def check_optimizer_device(name: str, device: str) -> None:
    """Paged optimizers page their state between GPU and CPU memory: on CPU, bitsandbytes runs the unpaged
    optimizer instead (with a warning), so qrtrain refuses them there rather than train with something else."""
    from qrtrain.errors import QrtrainError

    if name.startswith("paged_") and device != "cuda":
        unpaged = {"paged_adamw_32bit": "adamw_torch", "paged_ademamix_32bit": "ademamix"}.get(
            name, name.removeprefix("paged_"))
        raise QrtrainError(f"training.optim={name}: paged optimizers need CUDA (they page GPU memory; on {device} "
                           f"bitsandbytes would run the unpaged one instead); use training.optim={unpaged} here")
