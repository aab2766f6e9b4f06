//! The local server and the tonic clients together, over real loopback gRPC (no Python).

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;

use super::*;
use crate::driver::{wait, Action, Driver};
use crate::grpc::{ConnectOptions, Connection, GrpcCheckpointClient, GrpcEventClient};
use crate::model::{CheckpointClient, EventClient, LoopConfig, Scope, SubscribeRequest};

async fn server(opts: ServerOptions) -> (LocalMemoryService, String) {
    let s = LocalMemoryService::new(opts).unwrap();
    let ep = s.start().await.unwrap();
    (s, ep)
}

fn conn(ep: &str, key: Option<&str>) -> Connection {
    Connection::new(&ConnectOptions {
        endpoint: ep.into(),
        api_key: key.map(str::to_string),
        client_id: Some("rust-test".into()),
        ..ConnectOptions::default()
    })
    .unwrap()
}

fn entries(n: usize, role: &str) -> Vec<(String, String, Bytes)> {
    (0..n)
        .map(|i| {
            (
                "entry".to_string(),
                "appended".to_string(),
                Bytes::from(
                    json!({"conversation": "c1", "entry": i, "entry_channel": "history", "entry_role": role})
                        .to_string(),
                ),
            )
        })
        .collect()
}

fn request(after: Option<&str>) -> SubscribeRequest {
    SubscribeRequest {
        kinds: vec![],
        detail: Some("full".into()),
        after_cursor: after.map(str::to_string),
        scope: Scope::Admin,
        justification: None,
        conversation_ids: vec![],
        entry_channels: vec![],
        entry_content_types: vec![],
        entry_roles: vec![],
    }
}

#[tokio::test]
async fn replay_then_live_with_phases_and_cursors() {
    let (s, ep) = server(ServerOptions::default()).await;
    let cursors = s.publish_many(entries(3, "USER"));
    assert_eq!(cursors, vec!["1", "2", "3"]);
    let src = GrpcEventClient::new(conn(&ep, None));
    let mut st = src.subscribe(request(Some("1"))).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        let e = st.recv().await.unwrap().unwrap();
        got.push((e.kind.clone(), e.event.clone(), e.cursor.clone()));
    }
    assert_eq!(got[0].1, "phase");
    assert_eq!(got[1].2.as_deref(), Some("2"));
    assert_eq!(got[2].2.as_deref(), Some("3"));
    assert_eq!(got[3].1, "phase");
    s.publish_many(entries(1, "USER"));
    let live = st.recv().await.unwrap().unwrap();
    assert_eq!(live.cursor.as_deref(), Some("4"));
    s.stop().await;
}

#[tokio::test]
async fn purged_cursor_gets_invalidate_then_a_clean_end() {
    let (s, ep) = server(ServerOptions::default()).await;
    s.publish_many(entries(10, "USER"));
    s.purge(5);
    assert_eq!(s.outbox_range(), (6, 11));
    let src = GrpcEventClient::new(conn(&ep, None));
    let mut st = src.subscribe(request(Some("2"))).await.unwrap();
    let first = st.recv().await.unwrap().unwrap();
    assert_eq!(first.event, "phase");
    let inv = st.recv().await.unwrap().unwrap();
    assert_eq!(
        (inv.kind.as_str(), inv.event.as_str()),
        ("stream", "invalidate")
    );
    assert!(inv.reason().unwrap().contains("retention"));
    assert!(st.recv().await.unwrap().is_none());
    // a cursor right before the retained start is still fine
    let mut ok = src.subscribe(request(Some("5"))).await.unwrap();
    ok.recv().await.unwrap();
    assert_eq!(
        ok.recv().await.unwrap().unwrap().cursor.as_deref(),
        Some("6")
    );
    s.stop().await;
}

