//! The decision script's calls decided in Rust, for a native Redis module command: the same
//! arguments, replies and writes as `decide.lua` (one call) and `batch.lua` (several), over the
//! same text states (`super::state`), so that Redis keys are shared with proxies whose gateway
//! runs the scripts. The caller reads keys and applies the writes; this decides.
//!
//! Where the two differ, on purpose: arguments must be decimal integers (what sluice-gateway
//! lets through; the scripts' `tonumber` would also take `1e3` or `0x10`), and an error's text
//! is this module's own (the scripts' carry Lua's position). Where the scripts' doubles round
//! (a sum or product past 2^53, a lifetime past 2^63 ms: rates far beyond what the config
//! compiler allows), this stays exact, and a lifetime stops at `u64::MAX` µs. And a command
//! names at most as many keys as the gateway lets one script run read ([`MAX_KEYS`] per call,
//! [`MAX_RUN_KEYS`] per batch): the module runs inside Redis, where no busy-script timeout
//! stops it, and a client that may call it directly (its ACL allows the command) must not
//! hold Redis for seconds or make it allocate gigabytes by naming one long log many times.

use std::collections::BTreeMap;
use std::rc::Rc;

use super::script::{ARGS_PER_RULE, MAX_KEYS, MAX_RUN_KEYS};
use super::state::{self, decimal};
use super::wire::Reply;
use crate::rate::Rate;
use crate::strategy::{self, Strategy, NAMES};

/// What a batch writes, once per key, with its last state and lifetime, in the order keys were
/// first written: `SET key state PX ttl_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub key: Vec<u8>,
    /// Where the key is among the command's keys (its first place where named twice), so a
    /// caller can reach it without looking it up.
    pub at: usize,
    pub state: String,
    pub ttl_ms: u64,
}

/// The keys a call reads, once each per batch. An error (a key holding another type) is the
/// error of the call that read it. `at` is the key's place among the command's keys.
pub trait Keys {
    fn get(&mut self, key: &[u8], at: usize) -> Result<Option<Vec<u8>>, String>;
}

/// What one command (a call, or a batch of calls) has read and will write. The maps are
/// ordered, not hashed: a command names a few keys, and comparing them costs less than
/// hashing them (Redis runs this on every decision).
struct Batch<'k, 'w, K> {
    keys: &'k mut K,
    /// Each key's state as the calls so far left it (`None`: no state).
    /// Shared, not copied, with each call that reads it: a batch may name one key many times.
    states: BTreeMap<&'w [u8], Option<Rc<[u8]>>>,
    writes: Vec<Write>,
    /// Where each written key is in `writes`.
    written: BTreeMap<&'w [u8], usize>,
}

/// One call, as `FCALL sluice_decide_<id>` runs it: the reply, or the call's error.
pub fn one(keys: &[&[u8]], args: &[&[u8]], store: &mut impl Keys, now_us: u64) -> (Result<Reply, String>, Vec<Write>) {
    if keys.len() > MAX_KEYS {
        return (Err(too_many_keys("a call", keys.len(), MAX_KEYS)), Vec::new());
    }
    let mut b = Batch::new(store);
    let reply = b.decide(keys, 0, args, now_us);
    (reply, b.writes)
}

