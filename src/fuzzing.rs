//! Fuzzing entry points (feature `fuzzing`, used only by `fuzz/`) into the decoders the crate
//! keeps private: store slots and breaker state. They go through the same public calls the
//! filter makes, on a store that holds the fuzzer's bytes, and compare what comes out with a
//! reference decoder written here from the documented layouts; and racing workers, played
//! through the engine's model of them. Each returns `Err` describing a disagreement; the fuzz
//! target turns that into a crash.

use crate::breaker::{Breaker, BreakerSpec, Permit, Phase};
use crate::clock::WORKER_SKEW_US;
use crate::engine::skew::{self, Run, Step, USER_COUNT, WORKERS};
use crate::rate::Rate;
use crate::store::{Decided, MemStore, SharedStore, Table, MARK_ID};
use crate::strategy::{decide, Strategy};

/// The latest clock the store target uses, in epoch µs (about the year 4250). Strategies take
/// the proxy's wall clock; a fuzzer-made expiry past this is judged at a plain `now` instead.
const MAX_NOW_US: u64 = 1 << 56;
const PLAIN_NOW_US: u64 = 1_700_000_000_000_000;

/// A slot as the store's layout is documented: version 3, identity hash (u64), expiry in µs
/// (u64), the writer's tag (u64), entry count (u8), then each entry: rule fingerprint (u32),
/// its expiry in µs (u64), state count (u8) and each state as a u16 length and its bytes, all
/// little-endian. Bytes after the last entry are ignored.
#[derive(Debug, PartialEq, Eq)]
struct SlotRef {
    identity: u64,
    expires_us: u64,
    tag: u64,
    entries: Vec<EntryRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct EntryRef {
    fingerprint: u32,
    expires_us: u64,
    states: Vec<Vec<u8>>,
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if bytes.len() < n {
        return None;
    }
    let (head, tail) = bytes.split_at(n);
    *bytes = tail;
    Some(head)
}

fn le<const N: usize>(bytes: &mut &[u8]) -> Option<[u8; N]> {
    take(bytes, N)?.try_into().ok()
}

fn slot_ref(mut b: &[u8]) -> Option<SlotRef> {
    if le::<1>(&mut b)? != [3] {
        return None;
    }
    let identity = u64::from_le_bytes(le(&mut b)?);
    let expires_us = u64::from_le_bytes(le(&mut b)?);
    let tag = u64::from_le_bytes(le(&mut b)?);
    let [count] = le::<1>(&mut b)?;
    let mut entries = Vec::new();
    for _ in 0..count {
        let fingerprint = u32::from_le_bytes(le(&mut b)?);
        let entry_expires = u64::from_le_bytes(le(&mut b)?);
        let [states_count] = le::<1>(&mut b)?;
        let mut states = Vec::new();
        for _ in 0..states_count {
            let len = u16::from_le_bytes(le(&mut b)?);
            states.push(take(&mut b, usize::from(len))?.to_vec());
        }
        entries.push(EntryRef { fingerprint, expires_us: entry_expires, states });
    }
    Some(SlotRef { identity, expires_us, tag, entries })
}

fn strategy(pick: u8) -> Strategy {
    match pick % 8 {
        0 => Strategy::FixedWindow,
        1 => Strategy::SlidingWindowCounter,
        2 => Strategy::SlidingWindowLog { max_entries: 16 },
        3 => Strategy::TokenBucket { burst: None },
        4 => Strategy::TokenBucketDebt { burst: Some(3), max_debt: 5 },
        5 => Strategy::LeakyBucket { burst: None },
        6 => Strategy::LeakyBucketQueue { burst: Some(2), max_delay_ms: 1_000 },
        _ => Strategy::Gcra { burst: Some(2) },
    }
}

const RATES: [Rate; 4] = [
    Rate { limit: 1, period_ms: 1_000 },
    Rate { limit: 10, period_ms: 1_000 },
    Rate { limit: 100, period_ms: 60_000 },
    Rate { limit: 1_000_000, period_ms: 86_400_000 },
];

fn owned(states: &[&[u8]]) -> Vec<Vec<u8>> {
    states.iter().map(|s| s.to_vec()).collect()
}

/// The first byte steers (bit 0: judge the slot as expired; bits 1-3: strategy; bits 4-5: rate;
/// bits 6-7: cost), the rest is the stored slot, whose length modulo 3 picks who decides: its
/// owner for the first entry's rule; its owner for the first two entries' rules together (as
/// rules sharing a table are); or another identity, which must not read or keep anything of
/// the owner's. Reads the slot the way a request does (peek, then an update with a real
/// strategy deciding on the stored states, which decodes those too), then reads back what was
/// written.
pub fn store_slot(bytes: &[u8]) -> Result<(), String> {
    let Some((&control, value)) = bytes.split_first() else { return Ok(()) };
    let reference = slot_ref(value);
    let (identity, expires_us) = reference.as_ref().map_or((0, 0), |s| (s.identity, s.expires_us));
    let entries: &[EntryRef] = reference.as_ref().map_or(&[], |s| s.entries.as_slice());
    // The rule deciding is the first rule entry's (a mark, id 0, is no rule's: no rule's entry
    // carries that id); any other rule entry is another rule's.
    let rules: Vec<u32> = entries.iter().map(|e| e.fingerprint).filter(|&f| f != MARK_ID).collect();
    let own = rules.first().copied().unwrap_or(1);
    let mode = value.len() % 3;
    let requester = if mode == 2 { identity ^ 1 } else { identity };
    let other = rules.get(1).copied().filter(|&f| mode == 1 && f != own);
    let ids: Vec<u32> = std::iter::once(own).chain(other).collect();
    let expired = control & 1 == 1;
    let now_us = match expires_us {
        1..=MAX_NOW_US if expired => expires_us,
        1..=MAX_NOW_US => expires_us - 1,
        _ => PLAIN_NOW_US,
    };
    // One slot: every identity's home is slot 0, the one holding the fuzzer's bytes.
    let table = Table { prefix: "fuzz:rule:".into(), slots: 1, fingerprint: own };
    let key = "fuzz:rule:0";
    let store = MemStore::default();
    store.set(key, value, 0).map_err(|e| e.to_string())?;

    let live_entry = |e: &&EntryRef| e.expires_us > now_us;
    // Held by a live count or by a mark (its owner's still, for its owner).
    let held_slot = expires_us > now_us && entries.iter().any(|e| live_entry(&e));
    let held: Vec<&EntryRef> = if held_slot { entries.iter().filter(live_entry).collect() } else { Vec::new() };
    let states_in =
        |held: &[&EntryRef], id: u32| held.iter().find(|e| e.fingerprint == id).map(|e| e.states.clone()).unwrap_or_default();
    let want = states_in(&held, own);
    let seen = table.peek(&store, identity, now_us, owned).map_err(|e| e.to_string())?;
    if seen != want {
        return Err(format!("peek at {now_us} read {seen:?}, the layout says {want:?} ({reference:?})"));
    }

    // What the requester's decision reads: nothing of a slot another identity owns, which it
    // evicts, keeping its marks.
    let ours: Vec<&EntryRef> = if requester == identity { held.clone() } else { Vec::new() };
    let evicted_marks: Vec<EntryRef> = if requester == identity {
        Vec::new()
    } else {
        held.iter().filter(|e| e.fingerprint == MARK_ID).map(|e| (*e).clone()).collect()
    };
    let (strategy, rate, cost) = (strategy(control >> 1), RATES[usize::from((control >> 4) & 3)], u64::from(control >> 6));
    let mut decided = Decided::new();
    let updated = table
        .update_entries(&store, requester, now_us, |h| {
            decided = ids
                .iter()
                .map(|&id| {
                    let limits = states_in(&ours, id).len().max(1);
                    (id, (0..limits).map(|i| decide(&strategy, &rate, h.state(id, i), now_us, cost)).collect())
                })
                .collect();
            (decided.clone(), true)
        })
        .map_err(|e| e.to_string())?;
    if updated.outcomes != decided {
        return Err("update returned other outcomes than decided".into());
    }

    let written = store.get(key).map_err(|e| e.to_string())?.map(|(v, _)| v).unwrap_or_default();
    let Some(slot) = slot_ref(&written) else {
        return Err(format!("update wrote {written:?}, which the layout cannot read"));
    };
    let new_entries = decided.iter().map(|(id, outcomes)| {
        let current = states_in(&ours, *id);
        let states = outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| o.state.as_ref().map(|s| s.to_vec()).unwrap_or_else(|| current.get(i).cloned().unwrap_or_default()))
            .collect();
        let ttl = outcomes.iter().map(|o| o.ttl_us).max().unwrap_or(0).max(1);
        // Kept past its expiry by the workers' clock skew, as the table writes it.
        let expires_us = now_us.saturating_add(ttl).saturating_add(crate::clock::WORKER_SKEW_US);
        EntryRef { fingerprint: *id, expires_us, states }
    });
    // Every other live entry of the requester's slot is kept as it was, and an evicted slot's
    // marks (up to 255 entries in all); expired ones go.
    let kept = ours.iter().filter(|e| !ids.contains(&e.fingerprint)).map(|e| (*e).clone());
    let all: Vec<EntryRef> = new_entries.chain(kept).chain(evicted_marks).take(255).collect();
    let slot_expires = all.iter().map(|e| e.expires_us).max().unwrap_or(0);
    // A writer that keeps no copies (as this update) tags its slot 0.
    let expected = SlotRef { identity: requester, expires_us: slot_expires, tag: 0, entries: all };
    if slot != expected {
        return Err(format!("update wrote {slot:?}, expected {expected:?}"));
    }
    let again = table.peek(&store, requester, now_us, owned).map_err(|e| e.to_string())?;
    let want_again = expected.entries.first().filter(|e| e.expires_us > now_us).map(|e| e.states.clone()).unwrap_or_default();
    if again != want_again {
        return Err(format!("peek after update read {again:?}, wrote {want_again:?}"));
    }
    if requester != identity && !table.peek(&store, identity, now_us, owned).map_err(|e| e.to_string())?.is_empty() {
        return Err("the evicted owner still reads its states".into());
    }
    Ok(())
}

