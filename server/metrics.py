"""Prometheus metrics, in a registry of the app's own (several apps can live in
one process, as they do in the tests): ``Metrics`` (fed by the scheduler's
observer and read by ``GET /metrics``) and ``RequestMetrics``, the middleware
that counts requests."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency buckets from a fast GPU step (ms) to a slow CPU prefill (s).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """The server's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tokenflow_requests", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=r)
        self.active_streams = Gauge("tokenflow_active_streams", "SSE responses open now", registry=r)
        self.queue_depth = Gauge("tokenflow_queue_depth", "generations waiting for the worker", registry=r)
        self.running = Gauge("tokenflow_running_generations", "generations the worker is advancing", registry=r)
        self.batch_size = Gauge("tokenflow_batch_size", "KV-cache rows in the worker's last batched step",
                                registry=r)
        self.tokens = Counter("tokenflow_tokens_generated", "tokens generated", ["strategy"], registry=r)
        self.ttft = Histogram("tokenflow_time_to_first_token_seconds",
                              "submit to first token, queueing and prefill included", ["strategy"],
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("tokenflow_inter_token_latency_seconds", "time between two tokens of a generation",
                             ["strategy"], buckets=_LATENCY_BUCKETS, registry=r)
        self.prefix_hits = Counter("tokenflow_prefix_cache_hits", "requests that reused cached prompt tokens",
                                   registry=r)
        self.prefix_misses = Counter("tokenflow_prefix_cache_misses", "requests that prefilled their whole prompt",
                                     registry=r)
        self.prefix_tokens = Counter("tokenflow_prefix_cache_cached_tokens", "prompt tokens the prefix cache "
                                     "supplied instead of a prefill", registry=r)
        self.prefix_bytes = Gauge("tokenflow_prefix_cache_bytes", "bytes of KV blocks the prefix cache holds",
                                  registry=r)
        self.prefix_budget = Gauge("tokenflow_prefix_cache_budget_bytes", "the prefix cache's budget (0: off)",
                                   registry=r)
        self._prefix_seen = (0, 0, 0)  # the cache's own totals, already added to the counters
        self.duration = Histogram("tokenflow_request_duration_seconds", "submit to last token of a generation",
                                  ["strategy", "finish_reason"], buckets=_DURATION_BUCKETS, registry=r)
        # prompt-lookup speculation (generator/speculate.py): the engine's totals, read at render
        self.spec_drafted = Counter("tokenflow_speculative_draft_tokens", "draft tokens verified", registry=r)
        self.spec_accepted = Counter("tokenflow_speculative_accepted_tokens",
                                     "draft tokens the rows' own chains chose", registry=r)
        self._spec_seen = (0, 0)

    def observe(self, job, event) -> None:
        """Scheduler observer (worker thread): a token, or the end of a job (``event=None``)."""
        strategy = job.params.strategy
        if event is None:
            if job.last_token_at is not None:
                self.duration.labels(strategy, job.finish_reason).observe(job.last_token_at - job.submitted_at)
            return
        self.tokens.labels(strategy).inc()
        if job.tokens == 1:
            self.ttft.labels(strategy).observe(job.first_token_at - job.submitted_at)
        elif job.prev_token_at is not None:
            self.itl.labels(strategy).observe(job.last_token_at - job.prev_token_at)

    def render(self, scheduler=None) -> bytes:
        """The Prometheus text, with the scheduler's gauges read now (when given)."""
        if scheduler is not None:
            self.queue_depth.set(scheduler.queue_depth)
            self.running.set(scheduler.active_count)
            self.batch_size.set(scheduler.batch_size if scheduler.active_count else 0)
            self._read_prefix_cache(getattr(scheduler.engine, "prefix_cache", None))
            counts = getattr(getattr(scheduler, "engine", None), "__dict__", {}).get("spec_counts")
            if counts is not None:  # the engine counts; the counters take what is new since the last read
                drafted, accepted = counts.drafted, counts.accepted
                self.spec_drafted.inc(max(0, drafted - self._spec_seen[0]))
                self.spec_accepted.inc(max(0, accepted - self._spec_seen[1]))
                self._spec_seen = (drafted, accepted)
        return generate_latest(self.registry)

    def _read_prefix_cache(self, cache) -> None:
        """The prefix cache's totals since the last read added to the counters; its size now."""
        if cache is None:
            return
        st = cache.status()
        totals = (st["hit_requests"], st["requests"] - st["hit_requests"], st["cached_tokens"])
        for counter, now, seen in zip((self.prefix_hits, self.prefix_misses, self.prefix_tokens),
                                      totals, self._prefix_seen):
            if now > seen:
                counter.inc(now - seen)
        self._prefix_seen = totals
        self.prefix_bytes.set(st["used_bytes"])
        self.prefix_budget.set(st["capacity_blocks"] * st["block_bytes"] if st["enabled"] else 0)


class RequestMetrics:
    """ASGI middleware: counts requests by route template and status (streams included)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            # Unmatched paths are one label, so a scanner cannot blow up the label set.
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(path, scope["method"], str(status["code"])).inc()
