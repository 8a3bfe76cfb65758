"""The plain TRL script users write today: SFTTrainer + LoRA on the same model, data and settings.

    python scripts/plain_trl_sft.py MODEL_FOLDER STEPS BATCH MAX_LENGTH PACKING GRAD_CKPT QUANT   (scripts/bench.py runs it)

No qrtrain code is imported: the same demo file is read with `datasets`, the model loaded
with `from_pretrained`, and TRL does the rest.
"""

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

folder, steps, batch, max_length, packing, grad_ckpt, quant = sys.argv[1:8]
data = Path(__file__).resolve().parent.parent / "qrtrain" / "data" / "demo" / "qa_train.jsonl"
dataset = load_dataset("json", data_files=str(data), split="train")
tokenizer = AutoTokenizer.from_pretrained(folder)
quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.float32) if quant == "nf4" else None
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, quantization_config=quantization)
args = SFTConfig(output_dir="/tmp/plain-trl", max_steps=int(steps), per_device_train_batch_size=int(batch),
                 learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=0.05, max_length=int(max_length),
                 packing=packing == "true", gradient_checkpointing=grad_ckpt == "true", assistant_only_loss=True,
                 bf16=False, use_cpu=True, seed=42, logging_steps=1, save_strategy="no", report_to="none",
                 disable_tqdm=True,
                 # SmolLM2's template has no {% generation %} markers: the user supplies a marked copy
                 chat_template_path=str(data.parent.parent.parent / "models" / "chat_templates" / "smollm2_training.jinja"))
peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config,
                     callbacks=[BenchTimer(os.environ["BENCH_OUT"])])
trainer.train()
