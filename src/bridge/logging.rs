//! Rust `log` records as Python `logging` records. Python counterpart: `_logging.py`.
//!
//! Records go to the logger named after their target (`memory_service_processor.driver`, ...)
//! through pyo3-log. Their structured fields (`client_id`, `cursor`, `after_cursor`,
//! `attempt`, `reason`: the `log` crate's key-values) become attributes of the Python record
//! (pyo3-log passes them as `extra`, as strings); `_logging.StructuredLogFilter` gives them
//! their Python types.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use pyo3::prelude::*;

static LOG_HANDLE: OnceLock<pyo3_log::ResetHandle> = OnceLock::new();
static LOGGING_ON: AtomicBool = AtomicBool::new(true);

/// Refreshes the logging bridge's cache of Python logger levels.
#[pyfunction]
pub fn reset_log_cache() {
    if let Some(h) = LOG_HANDLE.get() {
        h.reset();
    }
}

/// Stops forwarding Rust log records to Python (registered with `atexit`): once the
/// interpreter finalizes, a Rust thread must never try to take the GIL to log.
#[pyfunction]
pub fn shutdown_logging() {
    LOGGING_ON.store(false, Ordering::SeqCst);
}

/// pyo3-log's bridge, switched off by [`shutdown_logging`].
struct GuardedLogger(pyo3_log::Logger);

impl log::Log for GuardedLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        LOGGING_ON.load(Ordering::Relaxed) && self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if LOGGING_ON.load(Ordering::Relaxed) {
            self.0.log(record);
        }
    }

    fn flush(&self) {}
}

/// Installs the bridge as the process's `log` logger (once).
pub fn install(py: Python<'_>) -> PyResult<()> {
    let logger = pyo3_log::Logger::new(py, pyo3_log::Caching::LoggersAndLevels)?
        .filter(log::LevelFilter::Debug);
    let handle = logger.reset_handle();
    if log::set_boxed_logger(Box::new(GuardedLogger(logger))).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
        let _ = LOG_HANDLE.set(handle);
    }
    Ok(())
}
