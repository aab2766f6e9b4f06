"""Logging and the Prometheus endpoint, as the commands set them up from their options."""

from __future__ import annotations

from typing import Any, Mapping

from .._logging import configure_logging
from .._metrics import prometheus_available, start_metrics_server
from .errors import UsageError

__all__ = ["setup_logging", "start_metrics"]


def setup_logging(values: Mapping[str, Any], default_level: str = "info") -> None:
    """Logging as ``--log-level`` / ``--log-format`` say (``default_level`` if not given)."""
    configure_logging(values.get("log_level") or default_level, values.get("log_format") or "text")


def start_metrics(values: Mapping[str, Any], source: Any) -> Any:
    """The metrics server of ``--metrics-port`` (serving ``source.stats()``), or ``None``."""
    port = values.get("metrics_port")
    if port is None:
        return None
    if not prometheus_available():
        raise UsageError("--metrics-port needs prometheus-client: pip install 'memory-service-processor[prometheus]'")
    try:
        return start_metrics_server(source, port, values.get("metrics_addr") or "0.0.0.0")
    except OSError as e:
        raise UsageError(f"--metrics-port {port}: cannot listen: {e.strerror or e}") from None
