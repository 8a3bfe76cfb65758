"""Prove the GPU path on one CUDA GPU in one command: each stage writes one JSON line as it ends, and a
failed stage never stops the ones after it.

    make gpu-check                                     # GPU_CHECK_OUT=folder, default gpu-check/
    python scripts/gpu_check.py --out /tmp/gpu-check   # on CPU: the stand-in kernel and tiny dimensions

Stages (OUT/stages.jsonl; the last line is a summary):
  versions        torch, CUDA, the GPU and its capability, transformers/TRL/PEFT/bitsandbytes/liger, and
                  which torch's `varlen_attn` signature this is (qrtrain/training/varlen_reference.py)
  kernel          the real kernel through qrtrain's wrapper against float32 per-example SDPA, MHA and GQA,
                  outputs and gradients of q, k and v
  trainer-losses  `qrtrain train` padded and padding-free (the varlen path) in bf16, step by step: the
                  losses agree within bf16 rounding
  train-default   `qrtrain train model=tiny` on the device with its defaults, then `qrtrain verify`
  train-nf4       the same with quantization=nf4 (bitsandbytes)
  tests           the training tests on this device
  bench           `scripts/bench_gpu.py` on the 1.7B workload, 1 repeat of 10 steps (CPU: --smoke)
On CPU every stage runs against the stand-in (torch 2.13's signature and the kernel's input checks) so
that the check itself is tested (tests/scripts/test_gpu_check.py); on a GPU, against the real kernel.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BF16_TOLERANCE = 3e-2  # outputs and gradients of size ~1 after one bf16 rounding of inputs and outputs


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def kernel_under_test():
    """(kernel, its name): torch's own on a GPU that runs it, else the stand-in of this torch's signature."""
    from qrtrain.training.attention import varlen_kernel
    from qrtrain.training.varlen_reference import STAND_INS

    kernel = varlen_kernel()
    if kernel is not None:
        return kernel, "torch.nn.attention.varlen.varlen_attn"
    return STAND_INS[signature_version()], f"stand-in ({signature_version()} signature)"


def signature_version() -> str:
    """Which supported torch's `varlen_attn` signature this torch has ("2.13" where it has none)."""
    import inspect

    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return "2.13"
    from qrtrain.training.varlen_reference import STAND_INS

    names = list(inspect.signature(varlen_attn).parameters)
    for version, stand_in in STAND_INS.items():
        if list(inspect.signature(stand_in).parameters) == names:
            return version
    return "2.13" if "enable_gqa" in names else "2.11" if "window_size" in names else "2.10"


def stage_versions(out: Path) -> dict:
    import importlib.metadata as metadata
    import inspect

    import torch

    from qrtrain.training.attention import varlen_usable

    versions = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "liger-kernel", "qrtrain"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    details = {"versions": versions, "cuda": torch.version.cuda, "gpu": None, "capability": None,
               "varlen_signature": None, "matches": signature_version()}
    if on_gpu():
        details["gpu"] = torch.cuda.get_device_name(0)
        details["capability"] = list(torch.cuda.get_device_capability(0))
    try:
        from torch.nn.attention.varlen import varlen_attn

        details["varlen_signature"] = str(inspect.signature(varlen_attn))
    except ImportError:
        pass
    details["varlen_usable_bf16"] = varlen_usable("cuda", torch.bfloat16) if on_gpu() else False
    return {"ok": True, **details}


