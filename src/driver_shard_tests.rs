//! Shards in the driver, with fake clients (docs/semantics.md, "Shards"): each shard hands the
//! processor exactly its events (default key read in Rust, or the processor's key), in both
//! modes; foreign events cost no processor call and the watermark moves over them; the stored
//! layout is written, and a different one is refused.

use std::collections::BTreeSet;

use super::*;
use crate::shard::{shard_of, ShardLayout};

/// Cursor `c`, conversation `c<c % 10>`, every 11th without a conversation (key None).
fn event(c: u64) -> Event {
    let data = if c.is_multiple_of(11) {
        r#"{"entry":"x"}"#.to_string()
    } else {
        format!(r#"{{"conversation":"c{}","entry":"e{c}"}}"#, c % 10)
    };
    ev("entry", "appended", Some(&c.to_string()), &data)
}

fn events(cursors: impl IntoIterator<Item = u64>) -> Script {
    let mut items = vec![Ok(phase("replay"))];
    items.extend(cursors.into_iter().map(|c| Ok(event(c))));
    items.push(Ok(phase("live")));
    Script::Stream { items, end: false }
}

fn default_key_of(e: &Event) -> Option<String> {
    crate::payload::default_key(&e.kind, &e.data)
}

/// A key unrelated to the conversation, to tell the processor's key from the default one.
fn custom_key_of(e: &Event) -> Option<String> {
    let c: u64 = e.cursor.as_deref().unwrap_or("0").parse().unwrap_or(0);
    Some(format!("k{}", c % 5))
}

fn cursor(e: &Event) -> u64 {
    e.cursor.as_deref().unwrap_or("0").parse().unwrap_or(0)
}

fn shard_config(index: u32, count: u32, max_concurrency: usize, custom_key: bool) -> LoopConfig {
    LoopConfig {
        shard_index: index,
        shard_count: count,
        max_concurrency,
        custom_key,
        max_batch: 16,
        checkpoint_every: 1_000_000,
        ..config()
    }
}

#[derive(Debug, Default)]
struct Outcome {
    handled: Vec<u64>,
    /// Events whose key the processor was asked for.
    key_calls: usize,
    /// Handle / Start actions (crossings that reach the processor's handle).
    handle_calls: usize,
    foreign: u64,
    events_handled: u64,
}

/// Runs one shard until its watermark reaches `last`, then stops it. Handlers complete at
/// once (concurrent mode: reported on the next step).
async fn run_shard(
    cfg: LoopConfig,
    source: Arc<FakeSource>,
    store: Arc<FakeStore>,
    key: fn(&Event) -> Option<String>,
    last: &str,
) -> Result<Outcome> {
    let mut d = Driver::new(
        cfg,
        source,
        store,
        CT.into(),
        tokio::runtime::Handle::current(),
    )?;
    let loaded = d.load_future().await?;
    d.start(loaded.as_ref())?;
    let stop = d.stop_handle();
    let mut out = Outcome::default();
    let mut pending = Report::default();
    loop {
        let now = Instant::now();
        d.report(now, std::mem::take(&mut pending))?;
        match d.next_action(now) {
            Action::Handle(batch) => {
                out.handle_calls += 1;
                out.handled.extend(batch.iter().map(cursor));
                d.handled();
            }
            Action::Keys(batch) => {
                out.key_calls += batch.len();
                pending.keys = Some(batch.iter().map(key).collect());
            }
            Action::Start(starts) => {
                out.handle_calls += 1;
                for (seq, _, e) in starts {
                    out.handled.push(cursor(&e));
                    pending.done.push(seq);
                }
            }
            Action::Signal(_) => {}
            Action::Flush => d.flushed(),
            Action::Snapshot => {
                d.submit_snapshot(json!({"n": out.handled.len()}).to_string())?;
            }
            Action::Wait(dl) | Action::WaitWriter(dl) => {
                let reached = d.stats.watermark.lock().unwrap().as_deref() == Some(last);
                if reached && !stop.is_stopped() {
                    stop.stop();
                } else if pending.is_empty() {
                    wait(d.waker(), dl).await;
                }
            }
            Action::Done(r) => {
                r?;
                break;
            }
            other => panic!("unexpected action {other:?}"),
        }
    }
    out.foreign = Stats::get(&d.stats.events_foreign);
    out.events_handled = Stats::get(&d.stats.events_handled);
    Ok(out)
}

fn owned_by(index: u64, count: u64, key: fn(&Event) -> Option<String>, n: u64) -> Vec<u64> {
    (1..=n)
        .filter(|&c| shard_of(key(&event(c)).as_deref(), count) == index)
        .collect()
}

/// Three shards over the same 300 events, in both modes and with both keys: each handles
/// exactly its events, in stream order; the union is everything; each stored checkpoint
/// covers the whole stream and records its layout.
#[tokio::test]
async fn three_shards_split_the_stream_disjointly_in_both_modes() {
    const N: u64 = 300;
    for (max_concurrency, custom) in [(1, false), (1, true), (4, false), (4, true)] {
        let key = if custom {
            custom_key_of
        } else {
            default_key_of
        };
        let mut union = BTreeSet::new();
        for index in 0..3u32 {
            let store = Arc::new(FakeStore::default());
            let out = run_shard(
                shard_config(index, 3, max_concurrency, custom),
                FakeSource::new(vec![events(1..=N)]),
                store.clone(),
                key,
                "300",
            )
            .await
            .unwrap();
            let want = owned_by(u64::from(index), 3, key, N);
            let mut got = out.handled.clone();
            if max_concurrency > 1 {
                got.sort_unstable();
            } else {
                assert!(out.handled.windows(2).all(|w| w[0] < w[1]), "stream order");
            }
            let case = format!("shard {index}, max_concurrency {max_concurrency}, custom {custom}");
            assert_eq!(got, want, "{case}");
            assert!(!want.is_empty(), "{case}");
            assert_eq!(out.events_handled, want.len() as u64, "{case}");
            assert_eq!(out.foreign, N - want.len() as u64, "{case}");
            // The default key never asks the processor; a custom key asks for every event.
            assert_eq!(out.key_calls, if custom { N as usize } else { 0 }, "{case}");
            let v = store.stored.lock().unwrap()["test-proc"].value.clone();
            assert_eq!(v["lastEventCursor"], "300", "{case}");
            assert_eq!(
                v["shardLayout"],
                json!({"index": index, "count": 3}),
                "{case}"
            );
            union.extend(got);
        }
        assert_eq!(union, (1..=N).collect::<BTreeSet<_>>());
    }
}

/// A shard that owns none of the events: no processor call at all, yet its watermark reaches
/// the end of the stream and the final checkpoint stores it.
#[tokio::test]
async fn all_foreign_batches_cost_no_call_and_still_move_the_position() {
    // Conversation c0 only ("c0" is shard 2 of 3, so shard 1 owns nothing).
    let only_c0: Vec<u64> = (1..=200)
        .filter(|c: &u64| c.is_multiple_of(10) && !c.is_multiple_of(11))
        .collect();
    let last = only_c0.last().unwrap().to_string();
    let owner = shard_of(Some("c0"), 3) as u32;
    let other = (owner + 1) % 3;
    for max_concurrency in [1, 4] {
        let store = Arc::new(FakeStore::default());
        let out = run_shard(
            shard_config(other, 3, max_concurrency, false),
            FakeSource::new(vec![events(only_c0.clone())]),
            store.clone(),
            default_key_of,
            &last,
        )
        .await
        .unwrap();
        assert_eq!(out.handle_calls, 0, "{out:?}");
        assert_eq!(out.foreign, only_c0.len() as u64);
        assert_eq!(out.events_handled, 0);
        let v = store.stored.lock().unwrap()["test-proc"].value.clone();
        assert_eq!(v["lastEventCursor"], json!(last));
    }
}

/// The stored position moves past foreign events at the end of the stream, so a restart
/// resumes after them (it does not read them again).
#[tokio::test]
async fn a_restart_resumes_after_trailing_foreign_events() {
    let owner = shard_of(Some("c0"), 2) as u32;
    let mine: Vec<u64> = (1..=60)
        .filter(|c: &u64| c.is_multiple_of(10) && !c.is_multiple_of(11))
        .collect();
    // Trailing events of another conversation, of the other shard.
    let other_conv = (1..10)
        .find(|i| shard_of(Some(&format!("c{i}")), 2) as u32 != owner)
        .unwrap();
    let trailing: Vec<u64> = (61..=200)
        .filter(|c| c % 10 == other_conv && c % 11 != 0)
        .collect();
    let all: Vec<u64> = mine.iter().chain(&trailing).copied().collect();
    let last = all.last().unwrap().to_string();
    for max_concurrency in [1, 4] {
        let store = Arc::new(FakeStore::default());
        let cfg = shard_config(owner, 2, max_concurrency, false);
        let out = run_shard(
            cfg.clone(),
            FakeSource::new(vec![events(all.clone())]),
            store.clone(),
            default_key_of,
            &last,
        )
        .await
        .unwrap();
        assert_eq!(out.handled.len(), mine.len());
        let v = store.stored.lock().unwrap()["test-proc"].value.clone();
        assert_eq!(v["lastEventCursor"], json!(last));
        // The restart subscribes after the last (foreign) event.
        let source = FakeSource::new(vec![]);
        let mut d = Driver::new(
            cfg,
            source.clone(),
            store.clone(),
            CT.into(),
            tokio::runtime::Handle::current(),
        )
        .unwrap();
        let loaded = d.load_future().await.unwrap();
        d.start(loaded.as_ref()).unwrap();
        for _ in 0..200 {
            if !source.requests().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(source.requests()[0].after_cursor, Some(last.clone()));
    }
}

/// Concurrent mode: a slow event of this shard holds the watermark; the foreign events after
/// it are done at once, so when it completes the watermark jumps over all of them.
#[tokio::test]
async fn the_watermark_moves_over_foreign_events_once_the_slow_one_is_done() {
    let layout = ShardLayout { index: 0, count: 2 };
    let mine = (0..10)
        .map(|i| format!("c{i}"))
        .find(|k| layout.owns(Some(k)))
        .unwrap();
    let theirs = (0..10)
        .map(|i| format!("c{i}"))
        .find(|k| !layout.owns(Some(k)))
        .unwrap();
    let mut items = vec![Ok(phase("replay"))];
    let mk = |c: u64, k: &str| {
        ev(
            "entry",
            "appended",
            Some(&c.to_string()),
            &format!(r#"{{"conversation":"{k}"}}"#),
        )
    };
    items.push(Ok(mk(1, &mine)));
    for c in 2..=20 {
        items.push(Ok(mk(c, &theirs)));
    }
    items.push(Ok(phase("live")));
    let source = FakeSource::new(vec![Script::Stream { items, end: false }]);
    let store = Arc::new(FakeStore::default());
    let mut d = Driver::new(
        shard_config(0, 2, 4, false),
        source,
        store,
        CT.into(),
        tokio::runtime::Handle::current(),
    )
    .unwrap();
    let loaded = d.load_future().await.unwrap();
    d.start(loaded.as_ref()).unwrap();
    let mut slow = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match d.next_action(Instant::now()) {
            Action::Start(s) => {
                assert_eq!(s.len(), 1);
                assert!(slow.is_none(), "only the one event of this shard starts");
                slow = Some(s[0].0);
            }
            Action::Wait(dl) => {
                if Stats::get(&d.stats.events_foreign) == 19 {
                    break;
                }
                wait(
                    d.waker(),
                    dl.min(Instant::now() + Duration::from_millis(20)),
                )
                .await;
            }
            Action::Flush => d.flushed(),
            Action::Snapshot => d.submit_snapshot("{}".into()).unwrap(),
            Action::Signal(_) => {}
            other => panic!("unexpected action {other:?}"),
        }
    }
    assert_eq!(Stats::get(&d.stats.events_foreign), 19);
    assert_eq!(
        *d.stats.watermark.lock().unwrap(),
        None,
        "held by the slow event"
    );
    let report = Report {
        done: vec![slow.unwrap()],
        ..Report::default()
    };
    d.report(Instant::now(), report).unwrap();
    assert_eq!(d.stats.watermark.lock().unwrap().as_deref(), Some("20"));
}

fn stored_with_layout(layout: Option<serde_json::Value>) -> Arc<FakeStore> {
    let store = Arc::new(FakeStore::default());
    let mut value = json!({"n": 1, "lastEventCursor": "5"});
    if let Some(l) = layout {
        value["shardLayout"] = l;
    }
    store.stored.lock().unwrap().insert(
        "test-proc".into(),
        Checkpoint {
            client_id: "test-proc".into(),
            content_type: CT.into(),
            value,
            updated_at: None,
        },
    );
    store
}

async fn load_with(cfg: LoopConfig, store: Arc<FakeStore>) -> Result<Option<Checkpoint>> {
    let d = Driver::new(
        cfg,
        FakeSource::new(vec![]),
        store,
        CT.into(),
        tokio::runtime::Handle::current(),
    )?;
    d.load_future().await
}

#[tokio::test]
async fn a_checkpoint_of_another_layout_is_refused_before_loading() {
    let one_of_three = Some(json!({"index": 1, "count": 3}));
    // Same layout: accepted.
    let cp = load_with(
        shard_config(1, 3, 1, false),
        stored_with_layout(one_of_three.clone()),
    )
    .await
    .unwrap();
    assert!(cp.is_some());
    // Unsharded checkpoint, unsharded run: accepted (no layout needed).
    assert!(load_with(config(), stored_with_layout(None)).await.is_ok());
    for (cfg, stored) in [
        (shard_config(1, 4, 1, false), one_of_three.clone()),
        (shard_config(2, 3, 4, false), one_of_three.clone()),
        (config(), one_of_three.clone()),
        (shard_config(0, 2, 1, false), None),
    ] {
        let e = load_with(cfg, stored_with_layout(stored))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("client_id=test-proc") && text.contains("Scaling out"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn a_bad_layout_in_the_config_is_refused() {
    for (index, count) in [(0, 0), (3, 3), (0, 1025)] {
        let r = Driver::new(
            shard_config(index, count, 1, false),
            FakeSource::new(vec![]),
            Arc::new(FakeStore::default()),
            CT.into(),
            tokio::runtime::Handle::current(),
        );
        let Err(Error::Config(text)) = r else {
            panic!("({index}, {count}) accepted");
        };
        assert!(text.contains("shard_"), "{text}");
    }
}

/// The network thread decides each business event's shard while it holds the payload
/// (`Event::shard`), with the default key only; signals, one shard and a custom key leave the
/// decision to the driver.
#[tokio::test]
async fn the_stream_loop_marks_each_event_with_its_shard() {
    use crate::buffer::{Buffer, Taken};
    use crate::model::ShardMark;

    async fn marks(cfg: LoopConfig) -> Vec<(u64, ShardMark)> {
        let source = FakeSource::new(vec![events(1..=60)]);
        let buffer = Arc::new(Buffer::new(1000, Arc::new(crate::wake::Wake::new())));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(crate::stream_loop::run(
            source,
            Arc::new(cfg),
            Some("start".into()),
            buffer.clone(),
            Arc::new(Stats::default()),
            cancel.clone(),
        ));
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.len() < 60 && Instant::now() < deadline {
            match buffer.take(100) {
                Taken::Events(batch) => {
                    out.extend(batch.into_iter().map(|e| (cursor(&e), e.shard)))
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        cancel.cancel();
        let _ = task.await;
        out
    }

    let sharded = marks(shard_config(1, 3, 1, false)).await;
    assert_eq!(sharded.len(), 60);
    let layout = ShardLayout { index: 1, count: 3 };
    for (c, mark) in &sharded {
        let expected = match layout.own_default_key("entry", &event(*c).data) {
            Some(key) => ShardMark::Own(key),
            None => ShardMark::Foreign,
        };
        assert_eq!(*mark, expected, "event {c}");
    }
    assert!(sharded.iter().any(|(_, m)| *m == ShardMark::Foreign));
    assert!(sharded.iter().any(|(_, m)| matches!(m, ShardMark::Own(_))));
    for cfg in [shard_config(0, 1, 1, false), shard_config(1, 3, 1, true)] {
        let undecided = marks(cfg).await;
        assert_eq!(undecided.len(), 60);
        assert!(undecided.iter().all(|(_, m)| *m == ShardMark::Undecided));
    }
}
