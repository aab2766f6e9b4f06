//! Every payload pinned against what a real Memory Service sends (keys and values, both
//! detail modes).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use super::time::utc;
use super::*;

const C1: &str = "00000000-0000-4000-8000-000000000001";
const G1: &str = "00000000-0000-4000-8000-000000000002";

/// A deterministic model whose clock starts at 2026-05-19T12:00:00.123Z and ticks 1 ms.
fn model() -> Upstream {
    Upstream::deterministic(utc(2026, 5, 19, 12, 0, 0, 123), Duration::from_millis(1))
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn set(ks: &[&str]) -> BTreeSet<String> {
    ks.iter().map(|k| k.to_string()).collect()
}

fn summary(u: &Upstream, n: &Notification) -> Value {
    u.render(n, Detail::Summary)
        .expect("summary is always delivered")
}

fn full(u: &Upstream, n: &Notification) -> Option<Value> {
    u.render(n, Detail::Full)
}

/// alice's conversation "Trip" with agent a1 (C1 in group G1).
fn trip(u: &mut Upstream) -> Notification {
    let (id, n) = u
        .create_conversation("alice", "Trip", Some("a1"), None)
        .unwrap();
    assert_eq!(id, C1);
    n
}

fn hello(u: &mut Upstream, conv: &str) -> (String, Notification) {
    let mut e = NewEntry::new(json!([{"role": "USER", "text": "Hello"}]));
    e.client_id = Some("agent-a".into());
    e.agent_id = Some("a1".into());
    u.append_entry(conv, e).unwrap()
}

#[test]
fn conversation_created_both_modes() {
    let mut u = model();
    let n = trip(&mut u);
    assert_eq!((n.kind().as_str(), n.event()), ("conversation", "created"));
    assert_eq!(
        summary(&u, &n),
        json!({"conversation": C1, "conversation_group": G1})
    );
    let f = full(&u, &n).unwrap();
    assert_eq!(
        f,
        json!({"id": C1, "title": "Trip", "ownerUserId": "alice", "agentId": "a1",
               "metadata": {}, "createdAt": "2026-05-19T12:00:00.123Z",
               "updatedAt": "2026-05-19T12:00:00.123Z", "accessLevel": "owner",
               "conversationGroupId": G1})
    );
    // the spec's example keys, minus the optional ones this conversation does not have
    let spec = set(&[
        "id",
        "title",
        "ownerUserId",
        "agentId",
        "metadata",
        "forkedAtEntryId",
        "forkedAtConversationId",
        "createdAt",
        "updatedAt",
        "archivedAt",
        "accessLevel",
        "conversationGroupId",
    ]);
    let absent = set(&["forkedAtEntryId", "forkedAtConversationId", "archivedAt"]);
    assert_eq!(keys(&f), spec.difference(&absent).cloned().collect());
    // no agent: the key is omitted, metadata is kept as given
    let (_, n2) = u
        .create_conversation(
            "bob",
            "",
            None,
            Some(json!({"k": 1}).as_object().cloned().unwrap()),
        )
        .unwrap();
    let f2 = full(&u, &n2).unwrap();
    assert!(f2.get("agentId").is_none());
    assert_eq!(f2["metadata"], json!({"k": 1}));
    assert_eq!(f2["title"], json!(""));
}

#[test]
fn conversation_updated_full_payload_is_read_at_delivery() {
    let mut u = model();
    let created = trip(&mut u);
    let meta = json!({"topic": "rome"}).as_object().cloned().unwrap();
    let n = u
        .update_conversation(C1, Some("Trip to Rome"), Some(meta))
        .unwrap();
    assert_eq!((n.kind(), n.event()), (Kind::Conversation, "updated"));
    assert_eq!(
        summary(&u, &n),
        json!({"conversation": C1, "conversation_group": G1})
    );
    let f = full(&u, &n).unwrap();
    assert_eq!(f["title"], json!("Trip to Rome"));
    assert_eq!(f["metadata"], json!({"topic": "rome"}));
    assert_eq!(f["updatedAt"], json!("2026-05-19T12:00:00.124Z"));
    // replaying the earlier `created` event shows the entity as it is now
    assert_eq!(full(&u, &created).unwrap(), f);
    assert_eq!(
        summary(&u, &created),
        json!({"conversation": C1, "conversation_group": G1})
    );
}

#[test]
fn archive_and_unarchive_carry_members_and_archived() {
    let mut u = model();
    trip(&mut u);
    u.add_member(C1, "bob", AccessRole::Reader).unwrap();
    let a = u.archive_conversation(C1).unwrap();
    assert_eq!((a.kind(), a.event()), (Kind::Conversation, "updated"));
    assert_eq!(
        summary(&u, &a),
        json!({"conversation": C1, "conversation_group": G1,
               "members": ["alice", "bob"], "archived": true})
    );
    let f = full(&u, &a).unwrap();
    assert_eq!(f["archivedAt"], json!("2026-05-19T12:00:00.124Z"));
    for gone in ["members", "archived", "conversation", "conversation_group"] {
        assert!(f.get(gone).is_none(), "{gone} leaked into the full payload");
    }
    assert_eq!(
        u.archive_conversation(C1).unwrap_err(),
        UpstreamError::Archived(C1.into())
    );
    assert!(matches!(
        u.append_entry(C1, NewEntry::new(json!([]))),
        Err(UpstreamError::Archived(_))
    ));
    let un = u.unarchive_conversation(C1).unwrap();
    assert_eq!(
        summary(&u, &un),
        json!({"conversation": C1, "conversation_group": G1,
               "members": ["alice", "bob"], "archived": false})
    );
    let f = full(&u, &un).unwrap();
    assert!(f.get("archivedAt").is_none());
    // the archive event, replayed now, shows the unarchived entity
    assert!(full(&u, &a).unwrap().get("archivedAt").is_none());
    assert_eq!(
        u.unarchive_conversation(C1).unwrap_err(),
        UpstreamError::NotArchived(C1.into())
    );
}

#[test]
fn hard_delete_carries_members_and_full_payloads_are_gone() {
    let mut u = model();
    let created = trip(&mut u);
    let (eid, entry) = hello(&mut u, C1);
    u.add_member(C1, "bob", AccessRole::Writer).unwrap();
    let d = u.delete_conversation(C1).unwrap();
    assert_eq!((d.kind(), d.event()), (Kind::Conversation, "deleted"));
    assert_eq!(
        summary(&u, &d),
        json!({"conversation": C1, "conversation_group": G1, "members": ["alice", "bob"]})
    );
    assert_eq!(full(&u, &d), None);
    assert_eq!(full(&u, &created), None);
    assert_eq!(full(&u, &entry), None);
    assert!(u.entry(&eid).is_none());
    assert!(u.members(G1).is_empty());
    // the summaries stay deliverable
    assert_eq!(summary(&u, &entry)["entry"], json!(eid));
    assert_eq!(
        u.delete_conversation(C1).unwrap_err(),
        UpstreamError::NoSuchConversation(C1.into())
    );
}

#[test]
fn entry_created_both_modes_match_the_spec_example() {
    let mut u = model();
    trip(&mut u);
    let (eid, n) = hello(&mut u, C1);
    assert_eq!(eid, "00000000-0000-4000-8000-000000000003");
    assert_eq!((n.kind().as_str(), n.event()), ("entry", "created"));
    assert_eq!(
        summary(&u, &n),
        json!({"conversation": C1, "conversation_group": G1, "entry": eid,
               "entry_channel": "history", "entry_content_type": "history",
               "entry_role": "USER"})
    );
    let f = full(&u, &n).unwrap();
    assert_eq!(
        f,
        json!({"id": eid, "conversationId": C1, "userId": "alice", "clientId": "agent-a",
               "agentId": "a1", "channel": "history", "epoch": 1, "seq": 1,
               "contentType": "history", "content": [{"role": "USER", "text": "Hello"}],
               "createdAt": "2026-05-19T12:00:00.124Z", "conversationGroupId": G1})
    );
    // exactly the spec example's key set
    let spec: Value = serde_json::from_str(
        r#"{"id": "6a90", "conversationId": "7b1d", "userId": "alice", "clientId": "agent-a",
            "agentId": "a1", "channel": "history", "epoch": 1, "seq": 3, "contentType": "history",
            "content": [{"role": "USER", "text": "Hello"}], "createdAt": "2026-05-19T12:00:00.123Z",
            "conversationGroupId": "2a96"}"#,
    )
    .unwrap();
    assert_eq!(keys(&f), keys(&spec));
    // seq counts per conversation
    let (_, n2) = hello(&mut u, C1);
    assert_eq!(full(&u, &n2).unwrap()["seq"], json!(2));
}

