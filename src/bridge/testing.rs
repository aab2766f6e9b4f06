//! The native half of the local Memory Service. Python counterpart: `testing/__init__.py`
//! (`LocalMemoryService` wraps `NativeServer`).

use std::collections::HashMap;
use std::path::PathBuf;

use bytes::Bytes;
use pyo3::exceptions::{PyKeyError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::envelope::unix_seconds;
use super::errors::to_py_err_in;
use super::runtime::runtime;
use crate::local_server::{LocalMemoryService, Role, ServerOptions};
use crate::upstream::{AccessRole, Channel, NewEntry, ResponseStatus, UpstreamError};

/// A refused scenario operation as Python sees it: an unknown conversation or entry is a
/// `KeyError`, anything else (archived, not a member, bad argument, ...) a `ValueError`.
fn scenario_err(e: UpstreamError) -> PyErr {
    match e {
        UpstreamError::NoSuchConversation(_) | UpstreamError::NoSuchEntry(_) => {
            PyKeyError::new_err(e.to_string())
        }
        _ => PyValueError::new_err(e.to_string()),
    }
}

/// A JSON object given as text (`None` stays `None`).
fn json_object(
    what: &str,
    text: Option<String>,
) -> PyResult<Option<serde_json::Map<String, serde_json::Value>>> {
    match text {
        None => Ok(None),
        Some(t) => match serde_json::from_str(&t) {
            Ok(serde_json::Value::Object(m)) => Ok(Some(m)),
            _ => Err(PyValueError::new_err(format!(
                "{what} must be a JSON object"
            ))),
        },
    }
}

/// `(method, {header: value}, after_cursor, client_id)` of one RPC the server saw.
type SeenRequest = (
    String,
    HashMap<String, String>,
    Option<String>,
    Option<String>,
);

/// `NativeServer`'s keyword arguments.
struct ServerConfig {
    host: String,
    port: u16,
    unix_path: Option<PathBuf>,
    api_keys: Option<HashMap<String, String>>,
    queue_capacity: usize,
    data_dir: Option<PathBuf>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
}

/// `options[key]` if given and not None, else `default`.
fn item<T>(options: &Bound<'_, PyDict>, key: &str, default: T) -> PyResult<T>
where
    T: for<'a, 'py> FromPyObject<'a, 'py, Error = PyErr>,
{
    match options.get_item(key)? {
        Some(v) if !v.is_none() => v.extract(),
        _ => Ok(default),
    }
}

impl ServerConfig {
    const NAMES: [&'static str; 8] = [
        "host",
        "port",
        "unix_path",
        "api_keys",
        "queue_capacity",
        "data_dir",
        "tls_cert_file",
        "tls_key_file",
    ];

    fn from_kwargs(options: &Bound<'_, PyDict>) -> PyResult<ServerConfig> {
        for key in options.keys() {
            let key: String = key.extract()?;
            if !Self::NAMES.contains(&key.as_str()) {
                return Err(PyTypeError::new_err(format!(
                    "NativeServer() got an unexpected keyword argument {key:?}"
                )));
            }
        }
        Ok(ServerConfig {
            host: item(options, "host", "127.0.0.1".to_string())?,
            port: item(options, "port", 0)?,
            unix_path: item(options, "unix_path", None)?,
            api_keys: item(options, "api_keys", None)?,
            queue_capacity: item(options, "queue_capacity", 65536)?,
            data_dir: item(options, "data_dir", None)?,
            tls_cert_file: item(options, "tls_cert_file", None)?,
            tls_key_file: item(options, "tls_key_file", None)?,
        })
    }

    fn into_server_options(self) -> PyResult<ServerOptions> {
        let tls_identity = match (self.tls_cert_file, self.tls_key_file) {
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
        let api_keys = match self.api_keys {
            None => None,
            Some(m) => {
                let mut out = HashMap::new();
                for (k, role) in m {
                    let r = match role.to_ascii_lowercase().as_str() {
                        "admin" => Role::Admin,
                        "user" => Role::User,
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
        Ok(ServerOptions {
            host: self.host,
            port: self.port,
            unix_path: self.unix_path,
            api_keys,
            queue_capacity: self.queue_capacity,
            data_dir: self.data_dir,
            tls_identity,
        })
    }
}

/// Native half of `memory_service_processor.testing.LocalMemoryService`.
#[pyclass(frozen, module = "memory_service_processor._native")]
pub struct NativeServer {
    inner: LocalMemoryService,
}

#[pymethods]
impl NativeServer {
    /// Keyword arguments as in `LocalMemoryService(...)`: `host`, `port`, `unix_path`,
    /// `api_keys`, `queue_capacity`, `data_dir`, `tls_cert_file`, `tls_key_file`.
    #[new]
    #[pyo3(signature = (**options))]
    fn new(py: Python<'_>, options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let options = match options {
            Some(d) => d.clone(),
            None => PyDict::new(py),
        };
        let opts = ServerConfig::from_kwargs(&options)?.into_server_options()?;
        let inner = py
            .detach(|| LocalMemoryService::new(opts))
            .map_err(|e| to_py_err_in(py, e))?;
        Ok(NativeServer { inner })
    }

    /// Binds and serves; returns the endpoint. Blocks briefly (GIL released).
    fn start(&self, py: Python<'_>) -> PyResult<String> {
        let inner = self.inner.clone();
        let rt = runtime()?;
        py.detach(|| rt.block_on(inner.start()))
            .map_err(|e| to_py_err_in(py, e))
    }

    /// Stops serving (open streams get UNAVAILABLE); keeps the outbox and checkpoints.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let inner = self.inner.clone();
        let rt = runtime()?;
        py.detach(|| rt.block_on(inner.stop()));
        Ok(())
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
    fn requests(&self, py: Python<'_>) -> Vec<SeenRequest> {
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
            .map(|(ct, v, t)| (ct, v.to_string(), unix_seconds(t)))
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

    // -- the scenario API: operations of the model, each emitting its event ------------------

    /// Returns `(conversation_id, cursor)`.
    #[pyo3(signature = (owner, title, agent_id=None, metadata_json=None))]
    fn create_conversation(
        &self,
        py: Python<'_>,
        owner: String,
        title: String,
        agent_id: Option<String>,
        metadata_json: Option<String>,
    ) -> PyResult<(String, String)> {
        let metadata = json_object("metadata", metadata_json)?;
        py.detach(|| {
            self.inner
                .create_conversation(&owner, &title, agent_id.as_deref(), metadata)
        })
        .map_err(scenario_err)
    }

    #[pyo3(signature = (conversation_id, title=None, metadata_json=None))]
    fn update_conversation(
        &self,
        py: Python<'_>,
        conversation_id: String,
        title: Option<String>,
        metadata_json: Option<String>,
    ) -> PyResult<String> {
        let metadata = json_object("metadata", metadata_json)?;
        py.detach(|| {
            self.inner
                .update_conversation(&conversation_id, title.as_deref(), metadata)
        })
        .map_err(scenario_err)
    }

    /// `content_json`: a JSON list of content items, or a JSON string `"b64:..."`. Returns
    /// `(entry_id, cursor)`.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (conversation_id, content_json, channel, content_type, user_id=None, client_id=None, agent_id=None))]
    fn append_entry(
        &self,
        py: Python<'_>,
        conversation_id: String,
        content_json: String,
        channel: String,
        content_type: String,
        user_id: Option<String>,
        client_id: Option<String>,
        agent_id: Option<String>,
    ) -> PyResult<(String, String)> {
        let content: serde_json::Value = serde_json::from_str(&content_json)
            .map_err(|e| PyValueError::new_err(format!("content is not valid JSON: {e}")))?;
        let new = NewEntry {
            content,
            channel: Channel::parse(&channel).map_err(scenario_err)?,
            content_type,
            user_id,
            client_id,
            agent_id,
        };
        py.detach(|| self.inner.append_entry(&conversation_id, new))
            .map_err(scenario_err)
    }

    fn archive_conversation(&self, py: Python<'_>, conversation_id: String) -> PyResult<String> {
        py.detach(|| self.inner.archive_conversation(&conversation_id))
            .map_err(scenario_err)
    }

    fn unarchive_conversation(&self, py: Python<'_>, conversation_id: String) -> PyResult<String> {
        py.detach(|| self.inner.unarchive_conversation(&conversation_id))
            .map_err(scenario_err)
    }

    fn delete_conversation(&self, py: Python<'_>, conversation_id: String) -> PyResult<String> {
        py.detach(|| self.inner.delete_conversation(&conversation_id))
            .map_err(scenario_err)
    }

    fn add_member(
        &self,
        py: Python<'_>,
        conversation_id: String,
        user: String,
        role: String,
    ) -> PyResult<String> {
        let role = AccessRole::parse(&role).map_err(scenario_err)?;
        py.detach(|| self.inner.add_member(&conversation_id, &user, role))
            .map_err(scenario_err)
    }

    fn update_member(
        &self,
        py: Python<'_>,
        conversation_id: String,
        user: String,
        role: String,
    ) -> PyResult<String> {
        let role = AccessRole::parse(&role).map_err(scenario_err)?;
        py.detach(|| self.inner.update_member(&conversation_id, &user, role))
            .map_err(scenario_err)
    }

    fn remove_member(
        &self,
        py: Python<'_>,
        conversation_id: String,
        user: String,
    ) -> PyResult<String> {
        py.detach(|| self.inner.remove_member(&conversation_id, &user))
            .map_err(scenario_err)
    }

    fn start_response(&self, py: Python<'_>, conversation_id: String) -> PyResult<String> {
        py.detach(|| self.inner.start_response(&conversation_id))
            .map_err(scenario_err)
    }

    fn finish_response(
        &self,
        py: Python<'_>,
        conversation_id: String,
        status: String,
    ) -> PyResult<String> {
        let status = ResponseStatus::parse(&status).map_err(scenario_err)?;
        py.detach(|| self.inner.finish_response(&conversation_id, status))
            .map_err(scenario_err)
    }
}
