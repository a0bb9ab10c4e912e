//! One rule as requests use it: the rule as configured, the shared-data slot table it counts in
//! and the fingerprint that names its strategy and limits in every key. Built once per config;
//! the rest of the engine reads it by reference, never through a second list.

use std::borrow::Cow;

use crate::config::{Backend, OnError, Rule};
use crate::identity::IdentityHasher;
use crate::rate::Rate;
use crate::response::LimitText;
use crate::store::{Table, MARK_ID};
use crate::strategy::Strategy;

#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    pub rule: Rule,
    /// The table its local decisions are stored in, shared with the enforced local rules that
    /// count the same identity; `table.fingerprint` names its entry in each slot.
    pub table: Table,
    /// The rule whose table this one counts in (its own index when it holds one).
    pub holder: usize,
    /// An earlier rule with the same identifier: a request's identity under it is this rule's
    /// too, resolved once (header reads and the keyed hash are a rule's largest guest work).
    pub same_identity_as: Option<usize>,
    /// Names the strategy and limits in Redis keys.
    pub fingerprint: u32,
    /// Each limit's text in responses, written once here rather than on every request; none
    /// for a rule kept out of the rate limit fields (`advertise: false`), so that responses
    /// report its limits nowhere without a test on every request.
    pub texts: Vec<LimitText>,
    /// The texts of a Redis rule's fallback limits, its share of each (empty without one, or
    /// when not advertised): what a response decided in the proxy reports.
    pub fallback_texts: Vec<LimitText>,
    /// Its deny cache's table (Redis rules; `super::deny`).
    pub deny: Table,
}

impl CompiledRule {
    /// Every rule of a config, in order. Enforced local rules with the same identifier share one
    /// table: a request they all apply to then reads one slot and writes it once, instead of once
    /// per rule (each shared-data call is a host call, and they are most of a local rule's
    /// cost). The table is named after the identifier, not after a rule, so adding, removing or
    /// reordering rules leaves the others' counts where they are. Shadow rules are written after
    /// the verdict and Redis rules only fall back locally, so each keeps a table of its own.
    /// `cluster` is `redis.cluster`, when the config has Redis.
    pub fn all(rules: Vec<Rule>, namespace: &str, slots: u32, cluster: Option<&str>) -> Vec<Self> {
        let mut compiled: Vec<CompiledRule> =
            rules.into_iter().enumerate().map(|(i, r)| CompiledRule::new(r, i, namespace, slots, cluster)).collect();
        // Each shared table: the first rule counting in it, and the entries of its rules.
        let mut tables: Vec<(usize, Vec<u32>)> = Vec::new();
        for i in 0..compiled.len() {
            compiled[i].same_identity_as = (0..i).find(|&j| compiled[j].rule.identifier == compiled[i].rule.identifier);
            if !compiled[i].shares_tables() {
                continue;
            }
            let id = compiled[i].table.fingerprint;
            let same = |h: usize| compiled[h].rule.identifier == compiled[i].rule.identifier;
            let known = tables.iter().any(|(h, _)| same(*h));
            match tables.iter_mut().find(|(h, ids)| same(*h) && !ids.contains(&id)) {
                Some((h, ids)) => {
                    ids.push(id);
                    let h = *h;
                    compiled[i].holder = h;
                    compiled[i].table.prefix = compiled[h].table.prefix.clone();
                }
                // Two rules of one identifier with the same entry id (one in 2^32): the second
                // keeps the table of its own name.
                None if known => tables.push((i, vec![id])),
                None => {
                    compiled[i].table.prefix = identity_table(namespace, &compiled[i].rule);
                    tables.push((i, vec![id]));
                }
            }
        }
        compiled
    }

    fn new(rule: Rule, index: usize, namespace: &str, slots: u32, cluster: Option<&str>) -> Self {
        let table = Table { prefix: format!("{namespace}:{}:", rule.name), slots, fingerprint: entry_id(&rule, cluster) };
        let rates = rule.limits.rates();
        let texts = if rule.advertise { limit_texts(&rule.name, rates) } else { Vec::new() };
        let deny = super::deny::table(&table);
        let mut c = CompiledRule {
            holder: index,
            same_identity_as: None,
            fingerprint: fingerprint(&rule),
            rule,
            table,
            texts,
            fallback_texts: Vec::new(),
            deny,
        };
        if c.fallback_share().is_some() && c.is_advertised() {
            c.fallback_texts = limit_texts(&c.rule.name, &c.local_rates());
        }
        c
    }

    /// The texts of the limits an outcome of this rule was decided on (none when the rule is
    /// not advertised), and whether those are its fallback's share (Redis failed and the proxy
    /// decided alone) rather than its own.
    pub fn texts_of(&self, store_error: bool) -> (&[LimitText], bool) {
        match store_error && !self.fallback_texts.is_empty() {
            true => (&self.fallback_texts, true),
            false => (&self.texts, false),
        }
    }

