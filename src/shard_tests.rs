//! The shard hash is part of the stored format: these vectors are also pinned in
//! tests/test_shards.py and written in docs/semantics.md ("Shards"), so every implementation
//! (and every later version of this one) computes the same shards.

use super::*;
use serde_json::json;

/// `(key, fnv1a64, shard of 3, shard of 16)`.
const VECTORS: &[(&str, u64, u64, u64)] = &[
    ("", 0xcbf2_9ce4_8422_2325, 2, 5),
    ("a", 0xaf63_dc4c_8601_ec8c, 1, 12),
    ("foobar", 0x8594_4171_f739_67e8, 0, 8),
    ("conv-1", 0x0367_5a76_15d2_7b9d, 0, 13),
    (
        "6f1c2d3e-0000-4000-8000-000000000001",
        0x6375_d059_d2c8_d9e4,
        0,
        4,
    ),
    ("caf\u{e9}", 0x48e8_823a_cfa4_0d89, 2, 9),
    ("\u{4f1a}\u{8bdd}-7", 0x51eb_a41f_e2ce_dfa3, 0, 3),
];

#[test]
fn the_hash_is_plain_fnv1a_64_over_the_utf8_bytes() {
    for &(key, hash, of3, of16) in VECTORS {
        assert_eq!(fnv1a64(key.as_bytes()), hash, "{key:?}");
        assert_eq!(shard_of(Some(key), 3), of3, "{key:?}");
        assert_eq!(shard_of(Some(key), 16), of16, "{key:?}");
        assert_eq!(shard_of(Some(key), 1), 0);
    }
}

#[test]
fn no_key_is_shard_zero_and_a_zero_count_reads_as_one() {
    assert_eq!(shard_of(None, 3), 0);
    assert_eq!(shard_of(None, 1024), 0);
    assert_eq!(shard_of(Some("a"), 0), 0);
}

#[test]
fn the_layout_owns_its_keys_and_the_default_key_of_events() {
    let l = ShardLayout { index: 1, count: 3 };
    assert!(l.owns(Some("a")));
    assert!(!l.owns(Some("foobar")));
    assert!(!l.owns(None));
    assert!(ShardLayout { index: 0, count: 3 }.owns(None));
    // Summary and full payloads: the conversation is the key.
    let summary = br#"{"conversation":"a","entry":"e1"}"#;
    let full = br#"{"id":"e1","conversationId":"foobar","content":[]}"#;
    assert!(l.owns_event("entry", summary));
    assert!(!l.owns_event("entry", full));
    assert_eq!(l.own_default_key("entry", summary), Some(Some("a".into())));
    assert_eq!(l.own_default_key("entry", full), None);
    // No key (not JSON): shard 0.
    assert!(ShardLayout { index: 0, count: 3 }.owns_event("entry", b"nope"));
    assert_eq!(
        ShardLayout { index: 0, count: 3 }.own_default_key("entry", b"nope"),
        Some(None)
    );
}

#[test]
fn validation_names_the_fields() {
    assert!(ShardLayout::default().validate().is_ok());
    assert!(ShardLayout {
        index: 1023,
        count: 1024
    }
    .validate()
    .is_ok());
    let e = ShardLayout { index: 0, count: 0 }
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("shard_count"), "{e}");
    let e = ShardLayout {
        index: 0,
        count: 1025,
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(e.contains("shard_count") && e.contains("1024"), "{e}");
    let e = ShardLayout { index: 3, count: 3 }
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("shard_index (3)") && e.contains("shard_count (3)"),
        "{e}"
    );
}

#[test]
fn the_stored_layout_absent_means_zero_of_one() {
    let id = "c";
    assert_eq!(
        ShardLayout::stored(id, &json!({})).unwrap(),
        ShardLayout::default()
    );
    assert_eq!(
        ShardLayout::stored(id, &json!([1])).unwrap(),
        ShardLayout::default()
    );
    assert_eq!(
        ShardLayout::stored(id, &json!({"shardLayout": {"index": 2, "count": 3}})).unwrap(),
        ShardLayout { index: 2, count: 3 }
    );
    for bad in [
        json!({"shardLayout": "2/3"}),
        json!({"shardLayout": {"index": 3, "count": 3}}),
        json!({"shardLayout": {"index": 0, "count": 0}}),
        json!({"shardLayout": {"index": -1, "count": 3}}),
        json!({"shardLayout": {"count": 3}}),
    ] {
        let e = ShardLayout::stored(id, &bad).unwrap_err().to_string();
        assert!(
            e.contains("client_id=c") && e.contains("shardLayout"),
            "{e}"
        );
    }
}

#[test]
fn a_different_layout_is_refused_with_both_layouts_and_how_to_reshard() {
    let two_of_three = ShardLayout { index: 2, count: 3 };
    let stored = json!({"lastEventCursor": "9", "shardLayout": {"index": 2, "count": 3}});
    assert!(two_of_three.check_stored("s-2", &stored).is_ok());
    let e = ShardLayout { index: 2, count: 4 }
        .check_stored("s-2", &stored)
        .unwrap_err();
    assert!(matches!(e, Error::Config(_)));
    let e = e.to_string();
    for part in [
        "client_id=s-2",
        "shard 2 of 3",
        "shard 2 of 4",
        "new client ids",
        "smallest lastEventCursor",
        "Scaling out",
    ] {
        assert!(e.contains(part), "{part:?} missing from {e}");
    }
    // An unsharded checkpoint is shard 0 of 1: refused by a sharded run, and the other way.
    let plain = json!({"lastEventCursor": "9"});
    assert!(ShardLayout::default().check_stored("p", &plain).is_ok());
    let e = two_of_three
        .check_stored("p", &plain)
        .unwrap_err()
        .to_string();
    assert!(e.contains("shard 0 of 1"), "{e}");
    assert!(ShardLayout::default().check_stored("s-2", &stored).is_err());
}

