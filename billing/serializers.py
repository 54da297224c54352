from __future__ import annotations

from typing import Any

from rest_framework import serializers

from accounts.models import BudgetPeriod
from billing.selectors import COST_GROUPS
from usage.admission import END_USER_MAX_CHARS
from usage.serializers import DateRangeSerializer


class PlanSummarySerializer(serializers.Serializer):
    slug = serializers.SlugField()
    name = serializers.CharField()


class LineSerializer(serializers.Serializer):
    kind = serializers.CharField()
    description = serializers.CharField()
    model = serializers.CharField()
    token_kind = serializers.CharField()
    tokens = serializers.IntegerField()
    included_tokens = serializers.IntegerField()
    billable_tokens = serializers.IntegerField()
    unit_price = serializers.DecimalField(max_digits=14, decimal_places=6)
    amount = serializers.DecimalField(max_digits=14, decimal_places=2)


class InvoiceSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    object = serializers.SerializerMethodField()
    period = serializers.CharField(source="period.key")
    period_start = serializers.DateField()
    period_end = serializers.DateField()
    status = serializers.CharField()
    currency = serializers.CharField()
    plan = PlanSummarySerializer()
    total = serializers.DecimalField(max_digits=14, decimal_places=2)
    tokens_used = serializers.IntegerField()
    included_tokens = serializers.IntegerField()
    finalized_at = serializers.DateTimeField(allow_null=True)
    paid_at = serializers.DateTimeField(allow_null=True)
    past_due_since = serializers.DateTimeField(allow_null=True)
    hosted_invoice_url = serializers.CharField(help_text="Stripe's page to pay the invoice; empty when none.")

    def get_object(self, invoice: Any) -> str:
        return "invoice"


class InvoiceDetailSerializer(InvoiceSerializer):
    lines = LineSerializer(many=True, source="lines.all")


class PendingPlanSerializer(PlanSummarySerializer):
    starts_on = serializers.DateField()


class EstimateSerializer(serializers.Serializer):
    object = serializers.CharField()
    period = serializers.CharField()
    period_start = serializers.DateField()
    period_end = serializers.DateField()
    as_of = serializers.DateTimeField()
    currency = serializers.CharField()
    plan = PlanSummarySerializer(allow_null=True)
    pending_plan = PendingPlanSerializer(allow_null=True)
    included_tokens = serializers.IntegerField()
    tokens_used = serializers.IntegerField()
    lines = LineSerializer(many=True)
    total = serializers.DecimalField(max_digits=14, decimal_places=2)


class CostQuerySerializer(DateRangeSerializer):
    group_by = serializers.ChoiceField(choices=COST_GROUPS, default="day")


class CostRowSerializer(serializers.Serializer):
    group = serializers.CharField()
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=20, decimal_places=6)


class CostReportRowSerializer(serializers.Serializer):
    """A row as the report shows it: its group under the `group_by` it was asked for."""

    day = serializers.DateField(required=False, help_text="With group_by=day.")
    model = serializers.CharField(required=False, help_text="With group_by=model.")
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=20, decimal_places=6)


class ModelPriceSerializer(serializers.Serializer):
    model = serializers.CharField()
    prompt_price_per_1k = serializers.DecimalField(max_digits=14, decimal_places=6)
    completion_price_per_1k = serializers.DecimalField(max_digits=14, decimal_places=6)


class PlanSerializer(serializers.Serializer):
    object = serializers.SerializerMethodField()
    slug = serializers.SlugField()
    name = serializers.CharField()
    public = serializers.BooleanField(help_text="False: assigned by an operator, not chosen.")
    currency = serializers.CharField()
    monthly_price = serializers.DecimalField(max_digits=14, decimal_places=2)
    included_tokens = serializers.IntegerField()
    prompt_price_per_1k = serializers.DecimalField(max_digits=14, decimal_places=6)
    completion_price_per_1k = serializers.DecimalField(max_digits=14, decimal_places=6)
    model_prices = ModelPriceSerializer(many=True, source="model_prices.all")
    requests_per_minute = serializers.IntegerField(allow_null=True, help_text="Null: unlimited.")
    tokens_per_minute = serializers.IntegerField(allow_null=True, help_text="Null: unlimited.")
    token_quota = serializers.IntegerField(allow_null=True, help_text="Tokens per month; null: unlimited.")
    allowed_models = serializers.ListField(
        child=serializers.CharField(), help_text="The models the plan includes; empty: every model served."
    )

    def get_object(self, plan: Any) -> str:
        return "plan"


class SubscriptionInputSerializer(serializers.Serializer):
    plan = serializers.SlugField(max_length=64, help_text="The slug of a plan from billing/plans/.")


class SubscriptionSerializer(serializers.Serializer):
    object = serializers.CharField()
    plan = PlanSummarySerializer(
        help_text="The plan that will hold: at once for a first plan, else next period."
    )
    starts_on = serializers.DateField()
    current_plan = PlanSummarySerializer(allow_null=True, help_text="The plan in force today.")
    pending_plan = PendingPlanSerializer(allow_null=True, help_text="The change that starts next period.")


class SignupInputSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=254)
    password = serializers.CharField(
        write_only=True,
        trim_whitespace=False,
        max_length=1024,
        help_text="At least 8 characters, not a common password. An existing account's own password "
        "signs up a new organization for that account.",
    )
    organization_name = serializers.CharField(max_length=200)


class SignupOrganizationSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    slug = serializers.CharField(help_text="Made from the name, unique.")
    name = serializers.CharField()


class SignupUserSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField()
    role = serializers.CharField()


class SignupSerializer(serializers.Serializer):
    object = serializers.CharField()
    organization = SignupOrganizationSerializer()
    user = SignupUserSerializer()
    plan = PlanSummarySerializer(allow_null=True, help_text="DEFAULT_PLAN; null when none is set.")
    access = serializers.CharField(help_text="A JWT acting for the new organization (Bearer).")
    refresh = serializers.CharField()


_PERIOD_HELP = "day, month, or none (never resets)."


class PlanGrantSerializer(serializers.Serializer):
    slug = serializers.SlugField()
    name = serializers.CharField()
    token_quota = serializers.IntegerField(allow_null=True, help_text="Tokens per month; null: unlimited.")
    requests_per_minute = serializers.IntegerField(allow_null=True)
    tokens_per_minute = serializers.IntegerField(allow_null=True)


class OrganizationLimitsSerializer(serializers.Serializer):
    token_quota = serializers.IntegerField(allow_null=True, help_text="Null: unlimited.")
    quota_period = serializers.CharField(help_text=_PERIOD_HELP)
    requests_per_minute = serializers.IntegerField(allow_null=True)
    tokens_per_minute = serializers.IntegerField(allow_null=True)
    end_user_token_budget = serializers.IntegerField(
        allow_null=True, help_text="Every end user's budget unless they have their own; null: none."
    )
    end_user_budget_period = serializers.CharField(help_text=_PERIOD_HELP)


class MemberBudgetSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="The membership's id (members/<id>/).")
    user_id = serializers.IntegerField(source="user.pk")
    email = serializers.EmailField(source="user.email")
    role = serializers.CharField()
    token_budget = serializers.IntegerField(allow_null=True)
    budget_period = serializers.CharField()


class KeyBudgetSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    prefix = serializers.CharField()
    name = serializers.CharField()
    token_budget = serializers.IntegerField(allow_null=True)
    budget_period = serializers.CharField()
    requests_per_minute = serializers.IntegerField(allow_null=True, help_text="Null: the organization's.")
    tokens_per_minute = serializers.IntegerField(allow_null=True, help_text="Null: the organization's.")


class EndUserBudgetSerializer(serializers.Serializer):
    end_user = serializers.CharField()
    token_budget = serializers.IntegerField()
    budget_period = serializers.CharField()


class BudgetOverviewSerializer(serializers.Serializer):
    object = serializers.SerializerMethodField()
    plan = PlanGrantSerializer(allow_null=True, help_text="What the plan in force grants; null: no plan.")
    organization = OrganizationLimitsSerializer()
    members = MemberBudgetSerializer(many=True)
    api_keys = KeyBudgetSerializer(many=True, help_text="Keys not revoked.")
    end_users = EndUserBudgetSerializer(many=True, help_text="End users with a budget of their own.")

    def get_object(self, overview: Any) -> str:
        return "organization.budgets"


class BudgetInputSerializer(serializers.Serializer):
    target = serializers.ChoiceField(choices=["organization", "member", "api_key", "end_user"])
    id = serializers.IntegerField(
        required=False, min_value=1, help_text="The membership's id (member) or the key's id (api_key)."
    )
    end_user = serializers.CharField(
        required=False,
        max_length=END_USER_MAX_CHARS,
        help_text="The end user (a request's `user_id`); left out with target end_user: every end user's default.",
    )
    token_budget = serializers.IntegerField(
        allow_null=True,
        min_value=0,
        max_value=2**63 - 1,
        help_text="Tokens per period; null: no limit (an end user's own budget is removed).",
    )
    budget_period = serializers.ChoiceField(
        choices=BudgetPeriod.values, required=False, help_text=_PERIOD_HELP
    )
    requests_per_minute = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=2**31 - 1,
        help_text="organization and api_key.",
    )
    alert_thresholds = serializers.ListField(
        child=serializers.FloatField(min_value=0.01, max_value=1.0),
        min_length=1,
        max_length=10,
        required=False,
        allow_null=True,
        help_text="Fractions of this budget that send a spend alert; null: the organization's.",
    )
    tokens_per_minute = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=2**31 - 1,
        help_text="organization and api_key.",
    )


class BudgetEntrySerializer(serializers.Serializer):
    object = serializers.SerializerMethodField()
    target = serializers.CharField()
    id = serializers.IntegerField(allow_null=True)
    end_user = serializers.CharField(allow_null=True)
    token_budget = serializers.IntegerField(allow_null=True)
    budget_period = serializers.CharField()
    requests_per_minute = serializers.IntegerField(allow_null=True)
    tokens_per_minute = serializers.IntegerField(allow_null=True)

    def get_object(self, entry: Any) -> str:
        return "budget"
