//! The scenario API over real gRPC: every payload the server sends, per detail mode, pinned
//! against the literal examples of what a real Memory Service sends (summary keys snake_case,
//! full payloads the stored entity in camelCase with `conversationGroupId`).

use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use super::*;
use crate::grpc::{ConnectOptions, Connection, GrpcEventClient};
use crate::model::{EventClient, Scope, SubscribeRequest};
use crate::upstream::time::utc;
use crate::upstream::{AccessRole, Channel, NewEntry, ResponseStatus, Upstream};

const C1: &str = "00000000-0000-4000-8000-000000000001";
const G1: &str = "00000000-0000-4000-8000-000000000002";
const E1: &str = "00000000-0000-4000-8000-000000000003";
const E2: &str = "00000000-0000-4000-8000-000000000004";
const E3: &str = "00000000-0000-4000-8000-000000000005";
const C2: &str = "00000000-0000-4000-8000-000000000006";
const G2: &str = "00000000-0000-4000-8000-000000000007";
const E4: &str = "00000000-0000-4000-8000-000000000008";

/// A server whose model has sequential ids and a clock at 2026-05-19T12:00:00.123Z that
/// ticks 1 ms per timestamp.
async fn server(opts: ServerOptions) -> (LocalMemoryService, String) {
    let model = Upstream::deterministic(utc(2026, 5, 19, 12, 0, 0, 123), Duration::from_millis(1));
    let s = LocalMemoryService::with_model(opts, model).unwrap();
    let ep = s.start().await.unwrap();
    (s, ep)
}

fn client(ep: &str) -> GrpcEventClient {
    GrpcEventClient::new(
        Connection::new(&ConnectOptions {
            endpoint: ep.into(),
            client_id: Some("scenario-test".into()),
            ..ConnectOptions::default()
        })
        .unwrap(),
    )
}

fn request(detail: Option<&str>, after: Option<&str>) -> SubscribeRequest {
    SubscribeRequest {
        kinds: vec![],
        detail: detail.map(str::to_string),
        after_cursor: after.map(str::to_string),
        scope: Scope::Admin,
        justification: None,
        conversation_ids: vec![],
        entry_channels: vec![],
        entry_content_types: vec![],
        entry_roles: vec![],
    }
}

type Got = Vec<(String, String, String, Value)>;

/// Replays from the start and returns `(kind, event, cursor, data)` up to the live phase.
async fn replay(ep: &str, req: SubscribeRequest) -> Got {
    let mut st = client(ep).subscribe(req).await.unwrap();
    let mut got = Vec::new();
    loop {
        let e = st.recv().await.unwrap().unwrap();
        if e.is_signal() {
            if e.phase().as_deref() == Some("live") {
                return got;
            }
            continue;
        }
        let data = serde_json::from_slice(&e.data).unwrap();
        got.push((e.kind, e.event, e.cursor.unwrap(), data));
    }
}

fn entry(role: Option<&str>, text: &str) -> NewEntry {
    let item = match role {
        Some(r) => json!({"role": r, "text": text}),
        None => json!({"text": text}),
    };
    NewEntry {
        client_id: Some("agent-a".into()),
        agent_id: Some("a1".into()),
        ..NewEntry::new(json!([item]))
    }
}

/// The scenario, cursors 1..=13:
/// 1 C1 created, 2 USER entry, 3 response started, 4 AI entry, 5 response completed,
/// 6 context entry, 7 bob joins, 8 C1 retitled, 9 C2 created (bob), 10 entry in C2,
/// 11 C2 archived, 12 C2 hard-deleted, 13 bob leaves C1.
fn scenario(s: &LocalMemoryService) {
    let (c1, cur) = s
        .create_conversation("alice", "Trip", Some("a1"), None)
        .unwrap();
    assert_eq!((c1.as_str(), cur.as_str()), (C1, "1"));
    let (e1, _) = s.append_entry(C1, entry(Some("USER"), "Hello")).unwrap();
    assert_eq!(e1, E1);
    s.start_response(C1).unwrap();
    s.append_entry(C1, entry(Some("AI"), "Hi! Where to?"))
        .unwrap();
    s.finish_response(C1, ResponseStatus::Completed).unwrap();
    let context = NewEntry {
        channel: Channel::Context,
        content_type: "LC4J".into(),
        ..entry(Some("AI"), "memory")
    };
    s.append_entry(C1, context).unwrap();
    s.add_member(C1, "bob", AccessRole::Writer).unwrap();
    let metadata = json!({"topic": "travel"}).as_object().cloned();
    s.update_conversation(C1, Some("Trip to Rome"), metadata)
        .unwrap();
    let (c2, _) = s.create_conversation("bob", "Notes", None, None).unwrap();
    assert_eq!(c2, C2);
    s.append_entry(C2, NewEntry::new(json!([{"role": "USER", "text": "x"}])))
        .unwrap();
    s.archive_conversation(C2).unwrap();
    s.delete_conversation(C2).unwrap();
    assert_eq!(s.remove_member(C1, "bob").unwrap(), "13");
}

