"""Evaluate an artifact (or a plain model) on an evaluation suite: loss, perplexity and answer quality.

    qrtrain evaluate outputs/smollm2-135m-instruct-dialogue/v1
    qrtrain evaluate outputs/NAME/v1 evaluation.questions=my_questions.jsonl generation.batch_size=16
    qrtrain evaluate outputs/NAME/v1 benchmarks.tasks=[mmlu,gsm8k]   # lm-eval beside the suite

Items (JSONL/JSON/Parquet) hold `messages` (a trailing assistant turn is the reference) or
`question`; optional `answer`, `keywords`, `expect_json`, `should_refuse`, `context`
([{id, text}] passages put in the prompt, answers asked to cite them as [id]).
Reports go to an `evaluations/` folder beside the artifact's versions, never inside one.
"""

import json
import time
from datetime import datetime
from pathlib import Path

from qrtrain.artifacts.resolve import resolve_target
from qrtrain.data.rows import DEMO_DIR, message_text, read_rows, row_format, row_problem, to_training_row
from qrtrain.errors import QrtrainError
from qrtrain.files import write_json

CITE_INSTRUCTION = "Answer from the sources and end with the id of the source you used, like [{example}]."


def load_items(path: Path, prompt_format: str = "chat") -> list[dict]:
    """Evaluation items with a prompt as the adapter was trained on it (a conversation for chat, a string
    for alpaca, prompt-completion and text); refuses a set with none usable."""
    items, problems = [], []
    folder = Path(path).parent
    for where, row in read_rows(Path(path)):
        item = to_item(row, len(items), prompt_format)
        if isinstance(item, dict) and row.get("images"):
            from qrtrain.data.rows import multimodal_row

            item["images"] = multimodal_row(row, where, folder)["images"]
        if isinstance(item, str):
            problems.append(f"{where}: {item}")
        else:
            items.append(item)
    if not items:
        detail = ("; e.g. " + problems[0]) if problems else ""
        raise QrtrainError(f"{path}: no usable evaluation items (each needs `messages` with a user turn, "
                           f"or `question`){detail}")
    return items


def to_item(row, index: int, prompt_format: str = "chat"):
    if not isinstance(row, dict):
        return "expected a JSON object"
    kind = row_format(row)
    if kind in ("alpaca", "prompt_completion") and row_problem(row) is None:  # the training formats, as trained
        row = {**row, **to_training_row(row, "dialogue" if prompt_format == "chat" else "standard", "")}
    if isinstance(row.get("prompt"), str) and prompt_format != "chat":
        prompt, reference = row["prompt"], row.get("completion")
    elif isinstance(row.get("messages"), list) and row["messages"]:
        messages = [m for m in row["messages"] if isinstance(m, dict) and isinstance(m.get("content"), (str, list))]
        reference = None
        if messages and messages[-1].get("role") == "assistant":
            reference = message_text(messages[-1])
            messages = messages[:-1]
        if not any(m.get("role") == "user" for m in messages):
            return "`messages` has no user turn"
        prompt = [{"role": m["role"], "content": m["content"]} for m in messages]
    elif isinstance(row.get("question"), str) and row["question"].strip():
        prompt = ([{"role": "system", "content": row["system"]}] if isinstance(row.get("system"), str) else [])
        prompt.append({"role": "user", "content": row["question"]})
        reference = None
    else:
        return "needs `messages`, `question`, `prompt`/`completion` or `instruction`/`output`"
    if prompt_format != "chat" and not isinstance(prompt, str):  # a question for an adapter trained on prompts
        question = message_text(next(m for m in reversed(prompt) if m["role"] == "user"))
        prompt = f"### Instruction:\n{question}\n\n### Response:\n" if prompt_format == "alpaca" else question
    reference = row.get("answer", reference)
    context = row.get("context") or []
    if not (isinstance(context, list) and all(isinstance(c, dict) and "id" in c and "text" in c for c in context)):
        return "`context` must be a list of {id, text} passages"
    return {
        "id": str(row.get("id", f"item-{index + 1}")),
        "prompt": prompt,
        "reference": reference if isinstance(reference, str) else None,
        "keywords": row.get("keywords") if isinstance(row.get("keywords"), list) else None,
        "expect_json": bool(row.get("expect_json", False)),
        "should_refuse": bool(row.get("should_refuse", False)),
        "source": row.get("source"),
        "context": context,
        "images": None,
    }


