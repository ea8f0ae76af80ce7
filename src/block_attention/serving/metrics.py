"""Prometheus metrics of one server app (its own ``CollectorRegistry``, so several apps can live in one process).

Exposed at ``GET /metrics`` in the Prometheus text format (``prometheus_client``):

* ``block_attention_http_requests_total{route,status}``; ``block_attention_request_errors_total{type}``;
  ``block_attention_requests_cancelled_total`` (clients that disconnected mid-stream);
* ``block_attention_ttft_seconds`` (engine time to first token) and ``block_attention_queue_seconds`` (wait for
  the model thread) histograms; ``block_attention_queue_depth``;
* ``block_attention_decode_batch_rows`` histogram (requests decoded by each decode forward: above 1 when
  concurrent requests were batched) and ``block_attention_decode_batch_rows_max`` (the largest batch so far);
* ``block_attention_kv_hits_total{tier}``, ``block_attention_kv_misses_total``, ``block_attention_final_reused_total``
  (exact repeats: the final block reused);
  ``block_attention_prompt_tokens_total``, ``block_attention_completion_tokens_total``,
  ``block_attention_streamed_pieces_total`` (text pieces produced for streams, cancelled ones included);
* ``block_attention_kv_tier_bytes{tier}`` / ``block_attention_kv_tier_entries{tier}`` /
  ``block_attention_kv_tier_errors{tier}``, read from the store at scrape time (for the remote tier: Redis's
  ``used_memory`` and ``DBSIZE``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from block_attention.engine.stages import RequestStats
from block_attention.store import StoreStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _StoreCollector(Collector):
    """Per-tier sizes, read from the KV store when scraped."""

    def __init__(self, stats: Callable[[], StoreStats | None]) -> None:
        self._stats = stats

    def describe(self) -> list[Any]:
        return []  # sizes are only known at scrape time

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._stats()
        nbytes = GaugeMetricFamily("block_attention_kv_tier_bytes", "Bytes held by each KV tier", labels=["tier"])
        entries = GaugeMetricFamily("block_attention_kv_tier_entries", "Entries held by each KV tier",
                                    labels=["tier"])
        errors = GaugeMetricFamily("block_attention_kv_tier_errors", "Faults of each KV tier since start",
                                   labels=["tier"])
        for tier in stats.tiers if stats is not None else ():
            nbytes.add_metric([tier.name], tier.nbytes)
            entries.add_metric([tier.name], tier.entries)
            errors.add_metric([tier.name], tier.errors)
        yield from (nbytes, entries, errors)


class ServerMetrics:
    def __init__(self, store_stats: Callable[[], StoreStats | None]) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("block_attention_http_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.errors = Counter("block_attention_request_errors", "Requests answered with an error, by error type",
                              ["type"], registry=r)
        self.cancelled = Counter("block_attention_requests_cancelled",
                                 "Streams stopped because the client disconnected", registry=r)
        self.ttft = Histogram("block_attention_ttft_seconds", "Engine time to first token", buckets=_TTFT_BUCKETS,
                              registry=r)
        self.queue = Histogram("block_attention_queue_seconds", "Time a request waited for the model thread",
                               buckets=_TTFT_BUCKETS, registry=r)
        self.queue_depth = Gauge("block_attention_queue_depth", "Requests waiting for or running on the model",
                                 registry=r)
        self.batch_rows = Histogram("block_attention_decode_batch_rows", "Requests decoded by one decode forward",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.batch_rows_max = Gauge("block_attention_decode_batch_rows_max",
                                    "The most requests one decode forward has decoded", registry=r)
        self.hits = Counter("block_attention_kv_hits", "Block KV served from a tier, by tier", ["tier"], registry=r)
        self.misses = Counter("block_attention_kv_misses", "Block KV that had to be encoded", registry=r)
        self.repeats = Counter("block_attention_final_reused", "Requests that were exact repeats: the final "
                               "block's KV and logits were reused, not computed", registry=r)
        self.prompt_tokens = Counter("block_attention_prompt_tokens", "Prompt tokens of answered requests",
                                     registry=r)
        self.completion_tokens = Counter("block_attention_completion_tokens",
                                         "Generated tokens of answered requests", registry=r)
        self.pieces = Counter("block_attention_streamed_pieces", "Text pieces generated for streaming requests",
                              registry=r)
        r.register(_StoreCollector(store_stats))

    def observe(self, stats: RequestStats, queue_s: float) -> None:
        """Record one answered request."""
        self.ttft.observe(stats.ttft_s)
        self.queue.observe(queue_s)
        for tier, hits in stats.hits_by_tier.items():
            self.hits.labels(tier).inc(hits)
        self.misses.inc(stats.misses)
        if stats.final_reused:
            self.repeats.inc()
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.completion_tokens.inc(stats.new_tokens)

    def observe_step(self, rows: int) -> None:
        """Record one decode forward of ``rows`` requests (called on the model thread)."""
        self.batch_rows.observe(rows)

    def render(self) -> bytes:
        return generate_latest(self.registry)
