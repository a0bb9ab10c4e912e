//! What a worker knows of its own recent writes to the slot tables: each slot as it wrote it
//! and the CAS token Envoy gave that write, so the identity's next decision can be taken on
//! the copy and stored with that token, without reading shared data first (the read is a host
//! call, a crossing back into the guest to allocate the copy, and most of a local rule's cost).
//!
//! Exact, because the write is a compare-and-swap: it lands only if the slot still holds the
//! token of the worker's own write, that is, only if nobody wrote the slot since, so the copy
//! the decision was taken on is what shared data holds. A write that misses stores nothing,
//! and the request is decided again on reads as if there had been no copy.
//!
//! Envoy does not say which token a write got; this module predicts it. Tokens come from one
//! counter for the whole process, starting at 1, counting every write that lands, skipping 0
//! (docs/architecture.md, "Host facts: shared data"). Each slot carries a tag naming the write
//! that made it (a random number of the worker's, plus a count), so when the worker reads a
//! slot it wrote and finds its own tag, the token read is the token of that write: a fact, its
//! anchor. The token of a later write of its own is at least the anchor's plus the writes the
//! worker made since, exactly that when no other writer came in between. A prediction is
//! therefore never ahead of the counter, and a write with a token below the one the slot holds
//! misses: no write after the worker's own can carry the token it predicted, until the counter
//! has gone round 2^32 writes. Copies and anchors are trusted for [`TRUSTED_US`] only, far less
//! than the time Envoy needs for 2^31 writes.
//!
//! A worker alone (one worker, or a quiet moment) predicts every token; among busy workers
//! predictions miss, and each miss costs a write that fails. So a worker that misses waits
//! before it tries again, twice as long (in decisions) after each miss in a row, up to
//! [`MAX_WAIT`] decisions.
//!
//! Which copies may decide is the table's call and the engine's: a copy of the identity's home
//! slot while it lives ([`super::Table::prepare_on_copy`]), for each slot a request writes
//! while every slot before it was decided on a copy too (`crate::engine`'s local phase). A
//! stale copy found out after earlier slots were written has those writes taken back
//! ([`super::Table::take_back`]: each slot is its copy again, if nobody wrote it since), so
//! the request counts nowhere before it is decided again on reads; a slot written over since
//! keeps the request's count, and the slots after it up to the stale one are decided on reads.
//!
//! Bounded: [`PLACES`] copies per worker and config, each at most [`MAX_SLOT_BYTES`].

use std::cell::RefCell;
use std::hash::BuildHasher;

use super::table::Written;

/// How long a copy, and an anchor, is trusted: Envoy makes nowhere near 2^31 shared-data writes
/// in this time (each takes one process-wide lock).
pub const TRUSTED_US: u64 = 1_000_000;
/// Copies a worker keeps (per config).
pub const PLACES: usize = 128;
/// A slot larger than this (long sliding logs) is not kept.
pub const MAX_SLOT_BYTES: usize = 1024;
/// Misses in a row that double the wait, up to [`MAX_WAIT`] decisions a worker lets pass
/// without trying a copy.
const MAX_MISSES: u32 = 6;
pub const MAX_WAIT: u32 = (1 << MAX_MISSES) - 1;

/// A write of the worker's own: which one, its tag and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mine {
    /// The slot's tag.
    pub tag: u64,
    /// The worker's count of writes that landed, at this one.
    write: u32,
    at_us: u64,
}

/// A slot as the worker wrote it.
#[derive(Debug)]
pub struct SlotCopy {
    pub key: String,
    pub bytes: Vec<u8>,
    pub mine: Mine,
    /// The token the write got, as predicted (`None`: no anchor then).
    pub token: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Anchor {
    write: u32,
    token: u32,
    at_us: u64,
}

#[derive(Debug, Default)]
struct Inner {
    places: Vec<Option<(usize, u64, SlotCopy)>>,
    /// Writes that landed.
    writes: u32,
    /// Tags handed out.
    tags: u64,
    anchor: Option<Anchor>,
    /// Misses in a row, and decisions still to let pass before trying a copy again.
    misses: u32,
    wait: u32,
    /// The write whose copy missed last (its table and identity): the read that follows tells
    /// its token.
    missed: Option<(usize, u64, Mine)>,
}

/// A worker's copies of its own writes (one per config and worker).
#[derive(Debug)]
pub struct Own {
    writer: u64,
    inner: RefCell<Inner>,
}

impl Default for Own {
    fn default() -> Self {
        // A random number per worker and config (the host's randomness through std: WASI's
        // `random_get`, which Envoy serves): tags of different writers never meet but by a
        // chance of one in 2^64. Everything rests on it: a worker that took another's write for
        // its own could predict a token ahead of the counter.
        let writer = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64);
        Own { writer, inner: RefCell::default() }
    }
}

