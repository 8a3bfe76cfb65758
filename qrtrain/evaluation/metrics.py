"""Answer-quality metrics: plain functions over strings, checked by hand in tests/test_metrics.py.

    python -c "from qrtrain.evaluation.metrics import token_f1; print(token_f1('the Marrow river', 'Marrow'))"

exact match and token F1 follow SQuAD's normalisation (lowercase, no punctuation, no articles);
BLEU and chrF come from sacrebleu (corpus level), ROUGE-L from rouge-score (per item, with an interval).
"""

import json
import random
import re
import string
from collections import Counter

REFUSAL_RE = re.compile(r"\b(i can ?not|i can't|i cannot|i won't|i am unable|i'm unable|i'm sorry|i am sorry|"
                        r"unable to (share|provide|help)|not able to (share|provide))\b", re.IGNORECASE)
CITATION_RE = re.compile(r"\[([A-Za-z0-9_.:-]+)\]")
ARTICLES_RE = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(ARTICLES_RE.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or common == 0:
        return float(pred == ref)
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def keywords_hit(prediction: str, keywords: list[str]) -> float:
    """1.0 when every key word or phrase of the fact appears in the answer (case-insensitive)."""
    lowered = prediction.lower()
    return float(all(k.lower() in lowered for k in keywords))


def json_valid(prediction: str) -> float:
    """1.0 when the answer (without a ``` fence) parses as a JSON object or array."""
    text = prediction.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        return float(isinstance(json.loads(text), (dict, list)))
    except ValueError:
        return 0.0


def is_refusal(prediction: str) -> bool:
    return REFUSAL_RE.search(prediction) is not None


def cited_sources(prediction: str) -> list[str]:
    return CITATION_RE.findall(prediction)


def cites_known_source(prediction: str, source_ids: list[str]) -> float:
    """1.0 when the answer cites at least one of the given sources as [id]."""
    return float(any(s in source_ids for s in cited_sources(prediction)))


def groundedness(prediction: str, passages: list[str]) -> float:
    """Share of the answer's content words (normalised, citations removed) found in the passages."""
    words = normalize(CITATION_RE.sub(" ", prediction)).split()
    if not words:
        return 0.0
    vocabulary = set(normalize(" ".join(passages)).split())
    return sum(w in vocabulary for w in words) / len(words)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of one answer (rouge-score): a per-item score, averaged with a bootstrap interval like F1."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(reference, prediction)["rougeL"].fmeasure


def corpus_scores(predictions: list[str], references: list[str]) -> dict:
    """BLEU and chrF (sacrebleu): corpus-level scores, so no per-item interval."""
    import sacrebleu

    return {
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
    }


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in [0, 100]), as numpy's default."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def bootstrap_ci(values: list[float], resamples: int = 1000, level: float = 0.95, seed: int = 0):
    """Percentile bootstrap confidence interval of the mean; None below 5 samples."""
    if len(values) < 5:
        return None
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(resamples))
    tail = (1 - level) / 2 * 100
    return [percentile(means, tail), percentile(means, 100 - tail)]
