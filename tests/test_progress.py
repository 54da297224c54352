"""Long commands show how far along they are: a bar on a terminal, log lines otherwise."""

from __future__ import annotations

import io
import logging

import pytest
from django.core.management import call_command

from common.progress import progress
from tests.conftest import Tenant


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_and_a_log_gets_lines(caplog: pytest.LogCaptureFixture) -> None:
    terminal = Terminal()
    assert list(progress(range(5), total=5, label="work", stream=terminal)) == [0, 1, 2, 3, 4]
    assert "work: 100%" in terminal.getvalue() and "5/5" in terminal.getvalue()
    with caplog.at_level(logging.INFO, logger="platform.progress"):
        assert list(progress(range(3), total=3, label="work", stream=io.StringIO(), every_seconds=3600)) == [
            0,
            1,
            2,
        ]
    assert [record.getMessage().split(" (")[0] for record in caplog.records] == [
        "work: 3 of 3"
    ]  # the last one


@pytest.mark.django_db
def test_rebuild_index_reports_its_progress(
    alice: Tenant, charlie: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="platform.progress"):
        call_command("rebuild_index")
    assert any(record.getMessage().startswith("rebuild_index: 2 of 2") for record in caplog.records)
