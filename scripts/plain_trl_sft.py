"""The plain TRL script users write today: SFTTrainer + PEFT LoRA, TRL's defaults otherwise.

    python scripts/plain_trl_sft.py --model FOLDER --data FILE.jsonl --steps 20 --batch 16 --max-length 2048 --bf16
    (scripts/bench.py and scripts/bench_gpu.py run it)

No qrtrain code is imported: the data file is read with `datasets`, the model loaded with
`from_pretrained`, and TRL does the rest. What is not given on the command line is TRL's and
PEFT's default (gradient checkpointing on, padded batches, LoRA dropout 0).
"""

import argparse
import os
import sys
from pathlib import Path

import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from trl import SFTConfig, SFTTrainer

sys.path.insert(0, str(Path(__file__).parent))
from bench_timer import BenchTimer  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True)
parser.add_argument("--data", required=True)
parser.add_argument("--steps", type=int, required=True)
parser.add_argument("--batch", type=int, required=True)
parser.add_argument("--max-length", type=int, required=True)
parser.add_argument("--learning-rate", type=float, default=1e-3)
parser.add_argument("--packing", action="store_true")
parser.add_argument("--no-gradient-checkpointing", action="store_true", help="TRL's default is on")
parser.add_argument("--nf4", action="store_true")
parser.add_argument("--bf16", action="store_true", help="bf16 weights and autocast (GPUs); default float32")
parser.add_argument("--cpu", action="store_true")
parser.add_argument("--lora-dropout", type=float, default=0.0)
parser.add_argument("--chat-template", help="a template with {% generation %} markers, if the model's has none")
args = parser.parse_args()

dtype = torch.bfloat16 if args.bf16 else torch.float32
dataset = load_dataset("json", data_files=args.data, split="train")
tokenizer = AutoTokenizer.from_pretrained(args.model)
quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=dtype) if args.nf4 else None
model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, quantization_config=quantization,
                                             device_map=None if args.cpu else {"": 0})
config = SFTConfig(output_dir="/tmp/plain-trl", max_steps=args.steps, per_device_train_batch_size=args.batch,
                   learning_rate=args.learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05,
                   max_length=args.max_length, packing=args.packing,
                   gradient_checkpointing=not args.no_gradient_checkpointing, assistant_only_loss=True,
                   bf16=args.bf16, use_cpu=args.cpu, seed=42, logging_steps=1, save_strategy="no",
                   report_to="none", disable_tqdm=True, chat_template_path=args.chat_template)
peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=args.lora_dropout, target_modules="all-linear",
                         task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                     peft_config=peft_config, callbacks=[BenchTimer(os.environ["BENCH_OUT"])])
trainer.train()
