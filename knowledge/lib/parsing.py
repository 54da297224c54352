"""Turn an uploaded file into plain text, the first step of ingestion.

Every refusal is one of three exceptions (`UnsupportedFormat`, `EmptyDocument`,
`CorruptDocument`) carrying a message that can be shown to the uploader. No exception raised by
a parsing library escapes: a hostile or broken upload must fail the document, never the worker.
"""

from __future__ import annotations

import codecs
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import PurePath
from typing import Literal

import docx
from bs4 import BeautifulSoup, NavigableString, PageElement, Tag
from bs4.element import Comment, Declaration, Doctype, ProcessingInstruction
from docx.table import Table
from docx.text.paragraph import Paragraph
from pypdf import PasswordType, PdfReader

DocumentFormat = Literal["text", "markdown", "html", "pdf", "docx"]

DEFAULT_MAX_UNCOMPRESSED_BYTES = 50 * 1024 * 1024
# A real .docx has a few dozen parts; thousands of members only serve to exhaust the parser.
DEFAULT_MAX_ZIP_MEMBERS = 2_000
DEFAULT_MAX_COMPRESSION_RATIO = 100.0
# Small XML parts legitimately compress far better than 100:1 (long runs of identical markup),
# and they cannot hurt anyone, so the ratio is only judged on members at least this large.
_RATIO_CHECK_MIN_MEMBER_BYTES = 1024 * 1024
# Output bound of each inflation step when proving a member's declared size.
_INFLATE_STEP_BYTES = 1024 * 1024

_DOCX_CONTENT_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
_EXTENSION_FORMATS: dict[str, DocumentFormat] = {
    ".txt": "text",
    ".text": "text",
    ".log": "text",
    ".csv": "text",
    ".tsv": "text",
    ".rst": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".pdf": "pdf",
    ".docx": "docx",
}
_CONTENT_TYPE_FORMATS: dict[str, DocumentFormat] = {
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
    _DOCX_CONTENT_TYPE: "docx",
}
_SUPPORTED = "plain text, Markdown, HTML, PDF and Word .docx"

