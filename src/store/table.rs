//! One slot table: a fixed number of shared-data keys, each holding one identity's strategy
//! states for every rule that shares the table, so memory is bounded whatever the number of
//! clients, and exact under concurrency.
//!
//! - A table holds `max_clients` slots; an identity hashes to a home slot and probes a few
//!   neighbours.
//! - Local rules that count the same identity share one table (see `engine::rule`): a request
//!   they all apply to reads one slot and writes it once, instead of once per rule.
//! - Each slot value carries its owner (identity hash) and an expiry, then one entry per rule
//!   (the rule's fingerprint, the entry's own expiry, its states), so a slot whose owner went
//!   quiet is simply reused, and a rule that changed finds nothing of its old state.
//! - A write keeps every live entry it did not decide, whichever rule wrote it: another config
//!   may count in the same slot (a WebSocket connection keeps the config it was opened with
//!   across updates; two filter configs may share a namespace), so an entry lives until its own
//!   expiry, never shorter because a config without its rule wrote the slot.
//! - A slot that does not exist yet is created by a write carrying [`CREATE_TOKEN`], a token
//!   Envoy never hands out for a fresh key: if another worker created it meanwhile, our write
//!   fails as a CAS mismatch instead of silently replacing theirs, and we decide again.
//! - An identity lives in one slot, however workers interleave and whatever their clocks say.
//!   A write to a slot beyond the identity's home relies on each slot before it staying
//!   untaken: a worker that saw one of them free (its owner expired on a clock running ahead)
//!   would place the identity there too, and one of the two counts would be lost. So such a
//!   write first marks each of them (an entry of [`MARK_ID`] living [`GUARD_US`]), a write like
//!   any other, which misses if the slot was taken meanwhile; a marked slot is never taken as
//!   free, and one bearing the identity's hash stays its own while marked (a mark names the
//!   owner only while its count lives). Only when every probe is held, by a count or a mark,
//!   is that given up: eviction takes a slot only marked first, keeps the marks it finds and
//!   makes none.

use super::own::{Mine, SlotCopy};
use super::{with_retries, SharedStore, StoreError, CREATE_TOKEN};
use crate::clock::WORKER_SKEW_US;
use crate::strategy::Outcome;

/// Neighbouring slots an identity may live in. More probes mean fewer evictions when the table
/// is nearly full, at one shared-data read each for new identities.
pub const PROBES: u32 = 4;

/// The id of a mark's entry (rules' entry ids are never 0: `engine::rule`).
pub const MARK_ID: u32 = 0;
/// The owner a slot only marked names. An identity hashing to it (one in 2^64) is not given
/// such a slot as its own.
const NOBODY: u64 = 0;
/// How long a mark keeps a slot from being taken; one younger than half of it is not renewed.
/// Far longer than workers' clocks may disagree ([`WORKER_SKEW_US`]) plus the time between a
/// worker's read of a slot and its write of the next, so a slot a write relies on is never
/// seen free before that write has landed.
pub const GUARD_US: u64 = 20 * WORKER_SKEW_US;

const VERSION: u8 = 3;
/// A slot's header: version (1) + identity hash (8) + expiry in µs (8) + the writer's tag (8)
/// + entry count (1); where each field starts.
const IDENTITY_AT: usize = 1;
const EXPIRES_AT: usize = 9;
const TAG_AT: usize = 17;
const COUNT_AT: usize = 25;
const HEADER_LEN: usize = 26;
/// An entry: rule fingerprint (4) + expiry in µs (8) + state count (1), then each state as a
/// u16 length and its bytes.
const ENTRY_HEADER_LEN: usize = 13;

/// A rule's view of a table: key prefix, size, and the entry the rule reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// `<namespace>:identity#<hash>:` for a table rules share, `<namespace>:<rule>:` for a
    /// rule's own; the slot number follows.
    pub prefix: String,
    pub slots: u32,
    /// The entry this rule's decisions read and write: its fingerprint.
    pub fingerprint: u32,
}

/// One rule's entry in a slot, read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry<'a> {
    id: u32,
    expires_us: u64,
    /// How many states follow.
    count: usize,
    /// The states, each a u16 length and its bytes.
    states: &'a [u8],
    /// The whole entry as stored, copied as is when a write leaves it alone.
    raw: &'a [u8],
}

impl<'a> Entry<'a> {
    /// Reads the entry at the start of `bytes`: `None` if it runs past their end.
    fn at(bytes: &'a [u8]) -> Option<Self> {
        let id = u32_at(bytes, 0)?;
        let expires_us = u64_at(bytes, 4)?;
        let count = *bytes.get(12)? as usize;
        let mut at = ENTRY_HEADER_LEN;
        for _ in 0..count {
            at += 2 + usize::from(u16_at(bytes, at)?);
        }
        Some(Entry { id, expires_us, count, states: bytes.get(ENTRY_HEADER_LEN..at)?, raw: bytes.get(..at)? })
    }

    /// State `i` (one per limit), empty past the last.
    fn state(&self, i: usize) -> &'a [u8] {
        let mut rest = self.states;
        for n in 0..self.count.min(i + 1) {
            let Some(len) = u16_at(rest, 0) else { break };
            let end = 2 + usize::from(len);
            if n == i {
                return rest.get(2..end).unwrap_or(&[]);
            }
            rest = rest.get(end..).unwrap_or(&[]);
        }
        &[]
    }

    fn all_states(&self) -> Vec<&'a [u8]> {
        (0..self.count).map(|i| self.state(i)).collect()
    }
}

/// A slot's header and its entries, checked to lie within the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot<'a> {
    identity: u64,
    expires_us: u64,
    /// The write that made it ([`super::own`]; 0: a writer that keeps no copies).
    tag: u64,
    count: usize,
    entries: &'a [u8],
}

impl<'a> Slot<'a> {
    fn entries(&self) -> impl Iterator<Item = Entry<'a>> {
        let mut rest = self.entries;
        (0..self.count).map_while(move |_| {
            let e = Entry::at(rest)?;
            rest = rest.get(e.raw.len()..).unwrap_or(&[]);
            Some(e)
        })
    }

    /// Its rules' entries live at `now_us`: its owner's counts.
    fn counts(&self, now_us: u64) -> impl Iterator<Item = Entry<'a>> {
        self.entries().filter(move |e| e.id != MARK_ID && e.expires_us > now_us)
    }

    /// Its marks live at `now_us` (a slot carries one at most).
    fn marks(&self, now_us: u64) -> impl Iterator<Item = Entry<'a>> {
        self.entries().filter(move |e| e.id == MARK_ID && e.expires_us > now_us)
    }
}

