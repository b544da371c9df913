"""realtime's own counts for /metrics, read from realtime.notify at each scrape.

Registered in prometheus-client's default registry by RealtimeConfig.ready()
(ops, which serves them, imports no app).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from realtime.notify import stats


class PushCollector(Collector):
    """realtime.notify's own counts (pushes made, failed; messages dropped)."""

    def describe(self) -> list[CounterMetricFamily]:
        return []  # nothing to import or read when registered

    def collect(self) -> Iterator[CounterMetricFamily]:
        sends = CounterMetricFamily(
            "realtime_group_sends",
            "Status pushes handed to the channel layer by this process, by outcome.",
            labels=["outcome"],
        )
        sends.add_metric(["sent"], stats["sent"])
        sends.add_metric(["failed"], stats["failed"])
        yield sends
        yield CounterMetricFamily(
            "realtime_group_messages_dropped",
            "Group messages channels-redis dropped for full channels (core layer).",
            value=stats["dropped"],
        )
