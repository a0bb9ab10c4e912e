//! Remote decisions: the Redis rules of a request, asked of Redis through the circuit breaker,
//! with a dry pass first when several rules live in different cluster slots, and the script
//! sent whole after a NOSCRIPT. The commands and replies themselves are [`crate::redis`]'s.

use super::{Applied, Limiter, Resumed, RuleOutcome, Step, Verdict};
use crate::breaker::{Breaker, Permit};
use crate::config::{Cost, OnError};
use crate::identity::RequestInfo;
use crate::redis::command::Command;
use crate::redis::script::{self, Form, RuleCall};
use crate::redis::wire::Reply;
use crate::store::SharedStore;

/// What a request `on_error: deny` turned away is told to wait while the breaker is closed (one
/// call failed; nothing says when Redis will answer again): `Retry-After`'s floor.
const STORE_ERROR_WAIT_S: u16 = 1;

/// A request waiting for Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    applied: Vec<Applied>,
    /// Indexes into `applied` of the Redis rules: those asked, in command order, then the
    /// last `fell` of them, whose reply in the dry pass was an error (left out of the pass that
    /// writes, they follow their `on_error`). One list and a count, not two lists: every
    /// request's step carries a `Pending`'s size.
    redis: Vec<usize>,
    /// One command per Redis rule.
    pub commands: Vec<Command>,
    permit: Permit,
    /// The commands carry the script itself (after a NOSCRIPT).
    eval: bool,
    /// A first pass that decides without writing (several Redis rules: they live in different
    /// cluster slots, so no one script call covers them all).
    dry: bool,
    /// When the current pass was sent (epoch µs): a denial's retry-after counts from here.
    sent_us: u64,
    /// The replies of a pass that wrote, kept where a command ran (in `redis` order) when
    /// others answered NOSCRIPT: only those are sent again, since the ones that ran have
    /// counted. Empty otherwise.
    kept: Vec<Option<Reply>>,
    fell: u8,
    /// The breaker has heard of this request already: a rule in force went unanswered in its
    /// dry pass, told with that pass's call, so the pass that writes tells nothing more.
    told: bool,
    /// What it holds while it waits (`super::inflight`; 0: nothing).
    ticket: super::inflight::Ticket,
    /// This dry pass asks with what requests ahead of it hold: a denial in it may be theirs.
    ahead: bool,
}

impl Pending {
    /// Only shadow rules are asked of Redis: the call says nothing of the limits in force.
    fn shadows_only(&self, limiter: &Limiter) -> bool {
        self.redis.iter().all(|&i| limiter.rules[self.applied[i].rule].is_shadow())
    }

    /// The Redis rules asked in this pass, in command order.
    fn asked(&self) -> &[usize] {
        &self.redis[..self.redis.len() - usize::from(self.fell)]
    }

    /// The Redis rules whose reply was an error.
    fn fell(&self) -> &[usize] {
        &self.redis[self.redis.len() - usize::from(self.fell)..]
    }

    /// This call is a half-open breaker's probe: its result is what the breaker waits for.
    pub fn is_probe(&self) -> bool {
        self.permit == Permit::Probe
    }
}

/// What the breaker has heard of one gathered call whose requests are carried on one after
/// another, at one instant ([`Limiter::resume_gathered`]).
#[derive(Debug, Default)]
pub struct Heard {
    /// What the call's ordinary (not probe) requests found: `Some(false)` once one of them
    /// failed. Told to the breaker once, after all of them ([`Limiter::tell`]), so a call is
    /// one success or one failure whatever the order of its requests.
    ordinary: Option<bool>,
}

