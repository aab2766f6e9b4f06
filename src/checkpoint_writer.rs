//! The checkpoint writer: at most one write in flight, each carrying the newest snapshot handed
//! to it; transient failures retried with backoff in the background, so handling never waits.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use log::{debug, warn};

use crate::backoff::Backoff;
use crate::error::Error;
use crate::model::{CheckpointClient, LoopConfig};
use crate::stats::Stats;
use crate::wake::Wake;

struct State {
    busy: bool,
    pending: Option<serde_json::Value>,
    fatal: Option<Error>,
    closed: bool,
}

pub struct CheckpointWriter {
    store: Arc<dyn CheckpointClient>,
    client_id: String,
    content_type: String,
    retry_min: Duration,
    retry_max: Duration,
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
            state: Mutex::new(State {
                busy: false,
                pending: None,
                fatal: None,
                closed: false,
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

    /// Accept no more snapshots (after a processor failure: its state must not be written).
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.pending = None;
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
            match self
                .store
                .put(&self.client_id, &self.content_type, &value)
                .await
            {
                Ok(_) => {
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
                    let mut st = self.lock();
                    st.fatal = Some(e);
                    st.pending = None;
                    st.busy = false;
                    drop(st);
                    self.wake.wake();
                    return;
                }
            }
        }
    }
}
