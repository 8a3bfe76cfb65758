"""A CI regression gate: is a candidate version worse than a baseline on the same evaluation suite?

    qrtrain gate NAME/v3 --baseline previous --metric keyword_accuracy --max-drop 0.02
    qrtrain gate outputs/NAME/v3 --baseline NAME/v1 --metric f1 --max-drop 0.05 --metric rougeL --max-drop 0.05
    qrtrain gate NAME/v3 --baseline latest evaluation.questions=my_questions.jsonl --json

Both sides are verified, then their newest `qrtrain evaluate` report on the suite is read (a side without
one is evaluated first, with the same overrides). A metric is compared item by item (the same questions,
matched by id): the drop is baseline minus candidate, with a paired bootstrap interval (10,000 resamples of
the items, seeded). The gate fails a metric when its drop is above --max-drop AND the interval's lower end
is above 0, i.e. the candidate is worse by more than allowed and the difference is not what resampling the
same questions gives by chance; identical reports give a drop of exactly 0 and always pass.
Exit codes: 0 not worse, 1 a metric regressed, 2 usage (no such version, different questions, ...).
"""

import contextlib
import json
import random
import sys
from pathlib import Path

from qrtrain.errors import QrtrainError

ALIASES = {"key_fact_accuracy": "keyword_accuracy"}  # the README's name for it
PER_ITEM = ("keyword_accuracy", "exact_match", "f1", "rougeL", "json_valid", "refusal_correct", "citation",
            "groundedness")
RESAMPLES = 10_000


def resolve_sides(candidate: str, baseline: str, root: Path) -> tuple[Path, Path]:
    """(candidate folder, baseline folder): baseline `previous` is the candidate's artifact's next lower
    version; `latest` the version its `latest` names; otherwise NAME/vN, NAME or a version folder."""
    from qrtrain.artifacts.lineage import find_version
    from qrtrain.artifacts.versions import read_latest, versions

    def find(reference: str, role: str) -> Path:
        folder = Path(reference) if Path(reference).is_dir() and (Path(reference) / "checksums.json").is_file() \
            else find_version(reference, root)
        if folder is None:
            raise QrtrainError(f"{role} {reference}: no such version under {root} (nor a version folder); "
                               "`qrtrain list` shows the versions")
        return folder

    cand = find(candidate, "candidate")
    if baseline == "previous":
        number = int(cand.name[1:]) if cand.name[:1] == "v" and cand.name[1:].isdigit() else 0
        lower = [n for n in versions(cand.parent) if n < number]
        if not lower:
            raise QrtrainError(f"--baseline previous: {cand} is the first version of {cand.parent.name}; name the "
                               "baseline (NAME/vN)")
        return cand, cand.parent / f"v{lower[-1]}"
    if baseline == "latest":
        base = read_latest(cand.parent)
        if base.resolve() == cand.resolve():
            raise QrtrainError(f"--baseline latest: {cand} is itself the latest version of {cand.parent.name}; "
                               "use --baseline previous, or name the version now shipped (NAME/vN)")
        return cand, base
    return cand, find(baseline, "--baseline")


def report_for(folder: Path, suite: str, overrides: list[str]) -> tuple[dict, bool]:
    """(the newest report of this version on the suite, whether it was evaluated now)."""
    from qrtrain.files import read_json

    reports = sorted((folder.parent / "evaluations").glob(f"{folder.name}-{suite}-*/report.json"))
    for path in reversed(reports):
        report, problem = read_json(path)
        if not problem and report.get("suite") == suite and Path(str(report.get("target"))).name == folder.name:
            return report, False
    from qrtrain.evaluation.evaluate import evaluate
    from qrtrain.terminal import say

    say(f"{folder.parent.name}/{folder.name} has no report on {suite}: evaluating it")
    with contextlib.redirect_stdout(sys.stderr):  # stdout holds the verdict alone (--json)
        written = evaluate(folder, overrides)
    report, problem = read_json(written / "report.json")
    if problem:
        raise QrtrainError(f"the evaluation of {folder} wrote no readable report ({problem})")
    return report, True


def per_item(report: dict, metric: str) -> dict:
    return {row["id"]: float(row[metric]) for row in report.get("items", []) if isinstance(row.get(metric), (int, float))}


def paired_drop(baseline: dict, candidate: dict, confidence: float, seed: int = 0) -> dict:
    """Mean drop (baseline - candidate) over the shared items and its percentile bootstrap interval."""
    ids = sorted(baseline)
    drops = [baseline[i] - candidate[i] for i in ids]
    n = len(drops)
    mean = sum(drops) / n
    if all(d == drops[0] for d in drops):  # every resample has the same mean: no noise to speak of
        return {"n": n, "drop": mean, "ci": [mean, mean]}
    rng = random.Random(seed)
    means = sorted(sum(drops[rng.randrange(n)] for _ in range(n)) / n for _ in range(RESAMPLES))
    tail = (1 - confidence) / 2
    return {"n": n, "drop": mean, "ci": [means[int(tail * RESAMPLES)], means[min(RESAMPLES - 1,
                                                                               int((1 - tail) * RESAMPLES))]]}