def with_context(prompt: list[dict] | str, passages: list[dict]) -> list[dict] | str:
    """The prompt with the passages in its system message, asking for a citation; the question unchanged."""
    if not passages:
        return prompt
    sources = "\n".join(f"[{p['id']}] {p['text']}" for p in passages)
    instruction = CITE_INSTRUCTION.format(example=passages[0]["id"])
    if isinstance(prompt, str):  # a raw prompt (an adapter trained on prompts): the sources come first
        return f"Sources:\n{sources}\n\n{instruction}\n\n{prompt}"
    if prompt and prompt[0]["role"] == "system":
        system, rest = prompt[0]["content"] + "\n\n", prompt[1:]
    else:
        system, rest = "", prompt
    return [{"role": "system", "content": f"{system}Sources:\n{sources}\n\n{instruction}"}] + rest


def score(items: list[dict], answers: list[dict], passages: list[list[dict]]) -> tuple[dict, list[dict]]:
    """(aggregate metrics, per-item rows) for the answers, each metric where the items support it."""
    from qrtrain.evaluation import metrics

    rows, per_metric = [], {}
    for item, answer, used in zip(items, answers, passages):
        text = answer["answer"]
        row = {"id": item["id"], "question": (item["prompt"] if isinstance(item["prompt"], str) else message_text(item["prompt"][-1]))[-300:], "answer": text,
               "reference": item["reference"], "latency_s": answer["latency_s"]}
        if used:
            row["passages"] = [p["id"] for p in used]
        if item["reference"] is not None and not item["should_refuse"]:
            row["exact_match"] = metrics.exact_match(text, item["reference"])
            row["f1"] = metrics.token_f1(text, item["reference"])
            row["rougeL"] = metrics.rouge_l(text, item["reference"])
        if item["keywords"]:
            row["keyword_accuracy"] = metrics.keywords_hit(text, item["keywords"])
        if item["expect_json"]:
            row["json_valid"] = metrics.json_valid(text)
        if item["should_refuse"]:
            row["refusal_correct"] = float(metrics.is_refusal(text))
        if used:
            row["citation"] = metrics.cites_known_source(text, [p["id"] for p in used])
            row["groundedness"] = metrics.groundedness(text, [p["text"] for p in used])
        rows.append(row)
        for key in ("exact_match", "f1", "rougeL", "keyword_accuracy", "json_valid", "refusal_correct", "citation",
                    "groundedness"):
            if key in row:
                per_metric.setdefault(key, []).append(row[key])
    aggregate = {key: {"mean": metrics.mean(values), "ci95": metrics.bootstrap_ci(values), "n": len(values)}
                 for key, values in per_metric.items()}
    scored = [(a["answer"], i["reference"]) for a, i in zip(answers, items) if i["reference"] and not i["should_refuse"]]
    if scored:
        aggregate.update({k: {"mean": v, "ci95": None, "n": len(scored)}
                          for k, v in metrics.corpus_scores(*map(list, zip(*scored))).items()})
    latencies = [a["latency_s"] for a in answers]
    aggregate["latency_p50_s"] = {"mean": metrics.percentile(latencies, 50), "ci95": None, "n": len(latencies)}
    aggregate["latency_p95_s"] = {"mean": metrics.percentile(latencies, 95), "ci95": None, "n": len(latencies)}
    aggregate["tokens_per_s"] = {"mean": sum(a["new_tokens"] for a in answers) / max(_batch_time(answers), 1e-9),
                                 "ci95": None, "n": len(answers)}
    return aggregate, rows


