"""BENCHMARKS.md is made of sections that the benchmark scripts rewrite: `<!-- NAME -->` ... `<!-- /NAME -->`.

    from benchmarks_md import write_section    # scripts/ is on sys.path when a script runs
"""

from pathlib import Path

PATH = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def write_section(name: str, section: str, before: str | None = None) -> None:
    """Replace the section NAME (its markers included in `section`), or add it before section `before`, or at
    the end."""
    text = PATH.read_text(encoding="utf-8") if PATH.exists() else "# Benchmarks\n"
    start, end = text.find(f"<!-- {name} -->"), text.find(f"<!-- /{name} -->")
    if start != -1 and end != -1:
        text = text[:start] + section + text[end + len(f"<!-- /{name} -->\n"):]
    elif before is not None and (at := text.find(f"<!-- {before} -->")) != -1:
        text = text[:at] + section + "\n" + text[at:]
    else:
        text = text.rstrip() + "\n\n" + section
    PATH.write_text(text, encoding="utf-8")
