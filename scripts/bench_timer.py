"""A TrainerCallback that records when training began, when each step ended, tokens and peak memory.

Used unchanged by both sides of scripts/bench.py: as a qrtrain extension
(scripts/bench_conf/extensions/bench_timer.yaml) and inside scripts/plain_trl_sft.py.
"""

import json
import resource
import time

from transformers import TrainerCallback


class BenchTimer(TrainerCallback):
    def __init__(self, out: str):
        self.out = out
        self.began = None
        self.step_ends = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.began = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(time.time())

    def on_train_end(self, args, state, control, **kwargs):
        tokens = [h["num_tokens"] for h in state.log_history if "num_tokens" in h and "loss" in h]
        losses = [h["loss"] for h in state.log_history if "loss" in h]
        with open(self.out, "w") as f:
            json.dump({"train_began": self.began, "step_ends": self.step_ends, "num_tokens": tokens, "losses": losses,
                       "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, f)