/// Steps a run of [`engine_workers`] may have: enough for counts to expire and slots to be
/// taken again many times, few enough for a run to take well under a millisecond.
const MAX_STEPS: usize = 200;

/// Racing workers played through [`skew::play`]. The first byte sizes the table (2 to 9
/// slots), the next three set the workers' clocks (0 to the skew they may have); then each
/// step is a byte (bits 0-1: user; bits 2-3: worker, modulo 3; bits 4-5: how far time moves,
/// from microseconds to seconds; bits 6-7: how many other requests may run inside this one),
/// a byte for the time, and a byte per other request (bit 7: none; bits 0-1 its user, 2-3
/// its worker).
pub fn engine_workers(bytes: &[u8]) -> Result<(), String> {
    let Some((&size, rest)) = bytes.split_first() else { return Ok(()) };
    let Some((clocks, mut rest)) = rest.split_first_chunk::<WORKERS>() else { return Ok(()) };
    let clocks = clocks.map(|c| u64::from(c) * WORKER_SKEW_US / 255);
    let mut steps = Vec::new();
    while let [control, time, tail @ ..] = rest {
        let others = usize::from(control >> 6);
        let (meddlers, tail) = tail.split_at(others.min(tail.len()));
        let step_us = [10, 2_000, 16_000, 0][usize::from((control >> 4) & 3)];
        let meddlers = meddlers
            .iter()
            .map(|&m| (m & 0x80 == 0).then_some((usize::from(m & 3) % USER_COUNT, usize::from((m >> 2) & 3) % WORKERS)))
            .collect();
        steps.push(Step {
            user: usize::from(control & 3) % USER_COUNT,
            worker: usize::from((control >> 2) & 3) % WORKERS,
            after_us: u64::from(*time) * step_us,
            meddlers,
        });
        if steps.len() == MAX_STEPS {
            break;
        }
        rest = tail;
    }
    skew::play(&Run { max_clients: 2 + u32::from(size % 8), clocks, steps })
}

