"""Optimizer parameter groups for the training strategy.

    qrtrain train strategy=finetune strategy.layer_decay=0.8

strategy=standard: one group at training.learning_rate.
strategy=finetune: layer-wise learning-rate decay. Layer i of L gets lr * decay**(L-1-i);
embeddings get lr * decay**L (below the first layer), the output head and anything
outside the layers gets lr.
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


def build_optimizer(model, cfg):
    import torch

    groups = [{k: v for k, v in g.items() if k != "names"} for g in optimizer_groups(model, cfg)]
    return torch.optim.AdamW(groups, lr=cfg.training.learning_rate, weight_decay=cfg.training.weight_decay)
