"""Process and device memory, CPU/GPU utilisation and real tokens per second, in every log.

    qrtrain train extensions=[resource_monitor]

Adds `resource/*` entries to the Trainer's logs, so they reach metrics.jsonl and TensorBoard.
"""

import time

import psutil
import torch
from transformers import TrainerCallback


class ResourceMonitor(TrainerCallback):
    def __init__(self):
        self.process = psutil.Process()
        self.last = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.process.cpu_percent(None)
        self.last = (time.perf_counter(), 0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        logs["resource/process_rss_mb"] = self.process.memory_info().rss / 2**20
        logs["resource/cpu_percent"] = self.process.cpu_percent(None)
        if torch.cuda.is_available():
            logs["resource/gpu_memory_allocated_mb"] = torch.cuda.memory_allocated() / 2**20
            logs["resource/gpu_max_memory_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
            try:
                logs["resource/gpu_utilization_percent"] = torch.cuda.utilization()
            except Exception:  # needs pynvml; utilisation is then not reported
                pass
        if "num_tokens" in logs and self.last is not None:
            now = time.perf_counter()
            logs["resource/tokens_per_s"] = (logs["num_tokens"] - self.last[1]) / max(now - self.last[0], 1e-9)
            self.last = (now, logs["num_tokens"])
