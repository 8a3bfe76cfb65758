"""qrtrain against a plain TRL script on one GPU, on random-weight models built from configs (no downloads).

    make bench-gpu                                     # both workloads, 2 repeats, profiles; BENCHMARKS.md GPU section
    python scripts/bench_gpu.py --workloads lora-1.7b  # one workload (each fits in ~10 minutes on an H100)
    python scripts/bench_gpu.py --smoke                # tiny dimensions, runs on CPU too: checks the benchmark itself

Workloads:
- lora-1.7b: a Llama with SmolLM2-1.7B's dimensions (hidden 2048, 24 layers, 32 heads, vocab 49,152),
  bf16, LoRA r16 on every linear layer, batch 16, max_length 2048.
- qlora-8b: a Llama with Llama-3.1-8B's dimensions (hidden 4096, 32 layers, 32 query and 8 key-value heads,
  vocab 128,256), nf4 (double-quantised) with bf16 compute, the same LoRA, batch 16, max_length 2048.

Data: 3,000 chat examples of one user turn (20-60 tokens) and one answer whose length is log-normal
(median 200 tokens, a tail capped at 1,200). A word-level tokenizer makes every word exactly one token.

Each run is its own process; the plain TRL script (scripts/plain_trl_sft.py: TRL's and PEFT's defaults)
and `qrtrain train` (its defaults) alternate, `--repeats` times, 20 steps of the same 16 examples per step,
both timed by the same callback (scripts/bench_timer.py). Reported: real tokens/s over steps 2-20 (the
GPU synchronised at the first and last step only), peak GPU memory (torch.cuda.max_memory_allocated, and
reserved), model-FLOPs utilisation, time from process start to the end of the first step, and the first
and last losses. Also a qrtrain run with training.memory_budget_gib set to the plain script's peak, and
(--profile) torch.profiler's top kernels over steps 6-8 of each side. Every finished run is appended to
--progress at once, so a killed benchmark still leaves its results.
"""

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks_md import write_section

ROOT = Path(__file__).resolve().parent.parent
SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>", "<|pad|>", "<unk>"]
ROLES = ["system", "user", "assistant"]
# Dense bf16 peak of the GPUs this runs on (tensor cores, no sparsity), for model-FLOPs utilisation.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756, "H100": 989, "H200": 989, "A100": 312, "L40S": 362, "cpu": None}

WORKLOADS = {
    "lora-1.7b": {"dims": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
                           "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 49152,
                           "tie_word_embeddings": True},
                  "quantization": "none", "batch": 16, "max_length": 2048, "steps": 20, "examples": 3000},
    "qlora-8b": {"dims": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                          "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                          "tie_word_embeddings": False},
                 "quantization": "nf4", "batch": 16, "max_length": 2048, "steps": 20, "examples": 3000},
    "smoke": {"dims": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024,
                       "tie_word_embeddings": True},
              "quantization": "none", "batch": 4, "max_length": 256, "steps": 8, "examples": 200},
}
LEARNING_RATE = 2e-4


def build_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer: w0 ... wN and the chat roles are one token each; the chat template is
    qrtrain's tiny ChatML template with {% generation %} markers, so assistant-only loss works on both sides."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIAL + ROLES
    vocab = {token: i for i, token in enumerate(words + [f"w{i}" for i in range(vocab_size - len(words))])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    template = (ROOT / "qrtrain" / "models" / "chat_templates" / "tiny.jinja").read_text(encoding="utf-8")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="<|im_end|>",
                                        pad_token="<|pad|>", unk_token="<unk>", chat_template=template)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL[:5]})
    tokenizer.save_pretrained(folder)


def build_model(folder: Path, dims: dict, device: str) -> None:
    """Random weights (seeded) from a LlamaConfig, saved as bf16 safetensors (float32 on CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer_ids = {token: i for i, token in enumerate(SPECIAL)}
    config = LlamaConfig(**dims, max_position_embeddings=4096, bos_token_id=tokenizer_ids["<|begin_of_text|>"],
                         eos_token_id=tokenizer_ids["<|im_end|>"], pad_token_id=tokenizer_ids["<|pad|>"])
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    del model


def build_data(path: Path, examples: int, vocab_size: int, seed: int = 0) -> list[int]:
    """Chat examples with long-tailed answers; returns each example's token count (template included)."""
    rng = random.Random(seed)
    words = vocab_size - len(SPECIAL) - len(ROLES)
    lengths = []
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(examples):
            question = rng.randint(20, 60)
            answer = min(1200, max(8, round(math.exp(rng.gauss(math.log(200), 0.7)))))
            text = lambda n: " ".join(f"w{rng.randrange(words)}" for _ in range(n))  # noqa: E731
            f.write(json.dumps({"messages": [{"role": "user", "content": text(question)},
                                             {"role": "assistant", "content": text(answer)}]}) + "\n")
            lengths.append(1 + 2 + question + 1 + 2 + answer + 1)  # BOS, <|im_start|> role, text, <|im_end|>
    return lengths


