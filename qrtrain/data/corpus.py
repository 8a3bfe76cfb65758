"""Documents for retrieval (`qrtrain compare`'s `evaluation.corpus`) and for `qrtrain synth` (`synth.corpus`):
one reader, so both accept the same corpora.

    qrtrain synth synth.corpus=docs/                                  # a folder of .txt/.md files
    qrtrain compare systems=[rag] evaluation.corpus=docs.jsonl        # rows with `text` (and `id`)

A corpus is a folder of .txt/.md files (one document each, its id the path inside the folder), or a
.jsonl/.json/.parquet file (or a `save_to_disk` folder) whose rows have a non-empty `text` and
optionally an `id`.
"""

from pathlib import Path

from qrtrain.errors import QrtrainError

DOCUMENT_SUFFIXES = (".txt", ".md")
CORPUS_HELP = ("a corpus is a folder of .txt/.md files, or a .jsonl/.json/.parquet file whose rows have "
               "a non-empty `text` (and optionally an `id`)")


def read_documents(path: Path, key: str) -> list[dict]:
    """[{id, text}] from a corpus; `key` (e.g. `synth.corpus`) names the setting in every error."""
    from qrtrain.data.rows import read_rows

    path = Path(path)
    if not path.exists():
        raise QrtrainError(f"{key}={path}: no such file or folder; {CORPUS_HELP}")
    if path.is_dir() and not (path / "state.json").exists():
        return _text_files(path, key)
    documents = []
    for i, (where, row) in enumerate(read_rows(path)):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
            raise QrtrainError(f"{key}: {where}: a corpus document needs a non-empty `text` (and optionally an `id`)")
        documents.append({"id": str(row.get("id", f"doc{i + 1}")), "text": row["text"]})
    if not documents:
        raise QrtrainError(f"{key}={path}: the corpus has no documents; {CORPUS_HELP}")
    return documents


def _text_files(folder: Path, key: str) -> list[dict]:
    from qrtrain.files import regular_files

    documents = []
    for file in regular_files(folder):
        if file.suffix.lower() not in DOCUMENT_SUFFIXES:
            continue
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise QrtrainError(f"{key}: {file}: not UTF-8 text (byte {error.start + 1}); save it as UTF-8") from None
        if text.strip():
            documents.append({"id": file.relative_to(folder).as_posix(), "text": text})
    if not documents:
        raise QrtrainError(f"{key}={folder}: no non-empty .txt or .md files in the folder; {CORPUS_HELP}")
    return documents
