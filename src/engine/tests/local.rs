//! Local decisions in shared data: slots shared by rules, races between workers, a worker's
//! copies of its own writes, and clocks that disagree.

use super::remote::{done, pending, redis_limiter};
use super::*;

#[test]
fn a_config_without_a_rule_leaves_that_rules_count_in_a_shared_slot() {
    // Two configs on one shared data (a connection keeps the config it was opened with; two
    // filter configs may share a namespace): the one without login must not wipe login's count.
    let with = limiter(serde_json::json!({"rules": [{"name": "api", "limit": "100/min"},
        {"name": "login", "limit": "2/min", "match": {"path": "/login"}}]}));
    let without = limiter(serde_json::json!({"rules": [{"name": "api", "limit": "100/min"}]}));
    let mem = MemStore::default();
    for _ in 0..2 {
        assert_eq!(status(&with.check(&Req::new("POST", "/login"), &mem, T0)), 200);
    }
    assert_eq!(status(&without.check(&Req::new("GET", "/"), &mem, T0 + 1)), 200);
    assert_eq!(status(&with.check(&Req::new("POST", "/login"), &mem, T0 + 2)), 429, "login's count survived");
}

#[test]
fn adding_or_removing_a_rule_leaves_the_other_rules_counts() {
    let config = |rules: serde_json::Value| limiter(serde_json::json!({ "rules": rules }));
    let b = serde_json::json!({"name": "b", "limit": "2/min"});
    let alone = config(serde_json::json!([b.clone()]));
    let behind = config(serde_json::json!([{"name": "a", "limit": "100/min"}, b]));
    let mem = MemStore::default();
    for _ in 0..2 {
        assert_eq!(status(&alone.check(&Req::new("GET", "/"), &mem, T0)), 200);
    }
    // a added in front of b: the table stays where it was, and so does b's count.
    assert_eq!(behind.table_prefix(1), alone.table_prefix(0));
    assert_eq!(status(&behind.check(&Req::new("GET", "/"), &mem, T0)), 429);
    // And removed again.
    assert_eq!(status(&alone.check(&Req::new("GET", "/"), &mem, T0)), 429);
}

#[test]
fn a_multi_rule_request_reads_and_writes_each_slot_once() {
    // Three identities: three tables, each read and written once per request.
    let l = limiter(serde_json::json!({"rules": [
        {"name": "a", "limit": "5/min"}, {"name": "b", "limit": "5/min", "identifier": "global"},
        {"name": "c", "limit": "5/min", "identifier": {"header": "x-key"}}
    ]}));
    let mem = MemStore::default();
    let store = Racing::new(&mem);
    for _ in 0..2 {
        assert_eq!(status(&l.check(&Req::new("GET", "/").header("x-key", "k"), &store, T0)), 200);
    }
    // The first request finds every home slot unwritten; the second finds each identity there.
    assert_eq!((store.reads.get(), store.writes.get()), (6, 6));
}

#[test]
fn rules_that_count_the_same_identity_share_one_slot() {
    let l = limiter(serde_json::json!({"rules": [
        {"name": "a", "limit": "5/min"}, {"name": "g", "limit": "3/min", "identifier": "global"},
        {"name": "b", "limit": "2/min", "strategy": "token_bucket"}, {"name": "c", "limit": "100/hour", "strategy": "gcra"}
    ]}));
    let mem = MemStore::default();
    let store = Racing::new(&mem);
    for _ in 0..2 {
        assert_eq!(status(&l.check(&Req::new("GET", "/"), &store, T0)), 200);
    }
    // a, b and c count the client's address in a's table; g counts in its own.
    assert_eq!((store.reads.get(), store.writes.get()), (4, 4));
    assert_eq!(l.table_prefix(2), l.table_prefix(0));
    assert_eq!(l.table_prefix(3), l.table_prefix(0));
    assert_ne!(l.table_prefix(1), l.table_prefix(0));
    assert_eq!(mem.size().0, 2, "one key per identity and table");
    // Each rule still counts on its own: b's two tokens are gone, and denying the request
    // consumes nothing from the others.
    let v = l.check(&Req::new("GET", "/"), &mem, T0);
    assert_eq!(status(&v), 429);
    let v = l.check(&Req::new("GET", "/"), &mem, T0 + 1);
    let remaining: Vec<u64> = v.outcomes().iter().map(|o| o.decisions.first().map_or(99, |d| d.remaining)).collect();
    // a and g counted only the two admitted requests: each would leave limit − 2 − 1.
    assert_eq!(remaining[..2], [2, 0]);
}

