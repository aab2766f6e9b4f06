"""Configuration is checked at construction and every error names the field: Config,
parse_duration, ConnectionOptions / endpoints, Runtime arguments."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import pytest

from memory_service_processor import (
    Config,
    ConfigurationError,
    ConnectionOptions,
    EventProcessor,
    GrpcCheckpointClient,
    GrpcEventClient,
    InMemoryCheckpointStore,
    MemoryServiceProcessorError,
    Runtime,
    parse_duration,
)
from memory_service_processor.testing import LocalMemoryService

from conftest import Recorder, cfg, publish_entries, run, running, wait_until

pytestmark = pytest.mark.timeout(30)


def test_configuration_error_is_a_value_error():
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(ConfigurationError, MemoryServiceProcessorError)


def test_defaults():
    c = Config(client_id="p")
    assert c.checkpoint_interval == 5.0
    assert c.reconnect_min == 1.0
    assert c.reconnect_max == 30.0
    assert c.scope == "admin"
    assert c.after_cursor is None
    assert c.checkpoint_every == 1
    assert c.stale_cursor == "fail"
    assert c.kinds == () and c.entry_channels == () and c.entry_roles == () and c.entry_content_types == ()


@pytest.mark.parametrize("client_id", ["", " ", "\t\n"])
def test_empty_client_id(client_id):
    with pytest.raises(ConfigurationError, match="client_id"):
        Config(client_id=client_id)


def test_client_id_must_be_a_string():
    with pytest.raises(TypeError, match="client_id"):
        Config(client_id=7)  # type: ignore[arg-type]


def test_client_id_is_required():
    with pytest.raises(TypeError):
        Config()  # type: ignore[call-arg]


@pytest.mark.parametrize("scope", ["root", "", "authorized", "admins"])
def test_unknown_scope(scope):
    with pytest.raises(ConfigurationError, match="scope"):
        Config(client_id="p", scope=scope)


def test_scope_is_case_insensitive():
    assert Config(client_id="p", scope="USER").scope == "user"
    assert Config(client_id="p", scope=" Admin ").scope == "admin"


@pytest.mark.parametrize("field", ["checkpoint_interval", "reconnect_min", "reconnect_max", "stop_timeout"])
@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5, float("nan"), float("inf"), dt.timedelta(0), dt.timedelta(seconds=-3)],
                         ids=repr)
def test_zero_negative_or_non_finite_durations(field, value):
    kw = {field: value}
    if field == "reconnect_min" and isinstance(value, (int, float)) and not math.isnan(value) and value > 0:
        kw["reconnect_max"] = value  # inf: keep max >= min so the duration check is what fails
    with pytest.raises(ConfigurationError, match=field):
        Config(client_id="p", **kw)


@pytest.mark.parametrize("field", ["checkpoint_interval", "reconnect_min", "stop_timeout"])
def test_durations_refuse_other_types(field):
    with pytest.raises(TypeError, match=field):
        Config(client_id="p", **{field: [1]})
    with pytest.raises(TypeError, match=field):
        Config(client_id="p", **{field: True})


def test_durations_accept_seconds_timedelta_and_strings():
    c = Config(client_id="p", checkpoint_interval=dt.timedelta(milliseconds=250), reconnect_min=2,
               reconnect_max="1m", stop_timeout="500ms")
    assert c.checkpoint_interval == 0.25
    assert c.reconnect_min == 2.0
    assert c.reconnect_max == 60.0
    assert c.stop_timeout == 0.5


def test_reconnect_max_below_min():
    with pytest.raises(ConfigurationError, match="reconnect_max"):
        Config(client_id="p", reconnect_min=5, reconnect_max=1)


@pytest.mark.parametrize("field", ["checkpoint_every", "buffer_size", "max_batch"])
def test_counts_must_be_positive_ints(field):
    with pytest.raises(ConfigurationError, match=field):
        Config(client_id="p", **{field: 0})
    with pytest.raises(ConfigurationError, match=field):
        Config(client_id="p", **{field: -3})
    with pytest.raises(TypeError, match=field):
        Config(client_id="p", **{field: 1.5})
    with pytest.raises(TypeError, match=field):
        Config(client_id="p", **{field: True})


@pytest.mark.parametrize("policy", ["", "ignore", "skip"])
def test_unknown_stale_cursor_policy(policy):
    with pytest.raises(ConfigurationError, match="stale_cursor"):
        Config(client_id="p", stale_cursor=policy)


def test_stale_cursor_policies_accepted():
    assert [Config(client_id="p", stale_cursor=s).stale_cursor for s in ("fail", "RESTART", "Tail")] == [
        "fail",
        "restart",
        "tail",
    ]


@pytest.mark.parametrize("field", ["kinds", "entry_channels", "entry_content_types", "entry_roles", "conversation_ids"])
def test_list_fields(field):
    with pytest.raises(TypeError, match=field):
        Config(client_id="p", **{field: "entry"})  # a single string is a classic mistake
    with pytest.raises(ConfigurationError, match=field):
        Config(client_id="p", **{field: ["ok", ""]})
    with pytest.raises(TypeError, match=field):
        Config(client_id="p", **{field: 5})
    assert getattr(Config(client_id="p", **{field: ["a", "b"]}), field) == ("a", "b")
    assert getattr(Config(client_id="p", **{field: None}), field) == ()


def test_unknown_field_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="checkpoint_intervall"):
        Config(client_id="p", checkpoint_intervall=5)  # type: ignore[call-arg]


def test_after_cursor_and_justification():
    assert Config(client_id="p", after_cursor="").after_cursor is None
    assert Config(client_id="p", after_cursor="start").after_cursor == "start"
    with pytest.raises(TypeError, match="after_cursor"):
        Config(client_id="p", after_cursor=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="justification"):
        Config(client_id="p", justification=b"x")  # type: ignore[arg-type]


def test_config_is_frozen_and_replace_validates():
    c = Config(client_id="p")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.client_id = "q"  # type: ignore[misc]
    assert c.replace(checkpoint_every=10).checkpoint_every == 10
    with pytest.raises(ConfigurationError, match="checkpoint_every"):
        c.replace(checkpoint_every=0)


@pytest.mark.parametrize(
    "text, seconds",
    [("5s", 5.0), ("500ms", 0.5), ("1m", 60.0), ("2h", 7200.0), ("1.5", 1.5), (" 10S ", 10.0), (3, 3.0),
     (dt.timedelta(minutes=1), 60.0)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text, "x") == seconds


@pytest.mark.parametrize("text", ["", "s", "fast", "5 parsecs", "-1s", "0ms", "nan"])
def test_parse_duration_errors_name_the_field(text):
    with pytest.raises(ConfigurationError, match="my_field"):
        parse_duration(text, "my_field")


# ---------------------------------------------------------------------------------------------
# Endpoints and connection options

BAD_ENDPOINTS = ["localhost", "ftp://x:1", "unix://relative.sock", "http://", "a b:1", "host:port", "   "]


@pytest.mark.parametrize("endpoint", BAD_ENDPOINTS)
def test_malformed_endpoint_refused_by_the_clients(endpoint):
    with pytest.raises(ConfigurationError, match="endpoint"):
        GrpcEventClient(endpoint)
    with pytest.raises(ConfigurationError, match="endpoint"):
        GrpcCheckpointClient(endpoint)
    with pytest.raises(ConfigurationError, match="endpoint"):
        ConnectionOptions(endpoint)


@pytest.mark.parametrize("endpoint", BAD_ENDPOINTS)
def test_malformed_endpoint_refused_by_runtime_at_construction(endpoint):
    with pytest.raises(ConfigurationError, match="endpoint"):
        Runtime(Recorder(), cfg(), endpoint=endpoint)


@pytest.mark.parametrize(
    "endpoint", ["localhost:8082", "127.0.0.1:1", "http://127.0.0.1:9000/", "https://memory.example.com", "unix:///tmp/ms.sock"]
)
def test_endpoint_forms_of_the_ecosystem_accepted(endpoint):
    ConnectionOptions(endpoint)
    Runtime(Recorder(), cfg(), endpoint=endpoint)


@pytest.mark.parametrize("name", ["api_key", "bearer_token"])
def test_empty_secret_refused_naming_it(name):
    with pytest.raises(ConfigurationError, match=name):
        ConnectionOptions("localhost:1", **{name: ""})
    with pytest.raises(ConfigurationError, match=name):
        Runtime(Recorder(), cfg(), endpoint="localhost:1", **{name: "  "})


@pytest.mark.parametrize("name", ["keepalive_interval", "keepalive_timeout", "connect_timeout", "request_timeout"])
def test_connection_durations(name):
    with pytest.raises(ConfigurationError, match=name):
        ConnectionOptions("localhost:1", **{name: 0})
    with pytest.raises(ConfigurationError, match=name):
        Runtime(Recorder(), cfg(), endpoint="localhost:1", **{name: -1})


def test_max_message_size_and_tls_ca_file(tmp_path):
    with pytest.raises(ConfigurationError, match="max_message_size"):
        ConnectionOptions("localhost:1", max_message_size=0)
    with pytest.raises(ConfigurationError, match="tls_ca_file"):
        ConnectionOptions("https://localhost:1", tls_ca_file=str(tmp_path / "missing.pem"))


def test_runtime_needs_an_endpoint_or_both_clients():
    with pytest.raises(ConfigurationError, match="endpoint"):
        Runtime(Recorder(), cfg())
    with pytest.raises(ConfigurationError, match="endpoint"):
        Runtime(Recorder(), cfg(), checkpoints=InMemoryCheckpointStore())


def test_runtime_config_must_be_a_config():
    with pytest.raises(TypeError, match="Config"):
        Runtime(Recorder(), {"client_id": "p"}, endpoint="localhost:1")  # type: ignore[arg-type]


def test_empty_content_type_is_refused_at_run(server):
    class NoType(EventProcessor):
        pass

    with pytest.raises(NotImplementedError, match="NoType"):
        run(Runtime(NoType(), cfg(), endpoint=server.endpoint).run())

    class BlankType(Recorder):
        def content_type(self) -> str:
            return " "

    with pytest.raises(ConfigurationError, match="content_type"):
        run(Runtime(BlankType(), cfg(), endpoint=server.endpoint).run())


def test_stats_before_run():
    st = Runtime(Recorder(), cfg(), endpoint="localhost:1").stats()
    assert st["events_handled"] == 0 and st["reconnects"] == 0 and st["phase"] == "connecting"
    for key in ("events_received", "stream_signals", "checkpoints_written", "checkpoints_failed",
                "checkpoints_skipped", "batches", "last_cursor", "last_checkpoint_age", "buffer_depth",
                "handle_seconds_mean", "handle_seconds_max"):
        assert key in st


def test_a_runtime_cannot_run_twice_at_once(server):
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="start"), endpoint=server.endpoint)

    async def main():
        async with running(rt):
            await wait_until(lambda: rt.stats()["phase"] == "live", "live")
            with pytest.raises(RuntimeError):
                await rt.run()

    run(main())


def test_unix_socket_endpoint_end_to_end(tmp_path):
    path = tmp_path / "ms.sock"
    server = LocalMemoryService(unix_path=path)
    endpoint = server.start_sync()
    try:
        assert endpoint == f"unix://{path}"
        publish_entries(server, 3)
        p = Recorder()
        rt = Runtime(p, cfg(after_cursor="start"), endpoint=endpoint)

        async def main():
            async with running(rt):
                await wait_until(lambda: len(p.handled) >= 3, "3 events")

        run(main())
        assert p.handled == ["1", "2", "3"]
        assert server.checkpoint("proc").value["lastEventCursor"] == "3"
    finally:
        server.stop_sync()


def test_http_scheme_endpoint_end_to_end(server):
    publish_entries(server, 2)
    p = Recorder()
    rt = Runtime(p, cfg(after_cursor="start"), endpoint=f"http://{server.endpoint}/")

    async def main():
        async with running(rt):
            await wait_until(lambda: len(p.handled) >= 2, "2 events")

    run(main())
    assert p.handled == ["1", "2"]
