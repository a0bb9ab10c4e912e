//! Tests of the strategies: the shared case table, a readable table of first decisions, and
//! property tests of the bound each strategy guarantees, of retry-after exactness, of the state
//! lifetime and of arbitrary state bytes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;

use super::Strategy as St;
use super::{cases, codec, decide, Decision, Outcome};
use crate::rate::Rate;

const CASES: &str = include_str!("../../tests/cases/strategies.json");

/// Bytes no strategy decodes (tag 0 is unused).
const CORRUPT: &[u8] = &[0, 0xde, 0xad];

#[test]
fn case_table() {
    let table = cases::parse(CASES).expect("tests/cases/strategies.json parses");
    let mut failures = Vec::new();
    let mut steps_run = 0;
    for case in &table.cases {
        let strategy = case.strategy.strategy().unwrap_or_else(|| panic!("{}: unknown strategy", case.name));
        let rate = case.rate.rate();
        assert!(!case.offsets_ms.is_empty(), "{}: no offsets", case.name);
        for &offset in &case.offsets_ms {
            let mut state: Vec<u8> = Vec::new();
            for (i, step) in case.steps.iter().enumerate() {
                if step.corrupt {
                    state = CORRUPT.to_vec();
                }
                let out = decide(&strategy, &rate, &state, step.now_us(table.base_ms, offset), step.cost);
                steps_run += 1;
                let want = step.expected(rate.limit);
                if out.decision != want {
                    failures.push(format!(
                        "{} (offset {offset}) step {i} (t_ms {}, cost {}):\n   got {:?}\n  want {:?}",
                        case.name, step.t_ms, step.cost, out.decision, want
                    ));
                    break;
                }
                if let Some(s) = out.state {
                    state = s.into_vec();
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
    assert!(steps_run > 200, "only {steps_run} steps ran");
}

#[test]
fn case_table_covers_every_strategy() {
    let table = cases::parse(CASES).expect("parses");
    for name in [
        "fixed_window",
        "sliding_window_counter",
        "sliding_window_log",
        "token_bucket",
        "token_bucket_debt",
        "leaky_bucket",
        "leaky_bucket_queue",
        "gcra",
    ] {
        let n = table.cases.iter().filter(|c| c.strategy.kind == name).count();
        assert!(n >= 5, "{name}: only {n} cases");
    }
}

/// First decision on a fresh key, one row per situation.
#[test]
#[rustfmt::skip]
fn first_decisions() {
    use St::*;
    let now = 1_700_006_400_000_000 + 250_000; // 250 ms into an aligned second
    let r = |limit, period_ms| Rate { limit, period_ms };
    // (strategy, rate, cost) => (allowed, remaining, reset_ms, retry_after_ms, delay_ms); reset_ms
    // is until one more unit is free: a token bucket of 10/s frees one every 100 ms.
    type Row = (St, Rate, u64, (bool, u64, u64, u64, u64));
    let rows: &[Row] = &[
        (FixedWindow,                                  r(10, 1000), 1,  (true,  9,  750,  0,    0)),
        // Above the limit on a fresh window: nothing is counted, so nothing resets.
        (FixedWindow,                                  r(10, 1000), 11, (false, 10, 0,    1000, 0)),
        (SlidingWindowCounter,                         r(10, 1000), 3,  (true,  7,  1084, 0,    0)),
        (SlidingWindowLog { max_entries: 4 },          r(10, 1000), 10, (true,  0,  1000, 0,    0)),
        (TokenBucket { burst: None },                  r(10, 1000), 4,  (true,  6,  100,  0,    0)),
        (TokenBucket { burst: Some(20) },              r(10, 1000), 20, (true,  0,  100,  0,    0)),
        (TokenBucket { burst: Some(0) },               r(10, 1000), 10, (true,  0,  100,  0,    0)),
        (TokenBucketDebt { burst: None, max_debt: 5 }, r(10, 1000), 15, (true,  0,  100,  0,    0)),
        (TokenBucketDebt { burst: None, max_debt: 5 }, r(10, 1000), 16, (false, 15, 0,    1000, 0)),
        (LeakyBucket { burst: Some(2) },               r(10, 1000), 2,  (true,  0,  100,  0,    0)),
        (LeakyBucketQueue { burst: Some(2), max_delay_ms: 100 }, r(10, 1000), 3, (false, 2, 0, 1000, 0)),
        (Gcra { burst: Some(1) },                      r(4, 1000),  1,  (true,  0,  250,  0,    0)),
        (Gcra { burst: None },                         r(4, 1000),  0,  (true,  4,  0,    0,    0)),
        // Invalid rates (rejected by the config compiler) admit and store nothing.
        (Gcra { burst: None },                         r(0, 1000),  1,  (true,  0,  0,    0,    0)),
        (FixedWindow,                                  r(5, 0),     1,  (true,  5,  0,    0,    0)),
    ];
    for (i, (s, rate, cost, (allowed, remaining, reset_ms, retry_after_ms, delay_ms))) in rows.iter().enumerate() {
        let out = decide(s, rate, &[], now, *cost);
        let want = Decision { allowed: *allowed, limit: rate.limit, remaining: *remaining, reset_ms: *reset_ms,
                              retry_after_ms: *retry_after_ms, delay_ms: *delay_ms };
        assert_eq!(out.decision, want, "row {i}: {s:?} {rate:?} cost {cost}");
        assert_eq!(out.state.is_some(), *allowed && *cost > 0 && rate.limit > 0 && rate.period_ms > 0, "row {i}");
    }
}

/// A log longer than its cap (stored under a larger one: a call naming a smaller cap than the
/// rule's, or a rule whose cap went down) folds its oldest entries into the first one kept,
/// which carries their costs at its own time: the same as folding them one at a time.
#[test]
fn a_log_over_its_cap_folds_its_oldest_entries_into_the_first_kept() {
    let rate = Rate { limit: 1_000_000, period_ms: 3_600_000 };
    let t0 = 1_700_000_000_000u64;
    let fields: Vec<u64> = (0..2_000).flat_map(|i| [t0 + i, 1]).collect();
    let state = codec::encode_vec(codec::SLIDING_WINDOW_LOG, &fields);
    let now = t0 + 2_000;
    for (cap, want) in [(1, vec![now, 2_001]), (3, vec![t0 + 1_998, 1_999, t0 + 1_999, 1, now, 1])] {
        let out = decide(&St::SlidingWindowLog { max_entries: cap }, &rate, &state, now * 1000, 1);
        assert!(out.decision.allowed);
        let written = out.state.expect("an admission writes the log");
        assert_eq!(codec::decode_vec(codec::SLIDING_WINDOW_LOG, &written), Some(want), "cap {cap}");
    }
}

#[test]
fn state_sizes() {
    let rate = Rate { limit: 5, period_ms: 1000 };
    let now = 1_700_006_400_000_000;
    let fixed: &[(St, usize)] = &[
        (St::FixedWindow, 17),
        (St::SlidingWindowCounter, 25),
        (St::TokenBucket { burst: None }, 17),
        (St::TokenBucketDebt { burst: None, max_debt: 3 }, 17),
        (St::LeakyBucket { burst: None }, 17),
        (St::LeakyBucketQueue { burst: None, max_delay_ms: 10 }, 17),
        (St::Gcra { burst: None }, 17),
    ];
    for (s, len) in fixed {
        let out = decide(s, &rate, &[], now, 1);
        assert_eq!(out.state.map(|b| b.len()), Some(*len), "{s:?}");
    }
    // The log grows by one entry per distinct ms, up to max_entries.
    let s = St::SlidingWindowLog { max_entries: 3 };
    let mut state = Vec::new();
    for i in 0..5u64 {
        let out = decide(&s, &rate, &state, now + i * 1000, 1);
        state = out.state.expect("admitted").into_vec();
        assert_eq!(state.len(), 1 + 16 * (i as usize + 1).min(3));
    }
}

#[test]
fn state_written_by_another_strategy_is_fresh() {
    let rate = Rate { limit: 2, period_ms: 1000 };
    let now = 1_700_006_400_000_000;
    let all = all_strategies();
    for a in &all {
        let written = decide(a, &rate, &[], now, 2).state.expect("admitted");
        for b in &all {
            if a.name() == b.name() {
                continue;
            }
            assert_eq!(decide(b, &rate, &written, now, 1), decide(b, &rate, &[], now, 1), "{a:?} -> {b:?}");
        }
    }
}

fn all_strategies() -> Vec<St> {
    vec![
        St::FixedWindow,
        St::SlidingWindowCounter,
        St::SlidingWindowLog { max_entries: 8 },
        St::TokenBucket { burst: None },
        St::TokenBucketDebt { burst: None, max_debt: 1 },
        St::LeakyBucket { burst: None },
        St::LeakyBucketQueue { burst: None, max_delay_ms: 500 },
        St::Gcra { burst: None },
    ]
}

/// The most cost one request can ever be admitted with.
fn capacity_of(s: &St, rate: &Rate) -> u64 {
    match s {
        St::FixedWindow | St::SlidingWindowCounter | St::SlidingWindowLog { .. } => rate.limit,
        St::TokenBucket { burst } | St::LeakyBucket { burst } | St::LeakyBucketQueue { burst, .. } | St::Gcra { burst } => {
            super::capacity(rate, *burst)
        }
        St::TokenBucketDebt { burst, max_debt } => super::capacity(rate, *burst) + max_debt,
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests

const BASE_MS: i64 = 1_700_006_400_000;

fn arb_strategy() -> impl Strategy<Value = St> {
    let burst = prop_oneof![Just(None), (1u64..30).prop_map(Some)];
    prop_oneof![
        Just(St::FixedWindow),
        Just(St::SlidingWindowCounter),
        (1u32..8).prop_map(|max_entries| St::SlidingWindowLog { max_entries }),
        burst.clone().prop_map(|burst| St::TokenBucket { burst }),
        (burst.clone(), 0u64..10).prop_map(|(burst, max_debt)| St::TokenBucketDebt { burst, max_debt }),
        burst.clone().prop_map(|burst| St::LeakyBucket { burst }),
        (burst.clone(), prop_oneof![Just(0u64), 1u64..3000])
            .prop_map(|(burst, max_delay_ms)| St::LeakyBucketQueue { burst, max_delay_ms }),
        burst.prop_map(|burst| St::Gcra { burst }),
    ]
}

fn arb_rate() -> impl Strategy<Value = Rate> {
    (
        prop_oneof![1u64..12, 12u64..200, Just(1000u64)],
        prop_oneof![Just(1u64), Just(7), Just(500), Just(1000), Just(3000), 1u64..5000],
    )
        .prop_map(|(limit, period_ms)| Rate { limit, period_ms })
}

/// One request: ms since the previous one (negative = the clock stepped back), sub-ms µs, and
/// the cost as a fraction of the capacity (so every rate gets a useful mix).
fn arb_steps() -> impl Strategy<Value = Vec<(i64, u64, u32)>> {
    let dt = prop_oneof![
        4 => 0i64..3,
        4 => 0i64..400,
        2 => 0i64..4000,
        1 => -3000i64..0,
    ];
    let cost = prop_oneof![6 => 0u32..=100, 1 => 100u32..=130];
    proptest::collection::vec((dt, 0u64..1000, cost), 1..60)
}

/// What one step did, for the checks.
#[derive(Debug, Clone)]
struct Event {
    t_ms: i64,
    /// The effective clock: the latest time of any admission so far (including this one).
    eff_ms: i64,
    cost: u64,
    out: Outcome,
    state_before: Vec<u8>,
    now_us: u64,
}

fn run(s: &St, rate: &Rate, steps: &[(i64, u64, u32)]) -> Vec<Event> {
    let cap = capacity_of(s, rate);
    let mut state = Vec::new();
    let mut t = BASE_MS + 5_000;
    let mut eff = i64::MIN;
    let mut events = Vec::new();
    for &(dt, us, pct) in steps {
        t += dt;
        let cost = (cap * u64::from(pct)).div_ceil(100);
        let now_us = t as u64 * 1000 + us;
        let out = decide(s, rate, &state, now_us, cost);
        if out.decision.allowed && cost > 0 {
            eff = eff.max(t);
        }
        events.push(Event { t_ms: t, eff_ms: eff.max(t), cost, out: out.clone(), state_before: state.clone(), now_us });
        if let Some(new) = out.state {
            state = new.into_vec();
        }
    }
    events
}

fn admitted(events: &[Event]) -> Vec<&Event> {
    events.iter().filter(|e| e.out.decision.allowed && e.cost > 0).collect()
}

/// `Σ cost × period ≤ allowance + (t_j − t_i) × limit` over every run i..=j of `points`
/// (time, cost) sorted by time: the bound of a bucket of `allowance` scaled units.
fn check_fluid_bound(points: &[(i64, u64)], rate: &Rate, allowance: u128) -> Result<(), TestCaseError> {
    let p = u128::from(rate.period_ms);
    let l = u128::from(rate.limit);
    for i in 0..points.len() {
        let mut sum = 0u128;
        for j in i..points.len() {
            sum += u128::from(points[j].1);
            let span = (points[j].0 - points[i].0) as u128;
            prop_assert!(
                sum * p <= allowance + span * l,
                "admitted {sum} between {} and {} (span {span} ms), allowance {allowance}, {rate:?}",
                points[i].0,
                points[j].0
            );
        }
    }
    Ok(())
}

fn check_bound(s: &St, rate: &Rate, events: &[Event]) -> Result<(), TestCaseError> {
    let adm = admitted(events);
    let p = rate.period_ms as i64;
    let l = u128::from(rate.limit);
    let window = |t: i64| t - t.rem_euclid(p);
    match s {
        St::FixedWindow | St::SlidingWindowCounter => {
            let mut per_window = std::collections::BTreeMap::<i64, u128>::new();
            for e in &adm {
                *per_window.entry(window(e.eff_ms)).or_default() += u128::from(e.cost);
            }
            for (w, sum) in &per_window {
                prop_assert!(*sum <= l, "window {w}: admitted {sum} > {l}");
            }
            if matches!(s, St::SlidingWindowCounter) {
                // Recount the weighted estimate from the history at every admission.
                for (k, e) in adm.iter().enumerate() {
                    let w = window(e.eff_ms);
                    let sum_in = |start: i64| -> u128 {
                        adm[..=k].iter().filter(|x| window(x.eff_ms) == start).map(|x| u128::from(x.cost)).sum()
                    };
                    let (prev, cur) = (sum_in(w - p), sum_in(w));
                    let weight = (p - (e.eff_ms - w)) as u128;
                    prop_assert!(
                        prev * weight + cur * p as u128 <= l * p as u128,
                        "estimate over limit at {}: prev {prev} × {weight}/{p} + cur {cur}",
                        e.eff_ms
                    );
                }
            }
        }
        St::SlidingWindowLog { .. } => {
            for (k, e) in adm.iter().enumerate() {
                let sum: u128 = adm[..=k].iter().filter(|x| x.eff_ms > e.eff_ms - p).map(|x| u128::from(x.cost)).sum();
                prop_assert!(sum <= l, "{sum} admitted in ({}, {}]", e.eff_ms - p, e.eff_ms);
            }
        }
        St::LeakyBucketQueue { burst, max_delay_ms } => {
            let cap = u128::from(super::capacity(rate, *burst)) * p as u128;
            let by_decision: Vec<(i64, u64)> = adm.iter().map(|e| (e.eff_ms, e.cost)).collect();
            check_fluid_bound(&by_decision, rate, cap + u128::from(*max_delay_ms) * l)?;
            let mut by_release: Vec<(i64, u64)> =
                adm.iter().map(|e| (e.eff_ms.max(e.t_ms + e.out.decision.delay_ms as i64), e.cost)).collect();
            // Releases happen in admission order.
            for w in by_release.windows(2) {
                prop_assert!(w[0].0 <= w[1].0, "release order broken: {by_release:?}");
            }
            by_release.sort();
            // delay_ms is rounded up to whole ms, so releases may bunch by up to one ms of drain.
            check_fluid_bound(&by_release, rate, cap + l)?;
        }
        _ => {
            let cap = u128::from(capacity_of(s, rate)) * p as u128;
            let points: Vec<(i64, u64)> = adm.iter().map(|e| (e.eff_ms, e.cost)).collect();
            check_fluid_bound(&points, rate, cap)?;
        }
    }
    Ok(())
}

/// The strategies' division takes 64-bit arithmetic when it can: the same quotients and
/// remainders as 128-bit division on both sides of the boundary, and 0 (not a trap) for a
/// divisor of 0.
#[test]
fn division_is_128_bit_division_on_both_sides_of_64_bits() {
    let edge = u128::from(u64::MAX);
    let values = [1, 2, 3, 7, 1000, edge - 1, edge, edge + 1, edge * 3 + 5, u128::MAX - 1, u128::MAX];
    for a in values.iter().copied().chain([0]) {
        for b in values {
            assert_eq!(super::div_rem(a, b), (a / b, a % b), "{a} / {b}");
            assert_eq!(super::ceil_div(a, b), a.div_ceil(b), "{a} / {b}");
        }
        assert_eq!((super::div_rem(a, 0), super::ceil_div(a, 0)), ((0, 0), 0));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    /// 64-bit and 128-bit division agree anywhere.
    #[test]
    fn division_agrees_with_128_bit_division(a in any::<u128>(), small in any::<u64>(), b in 1..u128::MAX) {
        let small = u128::from(small);
        for a in [a, small] {
            for b in [b, small.max(1)] {
                prop_assert_eq!(super::div_rem(a, b), (a / b, a % b));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    /// (1) No strategy admits more than the bound it documents (effective clock).
    #[test]
    fn never_admits_past_the_bound(s in arb_strategy(), rate in arb_rate(), steps in arb_steps()) {
        let events = run(&s, &rate, &steps);
        check_bound(&s, &rate, &events)?;
    }

    /// (2) retry_after_ms is exact: the same request is admitted then, and not one ms earlier.
    /// Plus the invariants every decision keeps.
    #[test]
    fn retry_after_is_exact(s in arb_strategy(), rate in arb_rate(), steps in arb_steps()) {
        let cap = capacity_of(&s, &rate);
        for e in run(&s, &rate, &steps) {
            let d = e.out.decision;
            prop_assert_eq!(d.limit, rate.limit);
            if d.allowed {
                prop_assert_eq!(d.retry_after_ms, 0);
                prop_assert_eq!(e.out.state.is_some(), e.cost > 0);
            } else {
                prop_assert!(e.cost > 0, "a peek was denied");
                prop_assert!(e.out.state.is_none(), "a denial changed the state");
                prop_assert_eq!(d.delay_ms, 0);
                if e.cost > cap {
                    prop_assert_eq!(d.retry_after_ms, rate.period_ms);
                    continue;
                }
                let r = d.retry_after_ms;
                prop_assert!(r > 0);
                let later = decide(&s, &rate, &e.state_before, e.now_us + r * 1000, e.cost);
                prop_assert!(later.decision.allowed, "not admitted at +{} ms: {:?}", r, later.decision);
                let before = decide(&s, &rate, &e.state_before, e.now_us + (r - 1) * 1000, e.cost);
                prop_assert!(!before.decision.allowed, "already admitted at +{} ms", r - 1);
            }
            if e.out.state.is_some() {
                prop_assert!(e.out.ttl_us > 0);
            }
            if !matches!(s, St::LeakyBucketQueue { .. }) {
                prop_assert_eq!(d.delay_ms, 0);
            }
        }
    }

    /// (4) After ttl_us, the stored state decides exactly like no state.
    #[test]
    fn state_expires_after_ttl(s in arb_strategy(), rate in arb_rate(), steps in arb_steps(), cost_pct in 0u64..=100) {
        let cap = capacity_of(&s, &rate);
        let events = run(&s, &rate, &steps);
        if let Some(last) = events.last() {
            let state = last.out.state.clone().map(|s| s.into_vec()).unwrap_or_else(|| last.state_before.clone());
            let at = last.now_us + last.out.ttl_us;
            let cost = cap * cost_pct / 100;
            prop_assert_eq!(decide(&s, &rate, &state, at, cost).decision, decide(&s, &rate, &[], at, cost).decision);
        }
    }

    /// (3) Arbitrary bytes never panic; bytes that do not decode behave as no state.
    #[test]
    fn arbitrary_state_never_panics(
        s in arb_strategy(),
        limit in prop_oneof![Just(0u64), 1u64..1000, Just(u64::MAX)],
        period_ms in prop_oneof![Just(0u64), 1u64..100_000, Just(u64::MAX)],
        bytes in proptest::collection::vec(any::<u8>(), 0..60),
        now_us in prop_oneof![any::<u64>(), Just(u64::MAX), 1_700_000_000_000_000u64..1_800_000_000_000_000],
        cost in prop_oneof![any::<u64>(), 0u64..20, Just(u64::MAX)],
    ) {
        let rate = Rate { limit, period_ms };
        let out = decide(&s, &rate, &bytes, now_us, cost);
        let tag_ok = bytes.first().is_some_and(|&t| usize::from(t) == tag_of(&s));
        if !tag_ok {
            prop_assert_eq!(out, decide(&s, &rate, &[], now_us, cost));
        }
    }

    /// (3b) Well-tagged states with extreme field values never panic either.
    #[test]
    fn extreme_fields_never_panic(
        s in arb_strategy(),
        limit in prop_oneof![1u64..1000, Just(u64::MAX)],
        period_ms in prop_oneof![1u64..100_000, Just(u64::MAX)],
        fields in proptest::collection::vec(prop_oneof![any::<u64>(), Just(0u64), Just(u64::MAX), Just(i64::MIN as u64)], 0..8),
        now_us in prop_oneof![any::<u64>(), Just(0u64), Just(u64::MAX)],
        cost in prop_oneof![any::<u64>(), 0u64..20, Just(u64::MAX)],
        burst in prop_oneof![Just(None), any::<u64>().prop_map(Some)],
        extra in any::<u64>(),
    ) {
        let s = match s {
            St::TokenBucket { .. } => St::TokenBucket { burst },
            St::TokenBucketDebt { .. } => St::TokenBucketDebt { burst, max_debt: extra },
            St::LeakyBucketQueue { .. } => St::LeakyBucketQueue { burst, max_delay_ms: extra },
            St::Gcra { .. } => St::Gcra { burst },
            other => other,
        };
        let rate = Rate { limit, period_ms };
        let mut bytes = vec![tag_of(&s) as u8];
        for f in fields {
            bytes.extend_from_slice(&f.to_le_bytes());
        }
        let out = decide(&s, &rate, &bytes, now_us, cost);
        if out.state.is_some() {
            prop_assert!(out.decision.allowed);
        }
    }
}

fn tag_of(s: &St) -> usize {
    usize::from(match s {
        St::FixedWindow => codec::FIXED_WINDOW,
        St::SlidingWindowCounter => codec::SLIDING_WINDOW_COUNTER,
        St::SlidingWindowLog { .. } => codec::SLIDING_WINDOW_LOG,
        St::TokenBucket { .. } => codec::TOKEN_BUCKET,
        St::TokenBucketDebt { .. } => codec::TOKEN_BUCKET_DEBT,
        St::LeakyBucket { .. } => codec::LEAKY_BUCKET,
        St::LeakyBucketQueue { .. } => codec::LEAKY_BUCKET_QUEUE,
        St::Gcra { .. } => codec::GCRA,
    })
}

/// The compiler lets a bucket decided in the proxy grow its level × period up to
/// `LOCAL_EXACT`: at that bound every bucket still fills to exactly its capacity and then
/// denies (a level that saturated in its state would never read as full again).
#[test]
fn a_bucket_at_the_compilers_largest_level_still_fills_and_denies() {
    use crate::config::{largest_admissible, lua_largest, LOCAL_EXACT};
    const LIMIT: u64 = 1_000_000_000;
    let buckets = [
        St::TokenBucket { burst: None },
        St::TokenBucketDebt { burst: None, max_debt: LIMIT },
        St::LeakyBucket { burst: None },
        St::LeakyBucketQueue { burst: None, max_delay_ms: 0 },
        St::Gcra { burst: None },
    ];
    for s in buckets {
        let cost = LIMIT / 4;
        let unit = lua_largest(&s, &Rate { limit: LIMIT, period_ms: 1 }, cost);
        let period_ms = u64::try_from(LOCAL_EXACT / unit).unwrap();
        let rate = Rate { limit: LIMIT, period_ms };
        assert!(
            lua_largest(&s, &rate, cost) <= LOCAL_EXACT
                && lua_largest(&s, &Rate { period_ms: period_ms + 1, ..rate }, cost) > LOCAL_EXACT
        );
        let now_us = 1_700_000_000_000_000;
        let (mut state, mut admitted) = (Vec::new(), 0);
        for _ in 0..32 {
            let out = decide(&s, &rate, &state, now_us, cost);
            if !out.decision.allowed {
                break;
            }
            admitted += cost;
            state = out.state.expect("an admission writes").into_vec();
        }
        assert_eq!(admitted, largest_admissible(&s, &rate), "{s:?} over {period_ms} ms");
    }
}
