"""``--metrics-port``: imgstore's metrics (:mod:`imgstore.telemetry`) served as
Prometheus text over HTTP while a command runs.

Needs the ``metrics`` extra (the OpenTelemetry SDK and its Prometheus exporter):
``pip install 'imgstore[metrics]'``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from imgstore.exceptions import BadConfiguration

LOG = logging.getLogger(__name__)


def serve(port: int, host: str = "127.0.0.1") -> Callable[[], None]:
    """Install an OpenTelemetry SDK meter provider whose reader is the Prometheus
    exporter, serve ``http://host:port/metrics``, and return the function that stops
    serving. :class:`BadConfiguration` when the extra is missing or the port is taken."""
    try:
        from opentelemetry import metrics
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from prometheus_client import start_http_server
    except ImportError as exc:
        raise BadConfiguration(
            f"--metrics-port needs the metrics extra ({exc.name} is missing): "
            "pip install 'imgstore[metrics]'"
        ) from None
    try:
        server, thread = start_http_server(port, addr=host)
    except OSError as exc:
        raise BadConfiguration(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
        ) from None
    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
    LOG.info("serving metrics at http://%s:%d/metrics", host, port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
