//! The worker's memo of local denials: when an identity's slot denies a request, the worker
//! keeps the slot as it read it and answers the identity's next requests for those rules from
//! that copy until the denial's retry-after, without reading shared data again (a host call and
//! a copy into the guest: most of what a 429 costs).
//!
//! Exact, and every field as a read would give it: a rule's entry in the slot is written only by
//! a request the rule admits, and a denial at cost 1 means no request of any cost can be
//! admitted before its retry-after (the strategies' contract, `crate::strategy`), whichever
//! worker or config sends it (the entry is named by the rule's name, strategy and limits, not its
//! cost). So until then the entry in shared data is byte for byte the copy, and each later
//! request, whatever its own cost, is decided on it by the same code as a read at its own time.
//! The retry-after is shortened by how far workers' clocks may disagree. A copy that would admit
//! is dropped and shared data read, so the memo never admits anything. Denials at a higher cost
//! are not remembered: a cheaper request could be admitted meanwhile and change the entry.
//!
//! A limiter decides against one store (the worker's shared data), so a copy is always of the
//! slot the next read would find.
//!
//! Bounded: a fixed number of places per worker, each holding at most one slot of at most
//! [`MAX_SLOT_BYTES`]; a new denial takes its identity's place. Per worker, not shared: the
//! other workers learn the same denial from shared data when they meet it.

use std::cell::RefCell;

use super::{Applied, CompiledRule, RuleOutcome};
use crate::clock::WORKER_SKEW_US;
use crate::store::Held;

/// Places in the memo (and in the deny cache's copies, `super::deny`): identities denied at once
/// that each worker answers without a read.
pub(super) const PLACES: usize = 128;
/// A slot larger than this (long sliding logs) is not remembered: the memo stays under
/// `PLACES` × this many bytes however the requests look.
const MAX_SLOT_BYTES: usize = 1024;

#[derive(Debug, Clone)]
struct Remembered {
    /// The table (its holder rule) and the identity.
    holder: usize,
    identity: u64,
    /// The rules the slot denied, in rule order: only their entries are known not to change.
    rules: Vec<usize>,
    /// When it was read, and until when every one of `rules` denies whatever other workers do.
    at_us: u64,
    until_us: u64,
    /// The slot as read (`None`: the identity had none).
    slot: Option<Vec<u8>>,
}

/// A worker's memo of local denials (one per config, shared by the worker's requests).
#[derive(Debug, Clone, Default)]
pub(crate) struct Memo {
    places: RefCell<Vec<Option<Remembered>>>,
}

/// The place of `identity` under the rule `index` (a table's holder, or a Redis rule) in the
/// memo and the deny cache's copies ([`crate::store::place`]).
pub(super) fn place(index: usize, identity: u64) -> usize {
    crate::store::place(index, identity, PLACES)
}

/// Until when a rule's denial holds on every worker's clock: its denying limits' longest
/// retry-after, less the millisecond it is rounded up by and the workers' clock skew.
fn denied_until(o: &RuleOutcome, now_us: u64) -> u64 {
    let retry_ms = o.retry_after_ms();
    now_us.saturating_add(retry_ms.saturating_sub(1).saturating_mul(1000)).saturating_sub(WORKER_SKEW_US)
}

impl Memo {
    /// Remembers `slot` (as read at `now_us`) for `group`, whose `outcomes` were just decided on
    /// it, if some of them deny and all of those denied a request of cost 1.
    pub(super) fn remember(
        &self,
        rules: &[CompiledRule],
        group: &[&Applied],
        outcomes: &[RuleOutcome],
        slot: Option<Vec<u8>>,
        now_us: u64,
    ) {
        let Some(first) = group.first() else { return };
        let denied: Vec<&RuleOutcome> = outcomes.iter().filter(|o| !o.allowed && !o.store_error).collect();
        let cheapest = denied.iter().all(|o| o.cost == 1);
        let until_us = denied.iter().map(|o| denied_until(o, now_us)).min().unwrap_or(0);
        if denied.is_empty() || !cheapest || until_us <= now_us || slot.as_ref().is_some_and(|s| s.len() > MAX_SLOT_BYTES) {
            return;
        }
        let Some(holder) = rules.get(first.rule).map(|c| c.holder) else { return };
        let Ok(mut places) = self.places.try_borrow_mut() else { return };
        if places.is_empty() {
            places.resize(PLACES, None);
        }
        let identity = first.identity.hash;
        if let Some(p) = places.get_mut(place(holder, identity)) {
            let rules = denied.iter().map(|o| o.rule).collect();
            *p = Some(Remembered { holder, identity, rules, at_us: now_us, until_us, slot });
        }
    }