/// Wide (5/min, counting `wide_identifier`) and narrow (1/min, by client address); another
/// worker's request takes narrow's only unit after ours read narrow's slot. Ours is decided again
/// on what the other worker wrote and denied; then a third request is denied too, and what it
/// reports each rule would leave is returned.
fn raced_on_narrow(wide_identifier: serde_json::Value) -> Vec<u64> {
    let l = limiter(serde_json::json!({"rules": [
        {"name": "wide", "limit": "5/min", "strategy": "fixed_window", "identifier": wide_identifier},
        {"name": "narrow", "limit": "1/min", "strategy": "fixed_window"}
    ]}));
    let mem = MemStore::default();
    let store = Racing::new(&mem);
    let narrow = l.table_prefix(1).unwrap_or_default().to_string();
    let other = |m: &MemStore| assert_eq!(status(&l.check(&Req::new("GET", "/"), m, T0)), 200);
    *store.before_write.borrow_mut() = Some((narrow, Box::new(other)));
    assert_eq!(status(&l.check(&Req::new("GET", "/"), &store, T0)), 429, "decided again on what the other worker wrote");
    let v = l.check(&Req::new("GET", "/"), &mem, T0);
    assert_eq!(status(&v), 429);
    v.outcomes().iter().map(|o| o.decisions.first().map_or(99, |d| d.remaining)).collect()
}

#[test]
fn a_slot_written_between_the_decision_and_its_write_is_decided_again() {
    // Separate tables (wide counts globally). Narrow admitted exactly its limit; wide counted the
    // other request and, in this race, ours too (denied after wide had stored it: never an
    // admission past a limit): wide would leave 5 − 2 − 1 = 2, narrow nothing.
    assert_eq!(raced_on_narrow(serde_json::json!("global")), vec![2, 0]);
}

#[test]
fn a_shared_slot_written_between_the_decision_and_its_write_is_decided_again_for_all_its_rules() {
    // One table for both (both count the client address): one write for both rules, so the
    // denied request counted in neither; wide counted only the other request: 5 − 1 − 1 = 3.
    assert_eq!(raced_on_narrow(serde_json::json!("client_ip")), vec![3, 0]);
}

#[test]
fn shared_data_per_client_is_small_and_capped() {
    let l = limiter(serde_json::json!({"local": {"max_clients": 1000}, "rules": [{"name": "api", "limit": "100/min"}]}));
    let s = MemStore::default();
    for i in 0..200u32 {
        let ip = format!("10.0.{}.{}:1", i / 256, i % 256);
        l.check(&Req::new("GET", "/").source(&ip), &s, T0);
    }
    let (keys, bytes) = s.size();
    assert_eq!(keys, 200);
    let per_client = bytes / keys;
    assert!(per_client < 96, "{per_client} bytes per client");
    for i in 0..20_000u32 {
        let ip = format!("10.{}.{}.{}:1", i / 65536, (i / 256) % 256, i % 256);
        l.check(&Req::new("GET", "/").source(&ip), &s, T0);
    }
    let (keys, bytes) = s.size();
    assert!(keys <= 1000, "{keys} keys for max_clients 1000");
    eprintln!("shared data: {} bytes per client (key + value), {keys} keys / {bytes} bytes at the cap", bytes / keys);
}

/// A store on which every conditional write loses its race, as if another worker always
/// wrote the key between our read and our write.
struct AlwaysContended<'a>(&'a MemStore);

impl SharedStore for AlwaysContended<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.0.get(key)
    }
    fn set(&self, _key: &str, _value: &[u8], _cas: u32) -> Result<(), StoreError> {
        Err(StoreError::CasMismatch)
    }
}

