//! The deny cache: when Redis denies a request, the proxy answers the same identity's later
//! requests for that rule itself until the denial's retry-after has passed, for requests that
//! cost at least as much, without asking Redis again.
//!
//! Exact: a strategy's retry-after is the earliest time the same request could be admitted with
//! no other traffic (docs/architecture.md, "Contracts: the decision script"), and other traffic
//! only consumes more, so no request of that cost or more is admitted before then; the deadline
//! is counted from when the call was sent, before Redis decided, so it never runs past Redis'
//! own. Admissions always go to Redis.
//!
//! Kept in a slot table per rule in shared data (`<namespace>:<rule>:deny:<slot>`, as many slots
//! as `local.max_clients`): every worker of the proxy learns from one denial, memory is bounded by
//! the table, and a slot frees itself when its denial expires.

use super::{Applied, CompiledRule, RuleOutcome};
use crate::store::{SharedStore, Table};
use crate::strategy::{Decision, Outcome, State};

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

    /// `None` for anything that is not a denial of `limits` limits (a slot of another shape).
    fn decode(bytes: &[u8], limits: &[u64]) -> Option<Denial> {
        let word = |at: usize| bytes.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        if bytes.len() != 24 + limits.len() * PER_LIMIT {
            return None;
        }
        let decisions = limits
            .iter()
            .enumerate()
            .map(|(i, &limit)| {
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
}

impl CompiledRule {
    /// The rule's deny cache table.
    pub(super) fn deny_table(&self) -> Table {
        Table { prefix: format!("{}deny:", self.table.prefix), slots: self.table.slots, fingerprint: self.table.fingerprint }
    }

    fn limit_counts(&self) -> Vec<u64> {
        self.rates().iter().map(|r| r.limit).collect()
    }

    /// A denial Redis gave `a` for this rule, if one still holds for it at `now_us`: its
    /// outcome, with each limit's retry-after and reset counted down to now.
    pub(super) fn cached_denial(&self, a: &Applied, store: &impl SharedStore, now_us: u64) -> Option<RuleOutcome> {
        let limits = self.limit_counts();
        let read = |states: &[&[u8]]| states.first().and_then(|s| Denial::decode(s, &limits));
        let denial = self.deny_table().peek(store, a.identity.hash, now_us, read).ok().flatten()?;
        if now_us >= denial.until_us || a.cost < denial.cost {
            return None;
        }
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
        Some(RuleOutcome { from_cache: true, ..RuleOutcome::new(a, decisions, false) })
    }

    /// Remembers that Redis denied `o` (a call sent at `sent_us`) until its retry-after. Best
    /// effort: a lost race or a full table only means the next request asks Redis.
    pub(super) fn remember_denial(&self, o: &RuleOutcome, store: &impl SharedStore, sent_us: u64, now_us: u64) {
        let retry_ms = o.decisions.iter().filter(|d| !d.allowed).map(|d| d.retry_after_ms).max().unwrap_or(0);
        let until_us = sent_us.saturating_add(retry_ms.saturating_mul(1000));
        if o.allowed || self.is_shadow() || until_us <= now_us {
            return;
        }
        let denial = Denial { at_us: sent_us, until_us, cost: o.cost, decisions: o.decisions.clone() };
        let ttl_us = until_us - now_us;
        let record = |_: &[&[u8]]| {
            let outcome = Outcome { decision: Decision::default(), state: Some(State::from_vec(denial.encode())), ttl_us };
            (vec![outcome], true)
        };
        let _ = self.deny_table().update(store, o.identity.hash, now_us, record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_reads_back_as_written_and_other_shapes_do_not_read() {
        let d = Decision { allowed: false, limit: 5, remaining: 0, reset_ms: 900, retry_after_ms: 700, delay_ms: 0 };
        let a = Decision { allowed: true, limit: 100, remaining: 40, reset_ms: 50_000, ..Decision::default() };
        let denial = Denial { at_us: 10, until_us: 700_010, cost: 2, decisions: vec![d, a] };
        assert_eq!(Denial::decode(&denial.encode(), &[5, 100]), Some(denial.clone()));
        assert_eq!(Denial::decode(&denial.encode(), &[5]), None);
        assert_eq!(Denial::decode(b"short", &[5, 100]), None);
    }
}