#[test]
fn the_layout_is_written_only_with_more_than_one_shard() {
    let mut v = json!({"n": 1, "shardLayout": {"index": 5, "count": 9}});
    ShardLayout::default().write(v.as_object_mut().unwrap());
    assert_eq!(v, json!({"n": 1}));
    ShardLayout { index: 1, count: 2 }.write(v.as_object_mut().unwrap());
    assert_eq!(
        v.to_string(),
        r#"{"n":1,"shardLayout":{"count":2,"index":1}}"#
    );
}

/// The key-only reader gives exactly the answers of `payload::default_key` (the lanes' key).
#[test]
fn the_key_reader_agrees_with_the_default_key() {
    let cases: &[(&str, &str)] = &[
        (
            "entry",
            r#"{"conversation":"c1","conversation_group":"g1","entry":"e"}"#,
        ),
        (
            "response",
            r#"{"conversation":"c2","recording":"c2","status":"started"}"#,
        ),
        ("membership", r#"{"conversation_group":"g1","user":"bob"}"#),
        (
            "entry",
            r#"{"id":"e1","conversationId":"c1","conversationGroupId":"g"}"#,
        ),
        (
            "conversation",
            r#"{"id":"c9","title":"t","conversationGroupId":"g"}"#,
        ),
        (
            "entry",
            r#"{"id":"c9","title":"t","conversationGroupId":"g"}"#,
        ),
        (
            "conversation",
            r#"{"conversation":"c3","conversation_group":"g3"}"#,
        ),
        ("entry", r#"{"id":"e1","conversationGroupId":"g2"}"#),
        ("entry", r#"{"entry":"e"}"#),
        ("entry", r#"{"conversation":42,"conversationId":"c7"}"#),
        (
            "entry",
            r#"{"conversation":null,"conversation_group":"g8"}"#,
        ),
        ("entry", r#"{"conversation":""}"#),
        ("entry", r#"["conversation"]"#),
        ("entry", r#""conversation""#),
        ("entry", r#"{"conversation":"a","conversation":"b"}"#),
        (
            "entry",
            r#"{"conversation":"a","conversation":7,"conversationId":"z"}"#,
        ),
        ("entry", r#"{"conver\u0073ation":"esc","x":1}"#),
        ("entry", r#"{"conversation":"caf\u00e9 \"q\""}"#),
        (
            "entry",
            r#"{"conversation":"c1","content":[{"role":"USER"}],"n":[1,{"a":[]}]}"#,
        ),
        ("entry", r#"{"conversation":"c1","bad":[1,,2]}"#),
        ("entry", r#"{"conversation":"c1""#),
        (
            "entry",
            r#"{"conversation":{"id":"nested"},"conversation_group":"g"}"#,
        ),
        ("entry", r#"{"conversation":"c1"} trailing"#),
        ("entry", "b64:AAAA"),
        ("entry", ""),
    ];
    for (kind, data) in cases {
        let want = crate::payload::default_key(kind, data.as_bytes());
        let got = default_key_of(kind, data.as_bytes()).map(|k| k.into_owned());
        assert_eq!(got, want, "{kind} {data}");
    }
}

/// The cost of deciding that an event is foreign (read the key, hash it): run with
/// `cargo test --release --lib shard::tests::timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing_of_the_default_key_filter() {
    let summary = br#"{"conversation":"6f1c2d3e-0000-4000-8000-000000000001","conversation_group":"g","entry":"e1","entry_channel":"history","entry_role":"USER","entry_content_type":"message"}"#;
    let full = br#"{"id":"e1","conversationId":"6f1c2d3e-0000-4000-8000-000000000001","conversationGroupId":"g","channel":"history","contentType":"message","content":[{"role":"USER","text":"hello world hello world hello world hello world hello world hello world"}],"createdAt":"2026-01-01T00:00:00Z","userId":"bob"}"#;
    let layout = ShardLayout { index: 1, count: 3 };
    for (name, data) in [("summary", &summary[..]), ("full", &full[..])] {
        let n = 1_000_000u32;
        let start = std::time::Instant::now();
        let mut owned = 0u32;
        for _ in 0..n {
            owned += u32::from(layout.owns_event("entry", std::hint::black_box(data)));
        }
        let per = start.elapsed().as_secs_f64() / f64::from(n) * 1e9;
        println!(
            "{name} ({} bytes): {per:.0} ns per event ({owned})",
            data.len()
        );
        let start = std::time::Instant::now();
        for _ in 0..n {
            let _: serde::de::IgnoredAny =
                serde_json::from_slice(std::hint::black_box(data)).unwrap();
        }
        let per = start.elapsed().as_secs_f64() / f64::from(n) * 1e9;
        println!("  serde_json IgnoredAny: {per:.0} ns");
        let start = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(fnv1a64(std::hint::black_box(
                b"6f1c2d3e-0000-4000-8000-000000000001",
            )));
        }
        let per = start.elapsed().as_secs_f64() / f64::from(n) * 1e9;
        println!("  fnv1a64 of a uuid: {per:.0} ns");
    }
}
