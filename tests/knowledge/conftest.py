from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.knowledge_lib.conftest import build_docx, build_pdf, zip_bomb_docx  # noqa: F401


@pytest.fixture(autouse=True)
def index_dir(settings: Any, tmp_path: Path) -> Iterator[Path]:
    settings.KNOWLEDGE_INDEX_DIR = tmp_path / "indexes"
    yield settings.KNOWLEDGE_INDEX_DIR
