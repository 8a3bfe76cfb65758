"""Evaluation and comparison reports under the root, however they were made (a service job or the CLI).

    curl localhost:8765/api/reports
    curl localhost:8765/api/reports/tiny-dialogue/evaluations/v1-demo-2026-12-01_10-00-00/report.json
"""

from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException

from qrtrain.files import read_json
from qrtrain.service.routes import service

router = APIRouter(prefix="/api/reports", tags=["reports"])
PATTERNS = ("*/evaluations/*/report.json", "comparisons/*/comparison.json", ".service/jobs/*/report/report.json",
            ".service/jobs/*/report/comparison.json")


def report_files(root: Path) -> list[Path]:
    """Every report file under the root, no symbolic link on the way, oldest first."""
    found = []
    for pattern in PATTERNS:
        for path in root.glob(pattern):
            relative = path.relative_to(root)
            if not any((root / Path(*relative.parts[:i + 1])).is_symlink() for i in range(len(relative.parts))):
                found.append(path)
    return sorted(found, key=lambda p: p.stat().st_mtime)


@router.get("", summary="Every evaluation and comparison report under the root (CLI and service alike)")
def reports(state=Depends(service)):
    rows = []
    for path in report_files(state.root):
        report, problem = read_json(path)
        rows.append({"path": str(path.relative_to(state.root)), "kind": "comparison" if report and "systems" in report
                     else "evaluation", "suite": (report or {}).get("suite"), "target": (report or {}).get("target"),
                     "created": (report or {}).get("created"), **({"problem": problem} if problem else {})})
    return rows


@router.get("/{path:path}", summary="One report (a path from GET /api/reports)")
def report(path: str, state=Depends(service)):
    wanted = state.root / path
    if wanted not in report_files(state.root):
        raise HTTPException(404, f"no report {path!r} (GET /api/reports lists them)")
    found, problem = read_json(wanted)
    if problem:
        raise HTTPException(422, f"{path}: {problem}")
    return found
