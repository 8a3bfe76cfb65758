"""`qrtrain list`: the artifacts and versions under an artifact root.

    qrtrain list                 # outputs/
    qrtrain list --root DIR --json

Reads metadata.json and training_metrics.json; `verified` runs the same checks as
`qrtrain verify`. Imports nothing heavy.
"""

import json
from pathlib import Path

from qrtrain.artifacts.verify import verify_version
from qrtrain.artifacts.versions import versions
from qrtrain.errors import QrtrainError
from qrtrain.files import read_json, regular_files
from qrtrain.terminal import table_console


def list_versions(root: Path, trust=None) -> list[dict]:
    """One row per version; `signature` is unsigned, present (not checked), or, given `trust`
    (qrtrain.artifacts.signing.TrustWith), valid or invalid."""
    root = Path(root)
    if not root.is_dir():
        raise QrtrainError(f"{root}: no such artifact root (set --root, or train first: qrtrain train)")
    rows = []
    real_root = root.resolve()
    for name_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")):
        if real_root not in name_dir.resolve().parents:  # an artifact is a folder of this root, never a link out
            continue
        for number in versions(name_dir):
            folder = name_dir / f"v{number}"
            metadata, damaged = read_json(folder / "metadata.json")
            metadata = metadata or {}
            final = (read_json(folder / "training_metrics.json")[0] or {}).get("final")
            metrics = final if isinstance(final, dict) else {}
            rows.append({
                "artifact": name_dir.name,
                "version": f"v{number}",
                "created": text(metadata.get("created")),
                "base_model": text((metadata.get("base_model") or {}).get("name")
                                   if isinstance(metadata.get("base_model"), dict) else None),
                "model_type": text(metadata.get("model_type")),
                "method": text((metadata.get("method") or {}).get("name") if isinstance(metadata.get("method"), dict)
                               else "sft"),
                "parent": lineage(metadata.get("parent")),
                "strategy": text(metadata.get("strategy")),
                "quantization": text(metadata.get("quantization")),
                "eval_loss": metrics.get("eval_loss") if isinstance(metrics.get("eval_loss"), (int, float)) else None,
                "data": data_summary(metadata.get("datasets")),
                "size_bytes": sum(p.lstat().st_size for p in regular_files(folder)),  # links not followed
                **verified_and_signed(folder, trust),
                "path": str(folder),
                **({"metadata_problem": damaged} if damaged else {}),
            })
    return rows


def verified_and_signed(folder: Path, trust) -> dict:
    result = verify_version(folder, trust=trust)
    signature = result["signature"]
    return {"verified": result["verified"] or all(p["check"] == "signature" for p in result["problems"]),
            "signature": signature["state"], "signer": signature["signer"]}


def checkpoint_folders(root: Path) -> list[dict]:
    """The checkpoints of unfinished trainings under ROOT/.checkpoints: one folder per training (artifact name
    and config digest), with its newest complete step, size, age and whether a live run holds it."""
    import fcntl
    import re
    import time

    folders = Path(root) / ".checkpoints"
    rows = []
    for folder in sorted(p for p in folders.iterdir() if p.is_dir() and not p.is_symlink()) if folders.is_dir() else []:
        match = re.fullmatch(r"(.+)-([0-9a-f]{12})(-\d+)?", folder.name)
        steps = sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*")
                       if p.name.split("-")[1].isdigit() and (p / ".complete").is_file())
        in_use = False
        if (folder / ".lock").is_file():
            with open(folder / ".lock", "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(lock, fcntl.LOCK_UN)
                except BlockingIOError:
                    in_use = True
        rows.append({"folder": str(folder), "artifact": match.group(1) if match else folder.name,
                     "newest_step": steps[-1] if steps else None,
                     "size_bytes": sum(p.lstat().st_size for p in regular_files(folder)),
                     "age_hours": round((time.time() - folder.stat().st_mtime) / 3600, 1), "in_use": in_use})
    return rows


def print_checkpoints(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="checkpoints of unfinished trainings (resume: run the same command; "
                        "remove: qrtrain list --clean-checkpoints)", title_justify="left")
    for column in ("artifact", "newest step", "size", "age", "in use", "folder"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["artifact"], str(r["newest_step"] or "-"), f"{r['size_bytes'] / 1e6:.1f} MB",
                      f"{r['age_hours']} h", "yes" if r["in_use"] else "no", r["folder"])
    table_console().print(table if rows else "no checkpoints")


def remove_checkpoints(rows: list[dict]) -> list[dict]:
    """Delete the checkpoint folders no live run holds; returns those removed."""
    import shutil

    removed = [r for r in rows if not r["in_use"]]
    for row in removed:
        shutil.rmtree(row["folder"], ignore_errors=True)
    return removed


def data_summary(datasets) -> list[dict]:
    """What a version was trained and evaluated on: each source's role, file name, rows and digest."""
    if not isinstance(datasets, list):
        return []
    return [{"role": text(d.get("role")), "source": Path(d["path"]).name if isinstance(d.get("path"), str) else None,
             "rows": d.get("rows") if isinstance(d.get("rows"), int) else None,
             "sha256": text(d.get("sha256"))} for d in datasets if isinstance(d, dict)]


def data_line(data: list[dict]) -> str:
    """train qa_train.jsonl 80 rows 5d0b7422, eval qa_heldout.jsonl 26 rows 72bd9d3e"""
    return ", ".join(f"{d['role']} {d['source']} {d['rows']} rows {(d['sha256'] or '?')[:8]}" for d in data) or "?"


def lineage(parent) -> dict | None:
    """The recorded parent (init_adapter) as {name, version, root_digest}, or None."""
    if not isinstance(parent, dict):
        return None
    return {key: text(parent.get(key)) for key in ("name", "version", "root_digest")}


def text(value) -> str | None:
    """A string field as read from a file that may be damaged: a string, or None."""
    return value if isinstance(value, str) else None


def print_versions(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="qrtrain artifacts", title_justify="left")
    for column in ("artifact", "version", "created", "base model", "method", "from", "type/strategy/quant", "data",
                   "eval loss", "size", "verified", "signed"):
        table.add_column(column)
    for r in rows:
        parent = r.get("parent")
        table.add_row(r["artifact"], r["version"], r["created"] or "?", r["base_model"] or "?", r["method"] or "?",
                      f"{parent['name']}/{parent['version']}" if parent else "-",
                      f"{r['model_type']}/{r['strategy']}/{r['quantization']}", data_line(r["data"]),
                      f"{r['eval_loss']:.4f}" if isinstance(r["eval_loss"], (int, float)) else "-",
                      f"{r['size_bytes'] / 1e6:.1f} MB", "[green]yes[/]" if r["verified"] else "[red]NO[/]",
                      {"valid": "[green]valid[/]", "invalid": "[red]INVALID[/]", "present": "yes (unchecked)"}.get(
                          r["signature"], "-"))
    table_console().print(table if rows else "no artifacts yet")
