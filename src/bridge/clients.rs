//! The native gRPC clients. Python counterpart: `_clients.py` (`GrpcEventClient`,
//! `GrpcCheckpointClient`, `GrpcEventStream` wrap these classes; `ConnectionOptions` builds a
//! `NativeConnection`).

use std::sync::Arc;

use pyo3::exceptions::{PyStopAsyncIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};
use tokio_util::sync::CancellationToken;

use super::config::{ConnectionConfig, SubscribeConfig};
use super::envelope::{unix_seconds, EventEnvelope};
use super::errors::to_py_err;
use super::foreign;
use super::runtime::{py_future, runtime};
use crate::grpc::{Connection, GrpcCheckpointClient, GrpcEventClient};
use crate::model::{Checkpoint, CheckpointClient, EventClient, EventStream};

/// A (lazily) connected channel with its auth metadata, shared by the native clients.
/// Built from a `ConnectionOptions`; never shows its secrets.
#[pyclass(frozen, module = "memory_service_processor._native")]
pub struct NativeConnection {
    conn: Connection,
    endpoint: String,
}

#[pymethods]
impl NativeConnection {
    #[new]
    fn new(options: ConnectionConfig) -> PyResult<Self> {
        let endpoint = options.endpoint().to_string();
        let opts = options.into_connect_options()?;
        let _guard = runtime()?.enter();
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
    inner: Arc<GrpcCheckpointClient>,
    endpoint: String,
}

/// `(client_id, content_type, value_json, updated_at_unix | None)`.
fn checkpoint_tuple(py: Python<'_>, cp: Checkpoint) -> PyResult<Py<PyAny>> {
    let updated: Py<PyAny> = match cp.updated_at {
        Some(t) => unix_seconds(t).into_pyobject(py)?.into_any().unbind(),
        None => py.None(),
    };
    let t = PyTuple::new(
        py,
        [
            PyString::new(py, &cp.client_id).into_any().unbind(),
            PyString::new(py, &cp.content_type).into_any().unbind(),
            PyString::new(py, &cp.value.to_string()).into_any().unbind(),
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
            inner: Arc::new(GrpcCheckpointClient::new(connection.conn.clone())),
            endpoint: connection.endpoint.clone(),
        }
    }

    /// Awaitable: `(client_id, content_type, value_json, updated_at_unix | None)`.
    fn get<'py>(&self, py: Python<'py>, client_id: String) -> PyResult<Bound<'py, PyAny>> {
        let client = self.inner.clone();
        py_future(py, async move {
            let cp = client.get(&client_id).await.map_err(to_py_err)?;
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
        let client = self.inner.clone();
        py_future(py, async move {
            let cp = client
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
    inner: Arc<GrpcEventClient>,
    endpoint: String,
}

#[pymethods]
impl NativeEventClient {
    #[new]
    fn new(connection: &NativeConnection) -> Self {
        NativeEventClient {
            inner: Arc::new(GrpcEventClient::new(connection.conn.clone())),
            endpoint: connection.endpoint.clone(),
        }
    }

    /// Awaitable: opens a subscription (a `SubscribeRequest`); resolves to a
    /// `NativeEventStream`.
    fn subscribe<'py>(
        &self,
        py: Python<'py>,
        request: SubscribeConfig,
    ) -> PyResult<Bound<'py, PyAny>> {
        let request = request.into_request()?;
        let client = self.inner.clone();
        py_future(py, async move {
            let stream = client.subscribe(request).await.map_err(to_py_err)?;
            Ok(NativeEventStream {
                inner: Arc::new(tokio::sync::Mutex::new(Some(stream))),
                closed: CancellationToken::new(),
            })
        })
    }

    fn __repr__(&self) -> String {
        format!("NativeEventClient(endpoint={:?})", self.endpoint)
    }
}

/// An open subscription: `await recv()` gives the next `EventEnvelope` or raises
/// `StopAsyncIteration` at the end of the stream or once `close()` was called.
#[pyclass(frozen, module = "memory_service_processor._native")]
pub struct NativeEventStream {
    inner: Arc<tokio::sync::Mutex<Option<Box<dyn EventStream>>>>,
    /// Fired by `close()`: ends a pending `recv()` at once, and every later one.
    closed: CancellationToken,
}

#[pymethods]
impl NativeEventStream {
    fn recv<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        let closed = self.closed.clone();
        py_future(py, async move {
            let stop = || Err(PyStopAsyncIteration::new_err(()));
            let mut guard = tokio::select! {
                biased;
                _ = closed.cancelled() => return stop(),
                g = inner.lock() => g,
            };
            let Some(stream) = guard.as_mut() else {
                return stop();
            };
            let next = tokio::select! {
                biased;
                _ = closed.cancelled() => None,
                r = stream.recv() => Some(r),
            };
            // Nothing that arrives after close() is handed out.
            let Some(next) = next.filter(|_| !closed.is_cancelled()) else {
                *guard = None;
                return stop();
            };
            match next {
                Ok(Some(ev)) => Ok(EventEnvelope::from_event(ev)),
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

    /// Closes the subscription without waiting: a pending `recv()` ends with
    /// `StopAsyncIteration` (and drops the stream); later ones too.
    fn close(&self) -> PyResult<()> {
        self.closed.cancel();
        if let Ok(mut guard) = self.inner.try_lock() {
            let rt = runtime()?;
            let _enter = rt.enter();
            guard.take();
        }
        Ok(())
    }
}

/// The loop's event client: a native one directly, any other object through Python.
pub fn event_client(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Arc<dyn EventClient>> {
    if let Ok(n) = obj.cast::<NativeEventClient>() {
        return Ok(n.get().inner.clone());
    }
    foreign::event_client(py, obj)
}

/// The loop's checkpoint client: a native one directly, any other object through Python.
pub fn checkpoint_client(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
) -> PyResult<Arc<dyn CheckpointClient>> {
    if let Ok(n) = obj.cast::<NativeCheckpointClient>() {
        return Ok(n.get().inner.clone());
    }
    foreign::checkpoint_client(py, obj)
}
