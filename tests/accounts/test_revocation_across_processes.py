"""Whatever removes access — deleting or revoking a key, deleting or deactivating a user, removing
a membership, lowering a role, suspending or deleting an organization — every server process
refuses the credential within a second, and keeps refusing it. Sign-in failures on two processes
add up to one limit."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from django.conf import settings

from accounts.models import APIKey, Membership, Organization, User
from accounts.services import (
    api_key_create,
    api_key_delete,
    api_key_revoke,
    membership_create,
    membership_remove,
    membership_role_set,
    organization_delete,
    organization_suspend,
    user_create,
    user_deactivate,
    user_delete,
)
from tests.conftest import ROOT, free_port, make_tenant, server_env, wait_http, web_command

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not settings.REDIS_URL, reason="several processes share state only through Redis (CI sets REDIS_URL)"
    ),
]

PASSWORD = "correct horse battery staple"
USAGE = "/api/v1/usage/?start=2026-01-01&end=2026-01-31"


@pytest.fixture(scope="module")
def servers(django_db_setup: Any) -> Iterator[list[str]]:
    """Two web servers of one worker process each, on the test database: two processes, each
    with its own key cache."""
    ports = [free_port(), free_port()]
    processes = [
        subprocess.Popen(
            web_command(port=port, workers=1, threads=8),
            cwd=ROOT,
            env=server_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        for port, process in zip(ports, processes, strict=True):
            wait_http(f"http://127.0.0.1:{port}/healthz", process)
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


def _request(
    url: str, *, credential: str | None = None, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if credential:
        headers["Authorization"] = f"Bearer {credential}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _code(answer: tuple[int, dict[str, Any]]) -> tuple[int, str | None]:
    status, body = answer
    return status, body.get("error", {}).get("code") if status >= 400 else None


@dataclass
class Member:
    organization: Organization
    user: User
    membership: Membership
    api_key: APIKey
    secret: str
    jwt: str


def _member(base: str, *, role: str = "member") -> Member:
    tenant = make_tenant("alice")
    user = user_create(email="bob@alice.test", password=PASSWORD)
    membership = membership_create(organization=tenant.organization, user=user, role=role)
    api_key, secret = api_key_create(organization=tenant.organization, name="bob", user=user)
    status, tokens = _request(f"{base}/api/v1/auth/token/", body={"email": user.email, "password": PASSWORD})
    assert status == 200, tokens
    return Member(tenant.organization, user, membership, api_key, secret, tokens["access"])


# Each way of removing access: what it does, the path a credential is checked on, and what every
# process answers afterwards for the key (and for the member's JWT, where it loses access too).
REMOVALS: dict[str, tuple[Callable[[Member], Any], str, tuple[int, str], tuple[int, str] | None]] = {
    "revoke key": (
        lambda m: api_key_revoke(api_key=m.api_key),
        "/api/v1/me/",
        (401, "api_key_revoked"),
        None,
    ),
    "delete key": (
        lambda m: api_key_delete(api_key=m.api_key),
        "/api/v1/me/",
        (401, "invalid_api_key"),
        None,
    ),
    "delete user": (
        lambda m: user_delete(user=m.user),
        "/api/v1/me/",
        (401, "invalid_api_key"),
        (401, "invalid_token"),
    ),
    "deactivate user": (
        lambda m: user_deactivate(user=m.user),
        "/api/v1/me/",
        (401, "member_inactive"),
        (401, "invalid_token"),
    ),
    "remove membership": (  # which revokes the member's keys
        lambda m: membership_remove(membership=m.membership),
        "/api/v1/me/",
        (401, "api_key_revoked"),
        (401, "invalid_token"),
    ),
    "lower role": (
        lambda m: membership_role_set(membership=m.membership, role="member"),
        USAGE,
        (403, "missing_scope"),
        (403, "missing_scope"),
    ),
    "suspend organization": (
        lambda m: organization_suspend(organization=m.organization, reason="test"),
        "/api/v1/me/",
        (403, "organization_suspended"),
        (403, "organization_suspended"),
    ),
    "delete organization": (
        lambda m: organization_delete(organization=m.organization),
        "/api/v1/me/",
        (401, "invalid_api_key"),
        (401, "invalid_token"),
    ),
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("removal", list(REMOVALS))
def test_removing_access_reaches_both_processes_within_a_second(servers: list[str], removal: str) -> None:
    remove, path, key_refusal, jwt_refusal = REMOVALS[removal]
    member = _member(servers[0], role="admin")
    credentials = [member.secret] + ([member.jwt] if jwt_refusal else [])
    for base in servers:  # each process has resolved the key and holds it
        for _ in range(3):
            for credential in credentials:
                assert _request(f"{base}{path}", credential=credential)[0] == 200

    remove(member)
    removed_at = time.monotonic()

    expected = {
        (base, credential): refusal
        for base in servers
        for credential, refusal in zip(credentials, [key_refusal, jwt_refusal], strict=False)
    }
    pending = dict(expected)
    last: dict[tuple[str, str], Any] = {}
    while pending and time.monotonic() - removed_at <= 1.0:
        for (base, credential), refusal in list(pending.items()):
            last[base, credential] = _code(_request(f"{base}{path}", credential=credential))
            if last[base, credential] == refusal:
                del pending[base, credential]
    assert not pending, f"still served a second after '{removal}': {last}"
    for (base, credential), refusal in expected.items():  # and it stays refused
        for _ in range(5):
            assert _code(_request(f"{base}{path}", credential=credential)) == refusal


@pytest.mark.django_db(transaction=True)
def test_sign_in_failures_on_two_processes_add_up_and_concurrent_guesses_are_bounded(
    servers: list[str],
) -> None:
    remaining = 60 - time.time() % 60  # the default window: a minute
    if remaining < 15:
        time.sleep(remaining + 0.05)
    member = _member(servers[0])

    def guess(number: int) -> int:
        base = servers[number % 2]
        return _request(
            f"{base}/api/v1/auth/token/", body={"email": member.user.email, "password": f"guess{number}"}
        )[0]

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(guess, range(12)))
    assert sorted(statuses) == [401] * 5 + [429] * 7, statuses  # five password checks, no more
    for base in servers:
        status, body = _request(
            f"{base}/api/v1/auth/token/", body={"email": member.user.email, "password": PASSWORD}
        )
        assert (status, body["error"]["code"]) == (429, "rate_limit_exceeded")


def _await_refusal(servers: list[str], credential: str, *, since: float, refusal: tuple[int, str]) -> None:
    pending = set(servers)
    last: dict[str, Any] = {}
    while pending and time.monotonic() - since <= 1.0:
        for base in list(pending):
            last[base] = _code(_request(f"{base}/api/v1/me/", credential=credential))
            if last[base] == refusal:
                pending.discard(base)
    assert not pending, f"still served a second later: {last}"
    for base in servers:
        assert _code(_request(f"{base}/api/v1/me/", credential=credential)) == refusal


@pytest.mark.django_db(transaction=True)
def test_a_key_revoked_through_the_api_on_one_process_is_refused_by_the_other_within_a_second(
    servers: list[str],
) -> None:
    owner = make_tenant("alice")
    status, created = _request(
        f"{servers[0]}/api/v1/organization/keys/", credential=owner.secret, body={"name": "x"}
    )
    assert status == 201, created
    for base in servers:
        assert _request(f"{base}/api/v1/me/", credential=created["secret"])[0] == 200
    delete = urllib.request.Request(
        f"{servers[0]}/api/v1/organization/keys/{created['id']}/",
        method="DELETE",
        headers={"Authorization": f"Bearer {owner.secret}"},
    )
    with urllib.request.urlopen(delete, timeout=30) as response:
        assert response.status == 200
    _await_refusal(servers, created["secret"], since=time.monotonic(), refusal=(401, "api_key_revoked"))


@pytest.mark.django_db(transaction=True)
def test_a_rotated_key_works_on_every_process_until_its_grace_ends_then_none(servers: list[str]) -> None:
    owner = make_tenant("alice")
    base = servers[0]
    status, created = _request(
        f"{base}/api/v1/organization/keys/", credential=owner.secret, body={"name": "x"}
    )
    assert status == 201, created
    for server in servers:  # each process has resolved the old key and holds it
        assert _request(f"{server}/api/v1/me/", credential=created["secret"])[0] == 200
    grace = 2
    status, rotated = _request(
        f"{base}/api/v1/organization/keys/{created['id']}/rotate/",
        credential=owner.secret,
        body={"grace_seconds": grace},
    )
    rotated_at = time.monotonic()
    assert status == 201, rotated
    for server in servers:
        assert _request(f"{server}/api/v1/me/", credential=rotated["secret"])[0] == 200
        assert _request(f"{server}/api/v1/me/", credential=created["secret"])[0] == 200  # the grace
    time.sleep(max(0.0, grace - (time.monotonic() - rotated_at)))
    _await_refusal(servers, created["secret"], since=time.monotonic(), refusal=(401, "api_key_expired"))
    for server in servers:
        assert _request(f"{server}/api/v1/me/", credential=rotated["secret"])[0] == 200