#[test]
fn entry_role_comes_from_the_first_item_and_is_omitted_without_one() {
    let mut u = model();
    trip(&mut u);
    let cases = [
        (
            json!([{"role": "AI", "text": "a"}, {"role": "USER", "text": "b"}]),
            Some("AI"),
        ),
        (json!([{"role": " USER ", "text": "x"}]), Some("USER")),
        (json!([{"text": "no role"}]), None),
        (json!([{"role": "", "text": "blank"}]), None),
        (json!([]), None),
        (binary_content(b"\x00\x01hi"), None),
    ];
    for (content, role) in cases {
        let (_, n) = u.append_entry(C1, NewEntry::new(content.clone())).unwrap();
        let s = summary(&u, &n);
        assert_eq!(
            s.get("entry_role").and_then(Value::as_str),
            role,
            "{content}"
        );
        assert_eq!(n.entry_role(), role);
        let mut expected = set(&[
            "conversation",
            "conversation_group",
            "entry",
            "entry_channel",
            "entry_content_type",
        ]);
        if role.is_some() {
            expected.insert("entry_role".into());
        }
        assert_eq!(keys(&s), expected);
        let f = full(&u, &n).unwrap();
        assert_eq!(f["content"], content);
        assert!(f.get("entry_role").is_none());
    }
}

