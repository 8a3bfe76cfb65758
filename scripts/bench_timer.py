"""A TrainerCallback that records when training began, when each step ended, tokens, losses and peak memory,
and, with BENCH_PROFILE=FILE, a torch.profiler table of the top kernels over steps 6-8 (a shorter run:
its last three steps, or its only one).

Used unchanged by both sides of scripts/bench.py and scripts/bench_gpu.py: as a qrtrain extension
(scripts/bench_conf/extensions/bench_timer.yaml) and inside scripts/plain_trl_sft.py.
"""

import json
import os
import resource
import time

from transformers import TrainerCallback

PROFILE_STEPS = (5, 8)  # profile from the end of step 5 to the end of step 8


def profile_window(max_steps: int) -> tuple[int, int]:
    """(the step after which profiling starts, the step after which it stops): steps 6-8, or the last three."""
    end = min(PROFILE_STEPS[1], max_steps)
    return max(0, min(PROFILE_STEPS[0], end - 3)), end


class BenchTimer(TrainerCallback):
    def __init__(self, out: str):
        self.out = out
        self.began = None
        self.step_ends = []
        self.profiler = None

    def on_train_begin(self, args, state, control, **kwargs):
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        if os.environ.get("BENCH_PROFILE") and profile_window(state.max_steps)[0] == 0:
            self.start_profile()
        self.began = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        import torch

        if torch.cuda.is_available() and state.global_step in (1, state.max_steps):
            torch.cuda.synchronize()  # first and last step: their ends are real; between, the GPU queue runs on
        self.step_ends.append(time.time())
        profile = os.environ.get("BENCH_PROFILE")
        start, end = profile_window(state.max_steps)
        if profile and self.profiler is None and state.global_step == start:
            self.start_profile()
        elif self.profiler is not None and state.global_step >= end:
            self.write_profile(profile)

    def start_profile(self) -> None:
        import torch
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as start_profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self.profiler = start_profile(activities=activities)
        self.profiler.__enter__()

    def write_profile(self, path: str) -> None:
        import torch

        self.profiler.__exit__(None, None, None)
        sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
        with open(path, "w") as f:
            f.write(self.profiler.key_averages().table(sort_by=sort, row_limit=25))
        self.profiler = None

    def on_train_end(self, args, state, control, **kwargs):
        import torch

        if self.profiler is not None:  # stopped before the window's end
            self.write_profile(os.environ["BENCH_PROFILE"])

        tokens = [h["num_tokens"] for h in state.log_history if "num_tokens" in h and "loss" in h]
        losses = [h["loss"] for h in state.log_history if "loss" in h]
        cuda = torch.cuda.is_available()
        with open(self.out, "w") as f:
            json.dump({"train_began": self.began, "step_ends": self.step_ends, "num_tokens": tokens, "losses": losses,
                       "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                       "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                       "peak_gpu_reserved_mb": torch.cuda.max_memory_reserved() / 2**20 if cuda else None,
                       "device": torch.cuda.get_device_name(0) if cuda else "cpu"}, f)
