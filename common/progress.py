"""Progress of long commands: a bar on a terminal, a log line every so often otherwise (a
Kubernetes job's or cron's log), so an operator at 3 a.m. knows whether to wait. Imports nothing
from Django: the training script uses it too."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")
logger = logging.getLogger("platform.progress")


def progress(
    items: Iterable[T],
    *,
    total: int | None,
    label: str,
    every_seconds: float = 10.0,
    stream: TextIO | None = None,
) -> Iterator[T]:
    """Yields `items`, showing how far along it is: tqdm's bar when `stream` (stderr) is a
    terminal, else an INFO line `label: done of total` at most every `every_seconds` and at the
    end."""
    stream = stream or sys.stderr
    if stream.isatty():
        yield from tqdm(items, total=total, desc=label, file=stream, dynamic_ncols=True)
        return
    started = last = time.monotonic()
    for done, item in enumerate(items, start=1):
        yield item
        now = time.monotonic()
        if now - last >= every_seconds or done == total:
            last = now
            of = f" of {total}" if total is not None else ""
            logger.info("%s: %d%s (%.0f s)", label, done, of, now - started)
