"""Fine-tuned vs base vs retrieval, on the same questions: which one answers better?

    qrtrain compare                                           # the demo: base, rag, latest adapter, adapter+rag
    qrtrain compare systems=[base,rag,adapter] adapters=[my-adapter/v1,my-adapter/v2] model.path=BASE

Systems: `base` (the base model alone), `rag` (the base model with the top-k retrieved
passages in its prompt, asked to cite them), `adapter` (each adapter alone) and
`adapter_rag` (each adapter with retrieval). Writes comparison.json, comparison.md and
comparison.png, and prints a summary with a recommendation per metric.
"""

import json
from datetime import datetime
from pathlib import Path

from qrtrain.errors import QrtrainError
from qrtrain.files import write_json

SYSTEMS = ("base", "rag", "adapter", "adapter_rag")
RECOMMEND = ["keyword_accuracy", "f1", "rougeL", "refusal_correct", "citation", "groundedness"]


def resolve_adapters(cfg) -> list[Path]:
    """Adapter version folders from `adapters` (NAME/vN under artifact.root, or paths); default the latest demo one."""
    from qrtrain.artifacts.versions import LATEST_NAME, read_latest

    root = Path(cfg.artifact.root)
    names = list(cfg.adapters) or [cfg.artifact.name]
    folders = []
    for name in names:
        folder = Path(name) if Path(name).is_dir() else root / name
        if (folder / LATEST_NAME).exists():
            folder = read_latest(folder)
        if not folder.is_dir():
            hint = "train one first (make demo)" if not cfg.adapters else f"look under {root} (qrtrain list)"
            raise QrtrainError(f"adapter {name!r}: no such artifact version ({folder}); {hint}, or set adapters=[NAME/vN]")
        folders.append(folder)
    return folders


