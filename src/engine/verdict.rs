//! The verdict: every applying rule's outcome turned into the limited response, or into the
//! rate limit fields and the queueing delay of an admitted request. A limited response that
//! shows what the worker's previous one showed is that one again, not built anew: a flood is
//! made of identical 429s, and building one is most of a denial's own work.

use std::cell::RefCell;
use std::sync::Arc;

use super::{Applied, Limiter};
use crate::config::Per;
use crate::identity::Identity;
use crate::response::{self, Field, LocalResponse, Reported, Violated};
use crate::strategy::Decision;

/// What happened to one rule for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleOutcome {
    pub rule: usize,
    pub identity: Identity,
    pub cost: u64,
    /// One decision per active limit.
    pub decisions: Vec<Decision>,
    pub allowed: bool,
    /// The store failed and `on_error` decided.
    pub store_error: bool,
    /// This request created the identity's slot in shared data (its count's, or the deny
    /// cache's): set only for a slot actually written, whether or not the request went through.
    pub created_slot: bool,
    /// This request's write took another identity's slot, forgetting its live count (every
    /// slot the identity may take was held).
    pub evicted_slot: bool,
    /// Denied by the deny cache: Redis denied the identity earlier and the denial still holds.
    pub from_cache: bool,
    /// How long, in seconds, a denial its `on_error` made (no limit decided it) asks the client
    /// to wait: while the circuit breaker is open, until it probes Redis again. Whole seconds,
    /// as `Retry-After` is (`open_ms` is at most 600,000): 16 bits keep the outcome its size.
    pub store_wait_s: u16,
}

impl RuleOutcome {
    pub(super) fn new(a: &Applied, decisions: Vec<Decision>, allowed: bool) -> Self {
        RuleOutcome {
            rule: a.rule,
            identity: a.identity.clone(),
            cost: a.cost,
            decisions,
            allowed,
            store_error: false,
            created_slot: false,
            evicted_slot: false,
            from_cache: false,
            store_wait_s: 0,
        }
    }

    /// Denied without a decision of its limits: its store (Redis, or a shared-data write that
    /// kept losing its race) could not decide, and it was denied all the same.
    #[inline]
    pub fn unchecked(&self) -> bool {
        self.store_error && self.decisions.is_empty()
    }

    /// The longest retry-after of its denying limits, or of its `on_error` denial (0 when
    /// none denies).
    #[inline]
    pub fn retry_after_ms(&self) -> u64 {
        let store_wait_ms = u64::from(self.store_wait_s) * 1000;
        self.decisions.iter().filter(|d| !d.allowed).map(|d| d.retry_after_ms).fold(store_wait_ms, u64::max)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the request (after `delay_ms`, for queued requests), adding `headers` to the
    /// response.
    Admit { headers: Vec<Field>, delay_ms: u64, outcomes: Vec<RuleOutcome> },
    /// Answer with `response` (shared with earlier verdicts that showed the same; `Arc` keeps
    /// the limiter `Send` for tools).
    Deny { response: Arc<LocalResponse>, outcomes: Vec<RuleOutcome> },
}

impl Verdict {
    pub fn outcomes(&self) -> &[RuleOutcome] {
        match self {
            Verdict::Admit { outcomes, .. } | Verdict::Deny { outcomes, .. } => outcomes,
        }
    }
}

/// What a limited response shows: when a rule it names as violated is not advertised
/// (`advertise: false`, so its limits are not reported), how long such rules make the client
/// wait, which counts in its `Retry-After`; then each reported limit's numbers (its quota too:
/// a fallback shows its share), in order, then the rules it names as violated. Everything else
/// in it comes from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    Limit { rule: usize, limit: usize, quota: u64, allowed: bool, remaining: u64, reset_s: u64 },
    Violated { rule: usize, unchecked: bool },
    HiddenWait { secs: u64 },
}

/// The worker's last limited response and what it showed (one per config).
#[derive(Debug, Clone, Default)]
pub(crate) struct LastLimited(RefCell<Option<Last>>);

#[derive(Debug, Clone)]
struct Last {
    /// What it showed (its `Retry-After` is the longest of the denied limits' seconds shown
    /// and of [`Shown::HiddenWait`], first when there is one).
    shown: Vec<Shown>,
    response: Arc<LocalResponse>,
}

