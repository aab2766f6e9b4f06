//! Scenario tests of the lane bookkeeping: one behaviour each, time under the test's control.

use std::time::{Duration, Instant};

use super::*;

fn cfg(max_concurrency: usize, max_attempts: u32, on_failure: OnFailure) -> LanesConfig {
    LanesConfig {
        max_concurrency,
        max_attempts,
        retry_min: Duration::from_millis(100),
        retry_max: Duration::from_secs(2),
        on_failure,
        max_window: 4096,
    }
}

fn lanes(max_concurrency: usize) -> Lanes<()> {
    Lanes::new(cfg(max_concurrency, 1, OnFailure::Stop), 1).unwrap()
}

fn k(s: &str) -> Option<String> {
    Some(s.to_string())
}

fn c(s: &str) -> Option<String> {
    Some(s.to_string())
}

fn queued(a: Admitted) -> u64 {
    match a {
        Admitted::Queued(s) => s,
        Admitted::AlreadyDone(s) => panic!("event #{s} unexpectedly already done"),
    }
}

fn starts<T>(l: &mut Lanes<T>, now: Instant) -> Vec<u64> {
    let mut out = Vec::new();
    l.start_ready(now, &mut out);
    out.into_iter().map(|s| s.seq).collect()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn config_is_validated_naming_the_field() {
    let bad = [
        (cfg(0, 1, OnFailure::Stop), "max_concurrency"),
        (cfg(1, 0, OnFailure::Stop), "max_attempts"),
        (
            LanesConfig {
                retry_min: Duration::ZERO,
                ..LanesConfig::default()
            },
            "retry_min",
        ),
        (
            LanesConfig {
                retry_min: Duration::from_secs(2),
                retry_max: Duration::from_secs(1),
                ..LanesConfig::default()
            },
            "retry_max",
        ),
        (
            LanesConfig {
                max_window: 0,
                ..LanesConfig::default()
            },
            "max_window",
        ),
    ];
    for (c, field) in bad {
        let e = Lanes::<()>::new(c, 0).err().expect("refused");
        assert!(e.to_string().contains(field), "{e} should name {field}");
    }
    assert_eq!(OnFailure::parse(" SKIP "), Some(OnFailure::Skip));
    assert_eq!(OnFailure::parse("stop"), Some(OnFailure::Stop));
    assert_eq!(OnFailure::parse("retry"), None);
    assert_eq!(cfg(1, 1, OnFailure::Stop).completed_limit(), 64);
    assert_eq!(cfg(16, 1, OnFailure::Stop).completed_limit(), 64);
    assert_eq!(cfg(512, 1, OnFailure::Stop).completed_limit(), 2048);
}

#[test]
fn max_concurrency_one_is_sequential_stream_order_and_the_watermark_is_the_last_handled() {
    let now = Instant::now();
    let mut l = lanes(1);
    let keys = ["a", "b", "a", "c", "b", "b"];
    for (i, key) in keys.iter().enumerate() {
        queued(l.admit(k(key), c(&i.to_string()), ()));
    }
    for i in 0..keys.len() as u64 {
        assert_eq!(starts(&mut l, now), vec![i]);
        assert_eq!(starts(&mut l, now), Vec::<u64>::new(), "one at a time");
        l.completed(i).unwrap();
        assert_eq!(l.watermark(), Some(i.to_string().as_str()));
        assert!(l.completed_above_watermark().is_empty());
    }
    assert_eq!(l.stats().window, 0);
}

#[test]
fn per_key_events_never_overlap_and_start_in_stream_order() {
    let now = Instant::now();
    let mut l = lanes(8);
    for (i, key) in ["A", "B", "A", "C", "A"].iter().enumerate() {
        queued(l.admit(k(key), c(&format!("{}", i + 1)), ()));
    }
    assert_eq!(starts(&mut l, now), vec![0, 1, 3]);
    l.completed(3).unwrap();
    assert_eq!(
        starts(&mut l, now),
        Vec::<u64>::new(),
        "A's next waits for #0"
    );
    l.completed(0).unwrap();
    assert_eq!(starts(&mut l, now), vec![2]);
    // Reporting an event that is not its lane's turn, or twice, is refused.
    assert!(l.completed(4).is_err());
    assert!(l.completed(0).is_err());
    l.completed(2).unwrap();
    assert_eq!(starts(&mut l, now), vec![4]);
}

#[test]
fn the_shared_none_lane_is_ordered_while_keyed_lanes_overlap_it() {
    let now = Instant::now();
    let mut l = lanes(8);
    queued(l.admit(None, c("1"), ()));
    queued(l.admit(k("x"), c("2"), ()));
    queued(l.admit(None, c("3"), ()));
    queued(l.admit(k("y"), c("4"), ()));
    assert_eq!(starts(&mut l, now), vec![0, 1, 3]);
    l.completed(0).unwrap();
    assert_eq!(starts(&mut l, now), vec![2]);
}

#[test]
fn the_watermark_waits_for_the_oldest_unfinished_event() {
    let now = Instant::now();
    let mut l = lanes(3);
    for (i, key) in ["a", "b", "c"].iter().enumerate() {
        queued(l.admit(k(key), c(&format!("{}", 101 + i)), ()));
    }
    assert_eq!(starts(&mut l, now), vec![0, 1, 2]);
    l.completed(2).unwrap();
    l.completed(1).unwrap();
    assert_eq!(l.watermark(), None);
    assert_eq!(l.completed_above_watermark(), strs(&["102", "103"]));
    l.completed(0).unwrap();
    assert_eq!(l.watermark(), Some("103"));
    assert!(l.completed_above_watermark().is_empty());
}

#[test]
fn events_without_cursor_complete_but_never_move_the_watermark() {
    let now = Instant::now();
    let mut l = lanes(4);
    queued(l.admit(k("a"), c("1"), ()));
    queued(l.admit(k("b"), None, ()));
    queued(l.admit(k("c"), c("3"), ()));
    queued(l.admit(k("d"), None, ()));
    assert_eq!(starts(&mut l, now), vec![0, 1, 2, 3]);
    l.completed(1).unwrap();
    l.completed(3).unwrap();
    assert!(
        l.completed_above_watermark().is_empty(),
        "nothing to record"
    );
    l.completed(0).unwrap();
    assert_eq!(l.watermark(), Some("1"));
    l.completed(2).unwrap();
    assert_eq!(l.watermark(), Some("3"), "past the cursorless events");
    assert_eq!(l.stats().window, 0);
}

#[test]
fn instantly_done_events_count_as_completed_in_stream_order() {
    let now = Instant::now();
    let mut l = lanes(4);
    queued(l.admit(k("a"), c("1"), ()));
    let s = l.admit_done(c("2"));
    assert_eq!(s, 1);
    l.admit_done(None); // a stream signal
    queued(l.admit(k("b"), c("4"), ()));
    assert_eq!(l.watermark(), None, "#0 not done yet");
    assert_eq!(l.completed_above_watermark(), strs(&["2"]));
    assert_eq!(starts(&mut l, now), vec![0, 3]);
    l.completed(0).unwrap();
    assert_eq!(l.watermark(), Some("2"), "the signal has no cursor");
    l.completed(3).unwrap();
    assert_eq!(l.watermark(), Some("4"));
}

#[test]
fn the_completed_set_is_bounded_and_starts_resume_when_the_watermark_moves() {
    let now = Instant::now();
    let mut l = lanes(20);
    let limit = l.config().completed_limit();
    assert_eq!(limit, 80);
    for i in 0..300u64 {
        queued(l.admit(k(&format!("k{i}")), c(&format!("{i}")), ()));
    }
    // #0 is stuck; everything else completes as soon as it starts.
    let mut started = starts(&mut l, now);
    assert_eq!(started[0], 0);
    let mut total = started.len() - 1;
    loop {
        for &s in started.iter().filter(|&&s| s != 0) {
            l.completed(s).unwrap();
        }
        assert!(l.completed_above_watermark().len() <= limit);
        started = starts(&mut l, now);
        if started.is_empty() {
            break;
        }
        total += started.len();
    }
    assert_eq!(
        total, limit,
        "exactly `limit` events ran past the stuck head"
    );
    assert_eq!(l.completed_above_watermark().len(), limit);
    assert_eq!(l.stats().in_flight, 1);
    // The head completes: the watermark jumps over the completed prefix, starts go on.
    l.completed(0).unwrap();
    assert_eq!(l.watermark(), Some("80"));
    assert!(l.completed_above_watermark().is_empty());
    assert_eq!(starts(&mut l, now).len(), 20);
}

#[test]
fn a_head_event_starts_even_when_the_bound_is_reached() {
    let now = Instant::now();
    // Load a checkpoint written with a larger limit: the bound is exceeded from the start.
    let mut l = lanes(1);
    let loaded: Vec<String> = (1000..1100).map(|i| i.to_string()).collect();
    l.load(c("5"), loaded).unwrap();
    assert_eq!(l.stats().completed_above, 100);
    queued(l.admit(k("a"), c("6"), ()));
    queued(l.admit(k("b"), c("7"), ()));
    assert_eq!(starts(&mut l, now), vec![0], "the head is exempt");
    l.completed(0).unwrap();
    assert_eq!(starts(&mut l, now), vec![1]);
}

#[test]
fn a_failing_event_holds_its_key_back_while_other_keys_go_on() {
    let t0 = Instant::now();
    let mut l: Lanes<()> = Lanes::new(cfg(4, 3, OnFailure::Stop), 9).unwrap();
    queued(l.admit(k("A"), c("1"), ()));
    queued(l.admit(k("A"), c("2"), ()));
    queued(l.admit(k("B"), c("3"), ()));
    queued(l.admit(k("B"), c("4"), ()));
    assert_eq!(starts(&mut l, t0), vec![0, 2]);
    let Failure::Retry { attempt, due } = l.failed(0, t0).unwrap() else {
        panic!("expected a retry")
    };
    assert_eq!(attempt, 2);
    let d = due - t0;
    assert!(
        d >= Duration::from_millis(100) && d <= Duration::from_millis(200),
        "{d:?}"
    );
    assert_eq!(l.next_deadline(), Some(due));
    assert_eq!(l.stats().retries, 1);
    assert_eq!(l.stats().waiting_retry, 1);
    // Other keys go on; A's later event waits.
    l.completed(2).unwrap();
    assert_eq!(starts(&mut l, t0), vec![3]);
    assert_eq!(
        starts(&mut l, due - Duration::from_millis(1)),
        Vec::<u64>::new()
    );
    let mut out = Vec::new();
    l.start_ready(due, &mut out);
    assert_eq!(out, vec![Start { seq: 0, attempt: 2 }]);
    // Second failure: the delay's lower bound doubled.
    let t1 = due + Duration::from_millis(5);
    let Failure::Retry { attempt, due } = l.failed(0, t1).unwrap() else {
        panic!("expected a retry")
    };
    assert_eq!(attempt, 3);
    let d = due - t1;
    assert!(
        d >= Duration::from_millis(200) && d <= Duration::from_millis(400),
        "{d:?}"
    );
    l.start_ready(due, &mut out);
    l.completed(0).unwrap();
    assert_eq!(l.watermark(), Some("1"));
    assert_eq!(starts(&mut l, due), vec![1]);
    l.completed(1).unwrap();
    l.completed(3).unwrap();
    assert_eq!(l.watermark(), Some("4"));
}

#[test]
fn retries_bypass_the_completed_set_bound() {
    let t0 = Instant::now();
    let mut l: Lanes<()> = Lanes::new(cfg(16, 2, OnFailure::Stop), 3).unwrap();
    assert_eq!(l.config().completed_limit(), 64);
    for i in 0..70u64 {
        queued(l.admit(k(&format!("k{i}")), c(&i.to_string()), ()));
    }
    let s = starts(&mut l, t0);
    assert_eq!(s.len(), 16);
    // #5 fails and waits for its retry; #0 is stuck; everything else completes until the
    // bound (C + F = 64, with #5 counted in F) stops new starts.
    let Failure::Retry { due, .. } = l.failed(5, t0).unwrap() else {
        panic!("retry expected")
    };
    let mut running: Vec<u64> = s.into_iter().filter(|&q| q != 0 && q != 5).collect();
    while !running.is_empty() {
        for q in running.drain(..) {
            l.completed(q).unwrap();
        }
        running = starts(&mut l, t0);
    }
    assert_eq!(l.stats().completed_above, 63);
    assert_eq!(starts(&mut l, due), vec![5], "the retry still runs");
    l.completed(5).unwrap();
    assert_eq!(l.completed_above_watermark().len(), 64);
    assert_eq!(starts(&mut l, due), Vec::<u64>::new(), "bound reached");
    l.completed(0).unwrap();
    assert_eq!(l.watermark(), Some("64"));
    assert_eq!(starts(&mut l, due), (65..70).collect::<Vec<u64>>());
}

#[test]
fn stop_after_the_last_try_never_passes_the_failed_event() {
    let t0 = Instant::now();
    let mut l: Lanes<()> = Lanes::new(cfg(4, 2, OnFailure::Stop), 5).unwrap();
    for i in 1..=3 {
        queued(l.admit(k(&format!("k{i}")), c(&i.to_string()), ()));
    }
    assert_eq!(starts(&mut l, t0), vec![0, 1, 2]);
    let Failure::Retry { due, .. } = l.failed(0, t0).unwrap() else {
        panic!("retry expected")
    };
    assert_eq!(starts(&mut l, due), vec![0]);
    assert_eq!(l.failed(0, due).unwrap(), Failure::Stop);
    assert!(l.is_halted());
    l.completed(1).unwrap();
    l.completed(2).unwrap();
    assert_eq!(l.watermark(), None);
    assert_eq!(l.completed_above_watermark(), strs(&["2", "3"]));
    queued(l.admit(k("k9"), c("9"), ()));
    assert_eq!(
        starts(&mut l, due),
        Vec::<u64>::new(),
        "nothing starts after a stop"
    );
    assert_eq!(l.next_deadline(), None);
    assert!(l.completed(0).is_err(), "the failed event never completes");
}

#[test]
fn skip_after_the_last_try_counts_the_event_done_once_the_hook_ran() {
    let t0 = Instant::now();
    let mut l: Lanes<()> = Lanes::new(cfg(2, 1, OnFailure::Skip), 5).unwrap();
    queued(l.admit(k("a"), c("1"), ()));
    queued(l.admit(k("a"), c("2"), ()));
    assert_eq!(starts(&mut l, t0), vec![0]);
    assert_eq!(l.failed(0, t0).unwrap(), Failure::Skip);
    assert!(!l.is_quiet(), "the hook is outstanding");
    assert_eq!(starts(&mut l, t0), Vec::<u64>::new(), "key order kept");
    assert_eq!(l.watermark(), None);
    l.completed(0).unwrap();
    assert!(l.is_quiet());
    assert_eq!(l.stats().failed_events, 1);
    assert_eq!(l.watermark(), Some("1"));
    assert_eq!(starts(&mut l, t0), vec![1]);
}

#[test]
fn stop_lists_in_flight_work_and_cancelled_events_are_redone_next_run() {
    let t0 = Instant::now();
    let mut l = lanes(3);
    for i in 1..=5 {
        queued(l.admit(k(&format!("k{i}")), c(&i.to_string()), ()));
    }
    assert_eq!(starts(&mut l, t0), vec![0, 1, 2]);
    l.completed(0).unwrap();
    assert_eq!(starts(&mut l, t0), vec![3]);
    assert_eq!(l.stop(), vec![1, 2, 3]);
    assert!(l.is_stopped());
    // Within the stop timeout #3 finishes; #1 and #2 are cancelled.
    l.completed(3).unwrap();
    l.cancelled(1).unwrap();
    l.cancelled(2).unwrap();
    assert!(l.is_quiet());
    assert_eq!(starts(&mut l, t0), Vec::<u64>::new());
    assert!(l.completed(1).is_err(), "a cancelled event is not done");
    let pos = l.position();
    assert_eq!(pos.watermark.as_deref(), Some("1"));
    assert_eq!(pos.completed, strs(&["4"]));

    // Next run: the replay after "1" skips "4", redoes "2", "3" and does "5".
    let mut r = lanes(3);
    r.load(pos.watermark, pos.completed).unwrap();
    let mut handled = Vec::new();
    for i in 2..=5 {
        match r.admit(k(&format!("k{i}")), c(&i.to_string()), ()) {
            Admitted::Queued(s) => handled.push((s, i)),
            Admitted::AlreadyDone(_) => assert_eq!(i, 4),
        }
    }
    assert_eq!(
        handled.iter().map(|h| h.1).collect::<Vec<_>>(),
        vec![2, 3, 5]
    );
    for s in starts(&mut r, t0) {
        r.completed(s).unwrap();
    }
    assert_eq!(r.watermark(), Some("5"));
    assert!(r.completed_above_watermark().is_empty());
}

#[test]
fn loaded_completed_cursors_stay_recorded_until_the_watermark_passes_them() {
    let t0 = Instant::now();
    let mut l = lanes(4);
    l.load(c("10"), strs(&["12", "13"])).unwrap();
    assert!(l.is_loaded_completed("12"));
    assert_eq!(l.watermark(), Some("10"));
    // Nothing seen yet: a snapshot must still carry the loaded set.
    assert_eq!(l.completed_above_watermark(), strs(&["12", "13"]));
    queued(l.admit(k("a"), c("11"), ()));
    assert_eq!(l.admit(k("b"), c("12"), ()), Admitted::AlreadyDone(1));
    assert!(!l.is_loaded_completed("12"));
    assert_eq!(l.completed_above_watermark(), strs(&["12", "13"]));
    assert_eq!(starts(&mut l, t0), vec![0]);
    l.completed(0).unwrap();
    assert_eq!(l.watermark(), Some("12"));
    assert_eq!(l.completed_above_watermark(), strs(&["13"]));
    // A stream moved elsewhere (stale-cursor policy) will not bring "13" back.
    l.discard_carried();
    assert!(l.completed_above_watermark().is_empty());
    assert!(l.load(None, vec![]).is_err(), "only before the first event");
}

#[test]
fn the_window_bounds_admission_and_items_are_kept_until_done() {
    let t0 = Instant::now();
    let mut l: Lanes<String> = Lanes::new(
        LanesConfig {
            max_concurrency: 2,
            max_window: 3,
            ..LanesConfig::default()
        },
        0,
    )
    .unwrap();
    assert_eq!(l.room(), 3);
    queued(l.admit(k("a"), c("1"), "one".into()));
    queued(l.admit(k("a"), c("2"), "two".into()));
    queued(l.admit(k("b"), c("3"), "three".into()));
    assert_eq!(l.room(), 0);
    assert_eq!(l.item(1).map(String::as_str), Some("two"));
    assert_eq!(starts(&mut l, t0), vec![0, 2]);
    l.completed(2).unwrap();
    assert_eq!(l.item(2), None, "dropped once done");
    assert_eq!(l.room(), 0, "#2 is done but still above the watermark");
    l.completed(0).unwrap();
    assert_eq!(
        l.room(),
        1,
        "#1 (pending) and #2 (done) are above the watermark"
    );
    assert_eq!(l.item(0), None);
    assert_eq!(l.item(99), None);
}

#[test]
fn misuse_is_reported_not_panicked() {
    let t0 = Instant::now();
    let mut l = lanes(2);
    queued(l.admit(k("a"), c("1"), ()));
    assert!(l.completed(0).is_err(), "not started");
    assert!(l.failed(0, t0).is_err(), "not started");
    assert!(l.cancelled(0).is_err(), "not started");
    assert!(l.completed(7).is_err(), "unknown");
    assert_eq!(starts(&mut l, t0), vec![0]);
    l.completed(0).unwrap();
    assert!(l.completed(0).is_err(), "below the watermark");
    assert!(l.failed(0, t0).is_err());
}

#[test]
fn passed_events_move_the_watermark_but_are_neither_recorded_nor_bounded() {
    // One slow event of this shard, then many events of other shards behind it.
    let mut l = lanes(1);
    let now = Instant::now();
    let slow = queued(l.admit(k("a"), c("1"), ()));
    assert_eq!(starts(&mut l, now), vec![slow]);
    let limit = l.config().completed_limit();
    for i in 2..(2 + 3 * limit as u64) {
        assert!(
            l.room() > 0,
            "passed events never fill the completed-set bound"
        );
        l.admit_passed(Some(i.to_string()));
    }
    assert!(l.room() > 0);
    assert!(l.completed_above_watermark().is_empty(), "not recorded");
    assert_eq!(
        l.watermark(),
        None,
        "the unfinished event holds the watermark"
    );
    assert_eq!(l.unfinished(), 1);
    // Done events of this shard above the slow one are recorded, and only they are.
    let own = queued(l.admit(k("b"), c("900"), ()));
    l.admit_passed(c("901"));
    l.completed(slow).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        l.watermark(),
        Some((1 + 3 * limit as u64).to_string().as_str())
    );
    assert_eq!(starts(&mut l, now), vec![own]);
    l.completed(own).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        l.watermark(),
        Some("901"),
        "passed events after the last one move it too"
    );
    assert_eq!(l.unfinished(), 0);
}

#[test]
fn admitted_done_events_fill_the_bound_where_passed_ones_do_not() {
    let mut l = lanes(1);
    let now = Instant::now();
    let slow = queued(l.admit(k("a"), c("1"), ()));
    assert_eq!(starts(&mut l, now), vec![slow]);
    let limit = l.config().completed_limit();
    for i in 0..limit {
        l.admit_done(Some(format!("d{i}")));
    }
    assert_eq!(l.room(), 0, "recorded events stop admission at the bound");
    assert_eq!(l.completed_above_watermark().len(), limit);
}