fn u16_at(bytes: &[u8], i: usize) -> Option<u16> {
    bytes.get(i..i + 2).and_then(|b| b.try_into().ok()).map(u16::from_le_bytes)
}

fn u32_at(bytes: &[u8], i: usize) -> Option<u32> {
    bytes.get(i..i + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes)
}

fn u64_at(bytes: &[u8], i: usize) -> Option<u64> {
    bytes.get(i..i + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
}

fn decode(bytes: &[u8]) -> Option<Slot<'_>> {
    if bytes.len() < HEADER_LEN || bytes[0] != VERSION {
        return None;
    }
    let slot = Slot {
        identity: u64_at(bytes, IDENTITY_AT)?,
        expires_us: u64_at(bytes, EXPIRES_AT)?,
        tag: u64_at(bytes, TAG_AT)?,
        count: bytes[COUNT_AT] as usize,
        entries: &bytes[HEADER_LEN..],
    };
    // A slot whose entries run past its end is no slot: nothing of it is read.
    (slot.entries().count() == slot.count).then_some(slot)
}

fn encode_entry<'s>(out: &mut Vec<u8>, id: u32, expires_us: u64, states: impl ExactSizeIterator<Item = &'s [u8]>) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&expires_us.to_le_bytes());
    out.push(states.len().min(u8::MAX as usize) as u8);
    for s in states.take(u8::MAX as usize) {
        // Strategy states are tens of bytes (a sliding log is capped); clamp rather than trust.
        let len = s.len().min(u16::MAX as usize);
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.extend_from_slice(&s[..len]);
    }
}

/// A slot being written: its header, then its entries, the header's expiry and entry count
/// following them.
struct Writing {
    bytes: Vec<u8>,
    expires_us: u64,
    count: usize,
}

impl Writing {
    /// A slot of `identity`, made by the write tagged `tag`, with no entry yet.
    fn new(identity: u64, tag: u64, capacity: usize) -> Self {
        let mut bytes = Vec::with_capacity(capacity);
        bytes.push(VERSION);
        bytes.extend_from_slice(&identity.to_le_bytes());
        // The expiry and the entry count are set once every entry is written.
        bytes.extend_from_slice(&[0; 8]);
        bytes.extend_from_slice(&tag.to_le_bytes());
        bytes.push(0);
        Writing { bytes, expires_us: 0, count: 0 }
    }

    /// An entry made of rule `id`'s states, living until `expires_us`.
    fn entry<'s>(&mut self, id: u32, expires_us: u64, states: impl ExactSizeIterator<Item = &'s [u8]>) {
        encode_entry(&mut self.bytes, id, expires_us, states);
        self.expires_us = self.expires_us.max(expires_us);
        self.count += 1;
    }

    /// Entries as stored, up to 255 entries in all.
    fn keep<'e>(&mut self, entries: impl IntoIterator<Item = Entry<'e>>) {
        for e in entries {
            if self.count >= u8::MAX as usize {
                break;
            }
            self.bytes.extend_from_slice(e.raw);
            self.expires_us = self.expires_us.max(e.expires_us);
            self.count += 1;
        }
    }

    fn done(mut self) -> Vec<u8> {
        self.bytes[EXPIRES_AT..TAG_AT].copy_from_slice(&self.expires_us.to_le_bytes());
        self.bytes[COUNT_AT] = self.count.min(u8::MAX as usize) as u8;
        self.bytes
    }
}

/// `value` (a slot as read) marked until [`GUARD_US`] from `now_us`: its owner and live
/// entries kept, a mark it carried renewed, and no writer's tag (its owner's worker must not
/// take this write for one of its own: `super::own`).
fn marked(value: &[u8], now_us: u64) -> Vec<u8> {
    let slot = decode(value);
    // The owner stays only with a live count: a mark must not hand back a slot its owner left
    // (it may count elsewhere now).
    let owner = slot.filter(|s| Table::live(s, now_us)).map_or(NOBODY, |s| s.identity);
    let mut w = Writing::new(owner, 0, value.len() + ENTRY_HEADER_LEN);
    w.entry(MARK_ID, now_us.saturating_add(GUARD_US), std::iter::empty());
    w.keep(slot.iter().flat_map(|s| s.counts(now_us)));
    w.done()
}

/// The live entries of the identity's slot, as a decision reads them.
#[derive(Debug)]
pub struct Held<'a> {
    slot: Option<Slot<'a>>,
    now_us: u64,
}

impl<'a> Held<'a> {
    /// The live entries at `now_us` of a slot read earlier (`None`: there was none).
    pub fn of(value: Option<&'a [u8]>, now_us: u64) -> Self {
        Table::held(value, now_us)
    }

    fn live(&self) -> impl Iterator<Item = Entry<'a>> + '_ {
        self.slot.iter().flat_map(|s| s.entries()).filter(|e| e.expires_us > self.now_us)
    }

    fn entry(&self, id: u32) -> Option<Entry<'a>> {
        self.live().find(|e| e.id == id)
    }

    /// State `limit` of rule `id`, empty for a rule (or a limit) the slot holds nothing of.
    pub fn state(&self, id: u32, limit: usize) -> &'a [u8] {
        self.entry(id).map_or(&[], |e| e.state(limit))
    }

    /// Every state of rule `id`, one per limit.
    fn states(&self, id: u32) -> Vec<&'a [u8]> {
        self.entry(id).map(|e| e.all_states()).unwrap_or_default()
    }
}

