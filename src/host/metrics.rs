//! The filter's counters in Envoy's stats (`wasmcustom.sluice.rule.<name>.<what>`,
//! `wasmcustom.sluice.local.slots_created` and `.evictions`, `wasmcustom.sluice.websocket.host_errors`), batched per worker and handed
//! over at each tick:
//! a host call per request saved, stats at most one flush period late. A message rule counts
//! `messages_admitted`, `messages_dropped` and `messages_shadow_limited` where a request rule
//! counts `allowed`, `limited` and `shadow_limited`, and `connections_closed` besides.

use std::cell::RefCell;

use super::abi;

use crate::engine::{Limiter, RuleOutcome, Verdict};

thread_local! {
    /// Increments not yet handed to Envoy: (metric id, count).
    static UNFLUSHED: RefCell<Vec<(u32, i64)>> = const { RefCell::new(Vec::new()) };
}

fn add(id: u32) {
    UNFLUSHED.with(|u| {
        let mut u = u.borrow_mut();
        match u.iter_mut().find(|(i, _)| *i == id) {
            Some((_, n)) => *n += 1,
            None => u.push((id, 1)),
        }
    });
}

/// Hands this worker's counts to Envoy (from the tick). Entries handed over go: a config
/// update defines new ids, and the old ones would otherwise stay to be searched on every count.
pub(super) fn flush() {
    UNFLUSHED.with(|u| {
        u.borrow_mut().retain(|&(id, n)| n > 0 && abi::increment_metric(id, n).is_err());
    });
}

/// Counters per rule.
#[derive(Default)]
pub(super) struct Metrics {
    /// (allowed, limited, shadow_limited, store_errors, cached_denials) per rule, with the
    /// rule's shadow flag; `None` when the host has no metrics.
    per_rule: Vec<Option<([u32; 5], bool)>>,
    /// connections_closed per message rule.
    closed: Vec<Option<u32>>,
    /// Shared-data slots created, all rules and their deny caches: the store's key count (each
    /// key is a few dozen bytes; the cap is `local.max_clients` per table).
    slots_created: Option<u32>,
    /// Slots taken from an identity whose count still lived, every slot the newcomer could take
    /// being held: that count is forgotten, a sign of a table too small for its identities.
    evictions: Option<u32>,
    /// WebSocket connections whose body buffer Envoy would not lend or rewrite: reset under an
    /// enforced message rule, passed through under shadow rules only.
    websocket_host_errors: Option<u32>,
}

impl Metrics {
    pub fn define(limiter: &Limiter) -> Self {
        let per_rule = limiter
            .rules()
            .map(|rule| {
                let def = |what: &str| abi::define_counter(&format!("sluice.rule.{}.{what}", rule.name)).ok();
                let [admitted, denied, shadow, errors, cached, ..] = rule.stats() else { return None };
                let ids = [def(admitted)?, def(denied)?, def(shadow)?, def(errors)?, def(cached)?];
                Some((ids, rule.shadow))
            })
            .collect();
        let closed = limiter
            .rules()
            .map(|rule| {
                let name = rule.stats().get(5).map(|what| format!("sluice.rule.{}.{what}", rule.name));
                name.and_then(|name| abi::define_counter(&name).ok())
            })
            .collect();
        let slots_created = abi::define_counter("sluice.local.slots_created").ok();
        let evictions = abi::define_counter("sluice.local.evictions").ok();
        let websocket_host_errors = abi::define_counter("sluice.websocket.host_errors").ok();
        Metrics { per_rule, closed, slots_created, evictions, websocket_host_errors }
    }

    pub fn count(&self, verdict: &Verdict) {
        self.count_outcomes(verdict, matches!(verdict, Verdict::Admit { .. }));
    }

    /// One WebSocket message's verdict, or with payload-byte costs one frame's: a later frame
    /// of a message (`continuation`) is part of one already counted as admitted, and counts
    /// everything else (store errors, shadow limits, slots).
    pub fn count_message(&self, verdict: &Verdict, delivered: bool, continuation: bool) {
        self.count_outcomes(verdict, delivered && !continuation);
    }

    /// Counts as allowed only what is `admitted`: a request or message that was not let through
    /// counts only against the rules that denied it, the others' admission being a dry run that
    /// consumed nothing. A slot counts whenever the outcome says one was written, let through
    /// or not: a denied request may have made some (the deny cache's, or a table's written
    /// before another table's second look denied the request).
    fn count_outcomes(&self, verdict: &Verdict, admitted: bool) {
        for o in verdict.outcomes() {
            let Some(Some((ids, shadow))) = self.per_rule.get(o.rule) else { continue };
            match (o.allowed, shadow) {
                (true, _) if admitted => add(ids[0]),
                (true, _) => {}
                (false, false) => add(ids[1]),
                (false, true) => add(ids[2]),
            }
            // Most outcomes have none of these: one test for all of them.
            if o.store_error | o.from_cache | o.created_slot | o.evicted_slot {
                self.count_rare(o, ids);
            }
        }
    }

    /// What an outcome says besides its decision: a store error, a cached denial, a slot
    /// created or taken from another identity.
    #[cold]
    fn count_rare(&self, o: &RuleOutcome, ids: &[u32; 5]) {
        for (happened, id) in [
            (o.store_error, Some(ids[3])),
            (o.from_cache, Some(ids[4])),
            (o.created_slot, self.slots_created),
            (o.evicted_slot, self.evictions),
        ] {
            if let (true, Some(id)) = (happened, id) {
                add(id);
            }
        }
    }

    /// A connection closed for going over message rule `rule`.
    pub fn count_websocket_host_error(&self) {
        if let Some(id) = self.websocket_host_errors {
            add(id);
        }
    }

    pub fn count_closed(&self, rule: usize) {
        if let Some(Some(id)) = self.closed.get(rule) {
            add(*id);
        }
    }
}