#[test]
fn a_write_that_never_lands_denies_and_counts_as_a_store_error() {
    let l = limiter(serde_json::json!({"rules": [{"name": "g", "limit": "100/min", "identifier": "global"}]}));
    let mem = MemStore::default();
    let v = l.check(&Req::new("GET", "/"), &AlwaysContended(&mem), T0);
    assert_eq!(status(&v), 429, "an admission that cannot be counted is not made");
    let o = &v.outcomes()[0];
    assert!(o.store_error && !o.allowed);
    assert_eq!(header(&v, "retry-after"), Some("1"));
    // A Redis rule's local fallback follows the same policy.
    let l = redis_limiter(serde_json::json!([{"name": "f", "limit": "100/min", "backend": "redis", "on_error": "fallback"}]));
    let v = done(l.resume(pending(l.start(&Req::new("GET", "/"), &mem, T0)), Err("down".into()), &AlwaysContended(&mem), T0));
    assert_eq!(status(&v), 429);
}

/// `n` requests of one client, 1 ms apart from `at`: their statuses.
fn statuses(l: &Limiter, store: &impl SharedStore, at: u64, n: u64) -> Vec<u16> {
    (0..n).map(|i| status(&l.check(&Req::new("GET", "/"), store, at + i * 1000))).collect()
}

#[test]
fn a_worker_alone_decides_on_its_own_last_write_without_reading_and_counts_exactly() {
    let l = limiter(serde_json::json!({"rules": [{"name": "api", "limit": "50/min", "strategy": "sliding_window_counter"}]}));
    let mem = MemStore::default();
    let store = Racing::new(&mem);
    let s = statuses(&l, &store, T0, 60);
    assert_eq!(s.iter().filter(|s| **s == 200).count(), 50);
    assert!(s[..50].iter().all(|s| *s == 200));
    // Reads: the first request's (the home slot unwritten), the second's (which learns the
    // token of the first write), the first denial's (a copy never denies); the memo answers
    // the rest. Every write landed.
    assert_eq!((store.reads.get(), store.writes.get()), (3, 50));
}

#[test]
fn a_write_by_another_worker_in_between_makes_the_copy_miss_and_the_slot_read() {
    let config = serde_json::json!({"rules": [{"name": "api", "limit": "10/min", "identifier": "global"}]});
    let (w1, w2) = (limiter(config.clone()), limiter(config));
    let mem = MemStore::default();
    let store = Racing::new(&mem);
    assert_eq!(statuses(&w1, &store, T0, 3), [200; 3]);
    assert_eq!((store.reads.get(), store.writes.get()), (2, 3));
    assert_eq!(status(&w2.check(&Req::new("GET", "/"), &mem, T0 + 3000)), 200);
    // W1's write with its copy's token misses (it takes no token), the slot is read and the
    // request decided on what W2 wrote.
    let v = w1.check(&Req::new("GET", "/"), &store, T0 + 4000);
    assert_eq!(v.outcomes().first().and_then(|o| o.decisions.first()).map(|d| d.remaining), Some(5));
    assert_eq!((store.reads.get(), store.writes.get()), (3, 5));
    // After a miss, one decision reads (and learns the token again); the next is a hit.
    assert_eq!(statuses(&w1, &store, T0 + 5000, 2), [200; 2]);
    assert_eq!((store.reads.get(), store.writes.get()), (4, 7));
}

#[test]
fn predictions_follow_envoy_tokens_round_past_0_and_trust_no_old_copy() {
    let l = limiter(serde_json::json!({"rules": [{"name": "api", "limit": "100/min"}]}));
    let mem = MemStore::default();
    mem.set_next_cas(u32::MAX - 3);
    let store = Racing::new(&mem);
    assert_eq!(statuses(&l, &store, T0, 10), [200; 10]);
    assert_eq!((store.reads.get(), store.writes.get()), (2, 10), "no miss across the round");
    // A copy is trusted for a second only: a request later than that reads.
    assert_eq!(statuses(&l, &store, T0 + 10_000 + crate::store::own::TRUSTED_US, 1), [200]);
    assert_eq!((store.reads.get(), store.writes.get()), (3, 11));
}