fn ev(kind: &str, event: &str, cursor: u32, data: Value) -> (String, String, String, Value) {
    (kind.into(), event.into(), cursor.to_string(), data)
}

#[tokio::test]
async fn summary_payloads_are_the_spec_examples() {
    let (s, ep) = server(ServerOptions::default()).await;
    scenario(&s);
    let conv = |c: &str, g: &str| json!({"conversation": c, "conversation_group": g});
    let response = |status: &str| json!({"conversation": C1, "conversation_group": G1, "recording": C1, "status": status});
    let expected = vec![
        ev("conversation", "created", 1, conv(C1, G1)),
        ev(
            "entry",
            "created",
            2,
            json!({"conversation": C1, "conversation_group": G1, "entry": E1,
                   "entry_channel": "history", "entry_content_type": "history", "entry_role": "USER"}),
        ),
        ev("response", "created", 3, response("started")),
        ev(
            "entry",
            "created",
            4,
            json!({"conversation": C1, "conversation_group": G1, "entry": E2,
                   "entry_channel": "history", "entry_content_type": "history", "entry_role": "AI"}),
        ),
        ev("response", "deleted", 5, response("completed")),
        // 6, the context entry, is not on the default "history" channel
        ev(
            "membership",
            "created",
            7,
            json!({"conversation_group": G1, "user": "bob", "role": "writer"}),
        ),
        ev("conversation", "updated", 8, conv(C1, G1)),
        ev("conversation", "created", 9, conv(C2, G2)),
        ev(
            "entry",
            "created",
            10,
            json!({"conversation": C2, "conversation_group": G2, "entry": E4,
                   "entry_channel": "history", "entry_content_type": "history", "entry_role": "USER"}),
        ),
        ev(
            "conversation",
            "updated",
            11,
            json!({"conversation": C2, "conversation_group": G2, "members": ["bob"], "archived": true}),
        ),
        ev(
            "conversation",
            "deleted",
            12,
            json!({"conversation": C2, "conversation_group": G2, "members": ["bob"]}),
        ),
        ev(
            "membership",
            "deleted",
            13,
            json!({"conversation_group": G1, "user": "bob"}),
        ),
    ];
    // no detail and "summary" are the same
    assert_eq!(replay(&ep, request(None, Some("start"))).await, expected);
    assert_eq!(
        replay(&ep, request(Some("summary"), Some("start"))).await,
        expected
    );

    // the context entry, on its channel
    let mut req = request(Some("summary"), Some("start"));
    req.entry_channels = vec!["CONTEXT".into()];
    req.kinds = vec!["entry".into()];
    let got = replay(&ep, req).await;
    assert_eq!(
        got,
        vec![ev(
            "entry",
            "created",
            6,
            json!({"conversation": C1, "conversation_group": G1, "entry": E3,
                   "entry_channel": "context", "entry_content_type": "LC4J", "entry_role": "AI"}),
        )]
    );
    s.stop().await;
}

#[tokio::test]
async fn full_payloads_are_the_stored_entities_read_when_sent() {
    let (s, ep) = server(ServerOptions::default()).await;
    scenario(&s);
    // C1 as it is now: both of its events carry the current title
    let c1 = json!({
        "id": C1, "title": "Trip to Rome", "ownerUserId": "alice", "agentId": "a1",
        "metadata": {"topic": "travel"}, "createdAt": "2026-05-19T12:00:00.123Z",
        "updatedAt": "2026-05-19T12:00:00.127Z", "accessLevel": "owner",
        "conversationGroupId": G1
    });
    let entry_full = |id: &str, seq: i64, role: &str, text: &str, at: &str| {
        json!({
            "id": id, "conversationId": C1, "userId": "alice", "clientId": "agent-a",
            "agentId": "a1", "channel": "history", "epoch": 1, "seq": seq,
            "contentType": "history", "content": [{"role": role, "text": text}],
            "createdAt": at, "conversationGroupId": G1
        })
    };
    let response = |status: &str| json!({"conversation": C1, "conversation_group": G1, "recording": C1, "status": status});
    let expected = vec![
        ev("conversation", "created", 1, c1.clone()),
        ev(
            "entry",
            "created",
            2,
            entry_full(E1, 1, "USER", "Hello", "2026-05-19T12:00:00.124Z"),
        ),
        ev("response", "created", 3, response("started")),
        ev(
            "entry",
            "created",
            4,
            entry_full(E2, 2, "AI", "Hi! Where to?", "2026-05-19T12:00:00.125Z"),
        ),
        ev("response", "deleted", 5, response("completed")),
        ev(
            "membership",
            "created",
            7,
            json!({"conversation_group": G1, "user": "bob", "role": "writer"}),
        ),
        ev("conversation", "updated", 8, c1),
        // 9..12: C2 was hard-deleted, none of its events is delivered
        ev(
            "membership",
            "deleted",
            13,
            json!({"conversation_group": G1, "user": "bob"}),
        ),
    ];
    assert_eq!(
        replay(&ep, request(Some("full"), Some("start"))).await,
        expected
    );
    s.stop().await;
}

