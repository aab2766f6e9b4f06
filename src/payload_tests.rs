//! Both payload shapes of every kind, and payloads that are not what they should be.

use super::*;

const C: &str = "7b1d0c3e-0000-4000-8000-000000000001";
const G: &str = "2a960c3e-0000-4000-8000-000000000002";
const E: &str = "6a900c3e-0000-4000-8000-000000000003";

fn ids(kind: &str, json: &str) -> Ids<'static> {
    let leaked: &'static [u8] = Box::leak(json.as_bytes().to_vec().into_boxed_slice());
    Ids::parse(kind, leaked)
}

fn s(v: &str) -> Option<Cow<'static, str>> {
    Some(Cow::Owned(v.to_string()))
}

#[test]
fn summary_entry() {
    let data = format!(
        r#"{{"conversation":"{C}","conversation_group":"{G}","entry":"{E}",
            "entry_channel":"history","entry_content_type":"history","entry_role":"USER"}}"#
    );
    let got = ids("entry", &data);
    assert_eq!(
        got,
        Ids {
            conversation: s(C),
            group: s(G),
            entry: s(E),
            role: s("USER"),
            channel: s("history"),
            content_type: s("history"),
        }
    );
    assert_eq!(got.key(), Some(C));
    assert_eq!(default_key("entry", data.as_bytes()).as_deref(), Some(C));
    // borrowed when there is nothing to unescape
    assert!(matches!(
        Ids::parse("entry", data.as_bytes()).conversation,
        Some(Cow::Borrowed(_))
    ));
}

#[test]
fn full_entry() {
    let data = format!(
        r#"{{"id":"{E}","conversationId":"{C}","userId":"alice","clientId":"agent-a",
            "agentId":"a1","channel":"history","epoch":1,"seq":3,"contentType":"history",
            "content":[{{"text":"Hello","role":" AI "}},{{"role":"USER"}}],
            "createdAt":"2026-05-19T12:00:00.123Z","conversationGroupId":"{G}"}}"#
    );
    let got = ids("entry", &data);
    assert_eq!(
        got,
        Ids {
            conversation: s(C),
            group: s(G),
            entry: s(E),
            role: s("AI"),
            channel: s("history"),
            content_type: s("history"),
        }
    );
    assert_eq!(got.key(), Some(C));
}

#[test]
fn full_entry_without_a_role() {
    for content in [
        r#"[]"#,
        r#"[{"text":"no role"}]"#,
        r#"[{"role":"  "}]"#,
        r#"[{"role":7}]"#,
        r#"["text"]"#,
        r#"[[{"role":"USER"}]]"#,
        r#""b64:AAFoaQ==""#,
        r#"{"role":"USER"}"#,
        r#"null"#,
    ] {
        let data = format!(r#"{{"id":"{E}","conversationId":"{C}","content":{content}}}"#);
        let got = ids("entry", &data);
        assert_eq!(got.role, None, "{content}");
        assert_eq!(got.entry.as_deref(), Some(E), "{content}");
    }
}

#[test]
fn summary_and_full_conversation() {
    let summary = format!(
        r#"{{"conversation":"{C}","conversation_group":"{G}","members":["alice"],"archived":true}}"#
    );
    let got = ids("conversation", &summary);
    assert_eq!((got.conversation, got.group.clone()), (s(C), s(G)));
    assert_eq!((got.entry, got.role, got.channel), (None, None, None));
    let full = format!(
        r#"{{"id":"{C}","title":"Trip","ownerUserId":"alice","agentId":"a1","metadata":{{"id":"x"}},
            "forkedAtEntryId":"{E}","createdAt":"2026-05-19T12:00:00.123Z",
            "accessLevel":"owner","conversationGroupId":"{G}"}}"#
    );
    let got = ids("conversation", &full);
    assert_eq!(got.conversation, s(C));
    assert_eq!(got.group, s(G));
    assert_eq!(got.entry, None);
    assert_eq!(
        default_key("conversation", full.as_bytes()).as_deref(),
        Some(C)
    );
}

#[test]
fn responses_and_memberships() {
    for status in ["started", "completed", "failed"] {
        let data = format!(
            r#"{{"conversation":"{C}","conversation_group":"{G}","recording":"{C}","status":"{status}"}}"#
        );
        let got = ids("response", &data);
        assert_eq!((got.conversation.clone(), got.group.clone()), (s(C), s(G)));
        assert_eq!(got.key(), Some(C));
    }
    for data in [
        format!(r#"{{"conversation_group":"{G}","user":"bob","role":"writer"}}"#),
        format!(r#"{{"conversation_group":"{G}","user":"bob"}}"#),
    ] {
        let got = ids("membership", &data);
        assert_eq!(got.conversation, None);
        // a membership's `role` is an access role, not an entry role
        assert_eq!(got.role, None);
        assert_eq!(got.key(), Some(G));
        assert_eq!(
            default_key("membership", data.as_bytes()).as_deref(),
            Some(G)
        );
    }
}

#[test]
fn id_is_only_read_for_the_kind_it_belongs_to() {
    let data = format!(r#"{{"id":"{E}","conversationGroupId":"{G}"}}"#);
    assert_eq!(ids("response", &data).conversation, None);
    assert_eq!(ids("response", &data).key(), Some(G));
    assert_eq!(ids("entry", &data).conversation, None);
    assert_eq!(ids("entry", &data).entry, s(E));
    assert_eq!(ids("conversation", &data).conversation, s(E));
    assert_eq!(ids("conversation", &data).entry, None);
}

#[test]
fn summary_keys_win_over_full_keys() {
    let data = r#"{"conversation":"a","conversationId":"b","conversation_group":"g1","conversationGroupId":"g2"}"#;
    let got = ids("entry", data);
    assert_eq!((got.conversation, got.group), (s("a"), s("g1")));
}

#[test]
fn escaped_strings_are_unescaped() {
    let got = ids(
        "entry",
        r#"{"conversation":"c\u0031","entry_role":"U\"SER"}"#,
    );
    assert_eq!(got.conversation, s("c1"));
    assert_eq!(got.role, s("U\"SER"));
}

#[test]
fn not_an_object_or_wrong_types() {
    for data in [
        "",
        "null",
        "[]",
        "[1,2]",
        "\"x\"",
        "42",
        "true",
        "{",
        "not json",
        "{\"conversation\":",
    ] {
        assert_eq!(ids("entry", data), Ids::default(), "{data:?}");
        assert_eq!(default_key("entry", data.as_bytes()), None);
    }
    let got = ids(
        "entry",
        r#"{"conversation":7,"conversation_group":{"id":"g"},"entry":["e"],"entry_role":null}"#,
    );
    assert_eq!(got, Ids::default());
    assert_eq!(ids("entry", "{}"), Ids::default());
    // no conversation, no group: no key
    assert_eq!(default_key("stream", br#"{"phase":"live"}"#), None);
    // invalid UTF-8 is rejected, not a panic
    assert_eq!(
        Ids::parse("entry", b"{\"conversation\":\"\xff\"}"),
        Ids::default()
    );
}

#[test]
fn unknown_kinds_read_the_conversation_and_group_keys() {
    let got = ids(
        "stream",
        r#"{"conversation":"c","conversation_group":"g","entry":"e"}"#,
    );
    assert_eq!(
        (got.conversation, got.group, got.entry),
        (s("c"), s("g"), None)
    );
}
