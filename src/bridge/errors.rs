//! Core errors as Python exceptions. Python counterpart: `errors.py`, where every exception
//! class is defined; this file imports them by name and never defines one.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString};

use crate::error::Error;

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// `memory_service_processor.errors`, imported once.
pub fn errors_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    ERRORS
        .get_or_try_init(py, || {
            py.import("memory_service_processor.errors")
                .map(Bound::unbind)
        })
        .map(|m| m.bind(py))
}

/// True if `e` is an instance of the exception class `class` of `errors.py`.
pub fn is_instance_of(py: Python<'_>, e: &PyErr, class: &str) -> bool {
    errors_module(py)
        .and_then(|m| m.getattr(class))
        .map(|cls| e.is_instance(py, &cls))
        .unwrap_or(false)
}

/// An instance of `errors.<class>(message, **kwargs)`.
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

fn py_str(py: Python<'_>, v: &str) -> Py<PyAny> {
    PyString::new(py, v).into_any().unbind()
}

fn py_opt_str(py: Python<'_>, v: Option<String>) -> Py<PyAny> {
    match v {
        Some(v) => py_str(py, &v),
        None => py.None(),
    }
}

/// Maps a core error to the Python hierarchy of `memory_service_processor.errors` (takes the
/// GIL; from code that holds it, use [`to_py_err_in`]).
pub fn to_py_err(e: Error) -> PyErr {
    Python::attach(|py| to_py_err_in(py, e))
}

/// [`to_py_err`] with the GIL in hand.
pub fn to_py_err_in(py: Python<'_>, e: Error) -> PyErr {
    let message = e.to_string();
    match e {
        Error::ContentTypeMismatch { got, want } => make_error(
            py,
            "ContentTypeMismatchError",
            message,
            &[("got", py_str(py, &got)), ("want", py_str(py, &want))],
        ),
        Error::StaleCursor { cursor, reason } => make_error(
            py,
            "StaleCursorError",
            message,
            &[
                ("cursor", py_opt_str(py, cursor)),
                ("reason", py_str(py, &reason)),
            ],
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
                ("code", py_str(py, &code)),
                ("server_message", py_str(py, &server_message)),
                ("method", py_str(py, &method)),
            ],
        ),
        Error::Undecodable {
            method,
            message: detail,
        } => make_error(
            py,
            "ServerStatusError",
            message,
            &[
                ("code", py_str(py, "INTERNAL")),
                ("server_message", py_str(py, &detail)),
                ("method", py_str(py, &method)),
            ],
        ),
        Error::Transient(_) => make_error(py, "TransientError", message, &[]),
        Error::CheckpointNotFound(id) => make_error(
            py,
            "CheckpointNotFoundError",
            message,
            &[("client_id", py_str(py, &id))],
        ),
        Error::Config(_) => make_error(py, "ConfigurationError", message, &[]),
        Error::Invalid(_) => PyValueError::new_err(message),
        Error::External { payload, .. } => match payload.downcast_ref::<super::foreign::PyErrBox>()
        {
            Some(b) => b.0.clone_ref(py),
            None => PyRuntimeError::new_err(message),
        },
    }
}

/// A `ConfigurationError` with `message`.
pub fn config_error(message: String) -> PyErr {
    to_py_err(Error::Config(message))
}
