"""The section headings of a document's text, and the ones a passage sits under.

A passage cut from the middle of a section rarely repeats the section's name, yet a question
often names it ("what does the nonlocal statement do"): the keyword index weighs a passage's
headings as a field of their own (knowledge/keywords.py). Headings are read from the text the
parsers produce: Markdown ATX lines (`## Ranges`) and lines underlined with a repeated
punctuation character (Markdown's setext headings, reStructuredText's section titles, and so
plain-text manuals such as Python's own reference). An indented line is code or a quotation,
never a heading, nor is a line in a fenced code block, so a `# comment` in code is not taken for
one.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

# A heading longer than this is a paragraph that happens to be followed by a rule.
MAX_HEADING_CHARS = 150
# What a chunk's heading path may hold: the deepest headings are kept when it is longer.
MAX_PATH_CHARS = 300
SEPARATOR = " / "

_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_UNDERLINE = re.compile(r"^ {0,3}([=\-*~^\"'`#+])\1{2,}[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


@dataclass(frozen=True)
class Heading:
    start_char: int
    level: int
    text: str


def section_headings(text: str) -> list[Heading]:
    """Every heading of `text`, in order. An underlined heading's level is the order in which its
    underline character first appears (reStructuredText's rule); an ATX heading's is its number of
    `#`; the two are not mixed in one document in practice."""
    headings: list[Heading] = []
    underlines: list[str] = []
    lines = text.splitlines(keepends=True)
    offset = 0
    previous_blank = True
    fenced = False
    for index, line in enumerate(lines):
        start, offset = offset, offset + len(line)
        if _FENCE.match(line):
            fenced, previous_blank = not fenced, False
            continue
        if fenced:
            continue
        stripped = line.strip()
        blank = not stripped
        indented = line[:4].strip() == "" and not blank
        if blank or indented or len(stripped) > MAX_HEADING_CHARS:
            previous_blank = blank
            continue
        atx = _ATX.match(line.rstrip("\r\n"))
        if atx is not None:
            headings.append(Heading(start_char=start, level=len(atx.group(1)), text=atx.group(2).strip()))
        elif previous_blank and index + 1 < len(lines) and not _UNDERLINE.match(line):
            underline = _UNDERLINE.match(lines[index + 1])
            if underline is not None and len(lines[index + 1].strip()) >= len(stripped) - 2:
                mark = underline.group(1)
                if mark not in underlines:
                    underlines.append(mark)
                headings.append(Heading(start_char=start, level=underlines.index(mark) + 1, text=stripped))
        previous_blank = False
    return headings


def heading_path(headings: list[Heading], *, start_char: int) -> str:
    """The headings a passage starting at `start_char` sits under, outermost first, joined by
    SEPARATOR: the last heading of each level before it that no higher heading has closed."""
    starts = [heading.start_char for heading in headings]
    open_sections: list[Heading] = []
    for heading in headings[: bisect.bisect_right(starts, start_char)]:
        open_sections = [outer for outer in open_sections if outer.level < heading.level]
        open_sections.append(heading)
    path = [heading.text for heading in open_sections]
    while len(path) > 1 and len(SEPARATOR.join(path)) > MAX_PATH_CHARS:
        path.pop(0)
    return SEPARATOR.join(path)[:MAX_PATH_CHARS]
