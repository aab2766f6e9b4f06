//! The loop's decisions, tested with fake clients: no Python, no network.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::json;

use super::*;
use crate::model::{EventStream, Scope, StalePolicy, SubscribeRequest};

fn ev(kind: &str, event: &str, cursor: Option<&str>, data: &str) -> Event {
    Event {
        event: event.into(),
        kind: kind.into(),
        data: Bytes::copy_from_slice(data.as_bytes()),
        cursor: cursor.map(str::to_string),
        received: SystemTime::now(),
        shard: crate::model::ShardMark::Undecided,
    }
}

fn entry(cursor: u64) -> Event {
    ev(
        "entry",
        "appended",
        Some(&cursor.to_string()),
        r#"{"entry":"e"}"#,
    )
}

fn phase(p: &str) -> Event {
    ev("stream", "phase", None, &format!(r#"{{"phase":"{p}"}}"#))
}

/// One scripted subscription: what subscribe answers, then what recv yields. After the script,
/// `end` decides: a clean end of stream, or waiting forever (a quiet live tail).
enum Script {
    Fail(Error),
    Stream {
        items: Vec<Result<Event>>,
        end: bool,
    },
}

#[derive(Default)]
struct FakeSource {
    scripts: Mutex<VecDeque<Script>>,
    requests: Mutex<Vec<(Instant, SubscribeRequest)>>,
}

impl FakeSource {
    fn new(scripts: Vec<Script>) -> Arc<FakeSource> {
        Arc::new(FakeSource {
            scripts: Mutex::new(scripts.into()),
            requests: Mutex::new(Vec::new()),
        })
    }
    fn requests(&self) -> Vec<SubscribeRequest> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.1.clone())
            .collect()
    }
    fn times(&self) -> Vec<Instant> {
        self.requests.lock().unwrap().iter().map(|r| r.0).collect()
    }
}

struct FakeStream {
    items: VecDeque<Result<Event>>,
    end: bool,
}

#[async_trait]
impl EventStream for FakeStream {
    async fn recv(&mut self) -> Result<Option<Event>> {
        match self.items.pop_front() {
            Some(Ok(e)) => Ok(Some(e)),
            Some(Err(e)) => Err(e),
            None if self.end => Ok(None),
            None => std::future::pending().await,
        }
    }
}

#[async_trait]
impl EventClient for FakeSource {
    async fn subscribe(&self, request: SubscribeRequest) -> Result<Box<dyn EventStream>> {
        self.requests
            .lock()
            .unwrap()
            .push((Instant::now(), request));
        let script = self.scripts.lock().unwrap().pop_front();
        match script {
            Some(Script::Fail(e)) => Err(e),
            Some(Script::Stream { items, end }) => Ok(Box::new(FakeStream {
                items: items.into(),
                end,
            })),
            None => Ok(Box::new(FakeStream {
                items: VecDeque::new(),
                end: false,
            })),
        }
    }
}

#[derive(Default)]
struct FakeStore {
    stored: Mutex<HashMap<String, Checkpoint>>,
    puts: Mutex<Vec<serde_json::Value>>,
    put_failures: Mutex<VecDeque<Error>>,
    /// The processor's handled count, to check no write is ever ahead of it.
    handled: Arc<AtomicU64>,
    ahead: AtomicU64,
}

#[async_trait]
impl CheckpointClient for FakeStore {
    async fn get(&self, client_id: &str) -> Result<Checkpoint> {
        self.stored
            .lock()
            .unwrap()
            .get(client_id)
            .cloned()
            .ok_or_else(|| Error::CheckpointNotFound(client_id.into()))
    }
    async fn put(
        &self,
        client_id: &str,
        content_type: &str,
        value: &serde_json::Value,
    ) -> Result<Checkpoint> {
        if let Some(e) = self.put_failures.lock().unwrap().pop_front() {
            return Err(e);
        }
        let count = value.get("count").and_then(|c| c.as_u64()).unwrap_or(0);
        if count > self.handled.load(Ordering::SeqCst) {
            self.ahead.fetch_add(1, Ordering::SeqCst);
        }
        self.puts.lock().unwrap().push(value.clone());
        let cp = Checkpoint {
            client_id: client_id.into(),
            content_type: content_type.into(),
            value: value.clone(),
            updated_at: Some(SystemTime::now()),
        };
        self.stored
            .lock()
            .unwrap()
            .insert(client_id.into(), cp.clone());
        Ok(cp)
    }
}

impl FakeStore {
    fn puts(&self) -> Vec<serde_json::Value> {
        self.puts.lock().unwrap().clone()
    }
}

