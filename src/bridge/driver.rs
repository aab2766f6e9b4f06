//! The driver, stepped from Python: `next_action()` says what the processor must do next.
//! Python counterpart: `_runtime.py` (the loop that executes the actions) and `_stats.py`
//! (the schema of `stats()`).

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList};

use super::clients::{checkpoint_client, event_client};
use super::config::DriverConfig;
use super::envelope::EventEnvelope;
use super::errors::{to_py_err, to_py_err_in};
use super::runtime::{lock, py_future, runtime};
use crate::driver::{self, StopHandle};
use crate::model::Checkpoint;
use crate::stats::Stats;

/// What the processor must do next (the kind of the core's `driver::Action`). `next_action()`
/// returns the class attributes themselves, so Python compares them with `is`.
#[pyclass(eq, eq_int, frozen, module = "memory_service_processor._native")]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Payload: a list of `EventEnvelope`s to handle in order; then `handled()`.
    Handle,
    /// Payload: one stream signal for the `on_stream_event` hook.
    Signal,
    /// Call `flush`, then `flushed()`.
    Flush,
    /// Call `snapshot`, then `submit_snapshot()`.
    Snapshot,
    /// Payload: seconds to wait at most for the wake-up byte.
    Wait,
    /// The run is over.
    Done,
    /// Concurrent mode. Payload: a list of `EventEnvelope`s; compute their keys and pass them
    /// (a list, in order) as `keys=` to the next `next_action()`.
    Keys,
    /// Concurrent mode. Payload: a list of `(seq, attempt, EventEnvelope)`: start one task each
    /// and report its outcome under `seq`.
    Start,
    /// Concurrent mode. Payload: the `seq` whose `on_failure` hook to call; then report it done.
    OnFailure,
    /// Concurrent mode. Payload: the `seq`s to cancel; report each as done or cancelled.
    Cancel,
    /// Concurrent mode. Payload: the `seq` that failed its last try: raise its error.
    Failed,
}

/// The variant objects of `Action` as stored on the class, fetched once.
static ACTIONS: PyOnceLock<[Py<PyAny>; 11]> = PyOnceLock::new();

fn action_object(py: Python<'_>, action: Action) -> PyResult<Py<PyAny>> {
    let all = ACTIONS.get_or_try_init(py, || -> PyResult<[Py<PyAny>; 11]> {
        let class = py.get_type::<Action>();
        let get = |name: &str| class.getattr(name).map(Bound::unbind);
        Ok([
            get("Handle")?,
            get("Signal")?,
            get("Flush")?,
            get("Snapshot")?,
            get("Wait")?,
            get("Done")?,
            get("Keys")?,
            get("Start")?,
            get("OnFailure")?,
            get("Cancel")?,
            get("Failed")?,
        ])
    })?;
    Ok(all[action as usize].clone_ref(py))
}

/// The driver of one run (Rust `driver::Driver`) with its stop handle and stats.
#[pyclass(frozen, module = "memory_service_processor._native")]
pub struct Driver {
    inner: Mutex<driver::Driver>,
    stop: StopHandle,
    stats: Arc<Stats>,
    client_id: String,
    /// Shards with the default key: `next_action` may read and drop many events of other
    /// shards, so it runs without the GIL (other Python threads go on meanwhile).
    drops_without_gil: bool,
}

/// Our own duplicate of the caller's end of the wake-up socket pair.
fn wake_socket(wake_fd: i32) -> PyResult<std::os::unix::net::UnixStream> {
    use std::os::fd::BorrowedFd;
    if wake_fd < 0 {
        return Err(PyValueError::new_err(
            "wake_fd must be an open socket descriptor",
        ));
    }
    // SAFETY: the caller passes the descriptor of a socket it keeps open for the duration of
    // this call; we only duplicate it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(wake_fd) };
    let owned = borrowed
        .try_clone_to_owned()
        .map_err(|e| PyValueError::new_err(format!("wake_fd: {e}")))?;
    Ok(std::os::unix::net::UnixStream::from(owned))
}

