"""A request's state, in one typed object (Zulip's `RequestNotes`): what each stage of the API
pipeline found out, for the stages after it and the view. Nothing else is added to the request.

    RequestID → … → Authentication (`auth`) → Admission (`estimate`, `limits`, `reservation`) → view
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from django.http import HttpRequest

if TYPE_CHECKING:  # the apps above `common` fill these in; `common` imports none of them
    from accounts.context import AuthContext
    from usage.ratelimit import LimitState
    from usage.services import Reservation
    from usage.tokens import TokenEstimate


@dataclass
class RequestNotes:
    request_id: str = ""
    # Who is calling (accounts.middleware), None outside the API or on a public path.
    auth: AuthContext | None = None
    # The JSON body as admission read it, so that the view's parser does not parse it again.
    json_body: dict[str, Any] | None = None
    # The route's cost, estimated from the body before the view (usage.middleware).
    estimate: TokenEstimate | None = None
    # The requests- and tokens-per-minute limits as counted, for the x-ratelimit-* headers.
    limits: dict[str, LimitState | None] = field(default_factory=dict)
    # The budget held for this request by admission; the view settles it (or admission
    # cancels it when the view refused the request).
    reservation: Reservation | None = None
    # What admission decided on a metered route: admitted, rate_limited, insufficient_quota or
    # unavailable (None: the route is not metered, or its body was not one to estimate).
    admission: str | None = None


_notes: WeakKeyDictionary[HttpRequest, RequestNotes] = WeakKeyDictionary()


def request_notes(request: Any) -> RequestNotes:
    """The notes of a Django request, or of the one a DRF request wraps."""
    request = getattr(request, "_request", request)
    notes = _notes.get(request)
    if notes is None:
        notes = _notes[request] = RequestNotes()
    return notes