/// The Rust stand-in for a Python processor: counts and keeps `lastEventCursor`.
struct Proc {
    count: u64,
    last: Option<String>,
    handled_cursors: Vec<String>,
    signals: Vec<Event>,
    flushes: u64,
    snapshots: u64,
    stop_at: Option<u64>,
    fail_at: Option<u64>,
    shared_count: Arc<AtomicU64>,
}

impl Proc {
    fn new(stop_at: Option<u64>) -> Proc {
        Proc {
            count: 0,
            last: None,
            handled_cursors: Vec::new(),
            signals: Vec::new(),
            flushes: 0,
            snapshots: 0,
            stop_at,
            fail_at: None,
            shared_count: Arc::new(AtomicU64::new(0)),
        }
    }
    fn load(&mut self, v: &serde_json::Value) {
        self.count = v["count"].as_u64().unwrap_or(0);
        self.last = v["lastEventCursor"].as_str().map(str::to_string);
    }
    fn snapshot(&mut self) -> String {
        self.snapshots += 1;
        json!({"count": self.count, "lastEventCursor": self.last}).to_string()
    }
}

fn config() -> LoopConfig {
    LoopConfig {
        client_id: "test-proc".into(),
        kinds: vec!["entry".into()],
        reconnect_min: Duration::from_millis(40),
        reconnect_max: Duration::from_millis(200),
        checkpoint_interval: Duration::from_secs(60),
        after_cursor: Some("start".into()),
        ..LoopConfig::default()
    }
}

const CT: &str = "application/test+json";

async fn run(
    cfg: LoopConfig,
    source: Arc<FakeSource>,
    store: Arc<FakeStore>,
    proc: &mut Proc,
) -> Result<()> {
    let mut d = Driver::new(
        cfg,
        source,
        store.clone(),
        CT.into(),
        tokio::runtime::Handle::current(),
    )?;
    proc.shared_count = store.handled.clone();
    let loaded = d.load_future().await?;
    if let Some(cp) = &loaded {
        proc.load(&cp.value);
    }
    d.start(loaded.as_ref())?;
    let stop = d.stop_handle();
    loop {
        match d.next_action(Instant::now()) {
            Action::Handle(batch) => {
                for e in batch {
                    if Some(proc.count + 1) == proc.fail_at {
                        d.abort();
                        return Err(Error::Invalid("processor failed".into()));
                    }
                    proc.count += 1;
                    proc.shared_count.store(proc.count, Ordering::SeqCst);
                    proc.last = e.cursor.clone();
                    proc.handled_cursors
                        .push(e.cursor.clone().unwrap_or_default());
                }
                d.handled();
                if proc.stop_at.is_some_and(|n| proc.count >= n) {
                    stop.stop();
                }
            }
            Action::Signal(e) => proc.signals.push(e),
            Action::Flush => {
                proc.flushes += 1;
                d.flushed();
            }
            Action::Snapshot => {
                let s = proc.snapshot();
                d.submit_snapshot(s)?;
            }
            Action::Wait(dl) | Action::WaitWriter(dl) => wait(d.waker(), dl).await,
            Action::Done(r) => return r,
            other => panic!("unexpected action in sequential mode: {other:?}"),
        }
    }
}

fn replay(cursors: std::ops::RangeInclusive<u64>, end: bool) -> Script {
    let mut items = vec![Ok(phase("replay"))];
    items.extend(cursors.map(|c| Ok(entry(c))));
    items.push(Ok(phase("live")));
    Script::Stream { items, end }
}