def _batch_time(answers: list[dict]) -> float:
    """Generation wall time: each batch's latency counted once (the answers of a batch share it)."""
    return sum({a.get("batch", i): a["latency_s"] for i, a in enumerate(answers)}.values())


def base_folder_for(cfg, recorded: Path) -> Path:
    folder = Path(cfg.model.path) if cfg.model.get("path") else recorded
    if not (folder / "config.json").is_file():
        raise QrtrainError(f"base model folder {folder} is missing; pass model.path=FOLDER with the base model "
                           "(the artifact's metadata.json names the one it was trained on)")
    return folder


def suite_path(cfg, model_type: str = "dialogue") -> Path:
    """The question file of the suite: evaluation.questions, else the shipped demo questions."""
    demo = "shapes_heldout.jsonl" if model_type == "multimodal" else "qa_heldout.jsonl"
    return Path(cfg.evaluation.questions) if cfg.evaluation.questions else DEMO_DIR / demo


def suite_items(cfg, model_type: str = "dialogue", prompt_format: str = "chat") -> list[dict]:
    return load_items(suite_path(cfg, model_type), prompt_format)


def suite_name(cfg) -> str:
    """The report's label: the suite's name, or the question file's name when one is given."""
    return Path(cfg.evaluation.questions).stem if cfg.evaluation.questions else cfg.evaluation.name


def trained_as(artifact: Path | None) -> dict:
    """What evaluation repeats of training: model_type, prompt format, max_length (from the version's files)."""
    if artifact is None:
        return {"model_type": "dialogue", "prompt_format": "chat", "max_length": None, "method": "sft",
                "beta": 0.1, "parent": None, "parent_label": None, "datasets": []}
    metadata = json.loads((artifact / "metadata.json").read_text())
    method = metadata.get("method") or {"name": "sft"}
    parent = metadata.get("parent")
    parent_folder = artifact.parent.parent / parent["name"] / parent["version"] if parent else None
    formats = [d.get("format") for d in metadata.get("datasets", []) if d.get("role") == "train"]
    max_length = None
    if (artifact / "training_config.yaml").is_file():
        from omegaconf import OmegaConf

        max_length = OmegaConf.load(artifact / "training_config.yaml").get("training", {}).get("max_length")
    return {"model_type": metadata["model_type"], "prompt_format": formats[0] if formats and formats[0] else "chat",
            "max_length": max_length, "method": method.get("name", "sft"), "beta": method.get("beta", 0.1),
            "parent": parent_folder if parent_folder is not None and parent_folder.is_dir() else None,
            "parent_label": f"{parent['name']}/{parent['version']}" if parent else None,
            "datasets": metadata.get("datasets", [])}


