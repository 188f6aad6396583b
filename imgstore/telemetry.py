"""Traces and metrics of every operation, instrumented once, here, for every driver.

Uses the OpenTelemetry API only: until the application installs an SDK
(``opentelemetry.sdk``), every call below is a no-op of the API's own. Once it
does, each operation of :class:`imgstore.Stores` becomes a span and feeds
these instruments (attributes: ``imgstore.backend``, ``imgstore.driver``,
``imgstore.operation``, and on the duration and errors ``imgstore.outcome``):

``imgstore.operation.duration`` (histogram, s)
    one record per operation: ``add``, ``get``, ``size``, ``delete``, ``discard``,
    ``copy``, ``verify``...; ``imgstore.outcome`` is ``ok`` or the error's kind
    (the :mod:`imgstore.exceptions` class, e.g. ``BackendUnavailable``).
``imgstore.transferred`` (counter, By)
    image bytes the operation moved (added, read, copied), failed ones included.
``imgstore.errors`` (counter)
    failed operations, by kind.
``imgstore.retries`` (counter)
    requests tried again inside an operation: by :func:`imgstore.backoff.retry`, and
    by the client libraries that retry by themselves (botocore, swiftclient).
``imgstore.operations.in_flight`` (up-down counter)
    operations started and not yet ended.

Spans carry the same attributes plus ``imgstore.bytes`` and ``imgstore.retries``.
Error messages are recorded only for imgstore's own exceptions, whose text the
core has scrubbed of secrets; any other error is recorded by its type alone.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Iterator

from opentelemetry import metrics, trace
from opentelemetry.trace import Status, StatusCode

from imgstore.exceptions import ImgstoreError

LOG = logging.getLogger(__name__)

SCOPE = "imgstore"

_tracer = trace.get_tracer(SCOPE)
_meter = metrics.get_meter(SCOPE)
_duration = _meter.create_histogram(
    "imgstore.operation.duration", unit="s", description="Duration of imgstore operations"
)
_transferred = _meter.create_counter(
    "imgstore.transferred", unit="By", description="Image bytes moved by imgstore operations"
)
_errors = _meter.create_counter("imgstore.errors", description="Failed imgstore operations")
_retries = _meter.create_counter(
    "imgstore.retries", description="Backend requests tried again within an imgstore operation"
)
_in_flight = _meter.create_up_down_counter(
    "imgstore.operations.in_flight", description="imgstore operations running now"
)

_current: contextvars.ContextVar[Operation | None] = contextvars.ContextVar(
    "imgstore_operation", default=None
)


def outcome_of(error: BaseException | None) -> str:
    """``ok``, or the kind of ``error``: its :mod:`imgstore.exceptions` class name
    (``error`` for anything else, ``cancelled`` for KeyboardInterrupt and the like)."""
    if error is None:
        return "ok"
    if isinstance(error, ImgstoreError):
        return type(error).__name__
    return "error" if isinstance(error, Exception) else "cancelled"


class Operation:
    """One operation being measured: made by :func:`start`, ended once by :meth:`end`."""

    def __init__(self, name: str, backend: str, driver: str) -> None:
        self.name = name
        self.attributes: dict[str, str] = {
            "imgstore.backend": backend,
            "imgstore.driver": driver,
            "imgstore.operation": name,
        }
        self.bytes = 0
        self.retries = 0
        self._started = time.monotonic()
        self._ended = False
        self._span = _tracer.start_span(f"imgstore.{name}", attributes=self.attributes)
        self._token: contextvars.Token[Operation | None] | None = None
        _in_flight.add(1, self.attributes)

    def count(self, n: int) -> None:
        """``n`` more image bytes moved."""
        self.bytes += n

    def retried(self, count: int = 1) -> None:
        """``count`` requests of this operation are tried again."""
        self.retries += count
        _retries.add(count, self.attributes)

    def end(self, error: BaseException | None = None) -> None:
        """Record the operation's outcome, duration and bytes; later calls do nothing."""
        if self._ended:
            return
        self._ended = True
        outcome = outcome_of(error)
        attrs = {**self.attributes, "imgstore.outcome": outcome}
        # bytes and errors first: a scrape in between never sees an operation counted
        # whose bytes are not
        if self.bytes:
            _transferred.add(self.bytes, self.attributes)
        if error is not None:
            _errors.add(1, attrs)
        _duration.record(time.monotonic() - self._started, attrs)
        _in_flight.add(-1, self.attributes)
        span = self._span
        span.set_attribute("imgstore.bytes", self.bytes)
        span.set_attribute("imgstore.retries", self.retries)
        span.set_attribute("imgstore.outcome", outcome)
        if error is not None:
            described = str(error) if isinstance(error, ImgstoreError) else type(error).__name__
            span.set_attribute("error.type", type(error).__name__)
            span.set_status(Status(StatusCode.ERROR, described))
        span.end()

    @contextlib.contextmanager
    def current(self) -> Iterator[Operation]:
        """Make this the operation :func:`retried` counts for, and its span the parent of
        spans started meanwhile (nested operations, a library's own spans)."""
        token = _current.set(self)
        try:
            # no exception recorded here: a driver's raw error may carry a secret; end()
            # records the scrubbed imgstore error the caller gets
            with trace.use_span(
                self._span,
                end_on_exit=False,
                record_exception=False,
                set_status_on_exception=False,
            ):
                yield self
        finally:
            _current.reset(token)


def start(name: str, backend: str, driver: str) -> Operation:
    """Start measuring operation ``name`` on ``backend`` (driver ``driver``)."""
    return Operation(name, backend, driver)


@contextlib.contextmanager
def measure(name: str, backend: str, driver: str) -> Iterator[Operation]:
    """Measure the block as operation ``name``: ended with the exception that leaves it."""
    op = start(name, backend, driver)
    try:
        with op.current():
            yield op
    except BaseException as exc:
        op.end(exc)
        raise
    op.end()


def retried(count: int = 1) -> None:
    """Count ``count`` retries for the operation running in this context, if any."""
    op = _current.get()
    if op is not None and count > 0:
        op.retried(count)
