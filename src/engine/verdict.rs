//! The verdict: every applying rule's outcome turned into the limited response, or into the
//! rate limit fields and the queueing delay of an admitted request.

use super::{Applied, Limiter};
use crate::config::Per;
use crate::identity::Identity;
use crate::response::{self, Field, LocalResponse, Reported};
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
    /// This request created the identity's slot in shared data.
    pub created_slot: bool,
    /// Denied by the deny cache: Redis denied the identity earlier and the denial still holds.
    pub from_cache: bool,
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
            from_cache: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the request (after `delay_ms`, for queued requests), adding `headers` to the
    /// response.
    Admit { headers: Vec<Field>, delay_ms: u64, outcomes: Vec<RuleOutcome> },
    /// Answer with `response`.
    Deny { response: LocalResponse, outcomes: Vec<RuleOutcome> },
}

impl Verdict {
    pub fn outcomes(&self) -> &[RuleOutcome] {
        match self {
            Verdict::Admit { outcomes, .. } | Verdict::Deny { outcomes, .. } => outcomes,
        }
    }
}

impl Limiter {
    pub(super) fn verdict(&self, outcomes: Vec<RuleOutcome>, denied: bool) -> Verdict {
        // Message rules never apply to a request, so these outcomes are a WebSocket message's:
        // nothing of a response is sent for it, and writing the fields for every message of a
        // busy connection would cost more than deciding it.
        let message = !outcomes.is_empty() && outcomes.iter().all(|o| self.rules[o.rule].rule.per == Per::Message);
        if message {
            return self.message_verdict(outcomes, denied);
        }
        let mut reported = Vec::new();
        for o in &outcomes {
            let c = &self.rules[o.rule];
            let rates = c.rates();
            for ((rate, text), decision) in rates.iter().zip(&c.texts).zip(&o.decisions) {
                reported.push(Reported { text, rate: *rate, decision: *decision });
            }
        }
        if denied {
            let violated: Vec<&str> = outcomes
                .iter()
                .filter(|o| !o.allowed && !self.rules[o.rule].is_shadow())
                .map(|o| self.rules[o.rule].rule.name.as_str())
                .collect();
            let response = response::limited(&self.response, self.headers_mode, &reported, &violated);
            return Verdict::Deny { response, outcomes };
        }
        let delay_ms = self.delay_ms(&outcomes);
        let headers = response::rate_limit_headers(self.headers_mode, &reported);
        Verdict::Admit { headers, delay_ms, outcomes }
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
            let response = LocalResponse { status: self.response.status, headers: Vec::new(), body: Vec::new() };
            return Verdict::Deny { response, outcomes };
        }
        let delay_ms = self.delay_ms(&outcomes);
        Verdict::Admit { headers: Vec::new(), delay_ms, outcomes }
    }
}
