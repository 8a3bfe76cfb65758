"""NEFTune (Jain et al. 2023): uniform noise on the input embeddings, in training mode only.

    qrtrain train extensions=[neftune] extensions.neftune.alpha=5

Uses transformers' own hook: noise ~ U(-1, 1) * alpha / sqrt(sequence length * hidden size).
"""

from transformers import TrainerCallback
from transformers.integrations.neftune import neftune_post_forward_hook


class NEFTune(TrainerCallback):
    def __init__(self, alpha: float = 5.0):
        self.alpha = alpha
        self.handle = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        embeddings = model.get_input_embeddings()
        embeddings.neftune_noise_alpha = self.alpha
        self.handle = embeddings.register_forward_hook(neftune_post_forward_hook)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