/// Workers' clocks may disagree by up to `WORKER_SKEW_US`: an entry one worker sees expired
/// may still decide on another, so a write that keeps the slot's other entries keeps it too.
#[test]
fn a_worker_ahead_keeps_a_count_a_worker_behind_still_decides_on() {
    let config = serde_json::json!({"rules": [
        {"name": "api", "match": {"path": "/api"}, "limit": "10/s", "strategy": "fixed_window", "identifier": {"header": "x-user"}},
        {"name": "login", "match": {"path": "/login"}, "limit": "5/min", "identifier": {"header": "x-user"}}]});
    let (ahead, behind) = (limiter(config.clone()), limiter(config));
    let mem = MemStore::default();
    let req = |path: &str| Req::new("GET", path).header("x-user", "u");
    let window = T0 - T0 % 1_000_000 + 1_000_000;
    let skew = crate::clock::WORKER_SKEW_US;
    // Real time 0.8 s into the window; the worker ahead reads 0.9 s and spends the limit.
    for _ in 0..10 {
        assert_eq!(status(&ahead.check(&req("/api"), &mem, window + 800_000 + skew)), 200);
    }
    // Real 0.9 s: to the worker ahead the window is over; it writes the slot for a login.
    assert_eq!(status(&ahead.check(&req("/login"), &mem, window + 900_000 + skew)), 200);
    // Real 0.95 s: the worker behind is still in the window, whose count is spent.
    assert_eq!(status(&behind.check(&req("/api"), &mem, window + 950_000)), 429);
}

#[test]
fn a_denial_shows_a_rule_decided_on_a_stale_copy_as_a_read_gives_it() {
    // `wide` counts the user, `narrow` the key; W1's copy of the user's slot goes stale when W2
    // counts the user, then `narrow` denies W1's request: the denial shows `wide` as read.
    let config = serde_json::json!({"rules": [
        {"name": "wide", "limit": "10/min", "identifier": {"header": "x-user"}},
        {"name": "narrow", "limit": "1/min", "identifier": {"header": "x-key"}}]});
    let (w1, w2) = (limiter(config.clone()), limiter(config.clone()));
    let mem = MemStore::default();
    let req = |key: &str| Req::new("GET", "/").header("x-user", "u").header("x-key", key);
    for (i, key) in ["k1", "k2", "k3"].into_iter().enumerate() {
        assert_eq!(status(&w1.check(&req(key), &mem, T0 + i as u64 * 1000)), 200);
    }
    assert_eq!(status(&w2.check(&req("k9"), &mem, T0 + 3000)), 200);
    let at = T0 + 4000;
    let denied = w1.check(&req("k1"), &mem, at);
    assert_eq!(status(&denied), 429);
    // A denial writes nothing: a worker reading everything now sees what W1 saw.
    assert_eq!(denied, limiter(config).check(&req("k1"), &mem, at));
    // Four requests counted on the user (a stale copy would show r=6).
    assert_eq!(header(&denied, "ratelimit"), Some("\"wide\";r=5;t=72, \"narrow\";r=0;t=120"));
}

/// Two tables: a user's and everyone's.
fn user_and_all() -> serde_json::Value {
    serde_json::json!({"rules": [
        {"name": "user", "limit": "10/min", "identifier": {"header": "x-user"}},
        {"name": "all", "limit": "100/min", "identifier": "global"}]})
}

fn of(user: &str) -> Req {
    Req::new("GET", "/").header("x-user", user)
}

/// `n` requests of `user`, 1 ms apart from `T0`: their statuses.
fn statuses_of(l: &Limiter, store: &impl SharedStore, user: &str, n: u64) -> Vec<u16> {
    (0..n).map(|i| status(&l.check(&of(user), store, T0 + i * 1000))).collect()
}

/// What each rule of `v` reported remaining.
fn remaining(v: &Verdict) -> Vec<u64> {
    v.outcomes().iter().map(|o| o.decisions.first().map_or(u64::MAX, |d| d.remaining)).collect()
}

#[test]
fn a_worker_alone_decides_every_slot_of_a_request_on_its_copies() {
    let l = limiter(serde_json::json!({"rules": [
        {"name": "a", "limit": "50/min", "identifier": {"header": "x-user"}},
        {"name": "b", "limit": "50/min", "identifier": "global", "strategy": "gcra"},
        {"name": "c", "limit": "50/min", "identifier": {"header": "x-key"}, "strategy": "token_bucket"}]}));
    let mem = MemStore::default();
    let store = Racing::new(&mem);
    for i in 0..10 {
        let v = l.check(&of("u").header("x-key", "k"), &store, T0 + i * 1000);
        assert_eq!(remaining(&v), [49 - i; 3]);
    }
    // The first request finds every home slot unwritten, the second reads each to learn its
    // write's token; from the third on, each slot is decided on the worker's copy.
    assert_eq!((store.reads.get(), store.writes.get()), (6, 30));
}

