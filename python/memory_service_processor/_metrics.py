"""Prometheus metrics for a running processor (optional extra ``[prometheus]``).

``pip install "memory-service-processor[prometheus]"`` installs ``prometheus-client``. Then::

    from memory_service_processor._metrics import start_metrics_server

    server = start_metrics_server(runtime, port=9464)     # GET http://host:9464/metrics
    ...
    server.close()

:class:`StatsCollector` is a custom collector: every scrape reads ``runtime.stats()`` once, so
the numbers are as fresh as the scrape and nothing is updated on the hot path. The metrics
derive from the stats schema (``_stats.FIELDS``), all labelled with ``client_id``: each
counter key ``k`` is ``memory_service_processor_<k>_total`` (``events_received``,
``events_handled``, ``stream_signals``, ``checkpoints_written``, ``checkpoints_failed``,
``checkpoints_skipped``, ``reconnects``, ``batches``), each gauge is
``memory_service_processor_<name>`` (``buffer_depth``, ``last_checkpoint_age_seconds``,
``handle_seconds_mean``, ``handle_seconds_max``), and ``memory_service_processor_phase`` is 1
for the current ``phase`` (label ``phase``) and 0 for the others.

The same server answers the health probes ``/healthz`` and ``/readyz`` (``_health.py``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Union
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from . import _stats
from ._health import DEFAULT_LIVENESS_TIMEOUT, BackgroundServer, HealthCheck, stats_reader

__all__ = ["StatsCollector", "MetricsServer", "start_metrics_server", "prometheus_available", "PHASES"]

log = logging.getLogger("memory_service_processor.metrics")

PREFIX = "memory_service_processor"

#: The values of ``stats()["phase"]``.
PHASES: Tuple[str, ...] = _stats.PHASES


def _doc(text: str) -> str:
    """A metric's help text from a schema doc: capitalized, with a full stop."""
    return text[:1].upper() + text[1:] + "."


_COUNTERS = tuple((f.name, _doc(f.doc)) for f in _stats.FIELDS if isinstance(f.kind, _stats.Counter))

_GAUGES = tuple(
    (f.name, f.kind.metric or f.name, _doc(f.doc)) for f in _stats.FIELDS if isinstance(f.kind, _stats.Gauge)
)

_PHASE_HELP = "1 for the phase the stream is in (" + ", ".join(PHASES) + ")."


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
        self._stats = stats_reader(source, "StatsCollector")
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
        fam = GaugeMetricFamily(f"{p}_phase", _PHASE_HELP, labels=["client_id", "phase"])
        for name in PHASES if phase in PHASES else PHASES + (phase,):
            fam.add_metric([client_id, name], 1.0 if name == phase else 0.0)
        yield fam


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("metrics scrape: " + format, *args)


def _with_health(app: Callable[..., Any], check: HealthCheck) -> Callable[..., Any]:
    """``app`` with ``/healthz`` and ``/readyz`` answered by ``check``."""

    def serve(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
        answer = check.answer(str(environ.get("PATH_INFO") or ""))
        if answer is None:
            return app(environ, start_response)
        status, body = answer
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
        start_response("200 OK" if status == 200 else "503 Service Unavailable", headers)
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]

    return serve


class MetricsServer(BackgroundServer):
    """An HTTP server answering ``GET /metrics`` (and the health probes) from a daemon thread.
    ``port`` is the bound port (useful with port 0); :meth:`close` stops it."""


def start_metrics_server(
    source: StatsSource,
    port: int,
    addr: str = "0.0.0.0",
    registry: Optional[Any] = None,
    liveness_timeout: float = DEFAULT_LIVENESS_TIMEOUT,
) -> MetricsServer:
    """Serves ``source``'s stats on ``http://addr:port/metrics`` (Prometheus text format),
    and ``/healthz`` / ``/readyz`` (``liveness_timeout`` in seconds: see ``_health.py``).

    ``registry`` defaults to a fresh ``CollectorRegistry`` holding only the processor's
    metrics; pass ``prometheus_client.REGISTRY`` to add them to the process-wide one.
    Raises ``ImportError`` (with the install hint) when prometheus-client is missing and
    ``OSError`` when the port cannot be bound.
    """
    prom = _require()
    if registry is None:
        registry = prom.CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(source))
    app = _with_health(prom.make_wsgi_app(registry), HealthCheck(source, liveness_timeout))

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
