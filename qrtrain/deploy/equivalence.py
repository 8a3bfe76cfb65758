"""The checks before traffic: a smoke completion, then the equivalence gate, both through the engine's own
OpenAI-compatible API.

    qrtrain evaluate outputs/NAME/v1                     # what the gate compares against
    qrtrain deploy NAME/v1 --name support                # runs both checks before routing traffic

The gate answers the questions of the version's newest `qrtrain evaluate` report through the live engine,
greedily, with the report's prompts (the same rendering: chat turns to /v1/chat/completions, raw prompts to
/v1/completions) and answer limit, scores the answers as evaluate does, and compares:
- answer agreement: the share of questions whose answer is exactly the recorded one (greedy decoding of
  the same weights gives the same text): at least MIN_AGREEMENT;
- every per-question metric both have (keyword accuracy, F1, ROUGE-L, ...): the mean within
  MAX_METRIC_DELTA of the recorded mean.
A wrong chat template, a missing stop token or a lossy export changes the answers, and fails the gate.
"""

import time
from pathlib import Path

from qrtrain.errors import QrtrainError

MIN_AGREEMENT = 0.9      # share of answers identical to `qrtrain evaluate`'s (CPU float32 gives 1.0)
MAX_METRIC_DELTA = 0.05  # |endpoint mean - recorded mean| for each per-question metric
PER_ITEM = ("keyword_accuracy", "exact_match", "f1", "rougeL", "json_valid", "refusal_correct", "citation",
            "groundedness")
SMOKE_PROMPT = "Say hello in one short sentence."


