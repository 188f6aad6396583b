"""The real OpenTelemetry SDK, installed once per test process as the global tracer
and meter provider (OpenTelemetry allows one each), with in-memory readers."""

from __future__ import annotations

import dataclasses
import threading

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@dataclasses.dataclass(frozen=True)
class Sdk:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader


_lock = threading.Lock()
_sdk: Sdk | None = None


def installed() -> Sdk:
    """The process's SDK, installed on first use."""
    global _sdk
    with _lock:
        if _sdk is None:
            exporter = InMemorySpanExporter()
            tracer_provider = TracerProvider()
            tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
            trace.set_tracer_provider(tracer_provider)
            reader = InMemoryMetricReader()
            metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
            _sdk = Sdk(exporter, reader)
        return _sdk


def span_texts(spans: list[ReadableSpan]) -> list[str]:
    """Everything a span shows: name, attributes, status, events and their attributes."""
    texts = []
    for span in spans:
        texts.append(span.name)
        texts += [f"{k}={v}" for k, v in (span.attributes or {}).items()]
        texts.append(str(span.status.description or ""))
        for event in span.events:
            texts.append(event.name)
            texts += [f"{k}={v}" for k, v in (event.attributes or {}).items()]
    return texts
