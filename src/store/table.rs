//! One rule's slot table: a fixed number of shared-data keys, each holding one identity's
//! strategy states, so memory is bounded whatever the number of clients, and exact under
//! concurrency.
//!
//! - Every rule owns `max_clients` slots; an identity hashes to a home slot and probes a few
//!   neighbours.
//! - Each slot value carries its owner (identity hash), the rule's fingerprint and an expiry, so
//!   a slot whose owner went quiet (or whose rule changed) is simply reused.
//! - A slot that does not exist yet is created by a write carrying [`CREATE_TOKEN`], a token
//!   Envoy never hands out for a fresh key: if another worker created it meanwhile, our write
//!   fails as a CAS mismatch instead of silently replacing theirs, and we decide again.

use super::{with_retries, SharedStore, StoreError, CREATE_TOKEN};
use crate::strategy::Outcome;

/// Neighbouring slots an identity may live in. More probes mean fewer evictions when the table
/// is nearly full, at one shared-data read each for new identities.
pub const PROBES: u32 = 4;

const VERSION: u8 = 1;
/// version (1) + fingerprint (4) + identity hash (8) + expiry in µs (8) + limit count (1).
const HEADER_LEN: usize = 22;

/// One rule's table: key prefix, size, and the fingerprint of its strategy and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// `<namespace>:<rule>:`; the slot number follows.
    pub prefix: String,
    pub slots: u32,
    pub fingerprint: u32,
}

/// The decoded content of a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot<'a> {
    fingerprint: u32,
    identity: u64,
    expires_us: u64,
    states: Vec<&'a [u8]>,
}

fn decode(bytes: &[u8]) -> Option<Slot<'_>> {
    if bytes.len() < HEADER_LEN || bytes[0] != VERSION {
        return None;
    }
    let u32_at = |i: usize| bytes.get(i..i + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    let u64_at = |i: usize| bytes.get(i..i + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    let fingerprint = u32_at(1)?;
    let identity = u64_at(5)?;
    let expires_us = u64_at(13)?;
    let count = bytes[21] as usize;
    let mut states = Vec::with_capacity(count);
    let mut at = HEADER_LEN;
    for _ in 0..count {
        let len = bytes.get(at..at + 2).and_then(|b| b.try_into().ok()).map(u16::from_le_bytes)? as usize;
        at += 2;
        states.push(bytes.get(at..at + len)?);
        at += len;
    }
    Some(Slot { fingerprint, identity, expires_us, states })
}

fn encode(fingerprint: u32, identity: u64, expires_us: u64, states: &[&[u8]]) -> Vec<u8> {
    let body: usize = states.iter().map(|s| 2 + s.len()).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + body);
    out.push(VERSION);
    out.extend_from_slice(&fingerprint.to_le_bytes());
    out.extend_from_slice(&identity.to_le_bytes());
    out.extend_from_slice(&expires_us.to_le_bytes());
    out.push(states.len().min(u8::MAX as usize) as u8);
    for s in states.iter().take(u8::MAX as usize) {
        // Strategy states are tens of bytes (a sliding log is capped); clamp rather than trust.
        let len = s.len().min(u16::MAX as usize);
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.extend_from_slice(&s[..len]);
    }
    out
}

/// What a slot holds for the caller.
enum Found {
    /// The identity's own live slot.
    Own { key: String, cas: u32, value: Vec<u8> },
    /// A slot that may be taken: never written (`cas` None), expired, or evicted.
    Free { key: String, cas: Option<u32> },
}

/// The outcome of every limit of a rule, in order.
pub type Outcomes = Vec<Outcome>;

/// What [`Table::update`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated {
    pub outcomes: Outcomes,
    /// A slot that had never been written was created (the table grew by one key).
    pub created: bool,
}

/// A decision taken on a slot's content as read, not yet stored (see [`Table::prepare`]).
#[derive(Debug)]
pub struct Prepared {
    /// One outcome per limit.
    pub outcomes: Outcomes,
    write: Option<Write>,
}

