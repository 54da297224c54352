"""The platform's realistic mix under load, from many tenants' keys (locust).

    LOADTEST_TENANTS=var/loadtest-tenants.json locust -f bench/locustfile.py --headless \
        --host http://127.0.0.1:8000 --users 50 --spawn-rate 10 --run-time 60s

`make loadtest` runs it against LOADTEST_URL for LOADTEST_SECONDS. The tenants' file (a JSON
list of {"organization", "secret"}) comes from `bench/loadtest_setup.py`, run once against the
same database and server. Each simulated user acts for one tenant, picked in turn.

A 429 (a tenant's rate limit or budget) is recorded as a failure named "429 <code>", so that a
run shows how often the limits bit; any other failure is a fault of the platform.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from typing import Any

from locust import HttpUser, between, task

_PROMPTS = [
    "Explain Python classes in one sentence.",
    "What is a generator function?",
    "Summarize the benefits of type hints.",
    "How do I read a file line by line?",
]
_QUESTIONS = ["How do generators work?", "What do classes bundle?", "yield expressions", "type hints"]


def _tenants() -> list[dict[str, Any]]:
    path = os.environ.get("LOADTEST_TENANTS", "var/loadtest-tenants.json")
    try:
        with open(path) as file:
            tenants = json.load(file)
    except FileNotFoundError:
        raise SystemExit(f"No tenants at {path}: run bench/loadtest_setup.py --url <server> first") from None
    if not tenants:
        raise RuntimeError(f"{path} lists no tenant: run bench/loadtest_setup.py first")
    return list(tenants)


_TENANTS = _tenants()
_NEXT_TENANT = itertools.cycle(range(len(_TENANTS)))


class PlatformUser(HttpUser):
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        tenant = _TENANTS[next(_NEXT_TENANT)]
        self.client.headers["Authorization"] = f"Bearer {tenant['secret']}"

    def _call(self, method: str, path: str, *, name: str, body: dict[str, Any] | None = None) -> None:
        with self.client.request(method, path, json=body, name=name, catch_response=True) as response:
            # Streams are read to their end: the time includes the whole generation.
            if response.status_code == 429:
                try:
                    code = response.json()["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = "unknown"
                response.failure(f"429 {code}")
            elif response.status_code != 200:
                response.failure(f"{response.status_code} {response.text[:200]}")

    @task(4)
    def generate(self) -> None:
        body = {"prompt": random.choice(_PROMPTS), "max_tokens": 16}
        self._call("POST", "/api/v1/generate/", name="generate", body=body)

    @task(2)
    def stream(self) -> None:
        body = {"prompt": random.choice(_PROMPTS), "max_tokens": 16, "stream": True}
        self._call("POST", "/api/v1/generate/", name="generate (stream)", body=body)

    @task(3)
    def chat(self) -> None:
        body = {"messages": [{"role": "user", "content": random.choice(_PROMPTS)}], "max_tokens": 16}
        self._call("POST", "/v1/chat/completions", name="chat", body=body)

    @task(2)
    def embeddings(self) -> None:
        body = {"input": random.sample(_PROMPTS, 2)}
        self._call("POST", "/v1/embeddings", name="embeddings", body=body)

    @task(2)
    def search(self) -> None:
        body = {"query": random.choice(_QUESTIONS), "top_k": 3}
        self._call("POST", "/api/v1/search/", name="search", body=body)

    @task(1)
    def rag(self) -> None:
        body = {"prompt": random.choice(_QUESTIONS), "max_tokens": 16, "top_k": 2}
        self._call("POST", "/api/v1/rag/", name="rag", body=body)

    @task(1)
    def usage(self) -> None:
        self._call("GET", "/api/v1/usage/", name="usage")
