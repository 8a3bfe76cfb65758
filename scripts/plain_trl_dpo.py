"""The plain TRL DPO script users write today: DPOTrainer + PEFT LoRA, TRL's defaults otherwise.

    python scripts/plain_trl_dpo.py --model FOLDER --data pairs.jsonl --steps 10 --batch 8 --max-length 512 --cpu
    (scripts/bench_dpo.py runs it)

No qrtrain code is imported: the pairs are read with `datasets`, the model loaded with `from_pretrained`,
and TRL does the rest (the reference is the base with the adapter off, TRL's PEFT path). What is not
given on the command line is TRL's and PEFT's default (gradient checkpointing on, padded batches).
"""

import argparse
import os
import sys
from pathlib import Path

import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

sys.path.insert(0, str(Path(__file__).parent))
from bench_timer import BenchTimer  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True)
parser.add_argument("--data", required=True)
parser.add_argument("--steps", type=int, required=True)
parser.add_argument("--batch", type=int, required=True)
parser.add_argument("--max-length", type=int, required=True)
parser.add_argument("--learning-rate", type=float, default=1e-3)
parser.add_argument("--beta", type=float, default=0.1)
parser.add_argument("--no-gradient-checkpointing", action="store_true", help="TRL's default is on")
parser.add_argument("--bf16", action="store_true", help="bf16 weights and autocast (GPUs); default float32")
parser.add_argument("--cpu", action="store_true")
args = parser.parse_args()

dtype = torch.bfloat16 if args.bf16 else torch.float32
dataset = load_dataset("json", data_files=args.data, split="train")
tokenizer = AutoTokenizer.from_pretrained(args.model)
model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, device_map=None if args.cpu else {"": 0})
config = DPOConfig(output_dir="/tmp/plain-trl-dpo", max_steps=args.steps, per_device_train_batch_size=args.batch,
                   learning_rate=args.learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05,
                   max_length=args.max_length, beta=args.beta,
                   gradient_checkpointing=not args.no_gradient_checkpointing, bf16=args.bf16, use_cpu=args.cpu,
                   seed=42, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True)
peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                     peft_config=peft_config, callbacks=[BenchTimer(os.environ["BENCH_OUT"])])
trainer.train()