#[derive(Debug)]
struct Write {
    key: String,
    /// The token read; `None` for a slot never written.
    cas: Option<u32>,
    bytes: Vec<u8>,
}

impl Prepared {
    /// Committing it creates a slot that had never been written (the table grows by one key).
    pub fn created(&self) -> bool {
        self.write.as_ref().is_some_and(|w| w.cas.is_none())
    }
}

impl Table {
    fn key(&self, slot: u32) -> String {
        format!("{}{}", self.prefix, slot)
    }

    fn locate(&self, store: &impl SharedStore, identity: u64, now_us: u64) -> Result<Found, StoreError> {
        let slots = self.slots.max(1);
        let home = (identity % u64::from(slots)) as u32;
        // The slot to take if the identity has none: the first free one, else the one whose
        // owner expires first (evicting it forgets that owner's count, which only the table's
        // size can prevent; `max_clients` is that size).
        // Rank 0 = free (expired, foreign or unreadable); otherwise the owner's expiry.
        let mut take: Option<(u64, String, u32)> = None;
        for probe in 0..PROBES.min(slots) {
            let key = self.key((home + probe) % slots);
            let Some((value, cas)) = store.get(&key)? else {
                // Slots are taken first-free in probe order and never deleted, so the identity
                // cannot live beyond a slot that was never written.
                return Ok(match take {
                    Some((0, key, cas)) => Found::Free { key, cas: Some(cas) },
                    _ => Found::Free { key, cas: None },
                });
            };
            let rank = match decode(&value) {
                Some(s) if s.fingerprint == self.fingerprint && s.expires_us > now_us => {
                    if s.identity == identity {
                        return Ok(Found::Own { key, cas, value });
                    }
                    s.expires_us
                }
                _ => 0,
            };
            if take.as_ref().is_none_or(|(best, _, _)| rank < *best) {
                take = Some((rank, key, cas));
            }
        }
        match take {
            Some((_, key, cas)) => Ok(Found::Free { key, cas: Some(cas) }),
            None => Err(StoreError::Unavailable("empty slot table".into())),
        }
    }

