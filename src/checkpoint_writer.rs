//! The checkpoint writer: at most one write in flight, each carrying the newest snapshot handed
//! to it; transient failures retried with backoff in the background, so handling never waits.
//!
//! It also notices a second instance writing the same client id (docs/semantics.md, section 7):
//! the checkpoint API has no compare-and-set, so before a write, at most once per
//! `checkpoint_interval` (and at least one second apart) and before the final write of a stop, it
//! reads the stored checkpoint back; if that is not what this instance last wrote (or loaded),
//! the run stops with an error instead of overwriting the other writer's position.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, warn};

use crate::backoff::Backoff;
use crate::error::Error;
use crate::model::{CheckpointClient, LoopConfig};
use crate::stats::Stats;
use crate::wake::Wake;

/// Values a write of this instance may have left in the store, newest last, at most this many.
const KNOWN_MAX: usize = 8;

/// Reading back at most this often, whatever the checkpoint interval.
const VERIFY_MIN_INTERVAL: Duration = Duration::from_secs(1);

struct State {
    busy: bool,
    pending: Option<serde_json::Value>,
    fatal: Option<Error>,
    closed: bool,
    /// What the store may hold from this instance: the loaded value or the last written one
    /// (as sent and as echoed), plus writes whose outcome is unknown (a transient failure may
    /// still have been applied). `None` until [`CheckpointWriter::expect`] was called.
    known: Option<Vec<serde_json::Value>>,
    /// No checkpoint was stored at load and this instance has written none yet.
    absent: bool,
    /// The next write reads the stored checkpoint back first, whatever the cadence.
    verify_next: bool,
    /// When the stored checkpoint was last read back.
    verified_at: Option<Instant>,
}

pub struct CheckpointWriter {
    store: Arc<dyn CheckpointClient>,
    client_id: String,
    content_type: String,
    retry_min: Duration,
    retry_max: Duration,
    /// How often the stored checkpoint is read back; `None` when `detect_other_writers` is off.
    verify_every: Option<Duration>,
    state: Mutex<State>,
    /// Woken when a write completes (the consumer may be waiting for an idle writer).
    wake: Arc<Wake>,
    stats: Arc<Stats>,
    runtime: tokio::runtime::Handle,
}

