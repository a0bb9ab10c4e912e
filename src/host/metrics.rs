//! The filter's counters in Envoy's stats (`wasmcustom.sluice.rule.<name>.<what>` and
//! `wasmcustom.sluice.local.slots_created`), batched per worker and handed over at each tick:
//! a host call per request saved, stats at most one flush period late. A message rule counts
//! `messages_admitted`, `messages_dropped` and `messages_shadow_limited` where a request rule
//! counts `allowed`, `limited` and `shadow_limited`, and `connections_closed` besides.

use std::cell::RefCell;

use super::abi;

use crate::engine::{Limiter, Verdict};

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
    /// Shared-data slots created, all rules: the store's key count (each key is a few dozen
    /// bytes; the cap is rules × `local.max_clients`).
    slots_created: Option<u32>,
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
        Metrics { per_rule, closed, slots_created }
    }

    pub fn count(&self, verdict: &Verdict) {
        self.count_outcomes(verdict, matches!(verdict, Verdict::Admit { .. }));
    }

    /// One WebSocket message's verdict.
    pub fn count_message(&self, verdict: &Verdict, delivered: bool) {
        self.count_outcomes(verdict, delivered);
    }

    /// A request or message that was not let through counts only against the rules that
    /// denied it: the others' admission was a dry run that consumed nothing and created no slot.
    fn count_outcomes(&self, verdict: &Verdict, through: bool) {
        for o in verdict.outcomes() {
            let Some(Some((ids, shadow))) = self.per_rule.get(o.rule) else { continue };
            match (o.allowed, shadow) {
                (true, _) if through => add(ids[0]),
                (true, _) => {}
                (false, false) => add(ids[1]),
                (false, true) => add(ids[2]),
            }
            if o.store_error {
                add(ids[3]);
            }
            if o.from_cache {
                add(ids[4]);
            }
            if let (true, true, Some(id)) = (through, o.created_slot, self.slots_created) {
                add(id);
            }
        }
    }

    /// A connection closed for going over message rule `rule`.
    pub fn count_closed(&self, rule: usize) {
        if let Some(Some(id)) = self.closed.get(rule) {
            add(*id);
        }
    }
}
