"""Issue #10, metering you can bill on, under faults.

Two tenants send mixed traffic (generate/, streams the client cuts half-way, rag/, embeddings,
jobs) to two web server processes and a Celery worker, all on a Redis of the test's own. During
the run the worker is killed mid-job (SIGKILL) and a new one started, and Redis is stopped, while
streams and a job still have to settle, and started again on the same port and append-only
file. Once everything has settled, what the
ledger in Redis charged, the usage records, the daily rollups and `usage_reconcile` must agree
to the token, nothing may stay reserved, no budget may be overspent, every answered request
must be billed what its response said, and every answer must be one a client can act on: a 503
only while Redis was down.

Every figure checked is read back from Redis and PostgreSQL (or from the servers' responses),
never computed by the test. It takes about a minute of wall time on 2 cores.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db.models import F, Sum
from django.db.models.functions import Coalesce

from accounts.context import AuthContext
from accounts.models import APIKey, BudgetPeriod, Membership
from bench.common import BIN, ROOT, free_port, wait_http, web_command
from inference.models import GenerationJob
from tests.conftest import CELERY_WORKER_COMMAND, Tenant, make_tenant, server_env
from tests.usage.soak_support import Outcome, PrivateRedis, Processes, Shot, send
from usage import services as usage_services
from usage.models import UsageDaily, UsageRecord

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not settings.REDIS_URL, reason="several processes share state only through Redis (CI sets REDIS_URL)"
    ),
]

TRAFFIC_SECONDS = 40.0
BURSTS = 25
BURST_SIZE = 8  # 200 requests, in bursts so that several reserve on the same budgets at once
KILL_WORKER_AT = 8.0  # seconds into the traffic
# Longer than the visibility timeout: a starting worker redelivers the unacked jobs older than
# that at once, then sweeps only every 100 s (kombu's restore interval times its throttle).
WORKER_DOWN_SECONDS = 6.0
REDIS_DOWN_AT = 22.0
REDIS_DOWN_SECONDS = 2.5
RESERVATION_TTL_SECONDS = 5
VISIBILITY_TIMEOUT_SECONDS = 5
JOB_UPSTREAM_DELAY = 0.5  # the worker's upstream answers this late: a job runs long enough to be killed
# A 503 is legitimate for a request in flight while Redis was down, or sent this soon after it
# answered again (each process's connection pool reconnects on its next command).
OUTAGE_MARGIN_AFTER = 2.0
SETTLE_TIMEOUT = 60.0

MAIN_QUOTA = 400_000
MAIN_MEMBER_BUDGET = 300_000
MAIN_KEY_BUDGET = 250_000
END_USER_BUDGET = 50_000
END_USERS = ("eu-1", "eu-2", "eu-3")
TINY_QUOTA = 250  # spent by the first few requests of its first minute: then insufficient_quota
TINY_REQUESTS_PER_MINUTE = 10

PATHS = {
    "generate": "/api/v1/generate/",
    "stream": "/api/v1/generate/",
    "stream-full": "/api/v1/generate/",
    "rag": "/api/v1/rag/",
    "rag-stream": "/api/v1/rag/",
    "embeddings": "/v1/embeddings",
    "job": "/api/v1/jobs/",
}
MIX = {"generate": 30, "stream": 15, "rag": 15, "rag-stream": 5, "embeddings": 15, "job": 20}
ANSWERS = {200, 202, 429, 503}
TERMINAL_JOB_STATUSES = {GenerationJob.Status.SUCCEEDED, GenerationJob.Status.FAILED}


@dataclass
class Faults:
    """When the faults happened (time.monotonic()) and what they hit."""

    traffic_started: float = 0.0
    kill_job: Outcome | None = None
    killed_while_running: bool = False
    worker_killed_at: float | None = None
    worker_restarted_at: float | None = None
    outage_start: float | None = None
    outage_end: float | None = None
    in_flight_at_outage: list[Outcome] = field(default_factory=list)

    def in_outage(self, outcome: Outcome) -> bool:
        """Whether the request was in flight while Redis was down (or just after)."""
        assert self.outage_start is not None and self.outage_end is not None
        return (
            outcome.sent_at <= self.outage_end + OUTAGE_MARGIN_AFTER and outcome.done_at >= self.outage_start
        )


@dataclass
class Stack:
    processes: Processes
    redis: PrivateRedis
    servers: list[str]
    worker_env: dict[str, str]
    worker: Any = None

    @property
    def prefix(self) -> str:
        """The ledger's namespace, which the servers inherit from this process."""
        return f"{settings.CACHE_KEY_PREFIX}:q:"

    def start_worker(self) -> None:
        self.worker = self.processes.start(
            "worker",
            CELERY_WORKER_COMMAND,
            env=self.worker_env,
        )