#[tokio::test]
async fn auth_roles_and_fault_injection() {
    let mut keys = std::collections::HashMap::new();
    keys.insert("admin-key".to_string(), Role::Admin);
    keys.insert("user-key".to_string(), Role::User);
    let (s, ep) = server(ServerOptions {
        api_keys: Some(keys),
        ..ServerOptions::default()
    })
    .await;
    let none = GrpcCheckpointClient::new(conn(&ep, None));
    let e = none.get("x").await.unwrap_err();
    assert!(e.to_string().contains("UNAUTHENTICATED"), "{e}");
    let user = GrpcCheckpointClient::new(conn(&ep, Some("user-key")));
    let e = user.get("x").await.unwrap_err();
    assert!(e.to_string().contains("PERMISSION_DENIED"), "{e}");
    let admin = GrpcCheckpointClient::new(conn(&ep, Some("admin-key")));
    assert!(matches!(
        admin.get("x").await,
        Err(crate::error::Error::CheckpointNotFound(_))
    ));
    let v = json!({"lastEventCursor": "7", "nested": {"ü": [1, 2.5, null, true]}});
    admin.put("x", "application/t", &v).await.unwrap();
    assert_eq!(admin.get("x").await.unwrap().value, v);
    s.fail("PutCheckpoint", "UNAVAILABLE", 1, "injected")
        .unwrap();
    let e = admin.put("x", "application/t", &v).await.unwrap_err();
    assert!(e.is_transient());
    admin.put("x", "application/t", &v).await.unwrap();
    let seen = s.requests();
    assert!(seen.iter().any(|r| r
        .metadata
        .contains(&("x-client-id".into(), "rust-test".into()))));
    s.stop().await;
}

#[tokio::test]
async fn filters_by_kind_and_entry_role() {
    let (s, ep) = server(ServerOptions::default()).await;
    s.publish_many(entries(2, "USER"));
    s.publish_many(entries(2, "AI"));
    s.publish_many(vec![(
        "conversation".into(),
        "created".into(),
        Bytes::from_static(b"{\"conversation\":\"c1\"}"),
    )]);
    let src = GrpcEventClient::new(conn(&ep, None));
    let mut req = request(Some("start"));
    req.kinds = vec!["entry".into()];
    req.entry_roles = vec!["ai".into()];
    let mut st = src.subscribe(req).await.unwrap();
    let mut cursors = Vec::new();
    loop {
        let e = st.recv().await.unwrap().unwrap();
        if e.is_signal() {
            if e.phase().as_deref() == Some("live") {
                break;
            }
            continue;
        }
        cursors.push(e.cursor.unwrap());
    }
    assert_eq!(cursors, vec!["3", "4"]);
    s.stop().await;
}

/// The whole loop over real gRPC: run, stop, run again; the second run resumes exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_resumes_exactly_after_a_restart() {
    let (s, ep) = server(ServerOptions::default()).await;
    s.publish_many(entries(500, "USER"));
    let mut handled_all = Vec::new();
    for round in 0..2 {
        if round == 1 {
            s.publish_many(entries(100, "USER"));
        }
        let cfg = LoopConfig {
            client_id: "rust-loop".into(),
            after_cursor: Some("start".into()),
            ..LoopConfig::default()
        };
        let c = conn(&ep, None);
        let mut d = Driver::new(
            cfg,
            std::sync::Arc::new(GrpcEventClient::new(c.clone())),
            std::sync::Arc::new(GrpcCheckpointClient::new(c)),
            "application/t".into(),
            tokio::runtime::Handle::current(),
        )
        .unwrap();
        let loaded = d.load_future().await.unwrap();
        let mut count = loaded
            .as_ref()
            .and_then(|cp| cp.value["count"].as_u64())
            .unwrap_or(0);
        let mut last: Option<String> = loaded
            .as_ref()
            .and_then(|cp| cp.value["lastEventCursor"].as_str().map(str::to_string));
        d.start(loaded.as_ref()).unwrap();
        let target = if round == 0 { 500 } else { 600 };
        let stop = d.stop_handle();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "timed out at {count}");
            match d.next_action(Instant::now()) {
                Action::Handle(b) => {
                    for e in b {
                        count += 1;
                        last = e.cursor.clone();
                        handled_all.push(e.cursor.unwrap());
                    }
                    d.handled();
                    if count >= target {
                        stop.stop();
                    }
                }
                Action::Snapshot => d
                    .submit_snapshot(json!({"count": count, "lastEventCursor": last}).to_string())
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
        let (_, v, _) = s.get_checkpoint("rust-loop").unwrap();
        assert_eq!(v["count"], target);
        assert_eq!(v["lastEventCursor"], target.to_string());
    }
    let want: Vec<String> = (1..=600).map(|i| i.to_string()).collect();
    assert_eq!(handled_all, want, "no event skipped, none handled twice");
    s.stop().await;
}

