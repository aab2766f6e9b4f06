"""Prometheus metrics for a running processor (optional extra ``[prometheus]``).

``pip install "memory-service-processor[prometheus]"`` installs ``prometheus-client``. Then::

    from memory_service_processor._metrics import start_metrics_server

    server = start_metrics_server(runtime, port=9464)     # GET http://host:9464/metrics
    ...
    server.close()

:class:`StatsCollector` is a custom collector: every scrape reads ``runtime.stats()`` once, so
the numbers are as fresh as the scrape and nothing is updated on the hot path. Metric names
(all labelled with ``client_id``):

========================================================  =======  ==============================
name                                                      type     from ``stats()``
========================================================  =======  ==============================
``memory_service_processor_events_received_total``        counter  ``events_received``
``memory_service_processor_events_handled_total``         counter  ``events_handled``
``memory_service_processor_events_skipped_total``         counter  ``events_skipped``
``memory_service_processor_checkpoints_written_total``    counter  ``checkpoints_written``
``memory_service_processor_checkpoints_failed_total``     counter  ``checkpoints_failed``
``memory_service_processor_checkpoints_skipped_total``    counter  ``checkpoints_skipped``
``memory_service_processor_reconnects_total``             counter  ``reconnects``
``memory_service_processor_batches_total``                counter  ``batches``
``memory_service_processor_buffer_depth``                 gauge    ``buffer_depth``
``memory_service_processor_last_checkpoint_age_seconds``  gauge    ``last_checkpoint_age``
``memory_service_processor_handle_seconds_mean``          gauge    ``handle_seconds_mean``
``memory_service_processor_handle_seconds_max``           gauge    ``handle_seconds_max``
``memory_service_processor_phase``                        gauge    1 for the current ``phase``
========================================================  =======  ==============================
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Union
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

__all__ = ["StatsCollector", "MetricsServer", "start_metrics_server", "prometheus_available", "PHASES"]

log = logging.getLogger("memory_service_processor.metrics")

PREFIX = "memory_service_processor"

#: The values of ``stats()["phase"]``.
PHASES: Tuple[str, ...] = ("connecting", "replay", "live", "stopped")

_COUNTERS = (
    ("events_received", "Stream messages received (business events and stream signals)."),
    ("events_handled", "Business events handed to the processor and handled."),
    ("events_skipped", "Stream signals (kind=stream) that were not handed to handle()."),
    ("checkpoints_written", "Checkpoint writes confirmed by the store."),
    ("checkpoints_failed", "Checkpoint writes that failed (and were retried)."),
    ("checkpoints_skipped", "Checkpoint writes skipped because the snapshot was unchanged."),
    ("reconnects", "Resubscriptions after the first subscription."),
    ("batches", "Batches of events handed to the processor."),
)

_GAUGES = (
    ("buffer_depth", "buffer_depth", "Events waiting in the buffer between network and processor."),
    ("last_checkpoint_age", "last_checkpoint_age_seconds", "Seconds since the last confirmed checkpoint write."),
    ("handle_seconds_mean", "handle_seconds_mean", "Mean time spent handling one event (seconds)."),
    ("handle_seconds_max", "handle_seconds_max", "Longest time spent handling one event (seconds)."),
)


def prometheus_available() -> bool:
    """True if ``prometheus_client`` can be imported."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def _require() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ImportError(
            "metrics need prometheus-client: pip install 'memory-service-processor[prometheus]'"
        ) from None
    return prometheus_client


StatsSource = Union[Callable[[], Dict[str, Any]], Any]


class StatsCollector:
    """A Prometheus collector reading ``stats()`` of one or more runtimes on every scrape.

    ``source`` is a :class:`~memory_service_processor.Runtime` (anything with a ``stats()``
    method) or a zero-argument callable returning the same dict. Register it with
    ``registry.register(StatsCollector(runtime))``.
    """

    def __init__(self, source: StatsSource, prefix: str = PREFIX) -> None:
        _require()
        stats = getattr(source, "stats", None)
        if callable(stats):
            self._stats: Callable[[], Dict[str, Any]] = stats
        elif callable(source):
            self._stats = source
        else:
            raise TypeError("StatsCollector needs a Runtime (or an object with stats()) or a callable")
        self.prefix = prefix

    def describe(self) -> Iterator[Any]:
        """No up-front description: the metrics are produced by :meth:`collect` only."""
        return iter(())

    def collect(self) -> Iterator[Any]:
        """Reads ``stats()`` once and yields the metric families."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        try:
            stats = self._stats()
        except Exception:  # a scrape must not kill anything; report nothing instead
            log.exception("reading runtime stats for a metrics scrape failed")
            return
        client_id = str(stats.get("client_id") or "")
        labels = ["client_id"]
        p = self.prefix
        fam: Any
        for key, doc in _COUNTERS:
            fam = CounterMetricFamily(f"{p}_{key}", doc, labels=labels)
            fam.add_metric([client_id], float(stats.get(key) or 0))
            yield fam
        for key, name, doc in _GAUGES:
            value = stats.get(key)
            if value is None:
                continue
            fam = GaugeMetricFamily(f"{p}_{name}", doc, labels=labels)
            fam.add_metric([client_id], float(value))
            yield fam
        phase = str(stats.get("phase") or "connecting")
        fam = GaugeMetricFamily(
            f"{p}_phase", "1 for the phase the stream is in (connecting, replay, live, stopped).", labels=["client_id", "phase"]
        )
        for name in PHASES if phase in PHASES else PHASES + (phase,):
            fam.add_metric([client_id, name], 1.0 if name == phase else 0.0)
        yield fam


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("metrics scrape: " + format, *args)


class MetricsServer:
    """An HTTP server answering ``GET /metrics`` from a daemon thread. ``port`` is the bound
    port (useful with port 0); :meth:`close` stops it."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return int(self._httpd.server_address[1])

    @property
    def address(self) -> str:
        """The address the server listens on."""
        return str(self._httpd.server_address[0])

    def close(self) -> None:
        """Stops serving and closes the socket (idempotent)."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def start_metrics_server(
    source: StatsSource,
    port: int,
    addr: str = "0.0.0.0",
    registry: Optional[Any] = None,
) -> MetricsServer:
    """Serves ``source``'s stats on ``http://addr:port/metrics`` (Prometheus text format).

    ``registry`` defaults to a fresh ``CollectorRegistry`` holding only the processor's
    metrics; pass ``prometheus_client.REGISTRY`` to add them to the process-wide one.
    Raises ``ImportError`` (with the install hint) when prometheus-client is missing and
    ``OSError`` when the port cannot be bound.
    """
    prom = _require()
    if registry is None:
        registry = prom.CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(source))
    app = prom.make_wsgi_app(registry)

    class _Server(WSGIServer):
        daemon_threads = True

    import socket

    if ":" in addr:
        _Server.address_family = socket.AF_INET6
    httpd = make_server(addr, port, app, server_class=_Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, name="msp-metrics", daemon=True)
    thread.start()
    server = MetricsServer(httpd, thread)
    log.info("metrics on http://%s:%d/metrics", addr, server.port)
    return server