#[test]
fn binary_content_is_b64_prefixed_base64() {
    assert_eq!(binary_content(b""), json!("b64:"));
    assert_eq!(binary_content(b"\x00\x01hi"), json!("b64:AAFoaQ=="));
    assert_eq!(binary_content(b"hi!"), json!("b64:aGkh"));
    assert_eq!(binary_content(b"h"), json!("b64:aA=="));
}

#[test]
fn entry_options_channel_user_and_omitted_fields() {
    let mut u = model();
    trip(&mut u);
    let mut e = NewEntry::new(json!([{"role": "AI", "text": "summary so far"}]));
    e.channel = Channel::parse("CONTEXT").unwrap();
    e.content_type = "LC4J".into();
    e.user_id = Some("carol".into());
    let (_, n) = u.append_entry(C1, e).unwrap();
    let s = summary(&u, &n);
    assert_eq!(s["entry_channel"], json!("context"));
    assert_eq!(s["entry_content_type"], json!("LC4J"));
    let f = full(&u, &n).unwrap();
    assert_eq!(f["userId"], json!("carol"));
    assert_eq!(f["channel"], json!("context"));
    assert!(f.get("clientId").is_none() && f.get("agentId").is_none());
    assert!(Channel::parse("memory").is_err());
    let mut bad = NewEntry::new(json!({"role": "USER"}));
    assert!(matches!(
        u.append_entry(C1, bad.clone()),
        Err(UpstreamError::Invalid {
            field: "content",
            ..
        })
    ));
    bad.content = json!([]);
    bad.content_type = " ".into();
    assert!(matches!(
        u.append_entry(C1, bad),
        Err(UpstreamError::Invalid {
            field: "content_type",
            ..
        })
    ));
    assert!(matches!(
        u.append_entry("nope", NewEntry::new(json!([]))),
        Err(UpstreamError::NoSuchConversation(_))
    ));
}

