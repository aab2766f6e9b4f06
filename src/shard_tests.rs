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

/// Asserts the key reader's answer is `payload::default_key`'s; true when the scanner answered
/// (no fallback to serde_json).
fn agrees(kind: &str, data: &[u8]) -> bool {
    let want = crate::payload::default_key(kind, data);
    let got = default_key_of(kind, data).map(|k| k.into_owned());
    assert_eq!(got, want, "{kind} {:?}", String::from_utf8_lossy(data));
    match scan::default_key(kind, data) {
        Some(fast) => {
            assert_eq!(fast.map(str::to_string), want, "scanner: {kind} {data:?}");
            true
        }
        None => false,
    }
}

/// Payloads where the scanner must not guess (serde_json is stricter on what it decodes than
/// on what it skips), and payloads it must answer itself.
#[test]
fn the_scanner_answers_the_usual_payloads_and_defers_the_rest() {
    let sure: &[(&str, &str)] = &[
        (
            "entry",
            r#"{"conversation":"c1","conversation_group":"g1","entry":"e"}"#,
        ),
        (
            "entry",
            r#" { "conversation" : "c1" , "x" : [ 1 , -2.5e+3 , { } , [ ] ] } "#,
        ),
        (
            "entry",
            r#"{"id":"e1","conversationId":"c1","content":[{"role":"USER","text":"a\"b\\c\u00e9\n"},{"x":1}]}"#,
        ),
        ("entry", "{\"conversation\":\"caf\u{e9} \u{4f1a}\"}"),
        ("entry", r#"{"conversation":null,"conversation_group":"g"}"#),
        ("entry", r#"{"conversation":"a","conversation":true}"#),
        ("entry", r#"{"x":"\ud800"}"#),
        (
            "entry",
            r#"{"x":1e400,"conversation":"big numbers are skipped"}"#,
        ),
        ("entry", r#"{}"#),
        ("entry", r#"[1,2"#),
        ("entry", r#"7"#),
        ("entry", r#"{"conversation":"c1"} trailing"#),
        ("entry", r#"{"content":[],"conversation":"c"}"#),
        ("entry", r#"{"content":null,"conversation":"c"}"#),
        (
            "entry",
            r#"{"conversation":7,"conversation_group":"g","content":[{"role":-12}]}"#,
        ),
    ];
    for (kind, data) in sure {
        assert!(agrees(kind, data.as_bytes()), "scanner deferred {data}");
    }
    let deferred: &[(&str, &[u8])] = &[
        ("entry", br#"{"conver\u0073ation":"esc"}"#),
        ("entry", br#"{"conversation":"a\"b"}"#),
        ("entry", br#"{"conversation":"caf\u00e9"}"#),
        ("entry", br#"{"conversation":"a","entry":1.5}"#),
        ("entry", br#"{"conversation":1e400}"#),
        ("entry", br#"{"conversation":"a","entry":1e400}"#),
        ("entry", br#"{"conversation":"a","channel":"\ud800"}"#),
        (
            "entry",
            br#"{"conversation":"a","content":[{"role":1e400}]}"#,
        ),
        (
            "entry",
            br#"{"conversation":"a","content":[{"ro\u006ce":"x"}]}"#,
        ),
        ("entry", br#"{"conversation":"a","content":["x"]}"#),
        ("entry", br#"{"conversation":"a","content":{"role":"x"}}"#),
        ("entry", b"{\"conversation\":\"\xff\"}"),
        ("entry", b"{\"conversation\":\"a\",\"\xff\":1}"),
        ("entry", br#"{"conversation":"c1","bad":[1,,2]}"#),
        ("entry", br#"{"conversation":"c1","bad":01}"#),
        ("entry", br#"{"conversation":"c1","bad":"\x"}"#),
        ("entry", br#"{"conversation":"c1","x":1,}"#),
        ("entry", br#"{"conversation":"c1""#),
        ("entry", b"{\"conversation\":\"c1\",\"x\":\"\t\"}"),
    ];
    for (kind, data) in deferred {
        let _ = agrees(kind, data);
        assert_eq!(scan::default_key(kind, data), None, "{data:?}");
    }
    // Deep nesting: the scanner defers past 128 levels; serde_json's ignore has no limit.
    let deep = format!(
        r#"{{"x":{}1{},"conversation":"d"}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let _ = agrees("entry", deep.as_bytes());
    let deep = format!(
        r#"{{"x":{}1{},"conversation":"d"}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    assert!(agrees("entry", deep.as_bytes()));
}

/// Every payload a Memory Service sends (the upstream model, both detail modes) is read by the
/// scanner, with `payload::default_key`'s answer.
#[test]
fn the_scanner_reads_every_upstream_payload() {
    use crate::upstream::{AccessRole, Detail, NewEntry, ResponseStatus, Upstream};
    let mut u = Upstream::new();
    let mut notes = Vec::new();
    let (c1, n) = u
        .create_conversation("alice", "Trip \"quoted\" caf\u{e9}", Some("a1"), None)
        .unwrap();
    notes.push(n);
    let mut last_entry = String::new();
    for content in [
        json!([{"role": "USER", "text": "Hello \"there\"\n\u{4f1a}"}]),
        json!([{"text": "no role"}, {"role": "AI"}]),
        json!([{"role": "  AI  ", "parts": [{"a": [1, 2.5, null, true]}]}]),
        json!([]),
        json!([{"role": 7}]),
    ] {
        let (id, n) = u.append_entry(&c1, NewEntry::new(content)).unwrap();
        last_entry = id;
        notes.push(n);
    }
    notes.push(u.add_member(&c1, "bob", AccessRole::Reader).unwrap());
    notes.push(u.update_member(&c1, "bob", AccessRole::Writer).unwrap());
    notes.push(u.remove_member(&c1, "bob").unwrap());
    notes.push(u.start_response(&c1).unwrap());
    notes.push(u.finish_response(&c1, ResponseStatus::Completed).unwrap());
    let (fork, n) = u
        .fork_conversation(&c1, &last_entry, "alice", "Fork")
        .unwrap();
    notes.push(n);
    notes.push(u.update_conversation(&fork, Some("Renamed"), None).unwrap());
    notes.push(u.archive_conversation(&fork).unwrap());
    notes.push(u.unarchive_conversation(&fork).unwrap());
    let mut read = 0;
    for n in &notes {
        for detail in [Detail::Summary, Detail::Full] {
            if let Some(bytes) = u.render_bytes(n, detail) {
                assert!(
                    agrees(n.kind().as_str(), &bytes),
                    "scanner deferred {bytes:?}"
                );
                read += 1;
            }
        }
    }
    notes.push(u.delete_conversation(&fork).unwrap());
    let n = notes.last().unwrap();
    assert!(agrees(
        n.kind().as_str(),
        &u.render_bytes(n, Detail::Summary).unwrap()
    ));
    assert!(read > 20, "{read}");
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const NAMES: &[&str] = &[
    "conversation",
    "conversationId",
    "id",
    "conversation_group",
    "conversationGroupId",
    "entry",
    "entry_role",
    "entry_channel",
    "channel",
    "entry_content_type",
    "contentType",
    "content",
    "role",
    "text",
    "x",
    "conver\\u0073ation",
    "caf\u{e9}",
    "",
];
const STRINGS: &[&str] = &[
    "c1",
    "g1",
    "",
    "caf\u{e9}",
    "\u{4f1a}\u{8bdd}",
    "a\\\"b",
    "\\u00e9",
    "\\ud800",
    "\\n",
    "\\x",
    "\t",
    "6f1c2d3e-0000-4000-8000-000000000001",
    "\\uD83D\\uDE00",
    "\\u12",
];
const SCALARS: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "-0",
    "1.5",
    "-2e10",
    "1E+2",
    "1e400",
    "01",
    "1.",
    "-",
    "18446744073709551616",
    "nul",
    "tru",
];

fn value(r: &mut Rng, out: &mut String, depth: u32) {
    match r.below(if depth > 4 { 2 } else { 5 }) {
        0 => {
            out.push('"');
            out.push_str(r.pick(STRINGS));
            out.push('"');
        }
        1 => out.push_str(r.pick(SCALARS)),
        2 => {
            out.push('[');
            for i in 0..r.below(4) {
                if i > 0 {
                    out.push(',');
                }
                value(r, out, depth + 1);
            }
            out.push(']');
        }
        _ => object(r, out, depth + 1),
    }
}

fn object(r: &mut Rng, out: &mut String, depth: u32) {
    out.push('{');
    for i in 0..r.below(6) {
        if i > 0 {
            out.push_str(r.pick(&[",", ",", ",", " , ", "\n,\t"]));
        }
        out.push('"');
        out.push_str(r.pick(NAMES));
        out.push_str(r.pick(&["\":", "\" : ", "\":\r\n"]));
        value(r, out, depth);
    }
    out.push('}');
}

/// Generated payloads (nesting, escapes, unicode, numbers, duplicates), then truncated and
/// with bytes replaced: the reader always gives `payload::default_key`'s answer.
#[test]
fn generated_payloads_agree_with_the_default_key() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut sure, mut total) = (0, 0);
    for _ in 0..20_000 {
        let mut s = String::new();
        object(&mut r, &mut s, 0);
        let kind = r.pick(&["entry", "conversation", "membership", "response"]);
        let mut variants = vec![s.clone().into_bytes()];
        let b = s.as_bytes();
        variants.push(b[..r.below(b.len() + 1)].to_vec());
        let mut m = b.to_vec();
        let at = r.below(m.len());
        let bytes = b"{}[]\",:\\ 0a\xff\x01";
        m[at] = bytes[r.below(bytes.len())];
        variants.push(m);
        for v in variants {
            total += 1;
            sure += usize::from(agrees(kind, &v));
        }
    }
    // The generator favours what the scanner defers (escapes, odd numbers, malformed bytes),
    // yet a good share is answered by the scanner itself, so both paths are compared.
    assert!(sure * 10 > total, "{sure} of {total}");
}

/// The cost of deciding that an event is foreign (read the key, hash it): run with
/// `cargo test --release --lib shard::tests::timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing_of_the_default_key_filter() {
    let summary = br#"{"conversation":"6f1c2d3e-0000-4000-8000-000000000001","conversation_group":"g","entry":"e1","entry_channel":"history","entry_role":"USER","entry_content_type":"message"}"#;
    let full = br#"{"id":"e1","conversationId":"6f1c2d3e-0000-4000-8000-000000000001","conversationGroupId":"g","channel":"history","contentType":"message","content":[{"role":"USER","text":"hello world hello world hello world hello world hello world hello world"}],"createdAt":"2026-01-01T00:00:00Z","userId":"bob"}"#;
    let layout = ShardLayout { index: 1, count: 3 };
    // Best of 5 rounds (the machine is shared): ns per call.
    fn best(mut f: impl FnMut()) -> f64 {
        let n = 200_000u32;
        (0..5)
            .map(|_| {
                let start = std::time::Instant::now();
                for _ in 0..n {
                    f();
                }
                start.elapsed().as_secs_f64() / f64::from(n) * 1e9
            })
            .fold(f64::INFINITY, f64::min)
    }
    for (name, data) in [("summary", &summary[..]), ("full", &full[..])] {
        assert!(scan::default_key("entry", data).is_some());
        let decision = best(|| {
            std::hint::black_box(layout.owns_event("entry", std::hint::black_box(data)));
        });
        println!("{name} ({} bytes): {decision:.0} ns per event", data.len());
        let scanner = best(|| {
            std::hint::black_box(scan::default_key("entry", std::hint::black_box(data)));
        });
        println!("  the scanner alone: {scanner:.0} ns");
        let serde = best(|| {
            std::hint::black_box(crate::payload::Ids::parse(
                "entry",
                std::hint::black_box(data),
            ));
        });
        println!("  serde_json (payload::Ids::parse, the fallback): {serde:.0} ns");
        let ignored = best(|| {
            let _: serde::de::IgnoredAny =
                serde_json::from_slice(std::hint::black_box(data)).unwrap();
        });
        println!("  serde_json IgnoredAny: {ignored:.0} ns");
        let hash = best(|| {
            std::hint::black_box(fnv1a64(std::hint::black_box(
                b"6f1c2d3e-0000-4000-8000-000000000001",
            )));
        });
        println!("  fnv1a64 of a uuid: {hash:.0} ns");
    }
}
