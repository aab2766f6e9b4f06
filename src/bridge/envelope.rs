//! `EventEnvelope`, the event as the processor sees it. Python counterpart: `_model.py`, which
//! re-exports it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyString};

use crate::model::Event;

static JSON_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static DATETIME_FROMTS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static UTC: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Seconds since the Unix epoch (0 for earlier times).
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// An event as the processor sees it. Immutable; `data` is decoded from JSON on first access.
#[pyclass(frozen, module = "memory_service_processor", name = "EventEnvelope")]
pub struct EventEnvelope {
    event: String,
    kind: String,
    raw: Bytes,
    cursor: Option<String>,
    received: SystemTime,
    data: PyOnceLock<Py<PyAny>>,
}

impl EventEnvelope {
    pub fn from_event(e: Event) -> EventEnvelope {
        EventEnvelope {
            event: e.event,
            kind: e.kind,
            raw: e.data,
            cursor: e.cursor,
            received: e.received,
            data: PyOnceLock::new(),
        }
    }

    pub fn to_event(&self) -> Event {
        Event {
            event: self.event.clone(),
            kind: self.kind.clone(),
            data: self.raw.clone(),
            cursor: self.cursor.clone(),
            received: self.received,
            shard: crate::model::ShardMark::Undecided,
        }
    }
}

fn extract_bytes(v: &Bound<'_, PyAny>, name: &str) -> PyResult<Bytes> {
    if let Ok(b) = v.cast::<PyBytes>() {
        return Ok(Bytes::copy_from_slice(b.as_bytes()));
    }
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(Bytes::copy_from_slice(s.to_cow()?.as_bytes()));
    }
    if let Ok(b) = v.extract::<Vec<u8>>() {
        return Ok(Bytes::from(b));
    }
    Err(PyTypeError::new_err(format!(
        "{name} must be bytes or str, not {}",
        v.get_type().name()?
    )))
}

fn extract_time(py: Python<'_>, t: Option<&Bound<'_, PyAny>>) -> PyResult<SystemTime> {
    let Some(t) = t.filter(|t| !t.is_none()) else {
        return Ok(SystemTime::now());
    };
    let ts: f64 = if let Ok(f) = t.extract::<f64>() {
        f
    } else {
        let datetime = py.import("datetime")?;
        if !t.is_instance(&datetime.getattr("datetime")?)? {
            return Err(PyTypeError::new_err("time must be a datetime or None"));
        }
        if t.getattr("tzinfo")?.is_none() {
            return Err(PyValueError::new_err(
                "time must be timezone-aware (e.g. datetime.now(timezone.utc))",
            ));
        }
        t.call_method0("timestamp")?.extract()?
    };
    received_at(ts)
}

/// The latest time `datetime` can represent (9999-12-31T23:59:59Z), in Unix seconds.
const MAX_UNIX_SECONDS: f64 = 253_402_300_799.0;

/// `ts` Unix seconds as a `SystemTime` (earlier than the epoch: the epoch); a ValueError for
/// NaN, infinities and anything outside `datetime`'s range, never a panic.
fn received_at(ts: f64) -> PyResult<SystemTime> {
    if !ts.is_finite() || ts.abs() > MAX_UNIX_SECONDS {
        return Err(PyValueError::new_err(format!(
            "time must be a finite Unix timestamp within datetime's range (|t| <= {MAX_UNIX_SECONDS}), got {ts}"
        )));
    }
    Duration::try_from_secs_f64(ts.max(0.0))
        .ok()
        .and_then(|d| UNIX_EPOCH.checked_add(d))
        .ok_or_else(|| PyValueError::new_err(format!("time is out of range: {ts}")))
}

#[pymethods]
impl EventEnvelope {
    #[new]
    #[pyo3(signature = (event, kind, raw_data, cursor=None, time=None))]
    fn new(
        py: Python<'_>,
        event: String,
        kind: String,
        raw_data: &Bound<'_, PyAny>,
        cursor: Option<String>,
        time: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        Ok(EventEnvelope {
            event,
            kind,
            raw: extract_bytes(raw_data, "raw_data")?,
            cursor,
            received: extract_time(py, time)?,
            data: PyOnceLock::new(),
        })
    }

    /// The action: created, updated, appended, ...
    #[getter]
    fn event(&self) -> &str {
        &self.event
    }

    /// The resource: conversation, entry, response, membership (or stream, for signals).
    #[getter]
    fn kind(&self) -> &str {
        &self.kind
    }

    /// The opaque durable position of this event, if the server sent one.
    #[getter]
    fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    /// The payload bytes exactly as received.
    #[getter]
    fn raw_data<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.raw)
    }

    /// The decoded JSON payload (decoded once, on first access).
    #[getter]
    fn data(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.data
            .get_or_try_init(py, || {
                let loads = JSON_LOADS.get_or_try_init(py, || {
                    py.import("json")?.getattr("loads").map(Bound::unbind)
                })?;
                loads
                    .bind(py)
                    .call1((PyBytes::new(py, &self.raw),))
                    .map(Bound::unbind)
                    .map_err(|e| {
                        let msg = format!(
                            "event data at cursor {} ({}/{}) is not valid JSON: {}",
                            self.cursor.as_deref().unwrap_or("<none>"),
                            self.kind,
                            self.event,
                            e.value(py)
                        );
                        let err = PyValueError::new_err(msg);
                        err.set_cause(py, Some(e));
                        err
                    })
            })
            .map(|v| v.clone_ref(py))
    }

    /// Time of receipt (UTC); the wire carries no event time.
    #[getter]
    fn time(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let utc = UTC.get_or_try_init(py, || {
            py.import("datetime")?
                .getattr("timezone")?
                .getattr("utc")
                .map(Bound::unbind)
        })?;
        let from_ts = DATETIME_FROMTS.get_or_try_init(py, || {
            py.import("datetime")?
                .getattr("datetime")?
                .getattr("fromtimestamp")
                .map(Bound::unbind)
        })?;
        from_ts
            .bind(py)
            .call1((unix_seconds(self.received), utc.bind(py)))
            .map(Bound::unbind)
    }

    fn __repr__(&self) -> String {
        format!(
            "EventEnvelope(event={:?}, kind={:?}, cursor={}, raw_data=<{} bytes>)",
            self.event,
            self.kind,
            self.cursor
                .as_deref()
                .map(|c| format!("{c:?}"))
                .unwrap_or_else(|| "None".into()),
            self.raw.len()
        )
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        match other.cast::<EventEnvelope>() {
            Ok(o) => {
                let o = o.get();
                self.event == o.event
                    && self.kind == o.kind
                    && self.raw == o.raw
                    && self.cursor == o.cursor
                    && self.received == o.received
            }
            Err(_) => false,
        }
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&self.event, &self.kind, &self.raw, &self.cursor).hash(&mut h);
        h.finish()
    }
}
