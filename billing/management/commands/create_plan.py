from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.services import plan_create


def _money(value: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation as exc:
        raise CommandError(f"'{value}' is not an amount.") from exc
    if not amount.is_finite() or amount < 0:
        raise CommandError(f"'{value}' is not an amount of zero or more.")
    return amount


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise CommandError(f"'{value}' is not a whole number.") from exc
    if number < 0:
        raise CommandError(f"'{value}' is negative.")
    return number


class Command(BaseCommand):
    help = (
        "Creates a plan. Prices are per period (--monthly-price) and per 1,000 tokens beyond the "
        "included ones; limits left out are unlimited. --private: only an operator assigns it "
        "(set_plan, the admin); tenants do not see it among the plans they may choose."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--name", required=True)
        parser.add_argument("--monthly-price", required=True, type=_money)
        parser.add_argument("--prompt-price", required=True, type=_money, help="Per 1,000 prompt tokens.")
        parser.add_argument(
            "--completion-price", required=True, type=_money, help="Per 1,000 completion tokens."
        )
        parser.add_argument("--included-tokens", type=_count, default=0, help="Per period.")
        parser.add_argument("--rpm", type=_count, help="Requests per minute.")
        parser.add_argument("--tpm", type=_count, help="Tokens per minute.")
        parser.add_argument("--token-quota", type=_count, help="Tokens per month.")
        parser.add_argument(
            "--models", help="The models the plan includes, comma-separated (default: every model served)."
        )
        parser.add_argument("--currency", help="Default: BILLING_CURRENCY.")
        parser.add_argument("--private", action="store_true", help="Assigned by an operator only.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            plan = plan_create(
                slug=options["slug"],
                name=options["name"],
                monthly_price=options["monthly_price"],
                prompt_price_per_1k=options["prompt_price"],
                completion_price_per_1k=options["completion_price"],
                included_tokens=options["included_tokens"],
                requests_per_minute=options["rpm"],
                tokens_per_minute=options["tpm"],
                token_quota=options["token_quota"],
                allowed_models=[m.strip() for m in (options["models"] or "").split(",") if m.strip()],
                currency=options["currency"],
                public=not options["private"],
            )
        except ValidationError as exc:
            messages = "; ".join(f"{field}: {' '.join(errors)}" for field, errors in exc.message_dict.items())
            raise CommandError(messages) from exc
        visibility = "public" if plan.public else "private"
        self.stdout.write(
            f"Created {visibility} plan {plan.slug} ({plan.name}): {plan.monthly_price} "
            f"{plan.currency.upper()} a month."
        )
