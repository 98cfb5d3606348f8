"""The API's Prometheus metrics (`usage_ingest_api_*`): requests and their latency by
route template, and the usage events queued."""

from prometheus_client import CollectorRegistry, Counter, Histogram


class ApiMetrics:
    """`usage_ingest_api_*` Prometheus metrics, in the registry given."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "usage_ingest_api_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "usage_ingest_api_request_duration_seconds",
            "Time to answer an HTTP request, by route template, method and status.",
            ["route", "method", "status"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.usages_queued = Counter(
            "usage_ingest_api_usages_queued",
            "Usage events accepted by POST /usages and acknowledged by the broker.",
            registry=registry,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        labels = {"route": route, "method": method, "status": str(status)}
        self.requests.labels(**labels).inc()
        self.latency.labels(**labels).observe(seconds)
