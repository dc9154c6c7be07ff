"""Prometheus metrics for one gateway: requests, credits, latency, streams, ledger health.

Labels are client names, endpoints and outcomes only: never a key, a persona prompt or content.
Client names and spend are the admin API's data, so the public view leaves them out: per-client
series are summed away and the credit families dropped (`render(per_client=False)`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from app.records import UsageRecord, cost_unknown

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """The gateway's metric families, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("client", "endpoint", "outcome")
        self.requests = Counter(
            "mavera_gateway_requests", "Requests finished", labels, registry=self.registry
        )
        self.credits = Counter(
            "mavera_gateway_credits",
            "Credits reported by Mavera",
            ("client", "endpoint"),
            registry=self.registry,
        )
        self.unknown_credits = Counter(
            "mavera_gateway_requests_unknown_credits",
            "Generation requests whose cost Mavera did not report",
            ("client", "endpoint"),
            registry=self.registry,
        )
        self.streams = Counter(
            "mavera_gateway_streams", "Streamed requests finished", labels, registry=self.registry
        )
        self.latency = Histogram(
            "mavera_gateway_request_seconds",
            "Time from request to last byte",
            ("endpoint",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttfb = Histogram(
            "mavera_gateway_first_byte_seconds",
            "Time from request to first byte",
            ("endpoint",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.write_failures = Counter(
            "mavera_gateway_ledger_write_failures",
            "Failed ledger batch writes",
            registry=self.registry,
        )
        self.dropped = Counter(
            "mavera_gateway_ledger_dropped_records",
            "Records dropped because the buffer was full",
            registry=self.registry,
        )
        self.edge_refusals = Counter(
            "mavera_gateway_edge_refusals",
            "Requests and connections the server answered or closed on its own (app.edge); "
            "only body_timeout ones reached the app and have a ledger record",
            ("reason",),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "mavera_gateway_ledger_queue_depth",
            "Records waiting to be written",
            registry=self.registry,
        )
        self._public = CollectorRegistry(auto_describe=False)
        self._public.register(
            _WithoutClients(
                self.registry, {"mavera_gateway_credits", "mavera_gateway_requests_unknown_credits"}
            )
        )

    def track_in_flight(self, count: Callable[[], int]) -> None:
        """Report requests in progress at scrape time."""
        Gauge(
            "mavera_gateway_in_flight", "Requests in progress", registry=self.registry
        ).set_function(lambda: float(count()))

    def track_queue(self, depth: Callable[[], int]) -> None:
        """Report the ledger queue depth at scrape time."""
        self.queue_depth.set_function(lambda: float(depth()))

    def observe(self, record: UsageRecord) -> None:
        """Count one finished request."""
        self.requests.labels(record.client, record.endpoint, record.outcome).inc()
        if record.stream:
            self.streams.labels(record.client, record.endpoint, record.outcome).inc()
        if record.credits_used is not None:
            self.credits.labels(record.client, record.endpoint).inc(record.credits_used)
        elif cost_unknown(record.endpoint, record.status, record.outcome, record.credits_used):
            self.unknown_credits.labels(record.client, record.endpoint).inc()
        if record.latency_ms is not None:
            self.latency.labels(record.endpoint).observe(record.latency_ms / 1000)
        if record.ttfb_ms is not None:
            self.ttfb.labels(record.endpoint).observe(record.ttfb_ms / 1000)

    def render(self, *, per_client: bool) -> bytes:
        """The text exposition format: every series, or the public view without clients."""
        if per_client:
            return generate_latest(self.registry)
        return generate_latest(self._public)


class _WithoutClients(Collector):
    """Another registry's metrics with the `client` label summed away and spend left out."""

    def __init__(self, source: CollectorRegistry, private: set[str]) -> None:
        self.source = source
        self.private = private

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            if family.name in self.private:
                continue
            if not any("client" in sample.labels for sample in family.samples):
                yield family
                continue
            merged: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            for sample in family.samples:
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "client"))
                key = (sample.name, labels)
                if sample.name.endswith("_created"):  # when the series began: the earliest
                    merged[key] = min(merged.get(key, sample.value), sample.value)
                else:
                    merged[key] = merged.get(key, 0.0) + sample.value
            summed = Metric(family.name, family.documentation, family.type)
            for (name, labels), value in merged.items():
                summed.add_sample(name, dict(labels), value)
            yield summed
