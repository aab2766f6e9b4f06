"""Checkpoints under hostile conditions (docs/semantics.md, sections 7 and 15): nesting and
number limits, values that cannot be encoded or decoded, a snapshot over ``max_message_size``,
a stored checkpoint the client cannot read, a process forked after the native runtime started,
and two instances writing one client id.

Each case must end with a clear error within a bounded time (never a retry loop, never a hang)
naming the processor or the client id, and the limit.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from concurrent import futures
from typing import Any, Dict, Optional

import grpc
import pytest

from memory_service_processor import Config, ConfigurationError, InMemoryCheckpointStore, Runtime
from memory_service_processor.testing import LocalMemoryService, run_until_handled

from conftest import CONTENT_TYPE, Recorder, cfg, publish_entries, run, started

#: The deepest nesting a checkpoint value supports (src/jsonvalue.rs, MAX_DEPTH).
MAX_DEPTH = 100


def nested(levels: int, leaf: Any = 1) -> Any:
    """``{"a": {"a": ... leaf}}``, ``levels`` objects deep."""
    value = leaf
    for _ in range(levels):
        value = {"a": value}
    return value


def nested_lists(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


class Carrying(Recorder):
    """A Recorder whose snapshot carries ``extra`` next to its cursor, and keeps what it loads."""

    def __init__(self, extra: Any) -> None:
        super().__init__()
        self.extra = extra

    def load(self, state: Any) -> None:
        super().load(state)

    def snapshot(self) -> Any:
        self.snapshots += 1
        return {"lastEventCursor": self.last_event_cursor, "extra": self.extra}


# -- nesting depth: what round-trips ----------------------------------------------------------


@pytest.mark.parametrize("shape", ["objects", "lists"])
@pytest.mark.parametrize("levels", [64, MAX_DEPTH - 1])
def test_deeply_nested_checkpoints_round_trip_through_the_server(server, shape, levels):
    # prost alone reads about 33 object levels; the runtime supports MAX_DEPTH end to end:
    # snapshot -> PutCheckpoint -> the server -> GetCheckpoint -> load.
    extra = nested(levels) if shape == "objects" else nested_lists(levels)
    publish_entries(server, 3)
    first = Carrying(extra)
    result = run(run_until_handled(first, server, cfg(after_cursor="start")), timeout=30)
    assert first.handled == ["1", "2", "3"]
    assert result.checkpoint is not None
    assert result.checkpoint.value == {"lastEventCursor": "3", "extra": extra}
    second = Carrying(None)
    publish_entries(server, 1)
    run(run_until_handled(second, server, cfg(after_cursor="start")), timeout=30)
    assert second.loaded and second.loaded[0]["extra"] == extra
    assert second.handled == ["4"]


# -- snapshot time: refused with the processor's name and the limit ---------------------------


class DeepSnapshot(Recorder):
    LEVELS = 200

    def snapshot(self) -> Any:
        return {"lastEventCursor": self.last_event_cursor, "tree": nested(self.LEVELS)}


class JustTooDeep(DeepSnapshot):
    LEVELS = MAX_DEPTH  # plus the top-level object: MAX_DEPTH + 1 levels


class HugeNumber(Recorder):
    def snapshot(self) -> Any:
        return {"lastEventCursor": self.last_event_cursor, "n": 10**400}


class LoneSurrogate(Recorder):
    def snapshot(self) -> Any:
        return {"lastEventCursor": self.last_event_cursor, "s": "half a pair: \ud800"}


@pytest.mark.parametrize(
    "processor, words",
    [
        (DeepSnapshot, ["more than 128 levels", f"at most {MAX_DEPTH} levels"]),
        (JustTooDeep, [f"{MAX_DEPTH + 1} levels", f"at most {MAX_DEPTH} levels"]),
        (HugeNumber, ["64-bit float"]),
        (LoneSurrogate, ["not valid Unicode", "UTF-8"]),
    ],
)
def test_a_snapshot_no_checkpoint_can_hold_is_refused_naming_the_processor_and_the_limit(server, processor, words):
    publish_entries(server, 2)
    p = processor()
    rt = Runtime(p, cfg(after_cursor="start"), endpoint=server.endpoint)
    with pytest.raises(ValueError) as info:
        run(rt.run(), timeout=20)
    text = str(info.value)
    assert processor.__name__ in text, text
    for word in words:
        assert word in text, text
    assert "not valid JSON" not in text, text
    assert server.checkpoint("proc") is None


def test_a_snapshot_over_max_message_size_is_refused_before_it_is_sent(server):
    class Big(Recorder):
        def snapshot(self) -> Any:
            return {"lastEventCursor": self.last_event_cursor, "blob": "x" * 100_000}

    publish_entries(server, 2)
    rt = Runtime(Big(), cfg(after_cursor="start"), endpoint=server.endpoint, max_message_size=64 * 1024)
    t0 = time.monotonic()
    with pytest.raises(ValueError) as info:
        run(rt.run(), timeout=20)
    assert time.monotonic() - t0 < 10
    text = str(info.value)
    assert "Big.snapshot()" in text and "max_message_size" in text and "65536" in text, text
    # Never sent: the server holds nothing the next start could not read back.
    assert server.checkpoint("proc") is None


def test_a_snapshot_under_max_message_size_still_goes_through(server):
    class Fits(Recorder):
        def snapshot(self) -> Any:
            return {"lastEventCursor": self.last_event_cursor, "blob": "x" * 60_000}

    publish_entries(server, 2)
    result = run(run_until_handled(Fits(), server, cfg(after_cursor="start"), max_message_size=64 * 1024), timeout=30)
    assert result.checkpoint is not None and len(result.checkpoint.value["blob"]) == 60_000


# -- load time: a stored checkpoint the client cannot decode ----------------------------------


def test_a_stored_checkpoint_nested_too_deep_fails_the_load_naming_the_client_id(server):
    server.put_checkpoint("deep-one", CONTENT_TYPE, {"lastEventCursor": "1", "tree": nested(MAX_DEPTH + 10)})
    rt = Runtime(Recorder(), cfg("deep-one"), endpoint=server.endpoint)
    t0 = time.monotonic()
    with pytest.raises(ValueError) as info:
        run(rt.run(), timeout=20)
    assert time.monotonic() - t0 < 10, "retried instead of failing"
    text = str(info.value)
    assert '"deep-one"' in text and f"more than {MAX_DEPTH} levels" in text, text


def test_a_custom_store_holding_a_too_deep_value_fails_the_load_naming_the_client_id(server):
    store = InMemoryCheckpointStore()
    run(store.put("deep-two", CONTENT_TYPE, {"lastEventCursor": "1", "tree": nested(150)}))
    rt = Runtime(Recorder(), cfg("deep-two"), endpoint=server.endpoint, checkpoints=store)
    with pytest.raises(ValueError) as info:
        run(rt.run(), timeout=20)
    text = str(info.value)
    assert '"deep-two"' in text and f"at most {MAX_DEPTH}" in text, text


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return _varint(tag << 3 | 2) + _varint(len(payload)) + payload


def _deep_value(levels: int) -> bytes:
    value = b"\x11" + b"\x00" * 8  # number_value 0.0
    for _ in range(levels):
        entry = _field(1, b"a") + _field(2, value)
        value = _field(5, _field(1, entry))  # struct_value { fields { key: "a" value: ... } }
    return value


class RawCheckpointServer:
    """A gRPC server answering ``GetCheckpoint`` with hand-made bytes (what a server that does
    not validate could hold), and counting the calls."""

    def __init__(self, value: bytes) -> None:
        body = _field(1, b"raw") + _field(2, CONTENT_TYPE.encode()) + _field(3, value)
        self.calls = 0

        def get(request: bytes, context: Any) -> bytes:
            self.calls += 1
            return body

        handler = grpc.method_handlers_generic_handler(
            "memory.v1.AdminCheckpointService",
            {"GetCheckpoint": grpc.unary_unary_rpc_method_handler(get)},
        )
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self._server.add_generic_rpc_handlers((handler,))
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"127.0.0.1:{port}"

    def __enter__(self) -> "RawCheckpointServer":
        self._server.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.stop(None)


@pytest.mark.parametrize(
    "value, words",
    [
        (_field(3, b"\xff\xfe caf\xe9"), ["not valid UTF-8"]),
        (_field(5, _field(1, _field(1, b"\xc3\x28") + _field(2, b"\x08\x00"))), ["not valid UTF-8"]),
        (_deep_value(300), [f"more than {MAX_DEPTH} levels"]),
    ],
    ids=["utf8-string", "utf8-key", "300-levels"],
)
def test_an_undecodable_stored_checkpoint_is_one_clear_error_not_a_retry_loop(value, words):
    with RawCheckpointServer(value) as raw:
        rt = Runtime(Recorder(), cfg("raw"), endpoint=raw.endpoint)
        t0 = time.monotonic()
        with pytest.raises(ValueError) as info:
            run(rt.run(), timeout=20)
        assert time.monotonic() - t0 < 10
        assert raw.calls == 1, f"GetCheckpoint was retried {raw.calls - 1} times"
    text = str(info.value)
    assert 'client id "raw"' in text, text
    for word in words:
        assert word in text, text


# -- fork ---------------------------------------------------------------------------------------


def _run_in_child(endpoint: str) -> str:
    """Runs a processor against ``endpoint`` in a forked child; the error text, or "ran"."""
    try:
        asyncio.run(asyncio.wait_for(Runtime(Recorder(), cfg("child"), endpoint=endpoint).run(), 10))
    except asyncio.TimeoutError:
        return "hung"
    except Exception as e:  # noqa: BLE001 - the error itself is the result
        return f"{type(e).__name__}: {e}"
    return "ran"


def _server_in_child() -> str:
    try:
        srv = LocalMemoryService()
        srv.start_sync()
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    srv.stop_sync()
    return "ran"


@pytest.fixture
def runtime_started(server) -> LocalMemoryService:
    """The native runtime has run in this process (a processor handled an event)."""
    publish_entries(server, 1)
    run(run_until_handled(Recorder(), server, cfg("parent", after_cursor="start")), timeout=30)
    return server


def _assert_fork_error(text: str) -> None:
    assert text.startswith("RuntimeError:"), text
    assert "forked" in text and "spawn" in text, text


def test_a_multiprocessing_fork_child_gets_a_clear_error_instead_of_hanging(runtime_started):
    server = runtime_started
    ctx = multiprocessing.get_context("fork")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded, use of fork()"
        with ctx.Pool(1) as pool:
            _assert_fork_error(pool.apply_async(_run_in_child, (server.endpoint,)).get(timeout=60))
            _assert_fork_error(pool.apply_async(_server_in_child).get(timeout=60))
    # The parent is unaffected.
    publish_entries(server, 1)
    p = Recorder()
    run(run_until_handled(p, server, cfg("parent", after_cursor="start")), timeout=30)
    assert p.handled == ["2"]


def test_os_fork_child_gets_a_clear_error_and_exits(runtime_started):
    server = runtime_started
    r, w = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report and leave without running the parent's cleanup
        try:
            os.close(r)
            os.write(w, _run_in_child(server.endpoint).encode()[:4000])
        finally:
            os._exit(0)
    os.close(w)
    deadline = time.monotonic() + 60
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            assert time.monotonic() < deadline, "the forked child hung"
            time.sleep(0.05)
        with os.fdopen(r, "rb") as f:
            text = f.read().decode()
    finally:
        if not done:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    _assert_fork_error(text)


def test_a_child_forked_before_the_runtime_started_works():
    script = textwrap.dedent(
        """
        import asyncio, os, sys
        from memory_service_processor.testing import LocalMemoryService, run_until_handled
        from memory_service_processor.examples.entry_counter import EntryCounter

        pid = os.fork()
        srv = LocalMemoryService()
        srv.start_sync()
        try:
            srv.publish("entry", "appended", {"conversation": "c", "entry": "e"})
            r = asyncio.run(run_until_handled(EntryCounter(), srv, "c"))
            assert r.checkpoint is not None
        finally:
            srv.stop_sync()
        if pid:
            _, status = os.waitpid(pid, 0)
            sys.exit(os.waitstatus_to_exitcode(status))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