#[tokio::test]
async fn persistence_survives_a_new_server_instance() {
    let dir = std::env::temp_dir().join(format!("msp-persist-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let (s, _) = server(ServerOptions {
            data_dir: Some(dir.clone()),
            ..ServerOptions::default()
        })
        .await;
        s.publish_many(entries(5, "USER"));
        s.put_checkpoint("p", "ct", json!({"lastEventCursor": "3"}));
        s.stop().await;
    }
    let (s, _) = server(ServerOptions {
        data_dir: Some(dir.clone()),
        ..ServerOptions::default()
    })
    .await;
    assert_eq!(s.outbox_range(), (1, 6));
    assert_eq!(s.get_checkpoint("p").unwrap().1["lastEventCursor"], "3");
    assert_eq!(s.publish_many(entries(1, "USER")), vec!["6"]);
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("msp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn stored_checkpoints(dir: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("checkpoints.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// What the callers rely on: a published event is in the file when `publish_many` returns
/// (a killed server process keeps it) and a checkpoint PUT is on disk when the RPC returns.
#[tokio::test]
async fn writes_are_on_disk_when_the_call_returns() {
    let dir = temp_dir("on-disk");
    let (s, ep) = server(ServerOptions {
        data_dir: Some(dir.clone()),
        ..ServerOptions::default()
    })
    .await;
    s.publish_many(entries(3, "USER"));
    let lines = std::fs::read_to_string(dir.join("outbox.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 3);
    let admin = GrpcCheckpointClient::new(conn(&ep, None));
    for n in 0..5 {
        let v = json!({"lastEventCursor": n.to_string()});
        admin.put("grpc", "application/t", &v).await.unwrap();
        assert_eq!(stored_checkpoints(&dir)["grpc"]["value"], v);
    }
    assert!(s.delete_checkpoint("grpc"));
    assert!(stored_checkpoints(&dir).get("grpc").is_none());
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Concurrent PUTs each return after their own write; the file ends with the last table
/// (writes are queued in the order they happened in memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checkpoint_puts_leave_the_latest_table() {
    let dir = temp_dir("concurrent-puts");
    let (s, ep) = server(ServerOptions {
        data_dir: Some(dir.clone()),
        ..ServerOptions::default()
    })
    .await;
    let mut tasks = Vec::new();
    for client in 0..8 {
        let store = GrpcCheckpointClient::new(conn(&ep, None));
        tasks.push(tokio::spawn(async move {
            for n in 0..10 {
                let v = json!({"n": n});
                store.put(&format!("c{client}"), "ct", &v).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let on_disk = stored_checkpoints(&dir);
    for client in 0..8 {
        assert_eq!(on_disk[format!("c{client}")]["value"]["n"], 9);
        assert_eq!(s.get_checkpoint(&format!("c{client}")).unwrap().1["n"], 9);
    }
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn purge_and_a_torn_line_survive_a_restart() {
    let dir = temp_dir("purge-torn");
    let opts = ServerOptions {
        data_dir: Some(dir.clone()),
        ..ServerOptions::default()
    };
    {
        let (s, _) = server(opts.clone()).await;
        s.publish_many(entries(6, "USER"));
        s.purge(2);
        s.stop().await;
    }
    // a crash in the middle of a line
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("outbox.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"c\":7,\"k\":\"entry\"").unwrap();
    drop(f);
    {
        let (s, _) = server(opts.clone()).await;
        assert_eq!(s.outbox_range(), (3, 7));
        // the next event starts on a line of its own and is kept by the next instance
        assert_eq!(s.publish_many(entries(1, "USER")), vec!["7"]);
        s.stop().await;
    }
    let (s, _) = server(opts).await;
    assert_eq!(s.outbox_range(), (3, 8));
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A checkpoint file with timestamps no clock can hold loads instead of panicking.
#[tokio::test]
async fn a_checkpoint_file_with_odd_timestamps_loads() {
    let dir = temp_dir("odd-times");
    std::fs::create_dir_all(&dir).unwrap();
    let table = json!({
        "far": {"content_type": "ct", "value": 1, "updated_at": 1e300},
        "neg": {"content_type": "ct", "value": 2, "updated_at": -5.0},
        "none": {"value": 3},
    });
    std::fs::write(dir.join("checkpoints.json"), table.to_string()).unwrap();
    let s = LocalMemoryService::new(ServerOptions {
        data_dir: Some(dir.clone()),
        ..ServerOptions::default()
    })
    .unwrap();
    for (id, v) in [("far", 1), ("neg", 2), ("none", 3)] {
        let (_, value, at) = s.get_checkpoint(id).unwrap();
        assert_eq!(value, v);
        assert_eq!(at, SystemTime::UNIX_EPOCH);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