    /// `rate` as this proxy's share of it, when the rule falls back with one.
    pub fn shared(&self, rate: &Rate) -> Rate {
        match self.fallback_share() {
            Some(share) => Rate { limit: share_of(rate.limit, share), period_ms: rate.period_ms },
            None => *rate,
        }
    }

    /// Whether the rule's table may be shared with other rules of its identity.
    fn shares_tables(&self) -> bool {
        !self.is_redis() && !self.is_shadow()
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

    /// Whether its limits are shown in the rate limit fields.
    pub fn is_advertised(&self) -> bool {
        self.rule.advertise
    }

    /// A Redis rule whose `on_error` decides in the proxy on its share.
    pub fn falls_back(&self) -> bool {
        self.fallback_share().is_some()
    }

    /// The limits when this proxy decides alone: a Redis rule falling back locally (`on_error:
    /// fallback`) gets its share of each.
    pub fn local_rates(&self) -> Cow<'_, [Rate]> {
        match self.fallback_share() {
            Some(_) => self.rates().iter().map(|r| self.shared(r)).collect(),
            None => Cow::Borrowed(self.rates()),
        }
    }

    /// The strategy when this proxy decides alone: a fallback's `burst` and `max_debt` are its
    /// share too, so that proxies whose shares add up to 1 never hold more at once than the
    /// rule does (a burst of 100 kept whole would let 4 proxies at `share: 0.25` admit 400).
    pub fn local_strategy(&self) -> Cow<'_, Strategy> {
        match self.fallback_share() {
            Some(share) => Cow::Owned(self.rule.strategy.scaled(|v| if v == 0 { 0 } else { share_of(v, share) })),
            None => Cow::Borrowed(&self.rule.strategy),
        }
    }

    fn fallback_share(&self) -> Option<f64> {
        match (self.rule.backend, self.rule.on_error) {
            (Backend::Redis, OnError::Fallback { share }) => Some(share),
            _ => None,
        }
    }
}

/// A public hash of `text` (not keyed: it carries no request data, and proxies of one
/// deployment must agree on it).
fn public_hash(text: &str) -> u32 {
    IdentityHasher::new(None, &crate::config::ClientIpSpec::default()).hash(text.as_bytes()) as u32
}

/// The prefix of the table shared by the rules counting `rule`'s identifier:
/// `<namespace>:identity#<hash of the identifier as configured>:`. `#` is not allowed in a rule
/// name, so it never meets a rule's own table.
fn identity_table(namespace: &str, rule: &Rule) -> String {
    let identifier = serde_json::to_string(&rule.identifier).unwrap_or_default();
    format!("{namespace}:identity#{:08x}:", public_hash(&identifier))
}

/// Names a rule's strategy and limits in its Redis keys, so a changed rule starts from fresh
/// state.
fn fingerprint(rule: &Rule) -> u32 {
    public_hash(&format!("{:?}|{:?}", rule.strategy, rule.limits.rates()))
}

/// Names a rule's entry in a slot it may share with other rules: its name, strategy and limits,
/// so two rules never read each other's states and a changed rule starts fresh; a fallback's
/// share too, since it decides on its share of those (two configs with other shares would read
/// each other's state against other capacities). Two rules of one table with the same id (one
/// in 2^32) cannot happen: [`CompiledRule::all`] then gives the second a table of its own.
/// Never a mark's id, which no rule's entry may carry. A Redis rule's entries (its fallback's
/// count, its cached denials) are what one Redis decided: they name its `cluster` too, so two
/// configs in one VM that reach different Redis never answer from each other's (as they never
/// share a breaker).
fn entry_id(rule: &Rule, cluster: Option<&str>) -> u32 {
    let mut named = format!("{}|{:?}|{:?}", rule.name, rule.strategy, rule.limits.rates());
    if rule.backend == Backend::Redis {
        named = format!("{named}|{}", cluster.unwrap_or_default());
    }
    if let (Backend::Redis, OnError::Fallback { share }) = (rule.backend, rule.on_error) {
        // Its bits: formatting a float would link core's float printing into the module.
        named = format!("{named}|{:x}", share.to_bits());
    }
    match public_hash(&named) {
        MARK_ID => !MARK_ID,
        id => id,
    }
}

/// Each limit's text in responses.
fn limit_texts(rule: &str, rates: &[Rate]) -> Vec<LimitText> {
    rates.iter().enumerate().map(|(i, r)| LimitText::new(rule, i, rates.len(), r)).collect()
}

/// `share` of `n`, rounded down, at least 1.
fn share_of(n: u64, share: f64) -> u64 {
    ((n as f64 * share).floor() as u64).max(1)
}