#[pymethods]
impl Driver {
    /// `config` is the Python `Config`; wake-ups reach Python as a byte on `wake_fd`.
    /// `custom_key`: the processor computes lane keys itself (concurrent mode asks with
    /// `Action.Keys`).
    #[new]
    #[pyo3(signature = (*, wake_fd, events, checkpoints, content_type, config, custom_key=false))]
    fn new(
        py: Python<'_>,
        wake_fd: i32,
        events: &Bound<'_, PyAny>,
        checkpoints: &Bound<'_, PyAny>,
        content_type: String,
        config: DriverConfig,
        custom_key: bool,
    ) -> PyResult<Self> {
        let mut cfg = config.into_loop_config()?;
        cfg.custom_key = custom_key;
        let client_id = cfg.client_id.clone();
        let drops_without_gil = cfg.shard_count > 1 && !custom_key;
        let events = event_client(py, events)?;
        let checkpoints = checkpoint_client(py, checkpoints)?;
        let inner = driver::Driver::new(
            cfg,
            events,
            checkpoints,
            content_type,
            runtime()?.handle().clone(),
        )
        .map_err(|e| to_py_err_in(py, e))?;
        inner
            .waker()
            .attach_socket(wake_socket(wake_fd)?)
            .map_err(|e| PyValueError::new_err(format!("wake_fd: {e}")))?;
        Ok(Driver {
            stop: inner.stop_handle(),
            stats: inner.stats.clone(),
            inner: Mutex::new(inner),
            client_id,
            drops_without_gil,
        })
    }