_PDF_MAGIC = b"%PDF-"
_ZIP_MAGIC = b"PK\x03\x04"
_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# Longest BOM first: the UTF-32-LE BOM starts with the UTF-16-LE one.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_CHARSET_PARAM = re.compile(r"""charset\s*=\s*["']?([A-Za-z0-9._:-]+)""", re.IGNORECASE)
_HTML_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9._:-]+)""", re.I)
_HTML_START = re.compile(r"\s*(<!--.*?-->\s*)*<(!doctype\s+html|html[\s>])", re.I | re.S)
_MARKDOWN_ATX_H1 = re.compile(r"^#[ \t]+(.+?)[ \t#]*$", re.M)
_MARKDOWN_SETEXT_H1 = re.compile(r"^(\S[^\n]*)\n=+[ \t]*$", re.M)


class DocumentError(Exception):
    """Base of every reason a document cannot be turned into text."""


class UnsupportedFormat(DocumentError):
    """The file is of a kind this library does not read."""


class EmptyDocument(DocumentError):
    """The file was read but holds no text (for example a scanned PDF without a text layer)."""


class CorruptDocument(DocumentError):
    """The file claims a supported format but cannot be read safely."""


@dataclass(frozen=True)
class ParsedDocument:
    title: str | None
    text: str
    format: DocumentFormat


def sniff_format(*, data: bytes, filename: str, content_type: str | None) -> DocumentFormat:
    """Decide the format from magic bytes first, then the extension, then the content type.

    Magic bytes win because browsers derive the content type from the name, which the uploader
    controls. Raises `UnsupportedFormat`, or `CorruptDocument` when the name promises a PDF or
    a .docx that the bytes are not.
    """
    declared = _declared_format(filename=filename, content_type=content_type)
    if data.startswith(_PDF_MAGIC) or (declared == "pdf" and _PDF_MAGIC in data[:1024]):
        # The PDF specification lets readers accept the header within the first 1024 bytes.
        return "pdf"
    if data.startswith(_ZIP_MAGIC):
        if declared == "docx" or _zip_holds_word_document(data):
            return "docx"
        raise UnsupportedFormat(f"{filename!r} is a zip archive, not a Word .docx document")
    if data.startswith(_OLE2_MAGIC):
        raise UnsupportedFormat(
            f"{filename!r} is a legacy Office file (.doc/.xls/.ppt); save it as .docx or PDF"
        )
    if declared == "pdf":
        raise CorruptDocument(f"{filename!r} is declared as PDF but does not start with %PDF")
    if declared == "docx":
        raise CorruptDocument(f"{filename!r} is declared as .docx but is not a zip archive")
    if declared is not None:
        return declared
    if _HTML_START.match(data[:1024].decode("latin-1")):
        return "html"
    if content_type is not None and _media_type(content_type).startswith("text/"):
        return "text"
    raise UnsupportedFormat(
        f"cannot tell the format of {filename!r} (content type {content_type!r}); supported: {_SUPPORTED}"
    )


def extract_text(
    *,
    data: bytes,
    filename: str,
    content_type: str | None,
    max_uncompressed_bytes: int = DEFAULT_MAX_UNCOMPRESSED_BYTES,
    max_zip_members: int = DEFAULT_MAX_ZIP_MEMBERS,
    max_compression_ratio: float = DEFAULT_MAX_COMPRESSION_RATIO,
) -> ParsedDocument:
    """Read `data` as the format `sniff_format` finds and return its title and plain text.

    Paragraphs are separated by a blank line, which the chunker treats as its preferred cut.
    The zip limits apply to .docx files and are checked before anything is decompressed.
    """
    document_format = sniff_format(data=data, filename=filename, content_type=content_type)
    charset = _charset_param(content_type)
    title: str | None
    if document_format == "pdf":
        title, text = _read_pdf(data=data, filename=filename)
    elif document_format == "docx":
        _check_zip_limits(
            data=data,
            filename=filename,
            max_uncompressed_bytes=max_uncompressed_bytes,
            max_members=max_zip_members,
            max_ratio=max_compression_ratio,
        )
        title, text = _read_docx(data=data, filename=filename)
    elif document_format == "html":
        title, text = _read_html(data=data, filename=filename, declared_charset=charset)
    else:
        text = decode_text(data=data, filename=filename, declared_charset=charset)
        title = _markdown_title(text) if document_format == "markdown" else None
    text = _normalize_whitespace(text)
    if not text:
        raise EmptyDocument(_empty_message(filename=filename, document_format=document_format))
    return ParsedDocument(title=_clean_title(title), text=text, format=document_format)


def decode_text(*, data: bytes, filename: str, declared_charset: str | None = None) -> str:
    """Decode bytes whose encoding is not known for sure, without guessing.

    Order: a byte-order mark; the charset the uploader declared, if it decodes cleanly; strict
    UTF-8; strict Windows-1252 (what text labelled Latin-1 almost always is, per the WHATWG
    encoding standard); Latin-1, which accepts any byte. A NUL byte outside UTF-16/32 means the
    file is binary, and it is refused rather than decoded into garbage.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data[len(bom) :].decode(encoding, errors="replace")
    if declared_charset is not None and _is_text_codec(declared_charset):
        try:
            declared = data.decode(declared_charset)
        except UnicodeDecodeError:
            declared = None
        # A declared UTF-16 without BOM legitimately holds NUL bytes; its decoded text does not.
        if declared is not None and "\x00" not in declared:
            return declared
    if b"\x00" in data:
        raise CorruptDocument(f"{filename!r} contains binary data (NUL bytes); it is not text")
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def _declared_format(*, filename: str, content_type: str | None) -> DocumentFormat | None:
    extension_format = _EXTENSION_FORMATS.get(PurePath(filename).suffix.lower())
    if extension_format is not None:
        return extension_format
    if content_type is None:
        return None
    return _CONTENT_TYPE_FORMATS.get(_media_type(content_type))


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _charset_param(content_type: str | None) -> str | None:
    if content_type is None:
        return None
    match = _CHARSET_PARAM.search(content_type)
    return match.group(1) if match else None


def _is_text_codec(name: str) -> bool:
    # Decoding raises LookupError both for unknown names and for bytes-to-bytes codecs such as
    # "base64", which must not be reachable from an uploader's charset parameter. (Empty input
    # would not do: Python returns "" for it without looking the codec up.)
    try:
        b"a".decode(name)
    except LookupError:
        return False
    except UnicodeDecodeError:
        return True
    return True


def _zip_holds_word_document(data: bytes) -> bool:
    # Reading the central directory decompresses nothing, so this is safe on a zip bomb.
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return "word/document.xml" in archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False


