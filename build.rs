//! Compiles `proto/memory/v1/*.proto` with protox (pure Rust), so no system `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/memory/v1/events.proto",
        "proto/memory/v1/checkpoints.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".memory.v1.EventNotification.data")
        // JSON straight to and from the wire, with a deeper (still bounded) nesting limit than
        // prost's generic decoder: see src/jsonvalue.rs.
        .extern_path(".google.protobuf.Value", "crate::jsonvalue::WireValue")
        .file_descriptor_set_path(out.join("memory_v1_descriptor.bin"))
        .compile_fds(fds)?;
    Ok(())
}
