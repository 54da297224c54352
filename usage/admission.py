"""What a route costs, declared on its view, so that admission can hold it before the view
does any work.

    class GenerateApi(APIView):
        cost = RouteCost(endpoint="generate", end_user_field="user_id", model=model_name)

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


@dataclass(frozen=True)
class RouteCost:
    endpoint: str  # the usage record's endpoint
    estimate: Callable[[dict[str, Any]], TokenEstimate | None] = estimate_body
    # The body field that names the end user whose budget applies.
    end_user_field: str = "user"
    # The model the reservation's record names until the view settles it.
    model: Callable[[], str] | None = None
    # A job: the hold waits with it in the queue and costs nothing if no worker starts it.
    queued: bool = False
    # An organization field with this route's own requests-per-minute limit, counted beside
    # the organization's and the key's (searches: `search_requests_per_minute`).
    requests_limit: str | None = None

    def end_user(self, body: dict[str, Any]) -> str | None:
        value = body.get(self.end_user_field)
        return value if isinstance(value, str) and value else None


def route_cost(view_func: Callable[..., Any]) -> RouteCost | None:
    view_class = getattr(view_func, "view_class", None) or getattr(view_func, "cls", None)
    cost = getattr(view_class, "cost", None)
    return cost if isinstance(cost, RouteCost) else None