def stage_kernel(out: Path) -> dict:
    """Outputs and gradients through qrtrain's wrapper (bf16) against float32 per-example SDPA."""
    import torch
    import torch.nn.functional as F

    from qrtrain.training.attention import varlen_attention

    kernel, name = kernel_under_test()
    device = "cuda" if on_gpu() else "cpu"
    lengths = [37, 120, 5, 300, 64] if on_gpu() else [7, 19, 1, 30]
    heads, dim = (32, 128) if on_gpu() else (8, 16)
    results = {}
    for label, kv_heads in (("mha", heads), ("gqa", heads // 4)):
        torch.manual_seed(0)
        total = sum(lengths)
        q32 = torch.randn(1, heads, total, dim, device=device)
        k32, v32 = torch.randn(1, kv_heads, total, dim, device=device), torch.randn(1, kv_heads, total, dim, device=device)
        grad_out = torch.randn(1, total, heads, dim, device=device)
        q, k, v = (t.bfloat16().requires_grad_() for t in (q32, k32, v32))
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
        got, _ = varlen_attention(None, q, k, v, None, scaling=dim ** -0.5, kernel=kernel, cu_seq_lens_q=cu,
                                  cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths))
        got.backward(grad_out.bfloat16())
        ref_q, ref_k, ref_v = (t.bfloat16().float().requires_grad_() for t in (q32, k32, v32))
        parts, start = [], 0
        for n in lengths:
            piece = F.scaled_dot_product_attention(ref_q[:, :, start:start + n], ref_k[:, :, start:start + n],
                                                   ref_v[:, :, start:start + n], is_causal=True, scale=dim ** -0.5,
                                                   enable_gqa=kv_heads != heads)
            parts.append(piece.transpose(1, 2))
            start += n
        expected = torch.cat(parts, dim=1)
        expected.backward(grad_out.bfloat16().float())
        errors = {"out": (got.float() - expected).abs().max().item()}
        for tensor, reference, key in ((q, ref_q, "dq"), (k, ref_k, "dk"), (v, ref_v, "dv")):
            scale = reference.grad.abs().max().item() or 1.0
            errors[key] = (tensor.grad.float() - reference.grad).abs().max().item() / max(1.0, scale)
        results[label] = {"kv_heads": kv_heads, "max_error": errors}
    ok = all(e <= BF16_TOLERANCE for r in results.values() for e in r["max_error"].values())
    return {"ok": ok, "kernel": name, "tolerance": BF16_TOLERANCE, "lengths": lengths, **results}


def qrtrain_command(args: list[str], events: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`qrtrain ARGS` in its own process; on CPU the process trains with the stand-in kernel as its varlen kernel."""
    command = [sys.executable, __file__, "--qrtrain", *args]
    env = dict(os.environ, **({"QRTRAIN_EVENTS": str(events)} if events else {}))
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def run_qrtrain_with_stand_in(args: list[str]) -> None:
    """The CLI, with the stand-in kernel put where torch's would be when this machine has no GPU."""
    if not on_gpu():
        from qrtrain.training import attention

        stand_in, _ = kernel_under_test()
        attention.varlen_kernel = lambda: stand_in
        attention.varlen_usable = lambda device, dtype: str(dtype) in ("torch.bfloat16", "torch.float16")
    from qrtrain.cli import main

    sys.argv = ["qrtrain", *args]
    main()


def published_losses(root: Path) -> list[float]:
    metrics = next(root.glob("*/v1/training_metrics.json"))
    return [h["loss"] for h in json.loads(metrics.read_text())["history"] if "loss" in h]


def stage_trainer_losses(out: Path) -> dict:
    """Padded and padding-free training in bf16 from the same seed: the same losses step by step."""
    losses, said = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for padding_free in (False, True):
            root = Path(tmp) / f"padding-free-{padding_free}"
            result = qrtrain_command(["train", "model=tiny", "training.max_steps=6", "training.logging_steps=1",
                                      "training.eval_steps=0", "training.dtype=bfloat16", "training.batch_size=4",
                                      f"training.padding_free={str(padding_free).lower()}", f"artifact.root={root}",
                                      f"training.device={'cuda' if on_gpu() else 'cpu'}"])
            if result.returncode != 0:
                return {"ok": False, "padding_free": padding_free, "error": tail(result)}
            losses[padding_free] = published_losses(root)
            said[padding_free] = next((line for line in result.stderr.splitlines() if "attention=" in line), "")
    differences = [abs(a - b) / max(1.0, abs(a)) for a, b in zip(losses[False], losses[True])]
    varlen = "qrtrain_varlen" in said[True]
    return {"ok": varlen and len(differences) == 6 and max(differences) <= BF16_TOLERANCE,
            "padded": losses[False], "padding_free": losses[True], "max_relative_difference": max(differences),
            "tolerance": BF16_TOLERANCE, "padding_free_run": said[True].split("qrtrain: ")[-1]}


def train_and_verify(extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        device = "cuda" if on_gpu() else "cpu"
        started = time.perf_counter()
        result = qrtrain_command(["train", "model=tiny", "training.max_steps=5", f"artifact.root={tmp}",
                                  f"training.device={device}", *extra])
        seconds = round(time.perf_counter() - started, 1)
        if result.returncode != 0:
            return {"ok": False, "seconds": seconds, "error": tail(result)}
        version = result.stdout.strip().splitlines()[-1]
        verify = subprocess.run([sys.executable, "-m", "qrtrain", "verify", version], capture_output=True, text=True)
        lines = [line.split("qrtrain: ")[-1] for line in result.stderr.splitlines() if "model:" in line or "memory:" in line]
        return {"ok": verify.returncode == 0, "seconds": seconds, "said": lines, "verify_exit": verify.returncode,
                "losses": published_losses(Path(tmp))}


def stage_train_default(out: Path) -> dict:
    return train_and_verify([])


def stage_train_nf4(out: Path) -> dict:
    return train_and_verify(["quantization=nf4"])


def stage_tests(out: Path) -> dict:
    names = (["test_attention.py", "test_trainer.py", "test_train.py", "test_memory.py"] if on_gpu()
             else ["test_attention.py"])
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
               *[str(ROOT / "tests" / "training" / n) for n in names]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=420, cwd=ROOT)
    summary = (result.stdout.strip().splitlines() or [""])[-1]
    return {"ok": result.returncode == 0, "tests": names, "summary": summary,
            **({"error": tail(result)} if result.returncode else {})}


def stage_bench(out: Path) -> dict:
    args = (["--workloads", "lora-1.7b", "--repeats", "1", "--steps", "10", "--no-profile"] if on_gpu()
            else ["--smoke"])
    command = [sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), *args, "--progress", str(out / "bench_gpu.jsonl")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=480, cwd=ROOT)
    last = (result.stdout.strip().splitlines() or ["{}"])[-1]
    try:
        figures = json.loads(last)
    except json.JSONDecodeError:
        figures = None
    return {"ok": result.returncode == 0 and figures is not None, "figures": figures,
            "lines": result.stdout.strip().splitlines()[-6:], **({"error": tail(result)} if result.returncode else {})}


def tail(result: subprocess.CompletedProcess) -> str:
    return (result.stderr or result.stdout or "").strip()[-1500:]


STAGES = {"versions": stage_versions, "kernel": stage_kernel, "trainer-losses": stage_trainer_losses,
          "train-default": stage_train_default, "train-nf4": stage_train_nf4, "tests": stage_tests, "bench": stage_bench}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("GPU_CHECK_OUT", "gpu-check")))
    parser.add_argument("--stages", nargs="+", choices=sorted(STAGES), default=list(STAGES))
    parser.add_argument("--qrtrain", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.qrtrain is not None:
        run_qrtrain_with_stand_in(args.qrtrain)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "stages.jsonl"
    passed = {}
    for name in args.stages:
        started = time.perf_counter()
        try:
            record = STAGES[name](args.out)
        except Exception as error:  # a stage that breaks is a failed stage; the next one still runs
            record = {"ok": False, "error": f"{type(error).__name__}: {error}",
                      "traceback": traceback.format_exc()[-2000:]}
        record = {"stage": name, **record, "seconds": round(time.perf_counter() - started, 1)}
        passed[name] = bool(record["ok"])
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")
        print(f"{name}: {'ok' if record['ok'] else 'FAILED'} ({record['seconds']} s)", flush=True)
    summary = {"stage": "summary", "ok": all(passed.values()), "passed": passed, "gpu": on_gpu()}
    with open(log, "a", encoding="utf-8") as f:
        f.write(json.dumps(summary) + "\n")
    print(json.dumps(summary))
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
