//! Persistence under the data directory, on a thread of its own.
//!
//! Every file write (the outbox lines, `outbox.base`, `checkpoints.json` with its fsync)
//! happens on the `msp-local-persist` thread, never in an async handler and never under a
//! lock. Callers queue [`Job`]s on a channel while they hold the lock that orders them (the
//! outbox lock for appends and purges, the checkpoints lock for checkpoint snapshots), so the
//! files see the same order as memory; a [`Persister::flush`] barrier returns once every
//! job queued before it is on disk.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::SystemTime;

use log::warn;
use tokio::sync::oneshot;

use super::outbox::StoredEvent;

/// One client's checkpoint as the server keeps it.
#[derive(Clone)]
pub(super) struct StoredCheckpoint {
    pub content_type: String,
    pub value: serde_json::Value,
    pub updated_at: SystemTime,
}

/// Work for the persistence thread.
pub(super) enum Job {
    /// Append these events to `outbox.jsonl`.
    Append(Vec<Arc<StoredEvent>>),
    /// The first retained cursor moved (a purge).
    Base(u64),
    /// The whole checkpoint table as it now is (written atomically, fsynced).
    Checkpoints(Vec<(String, StoredCheckpoint)>),
    /// Signalled once every earlier job is written.
    Barrier(Ack),
}

/// How a barrier reports back: to a blocked thread or to an awaiting task.
pub(super) enum Ack {
    Blocking(mpsc::SyncSender<()>),
    Async(oneshot::Sender<()>),
}

impl Ack {
    fn send(self) {
        match self {
            Ack::Blocking(tx) => {
                let _ = tx.send(());
            }
            Ack::Async(tx) => {
                let _ = tx.send(());
            }
        }
    }
}

/// The handle to the persistence thread. The thread writes what is queued, then exits once
/// the handle is dropped.
pub(super) struct Persister {
    tx: mpsc::Sender<Job>,
}

impl Persister {
    /// Opens `outbox.jsonl` in `dir` for appending and starts the thread.
    pub fn spawn(dir: &Path) -> std::io::Result<Persister> {
        let path = dir.join("outbox.jsonl");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        // A line torn by a crash must not swallow the next event: start on a fresh line.
        if ends_mid_line(&path)? {
            file.write_all(b"\n")?;
        }
        let (tx, rx) = mpsc::channel();
        let dir = dir.to_path_buf();
        std::thread::Builder::new()
            .name("msp-local-persist".into())
            .spawn(move || run(dir, std::io::BufWriter::new(file), rx))?;
        Ok(Persister { tx })
    }

    /// Queues a job (never blocks).
    pub fn send(&self, job: Job) {
        if self.tx.send(job).is_err() {
            warn!("LocalMemoryService: the persistence thread is gone; data is not saved");
        }
    }

    /// Returns once everything queued before the call is written (blocks this thread).
    pub fn flush_blocking(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Job::Barrier(Ack::Blocking(tx)));
        let _ = rx.recv();
    }

    /// Completes once everything queued before the call is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Barrier(Ack::Async(tx)));
        let _ = rx.await;
    }
}

fn ends_mid_line(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    if f.metadata()?.len() == 0 {
        return Ok(false);
    }
    f.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// The thread: takes whatever is queued, writes it (the latest checkpoint table only), then
/// acknowledges the barriers among it.
fn run(dir: PathBuf, mut outbox: std::io::BufWriter<std::fs::File>, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut acks = Vec::new();
        let mut checkpoints = None;
        let mut appended = false;
        for job in std::iter::once(first).chain(rx.try_iter()) {
            match job {
                Job::Append(events) => {
                    for ev in events {
                        if let Err(e) = writeln!(outbox, "{}", ev.to_line()) {
                            warn!("LocalMemoryService: cannot persist the outbox: {e}");
                        }
                    }
                    appended = true;
                }
                Job::Base(base) => {
                    if let Err(e) = std::fs::write(dir.join("outbox.base"), base.to_string()) {
                        warn!("LocalMemoryService: cannot persist the outbox base: {e}");
                    }
                }
                Job::Checkpoints(table) => checkpoints = Some(table),
                Job::Barrier(ack) => acks.push(ack),
            }
        }
        if appended {
            if let Err(e) = outbox.flush() {
                warn!("LocalMemoryService: cannot persist the outbox: {e}");
            }
        }
        if let Some(table) = checkpoints {
            if let Err(e) = save_checkpoints(&dir, &table) {
                warn!("LocalMemoryService: cannot persist checkpoints: {e}");
            }
        }
        for ack in acks {
            ack.send();
        }
    }
}

/// Writes `checkpoints.json` atomically (temp file, fsync, rename).
fn save_checkpoints(dir: &Path, table: &[(String, StoredCheckpoint)]) -> std::io::Result<()> {
    let map: serde_json::Map<String, serde_json::Value> = table
        .iter()
        .map(|(id, cp)| {
            let t = cp
                .updated_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            (
                id.clone(),
                serde_json::json!({"content_type": cp.content_type, "value": cp.value, "updated_at": t}),
            )
        })
        .collect();
    let tmp = dir.join("checkpoints.json.tmp");
    let text = serde_json::Value::Object(map).to_string();
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("checkpoints.json"))
}

/// Reads `checkpoints.json` from `dir` (missing or unreadable: none).
pub(super) fn load_checkpoints(dir: &Path) -> HashMap<String, StoredCheckpoint> {
    let mut out = HashMap::new();
    let Ok(text) = std::fs::read_to_string(dir.join("checkpoints.json")) else {
        return out;
    };
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str(&text) else {
        return out;
    };
    for (id, v) in map {
        let secs = v.get("updated_at").and_then(|t| t.as_f64()).unwrap_or(0.0);
        let content_type = v.get("content_type").and_then(|x| x.as_str());
        out.insert(
            id,
            StoredCheckpoint {
                content_type: content_type.unwrap_or_default().to_string(),
                value: v.get("value").cloned().unwrap_or(serde_json::Value::Null),
                updated_at: time_from_secs(secs),
            },
        );
    }
    out
}

/// Seconds since the epoch as a time; a value no `SystemTime` can hold (negative, not finite,
/// too far out) reads as the epoch instead of panicking.
fn time_from_secs(secs: f64) -> SystemTime {
    std::time::Duration::try_from_secs_f64(secs)
        .ok()
        .and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}