impl CheckpointWriter {
    /// A writer for `cfg.client_id`, retrying with the reconnect backoff of `cfg`.
    pub fn new(
        store: Arc<dyn CheckpointClient>,
        cfg: &LoopConfig,
        content_type: String,
        wake: Arc<Wake>,
        stats: Arc<Stats>,
        runtime: tokio::runtime::Handle,
    ) -> Arc<CheckpointWriter> {
        Arc::new(CheckpointWriter {
            store,
            client_id: cfg.client_id.clone(),
            content_type,
            retry_min: cfg.reconnect_min,
            retry_max: cfg.reconnect_max,
            verify_every: cfg
                .detect_other_writers
                .then(|| cfg.checkpoint_interval.max(VERIFY_MIN_INTERVAL)),
            state: Mutex::new(State {
                busy: false,
                pending: None,
                fatal: None,
                closed: false,
                known: None,
                absent: false,
                verify_next: false,
                verified_at: None,
            }),
            wake,
            stats,
            runtime,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands over a snapshot. If a write is in flight it replaces any value still waiting
    /// (newest wins) and is written right after.
    pub fn submit(self: &Arc<Self>, value: serde_json::Value) {
        let mut st = self.lock();
        if st.fatal.is_some() || st.closed {
            return;
        }
        st.pending = Some(value);
        if !st.busy {
            st.busy = true;
            drop(st);
            let me = self.clone();
            self.runtime.spawn(async move { me.write_loop().await });
        }
    }

    /// No write in flight and none waiting.
    pub fn is_idle(&self) -> bool {
        !self.lock().busy
    }

    /// The error that stopped the writer, if any.
    pub fn fatal_error(&self) -> Option<Error> {
        self.lock().fatal.clone()
    }

    /// What the store holds as the run starts: the loaded checkpoint's value, or `None` on a
    /// first run. Reading back compares against it until this instance writes; the load was a
    /// read, so the first read-back is one interval later.
    pub fn expect(&self, loaded: Option<&serde_json::Value>) {
        let mut st = self.lock();
        st.absent = loaded.is_none();
        st.known = Some(loaded.into_iter().cloned().collect());
        st.verified_at = Some(Instant::now());
    }

    /// The next write (the final one of a stop) reads the stored checkpoint back first.
    pub fn verify_before_next_write(&self) {
        self.lock().verify_next = true;
    }

    /// Accept no more snapshots (after a processor failure: its state must not be written).
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.pending = None;
    }

    /// Whether a read-back is due before the next write (then counted as done).
    fn verify_due(&self) -> bool {
        let Some(every) = self.verify_every else {
            return false;
        };
        let mut st = self.lock();
        if st.known.is_none() {
            return false;
        }
        let forced = std::mem::take(&mut st.verify_next);
        let due = forced || st.verified_at.is_none_or(|t| t.elapsed() >= every);
        if due {
            st.verified_at = Some(Instant::now());
        }
        due
    }

    /// Reads the stored checkpoint back; `Err` when it is not this instance's.
    async fn verify(&self) -> Result<(), Error> {
        let stored = match self.store.get(&self.client_id).await {
            Ok(cp) => cp,
            // Another writer cannot delete a checkpoint: a server that lost its data, not ours.
            Err(Error::CheckpointNotFound(_)) => return Ok(()),
            Err(e) => {
                debug!(
                    client_id = self.client_id.as_str();
                    "reading back the checkpoint of client_id={} failed, checked later: {e}",
                    self.client_id
                );
                return Ok(());
            }
        };
        let st = self.lock();
        let known = st.known.as_deref().unwrap_or_default();
        let ours = (stored.content_type.is_empty() || stored.content_type == self.content_type)
            && known.iter().any(|v| same_json(v, &stored.value));
        if ours {
            return Ok(());
        }
        let theirs = crate::model::resume_cursor(&stored.value)
            .map(|c| format!("cursor {c:?}"))
            .unwrap_or_else(|| "no cursor".into());
        let mine = known
            .last()
            .and_then(crate::model::resume_cursor)
            .map(|c| format!("cursor {c:?}"))
            .unwrap_or_else(|| {
                if st.absent {
                    "none".into()
                } else {
                    "no cursor".into()
                }
            });
        Err(Error::Config(format!(
            "another instance is writing checkpoints for client id {:?}: the stored checkpoint \
             ({theirs}, content type {:?}) is not the one this instance last wrote ({mine}); \
             two processors with one client_id overwrite each other's position. Give each its \
             own client_id (or set detect_other_writers=False if the checkpoint is shared on \
             purpose)",
            self.client_id, stored.content_type
        )))
    }

    fn remember(&self, f: impl FnOnce(&mut Vec<serde_json::Value>)) {
        let mut st = self.lock();
        if let Some(known) = st.known.as_mut() {
            f(known);
            let excess = known.len().saturating_sub(KNOWN_MAX);
            known.drain(..excess);
        }
    }

    async fn write_loop(self: Arc<Self>) {
        let mut backoff = Backoff::new(self.retry_min, self.retry_max);
        loop {
            let value = {
                let mut st = self.lock();
                match st.pending.take() {
                    Some(v) => v,
                    None => {
                        st.busy = false;
                        drop(st);
                        self.wake.wake();
                        return;
                    }
                }
            };
            if self.verify_due() {
                if let Err(e) = self.verify().await {
                    warn!(client_id = self.client_id.as_str(); "{e}");
                    self.fail(e);
                    return;
                }
            }
            match self
                .store
                .put(&self.client_id, &self.content_type, &value)
                .await
            {
                Ok(echo) => {
                    self.remember(|known| {
                        known.clear();
                        known.push(echo.value);
                        known.push(value.clone());
                    });
                    self.lock().absent = false;
                    self.stats.mark_checkpoint();
                    let cursor = crate::model::resume_cursor(&value).unwrap_or_default();
                    debug!(
                        client_id = self.client_id.as_str(), cursor = cursor.as_str();
                        "checkpoint written client_id={} cursor={cursor}",
                        self.client_id
                    );
                    backoff.reset();
                }
                Err(e) if e.is_transient() => {
                    // The server may still have applied it.
                    self.remember(|known| known.push(value.clone()));
                    Stats::add(&self.stats.checkpoints_failed, 1);
                    let delay = backoff.next_delay();
                    warn!(
                        client_id = self.client_id.as_str(), attempt = backoff.attempts();
                        "checkpoint write failed client_id={} (attempt {}), retrying in {:.3}s: {e}",
                        self.client_id,
                        backoff.attempts(),
                        delay.as_secs_f64()
                    );
                    {
                        let mut st = self.lock();
                        if st.pending.is_none() && !st.closed {
                            st.pending = Some(value);
                        }
                    }
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    Stats::add(&self.stats.checkpoints_failed, 1);
                    self.fail(e);
                    return;
                }
            }
        }
    }

    /// Stops the writer with `e` (reported to the loop by [`CheckpointWriter::fatal_error`]).
    fn fail(&self, e: Error) {
        let mut st = self.lock();
        st.fatal = Some(e);
        st.pending = None;
        st.busy = false;
        drop(st);
        self.wake.wake();
    }
}

/// JSON equality with numbers compared as 64-bit floats (what the wire carries: `1` and `1.0`
/// are the same stored checkpoint).
pub fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value::*;
    match (a, b) {
        (Number(x), Number(y)) => x.as_f64() == y.as_f64(),
        (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_json(p, q)),
        (Object(x), Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// The error for a stored checkpoint the client cannot decode (nested deeper than
/// [`crate::jsonvalue::MAX_DEPTH`], not UTF-8, malformed): not retried, it names the client id.
pub fn undecodable(client_id: &str, e: &Error) -> Error {
    let text = e.to_string();
    let detail = text
        .split_once("failed to decode Protobuf message: ")
        .map(|(_, d)| d)
        .unwrap_or(text.as_str());
    Error::Invalid(format!(
        "the stored checkpoint of client id {client_id:?} cannot be decoded ({detail}); it was \
         not written by this runtime or is damaged: replace or delete it on the server"
    ))
}

#[cfg(test)]
#[path = "checkpoint_writer_tests.rs"]
mod tests;
