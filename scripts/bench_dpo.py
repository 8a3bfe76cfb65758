"""DPO through qrtrain against a plain TRL DPO script: same model, pairs and settings, side by side.

    python scripts/bench_dpo.py            # make bench runs it; writes BENCHMARKS.md's `bench-dpo` section
    python scripts/bench_dpo.py --quick    # fewer steps, one repeat

SmolLM2-135M-Instruct (the embedded default) on the demo's 80 preference pairs
(qrtrain/data/demo/pairs_train.jsonl), LoRA r=16/alpha=32 on every linear layer, batch 8, max_length 512,
beta 0.1, TRL's sigmoid loss, learning rate 1e-4 (cosine, 5% warm-up), seed 42, float32 on CPU, starting
from the base (the reference is the base with the adapter off on both sides). Each run is its own process, alternating and
repeated; both time themselves with scripts/bench_timer.py. Plain TRL runs twice: with its default
(gradient checkpointing on) and with it off, which is what qrtrain's plan chooses on a CPU. The last
line printed is a JSON summary.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PAIRS = ROOT / "qrtrain" / "data" / "demo" / "pairs_train.jsonl"
KINDS = ("qrtrain", "plain TRL (its default: gradient checkpointing on)", "plain TRL, checkpointing off")


def run(kind: str, folder: Path, steps: int, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "timer.json"
        env = dict(os.environ, BENCH_OUT=str(out), PYTHONPATH=str(ROOT / "scripts"))
        if kind == "qrtrain":
            command = [str(BIN / "qrtrain"), "train", "--config-dir", str(ROOT / "scripts" / "bench_conf"),
                       "method=dpo", "extensions=[bench_timer]", "method.loss_type=sigmoid",
                       "training.learning_rate=1e-4",
                       f"training.max_steps={steps}", f"training.batch_size={batch}",
                       "training.max_length=512", "training.eval_steps=0", "training.logging_steps=1",
                       "checkpoint.every_steps=0", "data.eval_fraction=0", f"data.train={PAIRS}",
                       f"artifact.root={tmp}/out", "resume=never"]
        else:
            command = [sys.executable, str(ROOT / "scripts" / "plain_trl_dpo.py"), "--model", str(folder), "--data",
                       str(PAIRS), "--steps", str(steps), "--batch", str(batch), "--max-length", "512", "--cpu",
                       "--learning-rate", "1e-4",
                       *(["--no-gradient-checkpointing"] if "off" in kind else [])]
        started = time.time()
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp)
        if result.returncode != 0:
            raise SystemExit(f"{kind} run failed:\n{result.stderr[-3000:]}")
        record = json.loads(out.read_text())
        wall = time.time() - started
    ends = record["step_ends"]
    steady = ends[-1] - ends[0]
    return {"pairs_per_s": batch * (len(ends) - 1) / steady, "s_per_step": steady / (len(ends) - 1),
            "time_to_first_step_s": ends[0] - started, "wall_s": wall, "peak_rss_mb": record["max_rss_mb"],
            "first_loss": record["losses"][0], "last_loss": record["losses"][-1]}


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def markdown(report: dict) -> str:
    rows = report["results"]
    lines = ["<!-- bench-dpo -->", "## DPO: qrtrain vs a plain TRL DPO script (CPU)", "",
             f"`python scripts/bench_dpo.py` on {report['machine']}: SmolLM2-135M-Instruct, the demo's 80 pairs, "
             f"LoRA r=16 all-linear, batch {report['batch']}, max_length 512, beta 0.1, sigmoid loss, lr 1e-4, "
             "float32, "
             f"{report['steps']} steps from the base, median of {report['repeats']} alternating runs "
             "(scripts/plain_trl_dpo.py is the plain side; both time themselves with scripts/bench_timer.py).", "",
             "| run | pairs/s | s/step | first step after start (s) | whole command (s) | peak RSS (MB) | "
             "first loss | last loss |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for kind in KINDS:
        r = rows[kind]
        lines.append(f"| {kind} | {r['pairs_per_s']['median']:.2f} | {r['s_per_step']['median']:.2f} | "
                     f"{r['time_to_first_step_s']['median']:.1f} | {r['wall_s']['median']:.1f} | "
                     f"{r['peak_rss_mb']['median']:.0f} | {r['first_loss']['median']:.4f} | "
                     f"{r['last_loss']['median']:.4f} |")
    lines += ["", "qrtrain's command includes what the plain script does not: checking the pairs, counting tokens "
              "per side, the memory plan, and publishing a verified version (manifest, provenance, model card).",
              "<!-- /bench-dpo -->", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    steps, repeats, batch = (4, 1, 4) if args.quick else (args.steps, args.repeats, 8)
    sys.path.insert(0, str(ROOT))
    from qrtrain.config import compose
    from qrtrain.models.loading import model_folder

    folder = model_folder(compose([]).model)  # converted once into the cache, outside the timings
    runs = {kind: [] for kind in KINDS}
    for _ in range(repeats):
        for kind in KINDS:
            runs[kind].append(run(kind, folder, steps, batch))
            print(kind, json.dumps(runs[kind][-1]), flush=True)
    results = {kind: {key: summary([r[key] for r in rs]) for key in rs[0]} for kind, rs in runs.items()}
    import platform

    report = {"machine": f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}",
              "steps": steps, "batch": batch, "repeats": repeats, "results": results}
    if not args.quick:
        sys.path.insert(0, str(ROOT / "scripts"))
        from benchmarks_md import write_section

        write_section("bench-dpo", markdown(report), before="<!-- bench-gpu -->")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
