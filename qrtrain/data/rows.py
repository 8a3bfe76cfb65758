"""Read and check data rows, for training and evaluation alike: every problem named by file and line.

    qrtrain train data.train=my.jsonl                   # text | prompt/completion | messages | instruction/output
    qrtrain train data.train=[a.jsonl,b.parquet] data.weights=[3,1]

Sources: .jsonl, .json (a list of objects), .parquet, or a folder written by
`datasets.Dataset.save_to_disk`. Every problem is reported with file and line (or row).
"""

import json
import re
from pathlib import Path

from qrtrain.config import PACKAGE_DIR
from qrtrain.errors import QrtrainError

DEMO_DIR = PACKAGE_DIR / "data" / "demo"
ROLES = ("system", "user", "assistant")
MAX_LISTED = 10
FORMAT_HELP = ("expected a JSON object with `text`, `prompt`/`completion`, `messages` "
               "or `instruction`/`output` (alpaca)")


SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class JSONProblem(ValueError):
    """Valid JSON syntax that is still not usable data: duplicate keys, lone surrogates, deep nesting."""


def _no_duplicate_keys(pairs: list) -> dict:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        twice = next(key for key in keys if keys.count(key) > 1)
        raise JSONProblem(f"key {twice!r} appears twice in one object (JSON readers disagree on which one wins)")
    return dict(pairs)


def parse_json(text: str):
    """json.loads, strict about what other readers would read differently or fail on later."""
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise JSONProblem("nested too deeply") from None
    if SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise JSONProblem("contains a lone UTF-16 surrogate escape (e.g. \\ud800), which is not text") from None
    return value


def read_rows(path: Path) -> list[tuple[str, object]]:
    """Rows of one source as (where, row) pairs; `where` is 'FILE line N' or 'FILE row N'."""
    if not path.exists():
        raise QrtrainError(f"{path}: no such data file or folder")
    if path.is_dir():
        return _read_saved_dataset(path)
    if not path.is_file():
        raise QrtrainError(f"{path}: not a regular file (a pipe, socket or device); give a data file or folder")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise QrtrainError(f"{path} line {number}: not UTF-8 text (byte {error.start + 1} of the line); "
                                       "save the file as UTF-8") from None
                if not line.strip():
                    continue
                try:
                    rows.append((f"{path} line {number}", parse_json(line)))
                except json.JSONDecodeError as error:
                    raise QrtrainError(f"{path} line {number}: not valid JSON ({error.msg} at column {error.colno}); "
                                       "each line must be one JSON object") from None
                except JSONProblem as error:
                    raise QrtrainError(f"{path} line {number}: {error}; fix that line") from None
        return rows
    if suffix == ".json":
        try:
            data = parse_json(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise QrtrainError(f"{path} line {error.lineno}: not valid JSON ({error.msg} at column {error.colno})") from None
        except JSONProblem as error:
            raise QrtrainError(f"{path}: {error}") from None
        except UnicodeDecodeError:
            raise QrtrainError(f"{path}: not UTF-8 text; save the file as UTF-8") from None
        if not isinstance(data, list):
            raise QrtrainError(f"{path}: expected a JSON list of examples, got {type(data).__name__}; "
                               "use a list, or JSON Lines (.jsonl) with one object per line")
        return [(f"{path} row {i + 1}", row) for i, row in enumerate(data)]
    if suffix == ".parquet":
        from datasets import Dataset

        quiet_datasets()
        if path.stat().st_size == 0:
            raise QrtrainError(f"{path}: the file is empty (0 bytes); a Parquet file needs at least its footer")
        try:
            dataset = Dataset.from_parquet(str(path))
        except Exception as error:
            raise QrtrainError(f"{path}: not a readable Parquet file ({str(error).splitlines()[0][:200]})") from None
        return [(f"{path} row {i + 1}", row) for i, row in enumerate(dataset)]
    raise QrtrainError(f"{path}: unsupported data file type {suffix!r}; use .jsonl, .json, .parquet "
                       "or a folder saved with datasets.Dataset.save_to_disk")


def quiet_datasets() -> None:
    """datasets logs its own errors too; qrtrain reports them once, with the file name."""
    import logging

    import datasets

    datasets.utils.logging.set_verbosity(logging.CRITICAL)
    datasets.disable_progress_bars()


def _read_saved_dataset(path: Path) -> list[tuple[str, object]]:
    from datasets import DatasetDict, load_from_disk

    quiet_datasets()
    try:
        dataset = load_from_disk(str(path))
    except Exception as error:
        raise QrtrainError(f"{path}: not a dataset folder saved with datasets.save_to_disk ({type(error).__name__})") from None
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise QrtrainError(f"{path}: the saved DatasetDict has no 'train' split (it has {sorted(dataset)})")
        dataset = dataset["train"]
    return [(f"{path} row {i + 1}", row) for i, row in enumerate(dataset)]


def row_format(row: dict) -> str | None:
    if "messages" in row:
        return "messages"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "text" in row:
        return "text"
    return None


def row_problem(row: object) -> str | None:
    """What is wrong with one example, or None."""
    if not isinstance(row, dict):
        return f"{FORMAT_HELP}, got {type(row).__name__ if row is not None else 'null'}"
    kind = row_format(row)
    if kind is None:
        return f"{FORMAT_HELP}, got keys {sorted(row)}"
    if kind == "text":
        return None if _nonempty_str(row["text"]) else "`text` must be a non-empty string"
    if kind == "prompt_completion":
        if not isinstance(row["prompt"], str):
            return f"`prompt` must be a string, got {type(row['prompt']).__name__}"
        return None if _nonempty_str(row["completion"]) else "`completion` must be a non-empty string"
    if kind == "alpaca":
        if not _nonempty_str(row["instruction"]) or not _nonempty_str(row["output"]):
            return "`instruction` and `output` must be non-empty strings"
        return None if isinstance(row.get("input") or "", str) else "`input` must be a string"
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        return "`messages` must be a non-empty list of {role, content} objects"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) < {"role", "content"}:
            return f"messages[{i}] must be an object with `role` and `content`"
        if message["role"] not in ROLES:
            return f"messages[{i}].role is {message['role']!r}; expected one of {', '.join(ROLES)}"
        content = message["content"]
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not (isinstance(part, dict) and (part.get("type") == "image" or
                                                    (part.get("type") == "text" and isinstance(part.get("text"), str)))):
                    return f"messages[{i}].content[{j}] must be {{type: image}} or {{type: text, text: ...}}"
        elif not isinstance(content, str):
            return f"messages[{i}].content must be a string (or a list of parts), got {type(content).__name__}"
    if not any(m["role"] == "assistant" and message_text(m).strip() for m in messages):
        return "the conversation has no assistant turn with content, so nothing would be learned from it"
    return None