def gate(candidate: str, baseline: str, metrics: list[str], max_drops: list[float], root: Path,
         overrides: list[str], confidence: float = 0.95) -> dict:
    """The verdict per metric and overall; raises QrtrainError (exit 2) for what cannot be compared."""
    from qrtrain.artifacts.verify import verify_version
    from qrtrain.config import compose
    from qrtrain.evaluation.evaluate import suite_name

    if not 0.5 <= confidence < 1:
        raise QrtrainError(f"--confidence {confidence}: expected a number in [0.5, 1), e.g. 0.95")
    metrics = [ALIASES.get(m, m) for m in (metrics or ["keyword_accuracy"])]
    if len(max_drops) == 1:
        max_drops = max_drops * len(metrics)
    if len(max_drops) != len(metrics) or any(d < 0 for d in max_drops):
        raise QrtrainError(f"--max-drop: give one (for every metric) or one per --metric ({len(metrics)}), each 0 or "
                           "more; they pair in order")
    unknown = [m for m in metrics if m not in PER_ITEM]
    if unknown:
        raise QrtrainError(f"--metric {', '.join(unknown)}: the gate compares per-question scores, one of "
                           f"{', '.join(PER_ITEM)} (key_fact_accuracy = keyword_accuracy)")
    cand, base = resolve_sides(candidate, baseline, Path(root))
    for folder in (cand, base):
        result = verify_version(folder)
        if not result["verified"]:
            listed = "; ".join(f"{p['file']}: {p['message']}" for p in result["problems"][:3])
            raise QrtrainError(f"{folder} fails verification ({listed}); a gate compares verified versions",
                               exit_code=1)
    suite = suite_name(compose(overrides, config_name="evaluate"))
    (base_report, base_fresh), (cand_report, cand_fresh) = (report_for(base, suite, overrides),
                                                            report_for(cand, suite, overrides))
    questions = [{r["id"]: (r.get("question"), r.get("reference")) for r in report.get("items", [])}
                 for report in (base_report, cand_report)]
    if questions[0] != questions[1]:
        raise QrtrainError(f"the two reports on {suite} are not on the same questions (the question file changed "
                           "between them?); evaluate both again on the same file: qrtrain evaluate VERSION "
                           "evaluation.questions=FILE")
    checks = []
    for metric, max_drop in zip(metrics, max_drops):
        b, c = per_item(base_report, metric), per_item(cand_report, metric)
        if not b or set(b) != set(c):
            available = sorted(m for m in PER_ITEM if per_item(base_report, m))
            raise QrtrainError(f"--metric {metric}: the {suite} reports have no per-question {metric} for both "
                               f"versions; they have {', '.join(available) or 'none'}")
        stats = paired_drop(b, c, confidence)
        regressed = stats["drop"] > max_drop and stats["ci"][0] > 0
        checks.append({"metric": metric, "baseline": sum(b.values()) / len(b), "candidate": sum(c.values()) / len(c),
                       "drop": stats["drop"], "ci": stats["ci"], "n": stats["n"], "max_drop": max_drop,
                       "confidence": confidence, "passed": not regressed,
                       "why": why(stats, max_drop, confidence, regressed)})
    return {"candidate": f"{cand.parent.name}/{cand.name}", "baseline": f"{base.parent.name}/{base.name}",
            "suite": suite, "evaluated_now": [f"{f.parent.name}/{f.name}" for f, fresh in
                                              ((base, base_fresh), (cand, cand_fresh)) if fresh],
            "passed": all(c["passed"] for c in checks), "checks": checks}


def why(stats: dict, max_drop: float, confidence: float, regressed: bool) -> str:
    level = f"{confidence:.0%}"
    if regressed:
        return f"worse by {stats['drop']:.3f} > {max_drop}, and the {level} interval excludes no change"
    if stats["drop"] > max_drop:
        return (f"drop {stats['drop']:.3f} is above {max_drop}, but the {level} interval includes no change: "
                f"not distinguishable from noise on {stats['n']} questions (more questions would tell)")
    return f"drop {stats['drop']:.3f} is within {max_drop}"


def print_gate(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    from rich.table import Table

    from qrtrain.terminal import table_console

    verdict = "[green]PASSED[/]" if result["passed"] else "[bold red]FAILED[/]"
    table = Table(title=f"gate {result['candidate']} vs {result['baseline']} on {result['suite']}: {verdict}",
                  title_justify="left")
    for column in ("metric", "baseline", "candidate", "drop [CI]", "max drop", "verdict"):
        table.add_column(column, overflow="fold")
    for c in result["checks"]:
        table.add_row(c["metric"], f"{c['baseline']:.3f}", f"{c['candidate']:.3f}",
                      f"{c['drop']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]", str(c["max_drop"]),
                      ("pass: " if c["passed"] else "FAIL: ") + c["why"])
    table_console().print(table)
