//! The native half of the local Memory Service. Python counterpart: `testing/__init__.py`
//! (`LocalMemoryService` wraps `NativeServer`).

use std::collections::HashMap;
use std::path::PathBuf;

use bytes::Bytes;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::envelope::unix_seconds;
use super::errors::to_py_err_in;
use super::runtime::runtime;
use crate::local_server::{LocalMemoryService, Role, ServerOptions};

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
}
