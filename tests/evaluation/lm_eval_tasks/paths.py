"""Where the local task's data lies (lm-eval's `!function` resolves this module beside the YAML)."""

from pathlib import Path

veloria_facts_file = str(Path(__file__).resolve().parent / "veloria_facts.jsonl")