def message_text(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def image_parts(messages: list[dict]) -> int:
    return sum(1 for m in messages if isinstance(m["content"], list) for p in m["content"] if p.get("type") == "image")


def _nonempty_str(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def to_training_row(row: dict, model_type: str, where: str, folder: Path = Path(".")) -> dict:
    """One example in the format TRL expects for this model type."""
    kind = row_format(row)
    has_images = bool(row.get("images")) or (kind == "messages" and image_parts(row["messages"]) > 0)
    if model_type == "multimodal":
        return multimodal_row(row, where, folder)
    if has_images:
        raise QrtrainError(f"{where}: the example has images; use model_type=multimodal with a vision-language "
                           "model (e.g. model=tiny-vlm), or remove the images")
    if model_type == "dialogue":
        if kind == "messages":
            return {"messages": [{"role": m["role"], "content": message_text(m)} for m in row["messages"]]}
        if kind == "prompt_completion":
            return {"messages": [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]}
        if kind == "alpaca":
            user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
            return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]}
        raise QrtrainError(f"{where}: model_type=dialogue needs conversations (`messages`, `prompt`/`completion` or "
                           "`instruction`/`output`), got plain `text`; use model_type=standard for plain text")
    if kind == "messages":
        raise QrtrainError(f"{where}: model_type=standard takes `text` or `prompt`/`completion`, got `messages`; "
                           "use model_type=dialogue for conversations")
    if kind == "alpaca":
        prompt = f"### Instruction:\n{row['instruction']}\n\n"
        if row.get("input"):
            prompt += f"### Input:\n{row['input']}\n\n"
        return {"prompt": prompt + "### Response:\n", "completion": row["output"]}
    if kind == "prompt_completion":
        return {"prompt": row["prompt"], "completion": row["completion"]}
    return {"text": row["text"]}


def multimodal_row(row: dict, where: str, folder: Path) -> dict:
    """`messages` with image parts and their `images`, opened as PIL images (paths are relative to the data file)."""
    import io

    from PIL import Image, UnidentifiedImageError

    if row_format(row) != "messages":
        raise QrtrainError(f"{where}: model_type=multimodal needs `messages` (with image parts) and `images`")
    images = row.get("images")
    wanted = image_parts(row["messages"])
    if not isinstance(images, list) or not images or len(images) != wanted:
        raise QrtrainError(f"{where}: expected `images` with one entry per {{type: image}} part ({wanted}), "
                           f"got {len(images) if isinstance(images, list) else type(images).__name__}")
    opened = []
    for k, image in enumerate(images):
        try:
            if isinstance(image, str):
                path = folder / image
                opened.append(Image.open(path).convert("RGB"))
            elif isinstance(image, dict) and isinstance(image.get("bytes"), (bytes, bytearray)):
                opened.append(Image.open(io.BytesIO(image["bytes"])).convert("RGB"))
            elif isinstance(image, dict) and isinstance(image.get("path"), str):
                opened.append(Image.open(folder / image["path"]).convert("RGB"))
            else:
                raise QrtrainError(f"{where}: images[{k}] must be a file path or {{bytes: ...}}")
        except (OSError, UnidentifiedImageError) as error:
            raise QrtrainError(f"{where}: images[{k}] cannot be opened as an image ({error})") from None
    messages = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], list)
                 else [{"type": "text", "text": m["content"]}]} for m in row["messages"]]
    return {"messages": messages, "images": opened}


def load_source(path: Path, model_type: str) -> list[dict]:
    """Read, check and convert one source; every bad row is reported (up to MAX_LISTED)."""
    rows = read_rows(path)
    problems = [f"{where}: {problem}" for where, row in rows if (problem := row_problem(row))]
    if problems:
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise QrtrainError(f"{len(problems)} bad example(s) in {path}:\n  " + "\n  ".join(problems[:MAX_LISTED]) + more)
    if not rows:
        raise QrtrainError(f"{path}: no examples (the file is empty)")
    kinds = {row_format(row) for _, row in rows}
    if len(kinds) > 1:
        first = rows[0][1]
        odd = next(where for where, row in rows if row_format(row) != row_format(first))
        raise QrtrainError(f"{path}: mixes formats ({', '.join(sorted(kinds))}); {odd} differs from the first row; "
                           "put each format in its own file and list them in data.train")
    folder = path if path.is_dir() else path.parent
    return [to_training_row(row, model_type, where, folder) for where, row in rows]