# --- Tenants and the plan -----------------------------------------------------------------------


def _tenants() -> dict[str, Tenant]:
    main = make_tenant("soak-main")
    org = main.organization
    org.token_quota = MAIN_QUOTA
    org.quota_period = BudgetPeriod.MONTH
    org.requests_per_minute = None
    org.tokens_per_minute = None
    org.end_user_token_budget = END_USER_BUDGET
    org.end_user_budget_period = BudgetPeriod.DAY
    org.save()
    Membership.objects.filter(organization=org, user=main.owner).update(token_budget=MAIN_MEMBER_BUDGET)
    APIKey.objects.filter(pk=main.api_key.pk).update(token_budget=MAIN_KEY_BUDGET)
    main.api_key.refresh_from_db()
    tiny = make_tenant("soak-tiny")
    tiny.organization.token_quota = TINY_QUOTA
    tiny.organization.requests_per_minute = TINY_REQUESTS_PER_MINUTE
    tiny.organization.tokens_per_minute = None
    tiny.organization.save()
    return {"main": main, "tiny": tiny}


def _body(kind: str, index: int, end_user: str | None) -> dict[str, Any]:
    if kind == "embeddings":
        body: dict[str, Any] = {"input": [f"soak {index}: generators yield values one at a time"]}
        if end_user:
            body["user"] = end_user
        return body
    body = {"prompt": f"soak {index}: what does a generator yield?", "max_tokens": 24}
    if kind in ("stream", "rag-stream"):
        # 50 ms a token upstream: the client cuts the stream long before its 40 tokens.
        body.update(
            prompt=f"SLOW_STREAM soak {index}: what does a generator yield?", max_tokens=40, stream=True
        )
    if end_user:
        body["user_id"] = end_user
    return body


def _plan(rng: random.Random) -> list[Shot]:
    shots = []
    for burst in range(BURSTS):
        for _ in range(BURST_SIZE):
            index = len(shots)
            tenant = "tiny" if rng.random() < 0.3 else "main"
            kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
            end_user = rng.choice((None, *END_USERS)) if tenant == "main" else None
            at = burst * TRAFFIC_SECONDS / BURSTS + rng.uniform(0, 0.3)
            shots.append(Shot(index, tenant, kind, PATHS[kind], _body(kind, index, end_user), at))
    return shots


# --- The stack ----------------------------------------------------------------------------------


@contextmanager
def _this_process_on(redis_url: str) -> Iterator[None]:
    """The flush, expiry and budget views this process runs itself, on the private Redis."""
    previous = settings.REDIS_URL
    settings.REDIS_URL = redis_url  # the client and the ledger are per settings
    try:
        yield
    finally:
        settings.REDIS_URL = previous


