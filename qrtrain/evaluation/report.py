"""Reports of evaluations and comparisons: Markdown, PNG charts (matplotlib, Agg) and rich summaries.

    qrtrain evaluate outputs/NAME/v1      # writes report.md, metrics.png, training_loss.png
    qrtrain compare                       # writes comparison.md, comparison.png
"""

import json
from pathlib import Path

RATE_METRICS = ["keyword_accuracy", "exact_match", "f1", "rougeL", "refusal_correct", "json_valid", "citation",
                "groundedness", "reward_accuracy", "preference_accuracy"]


def fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def fmt_metric(entry: dict) -> str:
    text = fmt(entry.get("mean"))
    if entry.get("ci95"):
        text += f" [{entry['ci95'][0]:.2f}, {entry['ci95'][1]:.2f}]"
    return text


def evaluation_markdown(result: dict) -> str:
    lines = [f"# Evaluation of `{result['target']}`", "",
             f"Suite `{result['suite']}`, base `{result['base_model']}`, {result['device']}, {result['created']}.", "",
             "| metric | value [95% CI] | n |", "| --- | --- | --- |"]
    lines += [f"| {k} | {fmt_metric(v)} | {v['n']} |" for k, v in result["metrics"].items()]
    lines += ["", "| id | answer | reference | scores |", "| --- | --- | --- | --- |"]
    for row in result["items"]:
        scores = ", ".join(f"{k}={fmt(row[k])}" for k in RATE_METRICS if k in row)
        lines.append(f"| {row['id']} | {_cell(row['answer'])} | {_cell(row['reference'] or '')} | {scores} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:200]


def metrics_chart(systems: dict[str, dict], path: Path, title: str = "answer quality") -> None:
    """A grouped bar chart of the rate metrics (0..1) per system: each bar labelled with its value (a measured
    0 shows as "0.00"; a metric a system has no items for shows "n/a", no bar), 95% CI whiskers only where an
    interval exists, the legend below the axes where it covers no bar."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in RATE_METRICS if any(m in agg and agg[m]["mean"] is not None for agg in systems.values())]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names) * max(1, len(systems)) / 2), 4.6))
    width = 0.8 / max(1, len(systems))
    for i, (system, aggregate) in enumerate(systems.items()):
        xs = [x + i * width for x in range(len(names))]
        means = [aggregate.get(m, {}).get("mean") for m in names]
        bars = ax.bar(xs, [m if m is not None else math.nan for m in means], width, label=system)
        for x, name, mean in zip(xs, names, means):
            ci = aggregate.get(name, {}).get("ci95")
            if mean is not None and ci:
                ax.errorbar(x, mean, yerr=[[mean - ci[0]], [ci[1] - mean]], color="black", capsize=3, linewidth=1)
            ax.annotate("n/a" if mean is None else f"{mean:.2f}", (x, (ci[1] if mean is not None and ci else mean or 0)),
                        xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=7)
        del bars
    ax.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(names))], names, rotation=20)
    ax.set_ylim(0, 1.12)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=min(4, max(1, len(systems))),
              frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def loss_curve(metrics_file: Path, path: Path) -> None:
    """Training (and evaluation) loss per step, from an artifact's training_metrics.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = json.loads(Path(metrics_file).read_text()).get("history", [])
    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    fig, ax = plt.subplots(figsize=(6, 4))
    for points, label in ((train, "train loss"), (evals, "eval loss")):
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_evaluation(result: dict) -> None:
    from rich.table import Table

    from qrtrain.terminal import table_console

    table = Table(title=f"{result['target']} on {result['suite']}", title_justify="left")
    table.add_column("metric")
    table.add_column("value [95% CI]")
    table.add_column("n")
    for key, value in result["metrics"].items():
        table.add_row(key, fmt_metric(value), str(value["n"]))
    table_console().print(table)
