//! Gathered calls: while this worker already has a Redis callout out, the requests that need
//! Redis wait for the rest of the event loop's turn and go together, several requests' commands
//! in one `/pipeline` callout, sent and answered at the root context. A request alone on an idle
//! worker still sends its own call at once (docs/architecture.md, "Host facts: callouts").
//!
//! Every gathered decision ends exactly once: resumed with its replies or the call's failure, or
//! abandoned when its request goes away first. A breaker probe that did neither would hold its
//! place until the breaker gives up on it.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use super::abi;

use crate::clock;
use crate::config::Transport;
use crate::engine::{Heard, Pending};
use crate::redis::command::Command;
use crate::redis::wire::GATHERED_COMMANDS;
use crate::store::{SharedStore, CREATE_TOKEN};

use super::http::{self, Answer, At};
use super::shared::EnvoyShared;
use super::state::Shared;
use super::time::now_us;
use super::transport;

/// How long past its latest deadline a gathered call may still be answered before it counts as
/// lost: the host answers every call by its timeout, so this is only for calls it dropped.
const LOST_AFTER_US: u64 = 1_000_000;

/// Shared-data key of the count of gathering queues made in this VM: each worker's queue needs
/// a name of its own, since the host wakes only the last worker to register a name.
const QUEUE_COUNT_KEY: &str = "sluice:gather-queues";

/// One request's decision in a gathered call.
struct Entry {
    shared: Rc<Shared>,
    ctx: u32,
    /// Its commands in the call, kept after the request goes away so the replies after its own
    /// still find their requests.
    commands: usize,
    /// The decision and its deadline (epoch µs), until answered or abandoned.
    job: Option<(Pending, u64)>,
}

struct Gather {
    /// This worker's queue name's number, unique in the VM.
    number: Option<u64>,
    /// This worker's queue: a byte enqueued on it wakes the root later in this turn.
    queue: Option<u32>,
    /// The root the host wakes (the last to register the queue).
    woken_root: u32,
    /// A wake-up is enqueued and not yet seen.
    woken: bool,
    /// Decisions waiting to be sent.
    waiting: Vec<Entry>,
    /// Gathered callouts out, by token.
    out: Vec<(u32, Vec<Entry>)>,
    /// Callouts out from request contexts (a request alone sends its own).
    alone: u32,
    /// Calls the host cancelled with the root that sent them, for the next tick to fail.
    cancelled: Vec<Vec<Entry>>,
    /// The root the host woke went away: the next root to tick registers the queue.
    orphaned: bool,
}

thread_local! {
    static GATHER: RefCell<Gather> =
        const { RefCell::new(Gather {
        number: None,
        queue: None,
        woken_root: 0,
        woken: false,
        waiting: Vec::new(),
        out: Vec::new(),
        alone: 0,
        cancelled: Vec::new(),
        orphaned: false,
    }) };
}

/// Registers this worker's gathering queue, at every configure: registering a name again moves
/// its wake-ups to the root configured last, so a config update's new root gets them. Without
/// a queue, every request sends its own call. Called from a root's callback: that root is the
/// one woken.
pub(super) fn register() {
    let number = GATHER.with(|g| g.borrow().number).or_else(next_queue_number);
    let Some(n) = number else {
        log::warn!("sluice: cannot number this worker's gathering queue; each request sends its own Redis call");
        return;
    };
    match abi::register_shared_queue(&format!("sluice:gather:{n}")) {
        Ok(id) => GATHER.with(|g| {
            let mut g = g.borrow_mut();
            g.number = Some(n);
            g.queue = Some(id);
            g.woken_root = super::dispatch::active();
        }),
        Err(status) => {
            log::warn!("sluice: cannot register a gathering queue ({status:?}); each request sends its own Redis call")
        }
    }
}

