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
    assert CONFIG_SIZES == ["checkpoint_every", "buffer_size", "buffer_bytes", "max_batch", "max_concurrency", "max_attempts"]


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
