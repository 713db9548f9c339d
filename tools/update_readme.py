"""Regenerate the README's configuration reference from the code (`make docs`)."""

from __future__ import annotations

import sys
from pathlib import Path

from intact.config import reference_markdown

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def render(text: str) -> str:
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{reference_markdown()}{END}{tail}"


def main() -> int:
    text = README.read_text()
    if START not in text or END not in text:
        print("README.md has no config-reference markers", file=sys.stderr)
        return 1
    README.write_text(render(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