/// A batch, as `FCALL sluice_batch_<id>` runs it: `args` starts with the call count and two
/// counts per call. Each call's reply or error in place; a layout that does not add up is the
/// batch's error, and nothing is decided.
pub fn batch(keys: &[&[u8]], args: &[&[u8]], store: &mut impl Keys, now_us: u64) -> Result<(Vec<Reply>, Vec<Write>), String> {
    if keys.len() > MAX_RUN_KEYS {
        return Err(too_many_keys("a batch", keys.len(), MAX_RUN_KEYS));
    }
    let calls = args.first().and_then(|a| decimal(a)).filter(|c| *c >= 1).ok_or_else(layout)?;
    let calls = usize::try_from(calls).map_err(|_| layout())?;
    let counts_end = calls.checked_mul(2).and_then(|n| n.checked_add(1)).filter(|end| *end <= args.len()).ok_or_else(layout)?;
    let mut counts = Vec::with_capacity(calls);
    let (mut n_keys, mut n_args) = (0usize, counts_end);
    for j in 0..calls {
        let n = decimal(args[1 + 2 * j]).and_then(|n| usize::try_from(n).ok()).filter(|n| (1..=MAX_KEYS).contains(n));
        let m = decimal(args[2 + 2 * j]).and_then(|m| usize::try_from(m).ok());
        let (Some(n), Some(m)) = (n, m) else {
            return Err(format!("ERR sluice: call {} of the batch has no keys or bad counts", j + 1));
        };
        counts.push((n, m));
        n_keys = n_keys.saturating_add(n);
        n_args = n_args.saturating_add(m);
    }
    if n_keys != keys.len() || n_args != args.len() {
        return Err(format!(
            "ERR sluice: the batch names {n_keys} keys and {n_args} arguments; it has {} and {}",
            keys.len(),
            args.len()
        ));
    }
    let mut b = Batch::new(store);
    let (mut k0, mut a0) = (0, counts_end);
    let mut replies = Vec::with_capacity(calls);
    for (n, m) in counts {
        replies.push(b.decide(&keys[k0..k0 + n], k0, &args[a0..a0 + m], now_us).unwrap_or_else(Reply::Error));
        k0 += n;
        a0 += m;
    }
    Ok((replies, b.writes))
}

fn too_many_keys(what: &str, n: usize, most: usize) -> String {
    format!("ERR sluice: {what} names {n} keys; at most {most} (one rule's limits, or what the gateway runs at once)")
}

fn layout() -> String {
    "ERR sluice: a batch starts with its call count and two counts per call".to_string()
}

impl<'k, 'w, K: Keys> Batch<'k, 'w, K> {
    fn new(keys: &'k mut K) -> Self {
        Batch { keys, states: BTreeMap::new(), writes: Vec::new(), written: BTreeMap::new() }
    }

    /// A key's state as this command left it, read from Redis the first time.
    fn state(&mut self, key: &'w [u8], at: usize) -> Result<Option<Rc<[u8]>>, String> {
        if let Some(s) = self.states.get(key) {
            return Ok(s.clone());
        }
        let s: Option<Rc<[u8]>> = self.keys.get(key, at)?.map(|text| state::from_text(&text).into());
        self.states.insert(key, s.clone());
        Ok(s)
    }

