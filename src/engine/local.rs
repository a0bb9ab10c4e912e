//! Local decisions: each rule's limits decided against its slot table in the proxy's shared
//! data, the enforced rules checked together before any is written, shadow rules counted after.
//! Rules that share a table (they count the same identity) are decided on one read of the
//! identity's slot (or the worker's copy of its own last write of it, `crate::store::own`) and
//! stored in one write.

use smallvec::SmallVec;

use super::{Applied, CompiledRule, Limiter, RuleOutcome, Verdict};
use crate::config::OnError;
use crate::store::{with_retries, Decided, Held, Outcomes, Prepared, SharedStore, StoreError, Updated};
use crate::strategy::{self, Decision, Outcome};

/// The decisions of a rule's outcomes (what is reported; the states were stored).
fn decisions(outcomes: Vec<Outcome>) -> Vec<Decision> {
    outcomes.into_iter().map(|o| o.decision).collect()
}

/// Rules of one request, by reference: most requests meet a few rules, so these lists live on
/// the stack (an allocation costs the guest more than deciding a limit).
type Refs<'a> = SmallVec<[&'a Applied; 4]>;

/// A decision is stored only if every limit of every rule decided admits, and one changed.
fn worth_writing<'a>(outcomes: impl Iterator<Item = &'a Outcome> + Clone) -> bool {
    outcomes.clone().all(|o| o.decision.allowed) && outcomes.into_iter().any(|o| o.state.is_some())
}

impl Limiter {
    fn compiled(&self, a: &Applied) -> &CompiledRule {
        &self.rules[a.rule]
    }