def compare(overrides: list[str]) -> Path:
    from qrtrain.artifacts.resolve import resolve_target
    from qrtrain.config import compose
    from qrtrain.evaluation.evaluate import preference_section, suite_items, suite_name, trained_as, with_context

    cfg = compose(overrides, config_name="compare")
    from qrtrain.evaluation.benchmarks import run_benchmarks, task_manager

    tasks = task_manager(cfg)
    systems = list(cfg.systems)
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        raise QrtrainError(f"systems={systems}: expected a non-empty list of {', '.join(SYSTEMS)}")
    wants_adapters = any(s.startswith("adapter") for s in systems)
    adapters = [resolve_target(folder)[0] for folder in resolve_adapters(cfg)] if wants_adapters else []
    items = suite_items(cfg)

    from qrtrain.data.corpus import read_documents
    from qrtrain.models import generation
    from qrtrain.evaluation.evaluate import score
    from qrtrain.evaluation.retrieval import build_index
    from qrtrain.models import loading as models
    from qrtrain.models.threads import set_cpu_threads
    from qrtrain.terminal import quiet_libraries, say

    quiet_libraries()
    index = None
    if any(s.endswith("rag") for s in systems):
        from qrtrain.data.rows import DEMO_DIR

        corpus = Path(cfg.evaluation.corpus) if cfg.evaluation.corpus else DEMO_DIR / "documents.jsonl"
        index = build_index(read_documents(corpus, "evaluation.corpus"), cfg.retrieval.chunk_words, cfg.retrieval.chunk_overlap)
    retrieved = [index.search(i["prompt"][-1]["content"], cfg.retrieval.k) if index else [] for i in items]

    base_folder = _base_folder(cfg, adapters)
    device = models.resolve_device(cfg.device)
    threads = set_cpu_threads(cfg.threads)
    dtype = models.compute_dtype(cfg.dtype, device)
    model = models.load_model_for_inference(base_folder, device, dtype)
    say(f"comparing {', '.join(systems)} on {len(items)} items; base {base_folder} on {device} ({threads} CPU threads)")

    def run(name: str, tokenizer, use_retrieval: bool, extra: dict, trained: dict | None = None) -> dict:
        """One system on the suite; an adapter is prompted exactly as `qrtrain evaluate` prompts it (the format
        it was trained with), so its answers here are evaluate's answers."""
        trained = trained or trained_as(None)
        shown = items if trained["prompt_format"] == "chat" else suite_items(cfg, trained["model_type"],
                                                                             trained["prompt_format"])
        passages = retrieved if use_retrieval else [i["context"] for i in shown]
        prompts = [with_context(i["prompt"], p) for i, p in zip(shown, passages)]
        limit = generation.answer_limit(cfg.generation.max_new_tokens, tokenizer, [i["reference"] for i in shown if i["reference"]])
        answers = generation.generate_answers(model, tokenizer, prompts, cfg.generation.batch_size, limit,
                                              cfg.generation.seed)
        aggregate, rows = score(shown, answers, passages)
        pairs = None
        benchmarks = None
        if not use_retrieval:  # reward accuracy on held-out pairs, as `qrtrain evaluate` measures it
            adapter = Path(extra["adapter"]) if extra.get("adapter") else None
            pairs = preference_section(cfg, trained, adapter, model, tokenizer, aggregate)
            benchmarks = run_benchmarks(cfg, tasks, base_folder, adapter, device, dtype)  # lm-eval, beside the suite
            if benchmarks is not None:
                aggregate.update(benchmarks["metrics"])
        say(f"{name}: keyword accuracy {aggregate.get('keyword_accuracy', {}).get('mean')} "
            f"(prompts as trained: {trained['prompt_format']})")
        return {"system": name, **extra, "prompt_format": trained["prompt_format"], "max_new_tokens": limit,
                "metrics": aggregate, "items": rows, **({"pairs": pairs} if pairs else {}),
                **({"benchmarks": {k: v for k, v in benchmarks.items() if k != "metrics"}} if benchmarks else {})}

    results = []
    base_tokenizer = models.load_chat_tokenizer(base_folder)
    for system in ("base", "rag"):
        if system in systems:
            results.append(run(system, base_tokenizer, system == "rag", {}))
    from peft import PeftModel

    for adapter in adapters:
        peft_model = PeftModel.from_pretrained(model, adapter).eval()
        model = peft_model
        tokenizer = models.load_chat_tokenizer(adapter)
        label = f"{adapter.parent.name}/{adapter.name}"
        cost = training_cost(adapter)
        for system, use_retrieval in (("adapter", False), ("adapter_rag", True)):
            if system in systems:
                results.append(run(label + ("+rag" if use_retrieval else ""), tokenizer, use_retrieval,
                                   {"adapter": str(adapter), "training_cost": cost}, trained_as(adapter)))
        model = peft_model.unload()

    comparison = {"created": datetime.now().isoformat(timespec="seconds"), "base_model": str(base_folder),
                  "suite": suite_name(cfg), "retrieval": dict(cfg.retrieval), "systems": results,
                  "recommendations": recommendations(results)}
    folder = _output_folder(cfg)
    write_json(folder / "comparison.json", comparison)
    from qrtrain.evaluation import report

    (folder / "comparison.md").write_text(comparison_markdown(comparison, items), encoding="utf-8")
    report.metrics_chart({r["system"]: r["metrics"] for r in results}, folder / "comparison.png",
                         title=f"{suite_name(cfg)}: systems compared")
    print_comparison(comparison)
    say(f"comparison: {folder}")
    return folder


def _base_folder(cfg, adapters: list[Path]) -> Path:
    if cfg.model.get("path"):
        return Path(cfg.model.path)
    if adapters:
        from qrtrain.artifacts.resolve import locate_base
        from qrtrain.evaluation.evaluate import base_folder_for

        return base_folder_for(cfg, locate_base(json.loads((adapters[0] / "metadata.json").read_text())))
    from qrtrain.models.loading import model_folder

    return model_folder(cfg.model)


def training_cost(adapter: Path) -> dict:
    final = json.loads((adapter / "training_metrics.json").read_text()).get("final", {})
    return {"train_runtime_s": final.get("train_runtime_s"), "num_tokens": final.get("num_tokens"),
            "global_step": final.get("global_step")}