#[test]
fn a_stale_copy_of_a_later_slot_takes_back_the_write_before_it() {
    let (w1, w2) = (limiter(user_and_all()), limiter(user_and_all()));
    let mem = MemStore::default();
    let store = Racing::new(&mem);
    assert_eq!(statuses_of(&w1, &store, "u", 3), [200; 3]);
    // Another worker counts another user: W1's copy of everyone's slot is stale, its copy of
    // u's slot is not.
    assert_eq!(remaining(&w2.check(&of("v"), &mem, T0 + 3000)), [9, 96]);
    let (reads, writes) = (store.reads.get(), store.writes.get());
    let v = w1.check(&of("u"), &store, T0 + 4000);
    assert_eq!(remaining(&v), [6, 95], "counted once in each slot");
    // u's slot written on its copy; everyone's missed; u's read and taken back; both read,
    // decided and written.
    assert_eq!((store.reads.get() - reads, store.writes.get() - writes), (3, 5));
    // After a miss, W1 lets one decision pass on reads; the next is decided on its copies.
    let (reads, writes) = (store.reads.get(), store.writes.get());
    assert_eq!(remaining(&w1.check(&of("u"), &store, T0 + 5000)), [5, 94]);
    assert_eq!((store.reads.get() - reads, store.writes.get() - writes), (2, 2));
    assert_eq!(remaining(&w1.check(&of("u"), &store, T0 + 6000)), [4, 93]);
    assert_eq!((store.reads.get() - reads, store.writes.get() - writes), (2, 4), "no read");
    // A worker reading both slots sees every request counted once.
    assert_eq!(remaining(&limiter(user_and_all()).check(&of("u"), &mem, T0 + 7000)), [3, 92]);
}

#[test]
fn a_write_taken_over_since_stays_counted_and_the_later_slot_is_decided_on_a_read() {
    let (w1, w2) = (limiter(user_and_all()), limiter(user_and_all()));
    let mem = MemStore::default();
    let store = Racing::new(&mem);
    assert_eq!(statuses_of(&w1, &store, "u", 3), [200; 3]);
    // Between W1's write of u's slot and its write of everyone's, W2 counts u in both.
    let everyone = w1.table_prefix(1).map(str::to_string).unwrap_or_default();
    *store.before_write.borrow_mut() =
        Some((everyone, Box::new(move |mem: &MemStore| assert_eq!(remaining(&w2.check(&of("u"), mem, T0 + 3500)), [5, 96]))));
    let (reads, writes) = (store.reads.get(), store.writes.get());
    let v = w1.check(&of("u"), &store, T0 + 4000);
    // W1's count in u's slot stays (W2 counted on it); everyone's is decided on a read.
    assert_eq!(remaining(&v), [6, 95]);
    // u's slot written on its copy, everyone's missed; u's read (W2's write: not taken back);
    // everyone's read and written.
    assert_eq!((store.reads.get() - reads, store.writes.get() - writes), (2, 3));
    assert_eq!(remaining(&limiter(user_and_all()).check(&of("u"), &mem, T0 + 5000)), [4, 94]);
}