def prepare(name: str, work: Path, device: str) -> dict:
    """The model folder and data file of a workload, built once into the work folder."""
    spec = WORKLOADS[name]
    folder, data = work / name / "model", work / name / "train.jsonl"
    if not (folder / "model.safetensors.index.json").is_file() and not (folder / "model.safetensors").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        build_tokenizer(folder, spec["dims"]["vocab_size"])
        build_model(folder, spec["dims"], device)
    lengths = build_data(data, spec["examples"], spec["dims"]["vocab_size"])
    return {"folder": folder, "data": data, "lengths": lengths, **spec}


def command_for(side: str, workload: dict, out_dir: Path, device: str, extra: list[str]) -> list[str]:
    common = {"steps": workload["steps"], "batch": workload["batch"], "max_length": workload["max_length"]}
    if side == "plain":
        return [sys.executable, str(ROOT / "scripts" / "plain_trl_sft.py"), "--model", str(workload["folder"]),
                "--data", str(workload["data"]), "--steps", str(common["steps"]), "--batch", str(common["batch"]),
                "--max-length", str(common["max_length"]), "--learning-rate", str(LEARNING_RATE),
                *(["--nf4"] if workload["quantization"] == "nf4" else []),
                *(["--bf16"] if device == "cuda" else ["--cpu"])]
    return [sys.executable, "-m", "qrtrain", "train", "--config-dir", str(ROOT / "scripts" / "bench_conf"),
            "extensions=[bench_timer]", f"model.path={workload['folder']}", "model.name=bench",
            f"data.train={workload['data']}", "data.eval_fraction=0", f"training.max_steps={common['steps']}",
            f"training.batch_size={common['batch']}", f"training.max_length={common['max_length']}",
            f"training.learning_rate={LEARNING_RATE}", f"quantization={workload['quantization']}",
            "training.eval_steps=0", "training.logging_steps=1", "checkpoint.every_steps=0", "resume=never",
            f"training.device={device}", f"artifact.root={out_dir}/artifacts", *extra]


