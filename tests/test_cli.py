"""The command line, run as a subprocess (``python -m memory_service_processor``) against an
in-test LocalMemoryService: flags vs environment, exit codes, signals, one-line errors,
``checkpoint get|put|reset``."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from conftest import ADMIN_KEY, publish_entries, run, wait_until
from memory_service_processor import Config
from memory_service_processor._cli import build_parser
from memory_service_processor._cli.options import OPTIONS, resolve_options
from memory_service_processor.testing import LocalMemoryService

REPO = Path(__file__).resolve().parents[1]
PREFIX = "memory-service-processor: error:"


def _env(**extra: str) -> Dict[str, str]:
    """The test's environment without any MEMORY_SERVICE_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORY_SERVICE_")}
    env.update(extra)
    return env


def cli(*args: str, env: Optional[Dict[str, str]] = None, timeout: float = 60) -> "subprocess.CompletedProcess[str]":
    """Runs the command line to completion."""
    return subprocess.run(
        [sys.executable, "-m", "memory_service_processor", *args],
        cwd=REPO, env=env if env is not None else _env(), capture_output=True, text=True, timeout=timeout,
    )


def start(*args: str, env: Optional[Dict[str, str]] = None) -> "subprocess.Popen[str]":
    """Starts the command line in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "memory_service_processor", *args],
        cwd=REPO, env=env if env is not None else _env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(proc: "subprocess.Popen[str]", sig: Optional[int] = signal.SIGTERM) -> "tuple[int, str, str]":
    """Sends ``sig`` (if any) and collects the exit code and output."""
    if sig is not None and proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the process did not exit after signal {sig}: {err}")
    return proc.returncode, out, err


def error_lines(stderr: str) -> List[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def wait_checkpoint(server: LocalMemoryService, client_id: str, proc: "subprocess.Popen[str]", pred: Any, what: str) -> Any:
    """Polls the server's checkpoint of ``client_id`` until ``pred(value)``; fails if the
    process dies first."""

    def check() -> Any:
        if proc.poll() is not None:
            raise AssertionError(f"the processor exited early ({proc.returncode}): {proc.communicate()[1]}")
        cp = server.checkpoint(client_id)
        return cp if cp is not None and pred(cp.value) else None

    return run(wait_until(check, what, interval=0.02))


def write(path: Path, code: str) -> Path:
    path.write_text(textwrap.dedent(code))
    return path


# -- options: every field, flags over environment -----------------------------------------------


def test_every_config_field_has_a_flag_and_an_environment_variable() -> None:
    dests = {o.name for o in OPTIONS}
    assert {f.name for f in dataclasses.fields(Config)} <= dests
    assert {"endpoint", "api_key", "bearer_token", "tls_ca_file", "keepalive_interval", "max_message_size"} <= dests
    assert all(o.env for o in OPTIONS)
    ecosystem = {
        "endpoint": "MEMORY_SERVICE_GRPC_ENDPOINT",
        "client_id": "MEMORY_SERVICE_PROCESS_CLIENT_ID",
        "api_key": "MEMORY_SERVICE_API_KEY",
        "bearer_token": "MEMORY_SERVICE_BEARER_TOKEN",
        "after_cursor": "MEMORY_SERVICE_PROCESS_AFTER_CURSOR",
        "checkpoint_interval": "MEMORY_SERVICE_PROCESS_CHECKPOINT_INTERVAL",
        "scope": "MEMORY_SERVICE_PROCESS_SCOPE",
    }
    assert {o.name: o.env for o in OPTIONS if o.name in ecosystem} == ecosystem
    docs = (REPO / "README.md").read_text()
    for o in OPTIONS:
        assert o.flag in docs and o.env in docs, f"README.md's configuration tables do not mention {o.flag} / {o.env}"


def _resolve(argv: List[str], environ: Dict[str, str]) -> Dict[str, Any]:
    return resolve_options(build_parser().parse_args(["run", "x:Y", *argv]), environ)


def test_flags_win_over_environment_and_environment_over_defaults() -> None:
    env = {
        "MEMORY_SERVICE_GRPC_ENDPOINT": "env-host:1",
        "MEMORY_SERVICE_PROCESS_CLIENT_ID": "env-id",
        "MEMORY_SERVICE_PROCESS_CHECKPOINT_INTERVAL": "500ms",
        "MEMORY_SERVICE_PROCESS_SCOPE": "USER",
        "MEMORY_SERVICE_PROCESS_AFTER_CURSOR": "start",
        "MEMORY_SERVICE_PROCESS_KINDS": "entry, conversation",
        "MEMORY_SERVICE_API_KEY": "env-key",
    }
    v = _resolve([], env)
    assert (v["endpoint"], v["client_id"], v["checkpoint_interval"], v["scope"]) == ("env-host:1", "env-id", 0.5, "user")
    assert v["after_cursor"] == "start" and v["kinds"] == ("entry", "conversation") and v["api_key"] == "env-key"
    v = _resolve(
        ["--endpoint", "flag-host:2", "--client-id", "flag-id", "--checkpoint-interval", "1m", "--scope", "admin",
         "--kinds", "membership", "--kinds", "response,entry", "--api-key", "flag-key"],
        env,
    )
    assert (v["endpoint"], v["client_id"], v["checkpoint_interval"], v["scope"]) == ("flag-host:2", "flag-id", 60.0, "admin")
    assert v["kinds"] == ("membership", "response", "entry") and v["api_key"] == "flag-key"
    v = _resolve([], {"MEMORY_SERVICE_PROCESS_CHECKPOINT_INTERVAL": "5s", "MEMORY_SERVICE_PROCESS_CLIENT_ID": ""})
    assert v["checkpoint_interval"] == 5.0 and v["client_id"] is None  # empty = unset
    v = _resolve([], {})
    assert v["checkpoint_interval"] == Config.__dataclass_fields__["checkpoint_interval"].default
    assert v["scope"] == "admin" and v["after_cursor"] is None and v["kinds"] == ()


def test_run_reads_the_ecosystem_environment(server: LocalMemoryService) -> None:
    """Everything from the environment; the flag --client-id beats the variable."""
    cursors = publish_entries(server, 20)
    env = _env(
        MEMORY_SERVICE_GRPC_ENDPOINT=server.endpoint,
        MEMORY_SERVICE_PROCESS_CLIENT_ID="from-env",
        MEMORY_SERVICE_PROCESS_AFTER_CURSOR="start",
        MEMORY_SERVICE_PROCESS_CHECKPOINT_INTERVAL="200ms",
        MEMORY_SERVICE_PROCESS_SCOPE="admin",
        MEMORY_SERVICE_PROCESS_KINDS="entry",
    )
    proc = start("run", "examples/entry_counter.py:EntryCounter", env=env)
    wait_checkpoint(server, "from-env", proc, lambda v: v.get("lastEventCursor") == cursors[-1], "a checkpoint of from-env")
    code, _, err = finish(proc)
    assert code == 0, err
    assert server.checkpoint("from-env").value["count"] == 20
    subscribe = [r for r in server.requests() if r.method == "SubscribeEvents"]
    assert subscribe[-1].after_cursor == "start" and subscribe[-1].metadata.get("x-client-id") == "from-env"

    proc = start("run", "examples/entry_counter.py:EntryCounter", "--client-id", "from-flag", env=env)
    wait_checkpoint(server, "from-flag", proc, lambda v: v.get("count") == 20, "a checkpoint of from-flag")
    code, _, err = finish(proc)
    assert code == 0, err
    assert server.checkpoint("from-env").value["count"] == 20  # untouched by the second run


# -- signals --------------------------------------------------------------------------------------

SLOW_RECORDER = """
    import os, time
    from memory_service_processor import EventProcessor

    class SlowRecorder(EventProcessor):
        '''Appends each handled cursor to a file before returning; 2 ms per event.'''
        CONTENT_TYPE = "application/vnd.test.slow-recorder+json;v=1"

        def __init__(self, out):
            self.fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            self.count = 0

        def load(self, state):
            super().load(state)
            self.count = state.get("count", 0)

        def handle(self, event):
            time.sleep(0.002)
            os.write(self.fd, (event.cursor + "\\n").encode())
            self.count += 1
            super().handle(event)

        def snapshot(self):
            return {"count": self.count, "lastEventCursor": self.last_event_cursor}
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully_with_a_final_checkpoint(server: LocalMemoryService, tmp_path: Path, sig: int) -> None:
    """SIGTERM/SIGINT mid-stream: exit 0 and the final checkpoint covers the last handled event.

    Periodic checkpoints are every 300 ms only (checkpoint_every is huge), so the final one
    is what records the events handled since.
    """
    write(tmp_path / "slow_recorder.py", SLOW_RECORDER)
    out = tmp_path / "handled.txt"
    cursors = publish_entries(server, 4000)
    proc = start(
        "run", f"{tmp_path / 'slow_recorder.py'}:SlowRecorder", "--arg", f"out={out}",
        "--endpoint", server.endpoint, "--client-id", "graceful", "--after-cursor", "start",
        "--checkpoint-interval", "300ms", "--checkpoint-every", "1000000", "--max-batch", "16",
    )
    wait_checkpoint(server, "graceful", proc, lambda v: v.get("count", 0) >= 20, "a first periodic checkpoint")
    code, _, err = finish(proc, sig)
    assert code == 0, err
    handled = out.read_text().split()
    final = server.checkpoint("graceful").value
    assert 0 < len(handled) < len(cursors), "the stop should land mid-stream"
    assert handled == cursors[: len(handled)]
    assert final == {"count": len(handled), "lastEventCursor": handled[-1]}
    assert "Traceback" not in err