#[test]
fn a_take_back_stops_at_a_slot_written_over_and_counts_the_slots_after_it_again() {
    // Three slots: u's, key k's and everyone's. Between W1's write of k's slot and its write
    // of everyone's, W2 counts u (with another key) in u's slot and everyone's.
    let config = serde_json::json!({"rules": [
        {"name": "user", "limit": "10/min", "identifier": {"header": "x-user"}},
        {"name": "key", "limit": "10/min", "identifier": {"header": "x-key"}},
        {"name": "all", "limit": "100/min", "identifier": "global"}]});
    let (w1, w2) = (limiter(config.clone()), limiter(config.clone()));
    let mem = MemStore::default();
    let store = Racing::new(&mem);
    let req = |key: &str| of("u").header("x-key", key);
    for i in 0..3 {
        assert_eq!(status(&w1.check(&req("k"), &store, T0 + i * 1000)), 200);
    }
    let everyone = w1.table_prefix(2).map(str::to_string).unwrap_or_default();
    *store.before_write.borrow_mut() = Some((
        everyone,
        Box::new(move |mem: &MemStore| assert_eq!(remaining(&w2.check(&req("k2"), mem, T0 + 3500)), [5, 9, 96])),
    ));
    let (reads, writes) = (store.reads.get(), store.writes.get());
    assert_eq!(remaining(&w1.check(&req("k"), &store, T0 + 4000)), [6, 6, 95]);
    // Three writes on copies, everyone's missing; k's slot read and taken back, u's read and
    // left (W2 wrote it); k's and everyone's read and written.
    assert_eq!((store.reads.get() - reads, store.writes.get() - writes), (4, 6));
    // Every request counted once in each slot: u 5, k 4, everyone 5.
    assert_eq!(remaining(&limiter(config).check(&req("k"), &mem, T0 + 5000)), [4, 5, 94]);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

    /// Workers (each with its memo and its copies of its writes) whose clocks differ by up to
    /// the skew they may have, interleaved at every shared-data call, two users sharing a
    /// small table, one of whose counts keeps expiring, and every request counting in one slot
    /// for everyone too: neither the other's count nor everyone's loses or gains an admission
    /// (each rule reports each remaining count once). The fuzz target `engine_workers` plays
    /// the same model with more users.
    #[test]
    fn an_identity_counts_in_one_slot_whatever_the_workers_clocks(
        // The users' names hash alike in every run: the long-lived user shares the other's
        // home slot in a table of 2, 3, 4 or 6 slots (and probes beyond it), not in one of 5,
        // 7 or 8, where it lives at its own and its workers' copies decide.
        max_clients in 2..9u32,
        clocks in proptest::array::uniform3(0..=crate::clock::WORKER_SKEW_US),
        // The long-lived user's first request after the other's, and on another worker its
        // second, before the first's `k`th shared-data call: where a placement may race.
        (first, second, k, after_us) in (0..3usize, 0..3usize, 0..4usize, 0..100_000u64),
        steps in proptest::collection::vec(
            (0..2usize, 0..3usize, 0..400_000u64,
             proptest::collection::vec(proptest::option::weighted(0.3, (0..2usize, 0..3usize)), 0..10)),
            1..80),
    ) {
        use crate::engine::skew::{play, Run, Step};
        let race = std::iter::repeat_n(None, k).chain([Some((0, (first + 1 + second % 2) % 3))]).collect();
        let start = [(1, second, 0, Vec::new()), (0, first, after_us, race)];
        let steps = start
            .into_iter()
            .chain(steps)
            .map(|(user, worker, after_us, meddlers)| Step { user, worker, after_us, meddlers })
            .collect();
        let played = play(&Run { max_clients, clocks, steps });
        proptest::prop_assert!(played.is_ok(), "{:?}", played);
    }
}

#[test]
fn a_request_naming_its_client_by_two_values_is_denied() {
    // `?user=zz1&user=alice`: counting zz1 while the application logs alice in would give every
    // decoy a fresh budget against alice. Shadow rules only report, and one value twice is one.
    let l = limiter(serde_json::json!({"rules": [
        {"name": "per-account", "limit": "5/min", "identifier": {"query": "user", "fallback": "skip"}},
        {"name": "watch", "limit": "5/min", "identifier": {"cookie": "session"}, "shadow": true},
    ]}));
    let s = MemStore::default();
    let send = |path: &str, cookie: &str| {
        let req = Req::new("POST", path).header("cookie", cookie);
        match l.start(&req, &s, T0) {
            Step::Done(v) => v,
            Step::Redis(p) => panic!("no Redis rule: {p:?}"),
        }
    };
    let denied = send("/login?user=zz1&user=alice", "session=s1");
    assert_eq!(status(&denied), 429);
    let Verdict::Deny { response, .. } = &denied else { unreachable!() };
    assert!(String::from_utf8_lossy(&response.body).contains("per-account"), "the rule is named");
    assert_eq!(status(&send("/login?user=alice&user=%61lice", "session=s1")), 200, "one value, spelled twice");
    assert_eq!(status(&send("/login?user=alice", "session=a; session=b")), 200, "a shadow rule's conflict blocks nothing");
    // Nothing was counted for the denied request: alice has three of five left.
    for _ in 0..3 {
        assert_eq!(status(&send("/login?user=alice", "")), 200);
    }
    assert_eq!(status(&send("/login?user=alice", "")), 429);
}