/// The breaker state layout: phase (u8: 1 open, 2 half-open, anything else closed), count
/// (u32), probes (u32), since (u64 µs), little-endian, 17 bytes; any other length is closed.
fn phase_ref(b: &[u8]) -> Phase {
    match (b.len(), b.first()) {
        (17, Some(1)) => Phase::Open,
        (17, Some(2)) => Phase::HalfOpen,
        _ => Phase::Closed,
    }
}

fn since_ref(b: &[u8]) -> u64 {
    b.get(9..17).and_then(|s| s.try_into().ok()).map_or(0, u64::from_le_bytes)
}

/// A state the breaker wrote: always the full 17 bytes with a phase it knows.
fn written_ok(b: &[u8]) -> bool {
    b.len() == 17 && b[0] <= 2
}

/// The first byte steers (bit 7: the rest is the stored value whatever its length, else its
/// first 17 bytes; bits 1-2: how many half open-periods after the state's start it is now;
/// bits 3-4: thresholds; bit 5: probes; bit 6: whether the call succeeds; bit 0: the request
/// goes away before its answer); then the stored value. Runs one call through the breaker as
/// the filter does: phase, permit, then record or abandon.
pub fn breaker_state(bytes: &[u8]) -> Result<(), String> {
    let Some((&control, rest)) = bytes.split_first() else { return Ok(()) };
    let stored = if control & 0x80 != 0 { rest } else { rest.get(..17).unwrap_or(rest) };
    let spec = BreakerSpec {
        failure_threshold: u32::from((control >> 3) & 3) + 1,
        open_ms: 5_000,
        half_open_probes: u32::from((control >> 5) & 1) + 1,
        success_threshold: u32::from((control >> 4) & 1) + 1,
    };
    let since = if phase_ref(stored) == Phase::Closed { 0 } else { since_ref(stored) };
    let now_us = since.saturating_add(u64::from((control >> 1) & 3) * 2_500_000);
    let ok = control & 0x40 != 0;

    let key = "fuzz:breaker";
    let store = MemStore::default();
    store.set(key, stored, 0).map_err(|e| e.to_string())?;
    let read = |store: &MemStore| store.get(key).ok().flatten().map(|(v, _)| v).unwrap_or_default();
    let breaker = Breaker { key, spec, timeout_ms: 20 };

    let before = phase_ref(stored);
    if breaker.phase(&store) != before {
        return Err(format!("phase of {stored:?} read as {:?}, the layout says {before:?}", breaker.phase(&store)));
    }
    let permit = breaker.permit(&store, now_us);
    let after_permit = read(&store);
    let consistent = match permit {
        Permit::Call => before == Phase::Closed && after_permit == stored,
        Permit::Skip => before != Phase::Closed && after_permit == stored,
        Permit::Probe => before != Phase::Closed && written_ok(&after_permit) && phase_ref(&after_permit) == Phase::HalfOpen,
    };
    if !consistent {
        return Err(format!("{before:?} state {stored:?} gave {permit:?} and left {after_permit:?}"));
    }

    if control & 1 == 1 {
        breaker.abandon(&store, permit);
    } else {
        breaker.record(&store, permit, ok, now_us);
    }
    let after_record = read(&store);
    if after_record != after_permit {
        if !written_ok(&after_record) {
            return Err(format!("record wrote {after_record:?}, which is no breaker state"));
        }
        if phase_ref(&after_record) == Phase::Open && since_ref(&after_record) != now_us {
            return Err(format!("record opened the breaker at {}, not now ({now_us})", since_ref(&after_record)));
        }
    }
    Ok(())
}

