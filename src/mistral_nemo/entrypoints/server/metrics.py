"""Prometheus metrics, one CollectorRegistry per app (no module-level state).

Engine gauges and counters are read from `engine.stats()` at scrape time, so they are never
stale; latency histograms are observed by the request handlers through `RequestTimer`.

Queue time is measured from the request's arrival to the end of the first engine step that
scheduled it (the first output the engine sends for it); time to first token runs to the first
output that carries a token. With chunked prefill of a long prompt the two differ by the prefill.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mistral_nemo.engine.llm_engine import EngineStats
from mistral_nemo.engine.outputs import RequestOutput

PREFIX = "mistral_nemo:"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _EngineCollector(Collector):
    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if stats is None:  # still loading: no engine numbers yet
            return
        gauges = {
            "num_requests_running": ("Sequences running on the engine", stats.running),
            "num_requests_waiting": ("Sequences waiting to be scheduled", stats.waiting),
            "kv_cache_usage_perc": ("Fraction of KV-cache blocks in use (1 = full)", stats.kv_cache_usage),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(PREFIX + name, doc, value=value)
        counters = {
            "prefix_cache_queries": (
                "Prompt tokens looked up in the prefix cache",
                stats.prefix_cache_queries,
            ),
            "prefix_cache_hits": ("Prompt tokens found in the prefix cache", stats.prefix_cache_hits),
            "num_preemptions": ("Sequences preempted to free KV blocks", stats.preemptions),
            "prompt_tokens": ("Prompt tokens processed", stats.prompt_tokens),
            "generation_tokens": ("Tokens generated", stats.generation_tokens),
            # Speculative decoding (vLLM's spec_decode names); all 0 when it is off.
            "spec_decode_num_drafts": (
                "Sequence-steps that verified drafted tokens",
                stats.spec_verifications,
            ),
            "spec_decode_num_draft_tokens": ("Tokens drafted", stats.spec_draft_tokens),
            "spec_decode_num_accepted_tokens": ("Drafted tokens accepted", stats.spec_accepted_tokens),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(PREFIX + name, doc, value=value)
        drafts, drafted = stats.spec_verifications, stats.spec_draft_tokens
        yield GaugeMetricFamily(
            PREFIX + "spec_decode_acceptance_rate",
            "Drafted tokens accepted / drafted, since start",
            value=stats.spec_accepted_tokens / drafted if drafted else 0.0,
        )
        yield GaugeMetricFamily(
            PREFIX + "spec_decode_mean_accepted_length",
            "Drafted tokens accepted per verification, since start",
            value=stats.spec_accepted_tokens / drafts if drafts else 0.0,
        )


class ServerMetrics:
    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_EngineCollector(stats))
        r = self.registry
        self.ttft = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "Time to first token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            PREFIX + "inter_token_latency_seconds", "Time between tokens", buckets=_TOKEN_BUCKETS, registry=r
        )
        self.e2e = Histogram(
            PREFIX + "e2e_request_latency_seconds", "Request latency", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.queue = Histogram(
            PREFIX + "request_queue_time_seconds",
            "Time from arrival to the first engine step",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.finished = Counter(
            PREFIX + "request_success",
            "Requests finished, by finish reason",
            ["finish_reason"],
            registry=r,
        )
        self.aborted = Counter(PREFIX + "request_aborted", "Requests cut by the client", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def timer(self) -> RequestTimer:
        return RequestTimer(self)


class RequestTimer:
    """Latency bookkeeping for one request; feed it every RequestOutput of the request."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self.start = time.monotonic()
        self._first_output: float | None = None
        self._last_token: float | None = None
        self._tokens = 0
        self._done = False

    def output(self, output: RequestOutput) -> None:
        now = time.monotonic()
        if self._first_output is None:
            self._first_output = now
            self.metrics.queue.observe(now - self.start)
        tokens = sum(len(o.token_ids) for o in output.outputs)
        if tokens > self._tokens:
            if self._last_token is None:
                self.metrics.ttft.observe(now - self.start)
            else:
                self.metrics.itl.observe(now - self._last_token)
            self._last_token = now
            self._tokens = tokens

    def finish(self, finish_reasons: list[str]) -> None:
        if self._done:
            return
        self._done = True
        self.metrics.e2e.observe(time.monotonic() - self.start)
        for reason in finish_reasons:
            self.metrics.finished.labels(finish_reason=reason).inc()

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self.metrics.aborted.inc()