def _check_zip_limits(
    *, data: bytes, filename: str, max_uncompressed_bytes: int, max_members: int, max_ratio: float
) -> None:
    """Refuse a zip bomb from its central directory, before any member is inflated.

    The declared sizes are then proved honest: every member is inflated in bounded steps and
    `zipfile` stops at the declared size and checks the CRC. Without this, a member that
    declares 1 KB but inflates to gigabytes would be inflated whole by python-docx's
    `ZipFile.read`, which decompresses all of a member's compressed bytes in one call.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            _check_declared_sizes(
                members=members,
                filename=filename,
                max_uncompressed_bytes=max_uncompressed_bytes,
                max_members=max_members,
                max_ratio=max_ratio,
            )
            for member in members:
                with archive.open(member) as stream:
                    while stream.read(_INFLATE_STEP_BYTES):
                        pass
    except DocumentError:
        raise
    except Exception as exc:  # BadZipFile, zlib.error, EOFError, encrypted members...
        raise CorruptDocument(f"{filename!r} is not a readable .docx (bad zip: {exc})") from exc


def _check_declared_sizes(
    *,
    members: list[zipfile.ZipInfo],
    filename: str,
    max_uncompressed_bytes: int,
    max_members: int,
    max_ratio: float,
) -> None:
    if len(members) > max_members:
        raise CorruptDocument(f"{filename!r} has {len(members)} zip members (limit {max_members}); refused")
    # Summing declared sizes also counts members that share compressed data (overlapping-entry
    # bombs) once per entry.
    total = sum(member.file_size for member in members)
    if total > max_uncompressed_bytes:
        raise CorruptDocument(
            f"{filename!r} would expand to {total:,} bytes (limit {max_uncompressed_bytes:,}); "
            "refused as a possible zip bomb"
        )
    for member in members:
        # Word writes only these two; bzip2 and LZMA inflate without an output bound in zipfile.
        if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CorruptDocument(
                f"{filename!r} member {member.filename!r} uses an unexpected compression method"
            )
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size >= _RATIO_CHECK_MIN_MEMBER_BYTES and ratio > max_ratio:
            raise CorruptDocument(
                f"{filename!r} member {member.filename!r} compresses {ratio:,.0f}:1 "
                f"(limit {max_ratio:,.0f}:1); refused as a possible zip bomb"
            )


def _read_pdf(*, data: bytes, filename: str) -> tuple[str | None, str]:
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise CorruptDocument(f"{filename!r} is a password-protected PDF")
        pages = [page.extract_text() or "" for page in reader.pages]
        metadata = reader.metadata
        title = metadata.title if metadata is not None else None
    except DocumentError:
        raise
    except Exception as exc:  # pypdf raises many unrelated types on malformed input.
        raise CorruptDocument(f"{filename!r} is not a readable PDF: {exc}") from exc
    return (title if isinstance(title, str) else None), "\n\n".join(pages)


def _read_docx(*, data: bytes, filename: str) -> tuple[str | None, str]:
    try:
        document = docx.Document(io.BytesIO(data))
        blocks: list[str] = []
        title: str | None = None
        for item in document.iter_inner_content():
            if isinstance(item, Paragraph):
                if title is None and item.style is not None and item.style.name == "Title":
                    title = item.text
                blocks.append(item.text)
            elif isinstance(item, Table):
                blocks.append(_docx_table_text(item))
        core_title = document.core_properties.title
    except Exception as exc:  # python-docx/lxml raise assorted types on malformed parts.
        raise CorruptDocument(f"{filename!r} is not a readable .docx: {exc}") from exc
    return (core_title or title), "\n\n".join(blocks)


def _docx_table_text(table: Table) -> str:
    rows: list[str] = []
    for row in table.rows:
        cells: list[str] = []
        previous_element = None
        for cell in row.cells:
            # python-docx repeats a merged cell once per grid column it spans.
            if cell._tc is previous_element:
                continue
            previous_element = cell._tc
            cells.append(" ".join(cell.text.split()))
        rows.append(" | ".join(cells))
    return "\n".join(rows)


_HTML_DROPPED_TAGS = frozenset(
    {"head", "script", "style", "noscript", "template", "svg", "math", "iframe", "object"}
    | {"canvas", "button", "select", "input", "textarea"}
)
_HTML_BLOCK_TAGS = frozenset(
    {"address", "article", "aside", "blockquote", "body", "caption", "details", "dialog", "div"}
    | {"dl", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6"}
    | {"header", "hgroup", "hr", "main", "nav", "ol", "p", "pre", "section", "summary", "table"}
    | {"tbody", "tfoot", "thead", "ul"}
)
# Block elements that are one line of a list or table rather than a paragraph of their own.
_HTML_LINE_TAGS = frozenset({"li", "tr", "dt", "dd"})
_HTML_CELL_TAGS = frozenset({"td", "th"})
_HTML_SKIPPED_NODES = (Comment, Declaration, Doctype, ProcessingInstruction)
# Private-use code points stand for breaks while text nodes are joined, so that whitespace
# collapsing cannot merge them; any such character already in the page is removed first.
_PARAGRAPH_MARK = "\ue000"
_LINE_MARK = "\ue001"
_CELL_MARK = "\ue002"
_MARKS = re.compile("[\ue000-\ue002]")
# A cell separator only between two cells of a row, never before the row's end.
_CELL_BETWEEN_CELLS = re.compile(f"[ \t]*{_CELL_MARK}\\s*(?=[^\\s{_PARAGRAPH_MARK}{_LINE_MARK}{_CELL_MARK}])")
_PARAGRAPH_BREAK = re.compile(f"\\s*{_PARAGRAPH_MARK}[\\s{_PARAGRAPH_MARK}{_LINE_MARK}]*")
_LINE_BREAK = re.compile(f"[ \t]*{_LINE_MARK}[ \t{_LINE_MARK}]*")
_COLLAPSIBLE = re.compile(r"[ \t\n\r\f\v]+")


def _read_html(*, data: bytes, filename: str, declared_charset: str | None) -> tuple[str | None, str]:
    charset = declared_charset
    if charset is None:
        meta = _HTML_META_CHARSET.search(data[:4096])
        charset = meta.group(1).decode("ascii") if meta else None
    markup = decode_text(data=data, filename=filename, declared_charset=charset)
    try:
        soup = BeautifulSoup(_MARKS.sub("", markup), "lxml")
        title_tag = soup.find("title")
        title = title_tag.get_text(" ", strip=True) if title_tag is not None else None
        if not title:
            h1 = soup.find("h1")
            title = h1.get_text(" ", strip=True) if h1 is not None else None
        text = _render_html(soup)
    except Exception as exc:  # lxml/bs4 failures on pathological markup.
        raise CorruptDocument(f"{filename!r} is not readable HTML: {exc}") from exc
    return title, text


def _render_html(soup: BeautifulSoup) -> str:
    """Render visible text with block elements as paragraphs and <br> as line breaks.

    Iterative rather than recursive: a page nested thousands of levels deep must not hit
    Python's recursion limit.
    """
    parts: list[str] = []
    # (node, closing, inside <pre>)
    stack: list[tuple[PageElement, bool, bool]] = [(soup, False, False)]
    while stack:
        node, closing, in_pre = stack.pop()
        if isinstance(node, NavigableString):
            if isinstance(node, _HTML_SKIPPED_NODES):
                continue
            text = str(node)
            parts.append(text if in_pre else _COLLAPSIBLE.sub(" ", text))
            continue
        if not isinstance(node, Tag):
            continue
        name = (node.name or "").lower()
        if closing:
            if name in _HTML_BLOCK_TAGS:
                parts.append(_PARAGRAPH_MARK)
            elif name in _HTML_LINE_TAGS:
                parts.append(_LINE_MARK)
            elif name in _HTML_CELL_TAGS:
                parts.append(_CELL_MARK)
            continue
        if name in _HTML_DROPPED_TAGS:
            continue
        if name == "br":
            parts.append(_LINE_MARK)
            continue
        if name in _HTML_BLOCK_TAGS:
            parts.append(_PARAGRAPH_MARK)
        elif name in _HTML_LINE_TAGS:
            parts.append(_LINE_MARK)
        stack.append((node, True, in_pre))
        child_in_pre = in_pre or name == "pre"
        stack.extend((child, False, child_in_pre) for child in reversed(node.contents))
    rendered = _CELL_BETWEEN_CELLS.sub(" | ", "".join(parts)).replace(_CELL_MARK, "")
    rendered = _PARAGRAPH_BREAK.sub("\n\n", rendered)
    return _LINE_BREAK.sub("\n", rendered)


def _markdown_title(text: str) -> str | None:
    candidates = [
        match
        for match in (_MARKDOWN_ATX_H1.search(text), _MARKDOWN_SETEXT_H1.search(text))
        if match is not None
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda match: match.start()).group(1)


def _normalize_whitespace(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = re.sub(r"[ \t\f\v]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def _clean_title(title: str | None) -> str | None:
    if title is None:
        return None
    cleaned = " ".join(title.split())
    return cleaned or None


def _empty_message(*, filename: str, document_format: DocumentFormat) -> str:
    if document_format == "pdf":
        return f"{filename!r} has no extractable text; scanned PDFs need OCR, which is not supported"
    return f"{filename!r} contains no text"
