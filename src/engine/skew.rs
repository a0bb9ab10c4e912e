//! A model of one proxy's workers deciding local rules at once, for the engine's property test
//! and the `engine_workers` fuzz target (tests and feature `fuzzing` only): workers whose
//! clocks disagree by up to [`WORKER_SKEW_US`], each with its memo and its copies of its own
//! writes, interleaved at every shared-data call, several users in a small slot table whose
//! counts keep expiring around a user whose count lives for the whole run; every request also
//! counts in a second table (one slot for everyone), so a request writes two slots, and a
//! worker's copy of the second goes stale while its copy of the first holds. What must hold is
//! that neither the long-lived user's count nor everyone's loses or gains an admission, until
//! the table is so full that a slot is evicted (where exactness is given up by design: "Local
//! counters" in the README).

use std::cell::RefCell;
use std::collections::VecDeque;

use super::{Limiter, Verdict};
use crate::clock::WORKER_SKEW_US;
use crate::identity::RequestInfo;
use crate::store::{evictions, Meddled, MemStore, SharedStore};

/// Workers of the proxy.
pub const WORKERS: usize = 3;

/// Each user's name and the path of its rule: the first counts on a rule of an hour (the one
/// whose count is checked), the others on rules of 100 ms and 1.2 s, so their slots expire and
/// are taken again all through a run.
const USERS: [(&str, &str); 4] = [("long", "/l"), ("short", "/s"), ("mid", "/m"), ("brief", "/s")];

/// How many users a run may name.
pub const USER_COUNT: usize = USERS.len();

/// The long-lived user's rule's limit: never reached in a run, so each admission reports one
/// fewer remaining than the one before.
const LONG_LIMIT: u64 = 100_000;

/// One request of a run.
#[derive(Debug, Clone)]
pub struct Step {
    /// Whose request (an index into the users).
    pub user: usize,
    /// The worker deciding it.
    pub worker: usize,
    /// Time since the previous step.
    pub after_us: u64,
    /// Before each of this request's shared-data calls in turn, another user's whole request
    /// on another worker, or nothing (a worker runs one request at a time, so a request of
    /// its own worker is skipped).
    pub meddlers: Vec<Option<(usize, usize)>>,
}

/// A run: the table's size, each worker's clock ahead of the first step's time, the steps.
#[derive(Debug, Clone)]
pub struct Run {
    pub max_clients: u32,
    pub clocks: [u64; WORKERS],
    pub steps: Vec<Step>,
}

/// A user's request, as the core reads it.
struct Request(usize);

impl RequestInfo for Request {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        let (user, path) = USERS.get(self.0).copied().unwrap_or(USERS[0]);
        match name {
            ":method" => Some(b"GET".to_vec()),
            ":path" => Some(path.as_bytes().to_vec()),
            "x-user" => Some(user.as_bytes().to_vec()),
            _ => None,
        }
    }
    fn cookies(&self) -> Option<Vec<u8>> {
        self.header("cookie")
    }
    fn source_address(&self) -> Option<String> {
        Some("10.0.0.1:1".into())
    }
    fn route_name(&self) -> Option<String> {
        None
    }
}

/// Plays `run`: `Err` names the first step after which the long-lived user's admissions (on its
/// rule) or everyone's (on the rule for all) did not report each of `LONG_LIMIT - 1`,
/// `LONG_LIMIT - 2`, … once. Steps after the first eviction are not checked.
pub fn play(run: &Run) -> Result<(), String> {
    let rule = |name: &str, path: &str, limit: &str| {
        serde_json::json!({"name": name, "match": {"path": path}, "limit": limit, "strategy": "fixed_window",
                           "identifier": {"header": "x-user"}})
    };
    let config = serde_json::json!({"local": {"max_clients": run.max_clients.max(1)}, "rules": [
        rule("long", "/l", &format!("{LONG_LIMIT}/hour")),
        rule("short", "/s", &format!("{LONG_LIMIT}/100ms")),
        rule("mid", "/m", &format!("{LONG_LIMIT}/1200ms")),
        {"name": "all", "limit": format!("{LONG_LIMIT}/hour"), "identifier": "global"},
    ]});
    let compiled = crate::config::compile(&config).map_err(|e| format!("the model's config: {e:?}"))?;
    let workers: Vec<Limiter> = (0..WORKERS).map(|_| Limiter::new(compiled.clone())).collect();
    let clock = |worker: usize| run.clocks.get(worker).copied().unwrap_or(0).min(WORKER_SKEW_US);
    let store = MemStore::default();
    // What admissions reported remaining: the long-lived user's on its rule (0), everyone's on
    // the rule for all (3). A request counts at two slots and may end after another that
    // counted between them, so each rule's reports are checked as a set, not in the order
    // requests ended.
    let reports = RefCell::new([Vec::new(), Vec::new()]);
    let decide = |store: &dyn SharedStore, now: u64, user: usize, worker: usize| {
        let Some(limiter) = workers.get(worker) else { return };
        let verdict = limiter.check(&Request(user), &store, now + clock(worker));
        if let Verdict::Admit { outcomes, .. } = &verdict {
            let mut reports = reports.borrow_mut();
            for o in outcomes.iter().filter(|o| o.rule == 0 || o.rule == 3) {
                if let Some(of) = reports.get_mut(usize::from(o.rule == 3)) {
                    of.extend(o.decisions.iter().map(|d| d.remaining));
                }
            }
        }
    };
    let evicted = evictions();
    let mut now = 1_700_000_040_000_000u64;
    for (i, step) in run.steps.iter().enumerate() {
        now = now.saturating_add(step.after_us);
        let plan = RefCell::new(step.meddlers.iter().copied().collect::<VecDeque<_>>());
        let others = || {
            let next = plan.borrow_mut().pop_front().flatten();
            if let Some((user, other)) = next.filter(|(_, w)| *w != step.worker) {
                decide(&store, now, user, other);
            }
        };
        decide(&Meddled { inner: &store, before: others }, now, step.user, step.worker);
        if evictions() > evicted {
            // This step may have evicted the long-lived user's count: what came before holds.
            return Ok(());
        }
        // Each rule reported each of `LONG_LIMIT - 1`, `LONG_LIMIT - 2`, … once: no admission
        // lost or counted twice, in either table.
        for (rule, reports) in ["long", "all"].iter().zip(reports.borrow().iter()) {
            let mut sorted = reports.clone();
            sorted.sort_unstable_by(|a, b| b.cmp(a));
            let wrong = sorted.iter().enumerate().find(|(n, r)| **r != LONG_LIMIT - 1 - *n as u64);
            if let Some((n, remaining)) = wrong {
                return Err(format!(
                    "step {i} ({step:?}): rule {rule:?}'s report number {} from the highest was {remaining} remaining, not {}",
                    n + 1,
                    LONG_LIMIT - 1 - n as u64
                ));
            }
        }
    }
    // And the store holds those counts, the last request's too: a worker that reads both
    // slots counts the long-lived user's next request after all of them.
    let reader = Limiter::new(compiled);
    let next = reader.check(&Request(0), &store, now + clock(0));
    let reported: Vec<u64> = next.outcomes().iter().flat_map(|o| o.decisions.iter().map(|d| d.remaining)).collect();
    let expected: Vec<u64> = reports.borrow().iter().map(|r| LONG_LIMIT - 1 - r.len() as u64).collect();
    if reported != expected {
        return Err(format!("after the run: a reader's request reported {reported:?} remaining, not {expected:?}"));
    }
    Ok(())
}