    /// Awaitable: fetches the checkpoint (retrying transient errors); resolves to a
    /// `LoadResult` whose `text` is the stored value as JSON, or None on a first run.
    fn load<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let fut = lock(&self.inner).load_future();
        py_future(py, async move {
            let cp = fut.await.map_err(to_py_err)?;
            Ok(LoadResult {
                text: cp.as_ref().map(|c| c.value.to_string()),
                checkpoint: Mutex::new(cp),
            })
        })
    }

    /// Starts the network side; `loaded` is what `load()` resolved to.
    #[pyo3(signature = (loaded=None))]
    fn start(&self, loaded: Option<&Bound<'_, LoadResult>>) -> PyResult<()> {
        let cp = loaded.and_then(|l| l.get().take());
        lock(&self.inner).start(cp.as_ref()).map_err(to_py_err)
    }

    /// `(action, payload)`: see `Action`. Raises the run's error at the end. In concurrent
    /// mode the outcomes since the last call come with it: `done`, `failed`, `cancelled`
    /// (lists of `seq`s) and `keys` (answering `Action.Keys`).
    #[pyo3(signature = (done=None, failed=None, cancelled=None, keys=None))]
    fn next_action(
        &self,
        py: Python<'_>,
        done: Option<Vec<u64>>,
        failed: Option<Vec<u64>>,
        cancelled: Option<Vec<u64>>,
        keys: Option<Vec<Option<String>>>,
    ) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        let step = || {
            let mut inner = lock(&self.inner);
            let now = Instant::now();
            if done.is_some() || failed.is_some() || cancelled.is_some() || keys.is_some() {
                let report = driver::Report {
                    done: done.unwrap_or_default(),
                    failed: failed.unwrap_or_default(),
                    cancelled: cancelled.unwrap_or_default(),
                    keys,
                };
                if let Err(e) = inner.report(now, report) {
                    inner.abort();
                    return Err(e);
                }
            }
            Ok(inner.next_action(now))
        };
        // The lock is taken and released inside the closure, so it is never held while the
        // GIL is being reacquired.
        let step = if self.drops_without_gil {
            py.detach(step)
        } else {
            step()
        }
        .map_err(|e| to_py_err_in(py, e))?;
        let envelope = |e| Py::new(py, EventEnvelope::from_event(e));
        let (action, payload) = match step {
            driver::Action::Handle(batch) => {
                let items: Vec<Py<EventEnvelope>> =
                    batch.into_iter().map(envelope).collect::<PyResult<_>>()?;
                (Action::Handle, PyList::new(py, items)?.into_any().unbind())
            }
            driver::Action::Keys(batch) => {
                let items: Vec<Py<EventEnvelope>> =
                    batch.into_iter().map(envelope).collect::<PyResult<_>>()?;
                (Action::Keys, PyList::new(py, items)?.into_any().unbind())
            }
            driver::Action::Start(starts) => (Action::Start, start_list(py, starts)?),
            driver::Action::OnFailure(seq) => (
                Action::OnFailure,
                seq.into_pyobject(py)?.into_any().unbind(),
            ),
            driver::Action::Cancel(seqs) => {
                (Action::Cancel, PyList::new(py, seqs)?.into_any().unbind())
            }
            driver::Action::Failed(seq) => {
                (Action::Failed, seq.into_pyobject(py)?.into_any().unbind())
            }
            driver::Action::Signal(e) => (Action::Signal, envelope(e)?.into_any()),
            driver::Action::Flush => (Action::Flush, py.None()),
            driver::Action::Snapshot => (Action::Snapshot, py.None()),
            driver::Action::Wait(deadline) | driver::Action::WaitWriter(deadline) => {
                let t = deadline
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64();
                (Action::Wait, t.into_pyobject(py)?.into_any().unbind())
            }
            driver::Action::Done(Ok(())) => (Action::Done, py.None()),
            driver::Action::Done(Err(e)) => return Err(to_py_err_in(py, e)),
        };
        Ok((action_object(py, action)?, payload))
    }

    /// Concurrent mode: the handler of `seq` returned (reported at once, in the step in which
    /// it returned). Returns what may start now, as the payload of `Action.Start` (a list of
    /// `(seq, attempt, EventEnvelope)`), or None. A same-thread call: cheaper than waking the
    /// loop's next iteration to start them.
    fn complete(&self, py: Python<'_>, seq: u64) -> PyResult<Option<Py<PyAny>>> {
        let step = {
            let mut inner = lock(&self.inner);
            match inner.complete(Instant::now(), seq) {
                Ok(step) => step,
                Err(e) => {
                    inner.abort();
                    return Err(to_py_err_in(py, e));
                }
            }
        };
        match step {
            Some(driver::Action::Start(starts)) => Ok(Some(start_list(py, starts)?)),
            _ => Ok(None),
        }
    }

    /// True when events run as tasks (`Action.Start`), false for batches (`Action.Handle`).
    fn is_concurrent(&self) -> bool {
        lock(&self.inner).is_concurrent()
    }

    /// The batch from the last `Action.Handle` was handled.
    fn handled(&self) {
        lock(&self.inner).handled();
    }

    /// The processor's `flush` returned.
    fn flushed(&self) {
        lock(&self.inner).flushed();
    }

    /// Hands the processor's snapshot (JSON text) to the checkpoint writer.
    fn submit_snapshot(&self, py: Python<'_>, json: String) -> PyResult<()> {
        lock(&self.inner)
            .submit_snapshot(json)
            .map_err(|e| to_py_err_in(py, e))
    }

    /// The processor failed: stop without writing its state.
    fn abort(&self) {
        lock(&self.inner).abort();
    }

    /// Thread-safe, idempotent graceful stop.
    fn stop(&self) {
        self.stop.stop();
    }

    fn stop_requested(&self) -> bool {
        self.stop.is_stopped()
    }

    /// Counters and gauges, with the keys of `_stats.Stats`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let st = &self.stats;
        d.set_item("client_id", &self.client_id)?;
        d.set_item("events_received", Stats::get(&st.events_received))?;
        d.set_item("events_handled", Stats::get(&st.events_handled))?;
        d.set_item("stream_signals", Stats::get(&st.stream_signals))?;
        d.set_item("checkpoints_written", Stats::get(&st.checkpoints_written))?;
        d.set_item("checkpoints_failed", Stats::get(&st.checkpoints_failed))?;
        d.set_item("checkpoints_skipped", Stats::get(&st.checkpoints_skipped))?;
        d.set_item("reconnects", Stats::get(&st.reconnects))?;
        d.set_item("batches", Stats::get(&st.batches))?;
        d.set_item("phase", st.phase().name())?;
        d.set_item("last_cursor", lock(&st.last_cursor).clone())?;
        let age = lock(&st.last_checkpoint_at)
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map(|d| d.as_secs_f64());
        d.set_item("last_checkpoint_age", age)?;
        let depth = py.detach(|| lock(&self.inner).buffer_depth());
        d.set_item("buffer_depth", depth)?;
        let handled = Stats::get(&st.events_handled);
        let total_ns = Stats::get(&st.handle_ns_total);
        let mean = if handled > 0 {
            total_ns as f64 / handled as f64 / 1e9
        } else {
            0.0
        };
        d.set_item("handle_seconds_mean", mean)?;
        let max = Stats::get(&st.handle_ns_max) as f64 / 1e9;
        d.set_item("handle_seconds_max", max)?;
        d.set_item("in_flight", Stats::get(&st.in_flight))?;
        d.set_item("events_pending", Stats::get(&st.events_pending))?;
        d.set_item("retries", Stats::get(&st.retries))?;
        d.set_item("failed_events", Stats::get(&st.failed_events))?;
        d.set_item("watermark", lock(&st.watermark).clone())?;
        d.set_item("busy_seconds", st.busy_seconds())?;
        d.set_item("events_foreign", Stats::get(&st.events_foreign))?;
        Ok(d)
    }
}