#[tokio::test]
async fn first_run_subscribes_from_after_cursor_with_the_configured_request() {
    let source = FakeSource::new(vec![replay(1..=3, false)]);
    let store = Arc::new(FakeStore::default());
    let mut p = Proc::new(Some(3));
    let mut cfg = config();
    cfg.entry_channels = vec!["history".into()];
    cfg.entry_roles = vec!["USER".into()];
    cfg.scope = Scope::User;
    cfg.justification = Some("audit".into());
    run(cfg, source.clone(), store.clone(), &mut p)
        .await
        .unwrap();
    let reqs = source.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.after_cursor.as_deref(), Some("start"));
    assert_eq!(r.detail.as_deref(), Some("full"));
    assert_eq!(r.kinds, vec!["entry".to_string()]);
    assert_eq!(r.entry_channels, vec!["history".to_string()]);
    assert_eq!(r.entry_roles, vec!["USER".to_string()]);
    assert_eq!(r.scope, Scope::User);
    assert_eq!(r.justification.as_deref(), Some("audit"));
    assert_eq!(p.handled_cursors, vec!["1", "2", "3"]);
    // stream signals never reach handle, but reach the hook
    assert!(!p.signals.is_empty());
    assert!(p.signals.iter().all(|s| s.kind == "stream"));
    assert_eq!(
        store.puts().last().unwrap(),
        &json!({"count": 3, "lastEventCursor": "3"})
    );
    assert_eq!(store.ahead.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn resumes_after_the_checkpoint_cursor() {
    let source = FakeSource::new(vec![replay(6..=8, false)]);
    let store = Arc::new(FakeStore::default());
    store.stored.lock().unwrap().insert(
        "test-proc".into(),
        Checkpoint {
            client_id: "test-proc".into(),
            content_type: CT.into(),
            value: json!({"count": 5, "lastEventCursor": "5"}),
            updated_at: None,
        },
    );
    let mut p = Proc::new(Some(8));
    run(config(), source.clone(), store.clone(), &mut p)
        .await
        .unwrap();
    assert_eq!(source.requests()[0].after_cursor.as_deref(), Some("5"));
    assert_eq!(p.count, 8);
    assert_eq!(
        store.puts().last().unwrap(),
        &json!({"count": 8, "lastEventCursor": "8"})
    );
}

#[tokio::test]
async fn content_type_mismatch_fails_before_subscribing() {
    let source = FakeSource::new(vec![]);
    let store = Arc::new(FakeStore::default());
    store.stored.lock().unwrap().insert(
        "test-proc".into(),
        Checkpoint {
            client_id: "test-proc".into(),
            content_type: "application/other".into(),
            value: json!({}),
            updated_at: None,
        },
    );
    let mut p = Proc::new(None);
    let err = run(config(), source.clone(), store, &mut p)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ContentTypeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("application/other"));
    assert!(source.requests().is_empty());
}

#[tokio::test]
async fn an_unchanged_snapshot_is_not_written_again() {
    let source = FakeSource::new(vec![replay(1..=2, false)]);
    let store = Arc::new(FakeStore::default());
    let mut p = Proc::new(Some(2));
    run(config(), source, store.clone(), &mut p).await.unwrap();
    let puts = store.puts();
    // the final save on stop found the snapshot identical to the last write
    let dups = puts.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(dups, 0, "{puts:?}");
    assert!(p.snapshots as usize > puts.len() || puts.len() <= 2);
}

#[tokio::test]
async fn clean_end_reconnects_after_backoff_from_the_last_cursor() {
    let source = FakeSource::new(vec![replay(1..=3, true), replay(4..=5, false)]);
    let store = Arc::new(FakeStore::default());
    let mut p = Proc::new(Some(5));
    run(config(), source.clone(), store, &mut p).await.unwrap();
    let reqs = source.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].after_cursor.as_deref(), Some("3"));
    let t = source.times();
    assert!(t[1] - t[0] >= Duration::from_millis(40));
    assert_eq!(p.handled_cursors, vec!["1", "2", "3", "4", "5"]);
}

#[tokio::test]
async fn transient_errors_are_retried_mid_stream_and_at_subscribe() {
    let source = FakeSource::new(vec![
        Script::Fail(Error::Transient("UNAVAILABLE".into())),
        Script::Stream {
            items: vec![
                Ok(phase("replay")),
                Ok(entry(1)),
                Ok(entry(2)),
                Err(Error::Transient("UNAVAILABLE: reset".into())),
            ],
            end: false,
        },
        replay(3..=4, false),
    ]);
    let store = Arc::new(FakeStore::default());
    let mut p = Proc::new(Some(4));
    run(config(), source.clone(), store, &mut p).await.unwrap();
    let reqs = source.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[1].after_cursor.as_deref(), Some("start"));
    assert_eq!(reqs[2].after_cursor.as_deref(), Some("2"));
    assert_eq!(p.handled_cursors, vec!["1", "2", "3", "4"]);
}

#[tokio::test]
async fn fatal_status_fails_fast_without_retry() {
    let source = FakeSource::new(vec![Script::Fail(Error::ServerStatus {
        method: "SubscribeEvents".into(),
        code: "PERMISSION_DENIED".into(),
        message: "admin role required".into(),
    })]);
    let store = Arc::new(FakeStore::default());
    let mut p = Proc::new(None);
    let started = Instant::now();
    let err = run(config(), source.clone(), store, &mut p)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("PERMISSION_DENIED"), "{err}");
    assert!(err.to_string().contains("admin role required"), "{err}");
    assert_eq!(source.requests().len(), 1);
    assert!(started.elapsed() < Duration::from_secs(2));
}