impl Clone for Own {
    /// Another worker's: a writer of its own, knowing nothing yet (two workers sharing a tag
    /// would each take the other's write for its own).
    fn clone(&self) -> Self {
        Own::default()
    }
}

/// Times are the worker's clock, which never runs backwards (`crate::clock`).
fn fresh(at_us: u64, now_us: u64) -> bool {
    now_us >= at_us && now_us - at_us < TRUSTED_US
}

/// The token `n` writes after `token` (tokens run 1 ..= u32::MAX and round again).
fn after(token: u32, n: u32) -> u32 {
    const SPAN: u64 = u32::MAX as u64;
    ((u64::from(token.max(1)) - 1 + u64::from(n)) % SPAN + 1) as u32
}

fn place(table: usize, identity: u64) -> usize {
    super::place(table, identity, PLACES)
}

impl Own {
    /// A new tag for a slot about to be written (never 0, which no slot of a worker carries).
    pub fn tag(&self) -> u64 {
        let Ok(mut inner) = self.inner.try_borrow_mut() else { return 0 };
        inner.tags = inner.tags.wrapping_add(1);
        match self.writer.wrapping_add(inner.tags) {
            0 => 1,
            t => t,
        }
    }

    /// The copy of the identity's slot in `table` (a table's index), taken out, if the worker
    /// wrote it less than [`TRUSTED_US`] ago.
    pub fn take(&self, table: usize, identity: u64, now_us: u64) -> Option<SlotCopy> {
        let mut inner = self.inner.try_borrow_mut().ok()?;
        let at = inner.places.get_mut(place(table, identity))?;
        match at {
            Some((t, i, c)) if *t == table && *i == identity && fresh(c.mine.at_us, now_us) => at.take().map(|(_, _, c)| c),
            _ => None,
        }
    }

    /// Puts back a copy taken and not written over.
    pub fn put_back(&self, table: usize, identity: u64, copy: SlotCopy) {
        let Ok(mut inner) = self.inner.try_borrow_mut() else { return };
        if inner.places.is_empty() {
            inner.places.resize_with(PLACES, || None);
        }
        if let Some(at) = inner.places.get_mut(place(table, identity)) {
            *at = Some((table, identity, copy));
        }
    }

    /// Whether to try a copy now (after misses, the worker lets some decisions pass first).
    pub fn may_try(&self) -> bool {
        let Ok(mut inner) = self.inner.try_borrow_mut() else { return false };
        if inner.wait > 0 {
            inner.wait -= 1;
            return false;
        }
        true
    }

    /// A write with a copy's token landed: the copy's write got that token.
    pub fn hit(&self, mine: Mine, token: u32) {
        self.anchor(mine, token);
        if let Ok(mut inner) = self.inner.try_borrow_mut() {
            inner.misses = 0;
        }
    }

    /// A write with the token predicted for `mine` (the identity's in `table`) missed: another
    /// write came in between.
    pub fn miss(&self, table: usize, identity: u64, mine: Mine) {
        let Ok(mut inner) = self.inner.try_borrow_mut() else { return };
        inner.misses = (inner.misses + 1).min(MAX_MISSES);
        inner.wait = (1 << inner.misses) - 1;
        inner.missed = Some((table, identity, mine));
    }

    /// The write of the identity's in `table` whose copy just missed.
    pub fn missed(&self, table: usize, identity: u64) -> Option<Mine> {
        let mut inner = self.inner.try_borrow_mut().ok()?;
        match inner.missed.take() {
            Some((t, i, mine)) if t == table && i == identity => Some(mine),
            _ => None,
        }
    }

    /// A read of a slot the worker wrote (`mine`) found `seen` (its tag and token): the worker's
    /// own tag means the token is that write's.
    pub fn saw(&self, mine: Mine, seen: Option<(u64, u32)>) {
        if let Some((tag, token)) = seen.filter(|(tag, _)| *tag == mine.tag) {
            self.anchor(Mine { tag, ..mine }, token);
        }
    }

