"""Regenerate the README's generated sections from the code (`make docs`): the configuration
reference and the table of providers and their default resume modes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from intact.config import reference_markdown, resume_defaults_markdown

README = Path(__file__).resolve().parent.parent / "README.md"
# (marker name, renderer): the text between <!-- NAME:start --> and <!-- NAME:end -->.
SECTIONS: tuple[tuple[str, Callable[[], str]], ...] = (
    ("resume-defaults", resume_defaults_markdown),
    ("config-reference", reference_markdown),
)


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def render(text: str) -> str:
    for name, section in SECTIONS:
        start, end = _markers(name)
        head, found, rest = text.partition(start)
        if not found:
            continue
        _, _, tail = rest.partition(end)
        text = f"{head}{start}\n{section()}{end}{tail}"
    return text


def main() -> int:
    text = README.read_text()
    missing = [name for name, _ in SECTIONS if _markers(name)[0] not in text]
    if missing:
        print(f"README.md has no {', '.join(missing)} markers", file=sys.stderr)
        return 1
    README.write_text(render(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