/// Root `id` went away, and with it the `cancelled` calls it had sent, which may carry another
/// config's requests: they follow `on_error` at the next tick (not a second past their
/// deadline), and the breaker hears nothing of it, since Redis did not fail. If the host woke
/// that root, its wake-ups would now be dropped, and requests gathered meanwhile would wait
/// for a tick: until another root registers again (at its next tick, [`take_orphaned`]),
/// requests send their own calls.
pub(super) fn root_gone(id: u32, cancelled: &[u32]) {
    GATHER.with(|g| {
        let mut g = g.borrow_mut();
        if g.woken_root == id && g.queue.is_some() {
            g.queue = None;
            g.woken = false;
            g.orphaned = true;
        }
        let (gone, kept) = std::mem::take(&mut g.out).into_iter().partition(|(token, _)| cancelled.contains(token));
        g.out = kept;
        g.cancelled.extend(gone.into_iter().map(|(_, call)| call));
    });
}

/// Whether the root the host woke went away since this was last asked (once: a root that then
/// fails to register is not retried at every tick).
pub(super) fn take_orphaned() -> bool {
    GATHER.with(|g| std::mem::take(&mut g.borrow_mut().orphaned))
}

/// A number no other worker of this VM got: a counter in shared data, raised by CAS.
fn next_queue_number() -> Option<u64> {
    for _ in 0..64 {
        let (n, cas) = match EnvoyShared.get(QUEUE_COUNT_KEY).ok()? {
            Some((bytes, cas)) => (bytes.as_slice().try_into().ok().map(u64::from_le_bytes)?, cas),
            None => (0, CREATE_TOKEN),
        };
        if EnvoyShared.set(QUEUE_COUNT_KEY, &(n + 1).to_le_bytes(), cas).is_ok() {
            return Some(n);
        }
    }
    None
}

/// Whether a decision sent from `at` goes in a gathered call: always at the root (the root
/// sends what it gathered before its callback ends), and from a request while this worker has
/// calls out or waiting. Only HTTP callouts gather; Higress' Redis callouts carry one command.
pub(super) fn takes(shared: &Shared, at: At) -> bool {
    if shared.limiter.redis().is_none_or(|r| r.transport != Transport::Http) {
        return false;
    }
    GATHER.with(|g| {
        let g = g.borrow();
        // At the root, queue or not: the root answers a request's call only if it gathered it.
        at == At::Root || (g.queue.is_some() && (g.alone > 0 || !g.out.is_empty() || !g.waiting.is_empty()))
    })
}

/// Adds request `ctx`'s decision to the next gathered call. From a request, the first one
/// wakes the root; a lost wake-up is made good by the tick.
pub(super) fn add(shared: &Rc<Shared>, ctx: u32, pending: Pending, deadline_us: u64, at: At) {
    GATHER.with(|g| {
        let mut g = g.borrow_mut();
        let commands = pending.commands.len();
        g.waiting.push(Entry { shared: shared.clone(), ctx, commands, job: Some((pending, deadline_us)) });
        if at == At::Request && !g.woken {
            if let Some(queue) = g.queue {
                g.woken = abi::enqueue_shared_queue(queue, &[1]).is_ok();
            }
        }
    });
}

/// A request sent its own call.
pub(super) fn alone_sent() {
    GATHER.with(|g| g.borrow_mut().alone += 1);
}

/// A call a request sent on its own ended: answered, or its request went away.
pub(super) fn alone_ended() {
    GATHER.with(|g| {
        let mut g = g.borrow_mut();
        g.alone = g.alone.saturating_sub(1);
    });
}

/// Takes back what request `ctx` (going away) has gathered, for the caller to abandon.
pub(super) fn forget(ctx: u32) -> Vec<(Rc<Shared>, Pending)> {
    GATHER.with(|g| {
        let mut g = g.borrow_mut();
        let mut gone = Vec::new();
        let g = &mut *g;
        for e in g.waiting.iter_mut().chain(g.out.iter_mut().flat_map(|(_, es)| es.iter_mut())) {
            if e.ctx == ctx {
                if let Some((p, _)) = e.job.take() {
                    gone.push((e.shared.clone(), p));
                }
            }
        }
        g.waiting.retain(|e| e.job.is_some());
        // A call none of whose requests is left is forgotten: its answer, if one comes, finds
        // no token and is dropped.
        g.out.retain(|(_, es)| es.iter().any(|e| e.job.is_some()));
        gone
    })
}

