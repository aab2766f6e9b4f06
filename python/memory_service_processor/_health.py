"""Health endpoints for probes (Kubernetes or any other supervisor), standard library only.

``GET /healthz`` is **liveness**: 200 unless a handler call has been running for longer than the
liveness timeout (``stats()["busy_seconds"]``, a handler stuck forever) or the run ended with an
error; 503 otherwise. ``GET /readyz`` is **readiness**: 200 only while the stream is being
received (phase ``replay``, ``live`` or ``streaming``), 503 before the first event arrives
(``connecting``, also while reconnecting) and after the run (``stopped``). The body is one short
JSON object, ``{"ok": false, "reason": "handler busy for 612 s > liveness timeout 600 s"}``;
it never names the client id, the endpoint or a credential.

The same answers are served by the metrics server (``_metrics.start_metrics_server``) and,
without prometheus-client, by :func:`start_health_server` (``--health-port``): a
``ThreadingHTTPServer`` on a daemon thread of its own, which waits in ``select`` without the GIL
and reads ``stats()`` (atomics in the native core) without touching the asyncio loop, so it
answers while a handler blocks the loop. docs/semantics.md, section 18.
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Optional, Tuple, Type, TypeVar, Union

__all__ = [
    "HEALTHZ_PATH",
    "READYZ_PATH",
    "READY_PHASES",
    "DEFAULT_LIVENESS_TIMEOUT",
    "HealthCheck",
    "HealthServer",
    "start_health_server",
]

log = logging.getLogger("memory_service_processor.health")

#: Liveness: the path probes ask.
HEALTHZ_PATH = "/healthz"
#: Readiness: the path probes ask.
READYZ_PATH = "/readyz"
#: The phases in which the processor is ready (receiving its stream).
READY_PHASES: Tuple[str, ...] = ("replay", "live", "streaming")
#: How long one handler call may run before liveness fails (``--liveness-timeout``), seconds.
DEFAULT_LIVENESS_TIMEOUT = 600.0

StatsSource = Union[Callable[[], Dict[str, Any]], Any]


def _secs(seconds: float) -> str:
    """Whole seconds, or tenths below 10 s (``612``, ``0.4``)."""
    return f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.1f}"


def stats_reader(source: StatsSource, who: str) -> Callable[[], Dict[str, Any]]:
    """The function that reads ``source``'s stats: its ``stats`` method (a Runtime), or
    ``source`` itself when it is a zero-argument callable; ``TypeError`` naming ``who`` else."""
    stats = getattr(source, "stats", None)
    if callable(stats):
        return stats  # type: ignore[no-any-return]
    if callable(source):
        return source
    raise TypeError(f"{who} needs a Runtime (or an object with stats()) or a callable")


class HealthCheck:
    """The liveness and readiness verdicts of one runtime.

    ``source`` is a :class:`~memory_service_processor.Runtime` (anything with ``stats()``) or
    a zero-argument callable returning the stats dict. A runtime whose last run raised is not
    alive (the run ended with an error); a callable cannot say so.
    """

    def __init__(self, source: StatsSource, liveness_timeout: float = DEFAULT_LIVENESS_TIMEOUT) -> None:
        self._stats = stats_reader(source, "HealthCheck")
        self._source = source
        self.liveness_timeout = float(liveness_timeout)

    def _read(self) -> Optional[Dict[str, Any]]:
        try:
            return self._stats()
        except Exception:  # a probe must not kill anything; it reports the failure instead
            log.exception("reading runtime stats for a health probe failed")
            return None

    def liveness(self) -> Tuple[bool, str]:
        """``(alive, reason)``."""
        failure = getattr(self._source, "_failure", None)
        if failure:
            return False, f"the run ended with an error ({failure})"
        stats = self._read()
        if stats is None:
            return False, "stats unavailable"
        busy = float(stats.get("busy_seconds") or 0.0)
        limit = self.liveness_timeout
        if busy > limit:
            return False, f"handler busy for {_secs(busy)} s > liveness timeout {limit:g} s"
        if busy > 0:
            return True, f"handler busy for {_secs(busy)} s (liveness timeout {limit:g} s)"
        return True, "no handler busy"

    def readiness(self) -> Tuple[bool, str]:
        """``(ready, reason)``."""
        stats = self._read()
        if stats is None:
            return False, "stats unavailable"
        phase = str(stats.get("phase") or "connecting")
        if phase in READY_PHASES:
            return True, f"phase {phase}"
        return False, f"phase {phase}: not receiving the stream"

    def answer(self, path: str) -> Optional[Tuple[int, bytes]]:
        """``(status, JSON body)`` for a request of ``path`` (query ignored), ``None`` when the
        path is not a health path."""
        path = path.split("?", 1)[0]
        if path == HEALTHZ_PATH:
            ok, reason = self.liveness()
        elif path == READYZ_PATH:
            ok, reason = self.readiness()
        else:
            return None
        body = json.dumps({"ok": ok, "reason": reason}, separators=(", ", ": ")).encode() + b"\n"
        return (200 if ok else 503), body


def _handler_class(check: HealthCheck) -> Type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a client that sends nothing does not keep a thread forever
        server_version = "memory-service-processor"
        sys_version = ""

        def _reply(self, head_only: bool) -> None:
            answer = check.answer(self.path)
            if answer is None:
                status, body = 404, b'{"ok": false, "reason": "not found"}\n'
            else:
                status, body = answer
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if not head_only:
                self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - stdlib API
            self._reply(False)

        def do_HEAD(self) -> None:  # noqa: N802 - stdlib API
            self._reply(True)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            log.debug("health probe: " + format, *args)

    return Handler


S = TypeVar("S", bound="BackgroundServer")


class BackgroundServer:
    """An HTTP server running in a daemon thread of its own (the health server here, the
    metrics server in ``_metrics``). ``port`` is the bound port (useful with port 0);
    :meth:`close` stops it."""

    def __init__(self, httpd: socketserver.TCPServer, thread: threading.Thread) -> None:
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

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class HealthServer(BackgroundServer):
    """An HTTP server answering ``/healthz`` and ``/readyz`` from a daemon thread. ``port`` is
    the bound port (useful with port 0); :meth:`close` stops it."""


def start_health_server(
    source: StatsSource,
    port: int,
    addr: str = "0.0.0.0",
    liveness_timeout: float = DEFAULT_LIVENESS_TIMEOUT,
) -> HealthServer:
    """Serves ``/healthz`` and ``/readyz`` for ``source`` on ``http://addr:port`` from a
    thread of its own. Raises ``OSError`` when the port cannot be bound."""
    check = HealthCheck(source, liveness_timeout)

    class _Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET

    httpd = _Server((addr, port), _handler_class(check))
    thread = threading.Thread(target=httpd.serve_forever, name="msp-health", daemon=True)
    thread.start()
    server = HealthServer(httpd, thread)
    log.info("health checks on http://%s:%d%s and %s", addr, server.port, HEALTHZ_PATH, READYZ_PATH)
    return server
