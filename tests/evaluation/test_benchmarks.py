"""lm-evaluation-harness through `qrtrain evaluate` and `qrtrain compare`, offline: a local multiple-choice task
(tests/evaluation/lm_eval_tasks/) on a tiny version, its result in the report beside qrtrain's metrics.

    .venv/bin/pytest tests/evaluation/test_benchmarks.py
"""

import json
import shutil
from pathlib import Path

from tests.conftest import invoke

TASKS = Path(__file__).resolve().parent / "lm_eval_tasks"
DEMO = Path(__file__).resolve().parents[2] / "qrtrain" / "data" / "demo" / "qa_heldout.jsonl"
FAST = ["generation.max_new_tokens=4", f"benchmarks.include_path={TASKS}", "benchmarks.tasks=[veloria_facts]"]


def questions(tmp_path: Path) -> Path:
    path = tmp_path / "q.jsonl"
    path.write_text("".join(DEMO.read_text().splitlines(keepends=True)[:2]))
    return path


def test_a_local_task_runs_on_the_version_and_lands_in_the_report(tiny_version, tmp_path):
    copy = tmp_path / "p" / "v1"
    shutil.copytree(tiny_version, copy)
    result = invoke("evaluate", copy, f"evaluation.questions={questions(tmp_path)}", *FAST,
                    f"output_dir={tmp_path / 'report'}")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    accuracy = report["metrics"]["lm_eval/veloria_facts/acc"]
    assert accuracy["n"] == 4 and accuracy["mean"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert accuracy["ci95"][0] <= accuracy["mean"] <= accuracy["ci95"][1]
    assert "keyword_accuracy" in report["metrics"]  # qrtrain's own metrics stay beside it
    assert report["benchmarks"]["results"]["veloria_facts"]["acc,none"] == accuracy["mean"]
    assert report["benchmarks"]["model_args"]["peft"] == str(copy)  # the adapter was applied, not the base alone
    assert "lm_eval/veloria_facts/acc" in (tmp_path / "report" / "report.md").read_text()


def test_compare_puts_the_task_beside_each_system(tiny_version, tmp_path):
    result = invoke("compare", "model=tiny", "systems=[base,adapter]", f"adapters=[{tiny_version}]",
                    f"evaluation.questions={questions(tmp_path)}", *FAST, f"output_dir={tmp_path / 'cmp'}")
    assert result.exit_code == 0, result.output
    systems = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["systems"]
    assert [s["system"] for s in systems] == ["base", "p/v1"]
    assert all(s["metrics"]["lm_eval/veloria_facts/acc"]["n"] == 4 for s in systems)
    assert "peft" not in systems[0]["benchmarks"]["model_args"] and systems[1]["benchmarks"]["model_args"]["peft"]


def test_an_unknown_task_or_folder_is_exit_2_before_any_model_loads(tiny_version, tmp_path):
    unknown = invoke("evaluate", tiny_version, f"benchmarks.include_path={TASKS}", "benchmarks.tasks=[no_such_task]",
                     f"output_dir={tmp_path / 'r1'}")
    assert unknown.exit_code == 2 and "lm-eval knows no task no_such_task" in unknown.output
    missing = invoke("evaluate", tiny_version, f"benchmarks.include_path={tmp_path / 'nowhere'}",
                     "benchmarks.tasks=[veloria_facts]", f"output_dir={tmp_path / 'r2'}")
    assert missing.exit_code == 2 and "no such folder" in missing.output
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
