"""GrokFast (Lee et al. 2024): amplify the slow component of the gradients.

    qrtrain train extensions=[grokfast] extensions.grokfast.alpha=0.98 extensions.grokfast.lamb=2.0

For each trainable parameter, after gradients (and clipping), before the optimizer step:
ema <- alpha * ema + (1 - alpha) * g (ema starts at the first g), then g <- g + lamb * ema.
"""

from transformers import TrainerCallback


class GrokFast(TrainerCallback):
    def __init__(self, alpha: float = 0.98, lamb: float = 2.0):
        self.alpha, self.lamb = alpha, lamb
        self.ema: dict = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and parameter.grad is not None:
                grad = parameter.grad.detach()
                if name in self.ema:
                    self.ema[name] = self.ema[name].to(grad.device) * self.alpha + grad * (1 - self.alpha)
                else:
                    self.ema[name] = grad.clone()
                parameter.grad.add_(self.ema[name], alpha=self.lamb)

    def state_dict(self) -> dict:
        return dict(self.ema)

    def load_state_dict(self, state: dict) -> None:
        self.ema = dict(state)
