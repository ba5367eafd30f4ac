"""Router metrics through Ray Serve's metrics API (exported on Ray's Prometheus endpoint)."""

from ray.serve import metrics

_LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]


class RouterMetrics:
    """Requests per target, decision latency, fallbacks and errors; create it inside a replica."""

    def __init__(self) -> None:
        self.requests = metrics.Counter("ray_router_requests", description="requests answered, per endpoint and target",
                                        tag_keys=("endpoint", "target"))
        self.decision_latency = metrics.Histogram("ray_router_decision_latency_ms", description="encode + decide, ms",
                                                  boundaries=_LATENCY_BOUNDARIES_MS, tag_keys=("endpoint",))
        self.fallbacks = metrics.Counter("ray_router_fallbacks", description="target attempts that failed",
                                         tag_keys=("target",))
        self.errors = metrics.Counter("ray_router_errors", description="error responses, per endpoint and status",
                                      tag_keys=("endpoint", "status"))

    def answered(self, endpoint: str, target: str) -> None:
        self.requests.inc(tags={"endpoint": endpoint, "target": target})

    def decided(self, endpoint: str, latency_ms: float) -> None:
        self.decision_latency.observe(latency_ms, tags={"endpoint": endpoint})

    def failed_attempt(self, target: str) -> None:
        self.fallbacks.inc(tags={"target": target})

    def error(self, endpoint: str, status: int) -> None:
        self.errors.inc(tags={"endpoint": endpoint, "status": str(status)})
