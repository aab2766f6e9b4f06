//! Python objects as the loop's clients (`Runtime(..., events=..., checkpoints=...)`): their
//! coroutines run on the event loop that runs the processor, driven by the same Rust loop.
//! Python counterpart: the `EventClient` / `CheckpointClient` protocols of `_model.py`.
//!
//! Errors they raise are classified: `CheckpointNotFoundError` on `get` is a first run,
//! `TransientError` (or any `MemoryServiceProcessorError` marked transient) is retried with
//! backoff, anything else is fatal and reaches the caller unchanged.

use std::sync::Arc;

use async_trait::async_trait;
use pyo3::exceptions::{PyStopAsyncIteration, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_async_runtimes::TaskLocals;

use super::envelope::EventEnvelope;
use super::errors::is_instance_of;
use crate::error::{Error, Result};
use crate::jsonvalue::{depth, MAX_DEPTH};
use crate::model::{
    Checkpoint, CheckpointClient, Event, EventClient, EventStream, Scope, SubscribeRequest,
};

/// A Python exception carried through the core unchanged.
pub struct PyErrBox(pub PyErr);

fn classify(py: Python<'_>, e: PyErr) -> Error {
    let transient = is_instance_of(py, &e, "TransientError");
    let message = e.to_string();
    Error::External {
        message,
        transient,
        payload: Arc::new(PyErrBox(e)),
    }
}

fn require(obj: &Bound<'_, PyAny>, methods: &[&str], what: &str) -> PyResult<()> {
    for m in methods {
        if !obj.hasattr(*m)? {
            return Err(PyTypeError::new_err(format!(
                "{what} must implement async {m}(); {} has no attribute {m:?}",
                obj.get_type().name()?
            )));
        }
    }
    Ok(())
}

static ANCHOR: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();

/// Runs a client's awaitable on the processor's event loop, wrapped so that asyncio cannot
/// garbage-collect its task while it waits (see `_aio.anchor`).
fn schedule<'py>(
    locals: &TaskLocals,
    awaitable: Bound<'py, PyAny>,
) -> PyResult<impl std::future::Future<Output = PyResult<Py<PyAny>>> + Send> {
    let py = awaitable.py();
    let anchor = ANCHOR.get_or_try_init(py, || {
        py.import("memory_service_processor._aio")?
            .getattr("anchor")
            .map(Bound::unbind)
    })?;
    let wrapped = anchor.bind(py).call1((awaitable,))?;
    pyo3_async_runtimes::into_future_with_locals(locals, wrapped)
}

fn locals(py: Python<'_>) -> PyResult<TaskLocals> {
    pyo3_async_runtimes::tokio::get_current_locals(py)
}

pub fn event_client(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Arc<dyn EventClient>> {
    require(obj, &["subscribe"], "events")?;
    Ok(Arc::new(PyEventClient {
        obj: obj.clone().unbind(),
        locals: locals(py)?,
    }))
}

pub fn checkpoint_client(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
) -> PyResult<Arc<dyn CheckpointClient>> {
    require(obj, &["get", "put"], "checkpoints")?;
    Ok(Arc::new(PyCheckpointClient {
        obj: obj.clone().unbind(),
        locals: locals(py)?,
    }))
}

struct PyEventClient {
    obj: Py<PyAny>,
    locals: TaskLocals,
}

fn request_object<'py>(py: Python<'py>, r: &SubscribeRequest) -> PyResult<Bound<'py, PyAny>> {
    let kw = PyDict::new(py);
    kw.set_item("kinds", r.kinds.clone())?;
    kw.set_item("detail", r.detail.clone())?;
    kw.set_item("after_cursor", r.after_cursor.clone())?;
    kw.set_item(
        "scope",
        match r.scope {
            Scope::Admin => "admin",
            Scope::User => "user",
        },
    )?;
    kw.set_item("justification", r.justification.clone())?;
    kw.set_item("conversation_ids", r.conversation_ids.clone())?;
    kw.set_item("entry_channels", r.entry_channels.clone())?;
    kw.set_item("entry_content_types", r.entry_content_types.clone())?;
    kw.set_item("entry_roles", r.entry_roles.clone())?;
    py.import("memory_service_processor")?
        .getattr("SubscribeRequest")?
        .call((), Some(&kw))
}

#[async_trait]
impl EventClient for PyEventClient {
    async fn subscribe(&self, request: SubscribeRequest) -> Result<Box<dyn EventStream>> {
        let fut = Python::attach(|py| -> PyResult<_> {
            let req = request_object(py, &request)?;
            let aw = self.obj.bind(py).call_method1("subscribe", (req,))?;
            schedule(&self.locals, aw)
        });
        let fut = fut.map_err(|e| Python::attach(|py| classify(py, e)))?;
        let stream = fut
            .await
            .map_err(|e| Python::attach(|py| classify(py, e)))?;
        Python::attach(|py| {
            require(
                stream.bind(py),
                &["recv"],
                "the stream returned by subscribe()",
            )
        })
        .map_err(|e| Python::attach(|py| classify(py, e)))?;
        Ok(Box::new(PyEventStream {
            obj: stream,
            locals: self.locals.clone(),
        }))
    }
}

