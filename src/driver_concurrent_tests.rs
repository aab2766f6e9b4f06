//! Concurrent mode of the driver with fake clients: keyed lanes, watermark checkpoints,
//! retries, skip/stop, stop with handlers in flight, restarts (docs/semantics.md, the
//! concurrency sections).

use std::collections::{BTreeMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::lanes::OnFailure;

/// An entry of conversation `conv` with a numeric cursor.
fn conv_entry(cursor: u64, conv: &str) -> Event {
    ev(
        "entry",
        "appended",
        Some(&cursor.to_string()),
        &format!(r#"{{"conversation":"{conv}","entry":"e{cursor}"}}"#),
    )
}

fn conv_replay(events: Vec<Event>, end: bool) -> Script {
    let mut items = vec![Ok(phase("replay"))];
    items.extend(events.into_iter().map(Ok));
    items.push(Ok(phase("live")));
    Script::Stream { items, end }
}

/// The stand-in for a concurrent Python processor: tasks finish in a random order; the state
/// (per-conversation counts) changes when a handler completes (after its last `await`).
struct Conc {
    rng: StdRng,
    counts: BTreeMap<String, u64>,
    running: Vec<(u64, Event)>,
    running_keys: HashSet<String>,
    /// Per key, the last cursor started (stream order check).
    last_started: HashMap<String, u64>,
    handled: Vec<u64>,
    /// Cursors whose handler never finishes (until cancelled).
    stuck: HashSet<u64>,
    /// Cursor -> tries that fail before one succeeds (u32::MAX: always fails).
    fail_tries: HashMap<u64, u32>,
    tries: HashMap<u64, u32>,
    hooks: Vec<u64>,
    max_running: usize,
    stop_after: Option<usize>,
    cancelled: Vec<u64>,
    custom_key: bool,
    /// Report completions one by one with `Driver::complete` (as the Python loop does while
    /// it waits) and start what it returns at once.
    inline: bool,
    /// The last run's stats.
    stats: Option<Arc<crate::stats::Stats>>,
}

impl Conc {
    fn new(seed: u64) -> Conc {
        Conc {
            rng: StdRng::seed_from_u64(seed),
            counts: BTreeMap::new(),
            running: Vec::new(),
            running_keys: HashSet::new(),
            last_started: HashMap::new(),
            handled: Vec::new(),
            stuck: HashSet::new(),
            fail_tries: HashMap::new(),
            tries: HashMap::new(),
            hooks: Vec::new(),
            max_running: 0,
            stop_after: None,
            cancelled: Vec::new(),
            custom_key: false,
            inline: false,
            stats: None,
        }
    }

    fn key(e: &Event) -> String {
        crate::payload::default_key(&e.kind, &e.data).unwrap_or_default()
    }

    fn cursor(e: &Event) -> u64 {
        e.cursor.as_deref().unwrap_or("0").parse().unwrap_or(0)
    }

    fn load(&mut self, v: &serde_json::Value) {
        if let Some(m) = v.get("counts").and_then(|m| m.as_object()) {
            for (k, n) in m {
                self.counts.insert(k.clone(), n.as_u64().unwrap_or(0));
            }
        }
    }

    fn snapshot(&self) -> String {
        json!({"counts": self.counts, "lastEventCursor": "processor's own idea"}).to_string()
    }

    /// Finishes a random subset of the running handlers (none of the stuck ones).
    fn finish_some(&mut self, now: Instant) -> Report {
        let _ = now;
        let mut report = Report::default();
        let mut keep = Vec::new();
        for (seq, e) in std::mem::take(&mut self.running) {
            let c = Self::cursor(&e);
            if self.stuck.contains(&c) || !self.rng.random_bool(0.4) {
                keep.push((seq, e));
                continue;
            }
            self.running_keys.remove(&Self::key(&e));
            let tries = self.tries.entry(c).or_insert(0);
            *tries += 1;
            if self.fail_tries.get(&c).is_some_and(|n| *tries <= *n) {
                report.failed.push(seq);
                continue;
            }
            *self.counts.entry(Self::key(&e)).or_insert(0) += 1;
            self.handled.push(c);
            report.done.push(seq);
        }
        self.running = keep;
        report
    }

    fn start(&mut self, seq: u64, e: Event) {
        let k = Self::key(&e);
        let c = Self::cursor(&e);
        assert!(
            self.running_keys.insert(k.clone()),
            "two handlers of key {k} overlap"
        );
        if let Some(prev) = self.last_started.get(&k) {
            assert!(*prev <= c, "key {k}: {c} started after {prev}");
        }
        self.last_started.insert(k, c);
        self.running.push((seq, e));
        self.max_running = self.max_running.max(self.running.len());
    }
}

async fn run_conc(
    cfg: LoopConfig,
    source: Arc<FakeSource>,
    store: Arc<FakeStore>,
    p: &mut Conc,
) -> Result<()> {
    let mut d = Driver::new(
        cfg,
        source,
        store.clone(),
        CT.into(),
        tokio::runtime::Handle::current(),
    )?;
    assert!(d.is_concurrent());
    p.stats = Some(d.stats.clone());
    let loaded = d.load_future().await?;
    if let Some(cp) = &loaded {
        p.load(&cp.value);
    }
    d.start(loaded.as_ref())?;
    let stop = d.stop_handle();
    let mut pending = Report::default();
    loop {
        let now = Instant::now();
        d.report(now, std::mem::take(&mut pending))?;
        match d.next_action(now) {
            Action::Start(starts) => {
                for (seq, _attempt, e) in starts {
                    p.start(seq, e);
                }
            }
            Action::Keys(events) => {
                pending.keys = Some(events.iter().map(|e| Some(Conc::key(e))).collect());
            }
            Action::OnFailure(seq) => {
                p.hooks.push(seq);
                pending.done.push(seq);
            }
            Action::Cancel(seqs) => {
                for seq in seqs {
                    let i = p.running.iter().position(|(s, _)| *s == seq).unwrap();
                    let (_, e) = p.running.remove(i);
                    p.cancelled.push(Conc::cursor(&e));
                    pending.cancelled.push(seq);
                }
            }
            Action::Failed(seq) => {
                return Err(Error::Invalid(format!("event #{seq} failed")));
            }
            Action::Signal(_) => {}
            Action::Flush => d.flushed(),
            Action::Snapshot => d.submit_snapshot(p.snapshot())?,
            Action::Wait(dl) | Action::WaitWriter(dl) => {
                if p.running.is_empty() {
                    wait(d.waker(), dl).await;
                } else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            Action::Handle(_) => panic!("Handle in concurrent mode"),
            Action::Done(r) => return r,
        }
        if !stop.is_stopped() && p.stop_after.is_some_and(|n| p.handled.len() >= n) {
            stop.stop();
        }
        if !p.running.is_empty() {
            let r = p.finish_some(Instant::now());
            if p.inline {
                for seq in r.done {
                    if let Some(Action::Start(starts)) = d.complete(Instant::now(), seq)? {
                        for (seq, _attempt, e) in starts {
                            p.start(seq, e);
                        }
                    }
                }
            } else {
                pending.done.extend(r.done);
            }
            pending.failed.extend(r.failed);
        }
    }
}

fn conc_config(max_concurrency: usize) -> LoopConfig {
    LoopConfig {
        max_concurrency,
        checkpoint_interval: Duration::from_millis(20),
        stop_timeout: Duration::from_millis(300),
        ..config()
    }
}

/// 200 events over 7 conversations (and a few without one).
fn stream(n: u64) -> Vec<Event> {
    (1..=n)
        .map(|c| {
            if c % 13 == 0 {
                ev(
                    "entry",
                    "appended",
                    Some(&c.to_string()),
                    r#"{"entry":"x"}"#,
                )
            } else {
                conv_entry(c, &format!("c{}", c % 7))
            }
        })
        .collect()
}

fn expected_counts(n: u64) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for e in stream(n) {
        *m.entry(Conc::key(&e)).or_insert(0) += 1;
    }
    m
}

fn stored(store: &FakeStore) -> serde_json::Value {
    store.stored.lock().unwrap()["test-proc"].value.clone()
}

#[tokio::test]
async fn keyed_lanes_keep_order_overlap_and_end_with_the_full_watermark() {
    for seed in 0..5 {
        let source = FakeSource::new(vec![conv_replay(stream(200), false)]);
        let store = Arc::new(FakeStore::default());
        let mut p = Conc::new(seed);
        p.stop_after = Some(200);
        p.custom_key = seed % 2 == 1;
        let cfg = LoopConfig {
            custom_key: p.custom_key,
            ..conc_config(8)
        };
        run_conc(cfg, source, store.clone(), &mut p).await.unwrap();
        assert_eq!(p.handled.len(), 200);
        assert!(p.max_running > 1 && p.max_running <= 8, "{}", p.max_running);
        let v = stored(&store);
        assert_eq!(
            v["lastEventCursor"], "200",
            "the runtime's watermark, not the processor's"
        );
        assert!(v.get("completedAboveWatermark").is_none());
        let counts: BTreeMap<String, u64> = serde_json::from_value(v["counts"].clone()).unwrap();
        assert_eq!(counts, expected_counts(200));
        // Every stored checkpoint: the watermark's prefix was handled when it was written.
        for put in store.puts() {
            if let Some(w) = put["lastEventCursor"].as_str() {
                let w: u64 = w.parse().unwrap();
                let total: u64 =
                    serde_json::from_value::<BTreeMap<String, u64>>(put["counts"].clone())
                        .unwrap()
                        .values()
                        .sum();
                let above = put["completedAboveWatermark"]
                    .as_array()
                    .map_or(0, Vec::len) as u64;
                assert_eq!(total, w + above, "state and position disagree in {put}");
            }
        }
    }
}

#[tokio::test]
async fn completions_reported_inline_keep_order_the_bound_and_the_watermark() {
    for seed in 0..4 {
        let source = FakeSource::new(vec![conv_replay(stream(200), false)]);
        let store = Arc::new(FakeStore::default());
        let mut p = Conc::new(100 + seed);
        p.inline = true;
        p.stop_after = Some(200);
        if seed % 2 == 1 {
            // A failing event and its retry, between inline completions.
            p.fail_tries.insert(20, 1);
        }
        let cfg = LoopConfig {
            max_attempts: 2,
            retry_min: Duration::from_millis(1),
            retry_max: Duration::from_millis(2),
            ..conc_config(8)
        };
        run_conc(cfg, source, store.clone(), &mut p).await.unwrap();
        let d_stats = p.stats.clone().unwrap();
        assert_eq!(p.handled.len(), 200);
        assert!(p.max_running > 1 && p.max_running <= 8, "{}", p.max_running);
        let v = stored(&store);
        assert_eq!(v["lastEventCursor"], "200");
        assert!(v.get("completedAboveWatermark").is_none());
        let counts: BTreeMap<String, u64> = serde_json::from_value(v["counts"].clone()).unwrap();
        assert_eq!(counts, expected_counts(200));
        // Handler durations are recorded per call in concurrent mode.
        assert!(Stats::get(&d_stats.handle_ns_total) > 0);
        assert!(Stats::get(&d_stats.handle_ns_max) > 0);
        assert!(Stats::get(&d_stats.handle_ns_max) <= Stats::get(&d_stats.handle_ns_total));
        assert_eq!(Stats::get(&d_stats.events_handled), 200);
    }
}

#[tokio::test]
async fn a_stuck_key_holds_the_watermark_and_a_restart_redoes_only_it() {
    let store = Arc::new(FakeStore::default());
    let source = FakeSource::new(vec![conv_replay(stream(60), false)]);
    let mut p = Conc::new(7);
    p.stuck.insert(10);
    p.stop_after = Some(50);
    run_conc(conc_config(4), source, store.clone(), &mut p)
        .await
        .unwrap();
    assert_eq!(
        p.cancelled,
        vec![10],
        "the stuck handler is cancelled at the stop timeout"
    );
    let v = stored(&store);
    assert_eq!(
        v["lastEventCursor"], "9",
        "the watermark never passes the stuck event"
    );
    let above: Vec<u64> = v["completedAboveWatermark"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().parse().unwrap())
        .collect();
    assert!(!above.contains(&10));
    for c in &p.handled {
        assert!(*c <= 9 || above.contains(c), "{c} handled but not recorded");
    }
    // Restart: the replay after the watermark comes again; only unfinished events run.
    let source = FakeSource::new(vec![conv_replay(stream(60).split_off(9), false)]);
    let mut p2 = Conc::new(8);
    p2.stop_after = Some(60 - p.handled.len());
    run_conc(conc_config(4), source, store.clone(), &mut p2)
        .await
        .unwrap();
    assert!(p2.handled.contains(&10));
    let mut all: Vec<u64> = p.handled.iter().chain(&p2.handled).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=60).collect::<Vec<_>>(),
        "every event exactly once"
    );
    let v = stored(&store);
    let counts: BTreeMap<String, u64> = serde_json::from_value(v["counts"].clone()).unwrap();
    assert_eq!(counts, expected_counts(60));
}

