"""Preference rows, read and checked before any model loads: every problem named by file and line.

    qrtrain train method=dpo data.train=pairs.jsonl      # {prompt, chosen, rejected}: strings or conversations
    qrtrain train method=kto data.train=feedback.jsonl   # {prompt, completion, label}, or pairs (unpaired)

TRL's conventions: a string prompt with string answers, or a conversation prompt (a list of
{role, content}) with answers that are lists of assistant messages. With model_type=dialogue string rows
become conversations (the model's chat template renders them, as in SFT); model_type=standard keeps
strings and refuses conversations. The same sources as SFT: .jsonl, .json, .parquet, saved datasets.
"""

from pathlib import Path

from qrtrain.data.rows import MAX_LISTED, ROLES, read_rows
from qrtrain.errors import QrtrainError

PAIRED_HELP = "expected a JSON object with `prompt`, `chosen` and `rejected`"
UNPAIRED_HELP = "expected a JSON object with `prompt`, `completion` and `label` (true or false), or a pair"


def is_paired(row: dict) -> bool:
    return isinstance(row, dict) and "chosen" in row and "rejected" in row


def prompt_problem(prompt) -> str | None:
    if isinstance(prompt, str):
        return None if prompt.strip() else "`prompt` must be a non-empty string or conversation"
    if not isinstance(prompt, list) or not prompt:
        return f"`prompt` must be a string or a non-empty list of {{role, content}} messages, got {kind(prompt)}"
    for i, message in enumerate(prompt):
        if not (isinstance(message, dict) and {"role", "content"} <= set(message)):
            return f"prompt[{i}] must be an object with `role` and `content`"
        if message["role"] not in ROLES:
            return f"prompt[{i}].role is {message['role']!r}; expected one of {', '.join(ROLES)}"
        if not isinstance(message["content"], str):
            return f"prompt[{i}].content must be a string, got {kind(message['content'])}"
    if prompt[-1]["role"] == "assistant":
        return "the prompt conversation ends with an assistant turn; it must end where the answer begins (user)"
    return None


def answer_problem(key: str, answer, conversational: bool) -> str | None:
    if not conversational:
        if isinstance(answer, list):
            return f"`{key}` is a conversation but `prompt` is a string; use the same form for both"
        return None if isinstance(answer, str) and answer.strip() else f"`{key}` must be a non-empty string"
    if isinstance(answer, str):
        return f"`{key}` is a string but `prompt` is a conversation; give [{{role: assistant, content: ...}}]"
    if not isinstance(answer, list) or not answer:
        return f"`{key}` must be a non-empty list of assistant messages, got {kind(answer)}"
    for i, message in enumerate(answer):
        if not (isinstance(message, dict) and message.get("role") == "assistant"
                and isinstance(message.get("content"), str) and message["content"].strip()):
            return f"{key}[{i}] must be {{role: assistant, content: <non-empty string>}}"
    return None


def row_problem(row, method: str) -> str | None:
    """What is wrong with one preference row, or None."""
    expected = UNPAIRED_HELP if method == "kto" else PAIRED_HELP
    if not isinstance(row, dict):
        return f"{expected}, got {kind(row)}"
    if "prompt" not in row:
        return f"{expected}, got keys {sorted(row)}" + (
            " (a row with `messages` is SFT data: train it with method=sft)" if "messages" in row else "")
    problem = prompt_problem(row["prompt"])
    if problem:
        return problem
    conversational = isinstance(row["prompt"], list)
    if is_paired(row):
        for key in ("chosen", "rejected"):
            if problem := answer_problem(key, row[key], conversational):
                return problem
        if row["chosen"] == row["rejected"]:
            return "`chosen` and `rejected` are the same answer, so there is nothing to prefer"
        return None
    if method != "kto" or "completion" not in row:
        return f"{expected}, got keys {sorted(row)}"
    if not isinstance(row.get("label"), bool):
        return f"`label` must be true (desirable) or false (undesirable), got {row.get('label')!r}"
    return answer_problem("completion", row["completion"], conversational)


def kind(value) -> str:
    return "null" if value is None else type(value).__name__


def to_model_type(row: dict, model_type: str, where: str) -> dict:
    """The row as TRL takes it for this model type: strings become conversations for dialogue."""
    conversational = isinstance(row["prompt"], list)
    answers = ("chosen", "rejected") if is_paired(row) else ("completion",)
    if model_type == "standard":
        if conversational:
            raise QrtrainError(f"{where}: model_type=standard takes string prompts and answers, got a conversation; "
                               "use model_type=dialogue for conversations")
        out = {"prompt": row["prompt"], **{key: row[key] for key in answers}}
    elif conversational:
        out = {"prompt": [{"role": m["role"], "content": m["content"]} for m in row["prompt"]],
               **{key: [{"role": "assistant", "content": m["content"]} for m in row[key]] for key in answers}}
    else:
        out = {"prompt": [{"role": "user", "content": row["prompt"]}],
               **{key: [{"role": "assistant", "content": row[key]}] for key in answers}}
    if "label" in row and not is_paired(row):
        out["label"] = row["label"]
    return out


def load_preference_source(path: Path, method: str, model_type: str) -> list[dict]:
    """Read, check and convert one preference source; every bad row is reported (up to MAX_LISTED)."""
    rows = read_rows(path)
    problems = [f"{where}: {problem}" for where, row in rows if (problem := row_problem(row, method))]
    if problems:
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise QrtrainError(f"{len(problems)} bad preference row(s) in {path} for method={method}:\n  "
                           + "\n  ".join(problems[:MAX_LISTED]) + more)
    if not rows:
        raise QrtrainError(f"{path}: no preference rows (the file is empty)")
    forms = {(is_paired(row), isinstance(row["prompt"], list)) for _, row in rows}
    if len(forms) > 1:
        first = (is_paired(rows[0][1]), isinstance(rows[0][1]["prompt"], list))
        odd = next(where for where, row in rows if (is_paired(row), isinstance(row["prompt"], list)) != first)
        raise QrtrainError(f"{path}: mixes row forms (pairs and single answers, or strings and conversations); "
                           f"{odd} differs from the first row; put each form in its own file")
    return [to_model_type(row, model_type, where) for where, row in rows]  # KTO: TRL unpairs pairs itself
