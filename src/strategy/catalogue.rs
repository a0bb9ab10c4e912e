//! The one list of strategies: each one's config name, the parameters it takes and what the Lua
//! script receives of them. The config compiler, the normalized output, the shared case table,
//! the Redis calling convention and the tests all read it here; adding a strategy is a variant
//! and an entry in this file, its module (the pure decision), its Lua mirror and its text tag
//! in `src/redis/state.rs` (without which the Redis module would read its keys as never seen;
//! docs/architecture.md, "Adding a strategy", lists the rest).

/// Which algorithm a rule uses, with its parameters (already validated by the config compiler).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    FixedWindow,
    SlidingWindowCounter,
    /// Exact log of admitted (time, cost) entries; memory O(limit), capped at `max_entries`.
    SlidingWindowLog {
        max_entries: u32,
    },
    /// Capacity `burst` (default = limit), refilled at limit/period.
    TokenBucket {
        burst: Option<u64>,
    },
    /// Like a token bucket, but a request is admitted while tokens stay ≥ -max_debt.
    TokenBucketDebt {
        burst: Option<u64>,
        max_debt: u64,
    },
    /// Capacity `burst` (default = limit), drains at limit/period; full = reject.
    LeakyBucket {
        burst: Option<u64>,
    },
    /// Excess waits (admitted with a delay) up to `max_delay_ms`, else rejected.
    LeakyBucketQueue {
        burst: Option<u64>,
        max_delay_ms: u64,
    },
    /// Generic cell rate algorithm; `burst` (default = limit) requests may arrive at once,
    /// 1 = strict spacing.
    Gcra {
        burst: Option<u64>,
    },
}

/// A strategy parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// Capacity; `None` (and 0 in the Lua convention) is the limit itself.
    Burst,
    MaxDebt,
    MaxDelayMs,
    MaxEntries,
}

impl Param {
    /// Its name in the normalized config (and the input's main spelling).
    pub fn key(self) -> &'static str {
        match self {
            Param::Burst => "burst",
            Param::MaxDebt => "max_debt",
            Param::MaxDelayMs => "max_delay_ms",
            Param::MaxEntries => "max_entries",
        }
    }
}

/// One strategy in the catalogue.
#[derive(Debug)]
pub struct Entry {
    pub name: &'static str,
    /// Its parameters, in the order the normalized config shows them.
    pub params: &'static [Param],
    /// Every key the config accepts beside `type` (a parameter may have two spellings).
    pub keys: &'static [&'static str],
    /// The script's `p1` and `p2` (0 when absent).
    pub lua: [Option<Param>; 2],
}

use Param::*;

/// Every strategy, in the order the documentation lists them.
pub const CATALOGUE: [Entry; 8] = [
    Entry { name: "fixed_window", params: &[], keys: &[], lua: [None, None] },
    Entry { name: "sliding_window_counter", params: &[], keys: &[], lua: [None, None] },
    Entry { name: "sliding_window_log", params: &[MaxEntries], keys: &["max_entries"], lua: [Some(MaxEntries), None] },
    Entry { name: "token_bucket", params: &[Burst], keys: &["burst"], lua: [Some(Burst), None] },
    Entry {
        name: "token_bucket_debt",
        params: &[Burst, MaxDebt],
        keys: &["burst", "max_debt"],
        lua: [Some(Burst), Some(MaxDebt)],
    },
    Entry { name: "leaky_bucket", params: &[Burst], keys: &["burst"], lua: [Some(Burst), None] },
    Entry {
        name: "leaky_bucket_queue",
        params: &[Burst, MaxDelayMs],
        keys: &["burst", "max_delay", "max_delay_ms"],
        lua: [Some(Burst), Some(MaxDelayMs)],
    },
    Entry { name: "gcra", params: &[Burst], keys: &["burst"], lua: [Some(Burst), None] },
];

/// Every strategy name, as written in configs.
pub const NAMES: [&str; 8] = {
    let mut names = [""; 8];
    let mut i = 0;
    while i < CATALOGUE.len() {
        names[i] = CATALOGUE[i].name;
        i += 1;
    }
    names
};