/// The payload of `Action.Start`: a list of `(seq, attempt, EventEnvelope)`.
fn start_list(py: Python<'_>, starts: Vec<(u64, u32, crate::model::Event)>) -> PyResult<Py<PyAny>> {
    let items: Vec<(u64, u32, Py<EventEnvelope>)> = starts
        .into_iter()
        .map(|(seq, attempt, e)| Ok((seq, attempt, Py::new(py, EventEnvelope::from_event(e))?)))
        .collect::<PyResult<_>>()?;
    Ok(PyList::new(py, items)?.into_any().unbind())
}

/// The default lane key of an event of `kind` with payload `data` (what the driver computes
/// natively; `payload.default_key` must give the same answers).
#[pyfunction]
pub fn default_key(kind: &str, data: &[u8]) -> Option<String> {
    crate::payload::default_key(kind, data)
}

/// The shard (0 to `shard_count - 1`) of events whose key is `key`: FNV-1a 64-bit over the
/// key's UTF-8 bytes (offset basis 0xcbf29ce484222325, prime 0x100000001b3), modulo
/// `shard_count`; a `None` key is shard 0. `shard_count` must be at least 1.
#[pyfunction]
#[pyo3(signature = (key, shard_count))]
pub fn shard_of(key: Option<&str>, shard_count: i64) -> PyResult<u64> {
    let count = u64::try_from(shard_count)
        .ok()
        .filter(|c| *c >= 1)
        .ok_or_else(|| {
            PyValueError::new_err(format!("shard_count must be at least 1, got {shard_count}"))
        })?;
    Ok(crate::shard::shard_of(key, count))
}

/// What `Driver.load()` resolved to: `text` is the stored value as JSON (None on a first run).
#[pyclass(frozen, module = "memory_service_processor._native")]
pub struct LoadResult {
    #[pyo3(get)]
    text: Option<String>,
    checkpoint: Mutex<Option<Checkpoint>>,
}

impl LoadResult {
    fn take(&self) -> Option<Checkpoint> {
        lock(&self.checkpoint).take()
    }
}
