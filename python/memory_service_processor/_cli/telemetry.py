"""Logging, the Prometheus endpoint and the health endpoint, as the commands set them up from
their options."""

from __future__ import annotations

from typing import Any, List, Mapping, Optional

from .._health import DEFAULT_LIVENESS_TIMEOUT, start_health_server
from .._logging import configure_logging
from .._metrics import prometheus_available, start_metrics_server
from .errors import UsageError

__all__ = ["setup_logging", "start_metrics", "start_health", "Telemetry", "start_telemetry"]


def setup_logging(values: Mapping[str, Any], default_level: str = "info") -> None:
    """Logging as ``--log-level`` / ``--log-format`` say (``default_level`` if not given)."""
    configure_logging(values.get("log_level") or default_level, values.get("log_format") or "text")


def _liveness_timeout(values: Mapping[str, Any]) -> float:
    timeout = values.get("liveness_timeout")
    return DEFAULT_LIVENESS_TIMEOUT if timeout is None else float(timeout)


def start_metrics(values: Mapping[str, Any], source: Any) -> Any:
    """The metrics server of ``--metrics-port`` (serving ``source.stats()`` and the health
    probes), or ``None``."""
    port = values.get("metrics_port")
    if port is None:
        return None
    if not prometheus_available():
        raise UsageError("--metrics-port needs prometheus-client: pip install 'memory-service-processor[prometheus]'")
    try:
        return start_metrics_server(
            source, port, values.get("metrics_addr") or "0.0.0.0", liveness_timeout=_liveness_timeout(values)
        )
    except OSError as e:
        raise UsageError(f"--metrics-port {port}: cannot listen: {e.strerror or e}") from None


def start_health(values: Mapping[str, Any], source: Any) -> Any:
    """The health server of ``--health-port`` (``/healthz``, ``/readyz`` for ``source``; no
    prometheus-client needed), or ``None``."""
    port = values.get("health_port")
    if port is None:
        return None
    try:
        return start_health_server(
            source, port, values.get("metrics_addr") or "0.0.0.0", liveness_timeout=_liveness_timeout(values)
        )
    except OSError as e:
        raise UsageError(f"--health-port {port}: cannot listen: {e.strerror or e}") from None


class Telemetry:
    """The servers a command started (metrics, health); :meth:`close` stops them all."""

    def __init__(self, servers: List[Any]) -> None:
        self.servers = servers

    def close(self) -> None:
        """Stops every server (idempotent)."""
        for server in self.servers:
            server.close()


def start_telemetry(values: Mapping[str, Any], source: Any) -> Telemetry:
    """The metrics server and the health server as the options ask (either, both or none)."""
    servers: List[Optional[Any]] = [start_metrics(values, source)]
    try:
        servers.append(start_health(values, source))
    except BaseException:
        if servers[0] is not None:
            servers[0].close()
        raise
    return Telemetry([s for s in servers if s is not None])
