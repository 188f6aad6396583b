"""Spans and metrics of every operation (imgstore.telemetry), read with the real
OpenTelemetry SDK's in-memory span exporter and metric reader.

The SDK is installed once per process as the global provider (tests/otel_sdk.py);
each test reads only what its own backend did, by the ``imgstore.backend``
attribute (a fresh name per test).
"""

from __future__ import annotations

import http.server
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from imgstore import ChecksumMismatch, NotFound, Stores
from tests import otel_sdk


@pytest.fixture(scope="module")
def sdk() -> tuple[InMemorySpanExporter, InMemoryMetricReader]:
    installed = otel_sdk.installed()
    return installed.spans, installed.metrics


def make_stores(tmp_path: Path, extra: str = "") -> tuple[Stores, str]:
    """Stores with one filesystem backend of a fresh name (so metrics are this test's)."""
    name = f"fs{uuid.uuid4().hex[:8]}"
    conf = tmp_path / "imgstore.conf"
    conf.write_text(
        f"[DEFAULT]\nenabled_backends = {name}:file\n[glance_store]\n"
        f"default_backend = {name}\n[{name}]\nfilesystem_store_datadir = {tmp_path / 'images'}\n"
        + extra
    )
    return Stores.from_config_files(str(conf)), name


def points(reader: InMemoryMetricReader, metric: str, backend: str) -> list[Any]:
    """The data points of ``metric`` whose ``imgstore.backend`` is ``backend``."""
    data = reader.get_metrics_data()
    found = []
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == metric:
                    found += [
                        p
                        for p in m.data.data_points
                        if p.attributes.get("imgstore.backend") == backend
                    ]
    return found


def by_outcome(reader: InMemoryMetricReader, backend: str) -> dict[tuple[str, str], int]:
    """(operation, outcome) -> how many, from the duration histogram."""
    return {
        (p.attributes["imgstore.operation"], p.attributes["imgstore.outcome"]): p.count
        for p in points(reader, "imgstore.operation.duration", backend)
    }


def spans_of(exporter: InMemorySpanExporter, backend: str) -> list[ReadableSpan]:
    return [
        s
        for s in exporter.get_finished_spans()
        if (s.attributes or {}).get("imgstore.backend") == backend
    ]


def test_each_operation_is_a_span_and_a_measurement(
    tmp_path: Path, sdk: tuple[InMemorySpanExporter, InMemoryMetricReader]
) -> None:
    exporter, reader = sdk
    stores, backend = make_stores(tmp_path)
    data = b"x" * (3 * 1024 * 1024 + 5)
    result = stores.add("img-1", data)
    with stores.get(result.location) as image:
        assert image.read_all() == data
    with stores.get(result.location, offset=10, length=100) as image:
        assert len(image.read_all()) == 100
    assert stores.size(result.location) == len(data)
    stores.delete(result.location)
    with pytest.raises(NotFound):
        stores.size(result.location)

    assert by_outcome(reader, backend) == {
        ("add", "ok"): 1,
        ("get", "ok"): 2,
        ("size", "ok"): 1,
        ("delete", "ok"): 1,
        ("size", "NotFound"): 1,
    }
    moved = {
        p.attributes["imgstore.operation"]: p.value
        for p in points(reader, "imgstore.transferred", backend)
    }
    assert moved == {"add": len(data), "get": len(data) + 100}
    errors = points(reader, "imgstore.errors", backend)
    assert [(p.attributes["imgstore.outcome"], p.value) for p in errors] == [("NotFound", 1)]
    in_flight = points(reader, "imgstore.operations.in_flight", backend)
    assert in_flight and all(p.value == 0 for p in in_flight)

    spans = spans_of(exporter, backend)
    assert [s.name for s in spans] == [
        "imgstore.add", "imgstore.get", "imgstore.get", "imgstore.size", "imgstore.delete",
        "imgstore.size",
    ]  # fmt: skip
    add = spans[0].attributes or {}
    assert add["imgstore.driver"] == "file" and add["imgstore.bytes"] == len(data)
    assert add["imgstore.outcome"] == "ok" and add["imgstore.retries"] == 0
    failed = spans[-1]
    assert failed.status.status_code is StatusCode.ERROR
    assert (failed.status.description or "").startswith("no image at file:")
    assert (failed.attributes or {})["error.type"] == "NotFound"
    stores.close()


