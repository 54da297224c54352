"""Tenants for the load test (`bench/locustfile.py`): N organizations, each with an owner, an API
key and one indexed document, written as a JSON list for LOADTEST_TENANTS.

    DJANGO_SETTINGS_MODULE=platform.settings.production DATABASE_URL=... REDIS_URL=... \
        python bench/loadtest_setup.py --url http://127.0.0.1:8000 --tenants 20 \
        --out var/loadtest-tenants.json

It writes the organizations and keys through the platform's services, on the database of the
server under test (same settings and environment), then uploads each tenant's document through
that server's API and waits until all are indexed (a Celery worker must be running, unless the
server runs tasks in-process). Organizations get a unique prefix per run, so it can run again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DOCUMENT = (
    "Generators are functions that contain yield expressions; each call to next() runs the body "
    "until the following yield. Classes bundle data and functionality together. Type hints "
    "document what a function takes and returns, and a checker such as mypy verifies them."
)


def _call(url: str, secret: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode() if body is not None else None,
        method="POST" if body is not None else "GET",
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return dict(json.loads(response.read()))


def tenants_create(*, count: int, prefix: str) -> list[dict[str, Any]]:
    import django

    django.setup()
    from accounts.services import api_key_create, organization_create, user_create

    tenants = []
    for number in range(count):
        slug = f"{prefix}-{number}"
        owner = user_create(email=f"owner@{slug}.loadtest")
        organization = organization_create(slug=slug, owner=owner)
        _key, secret = api_key_create(organization=organization, name="loadtest", user=owner)
        tenants.append({"organization": slug, "secret": secret})
    return tenants


def documents_upload(*, url: str, tenants: list[dict[str, Any]], timeout: float = 300) -> None:
    pending = {
        tenant["secret"]: _call(
            f"{url}/api/v1/documents/", tenant["secret"], {"title": "Python", "text": DOCUMENT}
        )["id"]
        for tenant in tenants
    }
    deadline = time.monotonic() + timeout
    while pending:
        for secret, document_id in list(pending.items()):
            status = _call(f"{url}/api/v1/documents/{document_id}/", secret)["status"]
            if status == "failed":
                raise RuntimeError(f"document {document_id} failed to ingest")
            if status == "indexed":
                del pending[secret]
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} documents not indexed after {timeout:g}s")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the server under test, e.g. http://127.0.0.1:8000")
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--out", default="var/loadtest-tenants.json")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "platform.settings.production")
    tenants = tenants_create(count=args.tenants, prefix=f"loadtest-{uuid.uuid4().hex[:6]}")
    documents_upload(url=args.url.rstrip("/"), tenants=tenants)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(tenants, indent=1))
    print(f"{len(tenants)} tenants in {out}")


if __name__ == "__main__":
    main()
