"""``GET /metrics``: the server in Prometheus' text format, with ``prometheus_client``.

Counted in the HTTP process as requests pass (``RequestMetrics``, an ASGI middleware):
requests by endpoint, method and status, and their latency. Read from the model workers when
scraped (``ServerCollector``): model calls and rows served per endpoint (shared memory,
``serve.stats``; for /translate a model call is one decoder step, so
``rate(hypernmt_decoder_steps_total[1m])`` is decoder steps per second), requests waiting for a
worker, rows being decoded, and each model worker's resident memory.

Endpoint labels are the server's own paths; any other path counts as ``other``, so a client
cannot create series at will.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import psutil
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "hypernmt"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OTHER = "other"
# keys of an endpoint's live statistics that become gauges when its workers report them
LIVE_GAUGES = {
    "live_rows": "rows (sentences or hypotheses) in the running decoder batch",
    "live_cost": "admission cost (rows weighted by source length) being decoded",
    "queued_sentences": "sentences admitted and waiting to join the decoder batch",
    "queued_cost": "admission cost of the sentences waiting to join",
    "queue_length": "requests waiting for a model worker",
}


def live_stats(api: Any) -> dict[str, Any]:
    """An endpoint's statistics as its model workers report them (``serve.stats``), with the
    translator's load (live rows, queue, decoder steps) summed over its workers."""
    snapshot = api.stats.snapshot()
    return {**snapshot, **snapshot.get("load", {})}


class ServerMetrics:
    """The registry behind ``/metrics`` and the request metrics the middleware updates."""

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = frozenset(paths)
        self.registry = CollectorRegistry()
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests answered, by endpoint, method and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Seconds from a request's arrival to the end of its answer, by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def endpoint(self, path: str) -> str:
        return path if path in self.paths else OTHER

    def watch(self, server: Any, apis: list[Any]) -> None:
        """Also report the model workers of ``server`` (a ``LitServer``) at every scrape."""
        self.registry.register(ServerCollector(server, apis, live_stats))

    async def endpoint_handler(self) -> Any:
        from fastapi.responses import Response

        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """ASGI middleware: count and time every HTTP request."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}  # if the app fails before answering

        async def send_and_watch(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            endpoint = self.metrics.endpoint(scope["path"])
            self.metrics.requests.labels(endpoint, scope["method"], str(status["code"])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


class ServerCollector(Collector):
    """Model-worker figures, read when Prometheus scrapes."""

    def __init__(self, server: Any, apis: list[Any], stats: Callable[[Any], dict]) -> None:
        self.server = server
        self.apis = apis
        self.stats = stats

    def collect(self) -> Iterable[Any]:
        calls = CounterMetricFamily(
            f"{PREFIX}_model_calls", "Model calls (batches) per endpoint", labels=["endpoint"]
        )
        rows = CounterMetricFamily(
            f"{PREFIX}_model_rows", "Requests served, summed over model calls", labels=["endpoint"]
        )
        steps = CounterMetricFamily(
            f"{PREFIX}_decoder_steps",
            "Decoder steps of the continuous beam search (rate() is steps per second)",
            labels=["endpoint"],
        )
        gauges = {
            key: GaugeMetricFamily(f"{PREFIX}_{key}", text, labels=["endpoint"])
            for key, text in LIVE_GAUGES.items()
        }
        for api in self.apis:
            snapshot = self.stats(api)
            calls.add_metric([api.api_path], snapshot["batches"])
            rows.add_metric([api.api_path], snapshot["requests"])
            if api.batching == "continuous":
                steps.add_metric([api.api_path], snapshot.get("steps", snapshot["batches"]))
            live = {"queue_length": self._queued(api.api_path), **snapshot}
            for key, gauge in gauges.items():
                if live.get(key) is not None:
                    gauge.add_metric([api.api_path], live[key])
        yield from (calls, rows, steps, *gauges.values(), self._memory())

    def _queued(self, path: str) -> int | None:
        queue = getattr(self.server, "litapi_request_queues", {}).get(path)
        try:
            return queue.qsize() if queue is not None else None
        except (OSError, EOFError, NotImplementedError):  # the manager is shutting down
            return None

    def _memory(self) -> GaugeMetricFamily:
        memory = GaugeMetricFamily(
            f"{PREFIX}_worker_memory_bytes",
            "Resident memory of each model worker process",
            labels=["worker", "pid"],
        )
        for process in getattr(self.server, "inference_workers", []):
            try:
                rss = psutil.Process(process.pid).memory_info().rss
            except (psutil.Error, TypeError, ValueError):  # ended, or not started
                continue
            memory.add_metric([process.name, str(process.pid)], rss)
        return memory
