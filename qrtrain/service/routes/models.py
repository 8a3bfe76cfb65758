"""The registry over HTTP: every version, one version's files and metadata, its provenance statement,
verify (with the signature, when the service has --trusted-key), a diff of two versions, delete.

    curl localhost:8765/api/models?name=tiny-dialogue
    curl -X POST localhost:8765/api/models/tiny-dialogue/v1/verify
    curl localhost:8765/api/models/tiny-dialogue/v1/provenance
    curl "localhost:8765/api/models/diff?a=tiny-dialogue/v1&b=tiny-dialogue/v2"

Every folder is resolved under the artifact root with no symbolic link on the way; files are read with
qrtrain.files' readers (never through a link, never a pipe, size-capped), so a damaged file shows as
damaged on its version and never fails the list.
"""

from fastapi import APIRouter, Depends, HTTPException, Request

from qrtrain.errors import QrtrainError
from qrtrain.files import read_json, read_text, regular_files
from qrtrain.service import checks
from qrtrain.service.routes import service

router = APIRouter(prefix="/api/models", tags=["registry"])


def version_folder(state, name: str, version: str):
    try:
        checks.check_version(version)
        return checks.artifact_folder(state.root, f"{name}/{version}", "version")
    except QrtrainError as error:
        raise HTTPException(404, error.message) from None


@router.get("", summary="Every artifact version (filters: name, base_model, model_type, quantization)")
def models(name: str | None = None, base_model: str | None = None, model_type: str | None = None,
           quantization: str | None = None, state=Depends(service)):
    from qrtrain.artifacts.listing import list_versions

    wanted = {"artifact": name, "base_model": base_model, "model_type": model_type, "quantization": quantization}
    return [row for row in list_versions(state.root, state.trust)
            if all(value is None or row.get(key) == value for key, value in wanted.items())]


@router.get("/{name}/{version}", summary="A version's metadata, metrics and model card")
def model(name: str, version: str, state=Depends(service)):
    folder = version_folder(state, name, version)
    metadata, metadata_problem = read_json(folder / "metadata.json")
    metrics, metrics_problem = read_json(folder / "training_metrics.json")
    card, _ = read_text(folder / "README.md")
    problems = {k: v for k, v in (("metadata.json", metadata_problem), ("training_metrics.json", metrics_problem)) if v}
    return {"path": str(folder), "metadata": metadata, "metrics": metrics, "model_card": card,
            "files": [str(p.relative_to(folder)) for p in regular_files(folder)], "problems": problems}


@router.post("/{name}/{version}/verify", summary="The `qrtrain verify` checks, as JSON")
def verify(request: Request, name: str, version: str, state=Depends(service)):
    from qrtrain.artifacts.verify import verify_version

    request.state.audit = {"version": f"{name}/{version}"}
    return verify_version(version_folder(state, name, version), trust=state.trust)


@router.get("/diff", summary="Two versions side by side (`qrtrain diff`): a and b are NAME/vN")
def diff(a: str, b: str, state=Depends(service)):
    from qrtrain.artifacts.diff import diff_versions

    folders = []
    for reference in (a, b):
        name, _, version = reference.partition("/")
        folders.append(version_folder(state, name, version))
    try:
        return diff_versions(str(folders[0]), str(folders[1]), state.root)
    except QrtrainError as error:
        raise HTTPException(404, error.message) from None


@router.get("/{name}/{version}/provenance", summary="The version's in-toto / SLSA provenance statement")
def provenance(name: str, version: str, state=Depends(service)):
    from qrtrain.artifacts.statement import STATEMENT_NAME

    statement, problem = read_json(version_folder(state, name, version) / STATEMENT_NAME)
    if problem:
        raise HTTPException(404, f"{name}/{version}/{STATEMENT_NAME}: {problem} (versions published before "
                                 "qrtrain wrote statements have none)")
    return statement


@router.delete("/{name}/{version}", summary="Delete a version (the one `latest` names only with force=true)")
def delete(request: Request, name: str, version: str, force: bool = False, state=Depends(service)):
    from qrtrain.artifacts.versions import delete_version

    request.state.audit = {"version": f"{name}/{version}", "force": force}
    folder = version_folder(state, name, version)
    try:
        latest = delete_version(folder.parent, version, force)
    except QrtrainError as error:
        raise HTTPException(409, error.message) from None
    return {"deleted": f"{name}/{version}", "latest": latest}