#[tokio::test]
async fn live_events_are_rendered_per_subscriber() {
    let (s, ep) = server(ServerOptions::default()).await;
    let mut full = client(&ep)
        .subscribe(request(Some("full"), None))
        .await
        .unwrap();
    let mut summary = client(&ep)
        .subscribe(request(Some("summary"), None))
        .await
        .unwrap();
    for st in [&mut full, &mut summary] {
        assert_eq!(
            st.recv().await.unwrap().unwrap().phase().as_deref(),
            Some("live")
        );
    }
    s.create_conversation("alice", "", None, None).unwrap();
    let (_, cursor) = s
        .append_entry(C1, NewEntry::new(json!("b64:iVBORw0KGgo=")))
        .unwrap();
    // raw events go out as published, in both modes
    s.publish_many(vec![(
        "custom".into(),
        "x".into(),
        Bytes::from_static(b"not json"),
    )]);
    let mut f = Vec::new();
    let mut m = Vec::new();
    for _ in 0..3 {
        f.push(full.recv().await.unwrap().unwrap());
        m.push(summary.recv().await.unwrap().unwrap());
    }
    let data = |e: &crate::model::Event| serde_json::from_slice::<Value>(&e.data).unwrap();
    assert_eq!(f[1].cursor.as_deref(), Some(cursor.as_str()));
    assert_eq!(
        data(&f[1]),
        json!({"id": E1, "conversationId": C1, "userId": "alice", "channel": "history",
               "epoch": 1, "seq": 1, "contentType": "history", "content": "b64:iVBORw0KGgo=",
               "createdAt": "2026-05-19T12:00:00.124Z", "conversationGroupId": G1})
    );
    // no role in the content: no entry_role
    assert_eq!(
        data(&m[1]),
        json!({"conversation": C1, "conversation_group": G1, "entry": E1,
               "entry_channel": "history", "entry_content_type": "history"})
    );
    assert_eq!(data(&f[0])["title"], "");
    assert_eq!(f[2].data, Bytes::from_static(b"not json"));
    assert_eq!(m[2].data, f[2].data);
    s.stop().await;
}

#[tokio::test]
async fn a_non_numeric_cursor_is_stale() {
    let (s, ep) = server(ServerOptions::default()).await;
    scenario(&s);
    for after in ["abc", "5.0", "", "-1", "+3", " 3"] {
        let mut st = client(&ep)
            .subscribe(request(Some("full"), Some(after)))
            .await
            .unwrap();
        let first = st.recv().await.unwrap().unwrap();
        assert_eq!(first.phase().as_deref(), Some("replay"), "{after:?}");
        let inv = st.recv().await.unwrap().unwrap();
        assert_eq!(inv.event, "invalidate", "{after:?}");
        assert_eq!(
            inv.reason().as_deref(),
            Some("cursor beyond retention window")
        );
        assert!(st.recv().await.unwrap().is_none(), "{after:?}");
    }
    s.stop().await;
}

#[tokio::test]
async fn content_types_match_exactly_and_roles_in_any_case() {
    let (s, ep) = server(ServerOptions::default()).await;
    scenario(&s);
    let mut req = request(Some("summary"), Some("start"));
    req.entry_roles = vec!["user".into()];
    let got: Vec<String> = replay(&ep, req.clone())
        .await
        .into_iter()
        .filter(|e| e.0 == "entry")
        .map(|e| e.2)
        .collect();
    assert_eq!(got, vec!["2", "10"]);
    req.entry_roles = vec![];
    req.entry_content_types = vec!["HISTORY".into()];
    let entries = replay(&ep, req.clone()).await;
    assert!(entries.iter().all(|e| e.0 != "entry"));
    req.entry_content_types = vec!["history".into()];
    assert_eq!(
        replay(&ep, req)
            .await
            .iter()
            .filter(|e| e.0 == "entry")
            .count(),
        3
    );
    s.stop().await;
}

#[tokio::test]
async fn model_events_replay_as_their_summary_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("msp-scenario-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = || ServerOptions {
        data_dir: Some(dir.clone()),
        ..ServerOptions::default()
    };
    let before = {
        let (s, ep) = server(opts()).await;
        scenario(&s);
        let got = replay(&ep, request(Some("summary"), Some("start"))).await;
        s.stop().await;
        got
    };
    let (s, ep) = server(opts()).await;
    assert_eq!(s.outbox_range(), (1, 14));
    // the entities are not persisted: both modes replay the summary payloads
    assert_eq!(
        replay(&ep, request(Some("summary"), Some("start"))).await,
        before
    );
    assert_eq!(
        replay(&ep, request(Some("full"), Some("start"))).await,
        before
    );
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refused_operations_emit_nothing() {
    let s = LocalMemoryService::new(ServerOptions::default()).unwrap();
    assert!(s.append_entry("nope", NewEntry::new(json!([]))).is_err());
    let (c, _) = s.create_conversation("alice", "t", None, None).unwrap();
    assert!(s.finish_response(&c, ResponseStatus::Failed).is_err());
    assert!(s.create_conversation(" ", "t", None, None).is_err());
    assert_eq!(s.outbox_range(), (1, 2));
    let id_ok = s.with_model_state(|m| m.conversation(&c).is_some());
    assert!(id_ok);
}
