"""Absurd configuration values are refused at construction with a ConfigurationError naming the
setting, so that none of them reaches the native core (where they used to panic, overflow or
make the runtime spin): every duration and size is range-checked, and a client id that cannot
travel as the gRPC metadata ``x-client-id`` is refused."""

from __future__ import annotations

import datetime as dt

import pytest

from memory_service_processor import Config, ConfigurationError, ConnectionOptions, Runtime
from memory_service_processor._cli.options import markdown_tables
from memory_service_processor._config import CONFIG_SETTINGS
from memory_service_processor._connection import CONNECTION_SETTINGS
from memory_service_processor._settings import (
    BUFFER_BYTES_MAX,
    CLIENT_ID_MAX_BYTES,
    COUNTER_MAX,
    DURATION_MAX,
    DURATION_MIN,
    EVENT_COUNT_MAX,
    MESSAGE_SIZE_MAX,
)

from conftest import Recorder, cfg, publish_entries, run, running, wait_until

pytestmark = pytest.mark.timeout(60)

CONFIG_DURATIONS = [s.name for s in CONFIG_SETTINGS if s.kind == "duration"]
CONNECTION_DURATIONS = [s.name for s in CONNECTION_SETTINGS if s.kind == "duration"]
CONFIG_SIZES = [s.name for s in CONFIG_SETTINGS if s.kind == "int"]

#: Values that are positive and finite but absurdly long (1.5e19 s used to panic in the core).
HUGE_DURATIONS = [1.5e19, 1e20, 10**400, dt.timedelta.max, "1e20s", "99999999999h"]
HUGE_IDS = ["1.5e19", "1e20", "10**400", "timedelta.max", "'1e20s'", "'99999999999h'"]


def _config(field: str, value: object) -> Config:
    kw = {field: value}
    if field == "reconnect_min":
        kw["reconnect_max"] = value  # keep max >= min: the range check is what must fail
    if field == "reconnect_max":
        kw["reconnect_min"] = DURATION_MIN
    if field == "retry_min":
        kw["retry_max"] = value
    if field == "retry_max":
        kw["retry_min"] = DURATION_MIN
    return Config(client_id="p", **kw)  # type: ignore[arg-type]


def test_the_duration_and_size_settings_are_the_expected_ones() -> None:
    assert CONFIG_DURATIONS == [
        "checkpoint_interval", "reconnect_min", "reconnect_max", "stop_timeout", "retry_min", "retry_max",
    ]
    assert CONNECTION_DURATIONS == ["keepalive_interval", "keepalive_timeout", "connect_timeout", "request_timeout"]
    assert CONFIG_SIZES == [
        "checkpoint_every", "buffer_size", "buffer_bytes", "max_batch", "max_concurrency", "max_attempts",
        "shard_count", "shard_index",
    ]


@pytest.mark.parametrize("value", HUGE_DURATIONS, ids=HUGE_IDS)
@pytest.mark.parametrize("field", CONFIG_DURATIONS)
def test_huge_config_durations_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=field) as info:
        _config(field, value)
    assert "8760h" in str(info.value) or "finite" in str(info.value)