impl Limiter {
    /// Each limit of each outcome as the response reports it, with its text: a rule kept out of
    /// the rate limit fields has no texts, so none of its limits.
    fn reported<'a>(&'a self, outcomes: &'a [RuleOutcome]) -> impl Iterator<Item = (usize, usize, Reported<'a>)> + 'a {
        outcomes.iter().flat_map(move |o| {
            let c = &self.rules[o.rule];
            let (texts, shared) = c.texts_of(o.store_error);
            c.rates().iter().zip(texts).zip(&o.decisions).enumerate().map(move |(i, ((rate, text), decision))| {
                let rate = if shared { c.shared(rate) } else { *rate };
                (o.rule, i, Reported { text, rate, decision: *decision, enforced: !c.is_shadow() })
            })
        })
    }

    fn violated<'a>(&'a self, outcomes: &'a [RuleOutcome]) -> impl Iterator<Item = &'a RuleOutcome> + 'a {
        outcomes.iter().filter(|o| !o.allowed && !self.rules[o.rule].is_shadow())
    }

    /// The longest wait of the violated rules whose limits are not reported, if any is: it is
    /// the client's all the same (`Retry-After`). A denial its `on_error` made reports no
    /// limit, so its wait is one of these.
    fn hidden_wait_ms(&self, outcomes: &[RuleOutcome]) -> Option<u64> {
        let mut longest = None;
        for o in self.violated(outcomes).filter(|o| !self.rules[o.rule].is_advertised() || o.store_wait_s > 0) {
            longest = longest.max(Some(o.retry_after_ms()));
        }
        longest
    }

    fn shown<'a>(&'a self, outcomes: &'a [RuleOutcome]) -> impl Iterator<Item = Shown> + 'a {
        let limits = self.reported(outcomes).map(|(rule, limit, r)| Shown::Limit {
            rule,
            limit,
            quota: r.rate.limit,
            allowed: r.decision.allowed,
            remaining: response::shown_remaining(&r.decision),
            reset_s: response::reset_secs(&r.decision),
        });
        limits.chain(self.violated(outcomes).map(|o| Shown::Violated { rule: o.rule, unchecked: o.unchecked() }))
    }

    /// The limited response for `outcomes`: the last one again when it showed the same.
    fn limited(&self, outcomes: &[RuleOutcome]) -> Arc<LocalResponse> {
        let hidden = |ms: u64| Shown::HiddenWait { secs: response::ceil_secs(ms) };
        if let Ok(last) = self.last_limited.0.try_borrow() {
            // The wait of violated rules that are not advertised is looked up only when the last
            // response had any: showing the same, this one names the same rules.
            let same = |l: &&Last| match l.shown.split_first() {
                _ if l.shown.iter().copied().eq(self.shown(outcomes)) => true,
                Some((h @ Shown::HiddenWait { .. }, shown)) => {
                    shown.iter().copied().eq(self.shown(outcomes)) && self.hidden_wait_ms(outcomes).map(hidden) == Some(*h)
                }
                _ => false,
            };
            if let Some(last) = last.as_ref().filter(same) {
                return Arc::clone(&last.response);
            }
        }
        let hidden_ms = self.hidden_wait_ms(outcomes);
        let reported: Vec<Reported<'_>> = self.reported(outcomes).map(|(_, _, r)| r).collect();
        let violated: Vec<Violated<'_>> = self
            .violated(outcomes)
            .map(|o| Violated { name: self.rules[o.rule].rule.name.as_str(), unchecked: o.unchecked() })
            .collect();
        let response =
            Arc::new(response::limited(&self.response, self.headers_mode, &reported, &violated, hidden_ms.unwrap_or(0)));
        if let Ok(mut last) = self.last_limited.0.try_borrow_mut() {
            let shown = hidden_ms.map(hidden).into_iter().chain(self.shown(outcomes)).collect();
            *last = Some(Last { shown, response: Arc::clone(&response) });
        }
        response
    }

    pub(super) fn verdict(&self, outcomes: Vec<RuleOutcome>, denied: bool) -> Verdict {
        if self.shadows {
            self.log_shadow_denials(&outcomes);
        }
        // Message rules never apply to a request, so these outcomes are a WebSocket message's:
        // nothing of a response is sent for it, and writing the fields for every message of a
        // busy connection would cost more than deciding it.
        let message = !outcomes.is_empty() && outcomes.iter().all(|o| self.rules[o.rule].rule.per == Per::Message);
        if message {
            return self.message_verdict(outcomes, denied);
        }
        if denied {
            return Verdict::Deny { response: self.limited(&outcomes), outcomes };
        }
        let mut reported = Vec::with_capacity(outcomes.len());
        reported.extend(self.reported(&outcomes).map(|(_, _, r)| r));
        let delay_ms = self.delay_ms(&outcomes);
        let headers = response::rate_limit_headers(self.headers_mode, &reported);
        Verdict::Admit { headers, delay_ms, outcomes }
    }

    /// A shadow rule blocks nothing, so the log is where an operator trying a limit sees whom it
    /// would have limited: every shadow denial of a request's verdict, decided in the proxy or in
    /// Redis alike.
    #[cold]
    #[inline(never)]
    fn log_shadow_denials(&self, outcomes: &[RuleOutcome]) {
        for o in outcomes.iter().filter(|o| !o.allowed && self.rules[o.rule].is_shadow()) {
            log::info!("sluice: shadow rule {:?} would limit {}", self.rules[o.rule].rule.name, o.identity.text);
        }
    }

    /// How long an admission waits: the longest delay an enforced rule queued it for.
    fn delay_ms(&self, outcomes: &[RuleOutcome]) -> u64 {
        outcomes
            .iter()
            .filter(|o| !self.rules[o.rule].is_shadow())
            .flat_map(|o| o.decisions.iter().map(|d| d.delay_ms))
            .max()
            .unwrap_or(0)
    }

    /// A message's verdict: the outcomes and the queueing delay, and no response.
    fn message_verdict(&self, outcomes: Vec<RuleOutcome>, denied: bool) -> Verdict {
        if denied {
            return Verdict::Deny { response: Arc::clone(&self.message_denied), outcomes };
        }
        let delay_ms = self.delay_ms(&outcomes);
        Verdict::Admit { headers: Vec::new(), delay_ms, outcomes }
    }
}