impl Strategy {
    /// Its entry in [`CATALOGUE`].
    pub fn entry(&self) -> &'static Entry {
        let i = match self {
            Strategy::FixedWindow => 0,
            Strategy::SlidingWindowCounter => 1,
            Strategy::SlidingWindowLog { .. } => 2,
            Strategy::TokenBucket { .. } => 3,
            Strategy::TokenBucketDebt { .. } => 4,
            Strategy::LeakyBucket { .. } => 5,
            Strategy::LeakyBucketQueue { .. } => 6,
            Strategy::Gcra { .. } => 7,
        };
        &CATALOGUE[i]
    }

    /// The strategy's name in the configuration (and in the Lua calling convention).
    pub fn name(&self) -> &'static str {
        self.entry().name
    }

    /// The value of one of its parameters; `None` for a default burst and for a parameter it
    /// does not take.
    pub fn param(&self, p: Param) -> Option<u64> {
        match (self, p) {
            (Strategy::SlidingWindowLog { max_entries }, MaxEntries) => Some(u64::from(*max_entries)),
            (
                Strategy::TokenBucket { burst }
                | Strategy::LeakyBucket { burst }
                | Strategy::Gcra { burst }
                | Strategy::TokenBucketDebt { burst, .. }
                | Strategy::LeakyBucketQueue { burst, .. },
                Burst,
            ) => *burst,
            (Strategy::TokenBucketDebt { max_debt, .. }, MaxDebt) => Some(*max_debt),
            (Strategy::LeakyBucketQueue { max_delay_ms, .. }, MaxDelayMs) => Some(*max_delay_ms),
            _ => None,
        }
    }

    /// The strategy called `name`, its parameters given by `param` (absent ones take 0, and a
    /// burst of 0 or none is the default); `None` for an unknown name.
    pub fn build(name: &str, param: impl Fn(Param) -> Option<u64>) -> Option<Strategy> {
        let value = |p: Param| param(p).unwrap_or(0);
        let burst = param(Burst).filter(|b| *b > 0);
        Some(match name {
            "fixed_window" => Strategy::FixedWindow,
            "sliding_window_counter" => Strategy::SlidingWindowCounter,
            "sliding_window_log" => {
                Strategy::SlidingWindowLog { max_entries: u32::try_from(value(MaxEntries)).unwrap_or(u32::MAX) }
            }
            "token_bucket" => Strategy::TokenBucket { burst },
            "token_bucket_debt" => Strategy::TokenBucketDebt { burst, max_debt: value(MaxDebt) },
            "leaky_bucket" => Strategy::LeakyBucket { burst },
            "leaky_bucket_queue" => Strategy::LeakyBucketQueue { burst, max_delay_ms: value(MaxDelayMs) },
            "gcra" => Strategy::Gcra { burst },
            _ => return None,
        })
    }

    /// The script's two strategy arguments (`p1`, `p2`): 0 for an absent one, as for a default
    /// burst.
    pub fn lua_params(&self) -> [u64; 2] {
        self.entry().lua.map(|p| p.and_then(|p| self.param(p)).unwrap_or(0))
    }

    /// The strategy `name` with the decision script's two parameters, as the catalogue passes
    /// them: the inverse of [`Strategy::lua_params`] (`None` for an unknown name).
    pub fn from_lua_params(name: &str, params: [u64; 2]) -> Option<Strategy> {
        let lua = CATALOGUE.iter().find(|e| e.name == name)?.lua;
        Strategy::build(name, |p| lua.iter().position(|l| *l == Some(p)).and_then(|i| params.get(i).copied()))
    }

    /// This strategy with its sizes (`burst`, `max_debt`) scaled by `scale`, as a share of a
    /// limit is: what one proxy of several may hold when it decides alone.
    pub fn scaled(&self, scale: impl Fn(u64) -> u64) -> Strategy {
        let param = |p: Param| self.param(p).map(|v| if matches!(p, Burst | MaxDebt) { scale(v) } else { v });
        Strategy::build(self.name(), param).unwrap_or_else(|| self.clone())
    }

    /// How long it may hold a request before forwarding it (0: it never queues).
    pub fn max_delay_ms(&self) -> u64 {
        self.param(MaxDelayMs).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_strategy() -> Vec<Strategy> {
        NAMES.iter().filter_map(|n| Strategy::build(n, |p| Some(7 + p as u64))).collect()
    }

    #[test]
    fn every_name_builds_the_strategy_it_names_and_back() {
        let all = every_strategy();
        assert_eq!(all.len(), CATALOGUE.len());
        for (s, name) in all.iter().zip(NAMES) {
            assert_eq!(s.name(), name);
            // What `param` reads back is what `build` was given, for every parameter it takes.
            for p in s.entry().params {
                assert_eq!(s.param(*p), Some(7 + *p as u64), "{name} {p:?}");
            }
            assert_eq!(Strategy::build(name, |p| s.param(p)).as_ref(), Some(s));
            assert_eq!(Strategy::from_lua_params(name, s.lua_params()).as_ref(), Some(s));
        }
        assert_eq!(Strategy::build("fortnightly", |_| None), None);
        assert_eq!(Strategy::from_lua_params("fortnightly", [0, 0]), None);
    }

    #[test]
    fn keys_are_the_parameters_and_lua_takes_only_parameters_of_its_strategy() {
        for e in &CATALOGUE {
            for p in e.params {
                assert!(e.keys.contains(&p.key()), "{}: {p:?} has no key", e.name);
            }
            for p in e.lua.iter().flatten() {
                assert!(e.params.contains(p), "{}: lua reads {p:?}, which it does not take", e.name);
            }
        }
    }

    #[test]
    fn lua_gets_zero_for_a_default_burst() {
        assert_eq!(Strategy::TokenBucketDebt { burst: None, max_debt: 4 }.lua_params(), [0, 4]);
        assert_eq!(Strategy::LeakyBucketQueue { burst: Some(3), max_delay_ms: 250 }.lua_params(), [3, 250]);
        assert_eq!(Strategy::SlidingWindowLog { max_entries: 9 }.lua_params(), [9, 0]);
        assert_eq!(Strategy::FixedWindow.lua_params(), [0, 0]);
    }
}