/// The root's wake-up: the queue is drained and what was gathered is sent.
pub(super) fn on_queue_ready(queue: u32) {
    while let Ok(Some(_)) = abi::dequeue_shared_queue(queue) {}
    GATHER.with(|g| g.borrow_mut().woken = false);
    flush();
}

/// The root's tick: sends what a lost wake-up left behind, and lets the next request wake the
/// root again (one whose wake-up is merely late costs an extra, empty wake-up).
pub(super) fn on_tick() {
    let cancelled = GATHER.with(|g| {
        let mut g = g.borrow_mut();
        g.woken = false;
        std::mem::take(&mut g.cancelled)
    });
    let now = now_us();
    for e in cancelled.into_iter().flatten() {
        finish(e, Answer::FailedTogether, now, &mut Heard::default());
    }
    expire_lost(now);
    flush();
}

/// Calls still unanswered [`LOST_AFTER_US`] past their latest deadline: the host never answers
/// a call whose root went away (a config update drained it). Their requests follow `on_error`
/// instead of waiting for their streams to end.
fn expire_lost(now: u64) {
    let lost: Vec<(u32, Vec<Entry>)> = GATHER.with(|g| {
        let mut g = g.borrow_mut();
        let (lost, kept) = std::mem::take(&mut g.out)
            .into_iter()
            .partition(|(_, es)| es.iter().filter_map(deadline).max().is_none_or(|d| d.saturating_add(LOST_AFTER_US) < now));
        g.out = kept;
        lost
    });
    for (token, call) in lost {
        super::dispatch::forget_callout(token);
        failed(call, "no answer from the Redis endpoint".into(), now);
    }
}

/// Sends what was gathered (at the root): one call per configuration (each names its own
/// cluster, token and breaker), at most [`GATHERED_COMMANDS`] commands each, latest deadlines
/// first. A call is given the time its most hurried request has left, so a request with much
/// less time left than the first of a call (a second pass of a request) starts a call of its
/// own instead of cutting the others' short. A decision with no time left follows `on_error`.
pub(super) fn flush() {
    loop {
        let waiting = GATHER.with(|g| std::mem::take(&mut g.borrow_mut().waiting));
        if waiting.is_empty() {
            return;
        }
        let now = now_us();
        let (late, mut ready): (Vec<Entry>, Vec<Entry>) =
            waiting.into_iter().partition(|e| deadline(e).and_then(|d| clock::call_timeout_ms(now, d)).is_none());
        failed(late, "less than 1 ms left of redis.timeout_ms".into(), now);
        ready.sort_by_key(|e| (Rc::as_ptr(&e.shared) as usize, std::cmp::Reverse(deadline(e))));
        let mut calls: Vec<Vec<Entry>> = Vec::new();
        for e in ready {
            match calls.last_mut() {
                Some(call) if joins(call, &e, now) => call.push(e),
                _ => calls.push(vec![e]),
            }
        }
        for call in calls {
            match dispatch(&call, now) {
                Ok(token) => GATHER.with(|g| g.borrow_mut().out.push((token, call))),
                Err(why) => failed(call, why, now),
            }
        }
        // Retries (a NOSCRIPT answered at once) may have gathered again: send them too.
    }
}

/// A decision's deadline (epoch µs), while it has one.
fn deadline(e: &Entry) -> Option<u64> {
    e.job.as_ref().map(|(_, d)| *d)
}

/// Whether `e` may go in `call` (sorted by configuration, then latest deadline first).
fn joins(call: &[Entry], e: &Entry, now: u64) -> bool {
    let Some(first) = call.first() else { return false };
    let commands: usize = call.iter().map(|c| c.commands).sum();
    let left = |x: &Entry| deadline(x).unwrap_or(0).saturating_sub(now);
    Rc::ptr_eq(&first.shared, &e.shared) && commands + e.commands <= GATHERED_COMMANDS && left(e).saturating_mul(2) >= left(first)
}