struct PyEventStream {
    obj: Py<PyAny>,
    locals: TaskLocals,
}

#[async_trait]
impl EventStream for PyEventStream {
    async fn recv(&mut self) -> Result<Option<Event>> {
        let fut = Python::attach(|py| -> PyResult<_> {
            let aw = self.obj.bind(py).call_method0("recv")?;
            schedule(&self.locals, aw)
        })
        .map_err(|e| Python::attach(|py| classify(py, e)))?;
        match fut.await {
            Ok(obj) => Python::attach(|py| {
                let b = obj.bind(py);
                match b.cast::<EventEnvelope>() {
                    Ok(env) => Ok(Some(env.get().to_event())),
                    Err(_) => Err(classify(
                        py,
                        PyTypeError::new_err(format!(
                            "recv() must return an EventEnvelope, got {}",
                            b.get_type()
                                .name()
                                .map(|n| n.to_string())
                                .unwrap_or_default()
                        )),
                    )),
                }
            }),
            Err(e) => Python::attach(|py| {
                if e.is_instance_of::<PyStopAsyncIteration>(py) {
                    Ok(None)
                } else {
                    Err(classify(py, e))
                }
            }),
        }
    }
}

struct PyCheckpointClient {
    obj: Py<PyAny>,
    locals: TaskLocals,
}

fn checkpoint_from(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Checkpoint> {
    let dumps = py.import("json")?.getattr("dumps")?;
    let value_text: String = dumps.call1((obj.getattr("value")?,))?.extract()?;
    // The same limit as a checkpoint read over gRPC (src/jsonvalue.rs).
    let too_deep = || {
        let id: String = obj
            .getattr("client_id")
            .and_then(|c| c.extract())
            .unwrap_or_default();
        PyValueError::new_err(format!(
            "the stored checkpoint of client id {id:?} nests objects/arrays more than {MAX_DEPTH} \
             levels deep; a checkpoint value supports at most {MAX_DEPTH}"
        ))
    };
    let value: serde_json::Value = serde_json::from_str(&value_text).map_err(|e| {
        if e.to_string().contains("recursion limit exceeded") {
            too_deep()
        } else {
            PyTypeError::new_err(format!("checkpoint value is not JSON: {e}"))
        }
    })?;
    if depth(&value) > MAX_DEPTH {
        return Err(too_deep());
    }
    let updated = obj.getattr("updated_at")?;
    let updated_at = if updated.is_none() {
        None
    } else {
        let ts: f64 = updated.call_method0("timestamp")?.extract()?;
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(ts.max(0.0)))
    };
    Ok(Checkpoint {
        client_id: obj.getattr("client_id")?.extract()?,
        content_type: obj.getattr("content_type")?.extract()?,
        value,
        updated_at,
    })
}

#[async_trait]
impl CheckpointClient for PyCheckpointClient {
    async fn get(&self, client_id: &str) -> Result<Checkpoint> {
        let fut = Python::attach(|py| -> PyResult<_> {
            let aw = self.obj.bind(py).call_method1("get", (client_id,))?;
            schedule(&self.locals, aw)
        })
        .map_err(|e| Python::attach(|py| classify(py, e)))?;
        let r = fut.await;
        Python::attach(|py| match r {
            Ok(obj) => checkpoint_from(py, obj.bind(py)).map_err(|e| classify(py, e)),
            Err(e) if is_instance_of(py, &e, "CheckpointNotFoundError") => {
                Err(Error::CheckpointNotFound(client_id.to_string()))
            }
            Err(e) => Err(classify(py, e)),
        })
    }

    async fn put(
        &self,
        client_id: &str,
        content_type: &str,
        value: &serde_json::Value,
    ) -> Result<Checkpoint> {
        let text = value.to_string();
        let fut = Python::attach(|py| -> PyResult<_> {
            let v = py.import("json")?.getattr("loads")?.call1((text,))?;
            let aw = self
                .obj
                .bind(py)
                .call_method1("put", (client_id, content_type, v))?;
            schedule(&self.locals, aw)
        })
        .map_err(|e| Python::attach(|py| classify(py, e)))?;
        let r = fut.await;
        Python::attach(|py| match r {
            Ok(obj) if obj.bind(py).hasattr("content_type").unwrap_or(false) => {
                checkpoint_from(py, obj.bind(py)).map_err(|e| classify(py, e))
            }
            Ok(_) => Ok(Checkpoint {
                client_id: client_id.to_string(),
                content_type: content_type.to_string(),
                value: value.clone(),
                updated_at: None,
            }),
            Err(e) => Err(classify(py, e)),
        })
    }
}