/// The rules the request target checks a fuzzer-made request against: every kind of value a
/// request can carry into an identity (query, cookie, header, the forwarded address, several
/// at once), a cost header, an exemption and globs on the path.
const REQUEST_CONFIG: &str = r#"{"client_ip": {"xff_trusted_hops": 1}, "rules": [
    {"name": "user", "match": {"path": "/api/**", "methods": ["GET", "POST"]}, "limit": "3/hour",
     "identifier": {"query": "user"}, "cost": {"header": "x-cost", "max": 5}},
    {"name": "session", "match": {"path": "/*/login"}, "limit": "2/hour", "strategy": "gcra", "identifier": {"cookie": "session"}},
    {"name": "key", "limit": "4/hour", "strategy": "sliding_window_log", "identifier": {"header": "x-api-key"}},
    {"name": "tenant", "limit": "5/hour", "identifier": [{"header": "x-tenant"}, {"query": "k"}, "client_ip"]},
    {"name": "ip", "limit": "6/hour", "strategy": "token_bucket", "exempt": {"cidrs": ["10.0.0.0/8", "2001:db8::/32"]}}
]}"#;

/// A request made of the fuzzer's bytes.
struct FuzzRequest<'a> {
    method: &'a [u8],
    path: &'a [u8],
    headers: Vec<(&'static str, &'a [u8])>,
    source: Option<String>,
}

