//! The PyO3 module `memory_service_processor._native`: the driver, the gRPC clients, the local
//! server and `EventEnvelope`, for the thin Python layer in `python/memory_service_processor`.
//!
//! GIL rules: Rust threads only take the GIL to complete Python futures and to log (pyo3-log);
//! no Rust lock is held while they do. Python-facing methods that may wait on a lock a Rust
//! thread holds for long, or on the network, release the GIL (`py.detach`) or return awaitables.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pyo3::exceptions::{PyRuntimeError, PyStopAsyncIteration, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::driver::{Action, Driver, StopHandle};
use crate::error::Error;
use crate::grpc::{ConnectOptions, Connection, GrpcCheckpointStore, GrpcEventSource};
use crate::model::{
    Checkpoint, CheckpointStore, Event, EventSource, EventStream, LoopConfig, Scope, StalePolicy,
    SubscribeRequest,
};
use crate::stats::Stats;

mod foreign;

fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// Native futures handed to Python that have not resolved yet, and when the last one did:
/// Python's `atexit` waits for them (see [`quiesce`]) so that no runtime thread completes an
/// asyncio future while the interpreter finalizes.
static INFLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static LAST_DONE: Mutex<Option<Instant>> = Mutex::new(None);

/// `future_into_py`, counted in [`INFLIGHT`].
fn py_future<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: std::future::Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    use std::sync::atomic::Ordering::SeqCst;
    INFLIGHT.fetch_add(1, SeqCst);
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            *lock(&LAST_DONE) = Some(Instant::now());
            INFLIGHT.fetch_sub(1, SeqCst);
        }
    }
    let done = Done;
    pyo3_async_runtimes::tokio::future_into_py(py, async move {
        let _done = done;
        fut.await
    })
}

/// Waits (GIL released, at most `timeout` seconds) until no native future is pending and the
/// last one resolved a moment ago. Registered with `atexit`.
#[pyfunction]
#[pyo3(signature = (timeout=1.0))]
fn quiesce(py: Python<'_>, timeout: f64) {
    let deadline = Instant::now() + Duration::from_secs_f64(timeout.clamp(0.0, 60.0));
    py.detach(|| loop {
        let pending = INFLIGHT.load(std::sync::atomic::Ordering::SeqCst);
        let recent = lock(&LAST_DONE)
            .map(|t| t.elapsed() < Duration::from_millis(50))
            .unwrap_or(false);
        if (pending == 0 && !recent) || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    });
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
static JSON_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static DATETIME_FROMTS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static UTC: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn errors_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    ERRORS
        .get_or_try_init(py, || {
            py.import("memory_service_processor.errors")
                .map(Bound::unbind)
        })
        .map(|m| m.bind(py))
}

fn make_error(py: Python<'_>, class: &str, message: String, kwargs: &[(&str, Py<PyAny>)]) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let cls = errors_module(py)?.getattr(class)?;
        let kw = PyDict::new(py);
        for (k, v) in kwargs {
            kw.set_item(*k, v)?;
        }
        let exc = cls.call((message.clone(),), Some(&kw))?;
        Ok(PyErr::from_value(exc))
    };
    build().unwrap_or_else(|e| e)
}

/// Maps a core error to the Python hierarchy of `memory_service_processor.errors`.
pub fn to_py_err(e: Error) -> PyErr {
    Python::attach(|py| to_py_err_in(py, e))
}

fn opt_str(py: Python<'_>, s: Option<String>) -> Py<PyAny> {
    match s {
        Some(s) => PyString::new(py, &s).into_any().unbind(),
        None => py.None(),
    }
}

fn s(py: Python<'_>, v: &str) -> Py<PyAny> {
    PyString::new(py, v).into_any().unbind()
}

pub fn to_py_err_in(py: Python<'_>, e: Error) -> PyErr {
    let message = e.to_string();
    match e {
        Error::ContentTypeMismatch { got, want } => make_error(
            py,
            "ContentTypeMismatchError",
            message,
            &[("got", s(py, &got)), ("want", s(py, &want))],
        ),
        Error::StaleCursor { cursor, reason } => make_error(
            py,
            "StaleCursorError",
            message,
            &[("cursor", opt_str(py, cursor)), ("reason", s(py, &reason))],
        ),
        Error::ServerStatus {
            method,
            code,
            message: server_message,
        } => make_error(
            py,
            "ServerStatusError",
            message,
            &[
                ("code", s(py, &code)),
                ("server_message", s(py, &server_message)),
                ("method", s(py, &method)),
            ],
        ),
        Error::Transient(_) => make_error(py, "TransientError", message, &[]),
        Error::CheckpointNotFound(id) => make_error(
            py,
            "CheckpointNotFoundError",
            message,
            &[("client_id", s(py, &id))],
        ),
        Error::Config(_) => make_error(py, "ConfigurationError", message, &[]),
        Error::Invalid(_) => PyValueError::new_err(message),
        Error::External { payload, .. } => match payload.downcast_ref::<foreign::PyErrBox>() {
            Some(b) => b.0.clone_ref(py),
            None => PyRuntimeError::new_err(message),
        },
    }
}