fn invalidate(reason: &str) -> Event {
    ev(
        "stream",
        "invalidate",
        None,
        &format!(r#"{{"reason":"{reason}"}}"#),
    )
}

fn stale_script() -> Script {
    Script::Stream {
        items: vec![
            Ok(phase("replay")),
            Ok(invalidate("cursor beyond retention window")),
        ],
        end: true,
    }
}

fn with_checkpoint(cursor: &str) -> Arc<FakeStore> {
    let store = Arc::new(FakeStore::default());
    store.stored.lock().unwrap().insert(
        "test-proc".into(),
        Checkpoint {
            client_id: "test-proc".into(),
            content_type: CT.into(),
            value: json!({"count": 0, "lastEventCursor": cursor}),
            updated_at: None,
        },
    );
    store
}

#[tokio::test]
async fn stale_cursor_fails_by_default_and_never_loops() {
    let source = FakeSource::new(vec![stale_script(), stale_script(), stale_script()]);
    let mut p = Proc::new(None);
    let err = run(config(), source.clone(), with_checkpoint("3"), &mut p)
        .await
        .unwrap_err();
    match &err {
        Error::StaleCursor { cursor, reason } => {
            assert_eq!(cursor.as_deref(), Some("3"));
            assert!(reason.contains("retention"));
        }
        other => panic!("unexpected {other}"),
    }
    assert_eq!(source.requests().len(), 1);
}

#[tokio::test]
async fn stale_cursor_restart_and_tail_policies() {
    for (policy, want) in [
        (StalePolicy::Restart, Some("start")),
        (StalePolicy::Tail, None),
    ] {
        let source = FakeSource::new(vec![stale_script(), replay(10..=11, false)]);
        let mut cfg = config();
        cfg.stale_cursor = policy;
        let mut p = Proc::new(Some(2));
        run(cfg, source.clone(), with_checkpoint("3"), &mut p)
            .await
            .unwrap();
        let reqs = source.requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[1].after_cursor.as_deref(), want);
        assert!(p.signals.iter().any(|s| s.event == "invalidate"));
    }
}

#[tokio::test]
async fn eviction_resumes_immediately_after_the_last_event() {
    let evicted = ev(
        "stream",
        "evicted",
        Some("2"),
        r#"{"reason":"slow consumer"}"#,
    );
    let source = FakeSource::new(vec![
        Script::Stream {
            items: vec![Ok(phase("replay")), Ok(entry(1)), Ok(entry(2)), Ok(evicted)],
            end: true,
        },
        replay(3..=3, false),
    ]);
    let mut cfg = config();
    cfg.reconnect_min = Duration::from_secs(5);
    cfg.reconnect_max = Duration::from_secs(5);
    let mut p = Proc::new(Some(3));
    let store = Arc::new(FakeStore::default());
    run(cfg, source.clone(), store, &mut p).await.unwrap();
    let reqs = source.requests();
    assert_eq!(reqs[1].after_cursor.as_deref(), Some("2"));
    let t = source.times();
    assert!(
        t[1] - t[0] < Duration::from_secs(1),
        "eviction must not wait the backoff"
    );
    assert_eq!(p.handled_cursors, vec!["1", "2", "3"]);
}

#[tokio::test]
async fn mid_stream_invalidate_resubscribes_from_the_last_cursor() {
    let source = FakeSource::new(vec![
        Script::Stream {
            items: vec![
                Ok(phase("replay")),
                Ok(entry(1)),
                Ok(phase("live")),
                Ok(entry(2)),
                Ok(invalidate("pubsub recovery")),
            ],
            end: false,
        },
        replay(3..=3, false),
    ]);
    let mut p = Proc::new(Some(3));
    run(
        config(),
        source.clone(),
        Arc::new(FakeStore::default()),
        &mut p,
    )
    .await
    .unwrap();
    let reqs = source.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].after_cursor.as_deref(), Some("2"));
    assert!(p.signals.iter().any(|s| s.event == "invalidate"));
}

#[tokio::test]
async fn writes_coalesce_never_run_ahead_and_the_last_state_is_written() {
    let source = FakeSource::new(vec![replay(1..=5000, false)]);
    let store = Arc::new(FakeStore::default());
    let mut p = Proc::new(Some(5000));
    run(config(), source, store.clone(), &mut p).await.unwrap();
    let puts = store.puts();
    assert_eq!(store.ahead.load(Ordering::SeqCst), 0);
    assert_eq!(
        puts.last().unwrap(),
        &json!({"count": 5000, "lastEventCursor": "5000"})
    );
    // counts only ever grow
    let counts: Vec<u64> = puts.iter().map(|v| v["count"].as_u64().unwrap()).collect();
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "{counts:?}");
}