def test_a_failed_read_is_recorded_by_its_kind(
    tmp_path: Path, sdk: tuple[InMemorySpanExporter, InMemoryMetricReader]
) -> None:
    exporter, reader = sdk
    stores, backend = make_stores(tmp_path)
    result = stores.add("img-2", b"abc" * 1000)
    with pytest.raises(ChecksumMismatch):
        stores.verify(result.location, "sha512", multihash="0" * 128)
    outcomes = by_outcome(reader, backend)
    assert outcomes[("verify", "ChecksumMismatch")] == 1
    assert outcomes[("get", "ChecksumMismatch")] == 1
    spans = {s.name: s for s in spans_of(exporter, backend)}
    verify, get = spans["imgstore.verify"], spans["imgstore.get"]
    assert get.parent is not None and get.parent.span_id == verify.context.span_id
    stores.close()


def test_copy_holds_its_get_and_add_as_children(
    tmp_path: Path, sdk: tuple[InMemorySpanExporter, InMemoryMetricReader]
) -> None:
    exporter, reader = sdk
    name = f"c{uuid.uuid4().hex[:8]}"
    conf = tmp_path / "two.conf"
    conf.write_text(
        f"[DEFAULT]\nenabled_backends = {name}a:file, {name}b:file\n[glance_store]\n"
        f"default_backend = {name}a\n[{name}a]\nfilesystem_store_datadir = {tmp_path / 'a'}\n"
        f"[{name}b]\nfilesystem_store_datadir = {tmp_path / 'b'}\n"
    )
    with Stores.from_config_files(str(conf)) as stores:
        source = stores.add("img-3", b"y" * 70000)
        copied = stores.copy(source.location, f"{name}b")
    assert copied.size == 70000
    spans = spans_of(exporter, f"{name}b")
    copy = next(s for s in spans if s.name == "imgstore.copy")
    assert (copy.attributes or {})["imgstore.bytes"] == 70000
    children = [
        s.name
        for s in exporter.get_finished_spans()
        if s.parent is not None and s.parent.span_id == copy.context.span_id
    ]
    # the source read once (for the copy, or for its hashes after a copy inside the
    # storage), the copy read once to verify it
    assert children.count("imgstore.get") == 2, children
    assert by_outcome(reader, f"{name}b")[("copy", "ok")] == 1


class _FlakyHandler(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first ``fail`` requests, then serves ``body``."""

    body = b""
    fail = 0
    seen = 0

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        cls = type(self)
        cls.seen += 1
        if cls.seen <= cls.fail:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(cls.body)))
        self.end_headers()
        if body:
            self.wfile.write(cls.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def flaky_server() -> Iterator[tuple[str, type[_FlakyHandler]]]:
    handler = type("Handler", (_FlakyHandler,), {"body": b"z" * 5000, "fail": 2, "seen": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/image", handler
    finally:
        server.shutdown()
        server.server_close()


def test_retries_are_counted_for_their_operation(
    tmp_path: Path,
    sdk: tuple[InMemorySpanExporter, InMemoryMetricReader],
    flaky_server: tuple[str, type[_FlakyHandler]],
) -> None:
    """A local HTTP server answers 503 twice: the http driver's shared retry tries again,
    and the retries are counted for the ``size`` operation that made them."""
    exporter, reader = sdk
    url, handler = flaky_server
    name = f"web{uuid.uuid4().hex[:8]}"
    conf = tmp_path / "web.conf"
    conf.write_text(
        f"[DEFAULT]\nenabled_backends = {name}:http\n[glance_store]\ndefault_backend = {name}\n"
        f"[{name}]\nhttp_allowed_networks = 127.0.0.1/32\nhttp_retries = 3\n"
        "http_retry_backoff = 0.01\n"
    )
    with Stores.from_config_files(str(conf)) as stores:
        assert stores.size(url) == 5000
    assert handler.seen == 3
    retried = points(reader, "imgstore.retries", name)
    assert [(p.attributes["imgstore.operation"], p.value) for p in retried] == [("size", 2)]
    (span,) = [s for s in spans_of(exporter, name) if s.name == "imgstore.size"]
    assert (span.attributes or {})["imgstore.retries"] == 2