    /// Whether `group` (rules of one table, one identity) is remembered for every one of its
    /// rules and `decide`, deciding them on the remembered slot at `now_us`, finds every one
    /// still denied (it keeps what it decided); `false` means: read shared data.
    pub(super) fn recall(
        &self,
        rules: &[CompiledRule],
        group: &[&Applied],
        now_us: u64,
        decide: impl FnOnce(&Held<'_>) -> bool,
    ) -> bool {
        let Some(first) = group.first() else { return false };
        let Some(holder) = rules.get(first.rule).map(|c| c.holder) else { return false };
        let identity = first.identity.hash;
        let at = place(holder, identity);
        let denied = {
            let Ok(places) = self.places.try_borrow() else { return false };
            let Some(r) = places.get(at).and_then(Option::as_ref) else { return false };
            let known = r.holder == holder && r.identity == identity && group.iter().all(|a| r.rules.contains(&a.rule));
            if !known || now_us < r.at_us {
                return false;
            }
            now_us < r.until_us && decide(&Held::of(r.slot.as_deref(), now_us))
        };
        if !denied {
            // Past its time: the place is free for the next denial.
            if let Ok(mut places) = self.places.try_borrow_mut() {
                if let Some(p) = places.get_mut(at) {
                    *p = None;
                }
            }
        }
        denied
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::super::{Limiter, Verdict};
    use crate::identity::tests::Req;
    use crate::store::{MemStore, SharedStore, StoreError};

    const T0: u64 = 1_700_000_040_000_000;

    fn limiter(config: serde_json::Value) -> Limiter {
        Limiter::new(crate::config::compile(&config).unwrap())
    }

    /// A store that counts its reads.
    #[derive(Default)]
    struct Counted {
        inner: MemStore,
        reads: std::cell::Cell<u32>,
    }

    impl SharedStore for Counted {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            self.reads.set(self.reads.get() + 1);
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn a_denial_is_answered_without_a_read_until_its_retry_after_as_a_read_would_answer_it() {
        let config = json!({"rules": [{"name": "api", "limit": "2/s", "strategy": "token_bucket", "identifier": "global"}]});
        let l = limiter(config.clone());
        let s = Counted::default();
        let req = Req::new("GET", "/");
        assert!(matches!(l.check(&req, &s, T0), Verdict::Admit { .. }));
        assert!(matches!(l.check(&req, &s, T0), Verdict::Admit { .. }));
        assert!(matches!(l.check(&req, &s, T0), Verdict::Deny { .. }), "the bucket is empty");
        let reads = s.reads.get();
        // One token comes back after 500 ms: until then, less the workers' clock skew (100 ms),
        // the worker answers from its memo, with the fields a worker without one reads from
        // shared data (retry-after counting down).
        for ms in [1, 120, 250, 398] {
            let now = T0 + ms * 1000;
            let remembered = l.check(&req, &s, now);
            assert_eq!(s.reads.get(), reads, "no read {ms} ms after the denial");
            assert_eq!(remembered, limiter(config.clone()).check(&req, &s.inner, now), "{ms} ms after");
        }
        // The token is back: the memo lets go, and the admission (decided on the worker's copy
        // of its own last write, `crate::store::own`) is stored.
        assert!(matches!(l.check(&req, &s, T0 + 500_000), Verdict::Admit { .. }), "the token is back");
        assert!(matches!(l.check(&req, &s, T0 + 500_001), Verdict::Deny { .. }), "and taken");
    }

    #[test]
    fn only_a_denial_at_cost_1_is_remembered_and_it_answers_every_cost() {
        let config = json!({"rules": [{"name": "api", "limit": "2/s", "identifier": "global",
            "cost": {"header": "x-cost", "default": 1, "max": 2}}]});
        let l = limiter(config.clone());
        let s = Counted::default();
        let heavy = Req::new("GET", "/").header("x-cost", "2");
        let light = Req::new("GET", "/");
        assert!(matches!(l.check(&heavy, &s, T0), Verdict::Admit { .. }));
        assert!(matches!(l.check(&heavy, &s, T0), Verdict::Deny { .. }));
        let reads = s.reads.get();
        assert!(matches!(l.check(&heavy, &s, T0 + 1000), Verdict::Deny { .. }));
        assert!(s.reads.get() > reads, "read again: a cheaper request could have been admitted meanwhile");
        assert!(matches!(l.check(&light, &s, T0 + 2000), Verdict::Deny { .. }));
        let reads = s.reads.get();
        for req in [&heavy, &light] {
            let remembered = l.check(req, &s, T0 + 3000);
            assert_eq!(remembered, limiter(config.clone()).check(req, &s.inner, T0 + 3000));
        }
        assert_eq!(s.reads.get(), reads, "denied at cost 1: nothing is admitted before its retry-after");
    }

    #[test]
    fn another_config_counting_in_the_same_entry_at_a_lower_cost_is_seen() {
        // Two configs share a namespace and a rule (name, strategy, limits), at costs 2 and 1:
        // a denial at cost 2 must not hide the cost-1 admissions of the other.
        let rule = |cost: u64| {
            json!({"rules": [{"name": "api", "limit": "2/min", "strategy": "token_bucket",
            "identifier": "global", "cost": cost}]})
        };
        let (two, one) = (limiter(rule(2)), limiter(rule(1)));
        let s = MemStore::default();
        let req = Req::new("GET", "/");
        assert!(matches!(two.check(&req, &s, T0), Verdict::Admit { .. }));
        assert!(matches!(two.check(&req, &s, T0 + 1_000_000), Verdict::Deny { .. }));
        assert!(matches!(one.check(&req, &s, T0 + 30_000_000), Verdict::Admit { .. }));
        let at = T0 + 40_000_000;
        assert_eq!(two.check(&req, &s, at), limiter(rule(2)).check(&req, &s, at));
    }

    #[test]
    fn a_worker_whose_clock_is_ahead_is_seen() {
        // After the host's clock steps back, workers agree within one tick: here W2 runs 50 ms
        // ahead of W1 and admits on its own clock at the retry-after, before W1's.
        let config = json!({"rules": [{"name": "api", "limit": "1/min", "strategy": "token_bucket", "identifier": "global"}]});
        let (w1, w2) = (limiter(config.clone()), limiter(config.clone()));
        let s = MemStore::default();
        let req = Req::new("GET", "/");
        assert!(matches!(w1.check(&req, &s, T0), Verdict::Admit { .. }));
        assert!(matches!(w1.check(&req, &s, T0 + 10_000_000), Verdict::Deny { .. }));
        assert!(matches!(w2.check(&req, &s, T0 + 60_000_000), Verdict::Admit { .. }));
        let at = T0 + 59_960_000;
        assert_eq!(w1.check(&req, &s, at), limiter(config).check(&req, &s, at));
    }

    #[test]
    fn the_memo_holds_at_most_its_places_of_bounded_slots() {
        let l = limiter(json!({"rules": [{"name": "api", "limit": "1/min", "identifier": {"header": "x-user"}}]}));
        let s = MemStore::default();
        for i in 0..(super::PLACES * 4) {
            let req = Req::new("GET", "/").header("x-user", &format!("u{i}"));
            l.check(&req, &s, T0);
            l.check(&req, &s, T0);
        }
        let places = l.memo.places.borrow();
        assert_eq!(places.len(), super::PLACES);
        assert!(places.iter().flatten().all(|r| r.slot.as_ref().is_some_and(|s| s.len() <= super::MAX_SLOT_BYTES)));
        assert!(places.iter().flatten().count() > super::PLACES / 2, "denials are remembered");
    }

    #[test]
    fn a_denial_on_a_slot_larger_than_a_place_holds_is_not_remembered() {
        // A sliding log of 100 entries: 1,601 bytes of state, past MAX_SLOT_BYTES.
        let log = |limit: &str| {
            limiter(json!({"rules": [{"name": "api", "limit": limit, "strategy": "sliding_window_log", "identifier": "global"}]}))
        };
        let (big, small) = (log("100/min"), log("10/min"));
        let req = Req::new("GET", "/");
        for (l, limit) in [(&big, 100), (&small, 10)] {
            let s = MemStore::default();
            // One entry per millisecond: entries of one millisecond merge.
            for i in 0..limit {
                assert!(matches!(l.check(&req, &s, T0 + i * 1000), Verdict::Admit { .. }));
            }
            assert!(matches!(l.check(&req, &s, T0 + 200_000), Verdict::Deny { .. }));
        }
        assert_eq!(big.memo.places.borrow().iter().flatten().count(), 0, "a 1.6 KiB slot is not kept");
        assert_eq!(small.memo.places.borrow().iter().flatten().count(), 1, "a small one is");
    }

    /// One request of a random run: which worker, which user, which path, how long after the
    /// previous one.
    #[derive(Debug, Clone)]
    struct Step {
        worker: usize,
        user: u8,
        path: &'static str,
        heavy: bool,
        after_ms: u64,
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let step = (0..2usize, 0..3u8, prop::sample::select(vec!["/a/x", "/b", "/a/b"]), any::<bool>(), 0..400u64)
            .prop_map(|(worker, user, path, heavy, after_ms)| Step { worker, user, path, heavy, after_ms });
        prop::collection::vec(step, 1..120)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Two workers with memos (and their last limited response) on one store answer every
        /// request exactly as workers that read shared data every time and build every
        /// response (a fresh limiter per request, on a store of its own):
        /// every status, header, body and outcome, for every strategy, with rules sharing a
        /// slot, requests counted in two slots, rules of fixed costs and one whose cost a
        /// header chooses.
        #[test]
        fn workers_with_memos_answer_exactly_as_workers_without(
            strategy in prop::sample::select(crate::strategy::NAMES.to_vec()),
            steps in steps(),
        ) {
            let config = json!({"rules": [
                {"name": "a", "match": {"path": "/a/**"}, "limit": "3/s", "strategy": strategy,
                 "identifier": {"header": "x-user"}},
                {"name": "b", "match": {"path": "/a/b"}, "limit": "5/2s", "strategy": strategy, "cost": 2,
                 "identifier": {"header": "x-user"}},
                {"name": "c", "match": {"path": "/b"}, "limit": "4/s", "strategy": strategy, "identifier": "global",
                 "cost": {"header": "x-cost", "default": 1, "max": 3}},
                {"name": "d", "match": {"path": "/a/**"}, "limit": "7/2s", "strategy": strategy, "identifier": "global"},
            ]});
            let workers = [limiter(config.clone()), limiter(config.clone())];
            let (shared, reference) = (MemStore::default(), MemStore::default());
            let mut now = T0;
            for (i, s) in steps.iter().enumerate() {
                now += s.after_ms * 1000;
                let mut req = Req::new("GET", s.path).header("x-user", &format!("u{}", s.user));
                if s.heavy {
                    req = req.header("x-cost", "3");
                }
                let remembered = workers[s.worker].check(&req, &shared, now);
                let read = limiter(config.clone()).check(&req, &reference, now);
                prop_assert_eq!(remembered, read, "request {}: {:?}", i, s);
            }
        }
    }
}