#[test]
fn responses_keep_the_summary_in_both_modes() {
    let mut u = model();
    trip(&mut u);
    let s = u.start_response(C1).unwrap();
    assert_eq!((s.kind().as_str(), s.event()), ("response", "created"));
    let expected = json!({"conversation": C1, "conversation_group": G1,
                          "recording": C1, "status": "started"});
    assert_eq!(summary(&u, &s), expected);
    assert_eq!(full(&u, &s).unwrap(), expected);
    // the conversation entity shows the response in progress
    let conv = u.conversation(C1).unwrap().clone();
    assert_eq!(
        u.conversation_json(&conv)["hasResponseInProgress"],
        json!(true)
    );
    assert_eq!(
        u.start_response(C1).unwrap_err(),
        UpstreamError::ResponseInProgress(C1.into())
    );
    let d = u.finish_response(C1, ResponseStatus::Completed).unwrap();
    assert_eq!((d.kind(), d.event()), (Kind::Response, "deleted"));
    let expected = json!({"conversation": C1, "conversation_group": G1,
                          "recording": C1, "status": "completed"});
    assert_eq!(summary(&u, &d), expected);
    assert_eq!(full(&u, &d).unwrap(), expected);
    assert!(u
        .conversation_json(&conv)
        .get("hasResponseInProgress")
        .is_none());
    u.start_response(C1).unwrap();
    let failed = u
        .finish_response(C1, ResponseStatus::parse("FAILED").unwrap())
        .unwrap();
    assert_eq!(summary(&u, &failed)["status"], json!("failed"));
    assert_eq!(
        u.finish_response(C1, ResponseStatus::Failed).unwrap_err(),
        UpstreamError::NoResponse(C1.into())
    );
    assert!(ResponseStatus::parse("started").is_err());
}

#[test]
fn memberships_keep_the_summary_in_both_modes() {
    let mut u = model();
    trip(&mut u);
    let add = u.add_member(C1, "bob", AccessRole::Writer).unwrap();
    assert_eq!(
        (add.kind().as_str(), add.event()),
        ("membership", "created")
    );
    let expected = json!({"conversation_group": G1, "user": "bob", "role": "writer"});
    assert_eq!(summary(&u, &add), expected);
    assert_eq!(full(&u, &add).unwrap(), expected);
    assert_eq!(add.conversation_id(), None);
    assert_eq!(add.group_id(), Some(G1));
    let upd = u
        .update_member(C1, "bob", AccessRole::parse("Manager").unwrap())
        .unwrap();
    assert_eq!(upd.event(), "updated");
    assert_eq!(
        full(&u, &upd).unwrap(),
        json!({"conversation_group": G1, "user": "bob", "role": "manager"})
    );
    let del = u.remove_member(C1, "bob").unwrap();
    assert_eq!(del.event(), "deleted");
    let expected = json!({"conversation_group": G1, "user": "bob"});
    assert_eq!(summary(&u, &del), expected);
    assert_eq!(full(&u, &del).unwrap(), expected);
    assert_eq!(
        u.members(G1),
        vec![("alice".to_string(), AccessRole::Owner)]
    );
    // errors a real server gives
    assert!(matches!(
        u.remove_member(C1, "bob"),
        Err(UpstreamError::NotMember { .. })
    ));
    assert_eq!(
        u.remove_member(C1, "alice").unwrap_err(),
        UpstreamError::Owner("alice".into())
    );
    assert!(matches!(
        u.add_member(C1, "alice", AccessRole::Reader),
        Err(UpstreamError::AlreadyMember { .. })
    ));
    assert!(AccessRole::parse("admin").is_err());
}

#[test]
fn forks_share_the_group_and_name_their_origin() {
    let mut u = model();
    trip(&mut u);
    let (eid, _) = hello(&mut u, C1);
    let (fid, n) = u
        .fork_conversation(C1, &eid, "alice", "Trip (alt)")
        .unwrap();
    assert_eq!(
        summary(&u, &n),
        json!({"conversation": fid, "conversation_group": G1})
    );
    let f = full(&u, &n).unwrap();
    assert_eq!(f["forkedAtEntryId"], json!(eid));
    assert_eq!(f["forkedAtConversationId"], json!(C1));
    assert_eq!(f["conversationGroupId"], json!(G1));
    assert_eq!(f["agentId"], json!("a1"));
    // deleting the original keeps the group (and its members) for the fork
    u.delete_conversation(C1).unwrap();
    assert_eq!(u.members(G1).len(), 1);
    assert!(matches!(
        u.fork_conversation(&fid, "nope", "alice", ""),
        Err(UpstreamError::NoSuchEntry(_))
    ));
}

