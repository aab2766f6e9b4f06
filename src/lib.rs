//! Rust core of `memory-service-processor`.
//!
//! - [`model`]: events, checkpoints, configuration and the client traits.
//! - [`grpc`]: tonic clients for the Memory Service (events and checkpoints).
//! - [`stream_loop`]: subscribe / reconnect / stale cursor / eviction, feeding [`buffer`].
//! - [`driver`]: the processor-side state machine (batches, flushes, snapshots, stop).
//! - [`shard`]: which events a shard keeps (the documented key hash) and its stored layout.
//! - [`checkpoint_writer`]: non-blocking, coalescing checkpoint writes.
//! - [`local_server`] (feature `local-server`): `LocalMemoryService`, a real gRPC server for
//!   tests, benchmarks and the demo.
//! - `bridge` (feature `python`): the PyO3 module `memory_service_processor._native`.

// Unix only (Linux and macOS): the core uses Unix-domain sockets (the wake-up socket, `unix://`
// endpoints) and POSIX signal masks. Say so first, before the errors about the missing Unix APIs.
#[cfg(not(unix))]
compile_error!(
    "memory-service-processor supports Linux and macOS (Unix) only: its core needs Unix-domain \
     sockets and POSIX signal masks. On Windows, install it in WSL (Windows Subsystem for Linux)."
);

pub mod backoff;
pub mod buffer;
pub mod checkpoint_writer;
pub mod driver;
pub mod error;
pub mod grpc;
pub mod jsonvalue;
pub mod lanes;
#[cfg(feature = "local-server")]
pub mod local_server;
pub mod model;
pub mod payload;
pub mod shard;
pub mod stats;
pub mod stream_loop;
pub mod upstream;
pub mod wake;

/// Generated protobuf and tonic code for `memory.v1`.
pub mod proto {
    #![allow(clippy::all)]
    tonic::include_proto!("memory.v1");
}

#[cfg(feature = "python")]
mod bridge;