def run(side: str, workload: dict, device: str, extra: list[str] = (), profile: Path | None = None) -> dict:
    """One training in its own process; its timer's record turned into the reported figures."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "timer.json"
        # scripts/ (the timer) and the checkout itself, before whatever the environment already has on the path
        paths = [str(ROOT / "scripts"), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = dict(os.environ, BENCH_OUT=str(out), PYTHONPATH=os.pathsep.join(paths))
        if profile is not None:
            env["BENCH_PROFILE"] = str(profile)
        started = time.time()
        result = subprocess.run(command_for(side, workload, Path(tmp), device, list(extra)), capture_output=True,
                                text=True, env=env, cwd=tmp)
        if result.returncode != 0 or not out.is_file():
            said = [line for line in result.stderr.splitlines() if line.startswith(("error:", "qrtrain: memory"))]
            return {"failed": True, "returncode": result.returncode,
                    "reason": (said[-1] if said else (result.stderr or result.stdout).strip()[-600:]),
                    "command": " ".join(command_for(side, workload, Path(tmp), device, list(extra)))}
        record = json.loads(out.read_text())
        chosen = [line for line in result.stderr.splitlines() if "memory: estimate" in line]
    tokens, ends = record["num_tokens"], record["step_ends"]
    seconds = ends[-1] - ends[0]
    return {"tokens_per_s": (tokens[-1] - tokens[0]) / seconds, "s_per_step": seconds / (len(ends) - 1),
            "tokens_per_step": (tokens[-1] - tokens[0]) / (len(ends) - 1),
            "peak_gpu_gb": (record["peak_gpu_mb"] or 0) / 1024, "peak_gpu_reserved_gb": (record["peak_gpu_reserved_mb"] or 0) / 1024,
            "peak_rss_gb": record["max_rss_mb"] / 1024, "time_to_first_step_s": ends[0] - started,
            "first_loss": record["losses"][0], "last_loss": record["losses"][-1], "device": record["device"],
            "qrtrain_memory_plan": chosen[0].split("qrtrain: ")[-1] if chosen else None}


def model_flops_per_token(dims: dict, lengths: list[int], max_length: int, lora_r: int = 16) -> float:
    """Training FLOPs per real token, the LoRA convention: frozen matmuls forward (2N) and backward to the
    activations (2N), LoRA weights 6 per parameter, causal attention 6*L*d per layer at the example's length L
    (forward QK^T and AV at 2*L*d/2 each, backward twice that), averaged over tokens. Recomputation by
    gradient checkpointing is not counted: it is not useful work."""
    h, layers, i = dims["hidden_size"], dims["num_hidden_layers"], dims["intermediate_size"]
    head = h // dims["num_attention_heads"]
    q, kv = dims["num_attention_heads"] * head, dims["num_key_value_heads"] * head
    linears = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]
    frozen = layers * sum(a * b for a, b in linears) + h * dims["vocab_size"]
    lora = layers * sum(lora_r * (a + b) for a, b in linears)
    clipped = [min(n, max_length) for n in lengths]
    attention = 6 * layers * q * sum(n * n for n in clipped) / sum(clipped)
    return 4 * frozen + 6 * lora + attention


def peak_tflops(device: str) -> float | None:
    for name, tflops in PEAK_BF16_TFLOPS.items():
        if name in device:
            return tflops
    return None


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def benchmark(name: str, work: Path, device: str, repeats: int, profile: bool, progress: Path) -> dict:
    workload = prepare(name, work, device)
    runs = {"plain": [], "qrtrain": []}

    failures = {}

    def record(side: str, figures: dict, repeat: int) -> None:
        """Append the run to the progress file; a failed or refused run is recorded too, and left out of the figures."""
        with open(progress, "a") as f:
            f.write(json.dumps({"workload": name, "side": side, "repeat": repeat, **figures}) + "\n")
        if figures.get("failed"):
            failures.setdefault(side, []).append(figures["reason"])
            print(f"{name} {side} #{repeat}: FAILED (exit {figures['returncode']}): {figures['reason']}", flush=True)
            return
        runs.setdefault(side, []).append(figures)
        print(f"{name} {side} #{repeat}: {figures['tokens_per_s']:.0f} tok/s, {figures['peak_gpu_gb']:.1f} GB, "
              f"loss {figures['first_loss']:.3f} -> {figures['last_loss']:.3f}", flush=True)

    for repeat in range(repeats):
        for side in (("plain", "qrtrain") if repeat % 2 == 0 else ("qrtrain", "plain")):
            record(side, run(side, workload, device), repeat)
    result = {"workload": name, "dims": workload["dims"], "quantization": workload["quantization"],
              "batch": workload["batch"], "max_length": workload["max_length"], "steps": workload["steps"],
              "device": next((r[0]["device"] for r in runs.values() if r), device), "failures": failures}
    if device == "cuda" and runs["plain"]:  # qrtrain held to the plain script's memory: the speed at equal memory
        budget = statistics.median(r["peak_gpu_reserved_gb"] for r in runs["plain"])
        record("qrtrain-memory-matched", run("qrtrain", workload, device, [f"training.memory_budget_gib={budget:.2f}"]), 0)
    runs = {side: side_runs for side, side_runs in runs.items() if side_runs}
    flops = model_flops_per_token(workload["dims"], workload["lengths"], workload["max_length"])
    peak = peak_tflops(result["device"])
    for side, side_runs in runs.items():
        result[side] = {key: summary([r[key] for r in side_runs]) for key in side_runs[0]
                        if isinstance(side_runs[0][key], (int, float))}
        result[side]["memory_plan"] = side_runs[0]["qrtrain_memory_plan"]
        tps = result[side]["tokens_per_s"]["median"]
        result[side]["mfu"] = tps * flops / (peak * 1e12) if peak else None
    result["flops_per_token"] = flops
    result["peak_bf16_tflops"] = peak
    both = "plain" in result and "qrtrain" in result
    result["speedup"] = (result["qrtrain"]["tokens_per_s"]["median"] / result["plain"]["tokens_per_s"]["median"]
                         if both else None)
    result["memory_ratio"] = (result["qrtrain"]["peak_gpu_gb"]["median"] / result["plain"]["peak_gpu_gb"]["median"]
                              if both and result["plain"]["peak_gpu_gb"]["median"] else None)
    if profile:
        result["profile"] = {}
        for side in ("plain", "qrtrain"):
            table = work / f"{name}-{side}-profile.txt"
            table.unlink(missing_ok=True)
            figures = run(side, workload, device, profile=table)
            result["profile"][side] = (table.read_text().splitlines()[:16] if table.is_file()
                                       else [f"no profile: {figures.get('reason', 'the run wrote no table')}"])
    with open(progress, "a") as f:
        f.write(json.dumps({"workload": name, "result": result}) + "\n")
    return result


def markdown(results: list[dict], command: str) -> str:
    lines = ["<!-- bench-gpu -->", "## GPU: qrtrain vs a plain TRL script", "",
             f"`{command}` on {results[0]['device']} (`scripts/bench_gpu.py`; random-weight models built from "
             "configs, long-tailed chat data, each run its own process, alternating).", ""]
    for r in results:
        d = r["dims"]
        lines += [f"### {r['workload']}: hidden {d['hidden_size']}, {d['num_hidden_layers']} layers, "
                  f"{d['num_attention_heads']}/{d['num_key_value_heads']} heads, vocab {d['vocab_size']:,}, "
                  f"quantization={r['quantization']}, batch {r['batch']}, max_length {r['max_length']}, {r['steps']} steps",
                  "", "| run | real tokens/s (median, min-max) | vs plain | peak GPU memory (allocated / reserved) | "
                  "MFU | time to first step | loss first -> last |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for side in ("plain", "qrtrain", "qrtrain-memory-matched"):
            if side not in r:
                for reason in r.get("failures", {}).get(side, [])[:1]:
                    lines.append(f"| {side} | failed: {reason} | - | - | - | - | - |")
                continue
            s = r[side]
            tps = s["tokens_per_s"]
            lines.append(
                f"| {side} | {tps['median']:,.0f} ({tps['min']:,.0f}-{tps['max']:,.0f}, n={tps['n']}) | "
                f"{vs_plain(r, tps)} | "
                f"{s['peak_gpu_gb']['median']:.1f} / {s['peak_gpu_reserved_gb']['median']:.1f} GB | "
                f"{s['mfu'] * 100:.1f}% | {s['time_to_first_step_s']['median']:.0f} s | "
                f"{s['first_loss']['median']:.3f} -> {s['last_loss']['median']:.3f} |"
                if s["mfu"] is not None else
                f"| {side} | {tps['median']:,.0f} | {vs_plain(r, tps)} | - | - | "
                f"{s['time_to_first_step_s']['median']:.0f} s | {s['first_loss']['median']:.3f} -> {s['last_loss']['median']:.3f} |")
        lines += ["", f"Model FLOPs per real token: {r['flops_per_token'] / 1e9:.2f} GFLOP (frozen matmuls 4N, LoRA 6 per "
                  f"weight, causal attention at each example's length; recomputation not counted), against "
                  f"{r['peak_bf16_tflops']} TFLOP/s dense bf16.", ""]
        plans = [r[s]["memory_plan"] for s in ("qrtrain", "qrtrain-memory-matched") if r.get(s, {}).get("memory_plan")]
        if plans:
            lines += ["qrtrain's memory plan: " + " / ".join(f"`{p}`" for p in plans), ""]
        for side, table in r.get("profile", {}).items():
            lines += [f"Top kernels, {side}, steps 6-8 (torch.profiler):", "", "```", *table, "```", ""]
    lines.append("<!-- /bench-gpu -->")
    return "\n".join(lines) + "\n"


def vs_plain(result: dict, tokens_per_s: dict) -> str:
    return f"{tokens_per_s['median'] / result['plain']['tokens_per_s']['median']:.2f}x" if "plain" in result else "-"


def write_benchmarks(section: str) -> None:
    write_section("bench-gpu", section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["lora-1.7b", "qlora-8b"], choices=sorted(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "qrtrain-bench-gpu",
                        help="where models and data are built (kept between runs)")
    parser.add_argument("--progress", type=Path, default=Path("bench_gpu_progress.jsonl"))
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--profile", action="store_true", help="profile even with --smoke")
    parser.add_argument("--steps", type=int, help="steps per run instead of the workload's (make gpu-check: 10)")
    parser.add_argument("--smoke", action="store_true", help="the tiny workload, 1 repeat, no profile, no BENCHMARKS.md")
    args = parser.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.smoke:
        args.workloads, args.repeats, args.no_profile = ["smoke"], 1, not args.profile
    elif device != "cuda":
        raise SystemExit("no CUDA device: run with --smoke to check the benchmark on CPU")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.steps:
        for spec in WORKLOADS.values():
            spec["steps"] = max(2, args.steps)
    results = [benchmark(name, args.work, device, args.repeats, not args.no_profile, args.progress)
               for name in args.workloads]
    for r in results:
        speedup = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        print(f"{r['workload']}: qrtrain/plain {speedup} tokens/s, memory ratio "
              f"{r['memory_ratio'] if r['memory_ratio'] is None else round(r['memory_ratio'], 2)}"
              + (f"; failed runs: {r['failures']}" if r["failures"] else ""), flush=True)
    if not args.smoke and not args.steps:
        write_benchmarks(markdown(results, "python scripts/bench_gpu.py " + " ".join(sys.argv[1:])))
    print(json.dumps({r["workload"]: {"speedup": r["speedup"], "memory_ratio": r["memory_ratio"]} for r in results}))


if __name__ == "__main__":
    main()
