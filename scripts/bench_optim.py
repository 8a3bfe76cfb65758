"""Optimizer state memory and step time of the training.optim choices, LoRA on the default model (CPU).

    python scripts/bench_optim.py           # make bench runs it; writes BENCHMARKS.md's `bench-optim` section
    python scripts/bench_optim.py --model tiny --steps 3 --no-write

SmolLM2-135M-Instruct (the default model) with the default LoRA (r=16, alpha=32, every linear layer) is loaded
once. For each optimizer the LoRA weights are reset, the optimizer is built as `qrtrain train` builds it
(strategy.build_optimizer: the Trainer's get_optimizer_cls_and_kwargs over qrtrain's parameter groups), and
`--steps` steps on one batch of the demo data are timed (after two warm-up passes), in `--rounds` rounds that
alternate the order: the whole step (forward, backward, optimizer step) and the optimizer step alone, medians
over the rounds' steps after each round's first. The state
memory is the bytes of every tensor in optimizer.state after the steps. Paged optimizers are refused off CUDA
(strategy.check_optimizer_device), and are listed as such. The last line printed is a JSON summary.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adafactor", "adamw_8bit", "ademamix_8bit", "lion_8bit",
              "lion_32bit", "rmsprop_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit")


def state_bytes(optimizer) -> int:
    import torch

    return sum(v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values()
               if torch.is_tensor(v))


def measure(name: str, cfg, trainer, initial: dict, batch: dict, steps: int, device: str) -> dict:
    """One round of `steps` steps of one optimizer from the initial LoRA weights: its times, losses and state."""
    import dataclasses

    import torch

    from qrtrain.errors import QrtrainError
    from qrtrain.training.strategy import build_optimizer, check_optimizer_device

    try:
        check_optimizer_device(name, device)
    except QrtrainError as error:
        return {"optim": name, "refused": error.message.split(": ", 1)[1].split(" (")[0]}
    model = trainer.model
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(initial[n])
    optimizer = build_optimizer(model, cfg, dataclasses.replace(trainer.args, optim=name))
    model.train()
    step_s, optimizer_s, losses = [], [], []
    for _ in range(steps):
        started = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        before_step = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ended = time.perf_counter()
        step_s.append(ended - started)
        optimizer_s.append(ended - before_step)
        losses.append(loss.item())
    trainable = [p for p in model.parameters() if p.requires_grad]
    return {"optim": name, "class": f"{type(optimizer).__module__}.{type(optimizer).__name__}",
            "state_bytes": state_bytes(optimizer), "trainable_parameters": sum(p.numel() for p in trainable),
            "step_s": step_s[1:], "optimizer_step_s": optimizer_s[1:], "first_loss": losses[0], "last_loss": losses[-1]}


def summarize(rounds: list[list[dict]]) -> list[dict]:
    """Per optimizer: the medians of its step times over every round (rounds alternate the optimizers, so a busy
    moment of the machine falls on several of them rather than on one)."""
    rows = []
    for runs in zip(*rounds):
        row = dict(runs[0])
        if "refused" not in row:
            row["step_s"] = statistics.median(t for r in runs for t in r["step_s"])
            row["optimizer_step_ms"] = 1000 * statistics.median(t for r in runs for t in r["optimizer_step_s"])
            del row["optimizer_step_s"]
        rows.append(row)
    return rows


def setup(model: str, batch_size: int, max_length: int, folder: Path):
    """(cfg, trainer, initial LoRA weights, one batch): the model with LoRA and the demo data, as qrtrain trains."""
    import torch
    from peft import get_peft_model

    from qrtrain.config import compose
    from qrtrain.models import loading
    from qrtrain.training.datasets import load_datasets
    from qrtrain.training.lora import lora_config
    from qrtrain.training.trainer import build_trainer

    cfg = compose([f"model={model}", f"training.batch_size={batch_size}", f"training.max_length={max_length}",
                   "training.eval_steps=0", "data.eval_fraction=0", "tracking=[]", f"artifact.root={folder}"])
    torch.manual_seed(cfg.seed)
    train_set = load_datasets(cfg)[0]
    base = loading.model_folder(cfg.model)
    tokenizer = loading.load_tokenizer(base, cfg.model_type.name)
    lora_model = get_peft_model(loading.load_model(base, cfg, "cpu", torch.float32, "sdpa"), lora_config(cfg))
    trainer = build_trainer(cfg, lora_model, tokenizer, train_set, None, folder, "cpu", torch.float32)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(batch_size)])
    batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}
    initial = {n: p.detach().clone() for n, p in lora_model.named_parameters() if p.requires_grad}
    for _ in range(2):  # warm-up: the first passes of a shape are slower, for whichever optimizer came first
        lora_model(**batch).loss.backward()
    lora_model.zero_grad(set_to_none=True)
    return cfg, trainer, initial, batch


def markdown(report: dict) -> str:
    base = next(r for r in report["rows"] if r["optim"] == "adamw_torch")
    lines = ["<!-- bench-optim -->", "## Optimizers: state memory and step time (CPU)", "",
             f"`python scripts/bench_optim.py` on this machine ({report['threads']} CPU threads): "
             f"{report['model']} with LoRA r=16 on every linear layer ({base['trainable_parameters']:,} trainable "
             f"parameters), batch {report['batch_size']} x up to {report['max_length']} tokens of the demo data, "
             f"float32, {report['rounds']} rounds (alternating order) of {report['steps']} steps per optimizer on the "
             "same batch from the same LoRA weights; times are medians over the rounds' steps after each round's "
             "first. The optimizer is built as `qrtrain train` builds it (training.optim through the "
             "Trainer's `get_optimizer_cls_and_kwargs`, over qrtrain's parameter groups). State: the bytes of the "
             "tensors in `optimizer.state`.", "",
             "| training.optim | state | vs adamw_torch | whole step | optimizer step | loss, first -> last step |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        if "refused" in r:
            lines.append(f"| {r['optim']} | refused here: {r['refused']} | | | | |")
            continue
        lines.append(f"| {r['optim']} | {r['state_bytes'] / 2**20:.2f} MiB | "
                     f"{r['state_bytes'] / base['state_bytes']:.2f}x | {r['step_s']:.2f} s | "
                     f"{r['optimizer_step_ms']:.1f} ms | {r['first_loss']:.3f} -> {r['last_loss']:.3f} |")
    lines += ["", "bitsandbytes keeps 8-bit state only for tensors of 4096 values or more (smaller ones keep 32-bit "
              "state); the paged optimizers page that state between GPU and CPU memory, so they run on CUDA only.",
              "<!-- /bench-optim -->", ""]
    return "\n".join(lines)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="every optimizer once per round, in alternating order")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--no-write", action="store_true", help="print, leave BENCHMARKS.md as it is")
    args = parser.parse_args()
    from qrtrain.terminal import quiet_libraries

    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        cfg, trainer, initial, batch = setup(args.model, args.batch_size, args.max_length, Path(tmp))
        rounds = [[measure(name, cfg, trainer, initial, batch, args.steps, "cpu")
                   for name in (OPTIMIZERS if i % 2 == 0 else OPTIMIZERS[::-1])] for i in range(args.rounds)]
        rounds = [sorted(r, key=lambda row: OPTIMIZERS.index(row["optim"])) for r in rounds]
    rows = summarize(rounds)
    report = {"model": cfg.model.name, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
              "max_length": args.max_length, "steps": args.steps, "rounds": args.rounds, "rows": rows}
    for r in rows:
        print(f"{r['optim']:>20}: " + (f"refused ({r['refused']})" if "refused" in r else
                                       f"state {r['state_bytes'] / 2**20:7.2f} MiB, step {r['step_s']:.2f} s, "
                                       f"optimizer step {r['optimizer_step_ms']:.1f} ms"))
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from benchmarks_md import write_section

        write_section("bench-optim", markdown(report))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