fn secs(d: f64, name: &str) -> PyResult<Duration> {
    if !d.is_finite() || d <= 0.0 {
        return Err(PyValueError::new_err(format!(
            "{name} must be a positive number of seconds, got {d}"
        )));
    }
    Duration::try_from_secs_f64(d)
        .map_err(|_| PyValueError::new_err(format!("{name} is out of range: {d}")))
}

fn to_unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

// ------------------------------------------------------------------------------------------
// EventEnvelope

/// An event as the processor sees it. Immutable; `data` is decoded from JSON on first access.
#[pyclass(frozen, module = "memory_service_processor", name = "EventEnvelope")]
pub struct PyEventEnvelope {
    event: String,
    kind: String,
    raw: Bytes,
    cursor: Option<String>,
    received: SystemTime,
    data: PyOnceLock<Py<PyAny>>,
}

impl PyEventEnvelope {
    pub fn from_event(e: Event) -> PyEventEnvelope {
        PyEventEnvelope {
            event: e.event,
            kind: e.kind,
            raw: e.data,
            cursor: e.cursor,
            received: e.received,
            data: PyOnceLock::new(),
        }
    }

    pub fn to_event(&self) -> Event {
        Event {
            event: self.event.clone(),
            kind: self.kind.clone(),
            data: self.raw.clone(),
            cursor: self.cursor.clone(),
            received: self.received,
        }
    }
}

fn extract_bytes(v: &Bound<'_, PyAny>, name: &str) -> PyResult<Bytes> {
    if let Ok(b) = v.cast::<PyBytes>() {
        return Ok(Bytes::copy_from_slice(b.as_bytes()));
    }
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(Bytes::copy_from_slice(s.to_cow()?.as_bytes()));
    }
    if let Ok(b) = v.extract::<Vec<u8>>() {
        return Ok(Bytes::from(b));
    }
    Err(PyTypeError::new_err(format!(
        "{name} must be bytes or str, not {}",
        v.get_type().name()?
    )))
}

fn extract_time(py: Python<'_>, t: Option<&Bound<'_, PyAny>>) -> PyResult<SystemTime> {
    let Some(t) = t.filter(|t| !t.is_none()) else {
        return Ok(SystemTime::now());
    };
    let ts: f64 = if let Ok(f) = t.extract::<f64>() {
        f
    } else {
        let datetime = py.import("datetime")?;
        if !t.is_instance(&datetime.getattr("datetime")?)? {
            return Err(PyTypeError::new_err("time must be a datetime or None"));
        }
        if t.getattr("tzinfo")?.is_none() {
            return Err(PyValueError::new_err(
                "time must be timezone-aware (e.g. datetime.now(timezone.utc))",
            ));
        }
        t.call_method0("timestamp")?.extract()?
    };
    Ok(UNIX_EPOCH + Duration::from_secs_f64(ts.max(0.0)))
}

#[pymethods]
impl PyEventEnvelope {
    #[new]
    #[pyo3(signature = (event, kind, raw_data, cursor=None, time=None))]
    fn new(
        py: Python<'_>,
        event: String,
        kind: String,
        raw_data: &Bound<'_, PyAny>,
        cursor: Option<String>,
        time: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        Ok(PyEventEnvelope {
            event,
            kind,
            raw: extract_bytes(raw_data, "raw_data")?,
            cursor,
            received: extract_time(py, time)?,
            data: PyOnceLock::new(),
        })
    }

    /// The action: created, updated, appended, ...
    #[getter]
    fn event(&self) -> &str {
        &self.event
    }

    /// The resource: conversation, entry, response, membership (or stream, for signals).
    #[getter]
    fn kind(&self) -> &str {
        &self.kind
    }

    /// The opaque durable position of this event, if the server sent one.
    #[getter]
    fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    /// The payload bytes exactly as received.
    #[getter]
    fn raw_data<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.raw)
    }

    /// The decoded JSON payload (decoded once, on first access).
    #[getter]
    fn data(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.data
            .get_or_try_init(py, || {
                let loads = JSON_LOADS.get_or_try_init(py, || {
                    py.import("json")?.getattr("loads").map(Bound::unbind)
                })?;
                loads
                    .bind(py)
                    .call1((PyBytes::new(py, &self.raw),))
                    .map(Bound::unbind)
                    .map_err(|e| {
                        let msg = format!(
                            "event data at cursor {} ({}/{}) is not valid JSON: {}",
                            self.cursor.as_deref().unwrap_or("<none>"),
                            self.kind,
                            self.event,
                            e.value(py)
                        );
                        let err = PyValueError::new_err(msg);
                        err.set_cause(py, Some(e));
                        err
                    })
            })
            .map(|v| v.clone_ref(py))
    }

    /// Time of receipt (UTC); the wire carries no event time.
    #[getter]
    fn time(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let utc = UTC.get_or_try_init(py, || {
            py.import("datetime")?
                .getattr("timezone")?
                .getattr("utc")
                .map(Bound::unbind)
        })?;
        let from_ts = DATETIME_FROMTS.get_or_try_init(py, || {
            py.import("datetime")?
                .getattr("datetime")?
                .getattr("fromtimestamp")
                .map(Bound::unbind)
        })?;
        from_ts
            .bind(py)
            .call1((to_unix(self.received), utc.bind(py)))
            .map(Bound::unbind)
    }

    fn __repr__(&self) -> String {
        format!(
            "EventEnvelope(event={:?}, kind={:?}, cursor={}, raw_data=<{} bytes>)",
            self.event,
            self.kind,
            self.cursor
                .as_deref()
                .map(|c| format!("{c:?}"))
                .unwrap_or_else(|| "None".into()),
            self.raw.len()
        )
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        match other.cast::<PyEventEnvelope>() {
            Ok(o) => {
                let o = o.get();
                self.event == o.event
                    && self.kind == o.kind
                    && self.raw == o.raw
                    && self.cursor == o.cursor
                    && self.received == o.received
            }
            Err(_) => false,
        }
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&self.event, &self.kind, &self.raw, &self.cursor).hash(&mut h);
        h.finish()
    }
}