def test_second_sigint_exits_at_once(server: LocalMemoryService, tmp_path: Path) -> None:
    """The first SIGINT starts the graceful stop; a second one ends a stuck flush with 130."""
    write(tmp_path / "stuck.py", """
        import sys, time
        from memory_service_processor import EventProcessor

        class StuckFlush(EventProcessor):
            CONTENT_TYPE = "application/vnd.test.stuck+json;v=1"

            def flush(self):
                print("FLUSHING", flush=True)
                time.sleep(600)
    """)
    publish_entries(server, 3)
    proc = start("run", f"{tmp_path / 'stuck.py'}:StuckFlush", "--endpoint", server.endpoint,
                 "--client-id", "stuck", "--after-cursor", "start", "--checkpoint-interval", "1m")
    wait_checkpoint(server, "stuck", proc, lambda v: v.get("lastEventCursor") == "3", "the first checkpoint")
    proc.send_signal(signal.SIGINT)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "FLUSHING"  # the final flush is under way, and stuck
    code, _, err = finish(proc, signal.SIGINT)
    assert code == 130
    assert "second SIGINT" in error_lines(err)[-1]


def test_sigterm_while_the_server_is_unreachable_is_a_clean_stop() -> None:
    """Stopping while still retrying to reach the server: nothing was handled, exit 0."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: connections are refused
    proc = start("run", "examples/entry_counter.py:EntryCounter", "--endpoint", f"127.0.0.1:{port}",
                 "--client-id", "unreachable", "--reconnect-min", "50ms", "--reconnect-max", "100ms",
                 "--log-level", "warning")
    assert proc.stderr is not None
    assert "loading checkpoint failed" in proc.stderr.readline()  # it is retrying
    code, _, err = finish(proc)
    assert code == 0, err
    assert "Traceback" not in err and PREFIX not in err


# -- exit codes and one-line errors ---------------------------------------------------------------

NOT_A_PROCESSOR = """
    class Thing:
        def handle(self, event):
            pass
