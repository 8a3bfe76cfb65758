"""What `qrtrain synth` generates from: passages of a corpus, or prompts filled from templates.

    qrtrain synth synth.corpus=docs/                  # .txt/.md files, one document each
    qrtrain synth synth.mode=templates 'synth.templates=[{prompt: "Name a dish from {place}.", slots: {place: [Quillhaven]}}]'
"""

import itertools
import string
from pathlib import Path

from qrtrain.errors import QrtrainError


def passages(documents: list[dict], words: int, overlap: int) -> list[dict]:
    """Passages as retrieval makes them, each with an id `<document id>#<n>`."""
    from qrtrain.evaluation.retrieval import chunk_documents

    counts = {}
    result = []
    for chunk in chunk_documents(documents, words, overlap):
        counts[chunk["id"]] = counts.get(chunk["id"], 0) + 1
        result.append({"id": f"{chunk['id']}#{counts[chunk['id']]}", "document": chunk["id"], "text": chunk["text"]})
    return result


def slot_values(name: str, values, template_index: int) -> list[str]:
    """A slot's values: a list, or a file with one value per line."""
    if isinstance(values, str):
        path = Path(values)
        if not path.is_file():
            raise QrtrainError(f"synth.templates[{template_index}].slots.{name}={values}: not a list and no such file")
        values = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not isinstance(values, (list, tuple)) or not values:
        raise QrtrainError(f"synth.templates[{template_index}].slots.{name}: expected a non-empty list of values "
                           "or a file with one value per line")
    return [str(v) for v in values]


def fill_templates(templates: list[dict]) -> list[dict]:
    """Every combination of slot values for each template: [{prompt, template, slots, expect_json}]."""
    if not templates:
        raise QrtrainError("synth.mode=templates needs synth.templates: [{prompt: \"... {slot} ...\", "
                           "slots: {slot: [values]}}]")
    filled = []
    for i, template in enumerate(templates):
        if not isinstance(template, dict) or not isinstance(template.get("prompt"), str) or not template["prompt"].strip():
            raise QrtrainError(f"synth.templates[{i}]: expected {{prompt: \"... {{slot}} ...\", slots: {{...}}}}")
        slots = template.get("slots") or {}
        try:
            fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template["prompt"]) if f is not None]
        except ValueError as error:
            raise QrtrainError(f"synth.templates[{i}].prompt: {error} (write a literal brace as {{{{ or }}}})") from None
        for field, spec, conversion in fields:  # {a:>300000000} would build a 300 MB string: plain slots only
            if spec or conversion or not field.isidentifier():
                raise QrtrainError(f"synth.templates[{i}].prompt: {{{field}{'!' + conversion if conversion else ''}"
                                   f"{':' + spec if spec else ''}}} is not a plain slot; write {{name}} (no format "
                                   "spec, conversion, index or attribute)")
        names = [field for field, _, _ in fields]
        unknown = sorted({n for n in names if n not in slots})
        if unknown:
            raise QrtrainError(f"synth.templates[{i}].prompt uses {', '.join('{' + n + '}' for n in unknown)}, which "
                               f"synth.templates[{i}].slots does not define (it has: {', '.join(slots) or 'none'})")
        used = list(dict.fromkeys(names))
        columns = [slot_values(n, slots[n], i) for n in used]
        for combination in itertools.product(*columns):
            values = dict(zip(used, combination))
            filled.append({"prompt": template["prompt"].format(**values), "template": i, "slots": values,
                           "expect_json": bool(template.get("expect_json", False))})
    return filled
