//! The PyO3 module `memory_service_processor._native`. This file only registers; each concern
//! lives in the file named after its Python counterpart:
//!
//! | file          | Python                                                       |
//! |---------------|--------------------------------------------------------------|
//! | `runtime.rs`  | `_runtime.py` (awaits the native futures), the `atexit` hooks |
//! | `errors.rs`   | `errors.py`                                                  |
//! | `logging.rs`  | `_logging.py`                                                |
//! | `config.rs`   | `Config`, `ConnectionOptions`, `SubscribeRequest`            |
//! | `envelope.rs` | `EventEnvelope` (`_model.py`)                                |
//! | `clients.rs`  | `_clients.py`                                                |
//! | `foreign.rs`  | the client protocols of `_model.py`                          |
//! | `driver.rs`   | `_runtime.py`, `_stats.py`                                   |
//! | `testing.rs`  | `testing/` (`LocalMemoryService`)                            |
//!
//! GIL rules: Rust threads only take the GIL to complete Python futures and to log (pyo3-log);
//! no Rust lock is held while they do. Python-facing methods that may wait on a lock a Rust
//! thread holds for long, or on the network, release the GIL (`py.detach`) or return awaitables.

use pyo3::prelude::*;

mod clients;
mod config;
mod driver;
mod envelope;
mod errors;
mod foreign;
mod logging;
mod runtime;
#[cfg(feature = "local-server")]
mod testing;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    runtime::init();
    logging::install(m.py())?;
    // Checked against the package metadata on import (python/memory_service_processor/_version.py).
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    let debug = cfg!(debug_assertions);
    m.add("BUILD_PROFILE", if debug { "debug" } else { "release" })?;
    m.add_class::<envelope::EventEnvelope>()?;
    m.add_class::<clients::NativeConnection>()?;
    m.add_class::<clients::NativeCheckpointClient>()?;
    m.add_class::<clients::NativeEventClient>()?;
    m.add_class::<clients::NativeEventStream>()?;
    m.add_class::<driver::Action>()?;
    m.add_class::<driver::Driver>()?;
    m.add_class::<driver::LoadResult>()?;
    m.add_function(wrap_pyfunction!(driver::default_key, m)?)?;
    m.add_function(wrap_pyfunction!(driver::shard_of, m)?)?;
    #[cfg(feature = "local-server")]
    m.add_class::<testing::NativeServer>()?;
    m.add_function(wrap_pyfunction!(logging::reset_log_cache, m)?)?;
    m.add_function(wrap_pyfunction!(logging::shutdown_logging, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::quiesce, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::after_fork_in_child, m)?)?;
    m.add(
        "DEFAULT_MAX_MESSAGE_SIZE",
        crate::grpc::DEFAULT_MAX_MESSAGE_SIZE,
    )?;
    Ok(())
}
