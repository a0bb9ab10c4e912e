//! One rule as requests use it: the rule as configured, its shared-data slot table and the
//! fingerprint that names its strategy and limits in every key. Built once per config; the
//! rest of the engine reads it by reference, never through a second list.

use std::borrow::Cow;

use crate::config::{Backend, OnError, Rule};
use crate::identity::IdentityHasher;
use crate::rate::Rate;
use crate::response::LimitText;
use crate::store::Table;

#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    pub rule: Rule,
    pub table: Table,
    /// Each limit's text in responses, written once here rather than on every request.
    pub texts: Vec<LimitText>,
}

impl CompiledRule {
    pub fn new(rule: Rule, namespace: &str, slots: u32) -> Self {
        let table = Table { prefix: format!("{namespace}:{}:", rule.name), slots, fingerprint: fingerprint(&rule) };
        let rates = rule.limits.rates();
        let texts = rates.iter().enumerate().map(|(i, r)| LimitText::new(&rule.name, i, rates.len(), r)).collect();
        CompiledRule { rule, table, texts }
    }

    /// The limits in force; none for `0/0`.
    pub fn rates(&self) -> &[Rate] {
        self.rule.limits.rates()
    }

    pub fn is_redis(&self) -> bool {
        self.rule.backend == Backend::Redis
    }

    pub fn is_shadow(&self) -> bool {
        self.rule.shadow
    }

    /// The limits when this proxy decides alone: a Redis rule falling back locally (`on_error:
    /// fallback`) gets its share of each.
    pub fn local_rates(&self) -> Cow<'_, [Rate]> {
        match (self.rule.backend, self.rule.on_error) {
            (Backend::Redis, OnError::Fallback { share }) => self
                .rates()
                .iter()
                .map(|r| Rate { limit: ((r.limit as f64 * share).floor() as u64).max(1), period_ms: r.period_ms })
                .collect(),
            _ => Cow::Borrowed(self.rates()),
        }
    }
}

/// Names a rule's strategy and limits in its keys, so a changed rule starts from fresh state.
/// Not keyed: it carries no request data, and proxies of one deployment must agree on it.
fn fingerprint(rule: &Rule) -> u32 {
    let text = format!("{:?}|{:?}", rule.strategy, rule.limits.rates());
    IdentityHasher::new(None, &crate::config::ClientIpSpec::default()).hash(text.as_bytes()) as u32
}
