"""Each setting is declared once (``Config`` fields, ``ConnectionOptions``, the command line's own
options) and everything else derives from it: the command line's flags and environment
variables, the constructors' checks, and the README's configuration tables."""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from memory_service_processor import Config, ConfigurationError, ConnectionOptions
from memory_service_processor._cli.options import CLI_SETTINGS, OPTIONS, markdown_tables, readme_tables
from memory_service_processor._config import CONFIG_SETTINGS
from memory_service_processor._connection import CONNECTION_SETTINGS

ROOT = Path(__file__).resolve().parents[1]

#: The attributes the Rust side reads by name: they must not change.
CONFIG_FIELDS = (
    "client_id", "kinds", "entry_channels", "entry_content_types", "entry_roles", "scope", "after_cursor",
    "justification", "checkpoint_interval", "checkpoint_every", "reconnect_min", "reconnect_max", "stale_cursor",
    "conversation_ids", "buffer_size", "buffer_bytes", "max_batch", "stop_timeout", "detect_other_writers",
    "max_concurrency", "max_attempts", "retry_min",
    "retry_max", "on_failure", "shard_count", "shard_index",
)
CONNECTION_ATTRIBUTES = (
    "endpoint", "_api_key", "_bearer_token", "client_id", "tls_ca_file", "tls_server_name", "keepalive_interval",
    "keepalive_timeout", "connect_timeout", "request_timeout", "max_message_size",
)


def test_the_readme_tables_are_the_declarations() -> None:
    """Regenerate them with `python scripts/settings_tables.py --write README.md`."""
    found = readme_tables((ROOT / "README.md").read_text(encoding="utf-8"))
    for group, expected in markdown_tables().items():
        assert found[group] is not None, f"README.md has no generated {group} table (see scripts/settings_tables.py)"
        assert found[group] == expected, (
            f"README.md's {group} table differs from the settings' declarations: "
            "run `python scripts/settings_tables.py --write README.md`"
        )


def test_the_table_script_prints_what_the_readme_holds() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "settings_tables.py")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "\n\n".join(markdown_tables().values())


def test_config_keeps_its_fields_and_each_has_one_declaration() -> None:
    assert tuple(f.name for f in dataclasses.fields(Config)) == CONFIG_FIELDS
    assert tuple(s.name for s in CONFIG_SETTINGS) == CONFIG_FIELDS
    for setting, field in zip(CONFIG_SETTINGS, dataclasses.fields(Config)):
        assert setting.default == (None if field.default is dataclasses.MISSING else field.default)
        assert setting.flag == "--" + setting.name.replace("_", "-")
        assert setting.env == "MEMORY_SERVICE_PROCESS_" + setting.name.upper()
        assert setting.help and setting.check is not None and setting.group == "config"


def test_connection_options_keep_their_signature_and_attributes() -> None:
    parameters = inspect.signature(ConnectionOptions).parameters
    assert tuple(parameters) == tuple(s.name for s in CONNECTION_SETTINGS)
    for setting in CONNECTION_SETTINGS:
        default = parameters[setting.name].default
        assert default is inspect.Parameter.empty if setting.required else default == setting.default
    options = ConnectionOptions("localhost:1", api_key="SEKRIT-key", bearer_token="SEKRIT-token")
    assert tuple(s.field_name for s in CONNECTION_SETTINGS) == CONNECTION_ATTRIBUTES
    for attribute in CONNECTION_ATTRIBUTES:
        getattr(options, attribute)
    assert "SEKRIT" not in repr(options) and "redacted" in repr(options)
    assert (options.keepalive_interval, options.max_message_size) == (20.0, 4 * 1024 * 1024)


def test_values_are_stored_normalized() -> None:
    c = Config(client_id="p", kinds=["entry"], scope=" USER ", stale_cursor="Tail",
               checkpoint_interval=dt.timedelta(milliseconds=250), reconnect_max="1m", justification=" ")
    assert c.kinds == ("entry",) and isinstance(c.kinds, tuple)
    assert (c.scope, c.stale_cursor) == ("user", "tail")
    assert (c.checkpoint_interval, c.reconnect_max) == (0.25, 60.0)
    assert type(c.checkpoint_interval) is float and c.justification is None
    o = ConnectionOptions(" localhost:1 ", connect_timeout="500ms")
    assert o.endpoint == "localhost:1" and o.connect_timeout == 0.5


def test_connection_errors_name_the_option_and_never_the_secret() -> None:
    with pytest.raises(ConfigurationError, match="keepalive_timeout"):
        ConnectionOptions("localhost:1", keepalive_timeout=0)
    with pytest.raises(ConfigurationError, match="api_key") as info:
        ConnectionOptions("localhost:1", api_key="   ")
    with pytest.raises(TypeError, match="request_timeout"):
        ConnectionOptions("localhost:1", request_timeout=[1])  # type: ignore[arg-type]
    assert "   " not in str(info.value).replace("api_key must", "")


def test_every_option_has_one_flag_and_one_variable() -> None:
    flags = [o.flag for o in OPTIONS]
    envs = [o.env for o in OPTIONS]
    assert len(set(flags)) == len(flags) and len(set(envs)) == len(envs)
    assert {o.name for o in CLI_SETTINGS} == {
        "checkpoint_store", "log_level", "log_format", "metrics_port", "metrics_addr", "health_port", "liveness_timeout",
        "shard_index_from_hostname",
    }
    # The connection's client id is the Config's: one flag, not two.
    assert [o.name for o in OPTIONS].count("client_id") == 1
