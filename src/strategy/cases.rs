//! The shared strategy case table (`tests/cases/strategies.json`) as types, so every backend
//! (native tests, the `.wasm` harness, the Lua scripts in Redis) reads it the same way.
//! The file's `_doc` field explains its format.

use serde::Deserialize;

use super::{Decision, Param, Strategy};
use crate::rate::Rate;

/// The whole table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    #[serde(rename = "_doc", default)]
    pub doc: Vec<String>,
    /// Epoch ms that every case's times are relative to (plus the case's offsets).
    pub base_ms: u64,
    pub cases: Vec<Case>,
}

/// One rule and the requests made against one key, from no state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub strategy: StrategySpec,
    pub rate: RateSpec,
    /// Run the case once per offset (from a fresh key each time); the results must not change.
    pub offsets_ms: Vec<u64>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    pub limit: u64,
    pub period_ms: u64,
}

/// A strategy as the table spells it: its config name plus parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategySpec {
    #[serde(rename = "type")]
    pub kind: String,
    pub burst: Option<u64>,
    pub max_debt: Option<u64>,
    pub max_delay_ms: Option<u64>,
    pub max_entries: Option<u32>,
}

/// One request and the decision expected for it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Relative to `base_ms + offset`; may go backwards (a wall clock stepping back).
    pub t_ms: u64,
    /// Extra microseconds (0..999) on top of `t_ms`.
    #[serde(default)]
    pub us: u64,
    /// Before this step, replace the key's state by bytes that do not decode.
    #[serde(default)]
    pub corrupt: bool,
    pub cost: u64,
    pub allowed: bool,
    pub remaining: u64,
    pub reset_ms: u64,
    pub retry_after_ms: u64,
    #[serde(default)]
    pub delay_ms: u64,
}

/// Reads the table.
pub fn parse(json: &str) -> Result<Table, serde_json::Error> {
    serde_json::from_str(json)
}

impl StrategySpec {
    /// The [`Strategy`] this spells, or `None` for an unknown type.
    pub fn strategy(&self) -> Option<Strategy> {
        Strategy::build(&self.kind, |p| match p {
            Param::Burst => self.burst,
            Param::MaxDebt => self.max_debt,
            Param::MaxDelayMs => self.max_delay_ms,
            Param::MaxEntries => self.max_entries.map(u64::from),
        })
    }
}

impl RateSpec {
    pub fn rate(&self) -> Rate {
        Rate { limit: self.limit, period_ms: self.period_ms }
    }
}

impl Step {
    /// The step's clock in epoch µs.
    pub fn now_us(&self, base_ms: u64, offset_ms: u64) -> u64 {
        base_ms.saturating_add(offset_ms).saturating_add(self.t_ms).saturating_mul(1000).saturating_add(self.us)
    }

    /// The decision this step expects, for a rate whose limit is `limit`.
    pub fn expected(&self, limit: u64) -> Decision {
        Decision {
            allowed: self.allowed,
            limit,
            remaining: self.remaining,
            reset_ms: self.reset_ms,
            retry_after_ms: self.retry_after_ms,
            delay_ms: self.delay_ms,
        }
    }
}