    /// Runs `decide` on the identity's states (one per limit) as the store holds them now,
    /// without writing: [`Table::commit`] stores the result if nobody wrote the slot meanwhile.
    /// `decide` receives the current states (empty slices for a fresh identity) and returns one
    /// outcome per limit plus whether to write at all.
    pub fn prepare<F>(&self, store: &impl SharedStore, identity: u64, now_us: u64, decide: F) -> Result<Prepared, StoreError>
    where
        F: FnOnce(&[&[u8]]) -> (Outcomes, bool),
    {
        let (key, cas, value) = match self.locate(store, identity, now_us)? {
            Found::Own { key, cas, value } => (key, Some(cas), Some(value)),
            Found::Free { key, cas } => (key, cas, None),
        };
        let current: Vec<&[u8]> = match value.as_deref().and_then(decode) {
            Some(slot) => slot.states,
            None => Vec::new(),
        };
        let (outcomes, write) = decide(&current);
        if !write {
            return Ok(Prepared { outcomes, write: None });
        }
        let states: Vec<&[u8]> = outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| match &o.state {
                Some(s) => s.as_slice(),
                None => current.get(i).copied().unwrap_or(&[]),
            })
            .collect();
        let ttl = outcomes.iter().map(|o| o.ttl_us).max().unwrap_or(0).max(1);
        let bytes = encode(self.fingerprint, identity, now_us.saturating_add(ttl), &states);
        Ok(Prepared { outcomes, write: Some(Write { key, cas, bytes }) })
    }

    /// Stores what [`Table::prepare`] decided. [`StoreError::CasMismatch`] means another worker
    /// wrote the slot after it was read (the decision may no longer hold): nothing was written,
    /// and the caller decides again on what is there now.
    pub fn commit(&self, store: &impl SharedStore, prepared: &Prepared) -> Result<(), StoreError> {
        match &prepared.write {
            Some(w) => store.set(&w.key, &w.bytes, w.cas.unwrap_or(CREATE_TOKEN)),
            None => Ok(()),
        }
    }

    /// [`Table::prepare`] then [`Table::commit`], deciding again after a lost race: `decide`
    /// may run several times.
    pub fn update<F>(&self, store: &impl SharedStore, identity: u64, now_us: u64, mut decide: F) -> Result<Updated, StoreError>
    where
        F: FnMut(&[&[u8]]) -> (Outcomes, bool),
    {
        with_retries(&self.prefix, || {
            let prepared = self.prepare(store, identity, now_us, &mut decide)?;
            self.commit(store, &prepared)?;
            let created = prepared.created();
            Ok(Updated { outcomes: prepared.outcomes, created })
        })
    }

    /// Reads the identity's current states without writing (used to pre-check multi-rule
    /// requests so that a request denied by one rule consumes nothing from the others).
    pub fn peek<F, T>(&self, store: &impl SharedStore, identity: u64, now_us: u64, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&[&[u8]]) -> T,
    {
        match self.locate(store, identity, now_us)? {
            Found::Own { value, .. } => {
                let states = decode(&value).map(|s| s.states).unwrap_or_default();
                Ok(f(&states))
            }
            Found::Free { .. } => Ok(f(&[])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use crate::strategy::Decision;

    fn table(slots: u32) -> Table {
        Table { prefix: "t:r:".into(), slots, fingerprint: 7 }
    }

    /// A counter "strategy": state is a u64 count, admits up to `limit`.
    fn count_to(limit: u64) -> impl FnMut(&[&[u8]]) -> (Outcomes, bool) {
        move |states: &[&[u8]]| {
            let n = states.first().and_then(|s| <[u8; 8]>::try_from(*s).ok()).map(u64::from_le_bytes).unwrap_or(0);
            let allowed = n < limit;
            let state = allowed.then(|| (n + 1).to_le_bytes().to_vec());
            let decision = Decision { allowed, limit, remaining: limit - n.min(limit), ..Default::default() };
            (vec![Outcome { decision, state, ttl_us: 1_000_000 }], allowed)
        }
    }

    fn count(store: &impl SharedStore, t: &Table, id: u64, now: u64) -> u64 {
        t.peek(store, id, now, |s| s.first().and_then(|s| <[u8; 8]>::try_from(*s).ok()).map(u64::from_le_bytes).unwrap_or(0))
            .unwrap()
    }

    #[test]
    fn counts_per_identity_and_expires() {
        let store = MemStore::default();
        let t = table(16);
        assert!(t.update(&store, 1, 0, count_to(5)).unwrap().created, "first write creates the slot");
        for _ in 0..2 {
            assert!(!t.update(&store, 1, 0, count_to(5)).unwrap().created);
        }
        t.update(&store, 2, 0, count_to(5)).unwrap();
        assert_eq!(count(&store, &t, 1, 0), 3);
        assert_eq!(count(&store, &t, 2, 0), 1);
        // After the TTL the slot is reused as fresh.
        assert_eq!(count(&store, &t, 1, 1_000_001), 0);
    }

    #[test]
    fn memory_is_bounded_by_the_table() {
        let store = MemStore::default();
        let t = table(100);
        for id in 0..10_000u64 {
            t.update(&store, id.wrapping_mul(0x9E37_79B9_7F4A_7C15), 0, count_to(5)).unwrap();
        }
        let (keys, _) = store.size();
        assert!(keys <= 100, "{keys} keys for a 100-slot table");
    }

    #[test]
    fn a_stale_create_does_not_clobber_a_slot_created_meanwhile() {
        // Worker B read "absent", then worker A created the slot and counted once; B's create
        // must fail as a mismatch rather than overwrite A's count.
        let store = MemStore::default();
        let t = table(8);
        t.update(&store, 42, 0, count_to(5)).unwrap();
        let key = t.key((42 % 8) as u32);
        assert_eq!(store.set(&key, b"stale", CREATE_TOKEN), Err(StoreError::CasMismatch));
        assert_eq!(count(&store, &t, 42, 0), 1);
    }

    /// A store whose first reads say "absent" while another writer slips in before our write:
    /// the race the absent-key rule allows, forced deterministically.
    struct Racing<'a> {
        inner: &'a MemStore,
        t: &'a Table,
        remaining_races: std::cell::Cell<u32>,
    }

    impl SharedStore for Racing<'_> {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            let before = self.inner.get(key)?;
            if self.remaining_races.get() > 0 {
                self.remaining_races.set(self.remaining_races.get() - 1);
                // Another worker updates the same identity right after our read.
                self.t.update(self.inner, 9, 0, count_to(1000)).map_err(|e| StoreError::Unavailable(e.to_string()))?;
            }
            Ok(before)
        }
        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn no_update_is_lost_when_creation_and_updates_race() {
        let store = MemStore::default();
        let t = table(8);
        let racing = Racing { inner: &store, t: &t, remaining_races: std::cell::Cell::new(3) };
        t.update(&racing, 9, 0, count_to(1000)).unwrap();
        // 3 racing updates + ours, none lost.
        assert_eq!(count(&store, &t, 9, 0), 4);
    }

    #[test]
    fn corrupt_or_foreign_slots_are_reused() {
        let store = MemStore::default();
        let t = table(1);
        store.set("t:r:0", b"\x01garbage", 0).unwrap();
        t.update(&store, 5, 0, count_to(5)).unwrap();
        assert_eq!(count(&store, &t, 5, 0), 1);
        // A rule whose fingerprint changed does not read the old state.
        let t2 = Table { fingerprint: 8, ..t.clone() };
        assert_eq!(count(&store, &t2, 5, 0), 0);
    }

    #[test]
    fn a_full_table_evicts_the_slot_that_expires_first() {
        let store = MemStore::default();
        let t = table(2);
        t.update(&store, 0, 0, count_to(5)).unwrap(); // slot 0, expires at 1s
        t.update(&store, 1, 500_000, count_to(5)).unwrap(); // slot 1, expires at 1.5s
        t.update(&store, 2, 600_000, count_to(5)).unwrap(); // evicts identity 0
        assert_eq!(count(&store, &t, 0, 600_000), 0);
        assert_eq!(count(&store, &t, 1, 600_000), 1);
        assert_eq!(count(&store, &t, 2, 600_000), 1);
    }

    #[test]
    fn a_prepared_decision_is_not_stored_over_a_write_made_meanwhile() {
        let store = MemStore::default();
        let t = table(8);
        t.update(&store, 3, 0, count_to(5)).unwrap();
        let prepared = t.prepare(&store, 3, 0, count_to(5)).unwrap();
        // Another worker counts the identity after our read.
        t.update(&store, 3, 0, count_to(5)).unwrap();
        assert_eq!(t.commit(&store, &prepared), Err(StoreError::CasMismatch));
        assert_eq!(count(&store, &t, 3, 0), 2, "the stale decision wrote nothing");
        // The same for a slot that did not exist when we read it.
        let prepared = t.prepare(&store, 4, 0, count_to(5)).unwrap();
        assert!(prepared.created());
        t.update(&store, 4, 0, count_to(5)).unwrap();
        assert_eq!(t.commit(&store, &prepared), Err(StoreError::CasMismatch));
        assert_eq!(count(&store, &t, 4, 0), 1);
        // Uncontended, it is stored as decided.
        let prepared = t.prepare(&store, 4, 0, count_to(5)).unwrap();
        assert!(!prepared.created());
        t.commit(&store, &prepared).unwrap();
        assert_eq!(count(&store, &t, 4, 0), 2);
    }
}