"""


@pytest.mark.parametrize(
    "args, env, needle",
    [
        ([], {}, None),
        (["run"], {}, "TARGET"),
        (["run", "examples/entry_counter.py:EntryCounter", "--client-id", "x"], {}, "--endpoint"),
        (["run", "examples/entry_counter.py:EntryCounter", "--endpoint", "h:1"], {}, "--client-id"),
        (["run", "examples/entry_counter.py:EntryCounter", "--endpoint", "h:1", "--client-id", "x",
          "--checkpoint-interval", "5 parsecs"], {}, "--checkpoint-interval"),
        (["run", "examples/entry_counter.py:EntryCounter", "--endpoint", "h:1", "--client-id", "x"],
         {"MEMORY_SERVICE_PROCESS_CHECKPOINT_INTERVAL": "-5s"}, "MEMORY_SERVICE_PROCESS_CHECKPOINT_INTERVAL"),
        (["run", "examples/entry_counter.py:EntryCounter", "--endpoint", "h:1", "--client-id", "x"],
         {"MEMORY_SERVICE_PROCESS_SCOPE": "root"}, "MEMORY_SERVICE_PROCESS_SCOPE"),
        (["run", "examples/entry_counter.py:EntryCounter", "--endpoint", "h:1", "--client-id", "x",
          "--reconnect-min", "10s", "--reconnect-max", "1s"], {}, "reconnect_max"),
        (["run", "examples/entry_counter.py:EntryCounter", "--endpoint", "h:1", "--client-id", "x", "--max-batch", "0"],
         {}, "--max-batch"),
        (["run", "examples/entry_counter.py:EntryCounter", "--endpoint", "h:1", "--client-id", "x", "--stale-cursor", "x"],
         {}, "--stale-cursor"),
        (["run", "examples/entry_counter.py:EntryCounter", "--nope"], {}, "--nope"),
        (["run", "examples/missing.py:X", "--endpoint", "h:1", "--client-id", "x"], {}, "no such file"),
        (["run", "examples/entry_counter.py:Missing", "--endpoint", "h:1", "--client-id", "x"], {}, "Missing"),
        (["run", "no_such_module_xyz:X", "--endpoint", "h:1", "--client-id", "x"], {}, "no_such_module_xyz"),
        (["run", "NOT_A_PROCESSOR:Thing", "--endpoint", "h:1", "--client-id", "x"], {}, "not an event processor"),
        (["run", "examples/entry_counter.py:EntryCounter", "--endpoint", "h:1", "--client-id", "x", "--arg", "size=3"],
         {}, "cannot create"),
        (["run", "examples/entry_counter.py:EntryCounter", "--endpoint", "h:1", "--client-id", "x", "--arg", "oops"],
         {}, "NAME=VALUE"),
        (["run", "examples/entry_counter.py:EntryCounter", "--endpoint", "h:1", "--client-id", "x",
          "--tls-ca-file", "/no/such/ca.pem"], {}, "tls_ca_file"),
        (["checkpoint"], {}, "get, put or reset"),
        (["checkpoint", "get", "--endpoint", "h:1"], {}, "--client-id"),
        (["checkpoint", "put", "--endpoint", "h:1", "--client-id", "x", "--content-type", "t", "--value", "{nope"], {},
         "not JSON"),
        (["demo", "--events", "0"], {}, "--events"),
        (["demo", "--duration", "soon"], {}, "--duration"),
    ],
)
def test_usage_and_configuration_errors_exit_2_with_one_line(
    tmp_path: Path, args: List[str], env: Dict[str, str], needle: Optional[str]
) -> None:
    if "NOT_A_PROCESSOR:Thing" in args:
        path = write(tmp_path / "thing.py", NOT_A_PROCESSOR)
        args = [f"{path}:Thing" if a == "NOT_A_PROCESSOR:Thing" else a for a in args]
    r = cli(*args, env=_env(**env))
    assert r.returncode == 2, r.stderr
    if needle is None:  # no command: the help, on stderr
        assert "usage:" in r.stderr
        return
    lines = error_lines(r.stderr)
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(PREFIX) and needle in lines[0]
    assert "Traceback" not in r.stderr


def test_processor_failure_exits_1_with_the_users_traceback(server: LocalMemoryService, tmp_path: Path) -> None:
    write(tmp_path / "failing.py", """
        from memory_service_processor import EventProcessor

        class Failing(EventProcessor):
            CONTENT_TYPE = "application/vnd.test.failing+json;v=1"

            def handle(self, event):
                if event.cursor == "3":
                    raise KeyError("missing field on " + event.cursor)
                super().handle(event)
    """)
    publish_entries(server, 5)
    r = cli("run", f"{tmp_path / 'failing.py'}:Failing", "--endpoint", server.endpoint, "--client-id", "failing",
            "--after-cursor", "start", "--log-level", "error")
    assert r.returncode == 1
    lines = error_lines(r.stderr)
    assert lines[-1] == f"{PREFIX} KeyError: 'missing field on 3'"
    assert "failing.py" in r.stderr and "_runtime.py" not in r.stderr  # the user's frames only
    cp = server.checkpoint("failing")
    assert cp is None or cp.value["lastEventCursor"] in (None, "1", "2")


def test_server_refusal_exits_1_without_leaking_the_key(auth_server: LocalMemoryService) -> None:
    bad_key = "wrong-key-SEKRIT-9z9z"
    r = cli("run", "examples/entry_counter.py:EntryCounter", "--endpoint", auth_server.endpoint,
            "--client-id", "refused", "--log-level", "debug", env=_env(MEMORY_SERVICE_API_KEY=bad_key))
    assert r.returncode == 1
    last = error_lines(r.stderr)[-1]
    assert last.startswith(PREFIX) and "UNAUTHENTICATED" in last
    assert "Traceback" not in r.stderr and bad_key not in r.stderr and "SEKRIT" not in r.stderr


# -- checkpoint get|put|reset ---------------------------------------------------------------------


def test_checkpoint_commands(auth_server: LocalMemoryService) -> None:
    env = _env(MEMORY_SERVICE_GRPC_ENDPOINT=auth_server.endpoint, MEMORY_SERVICE_API_KEY=ADMIN_KEY)
    r = cli("checkpoint", "get", "--client-id", "cp", env=env)
    assert r.returncode == 1 and error_lines(r.stderr) == [f"{PREFIX} no checkpoint for client id 'cp'"]

    ct = "application/vnd.example.entry-counter+json;v=1"
    r = cli("checkpoint", "put", "--client-id", "cp", "--content-type", ct,
            "--value", '{"count": 7, "lastEventCursor": "41"}', env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["value"] == {"count": 7, "lastEventCursor": "41"}
    stored = auth_server.checkpoint("cp")
    assert stored is not None and stored.content_type == ct and stored.value["count"] == 7

    # The flag beats the environment's client id.
    r = cli("checkpoint", "get", "--client-id", "cp", env=dict(env, MEMORY_SERVICE_PROCESS_CLIENT_ID="other"))
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["client_id"] == "cp" and doc["content_type"] == ct and doc["updated_at"]

    r = cli("checkpoint", "reset", "--client-id", "cp", "--cursor", "12", env=env)
    assert r.returncode == 0, r.stderr
    assert '"count": 7' in r.stderr  # the previous checkpoint, to put it back if needed
    assert auth_server.checkpoint("cp").value == {"lastEventCursor": "12"}
    assert auth_server.checkpoint("cp").content_type == ct

    r = cli("checkpoint", "reset", "--client-id", "cp", env=env)
    assert r.returncode == 0 and auth_server.checkpoint("cp").value == {}

    # An entry counter started after a reset starts over from its --after-cursor.
    cursors = publish_entries(auth_server, 4)
    proc = start("run", "examples/entry_counter.py:EntryCounter", "--client-id", "cp", "--after-cursor", "start", env=env)
    wait_checkpoint(auth_server, "cp", proc, lambda v: v.get("lastEventCursor") == cursors[-1], "the recount")
    code, _, err = finish(proc)
    assert code == 0, err
    assert auth_server.checkpoint("cp").value["count"] == 4

    r = cli("checkpoint", "get", "--client-id", "cp", env=_env(MEMORY_SERVICE_GRPC_ENDPOINT=auth_server.endpoint,
                                                                 MEMORY_SERVICE_API_KEY="nope-SEKRIT"))
    assert r.returncode == 1 and "UNAUTHENTICATED" in error_lines(r.stderr)[-1] and "SEKRIT" not in r.stderr


def test_version_and_console_script() -> None:
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("memory-service-processor ")
    exe = shutil.which("memory-service-processor")
    if exe is None:
        pytest.skip("the console script is not on PATH")
    r = subprocess.run([exe, "run", "--help"], capture_output=True, text=True, timeout=60, env=_env())
    assert r.returncode == 0 and "MEMORY_SERVICE_PROCESS_CHECKPOINT_INTERVAL" in r.stdout


@pytest.mark.parametrize("store", ["file", "memory"])
def test_checkpoint_store_option_keeps_checkpoints_off_the_server(
    server: LocalMemoryService, tmp_path: Path, store: str
) -> None:
    """--checkpoint-store file:PATH / memory: events from the server, checkpoints elsewhere."""
    write(tmp_path / "slow_recorder.py", SLOW_RECORDER)
    out = tmp_path / "handled.txt"
    cursors = publish_entries(server, 50)
    spec = f"file:{tmp_path / 'cps'}" if store == "file" else "memory"
    proc = start(
        "run", f"{tmp_path / 'slow_recorder.py'}:SlowRecorder", "--arg", f"out={out}",
        "--endpoint", server.endpoint, "--client-id", "local-store", "--after-cursor", "start",
        "--checkpoint-store", spec,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().split()) < len(cursors)):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    code, _, err = finish(proc, signal.SIGTERM)
    assert code == 0, err
    assert out.read_text().split() == cursors
    assert server.checkpoint("local-store") is None
    assert not any(r.method.endswith("Checkpoint") for r in server.requests())
    if store == "file":
        doc = json.loads((tmp_path / "cps" / "local-store.json").read_text())
        assert doc["value"] == {"count": len(cursors), "lastEventCursor": cursors[-1]}


def test_a_bad_checkpoint_store_is_a_usage_error(server: LocalMemoryService, tmp_path: Path) -> None:
    write(tmp_path / "slow_recorder.py", SLOW_RECORDER)
    r = cli("run", f"{tmp_path / 'slow_recorder.py'}:SlowRecorder", "--arg", f"out={tmp_path / 'o'}",
            "--endpoint", server.endpoint, "--client-id", "x", "--checkpoint-store", "s3://bucket")
    assert r.returncode == 2
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and "checkpoint" in lines[0] and "file:PATH" in lines[0], r.stderr


# -- absurd values and processors that exit on import ---------------------------------------------

RUN = ["run", "examples/entry_counter.py:EntryCounter", "--endpoint", "h:1"]


@pytest.mark.parametrize(
    "args, env, needle",
    [
        ([], {"MEMORY_SERVICE_PROCESS_CHECKPOINT_INTERVAL": "1e20"}, "MEMORY_SERVICE_PROCESS_CHECKPOINT_INTERVAL"),
        ([], {"MEMORY_SERVICE_PROCESS_CHECKPOINT_INTERVAL": "1e-9"}, "MEMORY_SERVICE_PROCESS_CHECKPOINT_INTERVAL"),
        ([], {"MEMORY_SERVICE_PROCESS_STOP_TIMEOUT": "1.5e19"}, "MEMORY_SERVICE_PROCESS_STOP_TIMEOUT"),
        ([], {"MEMORY_SERVICE_PROCESS_BUFFER_SIZE": "99999999999999999999999"}, "MEMORY_SERVICE_PROCESS_BUFFER_SIZE"),
        ([], {"MEMORY_SERVICE_PROCESS_MAX_BATCH": "1e3"}, "MEMORY_SERVICE_PROCESS_MAX_BATCH"),
        ([], {"MEMORY_SERVICE_PROCESS_CHECKPOINT_EVERY": "9" * 5000}, "MEMORY_SERVICE_PROCESS_CHECKPOINT_EVERY"),
        ([], {"MEMORY_SERVICE_GRPC_MAX_MESSAGE_SIZE": "99999999999999999999999"}, "MEMORY_SERVICE_GRPC_MAX_MESSAGE_SIZE"),
        ([], {"MEMORY_SERVICE_GRPC_REQUEST_TIMEOUT": "1.5e19"}, "MEMORY_SERVICE_GRPC_REQUEST_TIMEOUT"),
        ([], {"MEMORY_SERVICE_GRPC_KEEPALIVE_INTERVAL": "1.5e19"}, "MEMORY_SERVICE_GRPC_KEEPALIVE_INTERVAL"),
        ([], {"MEMORY_SERVICE_PROCESS_CLIENT_ID": "x" * 5000}, "MEMORY_SERVICE_PROCESS_CLIENT_ID"),
        ([], {"MEMORY_SERVICE_PROCESS_CLIENT_ID": "caf\u00e9"}, "MEMORY_SERVICE_PROCESS_CLIENT_ID"),
        (["--max-message-size", str(2**31)], {}, "--max-message-size"),
        (["--checkpoint-interval", "1e400"], {}, "--checkpoint-interval"),
        (["--buffer-size", "99999999999999999999999"], {}, "--buffer-size"),
        (["--metrics-port", "70000"], {}, "--metrics-port"),
        (["--client-id", "a\tb"], {}, "--client-id"),
    ],
    ids=lambda v: (v if isinstance(v, str) else repr(v))[:40],
)
def test_absurd_values_exit_2_with_one_line_naming_the_variable_or_flag(
    args: List[str], env: Dict[str, str], needle: str
) -> None:
    if "--client-id" not in args:
        env.setdefault("MEMORY_SERVICE_PROCESS_CLIENT_ID", "x")
    r = cli(*RUN, *args, env=_env(**env), timeout=30)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = error_lines(r.stderr)
    assert len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith(PREFIX) and needle in lines[0], lines[0]
    assert len(lines[0]) < 400  # a 5,000-character value is not echoed whole
    assert "Traceback" not in r.stderr and "panic" not in r.stderr.lower()


def test_checkpoint_command_refuses_absurd_values_naming_the_variable() -> None:
    r = cli("checkpoint", "get", "--endpoint", "h:1", "--client-id", "x",
            env=_env(MEMORY_SERVICE_GRPC_REQUEST_TIMEOUT="1e20"), timeout=30)
    assert r.returncode == 2, r.stderr
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and "MEMORY_SERVICE_GRPC_REQUEST_TIMEOUT" in lines[0], r.stderr


@pytest.mark.parametrize(
    "code, message",
    [
        ("import sys\nsys.exit(0)", "called sys.exit(0)"),
        ("import sys\nsys.exit()", "called sys.exit()"),
        ("raise SystemExit(3)", "called sys.exit(3)"),
        ("raise SystemExit('bye')", "called sys.exit('bye')"),
        ("raise KeyboardInterrupt", "raised KeyboardInterrupt"),
        ("class Stop(BaseException):\n    pass\nraise Stop('no more')", "raised Stop: no more"),
    ],
    ids=["exit-0", "exit-none", "exit-3", "exit-text", "keyboard-interrupt", "base-exception"],
)
@pytest.mark.parametrize("form", ["file", "module"])
def test_a_processor_module_that_exits_on_import_is_reported(tmp_path: Path, code: str, message: str, form: str) -> None:
    (tmp_path / "exiting_mod.py").write_text(code + "\n")
    target = f"{tmp_path / 'exiting_mod.py'}:P" if form == "file" else "exiting_mod:P"
    shown = repr(str(tmp_path / "exiting_mod.py")) if form == "file" else "'exiting_mod'"
    r = cli("run", target, "--endpoint", "h:1", "--client-id", "x",
            env=_env(PYTHONPATH=str(tmp_path)), timeout=30)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = error_lines(r.stderr)
    assert lines == [f"{PREFIX} importing {shown} {message}"], r.stderr


def test_a_processor_constructor_that_exits_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "exits_in_init.py", """
        import sys

        from memory_service_processor import EventProcessor


        class P(EventProcessor):
            def __init__(self):
                sys.exit(0)
    """)
    r = cli("run", f"{tmp_path / 'exits_in_init.py'}:P", "--endpoint", "h:1", "--client-id", "x", timeout=30)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and "called sys.exit(0)" in lines[0] and "exits_in_init.py:P" in lines[0], r.stderr


def test_ctrl_c_during_a_slow_import_is_still_an_interrupt(tmp_path: Path) -> None:
    write(tmp_path / "slow_import.py", """
        import sys
        import time

        print("importing", file=sys.stderr, flush=True)
        time.sleep(30)
    """)
    proc = start("run", f"{tmp_path / 'slow_import.py'}:P", "--endpoint", "h:1", "--client-id", "x")
    assert proc.stderr is not None
    assert proc.stderr.readline().strip() == "importing"
    code, _, err = finish(proc, signal.SIGINT)
    assert code == 130, err
    assert "interrupted" in err and "raised KeyboardInterrupt" not in err