// ------------------------------------------------------------------------------------------
// Connection options and the gRPC clients

/// A (lazily) connected channel with its auth metadata, shared by the native clients.
/// Built from `ConnectionOptions`; never shows its secrets.
#[pyclass(frozen, module = "memory_service_processor._native")]
pub struct NativeConnection {
    conn: Connection,
    endpoint: String,
}

#[pymethods]
impl NativeConnection {
    #[new]
    #[pyo3(signature = (endpoint, api_key=None, bearer_token=None, client_id=None, tls_ca_file=None, tls_server_name=None, keepalive_interval=20.0, keepalive_timeout=10.0, connect_timeout=10.0, request_timeout=30.0, max_message_size=4194304))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        endpoint: String,
        api_key: Option<String>,
        bearer_token: Option<String>,
        client_id: Option<String>,
        tls_ca_file: Option<PathBuf>,
        tls_server_name: Option<String>,
        keepalive_interval: f64,
        keepalive_timeout: f64,
        connect_timeout: f64,
        request_timeout: f64,
        max_message_size: usize,
    ) -> PyResult<Self> {
        if max_message_size == 0 {
            return Err(PyValueError::new_err("max_message_size must be at least 1"));
        }
        let opts = ConnectOptions {
            endpoint: endpoint.clone(),
            api_key,
            bearer_token,
            client_id,
            tls_ca_file,
            tls_server_name,
            keepalive_interval: secs(keepalive_interval, "keepalive_interval")?,
            keepalive_timeout: secs(keepalive_timeout, "keepalive_timeout")?,
            connect_timeout: secs(connect_timeout, "connect_timeout")?,
            request_timeout: secs(request_timeout, "request_timeout")?,
            max_message_size,
        };
        let _guard = runtime().enter();
        let conn = Connection::new(&opts).map_err(to_py_err)?;
        Ok(NativeConnection { conn, endpoint })
    }

    fn __repr__(&self) -> String {
        format!("NativeConnection(endpoint={:?})", self.endpoint)
    }
}

/// Native `AdminCheckpointService` client (wrapped by `GrpcCheckpointClient`).
#[pyclass(frozen, module = "memory_service_processor._native")]
pub struct NativeCheckpointClient {
    inner: Arc<GrpcCheckpointStore>,
    endpoint: String,
}

fn checkpoint_tuple(py: Python<'_>, cp: Checkpoint) -> PyResult<Py<PyAny>> {
    let updated: Py<PyAny> = match cp.updated_at {
        Some(t) => to_unix(t).into_pyobject(py)?.into_any().unbind(),
        None => py.None(),
    };
    let t = PyTuple::new(
        py,
        [
            s(py, &cp.client_id),
            s(py, &cp.content_type),
            s(py, &cp.value.to_string()),
            updated,
        ],
    )?;
    Ok(t.into_any().unbind())
}

#[pymethods]
impl NativeCheckpointClient {
    #[new]
    fn new(connection: &NativeConnection) -> Self {
        NativeCheckpointClient {
            inner: Arc::new(GrpcCheckpointStore::new(connection.conn.clone())),
            endpoint: connection.endpoint.clone(),
        }
    }

    /// Awaitable: `(client_id, content_type, value_json, updated_at_unix | None)`.
    fn get<'py>(&self, py: Python<'py>, client_id: String) -> PyResult<Bound<'py, PyAny>> {
        let store = self.inner.clone();
        py_future(py, async move {
            let cp = store.get(&client_id).await.map_err(to_py_err)?;
            Python::attach(|py| checkpoint_tuple(py, cp))
        })
    }

    /// Awaitable: stores `value_json` (JSON text); returns the stored checkpoint tuple.
    fn put<'py>(
        &self,
        py: Python<'py>,
        client_id: String,
        content_type: String,
        value_json: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let value: serde_json::Value = serde_json::from_str(&value_json).map_err(|e| {
            PyValueError::new_err(format!("checkpoint value is not valid JSON: {e}"))
        })?;
        let store = self.inner.clone();
        py_future(py, async move {
            let cp = store
                .put(&client_id, &content_type, &value)
                .await
                .map_err(to_py_err)?;
            Python::attach(|py| checkpoint_tuple(py, cp))
        })
    }

    fn __repr__(&self) -> String {
        format!("NativeCheckpointClient(endpoint={:?})", self.endpoint)
    }
}

