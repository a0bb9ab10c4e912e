//! Local decisions: each rule's limits decided against its slot table in the proxy's shared
//! data, the enforced rules checked together before any is written, shadow rules counted after.

use super::{Applied, CompiledRule, Limiter, RuleOutcome, Verdict};
use crate::config::OnError;
use crate::rate::Rate;
use crate::store::{Prepared, SharedStore, StoreError};
use crate::strategy::{self, Decision, Outcome, Strategy};

/// The decisions of a rule's outcomes (what is reported; the states were stored).
fn decisions(outcomes: Vec<Outcome>) -> Vec<Decision> {
    outcomes.into_iter().map(|o| o.decision).collect()
}

/// Every limit of a rule decided on its states; written only if all admit (and one changed).
fn decide_all(strategy: &Strategy, rates: &[Rate], states: &[&[u8]], now_us: u64, cost: u64) -> (Vec<Outcome>, bool) {
    let outcomes: Vec<Outcome> = rates
        .iter()
        .enumerate()
        .map(|(i, rate)| strategy::decide(strategy, rate, states.get(i).copied().unwrap_or(&[]), now_us, cost))
        .collect();
    let write = outcomes.iter().all(|o| o.decision.allowed) && outcomes.iter().any(|o| o.state.is_some());
    (outcomes, write)
}

impl Limiter {
    fn compiled(&self, a: &Applied) -> &CompiledRule {
        &self.rules[a.rule]
    }

    /// Decides one rule in shared data. With `write`, the decision is stored (CAS); without,
    /// it is a dry run against the current state.
    pub(super) fn decide_local(&self, a: &Applied, store: &impl SharedStore, now_us: u64, write: bool) -> RuleOutcome {
        let c = self.compiled(a);
        let rates = c.local_rates();
        let decide = |states: &[&[u8]]| decide_all(&c.rule.strategy, &rates, states, now_us, a.cost);
        let result = if write {
            c.table.update(store, a.identity.hash, now_us, decide).map(|u| (decisions(u.outcomes), u.created))
        } else {
            c.table.peek(store, a.identity.hash, now_us, |states| (decisions(decide(states).0), false))
        };
        self.local_outcome(a, result)
    }

    /// Decides one rule on the store's current state without writing, keeping what
    /// [`crate::store::Table::commit`] needs to store it (`None` after a store failure).
    fn prepare_local(&self, a: &Applied, store: &impl SharedStore, now_us: u64) -> (RuleOutcome, Option<Prepared>) {
        let c = self.compiled(a);
        let rates = c.local_rates();
        let decide = |states: &[&[u8]]| decide_all(&c.rule.strategy, &rates, states, now_us, a.cost);
        match c.table.prepare(store, a.identity.hash, now_us, decide) {
            Ok(mut p) => {
                let created = p.created();
                // The outcomes become the decisions in place; committing needs only the write.
                let decisions = decisions(std::mem::take(&mut p.outcomes));
                (self.local_outcome(a, Ok((decisions, created))), Some(p))
            }
            Err(e) => (self.local_outcome(a, Err(e)), None),
        }
    }

    fn local_outcome(&self, a: &Applied, result: Result<(Vec<Decision>, bool), StoreError>) -> RuleOutcome {
        let rule = &self.compiled(a).rule;
        match result {
            Ok((decisions, created)) => {
                let allowed = decisions.iter().all(|d| d.allowed);
                RuleOutcome { created_slot: created, ..RuleOutcome::new(a, decisions, allowed) }
            }
            Err(e) => {
                log::warn!("sluice: rule {:?}: local store failed: {e}", rule.name);
                // A decision that could not be stored is not an admission: it would let a
                // request through uncounted.
                let allowed =
                    !matches!(e, StoreError::Contended(_)) && matches!(rule.on_error, OnError::Allow | OnError::Fallback { .. });
                RuleOutcome { store_error: true, ..RuleOutcome::new(a, Vec::new(), allowed) }
            }
        }
    }

    /// Decides the local rules of `applied`, after the Redis rules' `outcomes` (if any).
    /// Enforced rules are decided before shadow rules, and shadow rules only count requests
    /// that are admitted. Every enforced rule is decided on what the store holds now before any
    /// is written, so a request one rule denies consumes nothing from the others; a slot
    /// another worker wrote in between is decided again on what it holds, which can only deny
    /// the request after an earlier rule counted it, never admit it past a limit.
    pub(super) fn local_phase(
        &self,
        applied: &[Applied],
        mut outcomes: Vec<RuleOutcome>,
        store: &impl SharedStore,
        now_us: u64,
    ) -> Verdict {
        if outcomes.iter().any(|o| !o.allowed && !self.rules[o.rule].is_shadow()) {
            return self.verdict(outcomes, true);
        }
        let (enforced, shadow): (Vec<&Applied>, Vec<&Applied>) =
            applied.iter().filter(|a| !self.compiled(a).is_redis()).partition(|a| !self.compiled(a).is_shadow());
        let prepared: Vec<(RuleOutcome, Option<Prepared>)> =
            enforced.iter().map(|a| self.prepare_local(a, store, now_us)).collect();
        if prepared.iter().any(|(o, _)| !o.allowed) {
            outcomes.extend(prepared.into_iter().map(|(o, _)| o));
            return self.verdict(outcomes, true);
        }
        for (a, (o, p)) in enforced.iter().zip(prepared) {
            let o = match p.map(|p| self.compiled(a).table.commit(store, &p)) {
                // Stored, or a store failure that `on_error` admitted.
                Some(Ok(())) | None => o,
                Some(Err(_)) => self.decide_local(a, store, now_us, true),
            };
            let denied = !o.allowed;
            outcomes.push(o);
            if denied {
                return self.verdict(outcomes, true);
            }
        }
        for a in &shadow {
            let o = self.decide_local(a, store, now_us, true);
            if !o.allowed {
                log::info!("sluice: shadow rule {:?} would limit {}", self.compiled(a).rule.name, a.identity.text);
            }
            outcomes.push(o);
        }
        self.verdict(outcomes, false)
    }
}
