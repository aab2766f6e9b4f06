//! The writer's read-back check against a second writer, with an in-memory store.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use super::*;
use crate::model::Checkpoint;

#[derive(Default)]
struct Store {
    stored: Mutex<Option<serde_json::Value>>,
    gets: AtomicU64,
    /// Errors for the next puts; `(error, applied)`: whether the server stored it anyway.
    put_failures: Mutex<VecDeque<(Error, bool)>>,
}

#[async_trait]
impl CheckpointClient for Store {
    async fn get(&self, client_id: &str) -> Result<Checkpoint, Error> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        match self.stored.lock().unwrap().clone() {
            Some(value) => Ok(Checkpoint {
                client_id: client_id.into(),
                content_type: "t".into(),
                value,
                updated_at: None,
            }),
            None => Err(Error::CheckpointNotFound(client_id.into())),
        }
    }

    async fn put(
        &self,
        client_id: &str,
        content_type: &str,
        value: &serde_json::Value,
    ) -> Result<Checkpoint, Error> {
        if let Some((e, applied)) = self.put_failures.lock().unwrap().pop_front() {
            if applied {
                *self.stored.lock().unwrap() = Some(value.clone());
            }
            return Err(e);
        }
        *self.stored.lock().unwrap() = Some(value.clone());
        Ok(Checkpoint {
            client_id: client_id.into(),
            content_type: content_type.into(),
            value: value.clone(),
            updated_at: None,
        })
    }
}

fn writer(store: Arc<Store>, detect: bool) -> Arc<CheckpointWriter> {
    let cfg = LoopConfig {
        client_id: "shared".into(),
        detect_other_writers: detect,
        reconnect_min: Duration::from_millis(5),
        reconnect_max: Duration::from_millis(10),
        ..LoopConfig::default()
    };
    CheckpointWriter::new(
        store,
        &cfg,
        "t".into(),
        Arc::new(Wake::new()),
        Arc::new(Stats::default()),
        tokio::runtime::Handle::current(),
    )
}

async fn settle(w: &CheckpointWriter) {
    for _ in 0..500 {
        if w.is_idle() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("the writer never went idle");
}

#[tokio::test]
async fn another_writer_stops_the_next_checked_write() {
    let store = Arc::new(Store::default());
    let w = writer(store.clone(), true);
    w.expect(None);
    w.submit(json!({"lastEventCursor": "1", "me": "a"}));
    settle(&w).await;
    assert!(w.fatal_error().is_none());
    // Another instance writes its own position.
    *store.stored.lock().unwrap() = Some(json!({"lastEventCursor": "7", "me": "b"}));
    w.verify_before_next_write();
    w.submit(json!({"lastEventCursor": "2", "me": "a"}));
    settle(&w).await;
    let err = w.fatal_error().expect("not detected").to_string();
    assert!(
        err.contains("another instance is writing checkpoints for client id \"shared\""),
        "{err}"
    );
    assert!(err.contains("\"7\"") && err.contains("\"1\""), "{err}");
    // Nothing of ours replaced theirs.
    assert_eq!(store.stored.lock().unwrap().clone().unwrap()["me"], "b");
}

#[tokio::test]
async fn a_checkpoint_written_after_a_first_run_loaded_nothing_is_another_writer() {
    let store = Arc::new(Store::default());
    let w = writer(store.clone(), true);
    w.expect(None); // loaded nothing...
    *store.stored.lock().unwrap() = Some(json!({"lastEventCursor": "3"})); // ...then someone wrote
    w.verify_before_next_write();
    w.submit(json!({"lastEventCursor": "1"}));
    settle(&w).await;
    assert!(w.fatal_error().is_some());
}

#[tokio::test]
async fn own_writes_reloads_and_numbers_written_differently_are_not_another_writer() {
    let store = Arc::new(Store::default());
    *store.stored.lock().unwrap() = Some(json!({"lastEventCursor": "5", "n": 1.0}));
    let w = writer(store.clone(), true);
    w.expect(Some(&json!({"lastEventCursor": "5", "n": 1})));
    for i in 6..10 {
        w.verify_before_next_write();
        w.submit(json!({"lastEventCursor": i.to_string()}));
        settle(&w).await;
    }
    assert!(w.fatal_error().is_none(), "{:?}", w.fatal_error());
    assert!(store.gets.load(Ordering::SeqCst) >= 4);
}

#[tokio::test]
async fn a_transient_failure_that_was_applied_anyway_is_not_another_writer() {
    let store = Arc::new(Store::default());
    store
        .put_failures
        .lock()
        .unwrap()
        .push_back((Error::Transient("DEADLINE_EXCEEDED".into()), true));
    let w = writer(store.clone(), true);
    w.expect(None);
    w.submit(json!({"lastEventCursor": "1"}));
    settle(&w).await;
    w.verify_before_next_write();
    w.submit(json!({"lastEventCursor": "2"}));
    settle(&w).await;
    assert!(w.fatal_error().is_none(), "{:?}", w.fatal_error());
}

#[tokio::test]
async fn reading_back_waits_an_interval_after_the_load() {
    let store = Arc::new(Store::default());
    let w = writer(store.clone(), true);
    w.expect(None);
    for i in 0..5 {
        w.submit(json!({"lastEventCursor": i.to_string()}));
        settle(&w).await;
    }
    assert_eq!(store.gets.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_check_switched_off_never_reads_back() {
    let store = Arc::new(Store::default());
    let w = writer(store.clone(), false);
    w.expect(None);
    *store.stored.lock().unwrap() = Some(json!({"lastEventCursor": "9"}));
    w.verify_before_next_write();
    w.submit(json!({"lastEventCursor": "1"}));
    settle(&w).await;
    assert!(w.fatal_error().is_none());
    assert_eq!(store.gets.load(Ordering::SeqCst), 0);
}

#[test]
fn same_json_compares_numbers_as_doubles() {
    assert!(same_json(&json!({"a": [1, 2.0]}), &json!({"a": [1.0, 2]})));
    assert!(!same_json(&json!({"a": 1}), &json!({"a": 2})));
    assert!(!same_json(&json!({"a": 1}), &json!({"a": 1, "b": 1})));
}

#[test]
fn an_undecodable_checkpoint_names_the_client_id() {
    let e = Error::Transient(
        "GetCheckpoint: server answered INTERNAL: failed to decode Protobuf message: \
         AdminCheckpoint.value: a string in the checkpoint value is not valid UTF-8"
            .into(),
    );
    let text = undecodable("c-1", &e).to_string();
    assert!(text.contains("client id \"c-1\""), "{text}");
    assert!(text.contains("not valid UTF-8"), "{text}");
    assert!(!undecodable("c-1", &e).is_transient());
}