#[tokio::test]
async fn retries_keep_key_order_and_skip_calls_the_hook_once() {
    let store = Arc::new(FakeStore::default());
    let source = FakeSource::new(vec![conv_replay(stream(40), false)]);
    let mut p = Conc::new(3);
    p.fail_tries.insert(8, 2); // succeeds on the third try
    p.fail_tries.insert(15, u32::MAX); // never succeeds: skipped
    p.stop_after = Some(39);
    let cfg = LoopConfig {
        max_attempts: 3,
        retry_min: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        on_failure: OnFailure::Skip,
        ..conc_config(4)
    };
    run_conc(cfg, source, store.clone(), &mut p).await.unwrap();
    assert_eq!(p.tries[&8], 3);
    assert_eq!(p.tries[&15], 3);
    assert_eq!(p.hooks.len(), 1, "the hook runs once for the skipped event");
    // Key c1 (8 % 7): 15 (also c1) started only after 8 finished; the order check in
    // `Conc::start` covers it; 22 after 15's hook.
    let pos = |c: u64| p.handled.iter().position(|h| *h == c).unwrap();
    assert!(pos(8) < pos(22));
    let v = stored(&store);
    assert_eq!(v["lastEventCursor"], "40");
}

#[tokio::test]
async fn stop_on_failure_never_checkpoints_the_failed_event() {
    let store = Arc::new(FakeStore::default());
    let source = FakeSource::new(vec![conv_replay(stream(40), false)]);
    let mut p = Conc::new(5);
    p.fail_tries.insert(12, u32::MAX);
    let err = run_conc(conc_config(4), source, store.clone(), &mut p)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("failed"), "{err}");
    for put in store.puts() {
        let w: u64 = put["lastEventCursor"]
            .as_str()
            .map_or(0, |c| c.parse().unwrap());
        assert!(w < 12, "{put}");
        let above = put["completedAboveWatermark"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(!above.contains(&json!("12")), "{put}");
    }
}

#[tokio::test]
async fn concurrent_mode_refuses_a_snapshot_that_is_not_an_object() {
    let source = FakeSource::new(vec![conv_replay(stream(3), false)]);
    let store = Arc::new(FakeStore::default());
    let mut d = Driver::new(
        conc_config(2),
        source,
        store,
        CT.into(),
        tokio::runtime::Handle::current(),
    )
    .unwrap();
    d.start(None).unwrap();
    let err = d.submit_snapshot("[1, 2]".into()).unwrap_err();
    assert!(
        err.to_string()
            .contains("snapshot() must return a JSON object"),
        "{err}"
    );
}
