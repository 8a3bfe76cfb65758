"""Each rule of the synth quality filter drops the fixture made to break it, and keeps a good one.

    .venv/bin/pytest tests/synth/test_filters.py
"""

import pytest
from omegaconf import OmegaConf

from qrtrain.synth.filters import apply_filter, groundedness, sample_problem

RULES = OmegaConf.create({"drop_truncated": True, "require_question": True, "min_words": 3, "max_words": 20, "groundedness": 0.6,
                          "duplicate_similarity": 0.9})
PASSAGE = "The capital of Veloria is Quillhaven. The longest river of Veloria is the Marrow, which runs 412 kilometres."
GOOD = {"question": "What is the capital of Veloria?", "answer": "The capital of Veloria is Quillhaven.",
        "stopped": True, "passage": PASSAGE}


@pytest.mark.parametrize("change, rule", [
    ({"answer": "  "}, "empty"),
    ({"question": ""}, "empty"),
    ({"stopped": False}, "truncated"),
    ({"answer": "I'm sorry, but I cannot answer that question."}, "refusal"),
    ({"answer": "As an AI language model, Quillhaven is the capital."}, "refusal"),
    # meta-text, one case per phrasing family: announcing the question, labelling it, announcing or labelling
    # the answer, talking about what the question asks, pointing at the passage instead of asking about it
    ({"question": "The question would be: what is the capital of Veloria?"}, "meta_text"),
    ({"question": "A good question would be what the capital of Veloria is?"}, "meta_text"),
    ({"question": "Question: What is the capital of Veloria?"}, "meta_text"),
    ({"question": "Here's a question: what is the capital of Veloria?"}, "meta_text"),
    ({"answer": "The answer to the question would be: Quillhaven is the capital of Veloria."}, "meta_text"),
    ({"answer": "Answer: the capital of Veloria is Quillhaven."}, "meta_text"),
    ({"answer": "The correct answer is: the capital of Veloria is Quillhaven."}, "meta_text"),
    ({"answer": "This question asks about the capital of Veloria, Quillhaven."}, "meta_text"),
    ({"question": "What does the passage say about the capital of Veloria?"}, "meta_text"),
    ({"answer": "According to the passage, the capital of Veloria is Quillhaven."}, "meta_text"),
    ({"answer": "Based on the text, the capital of Veloria is Quillhaven."}, "meta_text"),
    ({"question": "The capital of Veloria is Quillhaven."}, "not_a_question"),
    ({"question": "What is the answer to this: the capital?"}, "not_a_question"),
    ({"answer": "Quillhaven."}, "length"),
    ({"answer": "Quillhaven " * 25}, "length"),
    ({"answer": "The capital of Veloria is Paris, in France, by the Seine."}, "ungrounded"),
    ({"answer": "not json at all", "expect_json": True, "passage": None}, "invalid_json"),
])
def test_each_rule_drops_its_fixture(change, rule):
    assert sample_problem(GOOD, RULES) is None
    assert sample_problem({**GOOD, **change}, RULES) == rule


def test_valid_json_and_untruncated_when_allowed_are_kept():
    assert sample_problem({**GOOD, "answer": '{"capital": "Quillhaven", "river": "Marrow"}', "expect_json": True,
                           "passage": None}, RULES) is None
    loose = OmegaConf.merge(RULES, {"drop_truncated": False})
    assert sample_problem({**GOOD, "stopped": False}, loose) is None


def test_groundedness_is_the_share_of_content_words_in_the_passage():
    assert groundedness("The Marrow runs 412 kilometres.", PASSAGE) == 1.0
    assert groundedness("The Marrow runs 900 miles.", PASSAGE) == 0.5  # marrow, runs: yes; 900, miles: no
    assert groundedness("the of and", PASSAGE) == 0.0


def test_near_duplicate_questions_are_dropped_and_counted():
    samples = [GOOD, {**GOOD, "question": "What's the capital of Veloria?"},
               {**GOOD, "question": "How long is the Marrow river?", "answer": "The Marrow runs 412 kilometres."},
               {**GOOD, "answer": "Sorry, I'm sorry."}]
    kept, dropped = apply_filter(samples, RULES)
    assert [s["question"] for s in kept] == [GOOD["question"], "How long is the Marrow river?"]
    assert dropped == {"empty": 0, "truncated": 0, "refusal": 1, "meta_text": 0, "not_a_question": 0, "length": 0,
                       "invalid_json": 0, "ungrounded": 0, "duplicate": 1}


@pytest.mark.parametrize("question, answer", [
    ("Which question did the council of Quillhaven answer in 1802?", "It answered the question of the river tolls."),
    ("What is the answer key of the Veloria exam called?", "The answer key is called the Marrow sheet."),
    ("How long is the Marrow river?", "The Marrow runs 412 kilometres, the longest river of Veloria."),
])
def test_content_that_mentions_questions_or_answers_is_kept(question, answer):
    passage = PASSAGE + " " + answer
    assert sample_problem({**GOOD, "question": question, "answer": answer, "passage": passage},
                          OmegaConf.merge(RULES, {"require_question": False})) is None