# -- two instances, one client id ---------------------------------------------------------------


class Instance(Recorder):
    """A Recorder whose snapshot says which instance wrote it."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def snapshot(self) -> Any:
        return {"lastEventCursor": self.last_event_cursor, "instance": self.name}


def _two_instances(server: LocalMemoryService, **config: Any) -> Dict[str, Optional[BaseException]]:
    """Runs instances "a" and "b" with one client id while events flow; what each run ended
    with (None: still fine when stopped after a bounded time)."""

    async def main() -> Dict[str, Optional[BaseException]]:
        config.setdefault("checkpoint_interval", 0.05)
        runtimes = {n: Runtime(Instance(n), cfg("shared", after_cursor="start", **config), endpoint=server.endpoint) for n in "ab"}
        tasks = {n: asyncio.ensure_future(rt.run()) for n, rt in runtimes.items()}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(t.done() for t in tasks.values()):
            publish_entries(server, 5)
            await asyncio.sleep(0.05)
        for rt in runtimes.values():
            rt.stop()
        await asyncio.wait(list(tasks.values()), timeout=20)
        return {n: (t.exception() if t.done() else AssertionError("did not stop")) for n, t in tasks.items()}

    return run(main(), timeout=60)


def test_two_instances_with_one_client_id_are_detected(server):
    t0 = time.monotonic()
    ended = _two_instances(server)
    failed = {n: e for n, e in ended.items() if e is not None}
    assert failed, "both instances overwrote each other's checkpoints without a word"
    assert time.monotonic() - t0 < 15
    for e in failed.values():
        assert isinstance(e, ConfigurationError), repr(e)
        text = str(e)
        assert "another instance is writing checkpoints" in text and '"shared"' in text, text
        assert "detect_other_writers" in text, text
    # The one that went on owns the stored checkpoint.
    survivors = [n for n, e in ended.items() if e is None]
    if survivors:
        assert server.checkpoint("shared").value["instance"] == survivors[0]


def test_the_other_writer_check_can_be_switched_off(server):
    ended = _two_instances(server, detect_other_writers=False)
    assert ended == {"a": None, "b": None}


def test_one_instance_restarting_is_not_another_writer(server):
    for n in range(3):
        publish_entries(server, 3)
        p = Instance("same")
        run(run_until_handled(p, server, cfg("restarts", after_cursor="start", checkpoint_interval=0.05)), timeout=30)
        assert len(p.handled) == 3


def test_detect_other_writers_is_a_bool_setting():
    assert Config(client_id="x").detect_other_writers is True
    assert Config(client_id="x", detect_other_writers=False).detect_other_writers is False
    with pytest.raises(TypeError, match="detect_other_writers"):
        Config(client_id="x", detect_other_writers="no")  # type: ignore[arg-type]


def test_detect_other_writers_on_the_command_line_and_in_the_environment():
    from memory_service_processor._cli import build_parser
    from memory_service_processor._cli.errors import UsageError
    from memory_service_processor._cli.options import resolve_options

    def resolve(argv: Any, env: Dict[str, str]) -> Any:
        return resolve_options(build_parser().parse_args(["run", "x:Y", *argv]), env)["detect_other_writers"]

    assert resolve([], {}) is True
    assert resolve([], {"MEMORY_SERVICE_PROCESS_DETECT_OTHER_WRITERS": "false"}) is False
    assert resolve(["--detect-other-writers", "OFF"], {}) is False
    assert resolve(["--detect-other-writers", "yes"], {"MEMORY_SERVICE_PROCESS_DETECT_OTHER_WRITERS": "0"}) is True
    with pytest.raises(UsageError, match="MEMORY_SERVICE_PROCESS_DETECT_OTHER_WRITERS: must be true or false"):
        resolve([], {"MEMORY_SERVICE_PROCESS_DETECT_OTHER_WRITERS": "maybe"})