def _start_stack(processes: Processes, private_redis: PrivateRedis) -> Stack:
    env = server_env(
        REDIS_URL=private_redis.url,
        CELERY_BROKER_URL=private_redis.url,
        CELERY_RESULT_BACKEND=private_redis.url,
        RESERVATION_TTL_SECONDS=str(RESERVATION_TTL_SECONDS),
        CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT_SECONDS),
        OMP_NUM_THREADS="1",
    )
    upstream_port = free_port()
    upstream = processes.start(
        "slow-upstream",
        [
            str(BIN / "uvicorn"),
            "tests.usage.soak_support:slow_upstream",
            "--port",
            str(upstream_port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env={**os.environ, "SOAK_UPSTREAM_DELAY": str(JOB_UPSTREAM_DELAY)},
    )
    ports = [free_port(), free_port()]
    web = [
        processes.start(f"web{i}", web_command(port=port, workers=1, threads=24), env=env)
        for i, port in enumerate(ports)
    ]
    stack = Stack(
        processes=processes,
        redis=private_redis,
        servers=[f"http://127.0.0.1:{port}" for port in ports],
        worker_env={**env, "LLM_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1"},
    )
    stack.start_worker()
    wait_http(f"http://127.0.0.1:{upstream_port}/v1/models", upstream)
    for server, process in zip(stack.servers, web, strict=True):
        wait_http(f"{server}/healthz", process)
    return stack


def _call(url: str, secret: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode() if body is not None else None,
        method="POST" if body is not None else "GET",
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return dict(json.loads(response.read()))


def _warm_up(stack: Stack, main: Tenant) -> None:
    """A document for rag/ to cite (indexed by the worker), and each server's embedder and
    engine loaded, so that the soak measures faults rather than start-up. These requests are
    charged like any other and count in every total checked."""
    base = stack.servers[0]
    document = _call(
        f"{base}/api/v1/documents/",
        main.secret,
        {
            "title": "Generators",
            "text": "A generator function contains yield expressions. Each next() call resumes it "
            "until the following yield, which hands one value to the caller.",
        },
    )
    for server in stack.servers:
        _call(f"{server}/v1/embeddings", main.secret, {"input": "warm up"})
        _call(f"{server}/api/v1/generate/", main.secret, {"prompt": "warm up", "max_tokens": 4})
    deadline = time.monotonic() + 120
    while (status := _call(f"{base}/api/v1/documents/{document['id']}/", main.secret)["status"]) != "indexed":
        assert status != "failed" and time.monotonic() < deadline, (status, stack.processes.tail("worker"))
        time.sleep(0.3)


# --- The soak -----------------------------------------------------------------------------------


def _janitor() -> None:
    """What beat does in production: expire abandoned reservations, flush the usage stream.
    While Redis is down it fails like beat would, and runs again at its next turn."""
    try:
        usage_services.reservations_expire()
        usage_services.usage_stream_flush()
    except redis.RedisError:
        pass


def _fire_at(when: float, server: str, secret: str, shot: Shot) -> Outcome:
    time.sleep(max(0.0, when - time.monotonic()))
    return send(server, secret, shot)


def _kill_worker_mid_job(stack: Stack, main: Tenant, faults: Faults, index: int) -> None:
    """Queues one more job and SIGKILLs the worker (and its pool) while that job runs."""
    at = time.monotonic() - faults.traffic_started
    shot = Shot(index, "main", "job", PATHS["job"], _body("job", index, None), at)
    faults.kill_job = outcome = send(stack.servers[0], main.secret, shot)
    if outcome.status == 202 and outcome.body:
        job = GenerationJob.objects.filter(pk=outcome.body["id"])
        deadline = time.monotonic() + 20
        while not job.filter(status=GenerationJob.Status.RUNNING).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    stack.processes.kill(stack.worker)
    faults.worker_killed_at = time.monotonic()
    if outcome.status == 202 and outcome.body:
        killed = GenerationJob.objects.get(pk=outcome.body["id"])
        faults.killed_while_running = killed.status == GenerationJob.Status.RUNNING and killed.attempts == 1


def _redis_outage(stack: Stack, main: Tenant, faults: Faults, index: int) -> list[Outcome]:
    """Stops Redis with work in flight that must settle while it is down (a stream that ends,
    a stream the client cuts, a job the worker finishes), then starts it again on the same port
    and append-only file."""
    question = "SLOW_STREAM soak: what does a generator yield?"
    # 30 tokens at 50 ms: ends about a second into the outage.
    full = {"prompt": question, "max_tokens": 30, "stream": True}
    # 64 tokens: still streaming when the client cuts it, half a second into the outage.
    cut = {"prompt": question, "max_tokens": 64, "stream": True}
    at = time.monotonic() - faults.traffic_started
    shots = [
        Shot(index, "main", "stream-full", PATHS["stream"], full, at, cut_after=None),
        Shot(index + 1, "main", "stream", PATHS["stream"], cut, at, cut_after=2),
        Shot(index + 2, "main", "job", PATHS["job"], _body("job", index + 2, None), at),
    ]
    answered, cut_now = [threading.Event(), threading.Event()], threading.Event()
    with ThreadPoolExecutor(max_workers=len(shots)) as pool:
        futures = [
            pool.submit(send, stack.servers[0], main.secret, shots[0], answered=answered[0]),
            pool.submit(
                send, stack.servers[1], main.secret, shots[1], answered=answered[1], cut_when=cut_now
            ),
            pool.submit(send, stack.servers[0], main.secret, shots[2]),
        ]
        for event in answered:  # both streams admitted, their tokens reserved
            event.wait(timeout=10)
        time.sleep(0.3)  # the job picked up by the worker, when it is idle
        faults.outage_start = time.monotonic()
        stack.redis.stop()
        time.sleep(0.5)
        cut_now.set()
        time.sleep(REDIS_DOWN_SECONDS - 0.5)
        stack.redis.start()
        faults.outage_end = time.monotonic()
        faults.in_flight_at_outage = [future.result() for future in futures]
    return faults.in_flight_at_outage


def _soak(stack: Stack, tenants: dict[str, Tenant], shots: list[Shot]) -> tuple[list[Outcome], Faults]:
    faults = Faults(traffic_started=time.monotonic())
    start = faults.traffic_started
    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = [
            pool.submit(
                _fire_at, start + shot.at, stack.servers[shot.index % 2], tenants[shot.tenant].secret, shot
            )
            for shot in shots
        ]
        next_janitor = 0.0
        while True:
            now = time.monotonic()
            if faults.worker_killed_at is None and now - start >= KILL_WORKER_AT:
                _kill_worker_mid_job(stack, tenants["main"], faults, len(shots))
            elif (
                faults.worker_killed_at is not None
                and faults.worker_restarted_at is None
                and now - faults.worker_killed_at >= WORKER_DOWN_SECONDS
            ):
                stack.start_worker()
                faults.worker_restarted_at = now
            elif faults.outage_start is None and now - start >= REDIS_DOWN_AT:
                _redis_outage(stack, tenants["main"], faults, len(shots) + 1)
            if now >= next_janitor:
                _janitor()
                next_janitor = now + 2.0
            if faults.worker_restarted_at and faults.outage_end and all(f.done() for f in futures):
                break
            time.sleep(0.1)
        outcomes = [future.result() for future in futures]
    assert faults.kill_job is not None
    return [*outcomes, faults.kill_job, *faults.in_flight_at_outage], faults


def _settle(stack: Stack, accepted_jobs: list[str]) -> float:
    """Waits for the jobs to finish and every reservation to settle or expire; flushes."""
    started = time.monotonic()
    client = stack.redis.client()
    while time.monotonic() - started < SETTLE_TIMEOUT:
        _janitor()
        unfinished = GenerationJob.objects.filter(pk__in=accepted_jobs).exclude(
            status__in=TERMINAL_JOB_STATUSES
        )
        if not unfinished.exists() and client.zcard(f"{stack.prefix}resv:deadlines") == 0:
            break
        time.sleep(0.5)
    usage_services.reservations_expire()
    usage_services.usage_stream_flush()
    return time.monotonic() - started


# --- What must hold -----------------------------------------------------------------------------


def _tokens(records: Any) -> int:
    return int(
        records.aggregate(total=Coalesce(Sum(F("prompt_tokens") + F("completion_tokens")), 0))["total"]
    )


def _period_start(period_key: str) -> datetime | None:
    if period_key.startswith("m"):
        return datetime.strptime(period_key[1:], "%Y-%m").replace(tzinfo=UTC)
    if period_key.startswith("d"):
        return datetime.strptime(period_key[1:], "%Y-%m-%d").replace(tzinfo=UTC)
    return None


def _records_of_budget(scope: str, subject: str, period_key: str) -> Any:
    records = UsageRecord.objects.all()
    since = _period_start(period_key)
    if since is not None:
        records = records.filter(created_at__gte=since)
    if scope in ("member", "end_user"):  # their subject is "<organization id>:<member or end user>"
        organization_id, subject = subject.split(":", 1)
        records = records.filter(organization_id=int(organization_id))
    field = {"organization": "organization_id", "api_key": "api_key_id", "member": "user_id"}.get(scope)
    return records.filter(**{field: int(subject)}) if field else records.filter(end_user=subject)


def _known_limits(tenants: dict[str, Tenant]) -> dict[tuple[str, str], int]:
    main, tiny = tenants["main"], tenants["tiny"]
    limits = {
        ("organization", str(main.organization.pk)): MAIN_QUOTA,
        ("member", f"{main.organization.pk}:{main.owner.pk}"): MAIN_MEMBER_BUDGET,
        ("api_key", str(main.api_key.pk)): MAIN_KEY_BUDGET,
        ("organization", str(tiny.organization.pk)): TINY_QUOTA,
    }
    limits.update(
        {("end_user", f"{main.organization.pk}:{end_user}"): END_USER_BUDGET for end_user in END_USERS}
    )
    return limits


def _check_answers(outcomes: list[Outcome], faults: Faults, problems: list[str]) -> None:
    for o in outcomes:
        what = f"{o.shot.request_id} ({o.shot.tenant}, sent at +{o.sent_at - faults.traffic_started:.1f}s)"
        if o.status not in ANSWERS:
            problems.append(f"1. {what}: answered {o.status} {o.code or ''} {o.error or ''} {o.body}")
        elif o.status == 503 and (o.code != "store_unavailable" or not faults.in_outage(o)):
            problems.append(
                f"1. {what}: 503 {o.code} outside the Redis outage (answered at "
                f"+{o.done_at - faults.traffic_started:.1f}s): {o.body}"
            )
        elif o.status == 429 and o.code not in ("insufficient_quota", "rate_limit_exceeded"):
            problems.append(f"1. {what}: 429 {o.code}")
        elif o.status == 429 and o.shot.tenant == "main":
            problems.append(f"1. {what}: main tenant refused, far below its limits: {o.body}")
    tiny_codes = {o.code for o in outcomes if o.shot.tenant == "tiny" and o.status == 429}
    for code in ("insufficient_quota", "rate_limit_exceeded"):
        if code not in tiny_codes:
            problems.append(f"soak: no request of the tiny tenant was refused with {code}")
    if not any(faults.outage_start <= o.sent_at <= faults.outage_end for o in outcomes):  # type: ignore[operator]
        problems.append("soak: no request was sent while Redis was down")
    full, cut, _job = faults.in_flight_at_outage
    assert faults.outage_start is not None and faults.outage_end is not None
    if full.status != 200 or not faults.outage_start < full.done_at < faults.outage_end:
        problems.append(f"soak: the stream meant to end while Redis was down did not: {full}")
    if cut.status != 200 or cut.token_events < 2:
        problems.append(f"soak: the stream meant to be cut while Redis was down was not: {cut}")


def _check_nothing_reserved(
    stack: Stack, tenants: dict[str, Tenant], problems: list[str]
) -> dict[tuple[str, str, str], tuple[int, int]]:
    """2: no reservation left, no budget holding anything. Returns every budget counter in
    Redis, (scope, subject, period) -> (used, reserved)."""
    client = stack.redis.client()
    deadlines = f"{stack.prefix}resv:deadlines"
    left = client.zrange(deadlines, 0, -1, withscores=True)
    if left:
        problems.append(f"2. {len(left)} reservations left in {deadlines}: {left[:10]}")
    counters: dict[tuple[str, str, str], tuple[int, int]] = {}
    for key in client.scan_iter(match=f"{stack.prefix}*", count=1000):
        scope, _, rest = key.decode().removeprefix(stack.prefix).partition(":")
        if scope not in ("organization", "member", "api_key", "end_user"):
            continue
        subject, _, period_key = rest.rpartition(":")
        used, reserved = client.hmget(key, "used", "reserved")
        counters[(scope, subject, period_key)] = (int(used or 0), int(reserved or 0))
        if int(reserved or 0):
            problems.append(f"2. budget {key.decode()} still holds {int(reserved)} reserved tokens")
    for (scope, subject), _limit in _known_limits(tenants).items():
        if not any(c[:2] == (scope, subject) for c in counters):
            problems.append(
                f"soak: no {scope} counter for {subject} in Redis: that budget was never exercised"
            )
    main = tenants["main"]
    for tenant in tenants.values():
        membership = Membership.objects.get(organization=tenant.organization, user=tenant.owner)
        context = AuthContext(
            organization=tenant.organization,
            scopes=frozenset(),
            method="api_key",
            user=tenant.owner,
            membership=membership,
            api_key=APIKey.objects.get(pk=tenant.api_key.pk),
        )
        for end_user in END_USERS if tenant is main else (None,):
            for view in usage_services.budget_views(context=context, end_user=end_user):
                if view.reserved:
                    problems.append(f"2. {view.name}: {view.reserved} reserved after settling")
                if view.used > view.limit:
                    problems.append(f"5. {view.name}: used {view.used} > limit {view.limit}")
    return counters


def _check_charged_is_recorded(
    counters: dict[tuple[str, str, str], tuple[int, int]], tenants: dict[str, Tenant], problems: list[str]
) -> None:
    """3 and 5: every budget's `used` in Redis is the sum of its usage records; the daily
    rollups add up to the records; no budget is over its limit."""
    limits = _known_limits(tenants)
    for (scope, subject, period_key), (used, _reserved) in sorted(counters.items()):
        recorded = _tokens(_records_of_budget(scope, subject, period_key))
        print(f"budget {scope}:{subject}:{period_key}: used {used}, usage records {recorded}")
        if used != recorded:
            problems.append(
                f"3. {scope}:{subject}:{period_key}: ledger used {used} != usage records {recorded}"
            )
        limit = limits.get((scope, subject))
        if limit is not None and used > limit:
            problems.append(f"5. {scope}:{subject}:{period_key}: used {used} > limit {limit}")
    for tenant in tenants.values():
        records = UsageRecord.objects.filter(organization=tenant.organization)
        daily = UsageDaily.objects.filter(organization=tenant.organization).aggregate(
            tokens=Coalesce(Sum(F("prompt_tokens") + F("completion_tokens")), 0),
            requests=Coalesce(Sum("requests"), 0),
        )
        if (daily["tokens"], daily["requests"]) != (_tokens(records), records.count()):
            problems.append(
                f"3. {tenant.organization.slug}: daily rollups {daily['tokens']} tokens / {daily['requests']} "
                f"requests != usage records {_tokens(records)} / {records.count()}"
            )


def _expected_tokens(o: Outcome) -> int | None:
    """What the response told the client it used."""
    body = o.body or {}
    if o.shot.kind == "embeddings":
        return int(body["usage"]["total_tokens"]) if "usage" in body else None
    if o.shot.kind in ("generate", "stream-full", "rag"):
        return int(body["meta"]["tokens_used"]) if "meta" in body else None
    return None


def _check_each_request(outcomes: list[Outcome], faults: Faults, problems: list[str]) -> None:
    """Every answered request billed once, what its response said; a refused one not at all."""
    records: dict[str, list[UsageRecord]] = {}
    for record in UsageRecord.objects.filter(request_id__startswith="soak-"):
        records.setdefault(record.request_id.split(":", 1)[0], []).append(record)
    jobs = {job.request_id: job for job in GenerationJob.objects.filter(request_id__startswith="soak-")}
    for o in outcomes:
        rid = o.shot.request_id
        found = records.get(rid, [])
        described = [(r.status, r.prompt_tokens + r.completion_tokens) for r in found]
        if o.status in (429, 503) and any(r.prompt_tokens + r.completion_tokens for r in found):
            problems.append(f"per request: {rid} answered {o.status} {o.code} but was charged: {described}")
        if o.status != 200 and o.status != 202:
            continue
        if o.shot.kind in ("stream", "rag-stream"):
            if [r.status for r in found] != ["cancelled"] or not described[0][1]:
                problems.append(
                    f"per request: {rid} cut by the client after {o.token_events} tokens: {described}"
                )
            continue
        if o.shot.kind == "job":
            job = jobs.get(rid)
            if job is None or job.status not in TERMINAL_JOB_STATUSES:
                problems.append(
                    f"jobs: {rid} accepted (202) but {job.status if job else 'missing'} after settling"
                )
                continue
            if job.status == GenerationJob.Status.FAILED:
                if o.shot.tenant == "main":
                    problems.append(f"jobs: {rid} of the main tenant failed: {job.error}")
                if any(r.status == "ok" for r in found):
                    problems.append(f"per request: failed job {rid} billed as ok: {described}")
                continue
            expected: int | None = int(job.result["meta"]["tokens_used"]) if job.result else None
        else:
            expected = _expected_tokens(o)
        ok = [r for r in found if r.status == "ok"]
        others = [r for r in found if r.status != "ok"]
        if expected is None:
            problems.append(
                f"per request: {rid} answered 200 without its usage ({o.body}), records: {described}"
            )
        elif len(ok) != 1 or ok[0].prompt_tokens + ok[0].completion_tokens != expected:
            problems.append(f"per request: {rid} answered {expected} tokens, records: {described}")
        # Only a job may have more than one record: an attempt whose worker died, which expired
        # charging what it held and was refunded when the job ran again (it delivered nothing).
        elif others and not (o.shot.kind == "job" and all(_refunded(r) for r in others)):
            problems.append(f"per request: {rid} has more than its one record: {described}")


def _check_killed_job(faults: Faults, problems: list[str]) -> None:
    o = faults.kill_job
    assert o is not None
    if o.status != 202 or not faults.killed_while_running:
        problems.append(
            f"soak: the worker was not killed mid-job (job answered {o.status}, "
            f"running when killed: {faults.killed_while_running})"
        )
        return
    job = GenerationJob.objects.get(request_id=o.shot.request_id)
    if job.status != GenerationJob.Status.SUCCEEDED or job.attempts < 2:
        problems.append(
            f"jobs: the killed job was not redelivered: {job.status}, {job.attempts} attempts, {job.error}"
        )
    records = UsageRecord.objects.filter(request_id__startswith=o.shot.request_id).order_by("pk")
    print(
        f"killed job {o.shot.request_id}: {job.status} after {job.attempts} attempts, records "
        f"{[(r.status, r.prompt_tokens + r.completion_tokens, getattr(r, 'revision', None)) for r in records]}"
    )
    dead = [r for r in records if r.status != "ok"]
    # It was running when its worker died: its expiry charged what it held, and the attempt that
    # delivered the result refunded it (revision 1, nothing charged).
    if len(dead) != 1 or not _refunded(dead[0]):
        problems.append(
            f"jobs: the killed attempt of {o.shot.request_id} was not refunded: "
            f"{[(r.status, r.revision, r.prompt_tokens + r.completion_tokens) for r in dead]}"
        )


def _refunded(record: UsageRecord) -> bool:
    return (
        record.status == "error"
        and record.revision == 1
        and not record.prompt_tokens + record.completion_tokens
    )


def _reconcile(stack: Stack, tenants: dict[str, Tenant], problems: list[str]) -> None:
    """4: the operators' command agrees with all of the above."""
    for tenant in tenants.values():
        slug = tenant.organization.slug
        result = subprocess.run(
            [str(BIN / "python"), "manage.py", "usage_reconcile", "--org", slug],
            cwd=ROOT,
            env=stack.worker_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        print(result.stdout, result.stderr, sep="")
        if result.returncode != 0:
            problems.append(
                f"4. usage_reconcile --org {slug} exited {result.returncode}:\n"
                f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
            continue
        # Its row: organization, period, ledger, records, rollups, invoiced. A ledger total the
        # command cannot read is "unknown" and not a difference to it; here Redis kept everything,
        # so it must be there.
        row = next((line.split() for line in result.stdout.splitlines() if line.startswith(f"{slug} ")), [])
        if len(row) < 4 or row[2] != row[3]:
            problems.append(f"4. usage_reconcile --org {slug} did not compare the ledger's total: {row}")


def _summary(outcomes: list[Outcome], faults: Faults, stack: Stack, timings: dict[str, float]) -> str:
    start = faults.traffic_started

    def at(t: float | None) -> str:
        return f"+{t - start:.1f}s" if t is not None else "never"

    answers = Counter((o.shot.tenant, o.shot.kind, o.status, o.code) for o in outcomes)
    lines = [f"{n:4d}  {t:5s} {k:11s} {s} {c or ''}" for (t, k, s, c), n in sorted(answers.items(), key=str)]
    lines += [f"errors: {o.shot.request_id}: {o.error}" for o in outcomes if o.error]
    lines.append("503s sent at " + ", ".join(at(o.sent_at) for o in outcomes if o.status == 503))
    lines.append(
        f"worker killed {at(faults.worker_killed_at)} (mid-job: {faults.killed_while_running}), "
        f"restarted {at(faults.worker_restarted_at)}; Redis down {at(faults.outage_start)} to "
        f"{at(faults.outage_end)}; logs in {stack.processes.log_dir}"
    )
    lines += [
        f"in flight at the outage: {o.shot.request_id} {o.status} {o.token_events} tokens, "
        f"sent {at(o.sent_at)}, done {at(o.done_at)}"
        for o in faults.in_flight_at_outage
    ]
    lines.append(", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items()))
    return "\n".join(lines)


def test_metering_survives_a_killed_worker_and_a_redis_restart(
    openai_backend: str, settings: Any, tmp_path: Path
) -> None:
    timings: dict[str, float] = {}
    began = time.monotonic()
    tenants = _tenants()
    settings.KNOWLEDGE_INDEX_DIR = tmp_path / "indexes"
    processes = Processes(tmp_path / "logs")
    private_redis = PrivateRedis(processes, tmp_path / "redis")
    try:
        private_redis.start()
        with _this_process_on(private_redis.url):
            stack = _start_stack(processes, private_redis)
            _warm_up(stack, tenants["main"])
            timings["start"] = time.monotonic() - began
            outcomes, faults = _soak(stack, tenants, _plan(random.Random(10)))
            timings["traffic"] = time.monotonic() - faults.traffic_started
            accepted_jobs = [o.body["id"] for o in outcomes if o.status == 202 and o.body]
            timings["settle"] = _settle(stack, accepted_jobs)
            print(_summary(outcomes, faults, stack, timings))

            # Every broken promise at once: a run takes a minute.
            problems: list[str] = []
            _check_answers(outcomes, faults, problems)
            counters = _check_nothing_reserved(stack, tenants, problems)
            _check_charged_is_recorded(counters, tenants, problems)
            _check_each_request(outcomes, faults, problems)
            _check_killed_job(faults, problems)
            _reconcile(stack, tenants, problems)
    finally:
        processes.stop_all()
    assert not problems, "\n".join(problems)
