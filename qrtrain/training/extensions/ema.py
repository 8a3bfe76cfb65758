"""An exponential moving average of the adapter weights, published instead of the last weights.

    qrtrain train extensions=[ema] extensions.ema.decay=0.99

After every optimizer step: avg <- decay * avg + (1 - decay) * w (avg starts at the first w).
At the end of training the trainable weights are replaced by their averages, so the
evaluation and the published adapter both use them.
"""

import torch
from transformers import TrainerCallback


class EMA(TrainerCallback):
    def __init__(self, decay: float = 0.99):
        self.decay = decay
        self.average: dict = {}

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if parameter.requires_grad:
                    value = parameter.detach()
                    if name in self.average:
                        self.average[name].mul_(self.decay).add_(value, alpha=1 - self.decay)
                    else:
                        self.average[name] = value.clone()

    def on_train_end(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in self.average:
                    parameter.copy_(self.average[name])

    def state_dict(self) -> dict:
        return dict(self.average)

    def load_state_dict(self, state: dict) -> None:
        self.average = dict(state)