impl crate::identity::RequestInfo for FuzzRequest<'_> {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        match name {
            ":method" => Some(self.method.to_vec()),
            ":path" => Some(self.path.to_vec()),
            _ => self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_vec()),
        }
    }
    fn cookies(&self) -> Option<Vec<u8>> {
        let lines: Vec<&[u8]> = self.headers.iter().filter(|(n, _)| *n == "cookie").map(|(_, v)| *v).collect();
        (!lines.is_empty()).then(|| lines.join(&b"; "[..]))
    }
    fn source_address(&self) -> Option<String> {
        self.source.clone()
    }
    fn route_name(&self) -> Option<String> {
        None
    }
}

/// A request whose values are the fuzzer's bytes (any bytes, as a client may send them),
/// split at newlines: method, path (query included), then lines whose first byte picks what
/// the rest is: below 0x80, the value of a header the rules read (which one, by that byte);
/// from 0x80, the source address (the last such line). Checked twice against [`REQUEST_CONFIG`] on a fresh store: nothing may
/// panic, every rule that applies costs at least 1, and the same request decides the same way.
pub fn request(bytes: &[u8]) -> Result<(), String> {
    const NAMES: [&str; 6] = ["cookie", "x-api-key", "x-forwarded-for", "x-cost", "x-tenant", "cookie"];
    let mut lines = bytes.split(|&b| b == b'\n');
    let method = lines.next().unwrap_or_default();
    let path = lines.next().unwrap_or_default();
    let mut headers = Vec::new();
    let mut source = None;
    for line in lines {
        match line.split_first() {
            Some((&pick, value)) if pick < 0x80 => headers.push((NAMES[usize::from(pick) % NAMES.len()], value)),
            // The host hands no `source.address` that is not UTF-8.
            Some((_, value)) => source = String::from_utf8(value.to_vec()).ok(),
            None => {}
        }
    }
    let req = FuzzRequest { method, path, headers, source };
    thread_local! {
        // Compiled once: compiling costs ten times a request's check.
        static CONFIG: Result<crate::config::Config, String> = serde_json::from_str(REQUEST_CONFIG)
            .map_err(|e: serde_json::Error| e.to_string())
            .and_then(|v| crate::config::compile(&v).map_err(|e| e.to_string()));
    }
    let limiter = crate::engine::Limiter::new(CONFIG.with(Clone::clone)?);
    let store = MemStore::default();
    let first = limiter.check(&req, &store, PLAIN_NOW_US);
    if let Some(free) = first.outcomes().iter().find(|o| o.cost == 0) {
        return Err(format!("rule {} cost nothing: {free:?}", free.rule));
    }
    let again = limiter.check(&req, &MemStore::default(), PLAIN_NOW_US);
    let identities =
        |v: &crate::engine::Verdict| v.outcomes().iter().map(|o| (o.rule, o.identity.hash, o.cost)).collect::<Vec<_>>();
    if identities(&first) != identities(&again) {
        return Err(format!("one request decided two ways: {:?} then {:?}", identities(&first), identities(&again)));
    }
    Ok(())
}