def evaluate(target: Path, overrides: list[str]) -> Path:
    """Verify, load, measure, report; returns the evaluation folder."""
    from qrtrain.config import compose

    cfg = compose(overrides, config_name="evaluate")
    from qrtrain.evaluation.benchmarks import run_benchmarks, task_manager

    tasks = task_manager(cfg)
    artifact, recorded_base = resolve_target(target)
    trained = trained_as(artifact)
    items = suite_items(cfg, trained["model_type"], trained["prompt_format"])
    suite = suite_name(cfg)

    from qrtrain.evaluation import report
    from qrtrain.models import generation
    from qrtrain.models import loading as models
    from qrtrain.models.threads import set_cpu_threads
    from qrtrain.terminal import quiet_libraries, say

    quiet_libraries()
    base = base_folder_for(cfg, recorded_base)
    device = models.resolve_device(cfg.device)
    threads = set_cpu_threads(cfg.threads)
    dtype = models.compute_dtype(cfg.dtype, device)
    model = models.load_model_for_inference(base, device, dtype)
    if artifact is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, artifact).eval()
    tokenizer = models.load_chat_tokenizer(artifact or base, vision=models.is_vision_language(base))
    say(f"evaluating {artifact or base} on {len(items)} items ({suite}, prompts as trained: "
        f"{trained['prompt_format']}) on {device} ({threads} CPU threads)")

    prompts = [with_context(i["prompt"], i["context"]) for i in items]
    images = [i["images"] for i in items]
    referenced = [(p, i["reference"], i["images"]) for p, i in zip(prompts, items) if i["reference"]]
    started = time.time()
    loss = generation.answer_loss(model, tokenizer, [(p, r) for p, r, _ in referenced], [im for _, _, im in referenced],
                                  max_length=trained["max_length"])
    max_new_tokens = generation.answer_limit(cfg.generation.max_new_tokens, tokenizer, [r for _, r, _ in referenced])
    answers = generation.generate_answers(model, tokenizer, prompts, cfg.generation.batch_size,
                                          max_new_tokens, cfg.generation.seed, images)
    aggregate, rows = score(items, answers, [i["context"] for i in items])
    aggregate["loss"] = {"mean": loss["loss"], "ci95": None, "n": loss["tokens"]}
    aggregate["perplexity"] = {"mean": loss["perplexity"], "ci95": None, "n": loss["tokens"]}
    pairs = preference_section(cfg, trained, artifact, model, tokenizer, aggregate)
    aggregate["peak_memory_mb"] = {"mean": generation.peak_memory_mb(device), "ci95": None, "n": 1}
    del model  # lm-eval loads its own copy (the base with the adapter applied)
    benchmarks = run_benchmarks(cfg, tasks, base, artifact, device, dtype)
    if benchmarks is not None:
        aggregate.update(benchmarks["metrics"])

    result = {"target": str(artifact or base), "base_model": str(base), "suite": suite,
              "questions": str(suite_path(cfg, trained["model_type"]).resolve()),
              "prompt_format": trained["prompt_format"], "max_new_tokens": max_new_tokens,
              "created": datetime.now().isoformat(timespec="seconds"), "device": device,
              "seconds": round(time.time() - started, 2), "metrics": aggregate, "items": rows}
    if pairs is not None:
        result["pairs"] = pairs
    if benchmarks is not None:
        result["benchmarks"] = {k: v for k, v in benchmarks.items() if k != "metrics"}
    folder = output_folder(cfg, artifact, base, suite)
    write_json(folder / "report.json", result)
    (folder / "report.md").write_text(report.evaluation_markdown(result), encoding="utf-8")
    report.metrics_chart({result["target"]: aggregate}, folder / "metrics.png")
    if artifact is not None:
        report.loss_curve(artifact / "training_metrics.json", folder / "training_loss.png")
    report.print_evaluation(result)
    say(f"report: {folder}")
    return folder


def preference_section(cfg, trained: dict, artifact: Path | None, model, tokenizer, aggregate: dict) -> dict | None:
    """Reward accuracy, margin and log-probabilities on held-out pairs (qrtrain/evaluation/preference.py),
    added to `aggregate`; the pairs' file, the reference used and one row per pair, or None without pairs."""
    from qrtrain.evaluation.preference import load_pairs, pairs_for, preference_metrics
    from qrtrain.terminal import say

    path = pairs_for(cfg, trained, artifact)
    if path is None:
        return None
    pairs = load_pairs(path, trained["model_type"])
    if trained["parent_label"] and trained["parent"] is None:
        say(f"the parent {trained['parent_label']} is not here: rewards are measured against the base")
    reference = (f"parent {trained['parent_label']}" if trained["parent"] is not None else "base") \
        if artifact is not None else None
    metrics, rows = preference_metrics(model, tokenizer, pairs, trained["beta"], artifact is not None,
                                       trained["parent"], trained["max_length"])
    aggregate.update(metrics)
    return {"path": str(path), "reference": reference, "beta": trained["beta"], "rows": rows}


def output_folder(cfg, artifact: Path | None, base: Path, suite: str) -> Path:
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    if cfg.output_dir:
        folder = Path(cfg.output_dir)
    elif artifact is not None:
        folder = artifact.parent / "evaluations" / f"{artifact.name}-{suite}-{stamp}"
    else:
        folder = Path("outputs") / "evaluations" / f"{base.name}-{suite}-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
