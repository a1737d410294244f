"""The fenced blocks of README.md and docs/*.md, with the marker line above each and the
section it sits in, for the tests that run what the docs say."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
COMMAND_LANGUAGES = frozenset({"bash", "sh", "console"})

# `<!-- not-tested: <reason> -->` right above a block: it needs a real API key or a cluster.
# `<!-- tested-by: tests/<file>.py::<test> -->`: a test of its own runs it step by step.
NOT_TESTED = re.compile(r"^<!-- not-tested: (?P<reason>.*\S) -->$")
TESTED_BY = re.compile(r"^<!-- tested-by: (?P<file>tests/[\w/]+\.py)::(?P<test>\w+) -->$")
_FENCE = re.compile(r"^```(?P<language>[\w-]*)\s*$")
_HEADING = re.compile(r"^(#{1,6}) (?P<title>.+?)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block.

    Attributes:
        path: the Markdown file.
        line: 1-based line of its opening fence.
        language: the fence's language (``bash``, ``python``...).
        text: its content.
        marker: the HTML comment line right above it (blank lines between allowed), if any.
        section: the title of the nearest heading above it.
    """

    path: Path
    line: int
    language: str
    text: str
    marker: str | None
    section: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"

    @property
    def commands(self) -> str:
        """The shell text to run: a ``console`` block's ``$ `` lines, else the whole block."""
        if self.language != "console":
            return self.text
        return "".join(line[2:] + "\n" for line in self.text.splitlines() if line.startswith("$ "))


def doc_files() -> list[Path]:
    return [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """Every fenced block of one Markdown file, in order."""
    found: list[Block] = []
    lines = path.read_text().splitlines()
    section, marker = "", None
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence is None:
            heading = _HEADING.match(line)
            if heading:
                section = heading.group("title")
            if line.strip().startswith("<!--"):
                marker = line.strip()
            elif line.strip():
                marker = None
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        text = "".join(f"{body}\n" for body in lines[i + 1 : end])
        found.append(Block(path, i + 1, fence.group("language"), text, marker, section))
        marker = None
        i = end + 1
    return found


def all_blocks() -> list[Block]:
    return [block for path in doc_files() for block in blocks(path)]


def command_blocks() -> list[Block]:
    return [block for block in all_blocks() if block.language in COMMAND_LANGUAGES]


def section_blocks(path: Path, section: str) -> list[Block]:
    """The blocks of one section (its own heading, not the subsections')."""
    return [block for block in blocks(path) if block.section == section]