#[tokio::test]
async fn checkpoint_every_n_limits_the_writes() {
    let source = FakeSource::new(vec![replay(1..=1000, false)]);
    let store = Arc::new(FakeStore::default());
    let mut cfg = config();
    cfg.checkpoint_every = 100;
    let mut p = Proc::new(Some(1000));
    run(cfg, source, store.clone(), &mut p).await.unwrap();
    let puts = store.puts();
    assert!(puts.len() <= 11, "{} writes", puts.len());
    assert_eq!(puts.last().unwrap()["count"], 1000);
}

#[tokio::test]
async fn transient_write_failures_are_retried_and_handling_goes_on() {
    let source = FakeSource::new(vec![replay(1..=50, false)]);
    let store = Arc::new(FakeStore::default());
    for _ in 0..3 {
        store
            .put_failures
            .lock()
            .unwrap()
            .push_back(Error::Transient("UNAVAILABLE".into()));
    }
    let mut p = Proc::new(Some(50));
    run(config(), source, store.clone(), &mut p).await.unwrap();
    assert_eq!(store.puts().last().unwrap()["count"], 50);
}

#[tokio::test]
async fn a_fatal_write_error_stops_the_run() {
    let source = FakeSource::new(vec![replay(1..=50, false)]);
    let store = Arc::new(FakeStore::default());
    store
        .put_failures
        .lock()
        .unwrap()
        .push_back(Error::ServerStatus {
            method: "PutCheckpoint".into(),
            code: "PERMISSION_DENIED".into(),
            message: "admin role required".into(),
        });
    let mut p = Proc::new(None);
    let err = run(config(), source, store, &mut p).await.unwrap_err();
    assert!(err.to_string().contains("PERMISSION_DENIED"));
}

#[tokio::test]
async fn a_failed_handle_writes_nothing_more() {
    let source = FakeSource::new(vec![replay(1..=100, false)]);
    let store = Arc::new(FakeStore::default());
    let mut p = Proc::new(None);
    p.fail_at = Some(60);
    let err = run(config(), source, store.clone(), &mut p)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("processor failed"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let max = store
        .puts()
        .iter()
        .map(|v| v["count"].as_u64().unwrap())
        .max()
        .unwrap_or(0);
    assert!(max <= 59, "wrote state {max} of a failed handle");
}

#[tokio::test]
async fn flush_runs_on_the_interval_and_on_stop() {
    let source = FakeSource::new(vec![replay(1..=1, false)]);
    let store = Arc::new(FakeStore::default());
    let mut cfg = config();
    cfg.checkpoint_interval = Duration::from_millis(30);
    let mut p = Proc::new(None);
    let mut d = Driver::new(
        cfg,
        source,
        store.clone(),
        CT.into(),
        tokio::runtime::Handle::current(),
    )
    .unwrap();
    d.start(None).unwrap();
    let stop = d.stop_handle();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.stop();
    });
    let mut flush_times = Vec::new();
    loop {
        match d.next_action(Instant::now()) {
            Action::Handle(b) => {
                p.count += b.len() as u64;
                p.last = b.last().and_then(|e| e.cursor.clone());
                d.handled();
            }
            Action::Flush => {
                flush_times.push(Instant::now());
                d.flushed();
            }
            Action::Snapshot => {
                let s = p.snapshot();
                d.submit_snapshot(s).unwrap();
            }
            Action::Signal(_) => {}
            Action::Wait(dl) | Action::WaitWriter(dl) => wait(d.waker(), dl).await,
            Action::Done(r) => {
                r.unwrap();
                break;
            }
            other => panic!("unexpected action {other:?}"),
        }
    }
    // ~6 interval flushes in 200 ms plus the final one
    assert!(flush_times.len() >= 4, "{}", flush_times.len());
    assert_eq!(store.puts().last().unwrap()["count"], 1);
}

#[tokio::test]
async fn invalid_config_is_refused() {
    let mut cfg = config();
    cfg.client_id = "  ".into();
    let r = Driver::new(
        cfg,
        FakeSource::new(vec![]),
        Arc::new(FakeStore::default()),
        CT.into(),
        tokio::runtime::Handle::current(),
    );
    assert!(matches!(r, Err(Error::Config(_))));
}

#[path = "driver_concurrent_tests.rs"]
mod concurrent;

#[path = "driver_hardening_tests.rs"]
mod hardening;

#[path = "driver_shard_tests.rs"]
mod shard;
