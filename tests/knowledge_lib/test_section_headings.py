from __future__ import annotations

from knowledge.lib.headings import heading_path, section_headings

MANUAL = """Execution model
***************

Structure of a program
======================

A program is built from code blocks.

Naming and binding
==================

Binding of names
----------------

Names refer to objects.

   def f():
       # Not a heading
       x = 1

Resolution of names
-------------------

A scope defines the visibility of a name.
"""

MARKDOWN = """# Guide

Intro text.

## Install

Run make.

### From source

```
# a shell comment, not a heading
make build
```

## Use

Call the API.
"""


def _path_at(text: str, needle: str) -> str:
    return heading_path(section_headings(text), start_char=text.index(needle))


def test_underlined_headings_nest_by_the_order_their_marks_appear() -> None:
    assert _path_at(MANUAL, "Names refer") == "Execution model / Naming and binding / Binding of names"
    assert _path_at(MANUAL, "A scope") == "Execution model / Naming and binding / Resolution of names"
    assert _path_at(MANUAL, "A program") == "Execution model / Structure of a program"


def test_a_higher_heading_closes_the_sections_below_it() -> None:
    assert _path_at(MARKDOWN, "Call the API") == "Guide / Use"
    assert _path_at(MARKDOWN, "make build") == "Guide / Install / From source"


def test_indented_code_and_fenced_comments_are_not_headings() -> None:
    assert "Not a heading" not in [heading.text for heading in section_headings(MANUAL)]
    assert _path_at(MARKDOWN, "make build").endswith("From source")


def test_a_passage_that_starts_at_a_heading_is_under_it() -> None:
    text = MANUAL
    assert heading_path(section_headings(text), start_char=text.index("Resolution of names")).endswith(
        "Resolution of names"
    )


def test_text_without_headings_has_an_empty_path() -> None:
    assert heading_path(section_headings("Just a paragraph.\n\nAnother one.\n"), start_char=5) == ""