/// Native `EventStreamService` client (wrapped by `GrpcEventClient`).
#[pyclass(frozen, module = "memory_service_processor._native")]
pub struct NativeEventClient {
    inner: Arc<GrpcEventSource>,
    endpoint: String,
}

fn subscribe_request(d: &Bound<'_, PyDict>) -> PyResult<SubscribeRequest> {
    let list = |k: &str| -> PyResult<Vec<String>> {
        match d.get_item(k)? {
            Some(v) if !v.is_none() => v.extract(),
            _ => Ok(Vec::new()),
        }
    };
    let opt = |k: &str| -> PyResult<Option<String>> {
        match d.get_item(k)? {
            Some(v) if !v.is_none() => v.extract().map(Some),
            _ => Ok(None),
        }
    };
    let scope = match opt("scope")? {
        None => Scope::Admin,
        Some(s) => Scope::parse(&s).ok_or_else(|| {
            PyValueError::new_err(format!("scope must be \"admin\" or \"user\", got {s:?}"))
        })?,
    };
    Ok(SubscribeRequest {
        kinds: list("kinds")?,
        detail: opt("detail")?,
        after_cursor: opt("after_cursor")?,
        scope,
        justification: opt("justification")?,
        conversation_ids: list("conversation_ids")?,
        entry_channels: list("entry_channels")?,
        entry_content_types: list("entry_content_types")?,
        entry_roles: list("entry_roles")?,
    })
}

#[pymethods]
impl NativeEventClient {
    #[new]
    fn new(connection: &NativeConnection) -> Self {
        NativeEventClient {
            inner: Arc::new(GrpcEventSource::new(connection.conn.clone())),
            endpoint: connection.endpoint.clone(),
        }
    }

    /// Awaitable: opens a subscription (a dict of `SubscribeRequest` fields); resolves to a
    /// `NativeEventStream`.
    fn subscribe<'py>(
        &self,
        py: Python<'py>,
        request: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let req = subscribe_request(request)?;
        let source = self.inner.clone();
        py_future(py, async move {
            let stream = source.subscribe(req).await.map_err(to_py_err)?;
            Ok(NativeEventStream {
                inner: Arc::new(tokio::sync::Mutex::new(Some(stream))),
            })
        })
    }

    fn __repr__(&self) -> String {
        format!("NativeEventClient(endpoint={:?})", self.endpoint)
    }
}

/// An open subscription: `await recv()` gives the next `EventEnvelope` or raises
/// `StopAsyncIteration` at the end of the stream.
#[pyclass(frozen, module = "memory_service_processor._native")]
pub struct NativeEventStream {
    inner: Arc<tokio::sync::Mutex<Option<Box<dyn EventStream>>>>,
}

#[pymethods]
impl NativeEventStream {
    fn recv<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        py_future(py, async move {
            let mut guard = inner.lock().await;
            let Some(stream) = guard.as_mut() else {
                return Err(PyStopAsyncIteration::new_err(()));
            };
            match stream.recv().await {
                Ok(Some(ev)) => Ok(PyEventEnvelope::from_event(ev)),
                Ok(None) => {
                    *guard = None;
                    Err(PyStopAsyncIteration::new_err(()))
                }
                Err(e) => {
                    *guard = None;
                    Err(to_py_err(e))
                }
            }
        })
    }

    /// Closes the subscription.
    fn close(&self, py: Python<'_>) {
        let inner = self.inner.clone();
        py.detach(|| {
            runtime().block_on(async move {
                inner.lock().await.take();
            })
        });
    }
}

// ------------------------------------------------------------------------------------------
// The driver

pub const A_HANDLE: u8 = 0;
pub const A_SIGNAL: u8 = 1;
pub const A_FLUSH: u8 = 2;
pub const A_SNAPSHOT: u8 = 3;
pub const A_WAIT: u8 = 4;
pub const A_DONE: u8 = 5;

/// The loop, driven from Python: `next_action()` says what the processor must do next.
#[pyclass(frozen, module = "memory_service_processor._native")]
pub struct Core {
    driver: Mutex<Driver>,
    stop: StopHandle,
    stats: Arc<Stats>,
    client_id: String,
}

