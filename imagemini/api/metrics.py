"""Prometheus metrics of the server, served at GET /metrics (routes.py), in vLLM's names and
meanings under the `imagemini:` prefix, each with a `model_name` and a `replica` label.

    metrics = Metrics(card.id, engine, encoder_cache, replica)   # state.py builds it; AsyncEngine reports to it
    timer = metrics.engine_request()                    # completions.py: one per choice (engine request)
    timer.output(sequence_output) ... timer.close()
    metrics.render()                                    # the text exposition format

One process owns every number. The engine process already sends its scheduler figures
(running, waiting, KV tokens in use) with each step's outputs (async_engine.py: EngineStats), and
now also how long each request it admitted had waited; everything else is seen in this process,
which reads every delta of every request. prometheus-client's multiprocess mode (a directory of
mmap files, merged at each scrape, cleaned up at start) would add moving parts for figures the
pipe already carries.

`replica`: Ray Serve's replica id under `imagemini serve --replicas N` (ray_app.py), LONE_REPLICA
for a lone server. Behind Ray's proxy each scrape of /metrics reaches one replica; the label keeps
each replica's counters a series of their own, so that Prometheus sees N counters that only grow
(`sum by` adds them up) instead of one that jumps between replicas' values and reads as resets.

What each series means (README.md of api/ lists them with the access log):
- gauges, read at scrape time: num_requests_running, num_requests_waiting (as of the engine's last
  step that produced output), kv_cache_usage_perc (KV tokens in use / the budget, 0 to 1);
- counters: prompt_tokens (prefills done, per engine request: n choices prefill n times),
  generation_tokens (image codes included), generation_image_tokens, generated_images,
  request_success{finished_reason} (stop, length, abort: shutdown or client gone, error),
  mm_cache_queries / mm_cache_hits (the vision-encoder cache, encoder.py), http_responses{handler, code},
  limit_rejections{reason} (402 credit_limit, 429 requests_per_minute / tokens_per_minute);
- histograms: time_to_first_token_seconds and e2e_request_latency_seconds from the moment a choice
  is handed to the engine, inter_token_latency_seconds between deltas (a delta holds the tokens
  of one step, or of several steps when the reader fell behind), request_queue_time_seconds
  (measured in the engine process), request_prompt_tokens, request_generation_tokens.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from imagemini.engine.sequence import SequenceOutput

from .errors import APIError

if TYPE_CHECKING:
    from imagemini.engine.async_engine import AsyncEngine, EngineStats

    from .encoder import EncoderCache

PREFIX = "imagemini:"
IDENTITY_LABELS = ("model_name", "replica")  # on every series
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: a first token on this CPU takes tens of milliseconds to tens of seconds under load.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)
LONE_REPLICA = "0"  # the `replica` label of a server that is not one of several
STEP_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)


def replica_label(replica: str | None) -> str:
    """The `replica` of metrics and access-log lines: the replica's id, LONE_REPLICA for a lone server."""
    return LONE_REPLICA if replica is None else replica


def token_buckets(largest: int) -> tuple[int, ...]:
    """1, 2, 5, 10, 20, 50, ... up to the first bound at or past `largest` (a context length)."""
    bounds: list[int] = []
    for power in itertools.count():
        for step in (1, 2, 5):
            bounds.append(step * 10**power)
            if bounds[-1] >= largest:
                return tuple(bounds)


