"""`ConnectionOptions`: how to reach a Memory Service, each option declared once."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple, Union

from . import _native
from ._settings import (
    MESSAGE_SIZE_MAX,
    Duration,
    Setting,
    check_duration,
    check_optional_client_id,
    check_positive_int,
    check_readable_file,
    check_secret,
)
from .errors import ConfigurationError

__all__ = ["CONNECTION_SETTINGS", "ConnectionOptions"]


def _check_endpoint(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{name} must be a non-empty string such as localhost:8082")
    return value.strip()


def _option(name: str, kind: str, help: str, **declaration: Any) -> Setting:
    return Setting(name, kind, help, group="connection", **declaration)


#: The settings of :class:`ConnectionOptions`, in its constructor's order. ``client_id`` has no
#: flag of its own: the command line sends the ``Config``'s.
CONNECTION_SETTINGS: Tuple[Setting, ...] = (
    _option(
        "endpoint", "str",
        "the Memory Service gRPC endpoint: `host:port`, `http://host:port`, `https://host:port` (TLS) "
        "or `unix:///path.sock`",
        check=_check_endpoint, flag="--endpoint", env="MEMORY_SERVICE_GRPC_ENDPOINT",
        metavar="URL", required=True,
    ),
    _option(
        "api_key", "secret",
        "API key, sent as `x-api-key` (prefer the environment variable: flags show in `ps`)",
        check=check_secret, flag="--api-key", env="MEMORY_SERVICE_API_KEY", metavar="KEY",
        attribute="_api_key",
    ),
    _option(
        "bearer_token", "secret",
        "bearer token, sent as `authorization: Bearer ...` (prefer the environment variable)",
        check=check_secret, flag="--bearer-token", env="MEMORY_SERVICE_BEARER_TOKEN", metavar="TOKEN",
        attribute="_bearer_token",
    ),
    _option("client_id", "str", "sent as `x-client-id` with every call", check=check_optional_client_id),
    _option(
        "tls_ca_file", "str",
        "PEM file of the CA that signed the server's certificate (`https://` endpoints)",
        check=check_readable_file, flag="--tls-ca-file", env="MEMORY_SERVICE_GRPC_TLS_CA_FILE",
        metavar="PATH", default_doc="system roots",
    ),
    _option(
        "tls_server_name", "str",
        "name expected in the server's certificate",
        flag="--tls-server-name", env="MEMORY_SERVICE_GRPC_TLS_SERVER_NAME",
        metavar="NAME", default_doc="the endpoint's host",
    ),
    _option(
        "keepalive_interval", "duration", "HTTP/2 keepalive ping interval",
        default=20.0, check=check_duration, flag="--keepalive-interval",
        env="MEMORY_SERVICE_GRPC_KEEPALIVE_INTERVAL", metavar="DURATION",
    ),
    _option(
        "keepalive_timeout", "duration",
        "a connection whose ping is not answered within this is treated as dead",
        default=10.0, check=check_duration, flag="--keepalive-timeout",
        env="MEMORY_SERVICE_GRPC_KEEPALIVE_TIMEOUT", metavar="DURATION",
    ),
    _option(
        "connect_timeout", "duration", "budget for establishing a connection",
        default=10.0, check=check_duration, flag="--connect-timeout",
        env="MEMORY_SERVICE_GRPC_CONNECT_TIMEOUT", metavar="DURATION",
    ),
    _option(
        "request_timeout", "duration", "budget for one checkpoint RPC",
        default=30.0, check=check_duration, flag="--request-timeout",
        env="MEMORY_SERVICE_GRPC_REQUEST_TIMEOUT", metavar="DURATION",
    ),
    _option(
        "max_message_size", "int", "largest gRPC message accepted, in bytes",
        default=_native.DEFAULT_MAX_MESSAGE_SIZE, check=check_positive_int, flag="--max-message-size",
        env="MEMORY_SERVICE_GRPC_MAX_MESSAGE_SIZE", metavar="BYTES", maximum=MESSAGE_SIZE_MAX,
        default_doc=f"{_native.DEFAULT_MAX_MESSAGE_SIZE} ({_native.DEFAULT_MAX_MESSAGE_SIZE >> 20} MiB)",
    ),
)

_DEFAULT: Dict[str, Any] = {setting.name: setting.default for setting in CONNECTION_SETTINGS}


class ConnectionOptions:
    """How to reach a Memory Service. Secrets are kept out of ``repr``.

    ``endpoint`` is ``host:port``, ``http://host:port``, ``https://host:port`` (TLS, system
    roots unless ``tls_ca_file`` is given) or ``unix:///absolute/path.sock``. Durations must lie
    between 10 ms and 365 days and ``max_message_size`` at most 2 GiB - 1. Every option is
    checked here; a bad one raises :class:`~memory_service_processor.ConfigurationError` (a
    ``ValueError``) or ``TypeError`` naming it.
    """

    __slots__ = tuple(setting.field_name for setting in CONNECTION_SETTINGS) + ("_connection",)

    endpoint: str
    _api_key: Optional[str]
    _bearer_token: Optional[str]
    client_id: Optional[str]
    tls_ca_file: Optional[str]
    tls_server_name: Optional[str]
    keepalive_interval: float
    keepalive_timeout: float
    connect_timeout: float
    request_timeout: float
    max_message_size: int

    def __init__(
        self,
        endpoint: str,
        *,
        api_key: Optional[str] = _DEFAULT["api_key"],
        bearer_token: Optional[str] = _DEFAULT["bearer_token"],
        client_id: Optional[str] = _DEFAULT["client_id"],
        tls_ca_file: Union[str, "os.PathLike[str]", None] = _DEFAULT["tls_ca_file"],
        tls_server_name: Optional[str] = _DEFAULT["tls_server_name"],
        keepalive_interval: Duration = _DEFAULT["keepalive_interval"],
        keepalive_timeout: Duration = _DEFAULT["keepalive_timeout"],
        connect_timeout: Duration = _DEFAULT["connect_timeout"],
        request_timeout: Duration = _DEFAULT["request_timeout"],
        max_message_size: int = _DEFAULT["max_message_size"],
    ) -> None:
        given = locals()
        for setting in CONNECTION_SETTINGS:
            setattr(self, setting.field_name, setting.normalize(given[setting.name]))
        # Refuse a malformed endpoint (or a secret that cannot be sent as metadata) here, naming
        # it, rather than at the first connection. Connecting stays lazy.
        self._connection = self._connect()

    def _connect(self) -> "_native.NativeConnection":
        """A new (lazily connected) channel with these options."""
        return _native.NativeConnection(self)

    def __repr__(self) -> str:
        auth = []
        if self._api_key:
            auth.append("api_key=<redacted>")
        if self._bearer_token:
            auth.append("bearer_token=<redacted>")
        extra = (", " + ", ".join(auth)) if auth else ""
        return f"ConnectionOptions(endpoint={self.endpoint!r}, client_id={self.client_id!r}{extra})"
