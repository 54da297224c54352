"""What a credential may do (scopes) and what each member role grants.

A route names the one scope it needs (`required_scope` on its view, checked by
`accounts.permissions.HasRequiredScope`). A JWT carries its member's role's scopes; an API key
made for a member carries its own scopes cut down to its member's role, worked out each time it
is resolved (`effective_scopes`), so a member whose role changes gets the new role's reach on
their very next request. Organization-wide keys and OAuth2 clients carry the scopes an operator
gave them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

GENERATE = "generate"
RAG = "rag"
DOCUMENTS_READ = "documents:read"
DOCUMENTS_WRITE = "documents:write"
USAGE_READ = "usage:read"
BILLING_READ = "billing:read"
BILLING_WRITE = "billing:write"
# The organization's keys, members, invitations and budgets: `read` lists them, `write` changes
# them (and reads the audit log of those changes).
ORGANIZATION_READ = "organization:read"
ORGANIZATION_WRITE = "organization:write"

ALL_SCOPES: tuple[str, ...] = (
    GENERATE,
    RAG,
    DOCUMENTS_READ,
    DOCUMENTS_WRITE,
    USAGE_READ,
    BILLING_READ,
    BILLING_WRITE,
    ORGANIZATION_READ,
    ORGANIZATION_WRITE,
)

# Keyed by `Membership.Role` values.
ROLE_SCOPES: Mapping[str, frozenset[str]] = {
    # Everything, billing included.
    "owner": frozenset(ALL_SCOPES),
    # Documents, the organization's usage, its keys, members and budgets; not its invoices or plan.
    "admin": frozenset(
        {GENERATE, RAG, DOCUMENTS_READ, DOCUMENTS_WRITE, USAGE_READ, ORGANIZATION_READ, ORGANIZATION_WRITE}
    ),
    # Generation and the documents' answers; their own usage and budgets are on /api/v1/me/.
    "member": frozenset({GENERATE, RAG, DOCUMENTS_READ}),
    # Reads, and nothing that spends tokens or changes anything.
    "reader": frozenset({DOCUMENTS_READ, USAGE_READ, ORGANIZATION_READ}),
}


def role_scopes(role: str) -> frozenset[str]:
    """The scopes of a role; none for a role this code does not know."""
    return ROLE_SCOPES.get(role, frozenset())


def ordered(scopes: Iterable[str]) -> list[str]:
    """Known scopes among `scopes`, in `ALL_SCOPES` order."""
    chosen = set(scopes)
    return [scope for scope in ALL_SCOPES if scope in chosen]


def effective_scopes(*, granted: Iterable[str], role: str | None) -> frozenset[str]:
    """What a credential granted `granted` may do: the known scopes among them, within the
    member's role when it acts for a member (`role`), as they are (an organization-wide key or
    an OAuth2 client) when `role` is None."""
    known = frozenset(granted) & frozenset(ALL_SCOPES)
    return known if role is None else known & role_scopes(role)
