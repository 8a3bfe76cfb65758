"""`qrtrain synth` on the tiny model: both modes write files that `qrtrain train` accepts, the provenance is
complete and its hashes match, the same seed gives the same bytes, and bad input exits 2 writing nothing.

    .venv/bin/pytest tests/synth/test_synth.py

The tiny model's words are random, so these runs loosen the filter (the rules have their own tests).
"""

import hashlib
import json

import pytest

from tests.conftest import invoke

LOOSE = ["model=tiny", "filter.drop_truncated=false", "filter.require_question=false", "filter.min_words=1", "filter.max_words=1000",
         "filter.groundedness=0", "filter.duplicate_similarity=1.0", "synth.max_new_tokens=12",
         "synth.questions_per_passage=2", "synth.answer_temperature=0.8"]
TEMPLATES = ('synth.templates=[{prompt: "Tell me about {place} in {season}.", '
             'slots: {place: [Quillhaven, Brenna, Calder], season: [spring, winter]}}]')


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_documents_mode_writes_data_that_train_accepts_with_provenance(tmp_path, model_cache):
    out = tmp_path / "synth"
    result = invoke("synth", *LOOSE, f"synth.output={out}", "synth.system_prompt=About Veloria.")
    assert result.exit_code == 0, result.output
    train, held_out = rows(out / "train.jsonl"), rows(out / "eval.jsonl")
    provenance = json.loads((out / "synth_provenance.json").read_text())
    assert provenance["counts"]["generated"] == len(train) + len(held_out) == provenance["counts"]["kept"]
    assert len(held_out) == round(provenance["counts"]["kept"] * 0.2)
    assert all(r["messages"][0] == {"role": "system", "content": "About Veloria."} for r in train + held_out)
    assert all(r["messages"][-1]["role"] == "assistant" and "#" in r["source"] for r in train)
    assert all(r["messages"][-1] == {"role": "assistant", "content": r["answer"]} for r in held_out)
    assert provenance["outputs"] == {"train.jsonl": sha256(out / "train.jsonl"), "eval.jsonl": sha256(out / "eval.jsonl")}
    generator = provenance["generator"]
    from qrtrain.models.loading import model_folder
    from tests.conftest import compose_cfg

    folder = model_folder(compose_cfg().model)
    assert generator["files"] and all(sha256(folder / name) == digest for name, digest in generator["files"].items())
    assert provenance["corpus"]["sha256"] and provenance["sampling"]["seed"] == 0
    assert set(provenance["filter"]) >= {"groundedness", "duplicate_similarity", "min_words", "max_words"}
    assert set(provenance["counts"]["dropped"]) == {"empty", "truncated", "refusal", "meta_text", "not_a_question", "length",
                                                   "invalid_json", "ungrounded", "duplicate"}
    assert "{passage}" in provenance["prompts"]["question"]

    trained = invoke("train", "model=tiny", "training.max_steps=2", f"data.train={out / 'train.jsonl'}",
                     f"data.eval={out / 'eval.jsonl'}", f"artifact.root={tmp_path / 'outputs'}")
    assert trained.exit_code == 0, trained.output
    metadata = json.loads((tmp_path / "outputs" / "tiny-train-dialogue" / "v1" / "metadata.json").read_text())
    train_source = next(d for d in metadata["datasets"] if d["role"] == "train")
    assert train_source["synth_provenance"]["outputs"]["train.jsonl"] == train_source["sha256"]


def test_templates_mode_fills_every_combination(tmp_path, model_cache):
    out = tmp_path / "synth"
    result = invoke("synth", *LOOSE, "synth.mode=templates", TEMPLATES, "synth.eval_fraction=0", f"synth.output={out}")
    assert result.exit_code == 0, result.output
    train = rows(out / "train.jsonl")
    prompts = sorted(r["messages"][0]["content"] for r in train)
    assert len(prompts) == 6 and prompts[0] == "Tell me about Brenna in spring."
    assert rows(out / "eval.jsonl") == []
    trained = invoke("train", "model=tiny", "model_type=dialogue", "training.max_steps=1", "data.eval_fraction=0",
                     f"data.train={out / 'train.jsonl'}", f"artifact.root={tmp_path / 'outputs'}")
    assert trained.exit_code == 0, trained.output


def test_the_same_seed_gives_the_same_output(tmp_path, model_cache):
    outputs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert invoke("synth", *LOOSE, f"synth.seed={seed}", f"synth.output={tmp_path / name}").exit_code == 0
        outputs.append((tmp_path / name / "train.jsonl").read_bytes() + (tmp_path / name / "eval.jsonl").read_bytes())
    assert outputs[0] == outputs[1] != outputs[2]


@pytest.mark.parametrize("extra, message", [
    (["synth.corpus={empty}"], "no non-empty .txt or .md files"),
    (["synth.corpus={tmp}/none.jsonl"], "no such file or folder"),
    (["synth.mode=templates", 'synth.templates=[{prompt: "About {place} and {time}.", slots: {place: [a]}}]'],
     "uses {time}, which synth.templates[0].slots does not define"),
    (["synth.mode=templates"], "needs synth.templates"),
    (["model.path={tmp}/no-model"], "no-model"),
    (["synth.output={existing}"], "already exists"),
    (["filter.groundedness=1.0", "filter.min_words=50"], "the filter dropped all"),
    (["synth.temperature=0"], "synth.temperature=0"),
    (["synth.mode=other"], "synth.mode=other"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, model_cache, extra, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "keep.txt").write_text("mine")
    out = tmp_path / "out"
    places = {"{empty}": tmp_path / "empty", "{tmp}": tmp_path, "{existing}": tmp_path / "existing"}
    args = []
    for arg in extra:
        for key, value in places.items():
            arg = arg.replace(key, str(value))
        args.append(arg)
    result = invoke("synth", *LOOSE, f"synth.output={out}", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    assert (tmp_path / "existing" / "keep.txt").read_text() == "mine"
