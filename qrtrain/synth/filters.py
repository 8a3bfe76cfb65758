"""The quality filter of `qrtrain synth`: each rule drops a sample for one named reason, counted.

    qrtrain synth filter.groundedness=0.5 filter.duplicate_similarity=0.95

Rules, in order: `empty` (no question or answer), `truncated` (the answer hit max_new_tokens before its end; filter.drop_truncated),
`refusal` (refusals and assistant boilerplate), `meta_text` (text about the question or answer instead of
the content: "The question would be: ...", "Answer: ...", "According to the passage, ..."), `not_a_question` (documents: a generated question that does
not end with '?', or that talks about "the answer" instead of asking; filter.require_question), `length` (answer words outside [min_words, max_words]),
`invalid_json` (a template with expect_json whose answer does not parse), `ungrounded` (documents: fewer
than `groundedness` of the answer's content words appear in its passage), `duplicate` (a question whose
all-MiniLM-L6-v2 embedding has cosine similarity >= duplicate_similarity with a question kept before).
"""

import json
import re

REFUSAL = re.compile(
    r"\b(i('| a)m sorry|i apologi[sz]e|as an ai|as a language model|i can(no|')t (help|answer|provide)|"
    r"i (do not|don't) (know|have (access|information))|i('| a)m (not able|unable) to|"
    r"the passage does not (say|mention|contain)|sure[,!] here|here is (a|the) (question|answer))\b", re.IGNORECASE)
# Text about the question or the answer instead of the content: a generator that announces ("The question
# would be: ...?"), labels ("Answer: ...") or points at its source ("What does the passage say about ...?").
META_TEXT = re.compile(
    r"^\W*((the|a|one|my|possible|good|sample|example) )?(question|q)( (would|could|might) be| is)?\s*[:\-]"
    r"|\b(the|a|one|my|possible|good) (question|query) (would|could|might) be\b"
    r"|\bhere('s| is) (a|the|my|one) (possible |good )?(question|answer)\b"
    r"|^\W*((the|a|my) )?((possible|correct|right|best) )?answer( to (the|this|your|that) question)?"
    r"( (would|could|might) be| is)?\s*[:\-]"
    r"|\bthe (correct |right |best )?answer to (the|this|your|that) question (would be|is|could be)\b"
    r"|\b(the|this|that) (question|answer) (asks|is asking|refers to|would be)\b"
    r"|\b(what|how|which) does (the|this) (passage|text|context|document) (say|state|mention|tell)\b"
    r"|\baccording to (the|this) (passage|text|context|document)\b"
    r"|\bbased on (the|this) (passage|text|context|document)\b",
    re.IGNORECASE)
STOPWORDS = set("""a an the of in on at to for from by with and or but is are was were be been being it its this that
these those which who whom what when where why how as than then so such not no do does did has have had i you he she
we they them his her their our your my me there here also very can could would should may might will shall one""".split())


def content_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS and (len(w) > 2 or w.isdigit())]


def groundedness(answer: str, passage: str) -> float:
    """Share of the answer's content words (lower-cased, stop words out) that appear in the passage."""
    words = content_words(answer)
    if not words:
        return 0.0
    source = set(content_words(passage))
    return sum(w in source for w in words) / len(words)


def sample_problem(sample: dict, rules) -> str | None:
    """The first rule a sample breaks (its name), or None. `rules` is the `filter` config section."""
    question, answer = sample["question"].strip(), sample["answer"].strip()
    if not question or not answer:
        return "empty"
    if rules.drop_truncated and not sample.get("stopped", True):
        return "truncated"
    if REFUSAL.search(answer) or REFUSAL.search(question):
        return "refusal"
    if META_TEXT.search(question) or META_TEXT.search(answer):
        return "meta_text"
    if rules.require_question and sample.get("passage") is not None and (
            not question.endswith("?") or "answer" in question.lower()):
        return "not_a_question"
    words = len(answer.split())
    if not rules.min_words <= words <= rules.max_words:
        return "length"
    if sample.get("expect_json"):
        try:
            json.loads(answer)
        except ValueError:
            return "invalid_json"
    if sample.get("passage") is not None and groundedness(answer, sample["passage"]) < rules.groundedness:
        return "ungrounded"
    return None


def near_duplicates(questions: list[str], threshold: float) -> list[bool]:
    """For each question, whether it is a near-duplicate of an earlier one that was kept (cosine similarity of
    normalised all-MiniLM-L6-v2 embeddings >= threshold), the same offline model retrieval uses."""
    if not questions:
        return []
    from sentence_transformers import SentenceTransformer

    from qrtrain.evaluation.retrieval import embedding_model_folder

    encoder = SentenceTransformer(str(embedding_model_folder()), device="cpu")
    vectors = encoder.encode(questions, normalize_embeddings=True)
    kept, duplicate = [], []
    for vector in vectors:
        is_duplicate = any(float(vector @ other) >= threshold for other in kept)
        duplicate.append(is_duplicate)
        if not is_duplicate:
            kept.append(vector)
    return duplicate


def apply_filter(samples: list[dict], rules) -> tuple[list[dict], dict]:
    """(kept samples, {reason: dropped count}); every rule's count is present, zero or not."""
    dropped = {reason: 0 for reason in ("empty", "truncated", "refusal", "meta_text", "not_a_question", "length",
                                        "invalid_json", "ungrounded", "duplicate")}
    passing = []
    for sample in samples:
        problem = sample_problem(sample, rules)
        if problem:
            dropped[problem] += 1
        else:
            passing.append(sample)
    kept = []
    for sample, is_duplicate in zip(passing, near_duplicates([s["question"] for s in passing],
                                                             rules.duplicate_similarity)):
        if is_duplicate:
            dropped["duplicate"] += 1
        else:
            kept.append(sample)
    return kept, dropped
