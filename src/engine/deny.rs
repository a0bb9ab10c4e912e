//! The deny cache: when Redis denies a request, the proxy answers the same identity's later
//! requests for that rule itself until the denial's retry-after has passed, for requests that
//! cost at least as much, without asking Redis again.
//!
//! Exact: a strategy's retry-after is the earliest time the same request could be admitted with
//! no other traffic (docs/architecture.md, "Contracts: the decision script"), and other traffic
//! only consumes more, so no request of that cost or more is admitted before then; the deadline
//! is counted from when the call was sent, before Redis decided, and ends a millisecond early (a
//! retry-after is rounded up), so it never runs past Redis' own. A denial read from shared data
//! ends `WORKER_SKEW_US` earlier still: it may have been written on another worker, whose clock
//! may be that far ahead. Admissions always go to Redis.
//!
//! Kept in a slot table per rule in shared data (`<namespace>:<rule>:deny:<slot>`, as many slots
//! as `local.max_clients`): every worker of the proxy learns from one denial, memory is bounded by
//! the table, and a slot frees itself when its denial expires.
//!
//! Each worker also keeps a copy of the denials it wrote or read ([`Copies`], a fixed number of
//! places), and answers from the copy while it holds, so a flood's 429s make no shared-data read
//! (a host call and a copy into the guest: what a cached denial cost beyond a local 429). A copy
//! is as exact as the entry it came from: a denial is a fact about Redis until its time, whatever
//! is written after it. Only the Retry-After may differ from a read's: a later denial written
//! meanwhile by another worker (two asked Redis at once) may name a later time, and the copy
//! gives its own, which is still true.

use std::cell::RefCell;

use super::memo::{place, PLACES};
use super::{Applied, CompiledRule, RuleOutcome};
use crate::clock::WORKER_SKEW_US;
use crate::rate::Rate;
use crate::store::{SharedStore, Table};
use crate::strategy::{Decision, Outcome, State};

/// A worker's copies of the denials it wrote or read (one per config), in as many places as the
/// local memo, placed the same way. A new denial takes the place of whatever was there.
#[derive(Debug, Clone, Default)]
pub(super) struct Copies {
    /// (rule, identity hash, denial).
    places: RefCell<Vec<Option<(usize, u64, Denial)>>>,
}

impl Copies {
    fn keep(&self, rule: usize, identity: u64, denial: Denial) {
        let Ok(mut places) = self.places.try_borrow_mut() else { return };
        if places.is_empty() {
            places.resize(PLACES, None);
        }
        if let Some(p) = places.get_mut(place(rule, identity)) {
            *p = Some((rule, identity, denial));
        }
    }

    /// `answer` of the copy for `rule` and `identity`, if one holds at `now_us` for a request
    /// of `cost`.
    fn answer<R>(&self, rule: usize, identity: u64, cost: u64, now_us: u64, answer: impl FnOnce(&Denial) -> R) -> Option<R> {
        let places = self.places.try_borrow().ok()?;
        let (r, i, denial) = places.get(place(rule, identity))?.as_ref()?;
        (*r == rule && *i == identity && denial.holds(cost, now_us)).then(|| answer(denial))
    }
}

/// What Redis said when it denied: when, until when, at which cost, and each limit's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Denial {
    at_us: u64,
    until_us: u64,
    cost: u64,
    decisions: Vec<Decision>,
}

/// Bytes per limit in a stored denial: allowed, remaining, reset_ms, retry_after_ms.
const PER_LIMIT: usize = 1 + 3 * 8;