    /// Every limit of `a`'s rule decided on its states (`state(i)`: limit i's).
    fn decide_rule<'s>(&self, a: &Applied, state: impl Fn(usize) -> &'s [u8], now_us: u64) -> Outcomes {
        self.decide_limits(a, state, now_us, |o| o)
    }

    /// [`Limiter::decide_rule`], keeping `keep` of each limit's outcome.
    fn decide_limits<'s, T, C: FromIterator<T>>(
        &self,
        a: &Applied,
        state: impl Fn(usize) -> &'s [u8],
        now_us: u64,
        keep: impl Fn(Outcome) -> T,
    ) -> C {
        let c = self.compiled(a);
        let (rates, how) = (c.local_rates(), c.local_strategy());
        rates.iter().enumerate().map(|(i, rate)| keep(strategy::decide(&how, rate, state(i), now_us, a.cost))).collect()
    }

    /// Decides the rules of `group` on a slot the worker remembers ([`super::memo`]): whether
    /// every one denies, their outcomes then added to `into` (only the decisions: nothing is
    /// written); otherwise `into` is left as it was.
    fn decide_remembered(&self, group: &[&Applied], held: &Held<'_>, now_us: u64, into: &mut Vec<RuleOutcome>) -> bool {
        let before = into.len();
        for a in group {
            let id = self.compiled(a).table.fingerprint;
            let decisions = self.decide_limits(a, |i| held.state(id, i), now_us, |o| o.decision);
            into.push(self.local_outcome(a, Ok((decisions, false))));
        }
        let denied = into.get(before..).is_some_and(|mine| mine.iter().all(|o| !o.allowed));
        if !denied {
            into.truncate(before);
        }
        denied
    }

    /// Every limit of each rule in `group` decided on its states in the slot as read.
    fn decide_group(&self, group: &[&Applied], held: &Held<'_>, now_us: u64) -> (Decided, bool) {
        let decided: Decided = group
            .iter()
            .map(|a| {
                let id = self.compiled(a).table.fingerprint;
                (id, self.decide_rule(a, |i| held.state(id, i), now_us))
            })
            .collect();
        let write = worth_writing(decided.iter().flat_map(|(_, o)| o.iter()));
        (decided, write)
    }

    /// Adds the outcomes of `group` to `into`, from what its table returned (the slot's
    /// creation or eviction told once).
    fn group_outcomes(&self, group: &[&Applied], result: Result<Updated<Decided>, StoreError>, into: &mut Vec<RuleOutcome>) {
        match result {
            Ok(u) => {
                let first = into.len();
                for (i, (a, (_, o))) in group.iter().zip(u.outcomes).enumerate() {
                    into.push(self.local_outcome(a, Ok((decisions(o), u.created && i == 0))));
                }
                if let (true, Some(o)) = (u.evicted, into.get_mut(first)) {
                    o.evicted_slot = true;
                }
            }
            Err(e) => into.extend(group.iter().map(|a| self.local_outcome(a, Err(e.clone())))),
        }
    }

    /// Decides the rules of `group` (one table, one identity) on a read of the slot and stores
    /// the decision (CAS, deciding again after a lost race), adding their outcomes to `into`.
    fn update_group(&self, group: &[&Applied], store: &impl SharedStore, now_us: u64, into: &mut Vec<RuleOutcome>) {
        let Some(first) = group.first() else { return };
        let c = self.compiled(first);
        let identity = first.identity.hash;
        let mine =
            self.own.take(c.holder, identity, now_us).map(|copy| copy.mine).or_else(|| self.own.missed(c.holder, identity));
        let result = with_retries(&c.table.prefix, || {
            let p = c
                .table
                .prepare_entries(store, identity, now_us, self.own.tag(), |held| self.decide_group(group, held, now_us))?;
            if let Some(mine) = mine {
                self.own.saw(mine, p.seen());
            }
            let (created, evicted) = (p.created(), p.evicts());
            let outcomes = self.commit(first, store, p, now_us)?;
            Ok(Updated { outcomes, created, evicted })
        });
        self.group_outcomes(group, result, into);
    }

    /// Stores a decision of `first`'s group, telling the worker's copies
    /// ([`crate::store::own`]) what landed or missed; the outcomes decided.
    fn commit(&self, first: &Applied, store: &impl SharedStore, mut p: Prepared, now_us: u64) -> Result<Decided, StoreError> {
        let c = self.compiled(first);
        let identity = first.identity.hash;
        let guessed = p.guessed();
        match c.table.commit(store, &p) {
            Ok(()) => {
                if let Some((mine, token)) = guessed {
                    self.own.hit(mine, token);
                }
                let outcomes = std::mem::take(&mut p.outcomes);
                self.own.landed(p.marks());
                if let Some(w) = p.into_written() {
                    self.own.wrote(c.holder, identity, w, now_us);
                }
                Ok(outcomes)
            }
            Err(e) => {
                if let Some((mine, _)) = guessed {
                    // The slot is read instead, and tells the write's token.
                    self.own.miss(c.holder, identity, mine);
                }
                Err(e)
            }
        }
    }

    /// Decides the rules of `group` on the store's current state without writing (on the
    /// worker's copy of its own last write of the slot if `copies` and it can), adding their
    /// outcomes to `into` and returning what [`crate::store::Table::commit`] needs to store
    /// it (`None` when there is nothing to store: a store failure, or a denial the worker
    /// remembered, see [`super::memo`]).
    fn prepare_group(
        &self,
        group: &[&Applied],
        store: &impl SharedStore,
        now_us: u64,
        into: &mut Vec<RuleOutcome>,
        copies: bool,
    ) -> Option<Prepared> {
        let first = group.first()?;
        if self.memo.recall(&self.rules, group, now_us, |held| self.decide_remembered(group, held, now_us, into)) {
            return None;
        }
        let c = self.compiled(first);
        let identity = first.identity.hash;
        let decide = |held: &Held<'_>| self.decide_group(group, held, now_us);
        // With `copies`, the worker's copy of its own last write of the slot decides without a
        // read, if it knows that write's token, and admits (a denial may be stale: the slot is
        // read).
        let copy = match self.own.take(c.holder, identity, now_us) {
            Some(known) if copies && known.token.is_some() && self.own.may_try() => {
                match c.table.prepare_on_copy(known, identity, now_us, self.own.tag(), decide) {
                    Ok(p) => return self.prepared(group, Ok(p), into, now_us),
                    Err(known) => Some(known),
                }
            }
            other => other,
        };
        let read = c.table.prepare_entries(store, identity, now_us, self.own.tag(), decide);
        let mine = copy.as_ref().map(|known| known.mine).or_else(|| self.own.missed(c.holder, identity));
        if let (Some(mine), Ok(p)) = (mine, &read) {
            self.own.saw(mine, p.seen());
        }
        if let (Some(mut known), Ok(p)) = (copy, &read) {
            // A denial wrote nothing: the slot is still the copy if it carries the copy's tag,
            // and the token read is that write's.
            if let Some((_, token)) = p.seen().filter(|(tag, _)| !p.writes() && *tag == known.mine.tag) {
                known.token = Some(token);
                self.own.put_back(c.holder, identity, known);
            }
        }
        self.prepared(group, read, into, now_us)
    }

    /// Adds the outcomes of a decision prepared for `group` to `into` (remembering a denial,
    /// [`super::memo`]) and returns it, if there is something to store.
    fn prepared(
        &self,
        group: &[&Applied],
        prepared: Result<Prepared, StoreError>,
        into: &mut Vec<RuleOutcome>,
        now_us: u64,
    ) -> Option<Prepared> {
        match prepared {
            Ok(mut p) => {
                // The outcomes become the decisions in place; committing needs only the write.
                let updated = Updated { outcomes: std::mem::take(&mut p.outcomes), created: p.created(), evicted: p.evicts() };
                let before = into.len();
                self.group_outcomes(group, Ok(updated), into);
                if let Some(mine) = into.get(before..).filter(|o| o.iter().any(|o| !o.allowed)) {
                    self.memo.remember(&self.rules, group, mine, p.take_read(), now_us);
                }
                Some(p)
            }
            Err(e) => {
                self.group_outcomes(group, Err(e), into);
                None
            }
        }
    }

    /// Decides one rule in shared data. With `write`, the decision is stored (CAS); without,
    /// it is a dry run against the current state.
    pub(super) fn decide_local(&self, a: &Applied, store: &impl SharedStore, now_us: u64, write: bool) -> RuleOutcome {
        if write {
            let mut into = Vec::with_capacity(1);
            self.update_group(&[a], store, now_us, &mut into);
            if let Some(o) = into.pop() {
                return o;
            }
        }
        let dry = |states: &[&[u8]]| (decisions(self.decide_rule(a, |i| states.get(i).copied().unwrap_or(&[]), now_us)), false);
        self.local_outcome(a, self.compiled(a).table.peek(store, a.identity.hash, now_us, dry))
    }

    /// A Redis rule's outcome decided here is its fallback's: it says Redis failed.
    pub(super) fn mark_fallback(&self, o: &mut RuleOutcome) {
        o.store_error |= self.rules[o.rule].is_redis();
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

    /// `rules` in groups that count in one slot (one table, one identity), in order of their
    /// first rule, each in rule order.
    fn by_slot<'a>(&self, rules: &[&'a Applied]) -> SmallVec<[Refs<'a>; 2]> {
        let mut groups: SmallVec<[Refs<'a>; 2]> = SmallVec::new();
        for &a in rules {
            let holder = self.compiled(a).holder;
            let same = |g: &&mut Refs<'a>| {
                g.first().is_some_and(|f| self.compiled(f).holder == holder && f.identity.hash == a.identity.hash)
            };
            match groups.iter_mut().find(same) {
                Some(g) => g.push(a),
                None => groups.push(smallvec::smallvec![a]),
            }
        }
        groups
    }

    /// Decides the enforced rules' `groups` and stores the decision: their outcomes, and
    /// whether the request is denied. With `copies`, each slot may be decided on the worker's
    /// copy of its own last write (`crate::store::own`) while every slot before it was, and
    /// they are written in order: `None` when a copy was stale (its write missed, or a denial
    /// elsewhere would show its fields as the copy has them), with nothing written (the writes
    /// before a stale copy's are taken back), to decide again on reads.
    fn enforce(
        &self,
        groups: &[Refs<'_>],
        store: &impl SharedStore,
        now_us: u64,
        copies: bool,
    ) -> Option<(Vec<RuleOutcome>, bool)> {
        let rules = groups.iter().map(|g| g.len()).sum();
        let mut decided = Vec::with_capacity(rules);
        let on_copy = |p: &Option<Prepared>| p.as_ref().is_some_and(|p| p.guessed().is_some());
        let mut prepared: SmallVec<[Option<Prepared>; 2]> = SmallVec::with_capacity(groups.len());
        for g in groups {
            // A write on a copy is taken back only after writes on copies: one on a read
            // cannot be (the read's slot may have been another identity's, or marked).
            let copy = copies && prepared.iter().all(on_copy);
            prepared.push(self.prepare_group(g, store, now_us, &mut decided, copy));
        }
        if decided.iter().any(|o| !o.allowed) {
            // Nothing is written: a slot another group would have created or taken was not (a
            // group alone that denies writes nothing).
            if groups.len() > 1 {
                decided.iter_mut().for_each(|o| (o.created_slot, o.evicted_slot) = (false, false));
            }
            return if prepared.iter().any(on_copy) { None } else { Some((decided, true)) };
        }
        let mut stored = Vec::with_capacity(rules);
        let mut prepared_outcomes = decided.into_iter();
        // Each slot written on a copy so far (all the first ones), as its copy had it.
        let mut on_copies: SmallVec<[Vec<u8>; 2]> = SmallVec::new();
        for (i, (group, mut p)) in groups.iter().zip(prepared).enumerate() {
            let mine = prepared_outcomes.by_ref().take(group.len());
            let guessed = on_copy(&p);
            // Only a later slot's write can be found stale after this one.
            let copied = p.as_mut().filter(|_| i + 1 < groups.len()).and_then(Prepared::take_copied);
            match p.zip(group.first()).map(|(p, first)| self.commit(first, store, p, now_us)) {
                // Stored, or a store failure that `on_error` admitted.
                Some(Ok(_)) | None => {
                    stored.extend(mine);
                    on_copies.extend(copied);
                }
                // A write with its copy's token missed (the copy was stale) or failed, after the
                // writes on copies before it: taken back, nothing is written.
                Some(Err(_)) if guessed && on_copies.len() == i => {
                    mine.for_each(drop);
                    let (before, _) = groups.split_at(i.min(groups.len()));
                    let kept = self.take_back(before, &mut on_copies, store, now_us);
                    if kept == 0 {
                        return None;
                    }
                    // One could not be taken back (written over since): it and those before it
                    // stay counted, as after a race lost at a later slot; the rest count again.
                    stored.truncate(groups.iter().take(kept).map(|g| g.len()).sum());
                    for g in groups.get(kept..=i).unwrap_or_default() {
                        self.update_group(g, store, now_us, &mut stored);
                    }
                }
                Some(Err(_)) => {
                    mine.for_each(drop);
                    self.update_group(group, store, now_us, &mut stored);
                }
            }
            if stored.iter().any(|o| !o.allowed) {
                return Some((stored, true));
            }
        }
        Some((stored, false))
    }

    /// Takes back the writes this request made on copies of `groups`' slots (`copies`: each
    /// slot as its copy had it), the last first, while each is still the slot's latest write:
    /// how many groups, from the first, stay counted.
    fn take_back(
        &self,
        groups: &[Refs<'_>],
        copies: &mut SmallVec<[Vec<u8>; 2]>,
        store: &impl SharedStore,
        now_us: u64,
    ) -> usize {
        let mut kept = groups.len().min(copies.len());
        while let (Some(group), Some(before)) = (kept.checked_sub(1).and_then(|k| groups.get(k)), copies.pop()) {
            let Some(first) = group.first() else { break };
            let c = self.compiled(first);
            let identity = first.identity.hash;
            let Some(written) = self.own.take(c.holder, identity, now_us) else { break };
            let mine = written.mine;
            let Ok((restored, token)) = c.table.take_back(store, written, before, self.own.tag()) else { break };
            // The slot read held the worker's write: that write's token is a fact.
            self.own.saw(mine, Some((mine.tag, token)));
            self.own.wrote(c.holder, identity, restored, now_us);
            kept -= 1;
        }
        kept
    }

    /// Decides the local rules of `applied`, after the Redis rules' `outcomes` (if any), and
    /// with `fallen_back` (Redis could not decide) the Redis rules that fall back, as local
    /// rules on their share. Enforced rules are decided before shadow rules, and shadow rules
    /// only count requests that are admitted. Every enforced rule is decided on what the store holds now before any
    /// is written, so a request one rule denies consumes nothing from the others; a slot
    /// another worker wrote in between is decided again on what it holds, which can only deny
    /// the request after an earlier table counted it, never admit it past a limit.
    pub(super) fn local_phase(
        &self,
        applied: &[Applied],
        outcomes: Vec<RuleOutcome>,
        store: &impl SharedStore,
        now_us: u64,
        fell: &[usize],
    ) -> Verdict {
        if outcomes.iter().any(|o| !o.allowed && !self.rules[o.rule].is_shadow()) {
            return self.verdict(outcomes, true);
        }
        // Local rules, and the Redis rules (by rule index) that Redis did not decide and that
        // fall back.
        let decided_here =
            |a: &&Applied| !self.compiled(a).is_redis() || (fell.contains(&a.rule) && self.compiled(a).falls_back());
        let (enforced, shadow): (Refs<'_>, Refs<'_>) =
            applied.iter().filter(decided_here).partition(|a| !self.compiled(a).is_shadow());
        let groups = self.by_slot(&enforced);
        let (stored, denied) = match self.enforce(&groups, store, now_us, true) {
            Some(done) => done,
            // Reads never go stale, so this always decides; were it not so, deny rather than
            // admit uncounted.
            None => self.enforce(&groups, store, now_us, false).unwrap_or_else(|| (Vec::new(), true)),
        };
        let mut stored = in_order(&enforced, stored);
        if !fell.is_empty() {
            stored.iter_mut().for_each(|o| self.mark_fallback(o));
        }
        if denied {
            return self.verdict(after(outcomes, stored), true);
        }
        let mut outcomes = after(outcomes, stored);
        for a in &shadow {
            let mut o = self.decide_local(a, store, now_us, true);
            self.mark_fallback(&mut o);
            outcomes.push(o);
        }
        self.verdict(outcomes, false)
    }
}

/// The local outcomes after the Redis rules' (most requests have none: no copy then).
fn after(mut redis: Vec<RuleOutcome>, local: Vec<RuleOutcome>) -> Vec<RuleOutcome> {
    if redis.is_empty() {
        return local;
    }
    redis.extend(local);
    redis
}

/// `decided` (outcomes of some of `rules`, group by group) in the order of `rules`, as a
/// request's outcomes are reported.
fn in_order(rules: &[&Applied], decided: Vec<RuleOutcome>) -> Vec<RuleOutcome> {
    // Rules apply in config order, so outcomes in rule order are in order already (one table).
    if decided.windows(2).all(|w| w[0].rule < w[1].rule) {
        return decided;
    }
    let mut placed: Vec<Option<RuleOutcome>> = rules.iter().map(|_| None).collect();
    for o in decided {
        if let Some(at) = rules.iter().position(|a| a.rule == o.rule).and_then(|i| placed.get_mut(i)) {
            *at = Some(o);
        }
    }
    placed.into_iter().flatten().collect()
}
