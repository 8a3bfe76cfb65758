"""Generation time on a busy CPU: torch's thread count against how many other processes want the cores.

    python scripts/bench_threads.py            # make bench runs it; writes BENCHMARKS.md's `threads` section
    python scripts/bench_threads.py --quick    # one round, fewer loads

Each measurement is a fresh process that loads the default base model (SmolLM2-135M-Instruct) and
greedily answers the first 8 demo questions (32 new tokens, batch 8) through qrtrain's own generation
path, while K other processes spin on the CPU (K = 0, cores, 3 x cores: an idle machine, a second job,
a test run in parallel). Then the same for a whole `qrtrain train` command (load, 4 steps of
batch 2 x 128 tokens, publish) under 0 and `cores` spinning processes. Settings: torch's default (one
thread per core), one thread, and `threads=auto`, qrtrain's default, which leaves the cores other
runnable processes use. The last line printed is a JSON summary.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS.parent))
sys.path.insert(0, str(SCRIPTS))

SPIN = "while True: pass"
SETTINGS = {"torch default": None, "1 thread": "1", "threads=auto (qrtrain)": "auto"}


def worker(setting: str | None) -> None:
    """Load the model, warm up, then time one generation; print {seconds, threads}."""
    import torch

    from qrtrain.config import compose
    from qrtrain.models import generation
    from qrtrain.evaluation.evaluate import suite_items
    from qrtrain.models import loading as models
    from qrtrain.models.threads import set_cpu_threads

    if setting is not None:
        set_cpu_threads(setting)
    cfg = compose([], config_name="compare")
    folder = models.model_folder(cfg.model)
    model = models.load_model_for_inference(folder, torch.device("cpu"), torch.float32)
    tokenizer = models.load_chat_tokenizer(folder)
    prompts = [item["prompt"] for item in suite_items(cfg)[:8]]
    generation.generate_answers(model, tokenizer, prompts[:2], 2, 4, 0)
    began = time.perf_counter()
    generation.generate_answers(model, tokenizer, prompts, 8, 32, 0)
    print(json.dumps({"seconds": time.perf_counter() - began, "threads": torch.get_num_threads()}))


def train_seconds(setting: str | None) -> dict:
    """Wall time of one whole `qrtrain train` command with this threads setting."""
    import tempfile

    qrtrain = str(Path(sys.executable).parent / "qrtrain")
    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())} if setting is None else os.environ
    with tempfile.TemporaryDirectory() as root:
        command = [qrtrain, "train", "training.max_steps=4", "training.eval_steps=0", "training.batch_size=2",
                   "training.max_length=128", f"training.threads={setting or 'auto'}", f"artifact.root={root}"]
        began = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=1800, env=env)
        seconds = time.perf_counter() - began
        out = result.stdout
    said = (out + result.stderr).splitlines()
    threads = next((line.split(" CPU threads")[0].rsplit("(", 1)[1] for line in said if " CPU threads" in line), "?")
    return {"seconds": seconds, "threads": threads}


def measure(task: str, setting: str | None, load: int) -> dict:
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(load)]
    try:
        time.sleep(1.0 if load else 0)
        if task == "train":
            return train_seconds(setting)
        command = [sys.executable, __file__, "--worker", setting or "default"]
        out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=1800).stdout
        return json.loads(out.strip().splitlines()[-1])
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        worker(None if args.worker == "default" else int(args.worker) if args.worker.isdigit() else args.worker)
        return
    cores = os.cpu_count() or 1
    loads = [0, cores] if args.quick else [0, cores, 3 * cores]
    rounds = 1 if args.quick else 2
    report = {"cores": cores, "rounds": rounds}
    for task, task_loads in (("generate", loads), ("train", [0, cores])):
        results = report.setdefault(task, {})
        for load in task_loads:
            for name, setting in SETTINGS.items():
                runs = [measure(task, setting, load) for _ in range(rounds if task == "generate" else 1)]
                seconds = statistics.median(r["seconds"] for r in runs)
                results.setdefault(str(load), {})[name] = {"seconds": round(seconds, 1), "threads": runs[0]["threads"]}
                print(f"{task}, {load} spinning processes, {name}: {seconds:.1f} s ({runs[0]['threads']} threads)",
                      flush=True)
    from benchmarks_md import write_section

    write_section("threads", markdown(report))
    print(json.dumps(report))


def markdown(report: dict) -> str:
    lines = ["<!-- threads -->", "## Generation on a busy CPU", "",
             f"`python scripts/bench_threads.py` on {report['cores']} cores, while K other processes spin on the CPU. "
             "Generate: seconds to answer 8 demo questions (32 new tokens, batch 8, SmolLM2-135M float32), median "
             f"of {report['rounds']} fresh processes. Train: one whole `qrtrain train` command (load, 4 steps of "
             "batch 2 x 128, publish). Threads used in brackets.", ""]
    for task in ("generate", "train"):
        lines += [f"| {task}: other busy processes | " + " | ".join(SETTINGS) + " |", "|---|" + "---|" * len(SETTINGS)]
        for load, row in report[task].items():
            lines.append(f"| {load} | " + " | ".join(f"{row[n]['seconds']} s ({row[n]['threads']})" for n in SETTINGS) + " |")
        lines.append("")
    return "\n".join(lines + ["<!-- /threads -->", ""])


if __name__ == "__main__":
    main()
