//! The `raw` benchmark case: a pure-Rust client that only reads the stream (no Python per
//! event), the wire's limit on this machine. Not part of the product: built only with the
//! `bench` feature (`cargo build --release --features bench --bin raw_read`), run by
//! `bench/cases.py`.
//!
//! `raw_read ENDPOINT COUNT [AFTER_CURSOR]` subscribes after `AFTER_CURSOR` (default `start`),
//! reads until `COUNT` business events arrived and prints one JSON line: `seconds` (from
//! subscribe to the last event), `handled`, `vm_hwm_kb` (peak RSS) and `thread_cpu_s` (CPU
//! seconds per thread name; the main thread is `main`). The API key, if the server wants one,
//! comes from `MSP_BENCH_API_KEY`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use memory_service_processor::error::{Error, Result};
use memory_service_processor::grpc::{ConnectOptions, Connection, GrpcEventClient};
use memory_service_processor::model::{EventClient, Scope, SubscribeRequest};

async fn read(endpoint: String, count: u64, after_cursor: String) -> Result<f64> {
    let opts = ConnectOptions {
        endpoint,
        api_key: std::env::var("MSP_BENCH_API_KEY").ok(),
        ..ConnectOptions::default()
    };
    let client = GrpcEventClient::new(Connection::new(&opts)?);
    let started = Instant::now();
    let mut stream = client
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
}

/// Peak resident set size of this process (VmHWM), in KiB.
fn vm_hwm_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds per thread name, from `/proc/self/task/*/schedstat`.
fn thread_cpu_s() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let main = std::process::id().to_string();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let tid = task.file_name().to_string_lossy().to_string();
        let dir = task.path();
        let ns: Option<u64> = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok());
        let name = if tid == main {
            "main".to_string()
        } else {
            std::fs::read_to_string(dir.join("comm"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        if let Some(ns) = ns {
            *out.entry(name).or_insert(0.0) += ns as f64 / 1e9;
        }
    }
    out
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (endpoint, count) = match (args.first(), args.get(1).and_then(|c| c.parse().ok())) {
        (Some(e), Some(c)) => (e.clone(), c),
        _ => {
            eprintln!("usage: raw_read ENDPOINT COUNT [AFTER_CURSOR]");
            return ExitCode::from(2);
        }
    };
    let after_cursor = args.get(2).cloned().unwrap_or_else(|| "start".into());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("msp-core")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("raw_read: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(read(endpoint, count, after_cursor)) {
        Ok(seconds) => {
            let doc = serde_json::json!({
                "seconds": seconds,
                "handled": count,
                "vm_hwm_kb": vm_hwm_kb(),
                "thread_cpu_s": thread_cpu_s(),
            });
            println!("{doc}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("raw_read: {e}");
            ExitCode::FAILURE
        }
    }
}