fn source_from(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Arc<dyn EventSource>> {
    if let Ok(n) = obj.cast::<NativeEventClient>() {
        return Ok(n.get().inner.clone());
    }
    foreign::event_source(py, obj)
}

fn store_from(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Arc<dyn CheckpointStore>> {
    if let Ok(n) = obj.cast::<NativeCheckpointClient>() {
        return Ok(n.get().inner.clone());
    }
    foreign::checkpoint_store(py, obj)
}

#[pymethods]
impl Core {
    #[new]
    #[pyo3(signature = (*, wake_fd, events, checkpoints, content_type, client_id, kinds, conversation_ids, entry_channels, entry_content_types, entry_roles, scope, after_cursor, justification, checkpoint_interval, checkpoint_every, reconnect_min, reconnect_max, stale_cursor, buffer_size, max_batch, stop_timeout))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        wake_fd: i32,
        events: &Bound<'_, PyAny>,
        checkpoints: &Bound<'_, PyAny>,
        content_type: String,
        client_id: String,
        kinds: Vec<String>,
        conversation_ids: Vec<String>,
        entry_channels: Vec<String>,
        entry_content_types: Vec<String>,
        entry_roles: Vec<String>,
        scope: String,
        after_cursor: Option<String>,
        justification: Option<String>,
        checkpoint_interval: f64,
        checkpoint_every: u64,
        reconnect_min: f64,
        reconnect_max: f64,
        stale_cursor: String,
        buffer_size: usize,
        max_batch: usize,
        stop_timeout: f64,
    ) -> PyResult<Self> {
        let scope = Scope::parse(&scope).ok_or_else(|| {
            to_py_err_in(
                py,
                Error::Config(format!(
                    "scope must be \"admin\" or \"user\", got {scope:?}"
                )),
            )
        })?;
        let stale = StalePolicy::parse(&stale_cursor).ok_or_else(|| {
            to_py_err_in(
                py,
                Error::Config(format!(
                    "stale_cursor must be \"fail\", \"restart\" or \"tail\", got {stale_cursor:?}"
                )),
            )
        })?;
        let cfg = LoopConfig {
            client_id: client_id.clone(),
            kinds,
            conversation_ids,
            entry_channels,
            entry_content_types,
            entry_roles,
            scope,
            after_cursor: after_cursor.filter(|c| !c.is_empty()),
            justification,
            checkpoint_interval: secs(checkpoint_interval, "checkpoint_interval")?,
            checkpoint_every,
            reconnect_min: secs(reconnect_min, "reconnect_min")?,
            reconnect_max: secs(reconnect_max, "reconnect_max")?,
            stale_cursor: stale,
            buffer_size,
            max_batch,
            stop_timeout: secs(stop_timeout, "stop_timeout")?,
        };
        let events = source_from(py, events)?;
        let checkpoints = store_from(py, checkpoints)?;
        let driver = Driver::new(
            cfg,
            events,
            checkpoints,
            content_type,
            runtime().handle().clone(),
        )
        .map_err(|e| to_py_err_in(py, e))?;
        // Wake-ups reach Python as a byte on this socket (the caller's socketpair end; we keep
        // our own duplicate of it).
        let socket = {
            use std::os::fd::BorrowedFd;
            if wake_fd < 0 {
                return Err(PyValueError::new_err(
                    "wake_fd must be an open socket descriptor",
                ));
            }
            // SAFETY: the caller passes the descriptor of a socket it keeps open for the
            // duration of this call; we only duplicate it.
            let borrowed = unsafe { BorrowedFd::borrow_raw(wake_fd) };
            let owned = borrowed
                .try_clone_to_owned()
                .map_err(|e| PyValueError::new_err(format!("wake_fd: {e}")))?;
            std::os::unix::net::UnixStream::from(owned)
        };
        driver
            .waker()
            .attach_socket(socket)
            .map_err(|e| PyValueError::new_err(format!("wake_fd: {e}")))?;
        Ok(Core {
            stop: driver.stop_handle(),
            stats: driver.stats.clone(),
            driver: Mutex::new(driver),
            client_id,
        })
    }

    /// Awaitable: fetches the checkpoint (retrying transient errors); resolves to the stored
    /// value as JSON text, or None on a first run.
    fn load<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let fut = lock(&self.driver).load_future();
        py_future(py, async move {
            let cp = fut.await.map_err(to_py_err)?;
            Ok(LoadResult {
                text: cp.as_ref().map(|c| c.value.to_string()),
                checkpoint: Mutex::new(cp),
            })
        })
    }

    /// Starts the network side; `loaded` is what `load()` resolved to.
    #[pyo3(signature = (loaded=None))]
    fn start(&self, loaded: Option<&Bound<'_, LoadResult>>) -> PyResult<()> {
        let cp = loaded.and_then(|l| l.get().take());
        lock(&self.driver).start(cp.as_ref()).map_err(to_py_err)
    }

    /// `(code, payload)`: see the `A_*` constants. Raises the run's error at the end.
    fn next_action(&self, py: Python<'_>) -> PyResult<(u8, Py<PyAny>)> {
        let action = lock(&self.driver).next_action(Instant::now());
        Ok(match action {
            Action::Handle(batch) => {
                let items: Vec<Py<PyEventEnvelope>> = batch
                    .into_iter()
                    .map(|e| Py::new(py, PyEventEnvelope::from_event(e)))
                    .collect::<PyResult<_>>()?;
                (A_HANDLE, PyList::new(py, items)?.into_any().unbind())
            }
            Action::Signal(e) => (
                A_SIGNAL,
                Py::new(py, PyEventEnvelope::from_event(e))?.into_any(),
            ),
            Action::Flush => (A_FLUSH, py.None()),
            Action::Snapshot => (A_SNAPSHOT, py.None()),
            Action::Wait(deadline) | Action::WaitWriter(deadline) => {
                let t = deadline
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64();
                (A_WAIT, t.into_pyobject(py)?.into_any().unbind())
            }
            Action::Done(Ok(())) => (A_DONE, py.None()),
            Action::Done(Err(e)) => return Err(to_py_err_in(py, e)),
        })
    }

    /// The batch from the last `A_HANDLE` was handled.
    fn handled(&self) {
        lock(&self.driver).handled();
    }

    fn flushed(&self) {
        lock(&self.driver).flushed();
    }

    /// Hands the processor's snapshot (JSON text) to the checkpoint writer.
    fn submit_snapshot(&self, py: Python<'_>, json: String) -> PyResult<()> {
        lock(&self.driver)
            .submit_snapshot(json)
            .map_err(|e| to_py_err_in(py, e))
    }

    /// The processor failed: stop without writing its state.
    fn abort(&self) {
        lock(&self.driver).abort();
    }

    /// Thread-safe, idempotent graceful stop.
    fn stop(&self) {
        self.stop.stop();
    }

    fn stop_requested(&self) -> bool {
        self.stop.is_stopped()
    }

    /// Counters and gauges.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let st = &self.stats;
        d.set_item("client_id", &self.client_id)?;
        d.set_item("events_received", Stats::get(&st.events_received))?;
        d.set_item("events_handled", Stats::get(&st.events_handled))?;
        d.set_item("events_skipped", Stats::get(&st.events_skipped))?;
        d.set_item("checkpoints_written", Stats::get(&st.checkpoints_written))?;
        d.set_item("checkpoints_failed", Stats::get(&st.checkpoints_failed))?;
        d.set_item("checkpoints_skipped", Stats::get(&st.checkpoints_skipped))?;
        d.set_item("reconnects", Stats::get(&st.reconnects))?;
        d.set_item("batches", Stats::get(&st.batches))?;
        d.set_item("phase", st.phase().name())?;
        d.set_item("last_cursor", lock(&st.last_cursor).clone())?;
        let age = lock(&st.last_checkpoint_at)
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map(|d| d.as_secs_f64());
        d.set_item("last_checkpoint_age", age)?;
        let depth = py.detach(|| lock(&self.driver).buffer_depth());
        d.set_item("buffer_depth", depth)?;
        let handled = Stats::get(&st.events_handled);
        let total_ns = Stats::get(&st.handle_ns_total);
        d.set_item(
            "handle_seconds_mean",
            if handled > 0 {
                total_ns as f64 / handled as f64 / 1e9
            } else {
                0.0
            },
        )?;
        d.set_item(
            "handle_seconds_max",
            Stats::get(&st.handle_ns_max) as f64 / 1e9,
        )?;
        Ok(d)
    }
}