impl Limiter {
    pub(super) fn breaker(&self) -> Option<Breaker<'_>> {
        self.redis.as_ref().map(|r| Breaker { key: &self.breaker_key, spec: r.breaker, timeout_ms: r.timeout_ms })
    }

    /// Begins deciding `req`: either the verdict, or the Redis commands whose replies
    /// [`Limiter::resume`] needs.
    ///
    /// Every applying rule must admit. A request the local rules deny never costs a Redis round
    /// trip (they are checked first without writing), and one Redis denies consumes nothing
    /// locally (local rules are written after Redis admitted).
    pub fn start(&self, req: &impl RequestInfo, store: &impl SharedStore, now_us: u64) -> Step {
        self.start_at(req, store, || now_us)
    }

    /// [`Limiter::start`], asking `now` for the time only when a rule applies: reading the
    /// clock is a host call, and most requests of a config may meet no rule.
    pub fn start_at(&self, req: &impl RequestInfo, store: &impl SharedStore, now: impl Fn() -> u64) -> Step {
        self.decide_applied(self.applicable(req), store, now)
    }

    /// Begins deciding one WebSocket frame of `payload` bytes against the message rules its
    /// connection's upgrade met ([`Limiter::message_rules`]), as [`Limiter::start`] decides a
    /// request: every rule must admit, and Redis rules may need [`Limiter::resume`].
    ///
    /// The first frame of a message is judged by every rule. A `continuation` (a later frame of
    /// a message already admitted, asked about only when a rule costs payload bytes) is judged
    /// by the payload-byte rules alone: the others counted the message once, at its first frame.
    pub fn start_message(
        &self,
        rules: &[Applied],
        payload: u64,
        continuation: bool,
        store: &impl SharedStore,
        now_us: u64,
    ) -> Step {
        let applied = rules
            .iter()
            .filter(|a| !continuation || self.rules[a.rule].rule.cost == Cost::PayloadBytes)
            .map(|a| Applied { cost: self.rules[a.rule].rule.message_cost(payload), ..a.clone() })
            .collect();
        self.decide_applied(applied, store, || now_us)
    }

    fn decide_applied(&self, applied: Vec<Applied>, store: &impl SharedStore, now: impl Fn() -> u64) -> Step {
        if applied.is_empty() {
            return Step::Done(Verdict::Admit { headers: Vec::new(), delay_ms: 0, outcomes: Vec::new() });
        }
        // A request that names its client twice, by different values, is counted against
        // neither: the application may read either one.
        if let Some(a) = applied.iter().find(|a| a.identity.conflict && !self.rules[a.rule].is_shadow()) {
            log::debug!("sluice: rule {:?}: the request names its client by two values", self.rules[a.rule].rule.name);
            return Step::Done(self.verdict(vec![RuleOutcome::new(a, Vec::new(), false)], true));
        }
        let now_us = now();
        // A config without Redis has no Redis rule (the compiler sees to it): no need to look.
        if self.redis.is_none() {
            return Step::Done(self.local_phase(&applied, Vec::new(), store, now_us, &[]));
        }
        let redis: Vec<usize> = (0..applied.len()).filter(|&i| self.rules[applied[i].rule].is_redis()).collect();
        if redis.is_empty() {
            return Step::Done(self.local_phase(&applied, Vec::new(), store, now_us, &[]));
        }
        // Checked before Redis decides: with what the requests ahead of it hold when it has
        // other rules to pass (`super::inflight`).
        let in_force = |a: &Applied| !self.rules[a.rule].is_shadow();
        let redis_in_force = redis.iter().filter(|&&i| in_force(&applied[i])).count();
        let local_in_force = applied.iter().any(|a| !self.rules[a.rule].is_redis() && in_force(a));
        let holds = redis_in_force > 1 || (redis_in_force == 1 && local_in_force);
        let dry: Vec<RuleOutcome> = applied
            .iter()
            .filter(|a| !self.rules[a.rule].is_redis() && in_force(a))
            .map(|a| self.check_local(a, store, now_us, holds))
            .collect();
        if dry.iter().any(|o| !o.allowed) {
            return Step::Done(self.verdict(dry, true));
        }
        // Denied by Redis a moment ago and still denied: answered here, without a call, and
        // consuming nothing anywhere.
        let deny_cache = self.redis().is_some_and(|r| r.deny_cache);
        let cached: Vec<RuleOutcome> = redis
            .iter()
            .map(|&i| &applied[i])
            .filter(|a| deny_cache && !self.rules[a.rule].is_shadow())
            .filter_map(|a| self.rules[a.rule].cached_denial(a, store, &self.denials, now_us))
            .collect();
        if !cached.is_empty() {
            let mut outcomes = dry;
            outcomes.extend(cached);
            return Step::Done(self.verdict(outcomes, true));
        }
        let (permit, open_ms) = match self.breaker() {
            // Shadow rules alone.
            Some(b) if redis_in_force == 0 => (b.permit_unprobed(store), 0),
            Some(b) => b.permit_or_wait(store, now_us),
            None => (Permit::Skip, 0),
        };
        if permit == Permit::Skip {
            return Step::Done(self.redis_failed(&applied, store, now_us, Some(open_ms)));
        }
        // Several enforced Redis rules: check them all without writing first, so a request one
        // of them denies consumes nothing from the others. A race between the passes can only
        // make a request denied after an earlier rule counted it, never admit one past a limit.
        // Shadow rules go in the one pass with the rule they trial: trying a limit must not
        // double the round trips of the limit in force.
        let mut p = Pending {
            applied,
            redis,
            commands: Vec::new(),
            permit,
            eval: false,
            dry: redis_in_force > 1,
            sent_us: now_us,
            kept: Vec::new(),
            fell: 0,
            told: false,
            ticket: 0,
            ahead: false,
        };
        self.set_commands(&mut p);
        if holds {
            self.hold(&mut p, now_us);
        }
        Step::Redis(p)
    }

    /// `p`'s rules in force hold its cost while it waits (`super::inflight`).
    #[cold]
    #[inline(never)]
    fn hold(&self, p: &mut Pending, now_us: u64) {
        let in_force = |a: &&Applied| !self.rules[a.rule].is_shadow();
        let costs = p.applied.iter().filter(in_force).map(|a| (a.rule, a.identity.hash, a.cost)).collect();
        // Every pass ends within the timeout: a dry one, one that writes, a resend after
        // NOSCRIPT; a verdict ends the hold long before.
        let timeout_us = self.redis().map_or(0, |r| r.timeout_ms).saturating_mul(1000);
        p.ticket =
            self.in_flight.hold(costs, now_us, now_us.saturating_add(timeout_us.saturating_mul(3)).saturating_add(1_000_000));
    }

    /// A local rule's check before Redis decides, without writing; with `holds`, as if the
    /// requests ahead of it in flight had taken what they hold.
    #[inline(never)]
    fn check_local(&self, a: &Applied, store: &impl SharedStore, now_us: u64, holds: bool) -> RuleOutcome {
        let held = if holds { self.in_flight.held(a.rule, a.identity.hash, 0) } else { 0 };
        if held == 0 {
            return self.decide_local(a, store, now_us, false);
        }
        let ahead = Applied { cost: with_held(&self.rules[a.rule].rule, a.cost, held), ..a.clone() };
        let mut o = RuleOutcome { cost: a.cost, ..self.decide_local(&ahead, store, now_us, false) };
        if !o.allowed {
            soon(&mut o);
        }
        o
    }

    /// The commands of the pass: one per Redis rule, but for those whose reply is kept.
    fn set_commands(&self, p: &mut Pending) {
        if !p.kept.is_empty() {
            (p.commands, p.ahead) = (self.commands_not_kept(p), false);
            return;
        }
        // A dry pass asks with what the requests ahead of it hold (`super::inflight`), and
        // notes whether any did.
        let mut ahead = false;
        let commands = p
            .asked()
            .iter()
            .map(|&i| {
                let a = &p.applied[i];
                let held = if p.dry { self.in_flight.held(a.rule, a.identity.hash, p.ticket) } else { 0 };
                ahead |= held > 0;
                self.command(p, i, held)
            })
            .collect();
        (p.commands, p.ahead) = (commands, ahead);
    }

    /// After a NOSCRIPT in a pass that wrote (rare): the commands whose reply is not kept.
    #[cold]
    #[inline(never)]
    fn commands_not_kept(&self, p: &Pending) -> Vec<Command> {
        // Kept replies come of a pass that wrote, which asks with no hold.
        p.asked().iter().zip(&p.kept).filter(|(_, k)| k.is_none()).map(|(&i, _)| self.command(p, i, 0)).collect()
    }

    /// The command of the Redis rule `p.applied[i]`, for this pass, asking with `held` ahead of
    /// its cost.
    fn command(&self, p: &Pending, i: usize, held: u64) -> Command {
        let a = &p.applied[i];
        let c = &self.rules[a.rule];
        let call = RuleCall {
            namespace: &self.namespace,
            rule: &c.rule.name,
            identity: a.identity.hash,
            fingerprint: c.fingerprint,
            strategy: &c.rule.strategy,
            rates: c.rates(),
            cost: with_held(&c.rule, a.cost, held),
        };
        script::command(&call, if p.eval { Form::Eval } else { Form::Sha(&self.sha) }, p.dry)
    }

    /// The outcomes of the Redis rules that answered, and the rules (indexes into `applied`)
    /// whose reply decides nothing, with why: an error reply (in a Cluster, its node may be down
    /// while the others answer). `Err` when the replies are not one per command.
    #[allow(clippy::type_complexity)]
    fn read_replies(&self, p: &Pending, replies: &[Reply]) -> Result<(Vec<RuleOutcome>, Vec<(usize, String)>), String> {
        // The kept replies in their places, this pass's in the others.
        let merged: Vec<Reply>;
        let replies = if p.kept.is_empty() {
            replies
        } else {
            let mut fresh = replies.iter();
            merged = p.kept.iter().filter_map(|k| k.as_ref().or_else(|| fresh.next()).cloned()).collect();
            if fresh.next().is_some() {
                return Err(format!("{} replies for {} commands", replies.len(), p.commands.len()));
            }
            &merged
        };
        if replies.len() != p.asked().len() {
            return Err(format!("{} replies for {} commands", replies.len(), p.asked().len()));
        }
        let mut outcomes = Vec::with_capacity(replies.len());
        let mut failed = Vec::new();
        for (&i, reply) in p.asked().iter().zip(replies) {
            let a = &p.applied[i];
            let c = &self.rules[a.rule];
            match script::read(reply, c.rates(), c.rule.strategy.max_delay_ms()) {
                Ok(r) => outcomes.push(RuleOutcome::new(a, r.decisions, r.allowed)),
                Err(e) => failed.push((i, e)),
            }
        }
        Ok((outcomes, failed))
    }

    /// Continues a request with Redis' replies (or the transport's failure).
    pub fn resume(&self, p: Pending, replies: Result<Vec<Reply>, String>, store: &impl SharedStore, now_us: u64) -> Resumed {
        let mut heard = Heard::default();
        let resumed = self.resume_gathered(p, replies, store, now_us, &mut heard);
        self.tell(&heard, store, now_us);
        resumed
    }

    /// Tells the breaker what the ordinary requests of one call found, once.
    pub fn tell(&self, heard: &Heard, store: &impl SharedStore, now_us: u64) {
        if let (Some(b), Some(ok)) = (self.breaker(), heard.ordinary) {
            b.record(store, Permit::Call, ok, now_us);
        }
    }

    /// [`Limiter::resume`] for one of the requests of a gathered call that answered, carried
    /// on in turn at `now_us` with `heard` shared among them: an ordinary request's success or
    /// failure goes into `heard`, which the caller tells the breaker after the last of them
    /// ([`Limiter::tell`]), so the breaker hears of the call once and each request costs no read
    /// of shared data for it. Probes still speak one by one: each holds a place in a half-open
    /// breaker.
    pub fn resume_gathered(
        &self,
        p: Pending,
        replies: Result<Vec<Reply>, String>,
        store: &impl SharedStore,
        now_us: u64,
        heard: &mut Heard,
    ) -> Resumed {
        let ticket = p.ticket;
        let resumed = self.carry_on(p, replies, store, now_us, heard);
        // With its verdict the request has taken what it took: it holds nothing more.
        if ticket != 0 && matches!(resumed, Resumed::Done(_)) {
            self.in_flight.release(ticket);
        }
        resumed
    }

    /// [`Limiter::resume_gathered`] but for the request's holds.
    #[inline(always)]
    fn carry_on(
        &self,
        mut p: Pending,
        replies: Result<Vec<Reply>, String>,
        store: &impl SharedStore,
        now_us: u64,
        heard: &mut Heard,
    ) -> Resumed {
        let parsed = match replies {
            Ok(r) if !p.eval && r.iter().any(Reply::is_noscript) => {
                // The script is not cached on (some node of) Redis: send it whole once, which
                // caches it for every later EVALSHA. A pass that writes sends again only the
                // commands that did not run (the others counted), and its retry-afters count
                // from its first sending, the earlier time (a denial then ends no later).
                p.eval = true;
                if !p.dry && r.len() == p.asked().len() && !r.iter().all(Reply::is_noscript) {
                    p.kept = r.into_iter().map(|reply| (!reply.is_noscript()).then_some(reply)).collect();
                } else {
                    p.sent_us = now_us;
                }
                self.set_commands(&mut p);
                return Resumed::Retry(p);
            }
            Ok(r) => self.read_replies(&p, &r),
            Err(e) => Err(e),
        };
        // Some rules answered: they decide, and only those that did not follow `on_error`.
        // Nothing answered: the call failed.
        let (mut outcomes, failed) = match parsed {
            Ok((outcomes, failed)) if !outcomes.is_empty() => (outcomes, failed),
            other => {
                let why = match other {
                    Ok((_, failed)) => failed.into_iter().next().map(|(_, e)| e).unwrap_or_default(),
                    Err(e) => e,
                };
                self.warn_failed(&p, p.redis.iter(), &why);
                self.hear(&p, false, heard, store, now_us);
                return Resumed::Done(self.redis_failed(&p.applied, store, now_us, None));
            }
        };
        if let Some((_, e)) = failed.first() {
            self.fell_apart(&mut p, &failed, e);
        }
        if p.ahead {
            // Denied counting what requests ahead of it hold: they end within a round trip, so
            // the client hears to come back in a second at most (what the asked cost says may be
            // a whole period), and nothing of it is cached as Redis' own denial.
            outcomes.iter_mut().filter(|o| !o.allowed).for_each(soon);
        } else {
            let deny_cache = self.redis().is_some_and(|r| r.deny_cache);
            for o in outcomes.iter_mut().filter(|o| deny_cache && !o.allowed) {
                self.rules[o.rule].remember_denial(o, store, &self.denials, p.sent_us, now_us);
            }
        }
        // A shadow rule's failure says nothing of the limits in force.
        let ok = !p.fell().iter().any(|&i| !self.rules[p.applied[i].rule].is_shadow());
        outcomes.extend(self.on_error_outcomes(&p.applied, p.fell(), store, now_us, None));
        let denied = outcomes.iter().any(|o| !o.allowed && !self.rules[o.rule].is_shadow());
        if p.dry && !denied {
            // Those that fell back are decided here, with the local rules, after the pass that
            // writes: checked now without writing, so that a request their share denies is
            // not counted in Redis first.
            let here: Vec<RuleOutcome> = p
                .fell()
                .iter()
                .map(|&i| &p.applied[i])
                .filter(|a| self.rules[a.rule].falls_back() && !self.rules[a.rule].is_shadow())
                .map(|a| self.decide_local(a, store, now_us, false))
                .collect();
            if here.iter().any(|o| !o.allowed) {
                self.hear(&p, ok, heard, store, now_us);
                outcomes.extend(here.into_iter().map(|mut o| {
                    self.mark_fallback(&mut o);
                    o
                }));
                return Resumed::Done(self.verdict(outcomes, true));
            }
            // Every rule that answered admits: now decide for real, without those that did
            // not. A rule in force that went unanswered is a failure of this call, told with it
            // now (a client that leaves before the write takes nothing away, and the requests of
            // one call are one failure); otherwise the breaker hears of the request when the
            // pass that writes ends.
            if !ok {
                self.hear(&p, false, heard, store, now_us);
                p.told = true;
            }
            p.dry = false;
            p.sent_us = now_us;
            // Its writes count it in Redis from now on: held there as well, it would count twice
            // for the requests behind it. Its local rules, written after Redis, stay held.
            self.in_flight.keep(p.ticket, |rule| !self.rules[rule].is_redis());
            self.set_commands(&mut p);
            return Resumed::Retry(p);
        }
        self.hear(&p, ok, heard, store, now_us);
        let fell: Vec<usize> = p.fell().iter().map(|&i| p.applied[i].rule).collect();
        Resumed::Done(self.local_phase(&p.applied, outcomes, store, now_us, &fell))
    }

    /// Some of `p`'s rules went unanswered (`failed`, all of them asked): they go to the end of
    /// its rules, after those that fell before, to follow their `on_error`.
    #[cold]
    #[inline(never)]
    fn fell_apart(&self, p: &mut Pending, failed: &[(usize, String)], why: &str) {
        self.warn_failed(p, failed.iter().map(|(i, _)| i), why);
        let answered = p.asked().iter().copied().filter(|i| failed.iter().all(|(f, _)| f != i));
        let redis: Vec<usize> = answered.chain(p.fell().iter().copied()).chain(failed.iter().map(|(i, _)| *i)).collect();
        p.redis = redis;
        // The rules are at most 128, so the count fits.
        p.fell = p.fell.saturating_add(u8::try_from(failed.len()).unwrap_or(u8::MAX));
    }

    /// What one call of `p` found, for the breaker: a probe tells it now, an ordinary request
    /// through `heard`.
    fn hear(&self, p: &Pending, ok: bool, heard: &mut Heard, store: &impl SharedStore, now_us: u64) {
        let Some(b) = self.breaker() else { return };
        if p.told {
            return;
        }
        // A call of shadow rules alone says nothing of the limits in force, either way: a
        // probe gives its place back.
        if p.shadows_only(self) {
            b.abandon(store, p.permit);
            return;
        }
        match p.permit {
            Permit::Call => heard.ordinary = Some(heard.ordinary.unwrap_or(true) && ok),
            permit => b.record(store, permit, ok, now_us),
        }
    }

    fn warn_failed<'a>(&self, p: &Pending, redis: impl Iterator<Item = &'a usize>, why: &str) {
        let rules: Vec<String> = redis
            .map(|&i| {
                let rule = &self.rules[p.applied[i].rule].rule;
                format!("{:?} (on_error: {})", rule.name, rule.on_error.name())
            })
            .collect();
        log::warn!("sluice: redis call failed: {why}; decided by on_error for rule(s) {}", rules.join(", "));
    }

    /// Decides `req` at `now_us` (epoch microseconds) with no Redis transport: Redis rules
    /// take their `on_error` path. The host uses [`Limiter::start`] and [`Limiter::resume`].
    pub fn check(&self, req: &impl RequestInfo, store: &impl SharedStore, now_us: u64) -> Verdict {
        match self.start(req, store, now_us) {
            Step::Done(v) => v,
            Step::Redis(p) => match self.resume(p, Err("no Redis transport".into()), store, now_us) {
                Resumed::Done(v) => v,
                Resumed::Retry(p) => self.redis_failed(&p.applied, store, now_us, None),
            },
        }
    }

    /// Whether the breaker hears of `p`'s call: it asks a rule in force of Redis, and the
    /// request has not been told already (by its dry pass). A failed call that carried several
    /// requests is told through one of those.
    pub fn tells_breaker(&self, p: &Pending) -> bool {
        !p.told && !p.shadows_only(self)
    }

    /// Redis failed for a call that carried other requests' decisions too, and the breaker has
    /// heard of that failure once already, through the first of them: this one follows its
    /// rules' `on_error` without counting again, and a probe gives its place back. One failed
    /// call is one failure, however many requests it carried.
    pub fn resume_failed_together(&self, p: Pending, store: &impl SharedStore, now_us: u64) -> Verdict {
        self.abandon(&p, store);
        self.redis_failed(&p.applied, store, now_us, None)
    }

    /// The request waiting on `p` ended before Redis answered (the client went away): a probe
    /// gives its place back to the breaker, counting neither way (a failure its dry pass found
    /// was told then).
    pub fn abandon(&self, p: &Pending, store: &impl SharedStore) {
        self.in_flight.release(p.ticket);
        if let Some(b) = self.breaker() {
            if !p.told {
                b.abandon(store, p.permit);
            }
        }
    }

    /// Redis could not decide (failure, timeout, open breaker): each Redis rule follows its
    /// `on_error`; those that fall back are decided in the proxy with the local rules, so that
    /// a request another rule denies consumes none of their share either. `open_ms`: how long
    /// the breaker stays open, when its answer already said (else read for a denial).
    fn redis_failed(&self, applied: &[Applied], store: &impl SharedStore, now_us: u64, open_ms: Option<u64>) -> Verdict {
        let redis: Vec<usize> = (0..applied.len()).filter(|&i| self.rules[applied[i].rule].is_redis()).collect();
        let outcomes = self.on_error_outcomes(applied, &redis, store, now_us, open_ms);
        let fell: Vec<usize> = redis.iter().map(|&i| applied[i].rule).collect();
        self.local_phase(applied, outcomes, store, now_us, &fell)
    }

    /// The outcomes of the Redis rules `applied[i]` for `i` in `fell` that Redis did not
    /// decide, but for those that fall back (decided in the proxy with the local rules). A
    /// denial asks the client to wait a second, or while the breaker is open, until it probes
    /// Redis again: told a second, an obedient client would be turned away several times.
    fn on_error_outcomes(
        &self,
        applied: &[Applied],
        fell: &[usize],
        store: &impl SharedStore,
        now_us: u64,
        open_ms: Option<u64>,
    ) -> Vec<RuleOutcome> {
        let mut wait_s: Option<u16> = None;
        fell.iter()
            .map(|&i| &applied[i])
            .filter(|a| !self.rules[a.rule].falls_back())
            .map(|a| {
                let c = &self.rules[a.rule];
                let allowed = c.rule.on_error == OnError::Allow || c.is_shadow();
                let store_wait_s = if allowed {
                    0
                } else {
                    // Read once, and only for a denial (not at all when the breaker's answer said).
                    *wait_s.get_or_insert_with(|| {
                        let open_ms = open_ms.or_else(|| self.breaker().and_then(|b| b.open_for_ms(store, now_us))).unwrap_or(0);
                        u16::try_from(open_ms.div_ceil(1000)).unwrap_or(u16::MAX).max(STORE_ERROR_WAIT_S)
                    })
                };
                RuleOutcome { store_error: true, store_wait_s, ..RuleOutcome::new(a, Vec::new(), allowed) }
            })
            .collect()
    }
}

/// `cost` with `held` ahead of it: at most one past what the rule could ever admit (denied
/// just the same), and at most what keeps every number of its limits exact in Lua, which the
/// gateway checks (a call past it is refused, and with it every call sent with it). The rule's
/// own cost always is: the compiler checked its largest.
fn with_held(rule: &crate::config::Rule, cost: u64, held: u64) -> u64 {
    if held == 0 {
        return cost;
    }
    let want = cost.saturating_add(held).min(cost.max(rule.largest_admissible().saturating_add(1)));
    let exact =
        |c: u64| rule.limits.rates().iter().all(|r| crate::config::lua_largest(&rule.strategy, r, c) <= crate::config::LUA_EXACT);
    if exact(want) {
        return want;
    }
    // The largest exact one, between the cost (exact) and `want` (not).
    let (mut lo, mut hi) = (cost, want);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if exact(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// A denial counting what requests in flight hold: they end within a round trip, so the wait
/// told is at most a second (the asked cost's own may be a whole period).
fn soon(o: &mut RuleOutcome) {
    for d in o.decisions.iter_mut().filter(|d| !d.allowed) {
        d.retry_after_ms = d.retry_after_ms.min(1_000);
    }
}