#[test]
fn random_ids_are_distinct_v4_uuids_and_times_are_rfc3339() {
    let mut u = Upstream::new();
    let (c, n) = u.create_conversation("alice", "", None, None).unwrap();
    let g = n.group_id().unwrap().to_string();
    assert_ne!(c, g);
    for id in [&c, &g] {
        let b = id.as_bytes();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!([b[8], b[13], b[18], b[23]], [b'-'; 4], "{id}");
        assert_eq!(b[14], b'4', "{id}: version 4");
        assert!(matches!(b[19], b'8' | b'9' | b'a' | b'b'), "{id}: variant");
    }
    let f = u.render(&n, Detail::Full).unwrap();
    let t = f["createdAt"].as_str().unwrap();
    assert_eq!(t.len(), "2026-05-19T12:00:00.123Z".len(), "{t}");
    assert!(t.ends_with('Z') && t.as_bytes()[19] == b'.', "{t}");
}

#[test]
fn render_bytes_is_the_json_of_render() {
    let mut u = model();
    let n = trip(&mut u);
    let b = u.render_bytes(&n, Detail::Summary).unwrap();
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v, summary(&u, &n));
    u.delete_conversation(C1).unwrap();
    assert_eq!(u.render_bytes(&n, Detail::Full), None);
}

#[test]
fn entry_filter_semantics() {
    let mut u = model();
    trip(&mut u);
    let (_, user) = hello(&mut u, C1);
    let (_, ai) = u
        .append_entry(C1, NewEntry::new(json!([{"role": "AI", "text": "hi"}])))
        .unwrap();
    let mut ctx = NewEntry::new(json!([{"role": "AI", "text": "ctx"}]));
    ctx.channel = Channel::Context;
    ctx.content_type = "LC4J".into();
    let (_, ctx) = u.append_entry(C1, ctx).unwrap();
    let (_, norole) = u.append_entry(C1, NewEntry::new(json!([]))).unwrap();
    let membership = u.add_member(C1, "bob", AccessRole::Reader).unwrap();
    let all = [&user, &ai, &ctx, &norole, &membership];
    let passing = |f: &EntryFilter| all.iter().map(|n| f.matches(n)).collect::<Vec<_>>();

    let none: [&str; 0] = [];
    // default: history only
    assert_eq!(
        passing(&EntryFilter::default()),
        [true, true, false, true, true]
    );
    // channels case-insensitively, blank values ignored
    let f = EntryFilter::new(&["CONTEXT", " "], &[], &[]);
    assert_eq!(passing(&f), [false, false, true, false, true]);
    let f = EntryFilter::new(&["history", "Context"], &none, &none);
    assert_eq!(passing(&f), [true, true, true, true, true]);
    // roles case-insensitively; an entry without a role never passes a role filter
    let f = EntryFilter::new(&[], &[], &["user"]);
    assert_eq!(passing(&f), [true, false, false, false, true]);
    let f = EntryFilter::new(&["history", "context"], &[], &["ai", "Ai"]);
    assert_eq!(passing(&f), [false, true, true, false, true]);
    // content types exactly
    let f = EntryFilter::new(&["history"], &["History"], &[]);
    assert_eq!(passing(&f), [false, false, false, false, true]);
    let f = EntryFilter::new(&["context"], &["LC4J"], &[]);
    assert_eq!(passing(&f), [false, false, true, false, true]);
    assert!(!EntryFilter::new(&["context"], &["lc4j"], &[]).matches(&ctx));
}

#[test]
fn after_cursor_and_detail_parsing() {
    assert_eq!(AfterCursor::parse(None), AfterCursor::Tail);
    assert_eq!(AfterCursor::parse(Some("start")), AfterCursor::Start);
    assert_eq!(AfterCursor::parse(Some("0")), AfterCursor::After(0));
    assert_eq!(AfterCursor::parse(Some("1042")), AfterCursor::After(1042));
    for stale in [
        "",
        "abc",
        "-1",
        "+1",
        " 1",
        "1 ",
        "1.5",
        "START",
        "99999999999999999999999",
    ] {
        assert_eq!(
            AfterCursor::parse(Some(stale)),
            AfterCursor::Stale,
            "{stale:?}"
        );
    }
    assert_eq!(Detail::parse(None), Ok(Detail::Summary));
    assert_eq!(Detail::parse(Some("summary")), Ok(Detail::Summary));
    assert_eq!(Detail::parse(Some("full")), Ok(Detail::Full));
    assert!(Detail::parse(Some("FULL")).is_err());
    assert!(Detail::parse(Some("")).is_err());
}
