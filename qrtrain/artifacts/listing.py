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
from qrtrain.terminal import table_console


def list_versions(root: Path) -> list[dict]:
    root = Path(root)
    if not root.is_dir():
        raise QrtrainError(f"{root}: no such artifact root (set --root, or train first: qrtrain train)")
    rows = []
    for name_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for number in versions(name_dir):
            folder = name_dir / f"v{number}"
            metadata = _read_json(folder / "metadata.json")
            metrics = _read_json(folder / "training_metrics.json").get("final", {})
            rows.append({
                "artifact": name_dir.name,
                "version": f"v{number}",
                "created": metadata.get("created"),
                "base_model": (metadata.get("base_model") or {}).get("name"),
                "model_type": metadata.get("model_type"),
                "strategy": metadata.get("strategy"),
                "quantization": metadata.get("quantization"),
                "eval_loss": metrics.get("eval_loss"),
                "size_bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
                "verified": verify_version(folder)["verified"],
                "path": str(folder),
            })
    return rows


def _read_json(path: Path) -> dict:
    """A small JSON file's object, or {}: never blocks on a pipe, never reads a huge file."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 16 << 20:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def print_versions(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="qrtrain artifacts", title_justify="left")
    for column in ("artifact", "version", "created", "base model", "type/strategy/quant", "eval loss", "size", "verified"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["artifact"], r["version"], r["created"] or "?", r["base_model"] or "?",
                      f"{r['model_type']}/{r['strategy']}/{r['quantization']}",
                      f"{r['eval_loss']:.4f}" if isinstance(r["eval_loss"], (int, float)) else "-",
                      f"{r['size_bytes'] / 1e6:.1f} MB", "[green]yes[/]" if r["verified"] else "[red]NO[/]")
    table_console().print(table if rows else "no artifacts yet")
