"""The model catalog: every option of conf/model/, and whether this machine can load it offline.

    qrtrain models
    qrtrain models --json

Reads the YAML files only (no torch, no transformers): a catalog model (source: hub) is cached when its Hugging
Face snapshot holds its config, tokenizer config and every weight shard; `hf download HUB_ID` caches it.
"""

import importlib.util
import json

def catalog() -> list[dict]:
    """One row per model option: catalog models (source hub) first, then the others (the default GGUF model,
    the tiny models and stand-ins), each by name."""
    from omegaconf import OmegaConf

    from qrtrain.config import conf_dir

    rows = []
    for path in sorted((conf_dir() / "model").glob("*.yaml")):
        option = OmegaConf.to_container(OmegaConf.load(path))
        rows.append({
            "name": option.get("name", path.stem),
            "hub_id": option.get("hub_id"),
            "architecture": option.get("architecture"),
            "params": option.get("params"),
            "context_length": option.get("context_length"),
            "max_length": option.get("max_length"),
            "target_modules": option.get("target_modules"),
            "training_template": option.get("training_template"),
            "end_of_turn": option.get("end_of_turn"),
            "stop_tokens": option.get("stop_tokens"),
            "gated": option.get("gated"),
            "stand_in": option.get("stand_in"),
            "source": option.get("source"),
            "cached": is_cached(option),
        })
    return sorted(rows, key=lambda r: (r["source"] != "hub", r["name"]))


def is_cached(option: dict) -> bool:
    """Whether the option loads here without a network: a hub model fully in the Hugging Face cache, a GGUF
    model's package installed; tiny models and stand-ins are built locally, always."""
    from qrtrain.models.loading import cached_snapshot, missing_model_files

    if option.get("source") == "hub":
        folder = cached_snapshot(option["hub_id"])
        return folder is not None and not missing_model_files(folder)
    if option.get("source") == "gguf":
        return importlib.util.find_spec(option["gguf_package"]) is not None
    return True


def print_catalog(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    from qrtrain.terminal import table_console

    table = Table(title="qrtrain models (model=NAME)", title_justify="left")
    for column in ("name", "Hub id", "architecture", "params", "max_length", "chat template (training)", "source",
                   "cached"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["name"], r["hub_id"] or "-", r["architecture"] or "-", r["params"] or "-",
                      str(r["max_length"] or "-"), r["training_template"] or "-", r["source"] or "-",
                      "[green]yes[/]" if r["cached"] else "no")
    console = table_console()
    console.print(table)
    console.print("A hub model not cached: `hf download HUB_ID` once where a network is (gated ones need "
                  "`hf auth login` and their license accepted). The tiny-* stand-ins are built locally, for tests.")
