from __future__ import annotations

import contextlib
import io
import random
import tracemalloc
import zipfile
from collections.abc import Callable

import pytest

from knowledge.lib.parsing import (
    CorruptDocument,
    DocumentError,
    EmptyDocument,
    UnsupportedFormat,
    extract_text,
    sniff_format,
)


def test_plain_text_keeps_paragraphs_and_normalizes_line_endings() -> None:
    parsed = extract_text(
        data=b"First line\r\nsame paragraph.\r\n\r\n\r\n\r\nSecond paragraph.  \r\n",
        filename="notes.txt",
        content_type="text/plain",
    )

    assert parsed.format == "text"
    assert parsed.title is None
    assert parsed.text == "First line\nsame paragraph.\n\nSecond paragraph."


def test_utf8_byte_order_mark_is_not_part_of_the_text() -> None:
    parsed = extract_text(data=b"\xef\xbb\xbfcaf\xc3\xa9", filename="a.txt", content_type=None)

    assert parsed.text == "café"


def test_utf16_with_byte_order_mark_is_decoded() -> None:
    data = "\ufeffgrüße aus Köln".encode("utf-16-le")

    assert extract_text(data=data, filename="a.txt", content_type=None).text == "grüße aus Köln"


def test_invalid_utf8_falls_back_to_windows_1252() -> None:
    data = b"caf\xe9 \x93quoted\x94"

    assert extract_text(data=data, filename="a.txt", content_type=None).text == "café “quoted”"


def test_bytes_undefined_in_windows_1252_fall_back_to_latin1() -> None:
    data = b"x\x81y \xe9"

    assert extract_text(data=data, filename="a.txt", content_type=None).text == "x\x81y é"


def test_declared_charset_is_used_when_it_decodes() -> None:
    greek = "Καλημέρα κόσμε"

    parsed = extract_text(
        data=greek.encode("iso-8859-7"),
        filename="greek.txt",
        content_type="text/plain; charset=ISO-8859-7",
    )

    assert parsed.text == greek


def test_declared_utf16_without_byte_order_mark_is_decoded() -> None:
    parsed = extract_text(
        data="plain words".encode("utf-16-le"),
        filename="a.txt",
        content_type="text/plain; charset=utf-16-le",
    )

    assert parsed.text == "plain words"


@pytest.mark.parametrize("charset", ["base64", "rot13", "no-such-charset"])
def test_declared_charset_that_is_not_a_text_encoding_is_ignored(charset: str) -> None:
    parsed = extract_text(
        data=b"caf\xc3\xa9", filename="a.txt", content_type=f"text/plain; charset={charset}"
    )

    assert parsed.text == "café"


def test_text_with_nul_bytes_is_refused_as_binary() -> None:
    with pytest.raises(CorruptDocument, match="binary"):
        extract_text(data=b"abc\x00\x01\x02def", filename="a.txt", content_type=None)


def test_whitespace_only_text_is_empty() -> None:
    with pytest.raises(EmptyDocument):
        extract_text(data=b" \n\n\t ", filename="a.txt", content_type="text/plain")


def test_markdown_title_is_the_first_level_one_heading() -> None:
    source = b"Intro line\n\n## Not this\n\n# Install guide #\n\nRun `make`.\n\n# Later\n"

    parsed = extract_text(data=source, filename="README.md", content_type=None)

    assert parsed.format == "markdown"
    assert parsed.title == "Install guide"
    assert "Run `make`." in parsed.text


def test_markdown_setext_heading_is_a_title() -> None:
    parsed = extract_text(
        data=b"Release notes\n=============\n\nFixed things.", filename="x.md", content_type=None
    )

    assert parsed.title == "Release notes"


HTML_PAGE = b"""<!DOCTYPE html>
<html><head><title> Refund   policy </title><style>p { color: red }</style>
<script>var secret = "do not index";</script></head>
<body>
<nav>Home</nav>
<h1>Refunds</h1>
<p>Refunds are <b>possible</b> within
   30 days.</p><p>Second paragraph.<br>Same paragraph, new line.</p>
<ul><li>One</li><li>Two</li></ul>
<table><tr><th>Plan</th><th>Price</th></tr><tr><td>Pro</td><td>10</td></tr></table>
<noscript>Enable JavaScript</noscript>
<pre>code   keeps
   spacing</pre>
<!-- a comment -->
</body></html>"""