/// A decision on a slot's entries (see [`Table::prepare_entries`]).
type Decide<'d> = &'d mut dyn FnMut(&Held<'_>) -> (Decided, bool);

/// What a slot holds for the caller, and the slots probed before it, which a write there must
/// mark first.
enum Found {
    /// The identity's own live slot.
    Own { key: String, cas: u32, value: Vec<u8>, tag: u64, home: bool, passed: Vec<Probed> },
    /// A slot that may be taken: never written (`cas` None), expired, or evicted (`evicted`:
    /// the slot as read, whose marks the write keeps, and whether it held a live count).
    Free { key: String, cas: Option<u32>, home: bool, passed: Vec<Probed>, evicted: Option<(Vec<u8>, bool)> },
}

/// The rank of a free slot ([`Probed::rank`]).
const FREE: (u8, u64) = (0, 0);
/// The first part of the rank of a slot holding a live count.
const COUNTED: u8 = 2;

/// A slot read while looking for the identity's.
struct Probed {
    key: String,
    cas: u32,
    value: Vec<u8>,
    /// Which to take first: a free slot (neither counted in nor marked), else one only marked,
    /// else the live count that expires first.
    rank: (u8, u64),
    /// Its mark lives long enough that a write relying on it need not renew it.
    guarded: bool,
}

/// The outcome of every limit of a rule, in order.
pub type Outcomes = Vec<Outcome>;

/// Each rule decided on one slot (its fingerprint) and its outcomes, in the order decided.
pub type Decided = Vec<(u32, Outcomes)>;

/// What [`Table::update`] did: the outcomes (of one rule, or one list per rule decided).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated<T = Outcomes> {
    pub outcomes: T,
    /// A slot that had never been written was created (the table grew by one key).
    pub created: bool,
    /// The slot was taken from another identity whose count still lived (every probe held):
    /// that count is forgotten.
    pub evicted: bool,
}

/// A decision taken on a slot's content as read (or as the worker wrote it), not yet stored
/// (see [`Table::prepare_entries`]).
#[derive(Debug)]
pub struct Prepared {
    /// Each rule decided (its fingerprint) and one outcome per limit, in the order decided.
    pub outcomes: Decided,
    write: Option<Write>,
    /// Marks written before `write` (see the module's doc).
    marks: Vec<Write>,
    /// The slot the decision stood on, when the caller may want it: as read, when nothing is
    /// to be written (a denial: see [`Prepared::take_read`]), or the worker's copy, which a
    /// write on it would be taken back to ([`Prepared::take_copied`]).
    read: Option<Vec<u8>>,
    /// What the decision stood on.
    basis: Basis,
}

/// A slot written by a decision committed.
#[derive(Debug)]
pub struct Written {
    pub key: String,
    pub bytes: Vec<u8>,
    /// The tag the slot carries.
    pub tag: u64,
    /// The key is the identity's home slot, the first a read probes: only such a slot's copy
    /// decides ([`Table::prepare_on_copy`]).
    pub home: bool,
}

/// What a prepared decision stood on, as the worker's copies need it ([`super::own`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Basis {
    /// A read that found no slot of the identity's.
    Nothing,
    /// A read of the identity's slot: its tag and token.
    Read { tag: u64, token: u32 },
    /// The worker's copy of its own write instead of a read ([`Table::prepare_on_copy`]), and
    /// the token predicted for that write.
    Copy { mine: Mine, token: u32 },
}

#[derive(Debug)]
struct Write {
    key: String,
    /// The token read; `None` for a slot never written.
    cas: Option<u32>,
    bytes: Vec<u8>,
    /// The key is the identity's home slot, the first a read probes.
    home: bool,
    /// The slot is another identity's, whose live count this write forgets.
    evicts: bool,
}

impl Prepared {
    /// Committing it creates a slot that had never been written (the table grows by one key).
    pub fn created(&self) -> bool {
        self.write.as_ref().is_some_and(|w| w.cas.is_none())
    }

    /// Committing it forgets another identity's live count, its slot taken because every probe
    /// was held (a slot only marked holds no count: taking it forgets nothing).
    pub fn evicts(&self) -> bool {
        self.write.as_ref().is_some_and(|w| w.evicts)
    }

    /// The slot the decision was taken on, when nothing is to be written (`None` if the
    /// identity had no slot): what a worker remembers of a denial.
    pub fn take_read(&mut self) -> Option<Vec<u8>> {
        if self.write.is_some() {
            return None;
        }
        self.read.take()
    }

    /// The worker's copy the decision stood on (`None`: it stood on a read).
    pub fn take_copied(&mut self) -> Option<Vec<u8>> {
        if !matches!(self.basis, Basis::Copy { .. }) {
            return None;
        }
        self.read.take()
    }

    /// What was written, once committed.
    pub fn into_written(self) -> Option<Written> {
        let w = self.write?;
        let tag = u64_at(&w.bytes, TAG_AT)?;
        Some(Written { key: w.key, bytes: w.bytes, tag, home: w.home })
    }

    /// The tag and token of the identity's slot, as read.
    pub fn seen(&self) -> Option<(u64, u32)> {
        match self.basis {
            Basis::Read { tag, token } => Some((tag, token)),
            _ => None,
        }
    }

    /// The worker's write a decision on its copy stood on, and the token predicted for it.
    pub fn guessed(&self) -> Option<(Mine, u32)> {
        match self.basis {
            Basis::Copy { mine, token } => Some((mine, token)),
            _ => None,
        }
    }

    /// Whether committing it writes the slot.
    pub fn writes(&self) -> bool {
        self.write.is_some()
    }

    /// The marks committing it writes before the slot.
    pub fn marks(&self) -> usize {
        self.marks.len()
    }
}