impl Denial {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.decisions.len() * PER_LIMIT);
        for v in [self.at_us, self.until_us, self.cost] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for d in &self.decisions {
            out.push(u8::from(d.allowed));
            for v in [d.remaining, d.reset_ms, d.retry_after_ms] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// `None` for anything that is not a denial of `rates`' limits (a slot of another shape).
    fn decode(bytes: &[u8], rates: &[Rate]) -> Option<Denial> {
        let word = |at: usize| bytes.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        if bytes.len() != 24 + rates.len() * PER_LIMIT {
            return None;
        }
        let decisions = rates
            .iter()
            .enumerate()
            .map(|(i, &Rate { limit, .. })| {
                let at = 24 + i * PER_LIMIT;
                Some(Decision {
                    allowed: *bytes.get(at)? == 1,
                    limit,
                    remaining: word(at + 1)?,
                    reset_ms: word(at + 9)?,
                    retry_after_ms: word(at + 17)?,
                    delay_ms: 0,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Denial { at_us: word(0)?, until_us: word(8)?, cost: word(16)?, decisions })
    }

    /// Whether it still denies a request of `cost` at `now_us`.
    fn holds(&self, cost: u64, now_us: u64) -> bool {
        now_us < self.until_us && cost >= self.cost
    }
}

/// A rule's deny cache table, beside its own (`<its prefix>deny:`).
pub(super) fn table(of: &Table) -> Table {
    Table { prefix: format!("{}deny:", of.prefix), slots: of.slots, fingerprint: of.fingerprint }
}

impl CompiledRule {
    /// A denial Redis gave `a` for this rule, if one still holds for it at `now_us` (the
    /// worker's copy, else shared data): its outcome, with each limit's retry-after and reset
    /// counted down to now.
    pub(super) fn cached_denial(
        &self,
        a: &Applied,
        store: &impl SharedStore,
        copies: &Copies,
        now_us: u64,
    ) -> Option<RuleOutcome> {
        let identity = a.identity.hash;
        let outcome = |denial: &Denial| {
            let elapsed_ms = now_us.saturating_sub(denial.at_us) / 1000;
            let decisions = denial
                .decisions
                .iter()
                .map(|d| Decision {
                    // Never below 1 ms while the denial holds: the client must still wait.
                    retry_after_ms: if d.allowed { 0 } else { d.retry_after_ms.saturating_sub(elapsed_ms).max(1) },
                    reset_ms: d.reset_ms.saturating_sub(elapsed_ms),
                    ..*d
                })
                .collect();
            RuleOutcome { from_cache: true, ..RuleOutcome::new(a, decisions, false) }
        };
        if let Some(o) = copies.answer(a.rule, identity, a.cost, now_us, outcome) {
            return Some(o);
        }
        let read = |states: &[&[u8]]| states.first().and_then(|s| Denial::decode(s, self.rates()));
        let mut denial = self.deny.peek(store, identity, now_us, read).ok().flatten()?;
        // Maybe written on another worker, whose clock may be ahead of this one's by this much.
        denial.until_us = denial.until_us.saturating_sub(WORKER_SKEW_US);
        if !denial.holds(a.cost, now_us) {
            return None;
        }
        let o = outcome(&denial);
        copies.keep(a.rule, identity, denial);
        Some(o)
    }

    /// Remembers that Redis denied `o` (a call sent at `sent_us`) until its retry-after, and
    /// tells `o` whether that created or took over a slot (the table's keys are counted with the
    /// rules'). Best effort: a lost race or a full table only means the next request asks Redis.
    pub(super) fn remember_denial(
        &self,
        o: &mut RuleOutcome,
        store: &impl SharedStore,
        copies: &Copies,
        sent_us: u64,
        now_us: u64,
    ) {
        let retry_ms = o.retry_after_ms();
        // Less the millisecond a retry-after is rounded up by.
        let until_us = sent_us.saturating_add(retry_ms.saturating_sub(1).saturating_mul(1000));
        if o.allowed || self.is_shadow() || until_us <= now_us {
            return;
        }
        // A delay is not stored, so a copy holds what a read gives.
        let decisions = o.decisions.iter().map(|d| Decision { delay_ms: 0, ..*d }).collect();
        let denial = Denial { at_us: sent_us, until_us, cost: o.cost, decisions };
        let ttl_us = until_us - now_us;
        let record = |_: &[&[u8]]| {
            let outcome = Outcome { decision: Decision::default(), state: Some(State::from_vec(denial.encode())), ttl_us };
            (vec![outcome], true)
        };
        if let Ok(u) = self.deny.update(store, o.identity.hash, now_us, record) {
            (o.created_slot, o.evicted_slot) = (u.created, u.evicted);
        }
        copies.keep(o.rule, o.identity.hash, denial);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_reads_back_as_written_and_other_shapes_do_not_read() {
        let d = Decision { allowed: false, limit: 5, remaining: 0, reset_ms: 900, retry_after_ms: 700, delay_ms: 0 };
        let a = Decision { allowed: true, limit: 100, remaining: 40, reset_ms: 50_000, ..Decision::default() };
        let denial = Denial { at_us: 10, until_us: 700_010, cost: 2, decisions: vec![d, a] };
        let rates = [Rate { limit: 5, period_ms: 1000 }, Rate { limit: 100, period_ms: 60_000 }];
        assert_eq!(Denial::decode(&denial.encode(), &rates), Some(denial.clone()));
        assert_eq!(Denial::decode(&denial.encode(), &rates[..1]), None);
        assert_eq!(Denial::decode(b"short", &rates), None);
    }

    fn denial(cost: u64, until_us: u64) -> Denial {
        Denial { at_us: 0, until_us, cost, decisions: Vec::new() }
    }

    #[test]
    fn a_copy_answers_only_its_rule_and_identity_and_a_new_denial_takes_its_place() {
        let copies = Copies::default();
        let held = |rule, identity| copies.answer(rule, identity, 5, 10, |d| d.cost);
        copies.keep(0, 7, denial(3, 100));
        assert_eq!(held(0, 7), Some(3));
        // Another identity or rule in the same place is not answered from it.
        let same_place = (8..).find(|&i| place(0, i) == place(0, 7)).unwrap();
        let other_rule = (1..).find(|&r| place(r, 7) == place(0, 7)).unwrap();
        assert_eq!((held(0, same_place), held(other_rule, 7)), (None, None));
        // Taking the place, it ends the first one's copy (that request reads shared data).
        copies.keep(0, same_place, denial(1, 100));
        assert_eq!((held(0, 7), held(0, same_place)), (None, Some(1)));
        // Past its time, or for a cheaper request, a copy answers nothing.
        assert_eq!(copies.answer(0, same_place, 5, 100, |d| d.cost), None);
        assert_eq!(copies.answer(0, same_place, 0, 10, |d| d.cost), None);
    }

    #[test]
    fn copies_stay_within_their_places_however_many_identities_are_denied() {
        let copies = Copies::default();
        for identity in 0..10_000u64 {
            copies.keep((identity % 3) as usize, identity.wrapping_mul(0x2545_f491_4f6c_dd1d), denial(1, 100));
        }
        let places = copies.places.borrow();
        assert_eq!(places.len(), PLACES);
        assert!(places.iter().flatten().count() <= PLACES);
    }
}