def test_html_text_drops_scripts_styles_and_comments() -> None:
    parsed = extract_text(data=HTML_PAGE, filename="policy.html", content_type="text/html")

    assert parsed.format == "html"
    for hidden in ("do not index", "color: red", "Enable JavaScript", "a comment"):
        assert hidden not in parsed.text


def test_html_keeps_headings_paragraphs_lists_and_tables_as_blocks() -> None:
    parsed = extract_text(data=HTML_PAGE, filename="policy.html", content_type=None)

    assert parsed.title == "Refund policy"
    assert parsed.text == (
        "Home\n\nRefunds\n\nRefunds are possible within 30 days.\n\n"
        "Second paragraph.\nSame paragraph, new line.\n\nOne\nTwo\n\n"
        "Plan | Price\nPro | 10\n\ncode   keeps\n   spacing"
    )


def test_html_title_falls_back_to_the_first_h1() -> None:
    parsed = extract_text(
        data=b"<html><body><h1>Pricing</h1><p>Cheap.</p></body></html>",
        filename="p.html",
        content_type=None,
    )

    assert parsed.title == "Pricing"


def test_html_meta_charset_is_honoured() -> None:
    page = '<html><head><meta charset="windows-1251"></head><body><p>Привет</p></body></html>'

    parsed = extract_text(data=page.encode("windows-1251"), filename="ru.html", content_type=None)

    assert parsed.text == "Привет"


def test_html_is_recognised_by_its_start_without_a_name_hint() -> None:
    assert sniff_format(data=b"  <!doctype html><p>x", filename="upload", content_type=None) == ("html")


def test_deeply_nested_html_does_not_crash_the_parser() -> None:
    page = b"<html><body>" + b"<div>" * 5000 + b"<p>deep text</p>" + b"</div>" * 5000 + b"</body>"

    parsed = extract_text(data=page, filename="deep.html", content_type=None)

    assert parsed.text == "deep text"


def test_pdf_text_and_title_are_extracted(make_pdf: Callable[..., bytes]) -> None:
    data = make_pdf([["Quarterly report", "Revenue grew (a lot)."], ["Page two text."]], title="Q3 Report")

    parsed = extract_text(data=data, filename="q3.pdf", content_type="application/pdf")

    assert parsed.format == "pdf"
    assert parsed.title == "Q3 Report"
    assert "Revenue grew (a lot)." in parsed.text
    assert parsed.text.index("Quarterly report") < parsed.text.index("Page two text.")
    assert "\n\n" in parsed.text  # pages are separate paragraphs


def test_pdf_without_a_text_layer_is_empty(make_pdf: Callable[..., bytes]) -> None:
    with pytest.raises(EmptyDocument, match="OCR"):
        extract_text(data=make_pdf([[]]), filename="scan.pdf", content_type=None)


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.4\n" + b"\x00garbage" * 50,
        b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R",
        b"%PDF-",
    ],
    ids=["garbage", "truncated", "header-only"],
)
def test_unreadable_pdf_is_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptDocument):
        extract_text(data=data, filename="broken.pdf", content_type="application/pdf")


def test_pdf_name_without_pdf_bytes_is_corrupt() -> None:
    with pytest.raises(CorruptDocument, match="%PDF"):
        extract_text(data=b"just text", filename="fake.pdf", content_type=None)


def test_magic_bytes_win_over_the_extension(make_pdf: Callable[..., bytes]) -> None:
    data = make_pdf([["hello"]])

    assert sniff_format(data=data, filename="notes.txt", content_type="text/plain") == "pdf"


def test_docx_paragraphs_tables_and_title_are_extracted(make_docx: Callable[..., bytes]) -> None:
    data = make_docx(
        title_paragraph="Employee handbook",
        paragraphs=["Welcome aboard.", "", "Holidays are 25 days."],
        table=[["Level", "Days"], ["Junior", "25"], ["Senior", "30"]],
    )

    parsed = extract_text(data=data, filename="handbook.docx", content_type=None)

    assert parsed.format == "docx"
    assert parsed.title == "Employee handbook"
    assert parsed.text == (
        "Employee handbook\n\nWelcome aboard.\n\nHolidays are 25 days.\n\n"
        "Level | Days\nJunior | 25\nSenior | 30"
    )


