//! Seeded property-style tests: many random schedules against a simple model, and simulated
//! runs with crashes and restarts.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::retry::SplitMix64;
use super::*;

#[derive(Clone, Debug)]
struct Ev {
    key: Option<String>,
    cursor: Option<String>,
    /// Admitted as done (an event the processor never sees).
    instant: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum M {
    Unstarted,
    Running,
    Waiting,
    Failing,
    Done,
}

fn gen_events(rng: &mut SplitMix64, n: usize, keys: u64) -> Vec<Ev> {
    (0..n)
        .map(|i| {
            let k = rng.below(keys + 1);
            Ev {
                key: (k < keys).then(|| format!("k{k}")),
                // About one event in ten has no usable cursor.
                cursor: (rng.below(10) != 0).then(|| format!("{}", 1000 + i)),
                instant: rng.below(12) == 0,
            }
        })
        .collect()
}

/// The model's watermark and completed set: the last cursor of the all-done prefix, then
/// the cursors of the done events after it.
fn model_position(evs: &[Ev], st: &[M], initial: Option<String>) -> (Option<String>, Vec<String>) {
    let mut wm = initial;
    let mut i = 0;
    while i < st.len() && st[i] == M::Done {
        if let Some(c) = &evs[i].cursor {
            wm = Some(c.clone());
        }
        i += 1;
    }
    let above = (i..st.len())
        .filter(|&j| st[j] == M::Done)
        .filter_map(|j| evs[j].cursor.clone())
        .collect();
    (wm, above)
}

fn pick<T: Copy>(rng: &mut SplitMix64, v: &[T]) -> Option<T> {
    (!v.is_empty()).then(|| v[rng.below(v.len() as u64) as usize])
}

#[test]
fn random_schedules_keep_key_order_bounds_and_an_exact_watermark() {
    let mut bound_reached = 0;
    for seed in 0..250u64 {
        let mut rng = SplitMix64::new(seed);
        let n = 1 + rng.below(240) as usize;
        let evs = {
            let keys = 1 + rng.below(8);
            gen_events(&mut rng, n, keys)
        };
        let cfg = LanesConfig {
            max_concurrency: 1 + rng.below(12) as usize,
            max_attempts: 1 + rng.below(3) as u32,
            retry_min: Duration::from_millis(10),
            retry_max: Duration::from_millis(80),
            on_failure: OnFailure::Skip,
            max_window: 1 + rng.below(300) as usize,
        };
        let limit = cfg.completed_limit();
        let mc = cfg.max_concurrency;
        // One slow event holds the watermark back for long, so the bound gets exercised.
        let slow = rng.below(n as u64) as usize;
        let mut l: Lanes<usize> = Lanes::new(cfg, seed).unwrap();
        let mut st: Vec<M> = Vec::new();
        let mut tries = vec![0u32; n];
        let mut now = Instant::now();
        let mut steps = 0;
        while st.len() < n || st.iter().any(|&m| m != M::Done) {
            steps += 1;
            assert!(steps < 100_000, "seed {seed}: no progress");
            match rng.below(7) {
                0 | 1 => {
                    if st.len() < n && l.room() > 0 {
                        let i = st.len();
                        let e = &evs[i];
                        let seq = if e.instant {
                            st.push(M::Done);
                            l.admit_done(e.cursor.clone())
                        } else {
                            st.push(M::Unstarted);
                            match l.admit(e.key.clone(), e.cursor.clone(), i) {
                                Admitted::Queued(s) => s,
                                Admitted::AlreadyDone(s) => panic!("seed {seed}: #{s} done?"),
                            }
                        };
                        assert_eq!(seq, i as u64);
                    }
                }
                2 => {
                    let mut out = Vec::new();
                    l.start_ready(now, &mut out);
                    for s in out {
                        let i = s.seq as usize;
                        assert_eq!(l.item(s.seq), Some(&i));
                        assert!(matches!(st[i], M::Unstarted | M::Waiting), "seed {seed}");
                        tries[i] += 1;
                        assert_eq!(s.attempt, tries[i]);
                        // Per key: every earlier event of the key is done (stream order, no
                        // overlap, retries included).
                        for j in 0..i {
                            if evs[j].key == evs[i].key && !evs[j].instant {
                                assert_eq!(st[j], M::Done, "seed {seed}: #{i} before #{j}");
                            }
                        }
                        st[i] = M::Running;
                    }
                }
                3 => {
                    let running: Vec<usize> = (0..st.len())
                        .filter(|&i| st[i] == M::Running)
                        .filter(|&i| i != slow || rng.below(60) == 0)
                        .collect();
                    if let Some(i) = pick(&mut rng, &running) {
                        l.completed(i as u64).unwrap();
                        st[i] = M::Done;
                    }
                }
                4 => {
                    let running: Vec<usize> =
                        (0..st.len()).filter(|&i| st[i] == M::Running).collect();
                    if let Some(i) = pick(&mut rng, &running) {
                        match l.failed(i as u64, now).unwrap() {
                            Failure::Retry { attempt, due } => {
                                assert_eq!(attempt, tries[i] + 1);
                                assert!(due >= now + Duration::from_millis(10));
                                assert!(due <= now + Duration::from_millis(80));
                                st[i] = M::Waiting;
                            }
                            Failure::Skip => {
                                assert_eq!(tries[i], l.config().max_attempts);
                                st[i] = M::Failing;
                            }
                            Failure::Stop => panic!("seed {seed}: stop with skip configured"),
                        }
                    }
                }
                5 => {
                    let failing: Vec<usize> =
                        (0..st.len()).filter(|&i| st[i] == M::Failing).collect();
                    if let Some(i) = pick(&mut rng, &failing) {
                        l.completed(i as u64).unwrap();
                        st[i] = M::Done;
                    }
                }
                _ => now += Duration::from_millis(rng.below(40)),
            }
            let running = st.iter().filter(|&&m| m == M::Running).count();
            let stats = l.stats();
            assert_eq!(stats.in_flight, running, "seed {seed}");
            assert!(running <= mc, "seed {seed}");
            // The counted gauge equals the model's count of admitted events not done.
            let watermark_index = st.iter().position(|&m| m != M::Done).unwrap_or(st.len());
            let not_done = st.iter().filter(|&&m| m != M::Done).count();
            assert_eq!(stats.unfinished, not_done, "seed {seed}");
            assert_eq!(stats.window, st.len() - watermark_index, "seed {seed}");
            let (wm, above) = model_position(&evs, &st, None);
            assert_eq!(l.watermark(), wm.as_deref(), "seed {seed}");
            assert_eq!(l.completed_above_watermark(), above, "seed {seed}");
            assert!(above.len() <= limit, "seed {seed}");
            assert!(stats.completed_above <= limit, "seed {seed}");
            if stats.completed_above == limit {
                bound_reached += 1;
            }
        }
        let last = evs.iter().rev().find_map(|e| e.cursor.clone());
        assert_eq!(l.watermark(), last.as_deref(), "seed {seed}");
        assert_eq!(l.stats().window, 0);
        assert!(l.is_quiet());
    }
    assert!(
        bound_reached > 0,
        "no schedule reached the completed-set bound"
    );
}

#[test]
fn max_concurrency_one_equals_sequential_processing() {
    for seed in 0..100u64 {
        let mut rng = SplitMix64::new(seed ^ 0xABCD);
        let n = 1 + rng.below(200) as usize;
        let evs = {
            let keys = 1 + rng.below(6);
            gen_events(&mut rng, n, keys)
        };
        let mut l: Lanes<()> = Lanes::new(LanesConfig::default(), seed).unwrap();
        let now = Instant::now();
        // Today's loop: each event handled, in order, then the checkpoint's cursor is the
        // last handled event's (events without cursor leave it where it was).
        let mut expected_cursor: Option<String> = None;
        for (i, e) in evs.iter().enumerate() {
            if e.instant {
                l.admit_done(e.cursor.clone());
            } else {
                assert_eq!(
                    l.admit(e.key.clone(), e.cursor.clone(), ()),
                    Admitted::Queued(i as u64)
                );
                let mut out = Vec::new();
                l.start_ready(now, &mut out);
                assert_eq!(
                    out,
                    vec![Start {
                        seq: i as u64,
                        attempt: 1
                    }],
                    "seed {seed}"
                );
                l.start_ready(now, &mut out);
                assert_eq!(out.len(), 1, "one at a time");
                l.completed(i as u64).unwrap();
            }
            if e.cursor.is_some() {
                expected_cursor = e.cursor.clone();
            }
            assert_eq!(l.watermark(), expected_cursor.as_deref());
            assert!(l.completed_above_watermark().is_empty());
        }
    }
}

/// One simulated processor run: resumes from the stored checkpoint, runs a random schedule,
/// takes checkpoints at random moments, and ends by a crash (everything after the last
/// checkpoint lost), a graceful stop, or completion.
struct Stored {
    applied: Vec<u32>,
    watermark: Option<String>,
    completed: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Crash,
    Stop,
    Complete,
}

fn run_once(
    seed: u64,
    evs: &[Ev],
    cursor_index: &HashMap<String, usize>,
    stored: &mut Stored,
    cfg: &LanesConfig,
    end: End,
    rng: &mut SplitMix64,
) {
    let mut l: Lanes<usize> = Lanes::new(cfg.clone(), seed).unwrap();
    l.load(stored.watermark.clone(), stored.completed.clone())
        .unwrap();
    // Processor state: how often each event's effect was applied (loaded from the checkpoint).
    let mut applied = stored.applied.clone();
    let start = stored
        .watermark
        .as_ref()
        .map(|w| cursor_index[w] + 1)
        .unwrap_or(0);
    let mut next = start;
    let mut seq_to_ev: Vec<usize> = Vec::new();
    let mut running: Vec<u64> = Vec::new();
    let mut failing: Vec<u64> = Vec::new();
    let mut now = Instant::now();
    let budget = if end == End::Complete {
        usize::MAX
    } else {
        rng.below(3000) as usize
    };
    let checkpoint = |l: &Lanes<usize>, applied: &Vec<u32>, stored: &mut Stored| {
        let p = l.position();
        stored.applied = applied.clone();
        stored.watermark = p.watermark;
        stored.completed = p.completed;
    };
    let mut steps = 0usize;
    loop {
        steps += 1;
        if steps > budget {
            break;
        }
        let all_admitted = next >= evs.len();
        if end == End::Complete && all_admitted && l.stats().window == 0 {
            break;
        }
        assert!(steps < 200_000, "seed {seed}: stuck");
        match rng.below(8) {
            0 | 1 => {
                if !all_admitted && l.room() > 0 {
                    let e = &evs[next];
                    let seq = match e.cursor.as_deref() {
                        Some(c) if l.is_loaded_completed(c) => {
                            // The driver skips it: completed before the crash.
                            l.admit_done(e.cursor.clone())
                        }
                        _ => match l.admit(e.key.clone(), e.cursor.clone(), next) {
                            Admitted::Queued(s) => s,
                            Admitted::AlreadyDone(_) => unreachable!(),
                        },
                    };
                    assert_eq!(seq as usize, seq_to_ev.len());
                    seq_to_ev.push(next);
                    next += 1;
                }
            }
            2 => {
                let mut out = Vec::new();
                l.start_ready(now, &mut out);
                running.extend(out.iter().map(|s| s.seq));
            }
            3 | 4 => {
                if let Some(s) = pick(rng, &running) {
                    running.retain(|&r| r != s);
                    if rng.below(6) == 0 {
                        match l.failed(s, now).unwrap() {
                            Failure::Retry { .. } => {}
                            Failure::Skip => failing.push(s),
                            Failure::Stop => unreachable!(),
                        }
                    } else {
                        // The handler's state change after its last await, and the
                        // completion report, in one step.
                        applied[seq_to_ev[s as usize]] += 1;
                        l.completed(s).unwrap();
                    }
                }
            }
            5 => {
                if let Some(s) = pick(rng, &failing) {
                    failing.retain(|&r| r != s);
                    // The on_failure hook records the event as given up on, once.
                    applied[seq_to_ev[s as usize]] += 1;
                    l.completed(s).unwrap();
                }
            }
            6 => now += Duration::from_millis(rng.below(30)),
            _ => {
                if rng.below(4) == 0 {
                    checkpoint(&l, &applied, stored);
                }
            }
        }
    }
    match end {
        End::Crash => {} // whatever happened after the last checkpoint is lost
        End::Stop => {
            let in_flight = l.stop();
            assert_eq!(in_flight.len(), running.len());
            for s in in_flight {
                if rng.below(2) == 0 {
                    applied[seq_to_ev[s as usize]] += 1;
                    l.completed(s).unwrap();
                } else {
                    l.cancelled(s).unwrap();
                }
            }
            for s in failing.drain(..) {
                applied[seq_to_ev[s as usize]] += 1;
                l.completed(s).unwrap();
            }
            assert!(l.is_quiet());
            checkpoint(&l, &applied, stored);
        }
        End::Complete => checkpoint(&l, &applied, stored),
    }
}

#[test]
fn crashes_and_stops_at_random_moments_apply_every_event_exactly_once() {
    for seed in 0..150u64 {
        let mut rng = SplitMix64::new(seed.wrapping_mul(7919) + 1);
        let n = 1 + rng.below(300) as usize;
        let mut evs = {
            let keys = 1 + rng.below(10);
            gen_events(&mut rng, n, keys)
        };
        // A restart re-delivers by cursor: every event here has one, and none is filtered.
        for (i, e) in evs.iter_mut().enumerate() {
            e.cursor = Some(format!("{}", 5000 + i));
            e.instant = false;
        }
        let cursor_index: HashMap<String, usize> = evs
            .iter()
            .enumerate()
            .map(|(i, e)| (e.cursor.clone().unwrap_or_default(), i))
            .collect();
        let cfg = LanesConfig {
            max_concurrency: 1 + rng.below(32) as usize,
            max_attempts: 1 + rng.below(3) as u32,
            retry_min: Duration::from_millis(5),
            retry_max: Duration::from_millis(50),
            on_failure: OnFailure::Skip,
            max_window: 1 + rng.below(400) as usize,
        };
        let mut stored = Stored {
            applied: vec![0; n],
            watermark: None,
            completed: Vec::new(),
        };
        let interruptions = 1 + rng.below(6);
        for _ in 0..interruptions {
            let end = if rng.below(3) == 0 {
                End::Stop
            } else {
                End::Crash
            };
            run_once(seed, &evs, &cursor_index, &mut stored, &cfg, end, &mut rng);
            // Never ahead: the stored state contains every event up to the watermark, and
            // every event recorded as completed above it.
            if let Some(w) = &stored.watermark {
                assert!(stored.applied[..=cursor_index[w]].iter().all(|&a| a == 1));
            }
            for c in &stored.completed {
                assert_eq!(stored.applied[cursor_index[c]], 1, "seed {seed}");
            }
            assert!(stored.completed.len() <= cfg.completed_limit());
        }
        run_once(
            seed,
            &evs,
            &cursor_index,
            &mut stored,
            &cfg,
            End::Complete,
            &mut rng,
        );
        assert!(
            stored.applied.iter().all(|&a| a == 1),
            "seed {seed}: applied {:?}",
            stored.applied
        );
        assert_eq!(stored.watermark, evs.last().and_then(|e| e.cursor.clone()));
        assert!(stored.completed.is_empty());
    }
}