    fn anchor(&self, mine: Mine, token: u32) {
        let Ok(mut inner) = self.inner.try_borrow_mut() else { return };
        // Of two anchors, the later write's (the closer to the next); and any over one that
        // was stale by then, whatever the write counts (they go round).
        let replaces = |a: Anchor| mine.write.wrapping_sub(a.write) < 1 << 31 || mine.at_us.saturating_sub(a.at_us) >= TRUSTED_US;
        if inner.anchor.is_none_or(replaces) {
            inner.anchor = Some(Anchor { write: mine.write, token, at_us: mine.at_us });
        }
    }

    /// Counts `n` writes of the worker's that landed just now and keep no copy (the marks a
    /// write makes first, `super::table`), so that its predictions stay exact.
    pub fn landed(&self, n: usize) {
        if n == 0 {
            return;
        }
        if let Ok(mut inner) = self.inner.try_borrow_mut() {
            inner.writes = inner.writes.wrapping_add(n as u32);
        }
    }

    /// Counts a write of the worker's that landed just now and, if it is of the identity's
    /// home slot ([`Written::home`]), keeps it as the identity's copy in `table`. The engine
    /// tells every write of its local rules here (the marks before it through [`Own::landed`]),
    /// in order; a write not told (the deny cache's, the breaker's, another config's, marks
    /// that landed before a write that missed) makes predictions behind, so they miss, never
    /// ahead.
    pub fn wrote(&self, table: usize, identity: u64, written: Written, now_us: u64) {
        let Written { key, bytes, tag, home } = written;
        let copy = {
            let Ok(mut inner) = self.inner.try_borrow_mut() else { return };
            let write = inner.writes;
            inner.writes = inner.writes.wrapping_add(1);
            if !home || bytes.len() > MAX_SLOT_BYTES || tag == 0 {
                return;
            }
            let token = inner.anchor.filter(|a| fresh(a.at_us, now_us)).map(|a| after(a.token, write.wrapping_sub(a.write)));
            SlotCopy { key, bytes, mine: Mine { tag, write, at_us: now_us }, token }
        };
        self.put_back(table, identity, copy);
    }