/// What `Core.load()` resolved to: `text` is the stored value as JSON (None on a first run).
#[pyclass(frozen, module = "memory_service_processor._native")]
pub struct LoadResult {
    #[pyo3(get)]
    text: Option<String>,
    checkpoint: Mutex<Option<Checkpoint>>,
}

impl LoadResult {
    fn take(&self) -> Option<Checkpoint> {
        lock(&self.checkpoint).take()
    }
}

// ------------------------------------------------------------------------------------------
// The local server

/// Native half of `memory_service_processor.testing.LocalMemoryService`.
#[pyclass(frozen, module = "memory_service_processor._native")]
pub struct NativeServer {
    inner: crate::server::LocalMemoryService,
}

#[pymethods]
impl NativeServer {
    #[new]
    #[pyo3(signature = (host="127.0.0.1", port=0, unix_path=None, api_keys=None, queue_capacity=65536, data_dir=None, tls_cert_file=None, tls_key_file=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        host: &str,
        port: u16,
        unix_path: Option<PathBuf>,
        api_keys: Option<HashMap<String, String>>,
        queue_capacity: usize,
        data_dir: Option<PathBuf>,
        tls_cert_file: Option<PathBuf>,
        tls_key_file: Option<PathBuf>,
    ) -> PyResult<Self> {
        let tls_identity = match (tls_cert_file, tls_key_file) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                let read = |p: &PathBuf| {
                    std::fs::read(p).map_err(|e| {
                        PyValueError::new_err(format!("cannot read {}: {e}", p.display()))
                    })
                };
                Some((read(&c)?, read(&k)?))
            }
            _ => {
                return Err(PyValueError::new_err(
                    "tls_cert_file and tls_key_file go together",
                ))
            }
        };
        let api_keys = match api_keys {
            None => None,
            Some(m) => {
                let mut out = HashMap::new();
                for (k, role) in m {
                    let r = match role.to_ascii_lowercase().as_str() {
                        "admin" => crate::server::Role::Admin,
                        "user" => crate::server::Role::User,
                        other => {
                            return Err(PyValueError::new_err(format!(
                                "api key roles must be \"admin\" or \"user\", got {other:?}"
                            )))
                        }
                    };
                    out.insert(k, r);
                }
                Some(out)
            }
        };
        let opts = crate::server::ServerOptions {
            host: host.to_string(),
            port,
            unix_path,
            api_keys,
            queue_capacity,
            data_dir,
            tls_identity,
        };
        let inner = py
            .detach(|| crate::server::LocalMemoryService::new(opts))
            .map_err(|e| to_py_err_in(py, e))?;
        Ok(NativeServer { inner })
    }

    /// Binds and serves; returns the endpoint. Blocks briefly (GIL released).
    fn start(&self, py: Python<'_>) -> PyResult<String> {
        let inner = self.inner.clone();
        py.detach(|| runtime().block_on(inner.start()))
            .map_err(|e| to_py_err_in(py, e))
    }

    /// Stops serving (open streams get UNAVAILABLE); keeps the outbox and checkpoints.
    fn stop(&self, py: Python<'_>) {
        let inner = self.inner.clone();
        py.detach(|| runtime().block_on(inner.stop()));
    }

    #[getter]
    fn endpoint(&self) -> Option<String> {
        self.inner.endpoint()
    }

    #[getter]
    fn port(&self) -> u16 {
        self.inner.port()
    }

    /// `events`: a list of `(kind, event, data_bytes)`; returns their cursors.
    fn publish_many(&self, py: Python<'_>, events: Vec<(String, String, Vec<u8>)>) -> Vec<String> {
        let events: Vec<(String, String, Bytes)> = events
            .into_iter()
            .map(|(k, e, d)| (k, e, Bytes::from(d)))
            .collect();
        py.detach(|| self.inner.publish_many(events))
    }

    fn purge(&self, py: Python<'_>, through: u64) {
        py.detach(|| self.inner.purge(through))
    }

    fn invalidate(&self, py: Python<'_>, reason: String) {
        py.detach(|| self.inner.invalidate(&reason))
    }

    fn evict_all(&self, py: Python<'_>, reason: String) {
        py.detach(|| self.inner.evict_all(&reason))
    }

    fn drop_streams(&self, py: Python<'_>, message: String) {
        py.detach(|| self.inner.drop_streams(&message))
    }

    fn fail(
        &self,
        py: Python<'_>,
        rpc: String,
        code: String,
        count: usize,
        message: String,
    ) -> PyResult<()> {
        py.detach(|| self.inner.fail(&rpc, &code, count, &message))
            .map_err(|e| to_py_err_in(py, e))
    }

    fn set_paused(&self, py: Python<'_>, paused: bool) {
        py.detach(|| self.inner.set_paused(paused))
    }

    fn subscriber_count(&self, py: Python<'_>) -> usize {
        py.detach(|| self.inner.subscriber_count())
    }

    fn outbox_range(&self, py: Python<'_>) -> (u64, u64) {
        py.detach(|| self.inner.outbox_range())
    }

    /// A list of `(method, {header: value}, after_cursor, client_id)`.
    #[allow(clippy::type_complexity)]
    fn requests(
        &self,
        py: Python<'_>,
    ) -> Vec<(
        String,
        HashMap<String, String>,
        Option<String>,
        Option<String>,
    )> {
        py.detach(|| self.inner.requests())
            .into_iter()
            .map(|r| {
                (
                    r.method,
                    r.metadata.into_iter().collect(),
                    r.after_cursor,
                    r.client_id,
                )
            })
            .collect()
    }

    /// `(content_type, value_json, updated_at_unix)` or None.
    fn get_checkpoint(&self, py: Python<'_>, client_id: String) -> Option<(String, String, f64)> {
        py.detach(|| self.inner.get_checkpoint(&client_id))
            .map(|(ct, v, t)| (ct, v.to_string(), to_unix(t)))
    }

    fn put_checkpoint(
        &self,
        py: Python<'_>,
        client_id: String,
        content_type: String,
        value_json: String,
    ) -> PyResult<()> {
        let v: serde_json::Value = serde_json::from_str(&value_json).map_err(|e| {
            PyValueError::new_err(format!("checkpoint value is not valid JSON: {e}"))
        })?;
        py.detach(|| self.inner.put_checkpoint(&client_id, &content_type, v));
        Ok(())
    }

    fn delete_checkpoint(&self, py: Python<'_>, client_id: String) -> bool {
        py.detach(|| self.inner.delete_checkpoint(&client_id))
    }
}

