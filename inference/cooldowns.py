"""Cooldowns shared by the processes: when one finds a deployment down, the others stop sending it
requests too, instead of each finding out with a request of its own.

A process that cools a deployment down publishes it on `<CACHE_KEY_PREFIX>:router:cooldown`
(model, deployment, seconds); every other process's subscriber cools the same deployment for as
long and starts its own health checks, which bring it back as they would have. Without shared
Redis each process keeps its own cooldowns. A message lost (Redis restarting, a subscriber
reconnecting) costs what it did before: that process finds out for itself."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from django.conf import settings

from common.shared_redis import REDIS_ERRORS, redis_client, redis_client_new, shared_redis_configured
from inference.engine.router import Router

logger = logging.getLogger(__name__)

CHANNEL_SUFFIX = "router:cooldown"


def _channel() -> str:
    return f"{settings.CACHE_KEY_PREFIX}:{CHANNEL_SUFFIX}"


class SharedCooldowns:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._router: Router | None = None
        # This process's own messages come back to it: they carry its id and are skipped.
        self._origin = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def publish(self, model: str, deployment: str, seconds: float) -> None:
        """Tells the other processes (the router's `on_cooled`)."""
        if not shared_redis_configured():
            return
        message = {"model": model, "deployment": deployment, "seconds": seconds, "origin": self._origin}
        try:
            redis_client().publish(_channel(), json.dumps(message))
        except REDIS_ERRORS as exc:
            logger.warning("Cooldown of %s/%s not shared: %s", model, deployment, exc)

    def listen(self, router: Router) -> None:
        """Applies the other processes' cooldowns to `router` (once per process: a forked child
        starts its own subscriber)."""
        if self._router is router and self._pid == os.getpid() or not shared_redis_configured():
            return  # on every request: two comparisons once the subscriber runs
        with self._lock:
            if self._pid == os.getpid() and self._router is router:
                return
            self._pid, self._router = os.getpid(), router
            self._origin = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        threading.Thread(target=self._listen, args=(router,), name="router-cooldowns", daemon=True).start()

    def _listen(self, router: Router) -> None:
        while self._router is router and self._pid == os.getpid():
            try:
                client = redis_client_new(socket_timeout=None, health_check_interval=10)
                pubsub = client.pubsub()
                pubsub.subscribe(_channel())
                while self._router is router:
                    message = pubsub.get_message(timeout=5.0)
                    if message is not None and message["type"] == "message":
                        self._apply(router, message["data"])
            except Exception:
                logger.warning("Router cooldowns: subscription lost, retrying", exc_info=True)
                time.sleep(1)

    def _apply(self, router: Router, data: bytes) -> None:
        try:
            message: dict[str, Any] = json.loads(data)
            if message.get("origin") == self._origin:
                return
            router.cooled_elsewhere(
                model=str(message["model"]),
                deployment=str(message["deployment"]),
                seconds=float(message["seconds"]),
            )
        except (ValueError, KeyError, TypeError):
            logger.warning("Router cooldowns: a message that does not read: %r", data[:200])


shared_cooldowns = SharedCooldowns()