class Metrics:
    def __init__(self, model_name: str, engine: "AsyncEngine", encoder_cache: "EncoderCache | None",
                 replica: str = LONE_REPLICA) -> None:
        self.registry = CollectorRegistry()
        self.identity = (model_name, replica)  # the values of IDENTITY_LABELS
        labels, registry, identity = list(IDENTITY_LABELS), self.registry, self.identity

        def counter(name: str, doc: str, *extra: str) -> Counter:
            return Counter(PREFIX + name, doc, labels + list(extra), registry=registry)

        def histogram(name: str, doc: str, buckets: tuple) -> Histogram:
            return Histogram(PREFIX + name, doc, labels, buckets=buckets, registry=registry).labels(*identity)

        self.prompt_tokens = counter("prompt_tokens", "Number of prefill tokens processed.").labels(*identity)
        self.generation_tokens = counter("generation_tokens", "Number of generation tokens processed (image codes included).").labels(*identity)
        self.image_tokens = counter("generation_image_tokens", "Image codes generated (part of generation_tokens).").labels(*identity)
        self.images = counter("generated_images", "Images generated (complete code grids).").labels(*identity)
        self.request_success = counter("request_success", "Count of processed engine requests, by how they finished.", "finished_reason")
        self.http_responses = counter("http_responses", "HTTP responses sent, by route and status code.", "handler", "code")
        self.limit_rejections = counter("limit_rejections", "Requests refused by a key's credit (402) or rate (429) limit.", "reason")
        self.ttft = histogram("time_to_first_token_seconds", "Histogram of time to first token in seconds.", LATENCY_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", STEP_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", LATENCY_BUCKETS)
        self.queue_time = histogram("request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", LATENCY_BUCKETS)
        context = engine.limits.context_length
        self.request_prompt_tokens = histogram("request_prompt_tokens", "Number of prefill tokens processed.", token_buckets(context))
        self.request_generation_tokens = histogram("request_generation_tokens", "Number of generation tokens processed.", token_buckets(context))
        registry.register(LiveFigures(identity, engine, encoder_cache))
        engine.on_stats = self.engine_stats

    def engine_request(self) -> "RequestTimer":
        return RequestTimer(self)

    def engine_stats(self, stats: "EngineStats") -> None:
        for seconds in stats.queue_times:
            self.queue_time.observe(seconds)

    def http_response(self, handler: str, status: int) -> None:
        """`handler`: the route's path template (a bounded set), "other" for unknown paths."""
        self.http_responses.labels(*self.identity, handler, str(status)).inc()

    def limit_refused(self, error: APIError) -> None:
        """Count a refusal of Access.admit when a limit made it (a 403 is not one)."""
        if error.status == 402:
            reason = "credit_limit"
        elif error.status == 429:
            reason = f"{error.type}_per_minute"  # the error's type is "requests" or "tokens" (access.py)
        else:
            return
        self.limit_rejections.labels(*self.identity, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """One engine request (one choice) seen through its deltas, as vLLM's output processor
    sees its requests: prefill done at the first token, then one interval per delta."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.arrived = time.monotonic()
        self.last_output: float | None = None
        self.prompt_tokens = 0
        self.generated = 0
        self.image_tokens = 0
        self.finished = False

    def output(self, out: SequenceOutput) -> None:
        m, now = self.metrics, time.monotonic()
        self.prompt_tokens = out.num_prompt_tokens
        new_tokens = out.num_output_tokens - self.generated
        if new_tokens > 0:
            if self.last_output is None:
                m.ttft.observe(now - self.arrived)
                m.prompt_tokens.inc(out.num_prompt_tokens)
            else:
                m.itl.observe(now - self.last_output)
            self.last_output = now
            m.generation_tokens.inc(new_tokens)
            self.generated = out.num_output_tokens
        if out.num_image_tokens > self.image_tokens:
            m.image_tokens.inc(out.num_image_tokens - self.image_tokens)
            self.image_tokens = out.num_image_tokens
        m.images.inc(len(out.images))
        if out.finished:
            self._finish(out.finish_reason or "stop")

    def close(self) -> None:
        """The request ended without a final delta (its reader went away): an abort."""
        if not self.finished:
            self._finish("abort")

    def _finish(self, reason: str) -> None:
        m = self.metrics
        self.finished = True
        m.request_success.labels(*m.identity, reason).inc()
        m.e2e.observe(time.monotonic() - self.arrived)
        m.request_prompt_tokens.observe(self.prompt_tokens)
        m.request_generation_tokens.observe(self.generated)


class LiveFigures(Collector):
    """What is read at scrape time: the engine's last reported load, the encoder cache's tallies."""

    def __init__(self, identity: tuple[str, str], engine: "AsyncEngine", encoder_cache: "EncoderCache | None") -> None:
        self.identity = identity
        self.engine = engine
        self.encoder_cache = encoder_cache

    def collect(self) -> Iterator[Metric]:
        stats, budget = self.engine.stats, self.engine.limits.kv_budget_tokens
        yield self._gauge("num_requests_running", "Number of requests in model execution batches.", stats.running)
        yield self._gauge("num_requests_waiting", "Number of requests waiting to be processed.", stats.waiting)
        yield self._gauge("kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", stats.kv_used_tokens / budget)
        cache = self.encoder_cache.stats() if self.encoder_cache is not None else {"hits": 0, "misses": 0}
        yield self._counter("mm_cache_queries", "Vision-encoder cache queries, in images (and source echoes).",
                            cache["hits"] + cache["misses"])
        yield self._counter("mm_cache_hits", "Vision-encoder cache hits, in images (and source echoes).", cache["hits"])
        prefix = stats.prefix_cache or {"query_tokens": 0, "hit_tokens": 0}
        yield self._counter("prefix_cache_queries", "Prefix cache queries, in prompt tokens looked up.", prefix["query_tokens"])
        yield self._counter("prefix_cache_hits", "Prefix cache hits, in prompt tokens taken from the cache.", prefix["hit_tokens"])

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(PREFIX + name, doc, labels=list(IDENTITY_LABELS))
        family.add_metric(list(self.identity), value)
        return family

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(PREFIX + name, doc, labels=list(IDENTITY_LABELS))
        family.add_metric(list(self.identity), value)
        return family
