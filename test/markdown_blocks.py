"""Fenced code blocks of the project's Markdown pages (README.md, docs/*.md), for tests that
run or check what the documentation shows."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The pages whose code blocks the tests hold to the code.
PAGES = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*\n(?P<body>.*?)^(?P=indent)```",
                    re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    """One fenced block: its page, the line its fence opens on (1-based), language, text."""

    page: Path
    line: int
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def code_blocks(pages: tuple[Path, ...] = PAGES) -> list[Block]:
    """Every fenced code block of ``pages``, indentation of an indented fence removed."""
    blocks = []
    for page in pages:
        text = page.read_text()
        for match in _FENCE.finditer(text):
            indent = len(match["indent"])
            body = "".join(line[indent:] if line[:indent].strip() == "" else line
                           for line in match["body"].splitlines(keepends=True))
            blocks.append(Block(page, text.count("\n", 0, match.start()) + 1, match["lang"],
                                body))
    return blocks