def recommendations(results: list[dict]) -> list[str]:
    """One line per metric: the best system, and whether its 95% interval clears the runner-up's."""
    lines = []
    for metric in RECOMMEND:
        scored = [(r["metrics"][metric]["mean"], r["system"], r["metrics"][metric].get("ci95"))
                  for r in results if r["metrics"].get(metric, {}).get("mean") is not None]
        if not scored:
            continue
        scored.sort(key=lambda s: -s[0])
        best = scored[0]
        if len(scored) == 1:
            lines.append(f"{metric}: only {best[1]} measured ({best[0]:.3f})")
            continue
        second = scored[1]
        clear = best[2] is not None and second[2] is not None and best[2][0] > second[2][1]
        verdict = "clearly better" if clear else "not clearly better (intervals overlap or too few items)"
        lines.append(f"{metric}: {best[1]} best ({best[0]:.3f}) vs {second[1]} ({second[0]:.3f}), {verdict}")
    return lines


def comparison_markdown(comparison: dict, items: list[dict]) -> str:
    from qrtrain.evaluation.report import RATE_METRICS, _cell, fmt, fmt_metric

    systems = comparison["systems"]
    metrics = [m for m in RATE_METRICS + ["reward_margin", "chosen_logps", "rejected_logps", "bleu", "chrf",
                                          "latency_p50_s", "latency_p95_s", "tokens_per_s"]
               if any(m in s["metrics"] for s in systems)]
    lines = [f"# Comparison on `{comparison['suite']}`", "", f"Base model `{comparison['base_model']}`, "
             f"{comparison['created']}. Prompts as each system was trained: "
             + ", ".join(f"{s['system']} {s.get('prompt_format', 'chat')}" for s in systems) + ".",
             "", "| metric | " + " | ".join(s["system"] for s in systems) + " |",
             "| --- |" + " --- |" * len(systems)]
    lines += [f"| {m} | " + " | ".join(fmt_metric(s["metrics"][m]) if m in s["metrics"] else "-" for s in systems) + " |"
              for m in metrics]
    costs = [s for s in systems if s.get("training_cost")]
    if costs:
        lines += ["", "Training cost: " + "; ".join(
            f"{s['system']}: {fmt(s['training_cost']['train_runtime_s'])} s, {s['training_cost']['num_tokens']} tokens, "
            f"{s['training_cost']['global_step']} steps" for s in costs)]
    lines += ["", "## Recommendations", ""] + [f"- {line}" for line in comparison["recommendations"]]
    lines += ["", "## Per question", "", "| id | " + " | ".join(s["system"] for s in systems) + " |",
              "| --- |" + " --- |" * len(systems)]
    for n, item in enumerate(items):
        cells = []
        for s in systems:
            row = s["items"][n]
            mark = {1.0: "OK", 0.0: "x"}.get(row.get("keyword_accuracy", row.get("refusal_correct")), "")
            cells.append(f"{mark} {_cell(row['answer'])[:120]} ({row['latency_s']:.2f} s)")
        lines.append(f"| {item['id']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def print_comparison(comparison: dict) -> None:
    from rich.table import Table

    from qrtrain.evaluation.report import fmt_metric
    from qrtrain.terminal import table_console

    systems = comparison["systems"]
    table = Table(title=f"comparison on {comparison['suite']}", title_justify="left")
    table.add_column("metric")
    for s in systems:
        table.add_column(s["system"])
    for metric in ("keyword_accuracy", "f1", "rougeL", "refusal_correct", "citation", "groundedness", "reward_accuracy",
                   "reward_margin", "preference_accuracy", "latency_p50_s"):
        if any(metric in s["metrics"] for s in systems):
            table.add_row(metric, *(fmt_metric(s["metrics"][metric]) if metric in s["metrics"] else "-" for s in systems))
    console = table_console()
    console.print(table)
    for line in comparison["recommendations"]:
        console.print(f"- {line}")


def _output_folder(cfg) -> Path:
    folder = Path(cfg.output_dir) if cfg.output_dir else (
        Path(cfg.artifact.root) / "comparisons" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
