"""Work that runs once the response is on its way to the client, off the client's latency.

`after_response(fn)` inside a request defers `fn` until the server closes the response, which
it does after sending it (`RequestIDMiddleware` attaches the deferred work to the response).
Outside a request (Celery tasks, management commands) `fn` runs at once. Used to settle a
budget reservation: the tokens stay reserved until then, so deferring it never lets spend
through; a process that dies before closing leaves the reservation to expire.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from contextvars import ContextVar, Token

from django.http import HttpResponseBase

logger = logging.getLogger(__name__)

_pending: ContextVar[list[Callable[[], object]] | None] = ContextVar("after_response", default=None)


def after_response(fn: Callable[[], object]) -> None:
    pending = _pending.get()
    if pending is None:
        fn()
    else:
        pending.append(fn)


def collect() -> Token[list[Callable[[], object]] | None]:
    """Starts collecting deferred work for the current request."""
    return _pending.set([])


def attach(token: Token[list[Callable[[], object]] | None], response: HttpResponseBase) -> None:
    """Stops collecting; the collected work runs when the server closes `response`."""
    pending = _pending.get() or []
    _pending.reset(token)
    # The work runs in the request's context: its trace (the settlement's Redis call is a span
    # of the request's trace, not a trace of its own) and its request id.
    context = contextvars.copy_context()
    for fn in pending:
        response._resource_closers.append(_logged(fn, context))  # type: ignore[attr-defined]


def _logged(fn: Callable[[], object], context: contextvars.Context) -> Callable[[], None]:
    def run() -> None:
        try:
            context.run(fn)
        except Exception:
            logger.exception("Deferred work after the response failed")

    return run
