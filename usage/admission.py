"""What a route costs, declared on its view, so that admission can hold it before the view
does any work.

    class GenerateApi(APIView):
        cost = RouteCost(endpoint="generate", end_user_field="user_id", model=model_named_in)

`usage.middleware.AdmissionMiddleware` reads the JSON body once, estimates the tokens with
`estimate` (tiktoken: cheap, no model involved), and reserves them on every budget with the
request's rate limits, in one Redis round trip. The view gets the reservation from the request's
notes; when the serving model's exact count turns out larger, it grows the hold
(`Reservation.ensure`) before any generation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from usage.tokens import TokenEstimate, estimate_body

# The longest end user name: EndUserBudget.end_user's, and the serializers' `user` and `user_id`.
END_USER_MAX_CHARS = 128


@dataclass(frozen=True)
class RouteCost:
    endpoint: str  # the usage record's endpoint
    estimate: Callable[[dict[str, Any]], TokenEstimate | None] = estimate_body
    # The body field that names the end user whose budget applies.
    end_user_field: str = "user"
    # The model the reservation's record names until the view settles it, from the body.
    model: Callable[[dict[str, Any]], str] | None = None
    # A job: the hold waits with it in the queue and costs nothing if no worker starts it.
    queued: bool = False
    # An organization field with this route's own requests-per-minute limit, counted beside
    # the organization's and the key's (searches: `search_requests_per_minute`).
    requests_limit: str | None = None

    def end_user(self, body: dict[str, Any]) -> str | None:
        """The end user as the view reads it (trimmed, as DRF's CharField does), or None for a
        name the view refuses with its 400: no budget is looked up for that one, and a NUL,
        which PostgreSQL cannot hold, never reaches a query."""
        value = body.get(self.end_user_field)
        if not isinstance(value, str):
            return None
        value = value.strip()
        return value if value and len(value) <= END_USER_MAX_CHARS and "\x00" not in value else None


def route_cost(view_func: Callable[..., Any]) -> RouteCost | None:
    view_class = getattr(view_func, "view_class", None) or getattr(view_func, "cls", None)
    cost = getattr(view_class, "cost", None)
    return cost if isinstance(cost, RouteCost) else None
