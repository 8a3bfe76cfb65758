"""Two versions side by side: config keys, data, base model, method and lineage, metrics with deltas, sizes.

    qrtrain diff smollm2-135m-instruct-dialogue/v1 smollm2-135m-instruct-dialogue-dpo/v1
    qrtrain diff outputs/NAME/v1 outputs/NAME/v2 --json

Each side is NAME/vN (or NAME, its latest) under --root, or a version folder; both are verified first and
the table says whether they did. Metrics are the final training metrics and, for every evaluation suite
both versions have a report of (their newest each), that report's means. Imports nothing heavy.
"""

import json
from pathlib import Path

from qrtrain.artifacts.lineage import find_version
from qrtrain.artifacts.verify import verify_version
from qrtrain.errors import QrtrainError
from qrtrain.files import read_json


def flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def side(reference: str, root: Path) -> dict:
    """One version as diff compares it."""
    import yaml

    folder = find_version(reference, root) if not Path(reference).is_dir() else Path(reference)
    if folder is None or not (folder / "metadata.json").is_file():
        raise QrtrainError(f"{reference}: no such version under {root} (nor a version folder); "
                           "`qrtrain list` shows the versions")
    metadata, problem = read_json(folder / "metadata.json")
    if problem:
        raise QrtrainError(f"{folder / 'metadata.json'}: {problem}")
    config = yaml.safe_load((folder / "training_config.yaml").read_text(encoding="utf-8")) \
        if (folder / "training_config.yaml").is_file() else {}
    final = ((read_json(folder / "training_metrics.json")[0] or {}).get("final") or {})
    manifest = read_json(folder / "checksums.json")[0] or {}
    return {"path": str(folder), "label": f"{metadata.get('name')}/{metadata.get('version')}",
            "verified": verify_version(folder)["verified"], "metadata": metadata,
            "config": {k: v for k, v in flatten(config).items() if not k.startswith("hydra.")},
            "metrics": {k: v for k, v in final.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
            "evaluations": evaluations(folder),
            "size_bytes": sum(f.get("size", 0) for f in manifest.get("files", [])),
            "root_digest": manifest.get("root_digest")}


def evaluations(folder: Path) -> dict:
    """{suite: {metric: mean}} from the newest report per suite in <artifact>/evaluations/<version>-<suite>-<time>/."""
    found = {}
    for report_file in sorted((folder.parent / "evaluations").glob(f"{folder.name}-*/report.json")):
        report = read_json(report_file)[0] or {}
        means = {k: m["mean"] for k, m in (report.get("metrics") or {}).items()
                 if isinstance(m, dict) and isinstance(m.get("mean"), (int, float))}
        if isinstance(report.get("suite"), str):
            found[report["suite"]] = means  # sorted by time: the newest wins
    return found


def data_sources(metadata: dict) -> dict:
    return {f"{d.get('role')}:{Path(str(d.get('path'))).name}": {"rows": d.get("rows"), "sha256": d.get("sha256")}
            for d in metadata.get("datasets") or [] if isinstance(d, dict)}


def diff_versions(a: str, b: str, root: Path) -> dict:
    left, right = side(a, root), side(b, root)
    keys = sorted(set(left["config"]) | set(right["config"]))
    config = [{"key": k, "a": left["config"].get(k), "b": right["config"].get(k)} for k in keys
              if left["config"].get(k) != right["config"].get(k)]
    da, db = data_sources(left["metadata"]), data_sources(right["metadata"])
    data = [{"source": s, "a": da.get(s), "b": db.get(s)} for s in sorted(set(da) | set(db)) if da.get(s) != db.get(s)]

    def about(s: dict) -> dict:
        m = s["metadata"]
        return {"base_model": (m.get("base_model") or {}).get("name"), "method": (m.get("method") or {}).get("name",
                "sft"), "parent": m.get("parent"), "verified": s["verified"], "size_bytes": s["size_bytes"],
                "root_digest": s["root_digest"]}

    metrics = [{"metric": k, "a": left["metrics"].get(k), "b": right["metrics"].get(k),
                "delta": right["metrics"][k] - left["metrics"][k] if k in left["metrics"] and k in right["metrics"]
                else None} for k in sorted(set(left["metrics"]) | set(right["metrics"]))]
    for suite in sorted(set(left["evaluations"]) & set(right["evaluations"])):
        ea, eb = left["evaluations"][suite], right["evaluations"][suite]
        metrics += [{"metric": f"{suite}:{k}", "a": ea[k], "b": eb[k], "delta": eb[k] - ea[k]}
                    for k in sorted(set(ea) & set(eb))]
    return {"a": {"version": left["label"], "path": left["path"], **about(left)},
            "b": {"version": right["label"], "path": right["path"], **about(right)},
            "config": config, "data": data, "metrics": metrics}


def print_diff(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    from rich.table import Table

    from qrtrain.terminal import table_console

    a, b = result["a"], result["b"]
    table = Table(title=f"{a['version']} -> {b['version']}", title_justify="left")
    for column in ("", a["version"], b["version"], "delta"):
        table.add_column(column, overflow="fold")
    for key in ("base_model", "method", "parent", "verified", "size_bytes", "root_digest"):
        shown = [a[key], b[key]]
        if key == "parent":
            shown = [f"{p['name']}/{p['version']}" if isinstance(p, dict) else "-" for p in shown]
        table.add_row(key, str(shown[0]), str(shown[1]), "")
    for row in result["config"]:
        table.add_row(f"config {row['key']}", str(row["a"]), str(row["b"]), "")
    for row in result["data"]:
        table.add_row(f"data {row['source']}", *(f"{v['rows']} rows {str(v['sha256'])[:8]}" if v else "-"
                                               for v in (row["a"], row["b"])), "")
    for row in result["metrics"]:
        cells = [f"{v:.4g}" if isinstance(v, (int, float)) else "-" for v in (row["a"], row["b"], row["delta"])]
        table.add_row(row["metric"], *cells)
    table_console().print(table)
