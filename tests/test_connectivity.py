"""Transports and connection health: TLS, Unix sockets, keepalive on a silently dead
connection, and the gRPC message size limit."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import threading
from pathlib import Path
from typing import List

import pytest

from memory_service_processor import (
    Config,
    EventEnvelope,
    EventProcessor,
    Runtime,
    ServerStatusError,
)
from memory_service_processor.testing import LocalMemoryService, ProcessorRun, run_until_handled


class Recorder(EventProcessor):
    CONTENT_TYPE = "application/vnd.test.recorder+json;v=1"

    def __init__(self) -> None:
        self.cursors: List[str] = []

    def handle(self, event: EventEnvelope) -> None:
        assert event.cursor is not None
        self.cursors.append(event.cursor)
        self.last_event_cursor = event.cursor


def run_until_handled_over(server: LocalMemoryService, timeout: float = 30.0, **kw: object) -> Recorder:
    """Runs a Recorder against ``server`` (at ``server.endpoint``: TLS, a Unix socket, ...) until it
    has handled everything published, through the testing kit; ``kw`` goes to the Runtime."""
    proc = Recorder()
    config = Config(client_id="conn-test", after_cursor="start", reconnect_min=0.1, reconnect_max=0.5)
    asyncio.run(run_until_handled(proc, server, config, timeout=timeout, **kw))
    return proc


def _ca_and_leaf(tmp: Path) -> "tuple[Path, Path, Path]":
    """A throwaway CA and a leaf certificate for localhost / 127.0.0.1 signed by it:
    (ca.pem, leaf.pem, leaf.key)."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "msp test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, leaf_path, key_path = tmp / "ca.pem", tmp / "leaf.pem", tmp / "leaf.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    leaf_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, leaf_path, key_path


@pytest.mark.timeout(60)
def test_tls_with_a_given_ca_file(tmp_path: Path) -> None:
    ca, cert, key = _ca_and_leaf(tmp_path)
    with LocalMemoryService(tls_cert_file=cert, tls_key_file=key) as server:
        assert server.endpoint.startswith("https://127.0.0.1:")
        cursors = server.publish_many([("entry", "appended", {"n": i}) for i in range(20)])
        proc = run_until_handled_over(server, tls_ca_file=str(ca))
        assert proc.cursors == cursors
        stored = server.checkpoint("conn-test")
        assert stored is not None and stored.value["lastEventCursor"] == cursors[-1]


@pytest.mark.timeout(60)
def test_an_untrusted_server_certificate_fails_fast_and_clearly(tmp_path: Path) -> None:
    _, cert, key = _ca_and_leaf(tmp_path)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other_ca, _, _ = _ca_and_leaf(other_dir)
    with LocalMemoryService(tls_cert_file=cert, tls_key_file=key) as server:
        server.publish("entry", "appended", {"n": 1})
        proc = Recorder()
        rt = Runtime(proc, Config(client_id="tls-bad", after_cursor="start"),
                     endpoint=server.endpoint, tls_ca_file=str(other_ca))
        with pytest.raises(ServerStatusError) as info:
            asyncio.run(asyncio.wait_for(rt.run(), 20))
        assert "certificate" in str(info.value)
        assert "tls_ca_file" in str(info.value)
        assert proc.cursors == []
        assert server.checkpoint("tls-bad") is None


@pytest.mark.timeout(60)
def test_unix_domain_socket(tmp_path: Path) -> None:
    sock = tmp_path / "ms.sock"
    with LocalMemoryService(unix_path=sock) as server:
        assert server.endpoint == f"unix://{sock}"
        cursors = server.publish_many([("entry", "appended", {"n": i}) for i in range(10)])
        proc = run_until_handled_over(server)
        assert proc.cursors == cursors


class BlackholeProxy:
    """A loopback TCP proxy whose existing connections can be made to go silent: bytes are
    swallowed, sockets stay open (no FIN, no RST). New connections forward normally."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.generation = 0
        self.lock = threading.Lock()
        self.sockets: List[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self.lock:
                gen = self.generation
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b, gen), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, gen: int) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            if self.generation != gen:
                continue  # blackholed: swallow silently, keep the socket open
            try:
                dst.sendall(data)
            except OSError:
                return

    def blackhole(self) -> None:
        with self.lock:
            self.generation += 1

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        with self.lock:
            for s in self.sockets:
                try:
                    s.close()
                except OSError:
                    pass


@pytest.mark.timeout(90)
def test_keepalive_notices_a_silently_dead_connection_and_reconnects() -> None:
    with LocalMemoryService() as server:
        proxy = BlackholeProxy(server.port)
        try:
            first = server.publish_many([("entry", "appended", {"n": i}) for i in range(5)])
            proc = Recorder()
            config = Config(client_id="keepalive", after_cursor="start", reconnect_min=0.1, reconnect_max=0.5)

            async def main() -> "tuple[List[str], ProcessorRun]":
                async with ProcessorRun(proc, server, config, endpoint=f"127.0.0.1:{proxy.port}",
                                        keepalive_interval=0.5, keepalive_timeout=1.0) as run:
                    await run.until_handled()  # the first 5
                    proxy.blackhole()  # the connection dies silently
                    later = server.publish_many([("entry", "appended", {"n": i}) for i in range(5, 10)])
                    await run.until_handled(timeout=30)
                return later, run

            later, run = asyncio.run(main())
            assert proc.cursors == first + later
            assert run.result is not None and run.result.stats["reconnects"] >= 1
        finally:
            proxy.close()


@pytest.mark.timeout(60)
def test_an_event_larger_than_the_message_limit_fails_clearly_and_the_limit_is_configurable() -> None:
    big = {"blob": "x" * (5 * 1024 * 1024)}
    with LocalMemoryService() as server:
        cursor = server.publish("entry", "appended", big)
        proc = Recorder()
        rt = Runtime(proc, Config(client_id="big", after_cursor="start"), endpoint=server.endpoint)
        with pytest.raises(ServerStatusError) as info:
            asyncio.run(asyncio.wait_for(rt.run(), 20))
        assert "OUT_OF_RANGE" in str(info.value) or "too large" in str(info.value)
        assert "max_message_size" in str(info.value) or "limit" in str(info.value)
        assert proc.cursors == []
        # with a larger limit the same event goes through
        proc2 = run_until_handled_over(server, max_message_size=16 * 1024 * 1024)
        assert proc2.cursors == [cursor]