def test_docx_core_title_wins_over_title_style(make_docx: Callable[..., bytes]) -> None:
    data = make_docx(core_title="Official", title_paragraph="Styled", paragraphs=["x"])

    assert extract_text(data=data, filename="a.docx", content_type=None).title == "Official"


def test_docx_is_recognised_from_its_zip_content_without_extension(
    make_docx: Callable[..., bytes],
) -> None:
    data = make_docx(paragraphs=["x"])

    assert sniff_format(data=data, filename="upload", content_type="application/octet-stream") == ("docx")


def test_docx_that_is_not_a_zip_is_corrupt() -> None:
    with pytest.raises(CorruptDocument, match="not a zip"):
        extract_text(data=b"hello", filename="a.docx", content_type=None)


def test_truncated_docx_is_corrupt(make_docx: Callable[..., bytes]) -> None:
    data = make_docx(paragraphs=["hello"])

    with pytest.raises(CorruptDocument):
        extract_text(data=data[: len(data) // 2], filename="a.docx", content_type=None)


def test_zip_bomb_docx_is_refused_before_anything_is_decompressed(
    zip_bomb_docx: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decompression(*args: object, **kwargs: object) -> None:
        raise AssertionError("a member was opened for reading")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_decompression)

    with pytest.raises(CorruptDocument, match="zip bomb"):
        extract_text(data=zip_bomb_docx, filename="bomb.docx", content_type=None)


def test_member_lying_about_its_size_is_refused_without_inflating_it(
    lying_size_docx: bytes,
) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(CorruptDocument, match="readable .docx"):
            extract_text(data=lying_size_docx, filename="liar.docx", content_type=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Inflating the member whole would allocate its 100 MB.
    assert peak < 10 * 2**20


def test_zip_bomb_limit_is_configurable(zip_bomb_docx: bytes) -> None:
    parsed = extract_text(
        data=zip_bomb_docx,
        filename="big.docx",
        content_type=None,
        max_uncompressed_bytes=100 * 2**20,
        max_compression_ratio=2000,
    )

    assert parsed.text == "innocent"


def test_member_with_extreme_compression_ratio_is_refused(high_ratio_docx: bytes) -> None:
    with pytest.raises(CorruptDocument, match="compresses"):
        extract_text(data=high_ratio_docx, filename="dense.docx", content_type=None)


def test_zip_with_too_many_members_is_refused(crowded_docx: bytes) -> None:
    with pytest.raises(CorruptDocument, match="zip members"):
        extract_text(data=crowded_docx, filename="crowded.docx", content_type=None)


def test_plain_zip_archive_is_unsupported() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data.csv", "a,b\n1,2\n")

    with pytest.raises(UnsupportedFormat, match="zip archive"):
        extract_text(data=buffer.getvalue(), filename="data.zip", content_type=None)


def test_legacy_word_document_is_unsupported() -> None:
    ole2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)

    with pytest.raises(UnsupportedFormat, match="legacy Office"):
        extract_text(data=ole2, filename="old.doc", content_type="application/msword")


def test_unknown_binary_format_is_unsupported() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(64)

    with pytest.raises(UnsupportedFormat, match="cannot tell the format"):
        extract_text(data=png, filename="picture.png", content_type="image/png")


def test_mutated_documents_never_raise_anything_but_document_errors(
    make_pdf: Callable[..., bytes], make_docx: Callable[..., bytes]
) -> None:
    rng = random.Random(1234)
    originals = {
        "doc.pdf": make_pdf([["Some text on a page."], ["More text."]], title="T"),
        "doc.docx": make_docx(paragraphs=["Some text.", "More text."]),
    }
    for filename, original in originals.items():
        for _ in range(40):
            mutated = bytearray(original)
            for _ in range(rng.randint(1, 20)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            with contextlib.suppress(DocumentError):
                extract_text(data=bytes(mutated), filename=filename, content_type=None)
