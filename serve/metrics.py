"""Prometheus metrics of one server app, in its own `CollectorRegistry`.

A per-app registry (not prometheus_client's global one) lets several apps live in one process
(tests, benchmarks) without "Duplicated timeseries" errors, and /metrics shows only this app.

    aligners_requests_total{endpoint,status}       every HTTP request, by route and status code
    aligners_request_errors_total{type}            errors by OpenAI error type / cause
    aligners_stage_seconds{stage}                  latency per stage: generate, inspect, align, total
    aligners_answers_total / _changed_total        answers seen by the squad / answers it changed
    aligners_flagged_total{criterion}              answers below a criterion's threshold on arrival
    aligners_corrected_total{criterion}            rewrites kept, per criterion
    aligners_in_flight / aligners_queued           admission: requests running / waiting for a slot
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from aligners.schema import Correction

# Wide enough for a ~1 ms proxy hop and a multi-second CPU generation.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
STAGES = ("generate", "inspect", "align", "total")


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("aligners_requests", "HTTP requests by endpoint and status.",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter("aligners_request_errors", "Errors by type.", ["type"], registry=r)
        self.stage = Histogram("aligners_stage_seconds", "Latency per stage.", ["stage"],
                               buckets=BUCKETS, registry=r)
        self.answers = Counter("aligners_answers", "Answers inspected by the squad.", registry=r)
        self.changed = Counter("aligners_answers_changed", "Answers the squad changed.", registry=r)
        self.flagged = Counter("aligners_flagged", "Answers flagged on arrival, per criterion.",
                               ["criterion"], registry=r)
        self.corrected = Counter("aligners_corrected", "Rewrites kept, per criterion.",
                                 ["criterion"], registry=r)
        self.shadow = Counter("aligners_shadow_would_correct", "Rewrites a shadow-mode request would have "
                              "kept (the answer went out unchanged), per criterion.", ["criterion"], registry=r)
        self.in_flight = Gauge("aligners_in_flight", "Requests being processed.", registry=r)
        self.queued = Gauge("aligners_queued", "Requests waiting for a processing slot.", registry=r)

    def init_criteria(self, criteria: Sequence[str]) -> None:
        """Export zeros for every criterion, so dashboards see the series before the first flag."""
        for c in criteria:
            self.flagged.labels(c)
            self.corrected.labels(c)
            self.shadow.labels(c)
        for s in STAGES:
            self.stage.labels(s)

    def request(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint, str(status)).inc()

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def observe(self, stage: str, seconds: float) -> None:
        self.stage.labels(stage).observe(seconds)

    def corrections(self, results: Sequence[Correction], shadow: bool = False) -> None:
        """Flag/correct counts and inspect/align time of one request's squad run; in shadow mode
        the kept rewrites count as `aligners_shadow_would_correct` (nothing was changed)."""
        inspect_s = align_s = 0.0
        kept = self.shadow if shadow else self.corrected
        for r in results:
            self.answers.inc()
            if r.changed and not shadow:
                self.changed.inc()
            for v in r.trace.initial:
                if v.flagged:
                    self.flagged.labels(v.criterion).inc()
            for step in r.trace.steps:
                if step.accepted:
                    kept.labels(step.criterion).inc()
            inspect_s += r.trace.timings.get("inspect_s", 0.0)
            align_s += r.trace.timings.get("align_s", 0.0)
        if results:
            self.observe("inspect", inspect_s)
            self.observe("align", align_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
