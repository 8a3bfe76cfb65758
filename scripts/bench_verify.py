"""Benchmark `qrtrain verify` against `sha256sum` on the same ~1 GB artifact.

    python scripts/bench_verify.py            # make bench runs it; prints a JSON summary as its last line
    python scripts/bench_verify.py --gb 0.2   # smaller

Builds a schema-valid artifact whose adapter_model.safetensors holds ~1 GB of random
LoRA tensors (header written by hand), then times, alternating and repeated, the whole
`qrtrain verify DIR` command (process start included) and `sha256sum` over the same files.
The page cache is warm for both after the first round.
"""

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from qrtrain.artifacts.manifest import write_manifest  # noqa: E402


def build_artifact(folder: Path, gigabytes: float) -> None:
    rank, width, layers = 16, 4096, max(1, int(gigabytes * 1e9 / (2 * 16 * 4096 * 4)))
    header, offset = {}, 0
    for i in range(layers):
        for part, shape in (("lora_A", [rank, width]), ("lora_B", [width, rank])):
            size = shape[0] * shape[1] * 4
            header[f"base_model.model.model.layers.{i}.self_attn.q_proj.{part}.weight"] = {
                "dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(folder / "adapter_model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        left = offset
        while left:
            chunk = os.urandom(min(left, 64 << 20))
            f.write(chunk)
            left -= len(chunk)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "target_modules": ["q_proj"]}))
    (folder / "metadata.json").write_text(json.dumps({
        "name": "bench", "version": "v1", "created": "now", "qrtrain_version": "bench", "base_model": {},
        "model_type": "dialogue", "strategy": "standard", "quantization": "none", "datasets": [], "seed": 0,
        "device": "cpu", "libraries": {}, "base_weights_check": {}}))
    write_manifest(folder)


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    qrtrain = str(Path(sys.executable).parent / "qrtrain")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "v1"
        folder.mkdir()
        build_artifact(folder, args.gb)
        files = sorted(str(p) for p in folder.iterdir())
        total = sum(os.path.getsize(f) for f in files)
        timed(["cat", *files])  # warm the page cache
        verify_s, sha_s = [], []
        for _ in range(args.repeats):
            verify_s.append(timed([qrtrain, "verify", str(folder)]))
            sha_s.append(timed(["sha256sum", *files]))
    summary = {
        "bytes": total,
        "qrtrain_verify_s": {"median": statistics.median(verify_s), "min": min(verify_s), "max": max(verify_s)},
        "sha256sum_s": {"median": statistics.median(sha_s), "min": min(sha_s), "max": max(sha_s)},
        "ratio_verify_over_sha256sum": statistics.median(verify_s) / statistics.median(sha_s),
        "verify_MB_per_s": total / 1e6 / statistics.median(verify_s),
    }
    print(f"qrtrain verify: {summary['qrtrain_verify_s']['median']:.2f} s, sha256sum: {summary['sha256sum_s']['median']:.2f} s "
          f"on {total / 1e9:.2f} GB (ratio {summary['ratio_verify_over_sha256sum']:.2f})")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
