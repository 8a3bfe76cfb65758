"""The provenance statement of a version: an in-toto Statement (v1) with a SLSA Provenance (v1) predicate.

    qrtrain train model=tiny training.max_steps=2 && cat outputs/tiny-dialogue/v1/provenance.intoto.json

Written with every version (`provenance.intoto.json`, listed in checksums.json and so covered by model.sig).
Subjects: every file of the version with its sha256 (all but the statement itself, the manifest and the
signature, which are written after it). Inputs (`resolvedDependencies`): the base model's files, every data
file, the parent version (by its root digest) and the code commit; parameters: the resolved config
(`externalParameters`), the libraries, Python and the device (`internalParameters`). Tools that read
SLSA provenance (slsa-verifier, in-toto, GUAC) read it as it is. Imports nothing heavy.
"""

from pathlib import Path

from qrtrain import __version__
from qrtrain.artifacts.manifest import MANIFEST_NAME
from qrtrain.files import sha256_file

STATEMENT_NAME = "provenance.intoto.json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PROVENANCE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://qrtrain.dev/train/v1"  # what externalParameters mean: qrtrain's resolved training config
BUILDER_ID = "https://pypi.org/project/qrtrain/"


def provenance_statement(folder: Path, metadata: dict, config: dict, finished: str) -> dict:
    """The statement for the staged version folder (metadata.json already written)."""
    from qrtrain.artifacts.signing import SIGNATURE_NAME

    folder = Path(folder)
    subjects = [{"name": p.relative_to(folder).as_posix(), "digest": {"sha256": sha256_file(p)}}
                for p in sorted(folder.rglob("*"))
                if p.is_file() and p.relative_to(folder).as_posix() not in (STATEMENT_NAME, MANIFEST_NAME,
                                                                             SIGNATURE_NAME)]
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PROVENANCE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"config": config, "method": (metadata.get("method") or {}).get("name", "sft")},
                "internalParameters": {"libraries": metadata.get("libraries"), "python": metadata.get("python"),
                                       "device": metadata.get("device"), "seed": metadata.get("seed")},
                "resolvedDependencies": dependencies(metadata),
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"qrtrain": __version__}},
                "metadata": {"invocationId": f"{metadata['name']}/{metadata['version']}",
                             "startedOn": metadata["created"], "finishedOn": finished},
            },
        },
    }


def dependencies(metadata: dict) -> list[dict]:
    """Resource descriptors of what the version was made from: base files, data, parent, code."""
    base = metadata.get("base_model") or {}
    found = [{"name": f"base/{name}", "digest": {"sha256": digest},
              "annotations": {"model": base.get("name"), "hub_id": base.get("hub_id"), "weights": base.get("weights")}}
             for name, digest in sorted((base.get("files") or {}).items())]
    for source in metadata.get("datasets") or []:
        if source.get("sha256"):
            found.append({"name": f"data/{source.get('role')}/{Path(str(source.get('path', ''))).name}",
                          "digest": {"sha256": source["sha256"]},
                          "annotations": {"role": source.get("role"), "rows": source.get("rows"),
                                          "format": source.get("format")}})
    parent = metadata.get("parent")
    if parent:
        found.append({"name": f"parent/{parent['name']}/{parent['version']}",
                      "digest": {"sha256": parent["root_digest"]},
                      "annotations": {"digest_of": "the parent's checksums.json entries (qrtrain root digest)"}})
    if metadata.get("git_commit"):
        found.append({"name": "qrtrain source", "digest": {"gitCommit": metadata["git_commit"]}})
    return found