@pytest.mark.parametrize("value", HUGE_DURATIONS, ids=HUGE_IDS)
@pytest.mark.parametrize("field", CONNECTION_DURATIONS)
def test_huge_connection_durations_are_refused_naming_the_option(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=field):
        ConnectionOptions("localhost:1", **{field: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=field):
        Runtime(Recorder(), cfg(), endpoint="localhost:1", **{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [1e-9, 0.001, "1ms", dt.timedelta(microseconds=1)], ids=repr)
@pytest.mark.parametrize("field", CONFIG_DURATIONS)
def test_tiny_durations_are_refused_naming_the_field_and_the_minimum(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"{field} must be at least 10ms"):
        _config(field, value)


@pytest.mark.parametrize("field", CONNECTION_DURATIONS)
def test_tiny_connection_durations_are_refused(field: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{field} must be at least 10ms"):
        ConnectionOptions("localhost:1", **{field: 1e-9})  # type: ignore[arg-type]


@pytest.mark.parametrize("field", CONFIG_DURATIONS)
def test_the_duration_limits_themselves_are_accepted(field: str) -> None:
    assert getattr(_config(field, DURATION_MIN), field) == DURATION_MIN
    assert getattr(_config(field, DURATION_MAX), field) == DURATION_MAX
    assert getattr(_config(field, "8760h"), field) == DURATION_MAX
    assert DURATION_MIN == 0.01 and DURATION_MAX == 365 * 86400


@pytest.mark.parametrize(
    "field, maximum",
    [
        ("checkpoint_every", COUNTER_MAX),
        ("buffer_size", EVENT_COUNT_MAX),
        ("buffer_bytes", BUFFER_BYTES_MAX),
        ("max_batch", EVENT_COUNT_MAX),
    ],
)
def test_sizes_have_a_maximum(field: str, maximum: int) -> None:
    assert getattr(Config(client_id="p", **{field: maximum}), field) == maximum
    for value in (maximum + 1, 2**64, 99999999999999999999999, 10**5000):
        with pytest.raises(ConfigurationError, match=f"{field} must be at most {maximum}") as info:
            Config(client_id="p", **{field: value})
        assert len(str(info.value)) < 200  # a 5,000-digit value is not echoed whole


def test_max_message_size_is_at_most_2_gib_minus_1() -> None:
    assert MESSAGE_SIZE_MAX == 2**31 - 1
    assert ConnectionOptions("localhost:1", max_message_size=MESSAGE_SIZE_MAX).max_message_size == MESSAGE_SIZE_MAX
    for value in (2**31, 2**64, 99999999999999999999999):
        with pytest.raises(ConfigurationError, match="max_message_size must be at most 2147483647"):
            ConnectionOptions("localhost:1", max_message_size=value)
        with pytest.raises(ConfigurationError, match="max_message_size"):
            Runtime(Recorder(), cfg(), endpoint="localhost:1", max_message_size=value)


# -- client ids ---------------------------------------------------------------------------------

BAD_CLIENT_IDS = [
    ("x" * 100_000, "at most 1024 bytes"),
    ("x" * (CLIENT_ID_MAX_BYTES + 1), "at most 1024 bytes"),
    ("line\nbreak", "printable ASCII"),
    ("nul\x00", "printable ASCII"),
    ("tab\there", "printable ASCII"),
    ("del\x7f", "printable ASCII"),
    ("caf\u00e9", "printable ASCII"),
    ("\u2603-processor", "printable ASCII"),
    (" padded", "spaces"),
    ("padded ", "spaces"),
]


@pytest.mark.parametrize("client_id, reason", BAD_CLIENT_IDS, ids=lambda v: repr(v)[:20])
def test_absurd_client_ids_are_refused_at_construction(client_id: str, reason: str) -> None:
    with pytest.raises(ConfigurationError, match="client_id") as info:
        Config(client_id=client_id)
    assert reason in str(info.value) and len(str(info.value)) < 300
    with pytest.raises(ConfigurationError, match="client_id"):
        ConnectionOptions("localhost:1", client_id=client_id)


def test_reasonable_client_ids_are_accepted() -> None:
    for client_id in ("p", "turn-counter/v2", "a b", "x" * CLIENT_ID_MAX_BYTES, "!~"):
        assert Config(client_id=client_id).client_id == client_id
        assert ConnectionOptions("localhost:1", client_id=client_id).client_id == client_id
    assert ConnectionOptions("localhost:1", client_id=None).client_id is None


# -- the README says what is refused --------------------------------------------------------------


def test_the_tables_state_every_range() -> None:
    tables = "\n".join(markdown_tables().values())
    for setting in CONFIG_SETTINGS + CONNECTION_SETTINGS:
        if setting.flag and setting.kind in ("duration", "int"):
            row = next(line for line in tables.splitlines() if f"`{setting.flag}`" in line)
            assert f"values outside {setting.range_text} are refused" in row, row
    assert "values outside 10ms to 8760h (365 days) are refused" in tables
    assert "1024 bytes" in tables


# -- the limits are safe for the native core ----------------------------------------------------------


def test_the_largest_accepted_values_run(server) -> None:  # type: ignore[no-untyped-def]
    """Every duration and size at its maximum: the run handles events and stops cleanly (these
    values used to panic in the native core when they were larger)."""
    publish_entries(server, 3)
    p = Recorder()
    config = cfg(
        after_cursor="start", checkpoint_interval=DURATION_MAX, reconnect_min=DURATION_MAX,
        reconnect_max=DURATION_MAX, stop_timeout=DURATION_MAX, checkpoint_every=COUNTER_MAX,
        buffer_size=EVENT_COUNT_MAX, max_batch=EVENT_COUNT_MAX,
    )
    rt = Runtime(
        p, config, endpoint=server.endpoint, keepalive_interval=DURATION_MAX, keepalive_timeout=DURATION_MAX,
        connect_timeout=DURATION_MAX, request_timeout=DURATION_MAX, max_message_size=MESSAGE_SIZE_MAX,
    )

    async def main() -> None:
        async with running(rt):
            await wait_until(lambda: len(p.handled) >= 3, "3 events")

    run(main())
    assert p.handled == ["1", "2", "3"]
    assert server.checkpoint("proc").value["lastEventCursor"] == "3"  # the final checkpoint


def test_the_smallest_accepted_values_run(server) -> None:  # type: ignore[no-untyped-def]
    """Every duration at its minimum (10 ms): events flow and the run stops cleanly."""
    publish_entries(server, 3)
    p = Recorder()
    config = cfg(after_cursor="start", checkpoint_interval=DURATION_MIN, reconnect_min=DURATION_MIN,
                 reconnect_max=DURATION_MIN, stop_timeout=1.0, buffer_size=1, max_batch=1)
    rt = Runtime(p, config, endpoint=server.endpoint, keepalive_interval=DURATION_MIN, keepalive_timeout=1.0)

    async def main() -> None:
        async with running(rt):
            await wait_until(lambda: len(p.handled) >= 3, "3 events")
            publish_entries(server, 2)
            await wait_until(lambda: len(p.handled) >= 5, "5 events")

    run(main())
    assert p.handled == ["1", "2", "3", "4", "5"]


# -- shards ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, error, match",
    [
        ({"shard_count": 0}, ConfigurationError, "shard_count must be at least 1"),
        ({"shard_count": -2}, ConfigurationError, "shard_count must be at least 1"),
        ({"shard_count": 1025}, ConfigurationError, "shard_count must be at most 1024"),
        ({"shard_count": 10**400}, ConfigurationError, "shard_count must be at most 1024"),
        ({"shard_count": "3"}, TypeError, "shard_count must be an int"),
        ({"shard_count": True}, TypeError, "shard_count must be an int"),
        ({"shard_count": 2.0}, TypeError, "shard_count must be an int"),
        ({"shard_index": -1}, ConfigurationError, "shard_index must be at least 0"),
        ({"shard_index": 1024, "shard_count": 1024}, ConfigurationError, "shard_index must be at most 1023"),
        ({"shard_index": "0"}, TypeError, "shard_index must be an int"),
        ({"shard_index": False}, TypeError, "shard_index must be an int"),
        ({"shard_index": 3, "shard_count": 3}, ConfigurationError, r"shard_index \(3\) must be less than shard_count \(3\)"),
        ({"shard_index": 1}, ConfigurationError, r"shard_index \(1\) must be less than shard_count \(1\)"),
    ],
    ids=repr,
)
def test_bad_shard_layouts_are_refused_naming_the_fields(kw: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Config(client_id="p", **kw)


def test_the_shard_limits_themselves_are_accepted() -> None:
    c = Config(client_id="p", shard_count=1024, shard_index=1023)
    assert (c.shard_count, c.shard_index) == (1024, 1023)
    c = Config(client_id="p")
    assert (c.shard_count, c.shard_index) == (1, 0)


def _shard_values(argv: list, environ: dict, hostname: str) -> dict:
    from memory_service_processor._cli import build_parser
    from memory_service_processor._cli.options import resolve_options, shard_index_from_hostname

    args = build_parser().parse_args(["run", "x:Y", *argv])
    values = resolve_options(args, environ)
    shard_index_from_hostname(values, args, hostname, environ)
    return values


@pytest.mark.parametrize(
    "hostname, index",
    [("summarizer-2", 2), ("summarizer-0", 0), ("my-app-v2-17", 17), ("summarizer-3.summarizer.ns.svc.cluster.local", 3)],
)
def test_the_shard_index_comes_from_the_host_name_ordinal(hostname: str, index: int) -> None:
    v = _shard_values(["--shard-index-from-hostname", "true", "--shard-count", "64"], {}, hostname)
    assert v["shard_index"] == index
    # The bare flag (as deploy/kubernetes passes it) means true; `false` turns it off.
    assert _shard_values(["--shard-index-from-hostname", "--shard-count", "64"], {}, hostname)["shard_index"] == index
    assert _shard_values(["--shard-index-from-hostname", "false", "--shard-count", "64"], {}, hostname)["shard_index"] == 0
    env = {"MEMORY_SERVICE_PROCESS_SHARD_INDEX_FROM_HOSTNAME": "true", "MEMORY_SERVICE_PROCESS_SHARD_COUNT": "64"}
    assert _shard_values([], env, hostname)["shard_index"] == index
    # Off (the default): the host name is not read.
    assert _shard_values([], {}, hostname)["shard_index"] == 0


@pytest.mark.parametrize("hostname", ["summarizer", "summarizer-", "summarizer-x", "", "7"])
def test_a_host_name_without_an_ordinal_is_a_usage_error(hostname: str) -> None:
    from memory_service_processor._cli.errors import UsageError

    with pytest.raises(UsageError, match="does not end with -<ordinal>"):
        _shard_values(["--shard-index-from-hostname", "true"], {}, hostname)


def test_an_explicit_shard_index_must_agree_with_the_host_name() -> None:
    from memory_service_processor._cli.errors import UsageError

    on = ["--shard-index-from-hostname", "true", "--shard-count", "4"]
    assert _shard_values([*on, "--shard-index", "2"], {}, "s-2")["shard_index"] == 2
    with pytest.raises(UsageError, match="gives shard index 2, but --shard-index"):
        _shard_values([*on, "--shard-index", "1"], {}, "s-2")
    with pytest.raises(UsageError, match="MEMORY_SERVICE_PROCESS_SHARD_INDEX"):
        _shard_values(on, {"MEMORY_SERVICE_PROCESS_SHARD_INDEX": "0"}, "s-2")


def test_run_takes_the_shard_index_from_the_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run`` resolves the option before it loads anything: an ordinal beyond the count is
    refused as a configuration error naming both fields."""
    import socket

    from memory_service_processor._cli import build_parser
    from memory_service_processor._cli.errors import UsageError
    from memory_service_processor._cli.run import cmd_run

    monkeypatch.setattr(socket, "gethostname", lambda: "summarizer-5")
    args = build_parser().parse_args(
        ["run", "nowhere:Nothing", "--endpoint", "localhost:1", "--client-id", "summarizer-5",
         "--shard-count", "3", "--shard-index-from-hostname", "true"]
    )
    with pytest.raises(UsageError, match=r"shard_index \(5\) must be less than shard_count \(3\)"):
        cmd_run(args, {})
    monkeypatch.setattr(socket, "gethostname", lambda: "summarizer")
    with pytest.raises(UsageError, match="host name 'summarizer'"):
        cmd_run(args, {})