/// Benchmark helper: a pure-Rust client that only reads the stream (no Python per event).
/// Subscribes after `after_cursor`, reads until `count` business events arrived, and returns
/// the seconds that took (from subscribe to the last event). The GIL is released throughout.
#[pyfunction]
#[pyo3(signature = (endpoint, count, after_cursor="start", api_key=None))]
fn bench_raw_read(
    py: Python<'_>,
    endpoint: String,
    count: u64,
    after_cursor: &str,
    api_key: Option<String>,
) -> PyResult<f64> {
    let after_cursor = after_cursor.to_string();
    let opts = ConnectOptions {
        endpoint,
        api_key,
        ..ConnectOptions::default()
    };
    let conn = {
        let _guard = runtime().enter();
        Connection::new(&opts).map_err(to_py_err)?
    };
    let result = py.detach(|| {
        runtime().block_on(async move {
            let source = GrpcEventSource::new(conn);
            let started = Instant::now();
            let mut stream = source
                .subscribe(SubscribeRequest {
                    kinds: Vec::new(),
                    detail: Some("full".into()),
                    after_cursor: Some(after_cursor),
                    scope: Scope::Admin,
                    justification: None,
                    conversation_ids: Vec::new(),
                    entry_channels: Vec::new(),
                    entry_content_types: Vec::new(),
                    entry_roles: Vec::new(),
                })
                .await?;
            let mut seen = 0u64;
            while seen < count {
                match stream.recv().await? {
                    Some(ev) if !ev.is_signal() => seen += 1,
                    Some(_) => {}
                    None => {
                        return Err(Error::Invalid(format!(
                            "stream ended after {seen} of {count} events"
                        )))
                    }
                }
            }
            Ok(started.elapsed().as_secs_f64())
        })
    });
    result.map_err(|e| to_py_err_in(py, e))
}