    #[cfg(test)]
    fn copies(&self) -> usize {
        self.inner.borrow().places.iter().flatten().count()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::store::{MemStore, SharedStore, StoreError};

    #[test]
    fn tokens_run_from_1_to_the_last_and_round_again() {
        assert_eq!(after(5, 0), 5);
        assert_eq!(after(5, 3), 8);
        assert_eq!(after(u32::MAX, 1), 1, "0 is skipped");
        assert_eq!(after(u32::MAX - 1, 3), 2);
    }

    /// A write of an identity's home slot, as the tables report one.
    fn home(key: &str, bytes: Vec<u8>, tag: u64) -> Written {
        Written { key: key.into(), bytes, tag, home: true }
    }

    /// Writes a slot to `key` and tells the worker, as the tables do.
    fn write(own: &Own, store: &MemStore, key: &str, cas: u32, now: u64) -> Result<u64, StoreError> {
        let tag = own.tag();
        store.set(key, &tag.to_le_bytes(), cas)?;
        own.wrote(0, 7, home(key, tag.to_le_bytes().to_vec(), tag), now);
        Ok(tag)
    }

    #[test]
    fn a_worker_alone_predicts_the_token_of_its_next_write_once_it_has_read_its_own() {
        let (own, store) = (Own::default(), MemStore::default());
        store.set("other", b"x", 0).unwrap();
        write(&own, &store, "k", 0, 10).unwrap();
        let first = own.take(0, 7, 11).unwrap();
        assert_eq!(first.token, None, "nothing read yet: no anchor");
        let (_, token) = store.get("k").unwrap().unwrap();
        own.saw(first.mine, Some((first.mine.tag, token)));
        write(&own, &store, "other", 0, 12).unwrap();
        write(&own, &store, "k", token, 13).unwrap();
        let copy = own.take(0, 7, 14).unwrap();
        assert_eq!(copy.token, Some(store.get("k").unwrap().unwrap().1), "predicted exactly");
        assert!(own.take(0, 7, 14).is_none(), "taken out");
    }

    #[test]
    fn marks_a_worker_wrote_first_are_counted_so_its_next_prediction_lands() {
        let (own, store) = (Own::default(), MemStore::default());
        write(&own, &store, "k", 0, 10).unwrap();
        let first = own.take(0, 7, 11).unwrap();
        let (_, token) = store.get("k").unwrap().unwrap();
        own.saw(first.mine, Some((first.mine.tag, token)));
        // Its next write of the slot is preceded by two marks of its own.
        store.set("m1", b"mark", 0).unwrap();
        store.set("m2", b"mark", 0).unwrap();
        own.landed(2);
        write(&own, &store, "k", token, 12).unwrap();
        let copy = own.take(0, 7, 13).unwrap();
        assert_eq!(copy.token, Some(store.get("k").unwrap().unwrap().1), "predicted exactly");
    }

    #[test]
    fn a_prediction_after_another_writer_is_behind_and_misses() {
        let (own, store) = (Own::default(), MemStore::default());
        write(&own, &store, "k", 0, 10).unwrap();
        let c = own.take(0, 7, 11).unwrap();
        own.saw(c.mine, Some((c.mine.tag, store.get("k").unwrap().unwrap().1)));
        store.set("elsewhere", b"another worker", 0).unwrap();
        write(&own, &store, "k", 0, 12).unwrap();
        let copy = own.take(0, 7, 13).unwrap();
        let held = store.get("k").unwrap().unwrap().1;
        assert!(copy.token.unwrap() < held, "behind, never ahead");
        assert_eq!(store.set("k", b"stale", copy.token.unwrap()), Err(StoreError::CasMismatch));
    }

    #[test]
    fn a_tag_not_its_own_teaches_nothing_and_old_copies_are_not_used() {
        let (own, store) = (Own::default(), MemStore::default());
        write(&own, &store, "k", 0, 10).unwrap();
        let c = own.take(0, 7, 11).unwrap();
        own.saw(c.mine, Some((c.mine.tag ^ 1, 42)));
        own.put_back(0, 7, c);
        write(&own, &store, "k", 0, 12).unwrap();
        assert_eq!(own.take(0, 7, 13).unwrap().token, None);
        write(&own, &store, "k", 0, 20).unwrap();
        assert!(own.take(0, 7, 20 + TRUSTED_US).is_none(), "too old");
        assert!(own.take(1, 7, 21).is_none() && own.take(0, 8, 21).is_none(), "another table or identity");
    }

    #[test]
    fn misses_in_a_row_let_twice_as_many_decisions_pass_up_to_the_most() {
        let own = Own::default();
        let mut passed = Vec::new();
        let mine = Mine { tag: 1, write: 0, at_us: 0 };
        for _ in 0..8 {
            own.miss(0, 7, mine);
            let mut n = 0;
            while !own.may_try() {
                n += 1;
            }
            passed.push(n);
        }
        assert_eq!(passed, [1, 3, 7, 15, 31, 63, 63, 63]);
        assert_eq!((own.missed(0, 8), own.missed(0, 7)), (None, None), "taken by the first ask");
        own.miss(0, 7, mine);
        assert_eq!(own.missed(0, 7), Some(mine));
        own.hit(mine, 1);
        own.miss(0, 7, mine);
        assert!(!own.may_try() && own.may_try(), "a hit starts again from one");
    }

    #[test]
    fn a_stale_anchor_gives_way_even_to_a_write_count_gone_round() {
        let own = Own::default();
        let mine = |write: u32, at_us: u64| Mine { tag: 1, write, at_us };
        own.hit(mine(10, 0), 100);
        own.hit(mine(5, 10), 50);
        assert_eq!(own.inner.borrow().anchor.map(|a| a.token), Some(100), "an earlier write does not replace a later one");
        own.hit(mine(10u32.wrapping_add(3 << 30), TRUSTED_US), 7);
        assert_eq!(own.inner.borrow().anchor.map(|a| a.token), Some(7), "the count went round while the anchor aged");
    }

    #[test]
    fn copies_are_bounded() {
        let (own, store) = (Own::default(), MemStore::default());
        for i in 0..(PLACES as u64 * 4) {
            let tag = own.tag();
            store.set("k", b"v", 0).unwrap();
            own.wrote(0, i, home("k", vec![0; 16], tag), 1);
        }
        own.wrote(0, 1, home("k", vec![0; MAX_SLOT_BYTES + 1], own.tag()), 1);
        assert!(own.copies() <= PLACES);
        assert!(own.take(0, 1, 1).is_none_or(|c| c.bytes.len() <= MAX_SLOT_BYTES));
    }
}