def ask(client, model_id: str, prompt, max_tokens: int) -> dict:
    """One greedy answer from the engine: {answer, latency_s, new_tokens, stopped, batch}."""
    began = time.perf_counter()
    if isinstance(prompt, str):
        body = {"model": model_id, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        response = client.post("/v1/completions", json=body)
    else:
        body = {"model": model_id, "messages": prompt, "max_tokens": max_tokens, "temperature": 0}
        response = client.post("/v1/chat/completions", json=body)
    latency = time.perf_counter() - began
    if response.status_code != 200:
        raise QrtrainError(f"the engine answered {response.status_code} to a request: {response.text[:300]}",
                           exit_code=1)
    choice = response.json()["choices"][0]
    text = choice["text"] if isinstance(prompt, str) else (choice.get("message") or {}).get("content") or ""
    usage = response.json().get("usage") or {}
    return {"answer": text.strip(), "latency_s": latency, "new_tokens": usage.get("completion_tokens") or 0,
            "stopped": choice.get("finish_reason") == "stop", "batch": None}


def smoke(url: str, model_id: str, chat: bool) -> dict:
    """One short completion must come back with text (exit 1 otherwise)."""
    import httpx

    with httpx.Client(base_url=url, timeout=120) as client:
        try:
            answer = ask(client, model_id, [{"role": "user", "content": SMOKE_PROMPT}] if chat else SMOKE_PROMPT, 16)
        except httpx.HTTPError as error:
            raise QrtrainError(f"smoke completion: no answer from the engine ({error})", exit_code=1) from None
    if not answer["answer"] and not answer["new_tokens"]:
        raise QrtrainError("smoke completion: the engine answered with no tokens", exit_code=1)
    return {"prompt": SMOKE_PROMPT, "answer": answer["answer"][:200], "latency_s": round(answer["latency_s"], 3)}


def recorded_report(version: Path, evaluate_if_missing: bool = True) -> tuple[dict, Path]:
    """(the version's newest evaluate report that names its questions file, its path); without one, the
    version is evaluated now on its held-out split (eval_split.jsonl) or the default suite."""
    from qrtrain.files import read_json

    for path in sorted((version.parent / "evaluations").glob(f"{version.name}-*/report.json"),
                       key=lambda p: p.stat().st_mtime, reverse=True):
        report, problem = read_json(path)
        if (not problem and Path(str(report.get("target"))).name == version.name
                and Path(str(report.get("questions") or "")).is_file()):
            return report, path
    if not evaluate_if_missing:
        raise QrtrainError(f"{version} has no `qrtrain evaluate` report to compare against; run "
                           f"`qrtrain evaluate {version}` first")
    from qrtrain.evaluation.evaluate import evaluate
    from qrtrain.terminal import say

    split = version / "eval_split.jsonl"
    overrides = [f"evaluation.questions={split}"] if split.is_file() else []
    say(f"{version} has no evaluation report: evaluating it first ({split.name if overrides else 'default suite'})")
    written = evaluate(version, overrides) / "report.json"
    report, problem = read_json(written)
    if problem:
        raise QrtrainError(f"the evaluation of {version} wrote no readable report ({problem})", exit_code=1)
    return report, written


def equivalence_gate(url: str, model_id: str, report: dict, report_path: Path, min_agreement: float) -> dict:
    """Answer the report's questions through the engine and compare; the figures, with `passed`."""
    import httpx

    from qrtrain.evaluation.evaluate import load_items, score, with_context

    items = load_items(Path(report["questions"]), report.get("prompt_format", "chat"))
    recorded = {row["id"]: row for row in report.get("items", [])}
    if [i["id"] for i in items] != list(recorded):
        raise QrtrainError(f"{report['questions']} no longer holds the questions of {report_path}; evaluate the "
                           "version again (`qrtrain evaluate VERSION`) and deploy", exit_code=2)
    prompts = [with_context(i["prompt"], i["context"]) for i in items]
    with httpx.Client(base_url=url, timeout=300) as client:
        try:
            answers = [ask(client, model_id, p, int(report["max_new_tokens"])) for p in prompts]
        except httpx.HTTPError as error:
            raise QrtrainError(f"equivalence gate: the engine stopped answering ({error})", exit_code=1) from None
    aggregate, rows = score(items, answers, [i["context"] for i in items])
    same = [row["answer"] == recorded[row["id"]]["answer"] for row in rows]
    metrics = {}
    for key in PER_ITEM:
        if key in aggregate and key in report.get("metrics", {}):
            live, then = aggregate[key]["mean"], report["metrics"][key]["mean"]
            metrics[key] = {"recorded": round(then, 4), "endpoint": round(live, 4), "delta": round(live - then, 4),
                            "passed": abs(live - then) <= MAX_METRIC_DELTA}
    agreement = sum(same) / len(same)
    differing = [{"id": row["id"], "recorded": recorded[row["id"]]["answer"][:160], "endpoint": row["answer"][:160]}
                 for row, equal in zip(rows, same) if not equal]
    return {"report": str(report_path), "questions": report["questions"], "n": len(items),
            "answer_agreement": round(agreement, 4), "min_agreement": min_agreement,
            "max_metric_delta": MAX_METRIC_DELTA, "metrics": metrics, "differing": differing[:5],
            "passed": agreement >= min_agreement and all(m["passed"] for m in metrics.values())}


def gate_failure(figures: dict) -> str:
    """The gate's verdict in words, naming what failed."""
    failed = [f"answer agreement {figures['answer_agreement']:.3f} < {figures['min_agreement']}"] \
        if figures["answer_agreement"] < figures["min_agreement"] else []
    failed += [f"{key} {m['endpoint']:.3f} vs recorded {m['recorded']:.3f} (|delta| > {MAX_METRIC_DELTA})"
               for key, m in figures["metrics"].items() if not m["passed"]]
    example = figures["differing"][0] if figures["differing"] else None
    shown = f"; e.g. {example['id']}: recorded {example['recorded']!r}, endpoint {example['endpoint']!r}" if example else ""
    return (f"equivalence gate failed on {figures['n']} questions of {figures['questions']}: " + "; ".join(failed)
            + shown + " (a wrong chat template, a missing stop token or a lossy export changes answers)")
