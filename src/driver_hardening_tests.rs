//! The driver under odd stored values, odd events and slow processors (docs/semantics.md,
//! "Checkpoints"): stored cursors that are not strings, events without a cursor, a flush
//! slower than the interval, and the watermark injected in the default mode.

use super::*;

fn store_with(value: serde_json::Value) -> Arc<FakeStore> {
    let store = Arc::new(FakeStore::default());
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

#[tokio::test]
async fn an_integer_stored_cursor_is_read_as_its_decimal_text() {
    let source = FakeSource::new(vec![replay(6..=8, false)]);
    let store = store_with(json!({"count": 5, "lastEventCursor": 5}));
    let mut p = Proc::new(Some(8));
    run(config(), source.clone(), store.clone(), &mut p)
        .await
        .unwrap();
    assert_eq!(source.requests()[0].after_cursor.as_deref(), Some("5"));
    assert_eq!(store.puts().last().unwrap()["lastEventCursor"], "8");
}

#[tokio::test]
async fn a_stored_cursor_of_another_type_fails_at_load_naming_client_and_value() {
    for bad in [
        json!(4.5),
        json!(""),
        json!([1]),
        json!({"c": 1}),
        json!(true),
    ] {
        let source = FakeSource::new(vec![replay(1..=3, false)]);
        let store = store_with(json!({"lastEventCursor": bad}));
        let mut p = Proc::new(Some(3));
        let err = run(config(), source.clone(), store, &mut p)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Config(_)), "{text}");
        assert!(text.contains("client_id=test-proc"), "{text}");
        assert!(text.contains(&bad.to_string()), "{text}");
        assert!(source.requests().is_empty(), "never subscribes");
    }
    // Absent or null: no position, as before.
    for ok in [json!({"count": 1}), json!({"lastEventCursor": null})] {
        let source = FakeSource::new(vec![replay(1..=3, false)]);
        let mut p = Proc::new(Some(3));
        run(config(), source.clone(), store_with(ok), &mut p)
            .await
            .unwrap();
        assert_eq!(source.requests()[0].after_cursor.as_deref(), Some("start"));
    }
}

#[tokio::test]
async fn events_without_a_cursor_never_move_the_stored_position() {
    let items = vec![
        Ok(phase("replay")),
        Ok(entry(1)),
        Ok(entry(2)),
        Ok(ev("entry", "appended", Some(""), r#"{"entry":"e"}"#)),
        Ok(ev("entry", "appended", None, r#"{"entry":"e"}"#)),
        Ok(phase("live")),
    ];
    let source = FakeSource::new(vec![Script::Stream { items, end: false }]);
    let store = Arc::new(FakeStore::default());
    let mut p = Proc::new(Some(4));
    run(config(), source, store.clone(), &mut p).await.unwrap();
    assert_eq!(p.count, 4);
    // The processor recorded "" / null as its last cursor; the runtime's watermark wins.
    assert_eq!(store.puts().last().unwrap()["lastEventCursor"], "2");
}

#[tokio::test]
async fn the_runtime_s_watermark_is_stored_whatever_the_processor_says() {
    let source = FakeSource::new(vec![replay(1..=5, false)]);
    let store = Arc::new(FakeStore::default());
    let mut d = Driver::new(
        config(),
        source,
        store.clone(),
        CT.into(),
        tokio::runtime::Handle::current(),
    )
    .unwrap();
    d.start(None).unwrap();
    let stop = d.stop_handle();
    let mut handled = 0;
    loop {
        match d.next_action(Instant::now()) {
            Action::Handle(b) => {
                handled += b.len();
                d.handled();
                if handled >= 5 {
                    stop.stop();
                }
            }
            // A processor that stores no cursor, or a wrong one.
            Action::Snapshot => d
                .submit_snapshot(r#"{"n":1,"lastEventCursor":"99"}"#.into())
                .unwrap(),
            Action::Flush => d.flushed(),
            Action::Signal(_) => {}
            Action::Wait(dl) | Action::WaitWriter(dl) => wait(d.waker(), dl).await,
            Action::Done(r) => {
                r.unwrap();
                break;
            }
            other => panic!("unexpected action {other:?}"),
        }
    }
    assert_eq!(
        store.puts().last().unwrap(),
        &json!({"n": 1, "lastEventCursor": "5"})
    );
}

#[tokio::test]
async fn a_flush_slower_than_the_interval_still_lets_events_through() {
    let items = std::iter::once(Ok(phase("replay")))
        .chain((1..=50).map(|c| Ok(entry(c))))
        .collect();
    let source = FakeSource::new(vec![Script::Stream { items, end: false }]);
    let store = Arc::new(FakeStore::default());
    let cfg = LoopConfig {
        checkpoint_interval: Duration::from_millis(10),
        max_batch: 5,
        ..config()
    };
    let mut d = Driver::new(
        cfg,
        source,
        store,
        CT.into(),
        tokio::runtime::Handle::current(),
    )
    .unwrap();
    d.start(None).unwrap();
    let stop = d.stop_handle();
    let (mut handled, mut flushes, mut batches_between) = (0, 0, Vec::new());
    let mut since_flush = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "events starved by back-to-back flushes"
        );
        match d.next_action(Instant::now()) {
            Action::Handle(b) => {
                handled += b.len();
                since_flush += 1;
                std::thread::sleep(Duration::from_millis(5)); // handling takes time too
                d.handled();
                if handled >= 50 {
                    stop.stop();
                }
            }
            Action::Flush => {
                flushes += 1;
                batches_between.push(since_flush);
                since_flush = 0;
                // A flush three times slower than the interval.
                std::thread::sleep(Duration::from_millis(30));
                d.flushed();
            }
            Action::Snapshot => d.submit_snapshot(r#"{"n":1}"#.into()).unwrap(),
            Action::Signal(_) => {}
            Action::Wait(dl) | Action::WaitWriter(dl) => wait(d.waker(), dl).await,
            Action::Done(r) => {
                r.unwrap();
                break;
            }
            other => panic!("unexpected action {other:?}"),
        }
    }
    assert_eq!(handled, 50);
    // Never two flushes without a batch in between (except the final one after the stop).
    assert!(flushes >= 3, "{flushes}");
    let interval_flushes = &batches_between[1..batches_between.len() - 1];
    assert!(
        interval_flushes.iter().all(|n| *n > 0),
        "{batches_between:?}"
    );
    assert!(flushes < 20, "{flushes}");
}