fn dispatch(call: &[Entry], now: u64) -> Result<u32, String> {
    let Some(first) = call.first() else { return Err("empty call".into()) };
    let Some(spec) = first.shared.limiter.redis() else { return Err("no redis block".into()) };
    let soonest = call.iter().filter_map(deadline).min().unwrap_or(now);
    let timeout_ms = clock::call_timeout_ms(now, soonest).unwrap_or(1);
    let commands: Vec<&Command> = call.iter().filter_map(|e| e.job.as_ref()).flat_map(|(p, _)| p.commands.iter()).collect();
    super::dispatch::effective_as_active();
    transport::dispatch(spec, &commands, Duration::from_millis(timeout_ms))
}

/// A gathered callout's answer (at the root): each request still there is carried on with its
/// own replies, then whatever that gathered again is sent. False if the call is not one.
pub(super) fn answer(token: u32, num_headers: usize, body_size: usize) -> bool {
    let Some(call) = GATHER.with(|g| {
        let mut g = g.borrow_mut();
        let i = g.out.iter().position(|(t, _)| *t == token)?;
        Some(g.out.swap_remove(i).1)
    }) else {
        return false;
    };
    let expected = call.iter().map(|e| e.commands).sum();
    // Its requests are carried on at one instant: one clock reading, and the breaker hears of
    // the call's success once (see `Limiter::resume_gathered`).
    let now = now_us();
    match transport::replies(num_headers, body_size, expected) {
        Ok(replies) => {
            let mut replies = replies.into_iter();
            // One configuration's requests (see `joins`): one breaker hears of the call.
            carry_on(call, now, |_, e| Answer::Replies(Ok(replies.by_ref().take(e.commands).collect())));
        }
        Err(why) => failed(call, why, now),
    }
    flush();
    true
}

/// A gathered call failed: its requests follow their rules' `on_error`, and each configuration's
/// breaker hears of one failed call, not of one per request it carried (the requests a flush
/// found late may be of several configurations).
fn failed(call: Vec<Entry>, why: String, now: u64) {
    let mut live: Vec<Entry> = call.into_iter().filter(|e| e.job.is_some()).collect();
    while let Some(shared) = live.first().map(|e| e.shared.clone()) {
        let (mine, rest): (Vec<Entry>, Vec<Entry>) = live.into_iter().partition(|e| Rc::ptr_eq(&e.shared, &shared));
        live = rest;
        // Through a request that asks a rule in force (a shadow rule's call tells the breaker
        // nothing), a probe when the call carries one: a half-open breaker counts only its
        // probes.
        let tells = |e: &Entry, probe: bool| {
            e.job.as_ref().is_some_and(|(p, _)| shared.limiter.tells_breaker(p) && (!probe || p.is_probe()))
        };
        let teller = mine.iter().position(|e| tells(e, true)).or_else(|| mine.iter().position(|e| tells(e, false))).unwrap_or(0);
        carry_on(mine, now, |i, _| if i == teller { Answer::Replies(Err(why.clone())) } else { Answer::FailedTogether });
    }
}

/// Carries on the requests of one configuration's call at `now`, each with its answer, then
/// tells that configuration's breaker once what they found.
fn carry_on(call: Vec<Entry>, now: u64, mut answer: impl FnMut(usize, &Entry) -> Answer) {
    let heard = &mut Heard::default();
    let shared = call.first().map(|e| e.shared.clone());
    for (i, e) in call.into_iter().enumerate() {
        let a = answer(i, &e);
        finish(e, a, now, heard);
    }
    if let Some(shared) = shared {
        shared.limiter.tell(heard, &EnvoyShared, now);
    }
}

/// Carries request `e` on at the root at `now`, unless it went away.
fn finish(e: Entry, answer: Answer, now: u64, heard: &mut Heard) {
    if let Some(job) = e.job {
        http::answered_at_root(&e.shared, e.ctx, job, answer, now, heard);
    }
}