    /// One call: `decide` of `decide.lua`. Its keys start at `base` among the command's.
    fn decide(&mut self, keys: &[&'w [u8]], base: usize, args: &[&[u8]], now_us: u64) -> Result<Reply, String> {
        let n = keys.len();
        let m = args.len();
        if m < ARGS_PER_RULE * n || m > ARGS_PER_RULE * n + 2 {
            return Err(format!(
                "ERR sluice: expected 6 arguments per key (plus optional \"dry\" and now_us), got {m} for {n} keys"
            ));
        }
        let Options { dry, now_us, pad_ms } = options(&args[ARGS_PER_RULE * n..], now_us)?;
        // Within a call, a key named twice sees the first limit's new state.
        let mut pending: BTreeMap<&[u8], Rc<[u8]>> = BTreeMap::new();
        let mut decided = Vec::with_capacity(n);
        let mut all = true;
        for (i, key) in keys.iter().enumerate() {
            let a = &args[ARGS_PER_RULE * i..ARGS_PER_RULE * (i + 1)];
            // The scripts look the strategy up before they read its numbers.
            let name = std::str::from_utf8(a[0]).ok().filter(|n| NAMES.contains(n)).ok_or_else(|| unknown(a[0], i))?;
            let [limit, period, cost, p1, p2] = [a[1], a[2], a[3], a[4], a[5]].map(decimal);
            let (Some(limit), Some(period), Some(cost), Some(p1), Some(p2)) = (limit, period, cost, p1, p2) else {
                return Err(format!("ERR sluice: arguments of key {} must be non-negative integers", i + 1));
            };
            let strategy = Strategy::from_lua_params(name, [p1, p2]).ok_or_else(|| unknown(a[0], i))?;
            if cost < 1 {
                return Err(format!("ERR sluice: cost of key {} must be at least 1", i + 1));
            }
            let outcome = if limit == 0 || period == 0 {
                // An invalid (or unlimited) rate: admit, store nothing, as the scripts do.
                None
            } else {
                let current = match pending.get(key) {
                    Some(s) => Some(s.clone()),
                    None => self.state(key, base + i)?,
                };
                let rate = Rate { limit, period_ms: period };
                Some(strategy::decide(&strategy, &rate, current.as_deref().unwrap_or_default(), now_us, cost))
            };
            let fields = match &outcome {
                None => [1, limit, 0, 0, 0, 0],
                Some(o) => {
                    let d = &o.decision;
                    [u64::from(d.allowed), d.remaining, d.reset_ms, d.retry_after_ms, d.delay_ms, o.ttl_us / 1000]
                }
            };
            all &= fields[0] == 1;
            let new_state = outcome.and_then(|o| o.state).map(|s| Kept::of(&s));
            if let Some(kept) = &new_state {
                pending.insert(key, Rc::clone(&kept.seen));
            }
            decided.push((fields, new_state));
        }
        let mut reply = Vec::with_capacity(n + 1);
        reply.push(Reply::Int(i64::from(all)));
        for (fields, _) in &decided {
            reply.push(Reply::Array(fields.iter().map(|f| Reply::Int(i64::try_from(*f).unwrap_or(i64::MAX))).collect()));
        }
        if all && !dry {
            for (i, (key, (fields, new_state))) in keys.iter().zip(decided).enumerate() {
                if let Some(kept) = new_state {
                    self.write(key, base + i, kept, fields[5].max(1) + pad_ms);
                }
            }
        }
        Ok(Reply::Array(reply))
    }

    /// Records a write (the last one of a key wins; its place is its first).
    fn write(&mut self, key: &'w [u8], at: usize, kept: Kept, ttl_ms: u64) {
        let Kept { text, seen } = kept;
        self.states.insert(key, Some(seen));
        match self.written.get(key) {
            Some(&at) => {
                if let Some(w) = self.writes.get_mut(at) {
                    w.state = text;
                    w.ttl_ms = ttl_ms;
                }
            }
            None => {
                self.written.insert(key, self.writes.len());
                self.writes.push(Write { key: key.to_vec(), at, state: text, ttl_ms });
            }
        }
    }
}

/// A new state as the scripts keep it: its text, and that text read back, which is what a later
/// limit or call sees (one with a field they cannot hold, 2^53 or more, is never seen again).
struct Kept {
    text: String,
    seen: Rc<[u8]>,
}

impl Kept {
    fn of(new_state: &[u8]) -> Self {
        let text = state::to_text(new_state).unwrap_or_default();
        let seen = state::from_text(text.as_bytes()).into();
        Kept { text, seen }
    }
}

/// A call's options.
struct Options {
    dry: bool,
    now_us: u64,
    /// Added to what a call writes: 60 s of real time when it ran at a simulated time.
    pad_ms: u64,
}

/// The options after a call's limits: `dry`, and in the test build a time (epoch µs), as the
/// scripts' test build takes it.
/// How much longer than its state a written key lives, as `decide.lua` pads it: a key that
/// moves to a node whose clock is behind (a slot migrated, a failover that replicates a
/// relative expiry) must not expire there while its state still decides.
pub const TTL_PAD_MS: u64 = 1000;

fn options(words: &[&[u8]], now_us: u64) -> Result<Options, String> {
    let mut out = Options { dry: false, now_us, pad_ms: TTL_PAD_MS };
    #[cfg(any(test, feature = "module-clock"))]
    let mut simulated = false;
    for word in words {
        if *word == b"dry" && !out.dry {
            out.dry = true;
            continue;
        }
        #[cfg(any(test, feature = "module-clock"))]
        if !simulated {
            if let Some(t) = decimal(word) {
                (simulated, out.now_us, out.pad_ms) = (true, t, 60_000);
                continue;
            }
        }
        return Err(format!("ERR sluice: unexpected option {}; expected \"dry\"", String::from_utf8_lossy(word)));
    }
    Ok(out)
}

fn unknown(name: &[u8], i: usize) -> String {
    format!("ERR sluice: unknown strategy {} for key {}", String::from_utf8_lossy(name), i + 1)
}
