"""Metering's health for Prometheus, read from the shared state at each scrape."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from django.db import DatabaseError
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.shared_redis import REDIS_ERRORS

logger = logging.getLogger(__name__)


class MeteringCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        from usage import records, services
        from usage.ledger import RedisLedger
        from usage.models import UsageDeadLetter

        try:
            dead = UsageDeadLetter.objects.count()
        except DatabaseError:
            logger.warning("Could not count the usage dead letters", exc_info=True)
        else:
            yield GaugeMetricFamily(
                "llmp_usage_dead_letters", "Settlement entries set aside by the usage flush.", value=dead
            )
        ledger = services.get_ledger()
        try:
            active = ledger.active_reservations()
            pending = records.stream_pending(ledger=ledger) if isinstance(ledger, RedisLedger) else 0
        except REDIS_ERRORS:
            logger.warning("Could not read the ledger's state", exc_info=True)
            return
        yield GaugeMetricFamily("llmp_reservations_active", "Budget reservations open.", value=active)
        yield GaugeMetricFamily(
            "llmp_usage_stream_pending", "Settled usage records not yet in the database.", value=pending
        )
