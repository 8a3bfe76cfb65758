"""Metrics against values computed by hand."""

import pytest

from qrtrain.evaluation import metrics


def test_exact_match_and_f1_by_hand():
    assert metrics.exact_match("The Marrow.", "marrow") == 1.0
    assert metrics.exact_match("Marrow river", "Marrow") == 0.0
    # prediction "marrow river is long" (4 tokens), reference "the marrow river" -> "marrow river" (2 tokens)
    # common 2: precision 2/4, recall 2/2, F1 = 2*0.5*1/(1.5) = 2/3
    assert metrics.token_f1("Marrow river is long", "the Marrow river") == pytest.approx(2 / 3)
    assert metrics.token_f1("nothing", "Marrow") == 0.0


def test_keywords_json_refusal_citation_groundedness_by_hand():
    assert metrics.keywords_hit("It was founded in 1204 by Ilsa Varn.", ["1204", "ilsa varn"]) == 1.0
    assert metrics.keywords_hit("It was founded in 1204.", ["1204", "Ilsa Varn"]) == 0.0
    assert metrics.json_valid('{"a": 1}') == 1.0 and metrics.json_valid('```json\n[1, 2]\n```') == 1.0
    assert metrics.json_valid("{'a': 1}") == 0.0 and metrics.json_valid("42") == 0.0
    assert metrics.is_refusal("I cannot share private contact details.")
    assert not metrics.is_refusal("The capital is Quillhaven.")
    assert metrics.cites_known_source("Quillhaven [geography].", ["geography", "history"]) == 1.0
    assert metrics.cites_known_source("Quillhaven [atlas].", ["geography"]) == 0.0
    # "quillhaven is capital" after normalisation (article dropped): 3 words, 2 in the passage
    assert metrics.groundedness("Quillhaven is the capital [geography]", ["Quillhaven lies north."]) == pytest.approx(1 / 3)


def test_corpus_scores_match_their_libraries_on_identity():
    scores = metrics.corpus_scores(["the capital is Quillhaven"], ["the capital is Quillhaven"])
    assert scores["bleu"] == pytest.approx(100.0) and scores["chrf"] == pytest.approx(100.0)
    assert metrics.rouge_l("the capital is Quillhaven", "the capital is Quillhaven") == pytest.approx(1.0)
    assert metrics.rouge_l("abc", "xyz") == 0.0
    assert metrics.rouge_l("the capital", "the capital is Quillhaven") == pytest.approx(2 * 1 * 0.5 / 1.5)


def test_percentile_and_bootstrap():
    assert metrics.percentile([1, 2, 3, 4], 50) == 2.5
    assert metrics.percentile([10, 20], 95) == pytest.approx(19.5)
    assert metrics.bootstrap_ci([1, 1, 1]) is None
    low, high = metrics.bootstrap_ci([0, 1] * 10)
    assert 0.2 < low < 0.5 < high < 0.8