impl Table {
    fn key(&self, slot: u32) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 10);
        key.push_str(&self.prefix);
        key.push_str(itoa::Buffer::new().format(slot));
        key
    }

    /// Whether a decoded slot is its owner's live slot: not expired, and holding a live entry
    /// of a rule (a mark alone makes nobody's slot).
    fn live(s: &Slot<'_>, now_us: u64) -> bool {
        s.expires_us > now_us && s.counts(now_us).next().is_some()
    }

    /// The expiry of the slot's live mark, if it carries one.
    fn mark(s: &Slot<'_>, now_us: u64) -> Option<u64> {
        if s.expires_us <= now_us {
            return None;
        }
        s.marks(now_us).next().map(|e| e.expires_us)
    }

    /// Finds the identity's slot, or the slot it is to take, reading its probes in order.
    fn locate(&self, store: &dyn SharedStore, identity: u64, now_us: u64) -> Result<Found, StoreError> {
        let slots = self.slots.max(1);
        let home = (identity % u64::from(slots)) as u32;
        let guards = |until: u64| until >= now_us.saturating_add(GUARD_US / 2);
        let mut read: Vec<Probed> = Vec::new();
        for probe in 0..PROBES.min(slots) {
            let key = self.key((home + probe) % slots);
            let Some((value, cas)) = store.get(&key)? else {
                // Slots are taken first-free in probe order and never deleted, so the identity
                // cannot live beyond a slot that was never written.
                return Ok(match read.iter().position(|p| p.rank == FREE) {
                    Some(at) => Self::take(read, at),
                    None => Found::Free { key, cas: None, home: probe == 0, passed: read, evicted: None },
                });
            };
            let (rank, guarded) = match decode(&value) {
                // Its own slot, even if only marked now: a worker whose clock runs behind may
                // still count in it, so the identity must not go on beyond it.
                Some(s)
                    if s.identity == identity
                        && (Self::live(&s, now_us) || (identity != NOBODY && Self::mark(&s, now_us).is_some())) =>
                {
                    let tag = s.tag;
                    return Ok(Found::Own { key, cas, value, tag, home: probe == 0, passed: read });
                }
                Some(s) => match (Self::live(&s, now_us), Self::mark(&s, now_us)) {
                    (true, mark) => ((COUNTED, s.expires_us), mark.is_some_and(guards)),
                    (false, Some(until)) => ((1, until), guards(until)),
                    (false, None) => (FREE, false),
                },
                None => (FREE, false),
            };
            read.push(Probed { key, cas, value, rank, guarded });
        }
        // The first free slot, else one only marked, else the one whose owner expires first
        // (evicting it forgets that owner's count, which only the table's size can prevent;
        // `max_clients` is that size).
        match read.iter().enumerate().map(|(i, p)| (p.rank, i)).min() {
            Some((FREE, at)) => Ok(Self::take(read, at)),
            Some((_, at)) => Ok(Self::evict(read, at)),
            None => Err(StoreError::Unavailable("empty slot table".into())),
        }
    }

    /// Taking the free slot `read[at]`, after marking the slots before it.
    fn take(mut read: Vec<Probed>, at: usize) -> Found {
        let taken = read.remove(at);
        read.truncate(at);
        Found::Free { key: taken.key, cas: Some(taken.cas), home: at == 0, passed: read, evicted: None }
    }

    /// Evicting `read[at]`, every probe held: its marks go on (others' writes beyond rely on
    /// them), and none is made. A full table already forgets counts; marking there would only
    /// leave it without a slot to give.
    fn evict(mut read: Vec<Probed>, at: usize) -> Found {
        #[cfg(any(test, feature = "fuzzing"))]
        EVICTIONS.with(|n| n.set(n.get() + 1));
        let victim = read.swap_remove(at);
        let evicted = Some((victim.value, victim.rank.0 == COUNTED));
        Found::Free { key: victim.key, cas: Some(victim.cas), home: at == 0, passed: Vec::new(), evicted }
    }

    /// The marks a write beyond the slots `passed` must make first: on each, unless its mark
    /// lives long enough.
    fn marks(passed: Vec<Probed>, now_us: u64) -> Vec<Write> {
        if passed.is_empty() {
            return Vec::new();
        }
        passed
            .into_iter()
            .filter(|p| !p.guarded)
            .map(|p| Write { bytes: marked(&p.value, now_us), key: p.key, cas: Some(p.cas), home: false, evicts: false })
            .collect()
    }

    /// The live entries in `value`.
    fn held(value: Option<&[u8]>, now_us: u64) -> Held<'_> {
        Held { slot: value.and_then(decode), now_us }
    }

    /// Runs `decide` on the identity's slot as the store holds it now, without writing:
    /// [`Table::commit`] stores the result if nobody wrote the slot meanwhile. `decide` reads
    /// each rule's states from the [`Held`] entries and returns, for each rule it decided (by
    /// fingerprint), one outcome per limit, plus whether to write at all. The entries of rules
    /// it did not decide are kept as they are.
    /// The slot written carries `tag` (see [`super::own`]).
    pub fn prepare_entries<F>(
        &self,
        store: &impl SharedStore,
        identity: u64,
        now_us: u64,
        tag: u64,
        mut decide: F,
    ) -> Result<Prepared, StoreError>
    where
        F: FnMut(&Held<'_>) -> (Decided, bool),
    {
        let (key, cas, value, basis, home, passed, evicted) = match self.locate(store, identity, now_us)? {
            Found::Own { key, cas, value, tag, home, passed } => {
                (key, Some(cas), Some(value), Basis::Read { tag, token: cas }, home, passed, None)
            }
            Found::Free { key, cas, home, passed, evicted } => (key, cas, None, Basis::Nothing, home, passed, evicted),
        };
        let (outcomes, writing) = self.build(value.as_deref(), identity, now_us, tag, &mut decide);
        let Some(mut writing) = writing else {
            return Ok(Prepared { outcomes, write: None, marks: Vec::new(), read: value, basis });
        };
        if let Some(victim) = evicted.as_ref().and_then(|(value, _)| decode(value)) {
            writing.keep(victim.marks(now_us));
        }
        let evicts = evicted.is_some_and(|(_, counted)| counted);
        let write = Write { key, cas, bytes: writing.done(), home, evicts };
        Ok(Prepared { outcomes, write: Some(write), marks: Self::marks(passed, now_us), read: None, basis })
    }

    /// [`Table::prepare_entries`] on the worker's copy of the identity's slot instead of a read:
    /// committed with the copy's predicted token, it lands only if the slot is still the copy.
    /// The copy comes back, to read the slot instead, when the decision writes nothing (a
    /// denial on a copy, which may be stale) and when this worker's read would not find the
    /// copy's slot: a copy is used only of the identity's home slot (the first a read probes)
    /// while it lives. A worker that found it expired would take that same key (the first free
    /// place), and the write would miss.
    pub fn prepare_on_copy<F>(
        &self,
        copy: SlotCopy,
        identity: u64,
        now_us: u64,
        tag: u64,
        mut decide: F,
    ) -> Result<Prepared, SlotCopy>
    where
        F: FnMut(&Held<'_>) -> (Decided, bool),
    {
        let Some(token) = copy.token else { return Err(copy) };
        // The worker keeps copies of home slots only ([`Written::home`]); a slot's expiry is its
        // latest entry's, its owner's or a mark's, so this is a read's test of its own slot.
        let live = copy.bytes.first() == Some(&VERSION)
            && u64_at(&copy.bytes, IDENTITY_AT) == Some(identity)
            && u64_at(&copy.bytes, EXPIRES_AT).is_some_and(|expires_us| expires_us > now_us);
        if !live {
            return Err(copy);
        }
        let (outcomes, Some(writing)) = self.build(Some(&copy.bytes), identity, now_us, tag, &mut decide) else {
            return Err(copy);
        };
        let write = Write { key: copy.key, cas: Some(token), bytes: writing.done(), home: true, evicts: false };
        let basis = Basis::Copy { mine: copy.mine, token };
        Ok(Prepared { outcomes, write: Some(write), marks: Vec::new(), read: Some(copy.bytes), basis })
    }

    /// Takes back a write of the worker's made on its copy (`written`, the copy as it is now),
    /// if nothing was written over it: the slot holds `before` again (the copy the write was
    /// decided on, every count as it was), tagged `tag` as a new write of the worker's. What
    /// was written and the token the taken-back write had; [`StoreError::CasMismatch`] if
    /// another write came after it (its count stays, as a race lost after the write would
    /// leave it).
    pub fn take_back(
        &self,
        store: &impl SharedStore,
        written: SlotCopy,
        mut before: Vec<u8>,
        tag: u64,
    ) -> Result<(Written, u32), StoreError> {
        // The slot is read for its token: Envoy does not say which token a write got, and
        // other workers' writes elsewhere may have moved the counter since.
        let Some((value, token)) = store.get(&written.key)? else { return Err(StoreError::CasMismatch) };
        let still = value.first() == Some(&VERSION) && u64_at(&value, TAG_AT) == Some(written.mine.tag);
        let Some(at) = before.get_mut(TAG_AT..COUNT_AT).filter(|_| still) else { return Err(StoreError::CasMismatch) };
        at.copy_from_slice(&tag.to_le_bytes());
        store.set(&written.key, &before, token)?;
        Ok((Written { key: written.key, bytes: before, tag, home: true }, token))
    }

    /// The decision on `value` (the slot as read or copied), and the slot to write carrying
    /// `tag`, if `decide` writes (more entries may follow before it is done).
    fn build(
        &self,
        value: Option<&[u8]>,
        identity: u64,
        now_us: u64,
        tag: u64,
        decide: Decide<'_>,
    ) -> (Decided, Option<Writing>) {
        let held = Self::held(value, now_us);
        let (decided, write) = decide(&held);
        if !write {
            return (decided, None);
        }
        let mut writing = Writing::new(identity, tag, value.as_ref().map_or(64, |v| v.len() + 16));
        for (id, outcomes) in &decided {
            let ttl = outcomes.iter().map(|o| o.ttl_us).max().unwrap_or(0).max(1);
            let current = held.entry(*id);
            let states = outcomes.iter().enumerate().map(|(i, o)| match &o.state {
                Some(s) => s.as_slice(),
                None => current.map_or(&[][..], |e| e.state(i)),
            });
            // Kept past its expiry by the most workers' clocks disagree: to a worker behind
            // this one, the state may still decide (a write that keeps the slot's other entries,
            // or takes the slot, would otherwise drop a count that worker still denies on).
            writing.entry(*id, now_us.saturating_add(ttl).saturating_add(WORKER_SKEW_US), states);
        }
        writing.keep(held.live().filter(|e| !decided.iter().any(|(id, _)| *id == e.id)));
        (decided, Some(writing))
    }

    /// A decision of this table's own rule as a decision on the slot's entries: `decide`
    /// receives the rule's current states (empty slices for a fresh identity) and returns one
    /// outcome per limit plus whether to write at all.
    fn own<'t, F>(&'t self, mut decide: F) -> impl FnMut(&Held<'_>) -> (Decided, bool) + 't
    where
        F: FnMut(&[&[u8]]) -> (Outcomes, bool) + 't,
    {
        move |held| {
            let (outcomes, write) = decide(&held.states(self.fingerprint));
            (vec![(self.fingerprint, outcomes)], write)
        }
    }

    /// Stores what [`Table::prepare_entries`] decided. [`StoreError::CasMismatch`] means another
    /// worker wrote the slot after it was read (the decision may no longer hold): nothing was
    /// written, and the caller decides again on what is there now.
    pub fn commit(&self, store: &impl SharedStore, prepared: &Prepared) -> Result<(), StoreError> {
        let Some(w) = &prepared.write else { return Ok(()) };
        for m in &prepared.marks {
            store.set(&m.key, &m.bytes, m.cas.unwrap_or(CREATE_TOKEN))?;
        }
        store.set(&w.key, &w.bytes, w.cas.unwrap_or(CREATE_TOKEN))
    }

    /// [`Table::prepare_entries`] then [`Table::commit`], deciding again after a lost race:
    /// `decide` may run several times.
    pub fn update_entries<F>(
        &self,
        store: &impl SharedStore,
        identity: u64,
        now_us: u64,
        mut decide: F,
    ) -> Result<Updated<Decided>, StoreError>
    where
        F: FnMut(&Held<'_>) -> (Decided, bool),
    {
        with_retries(&self.prefix, || {
            let prepared = self.prepare_entries(store, identity, now_us, 0, &mut decide)?;
            self.commit(store, &prepared)?;
            let (created, evicted) = (prepared.created(), prepared.evicts());
            Ok(Updated { outcomes: prepared.outcomes, created, evicted })
        })
    }

    /// [`Table::update_entries`] for this table's own rule.
    pub fn update<F>(&self, store: &impl SharedStore, identity: u64, now_us: u64, decide: F) -> Result<Updated, StoreError>
    where
        F: FnMut(&[&[u8]]) -> (Outcomes, bool),
    {
        let u = self.update_entries(store, identity, now_us, self.own(decide))?;
        let outcomes = u.outcomes.into_iter().next().map(|(_, o)| o).unwrap_or_default();
        Ok(Updated { outcomes, created: u.created, evicted: u.evicted })
    }

    /// Reads this rule's current states for the identity without writing (used to pre-check
    /// multi-rule requests so that a request denied by one rule consumes nothing from the
    /// others).
    pub fn peek<F, T>(&self, store: &impl SharedStore, identity: u64, now_us: u64, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&[&[u8]]) -> T,
    {
        match self.locate(store, identity, now_us)? {
            Found::Own { value, .. } => Ok(f(&Self::held(Some(&value), now_us).states(self.fingerprint))),
            Found::Free { .. } => Ok(f(&[])),
        }
    }
}

#[cfg(any(test, feature = "fuzzing"))]
thread_local! {
    /// Evictions so far on this thread: where a full table gives exactness up, so models of
    /// racing workers stop checking there.
    static EVICTIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Evictions made on this thread so far (tests and fuzzing only).
#[cfg(any(test, feature = "fuzzing"))]
pub fn evictions() -> u64 {
    EVICTIONS.with(std::cell::Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Meddled, MemStore, Own};
    use crate::strategy::Decision;

    fn table(slots: u32) -> Table {
        Table { prefix: "t:r:".into(), slots, fingerprint: 7 }
    }

    /// A counter "strategy": state is a u64 count, admits up to `limit`.
    fn count_to(limit: u64) -> impl FnMut(&[&[u8]]) -> (Outcomes, bool) {
        move |states: &[&[u8]]| {
            let n = states.first().and_then(|s| <[u8; 8]>::try_from(*s).ok()).map(u64::from_le_bytes).unwrap_or(0);
            let allowed = n < limit;
            let state = allowed.then(|| (n + 1).to_le_bytes().into_iter().collect());
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
        // After the TTL (and the workers' clock skew) the slot is reused as fresh.
        assert_eq!(count(&store, &t, 1, 1_000_001), 3, "kept for a worker up to WORKER_SKEW_US behind");
        assert_eq!(count(&store, &t, 1, 1_000_001 + WORKER_SKEW_US), 0);
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
        let second = t.update(&store, 1, 500_000, count_to(5)).unwrap(); // slot 1, expires at 1.5s
        assert!(second.created && !second.evicted);
        let third = t.update(&store, 2, 600_000, count_to(5)).unwrap(); // evicts identity 0
        assert!(third.evicted && !third.created, "the write says it forgot a live count");
        assert_eq!(count(&store, &t, 0, 600_000), 0);
        assert_eq!(count(&store, &t, 1, 600_000), 1);
        assert_eq!(count(&store, &t, 2, 600_000), 1);
        assert!(!t.update(&store, 2, 600_000, count_to(5)).unwrap().evicted, "its own slot now");
    }

    #[test]
    fn a_prepared_decision_is_not_stored_over_a_write_made_meanwhile() {
        let store = MemStore::default();
        let t = table(8);
        t.update(&store, 3, 0, count_to(5)).unwrap();
        let prepared = t.prepare_entries(&store, 3, 0, 0, t.own(count_to(5))).unwrap();
        // Another worker counts the identity after our read.
        t.update(&store, 3, 0, count_to(5)).unwrap();
        assert_eq!(t.commit(&store, &prepared), Err(StoreError::CasMismatch));
        assert_eq!(count(&store, &t, 3, 0), 2, "the stale decision wrote nothing");
        // The same for a slot that did not exist when we read it.
        let prepared = t.prepare_entries(&store, 4, 0, 0, t.own(count_to(5))).unwrap();
        assert!(prepared.created());
        t.update(&store, 4, 0, count_to(5)).unwrap();
        assert_eq!(t.commit(&store, &prepared), Err(StoreError::CasMismatch));
        assert_eq!(count(&store, &t, 4, 0), 1);
        // Uncontended, it is stored as decided.
        let prepared = t.prepare_entries(&store, 4, 0, 0, t.own(count_to(5))).unwrap();
        assert!(!prepared.created());
        t.commit(&store, &prepared).unwrap();
        assert_eq!(count(&store, &t, 4, 0), 2);
    }

    /// Two rules sharing one table: rule 7 counts to 5, rule 9 to 2.
    fn shared(slots: u32) -> (Table, Table) {
        (Table { prefix: "t:a:".into(), slots, fingerprint: 7 }, Table { prefix: "t:a:".into(), slots, fingerprint: 9 })
    }

    /// Both rules decided on one read: each counts, and the write is all or nothing.
    fn both(held: &Held<'_>) -> (Decided, bool) {
        let (a, wa) = count_to(5)(&held.states(7));
        let (b, wb) = count_to(2)(&held.states(9));
        (vec![(7, a), (9, b)], wa && wb)
    }

    #[test]
    fn rules_sharing_a_table_are_decided_on_one_read_and_stored_in_one_write() {
        let mem = MemStore::default();
        let store = Counting { inner: &mem, reads: Default::default(), writes: Default::default() };
        let (a, b) = shared(16);
        let u = a.update_entries(&store, 1, 0, both).unwrap();
        assert!(u.created);
        assert_eq!(u.outcomes.len(), 2);
        assert_eq!((store.reads.get(), store.writes.get()), (1, 1), "one slot, read once, written once");
        a.update_entries(&store, 1, 0, both).unwrap();
        assert_eq!((count(&mem, &a, 1, 0), count(&mem, &b, 1, 0)), (2, 2));
        // Rule 9 is at its limit: the third request is denied and neither rule counts it.
        let u = a.update_entries(&store, 1, 0, both).unwrap();
        assert!(!u.outcomes[1].1[0].decision.allowed);
        assert_eq!((count(&mem, &a, 1, 0), count(&mem, &b, 1, 0)), (2, 2));
        assert_eq!(mem.size().0, 1, "one key for both rules");
    }

    #[test]
    fn a_rule_decided_alone_keeps_the_others_entries() {
        let store = MemStore::default();
        let (a, b) = shared(16);
        a.update_entries(&store, 1, 0, both).unwrap();
        // Rule 9 alone, later: rule 7's count stays, and lives as long as its own entry.
        b.update(&store, 1, 500_000, count_to(2)).unwrap();
        assert_eq!((count(&store, &a, 1, 500_000), count(&store, &b, 1, 500_000)), (1, 2));
        // Rule 7's entry expired at 1 s, rule 9's lives until 1.5 s (each kept 0.1 s longer for
        // workers whose clocks are behind).
        assert_eq!((count(&store, &a, 1, 1_200_000), count(&store, &b, 1, 1_200_000)), (0, 2));
        let gone = 1_500_001 + WORKER_SKEW_US;
        assert_eq!((count(&store, &a, 1, gone), count(&store, &b, 1, gone)), (0, 0));
    }

    #[test]
    fn a_write_keeps_the_entries_of_rules_it_does_not_know_until_they_expire() {
        let store = MemStore::default();
        let (a, b) = shared(1);
        a.update_entries(&store, 1, 0, both).unwrap();
        // Another config, without rule 9, counts rule 7 later: rule 9's count stays.
        a.update(&store, 1, 500_000, count_to(5)).unwrap();
        assert_eq!((count(&store, &a, 1, 500_000), count(&store, &b, 1, 500_000)), (2, 1));
        // Until rule 9's entry expires (1 s); the next write drops it.
        a.update(&store, 1, 1_200_000, count_to(5)).unwrap();
        let (value, _) = store.get("t:a:0").unwrap().unwrap();
        assert_eq!(decode(&value).unwrap().entries().map(|e| e.id).collect::<Vec<_>>(), vec![7]);
    }

    #[test]
    fn a_slot_holding_only_another_rules_entry_is_not_taken_while_it_lives() {
        let store = MemStore::default();
        let (a, b) = shared(2);
        // Identities 1 and 3 share home slot 1; only rule 9 (of another config) counts 1.
        b.update(&store, 1, 0, count_to(2)).unwrap();
        a.update(&store, 3, 0, count_to(5)).unwrap();
        assert_eq!(count(&store, &b, 1, 0), 1, "identity 3 took the free slot 0, not identity 1's");
        assert_eq!(count(&store, &a, 3, 0), 1);
        assert_eq!(store.size().0, 2);
    }

    /// Counts the store's reads and writes.
    struct Counting<'a> {
        inner: &'a MemStore,
        reads: std::cell::Cell<u32>,
        writes: std::cell::Cell<u32>,
    }

    impl SharedStore for Counting<'_> {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            self.reads.set(self.reads.get() + 1);
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            self.writes.set(self.writes.get() + 1);
            self.inner.set(key, value, cas)
        }
    }

    /// Writes the identity's slot at `now` as a worker keeping copies does, and returns the
    /// worker's copy with the token the write got (as a worker learns it), if it kept one.
    fn written(t: &Table, store: &MemStore, own: &Own, identity: u64, now: u64) -> Option<SlotCopy> {
        let p = t.prepare_entries(store, identity, now, own.tag(), t.own(count_to(5))).unwrap();
        t.commit(store, &p).unwrap();
        let w = p.into_written().unwrap();
        let key = w.key.clone();
        own.wrote(0, identity, w, now);
        let mut copy = own.take(0, identity, now)?;
        copy.token = store.get(&key).unwrap().map(|(_, token)| token);
        Some(copy)
    }

    #[test]
    fn a_copy_decides_only_for_the_identitys_home_slot_while_it_lives() {
        let (store, own, t) = (MemStore::default(), Own::default(), table(8));
        let decide = || t.own(count_to(5));
        // Identity 5 lives in its home slot 5: its copy decides.
        let copy = written(&t, &store, &own, 5, 0).unwrap();
        let p = t.prepare_on_copy(copy, 5, 1_000, own.tag(), decide()).unwrap();
        t.commit(&store, &p).unwrap();
        assert_eq!(count(&store, &t, 5, 1_000), 2, "landed");
        // Written again at 2 ms, its slot expires a second (and the workers' skew) later: an
        // expired copy is not used (a read would take the place as free), one about to expire is.
        let copy = written(&t, &store, &own, 5, 2_000).unwrap();
        let expiry = 1_002_000 + WORKER_SKEW_US;
        let copy = t.prepare_on_copy(copy, 5, expiry, own.tag(), decide()).unwrap_err();
        let p = t.prepare_on_copy(copy, 5, expiry - 1, own.tag(), decide()).unwrap();
        t.commit(&store, &p).unwrap();
        assert_eq!(count(&store, &t, 5, expiry - 1), 4, "landed");
        // Identity 11 holds home slot 3, so identity 3 lives in slot 4: a read probes slot 3
        // first, and a worker that saw 11's slot expire would place 3 there; no copy is kept.
        t.update(&store, 11, 0, count_to(5)).unwrap();
        assert!(written(&t, &store, &own, 3, 0).is_none());
        assert_eq!(store.get("t:r:4").unwrap().map(|(v, _)| v.len() > 0), Some(true), "written in slot 4");
    }

    #[test]
    fn a_copy_of_a_marked_home_slot_decides_as_a_read_would() {
        let (store, own, t) = (MemStore::default(), Own::default(), table(8));
        t.update(&store, 5, 0, count_to(5)).unwrap();
        // 13 (home 5) goes on to slot 6, marking slot 5 until 2 s; 5's next write keeps the mark.
        t.update(&store, 13, 0, count_to(5)).unwrap();
        let copy = written(&t, &store, &own, 5, 500_000).unwrap();
        // At 1.6 s 5's count has expired and the mark has not: the slot is still its own, for
        // a read as for the copy.
        let read = t.prepare_entries(&store, 5, 1_600_000, 0, t.own(count_to(5))).unwrap();
        assert!(read.seen().is_some(), "a read finds its own slot");
        let p = t.prepare_on_copy(copy, 5, 1_600_000, own.tag(), t.own(count_to(5))).unwrap();
        assert_eq!(p.outcomes, read.outcomes);
        t.commit(&store, &p).unwrap();
        assert_eq!(count(&store, &t, 5, 1_600_000), 1, "counted afresh in its home slot");
        assert_eq!((live_slots(&store, &t, 5, 1_600_000), live_slots(&store, &t, 13, 0)), (1, 1));
    }

    #[test]
    fn a_mark_does_not_hand_an_old_owner_back_a_slot_it_left() {
        let (store, t) = (MemStore::default(), table(8));
        // 2 holds slot 2; 10 (home 2) goes on to slot 3, marking slot 2; 3 (home 3) goes on to
        // slot 4, marking slot 3, and counts for 100 s.
        t.update(&store, 2, 0, count_to(5)).unwrap();
        t.update(&store, 10, 0, count_to(5)).unwrap();
        t.update(&store, 3, 0, count_for(100_000_000)).unwrap();
        // At 3 s every mark and every other count has expired: 10 comes back to its home slot,
        // and 3 passes slot 3 (still naming 10), marking it again.
        t.update(&store, 10, 3_000_000, count_to(5)).unwrap();
        t.update(&store, 3, 3_000_000, count_for(100_000_000)).unwrap();
        // 10's count expires at 4 s (and the workers' skew): it counts again in its home slot,
        // not in slot 3.
        let later = 4_000_001 + WORKER_SKEW_US;
        t.update(&store, 10, later, count_to(5)).unwrap();
        t.update(&store, 10, later + 100_000, count_to(5)).unwrap();
        assert_eq!(live_slots(&store, &t, 10, later + 100_000), 1);
        assert_eq!(count(&store, &t, 10, later + 100_000), 2);
    }

    #[test]
    fn a_new_identity_is_placed_once_though_two_workers_disagree_on_its_homes_owner() {
        // Identities 11 and 3 share home slot 3; 11's slot expires at 1 s (and the workers'
        // skew). Worker A (clock before that) must go on to slot 4, worker B (clock after) may
        // take slot 3: each prepares identity 3's first request before the other writes.
        let expiry = 1_000_000 + WORKER_SKEW_US;
        for a_first in [true, false] {
            let (store, t) = (MemStore::default(), table(8));
            t.update(&store, 11, 0, count_to(5)).unwrap();
            let a = t.prepare_entries(&store, 3, expiry - 1, 0, t.own(count_to(5))).unwrap();
            let b = t.prepare_entries(&store, 3, expiry + 1, 0, t.own(count_to(5))).unwrap();
            let (first, second, at) = if a_first { (&a, &b, expiry + 1) } else { (&b, &a, expiry - 1) };
            t.commit(&store, first).unwrap();
            assert_eq!(t.commit(&store, second), Err(StoreError::CasMismatch), "A's mark and B's take meet on slot 3");
            // The loser decides again, and counts where the winner did.
            t.update(&store, 3, at, count_to(5)).unwrap();
            assert_eq!(live_slots(&store, &t, 3, expiry + 1), 1);
            assert_eq!(count(&store, &t, 3, expiry + 1), 2);
        }
    }

    #[test]
    fn a_marked_slot_is_not_taken_until_its_mark_expires_and_an_eviction_keeps_its_mark() {
        let (store, t) = (MemStore::default(), table(2));
        let slot = |i: u32| store.get(&t.key(i)).unwrap().and_then(|(v, _)| decode(&v).map(|s| (s.identity, Table::mark(&s, 0))));
        // 11 holds slot 1 (its home) for a second; 1 goes on to slot 0, marking slot 1.
        t.update(&store, 11, 0, count_to(5)).unwrap();
        t.update(&store, 1, 0, count_to(5)).unwrap();
        assert_eq!((slot(0), slot(1)), (Some((1, None)), Some((11, Some(GUARD_US)))));
        // At 1.5 s both counts have expired; 5 (home 1) passes the marked slot, takes slot 0
        // and renews the mark it relied on (less than half of it was left), which no longer
        // names 11: its count is gone, and the slot must not become its own again.
        t.update(&store, 5, 1_500_000, count_for(10_000_000)).unwrap();
        assert_eq!((slot(0), slot(1)), (Some((5, None)), Some((0, Some(1_500_000 + GUARD_US)))));
        // 7 (home 1) finds both held and evicts the slot only marked (no count is lost, so the
        // write says it evicted none), not 5's; the mark stays on it.
        assert!(!t.update(&store, 7, 1_600_000, count_to(5)).unwrap().evicted);
        assert_eq!((slot(0), slot(1)), (Some((5, None)), Some((7, Some(1_500_000 + GUARD_US)))));
        assert_eq!((count(&store, &t, 5, 1_600_000), count(&store, &t, 7, 1_600_000)), (1, 1));
        // Once 7's count and the mark have expired, the slot is free again.
        t.update(&store, 9, 3_500_001, count_to(5)).unwrap();
        assert_eq!(slot(1), Some((9, None)));
    }

    /// A counter that always admits, whose entry lives `ttl_us`.
    fn count_for(ttl_us: u64) -> impl FnMut(&[&[u8]]) -> (Outcomes, bool) {
        move |states: &[&[u8]]| {
            let (mut outcomes, write) = count_to(u64::MAX)(states);
            outcomes.iter_mut().for_each(|o| o.ttl_us = ttl_us);
            (outcomes, write)
        }
    }

    const T0: u64 = 1_700_000_040_000_000;

    /// Identities (and how long each count lives) of two home slots of 16 whose probes
    /// overlap: 3 and 19 of slot 3, 5 and 21 of slot 5; the first counts for longer than any
    /// run.
    const IDENTITIES: [(u64, u64); 4] = [(3, 1_000_000_000), (19, 150_000), (5, 1_200_000), (21, 600_000)];

    /// Slots holding `identity` live at `now_us`.
    fn live_slots(store: &MemStore, t: &Table, identity: u64, now_us: u64) -> usize {
        (0..t.slots)
            .filter_map(|i| store.get(&t.key(i)).unwrap())
            .filter(|(v, _)| decode(v).is_some_and(|s| s.identity == identity && Table::live(&s, now_us)))
            .count()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

        /// Workers whose clocks differ by up to the skew they may have, deciding identities
        /// whose probes overlap and whose slots expire at any moment (and marks with them),
        /// interleaved at every read and write: while no slot is evicted, an identity never
        /// lives in two slots, and the long-lived one's count is every admission.
        #[test]
        fn an_identity_lives_in_one_slot_however_workers_interleave(
            clocks in proptest::collection::vec(0..=crate::clock::WORKER_SKEW_US, 3),
            steps in proptest::collection::vec(
                (0..IDENTITIES.len(), 0..3usize, proptest::prop_oneof![0..2_000u64, 0..1_500_000u64, 0..4_000_000u64],
                 proptest::collection::vec(proptest::option::weighted(0.3, (0..IDENTITIES.len(), 0..3usize)), 0..12)),
                1..60),
        ) {
            let evicted = evictions();
            let (store, t) = (MemStore::default(), table(16));
            let admitted = std::cell::Cell::new(0);
            let mut now = T0;
            // Identity `who` decided by `worker` on `store`, its admissions counted.
            let decide = |store: &dyn SharedStore, now: u64, who: usize, worker: usize| {
                let (identity, ttl) = IDENTITIES[who];
                if t.update(&store, identity, now + clocks[worker], count_for(ttl)).is_ok() && who == 0 {
                    admitted.set(admitted.get() + 1);
                }
            };
            for (who, worker, after_us, plan) in steps {
                now += after_us;
                // Before each of this decision's calls, another worker's whole decision, or none.
                let plan = std::cell::RefCell::new(std::collections::VecDeque::from(plan));
                let others = || {
                    let next = plan.borrow_mut().pop_front().flatten();
                    if let Some((who, worker)) = next {
                        decide(&store, now, who, worker);
                    }
                };
                decide(&Meddled { inner: &store, before: others }, now, who, worker);
                if evictions() > evicted {
                    break;
                }
                let latest = now + crate::clock::WORKER_SKEW_US;
                for (i, (identity, _)) in IDENTITIES.iter().enumerate() {
                    proptest::prop_assert!(live_slots(&store, &t, *identity, latest) <= 1, "identity {} in two slots", i);
                }
                proptest::prop_assert_eq!(count(&store, &t, IDENTITIES[0].0, latest), admitted.get());
            }
        }
    }
}