/// Refreshes the logging bridge's cache of Python logger levels.
#[pyfunction]
fn reset_log_cache() {
    if let Some(h) = LOG_HANDLE.get() {
        h.reset();
    }
}

/// Stops forwarding Rust log records to Python (registered with `atexit`): once the
/// interpreter finalizes, a Rust thread must never try to take the GIL to log.
#[pyfunction]
fn shutdown_logging() {
    LOGGING_ON.store(false, std::sync::atomic::Ordering::SeqCst);
}

static LOG_HANDLE: std::sync::OnceLock<pyo3_log::ResetHandle> = std::sync::OnceLock::new();
static LOGGING_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// pyo3-log's bridge, switched off by [`shutdown_logging`].
struct GuardedLogger(pyo3_log::Logger);

impl log::Log for GuardedLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        LOGGING_ON.load(std::sync::atomic::Ordering::Relaxed) && self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if LOGGING_ON.load(std::sync::atomic::Ordering::Relaxed) {
            self.0.log(record);
        }
    }

    fn flush(&self) {}
}

fn install_logging(py: Python<'_>) -> PyResult<()> {
    let logger = pyo3_log::Logger::new(py, pyo3_log::Caching::LoggersAndLevels)?
        .filter(log::LevelFilter::Debug);
    let handle = logger.reset_handle();
    if log::set_boxed_logger(Box::new(GuardedLogger(logger))).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
        let _ = LOG_HANDLE.set(handle);
    }
    Ok(())
}

/// Our threads never take SIGINT/SIGTERM: the kernel then delivers them to a Python thread,
/// which runs the Python-level handler promptly (a signal caught by one of our threads would
/// only set Python's flag while the main thread sleeps in the event loop).
fn block_process_signals() {
    // SAFETY: plain libc calls on a zeroed, initialised signal set owned by this frame.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let workers = std::env::var("MEMORY_SERVICE_PROCESSOR_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(2);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(workers)
        .thread_name("msp-core")
        .on_thread_start(block_process_signals)
        .enable_all();
    pyo3_async_runtimes::tokio::init(builder);
    install_logging(m.py())?;
    // Checked against the package metadata on import (python/memory_service_processor/_version.py).
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    let debug = cfg!(debug_assertions);
    m.add("BUILD_PROFILE", if debug { "debug" } else { "release" })?;
    m.add_class::<PyEventEnvelope>()?;
    m.add_class::<NativeConnection>()?;
    m.add_class::<NativeCheckpointClient>()?;
    m.add_class::<NativeEventClient>()?;
    m.add_class::<NativeEventStream>()?;
    m.add_class::<Core>()?;
    m.add_class::<LoadResult>()?;
    m.add_class::<NativeServer>()?;
    m.add_function(wrap_pyfunction!(reset_log_cache, m)?)?;
    m.add_function(wrap_pyfunction!(shutdown_logging, m)?)?;
    m.add_function(wrap_pyfunction!(quiesce, m)?)?;
    m.add_function(wrap_pyfunction!(bench_raw_read, m)?)?;
    m.add("A_HANDLE", A_HANDLE)?;
    m.add("A_SIGNAL", A_SIGNAL)?;
    m.add("A_FLUSH", A_FLUSH)?;
    m.add("A_SNAPSHOT", A_SNAPSHOT)?;
    m.add("A_WAIT", A_WAIT)?;
    m.add("A_DONE", A_DONE)?;
    m.add(
        "DEFAULT_MAX_MESSAGE_SIZE",
        crate::grpc::DEFAULT_MAX_MESSAGE_SIZE,
    )?;
    Ok(())
}
