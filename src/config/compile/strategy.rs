//! A rule's strategy: a name from the catalogue and the parameters the catalogue lists for it,
//! each with its bounds and default.
use serde_json::{Map, Value};

use super::*;
use crate::rate::{parse_duration_ms, Limits, Rate, MAX_LIMIT};
use crate::strategy::{Param, CATALOGUE, NAMES};

impl Compiler {
    /// A strategy by name or as `{type, params}`; its parameters are the catalogue's, each
    /// with its bounds and its default (some depend on the limits).
    pub(super) fn strategy(&mut self, path: &str, v: Option<&Value>, limits: &Limits) -> Option<Strategy> {
        let Some(v) = v else {
            return Some(Strategy::SlidingWindowCounter);
        };
        let (name, params) = match v {
            Value::String(_) => (self.keyword(path, v, &NAMES)?, None),
            Value::Object(m) => {
                let tp = join(path, "type");
                let name = match field(m, "type") {
                    Some(t) => self.keyword(&tp, t, &NAMES)?,
                    None => {
                        self.report(tp, None, Problem::Missing);
                        return None;
                    }
                };
                (name, Some(m))
            }
            _ => {
                self.wrong_type(path, v, "a strategy name or an object with \"type\"");
                return None;
            }
        };
        let entry = CATALOGUE.iter().find(|e| e.name == name)?;
        let empty = Map::new();
        let params = params.unwrap_or(&empty);
        let mut ok = true;
        for key in params.keys().filter(|k| *k != "type") {
            if !entry.keys.contains(&key.as_str()) {
                let did_you_mean = did_you_mean(key, entry.keys);
                let e = Problem::UnknownParam { strategy: entry.name, did_you_mean, allowed: entry.keys, param: key.clone() };
                self.report(join(path, key), None, e);
                ok = false;
            }
        }
        let rates = limits.rates();
        let mut values: Vec<(Param, Option<u64>)> = Vec::with_capacity(entry.params.len());
        for &p in entry.params {
            match self.param(path, params, p, rates) {
                Some(value) => values.push((p, value)),
                None => ok = false,
            }
        }
        let value = |p: Param| values.iter().find(|(q, _)| *q == p).and_then(|(_, v)| *v);
        if ok {
            Strategy::build(name, value)
        } else {
            None
        }
    }

    /// One strategy parameter: its value (`None` for a default burst, which is the limit), or
    /// `None` (outer) after reporting why it is wrong.
    pub(super) fn param(&mut self, path: &str, params: &Map<String, Value>, p: Param, rates: &[Rate]) -> Option<Option<u64>> {
        let at = |key: &str| join(path, key);
        match p {
            Param::Burst => match field(params, "burst") {
                Some(v) => self.uint(&at("burst"), v, 1, MAX_LIMIT).map(Some),
                None => Some(None),
            },
            Param::MaxDebt => match field(params, "max_debt") {
                Some(v) => self.uint(&at("max_debt"), v, 0, MAX_LIMIT).map(Some),
                None => Some(Some(rates.iter().map(|r| r.limit).min().unwrap_or(0))),
            },
            Param::MaxDelayMs => match (field(params, "max_delay"), field(params, "max_delay_ms")) {
                (Some(_), Some(_)) => {
                    self.report(at("max_delay_ms"), None, Problem::DelayTwice);
                    None
                }
                (Some(v), None) => self.delay(&at("max_delay"), v).map(Some),
                (None, Some(v)) => self.uint(&at("max_delay_ms"), v, 0, MAX_DELAY_MS).map(Some),
                (None, None) => Some(Some(DEFAULT_MAX_DELAY_MS)),
            },
            Param::MaxEntries => match field(params, "max_entries") {
                Some(v) => self.uint(&at("max_entries"), v, 1, MAX_LOG_ENTRIES).map(Some),
                None => Some(Some(rates.iter().map(|r| r.limit).max().unwrap_or(1).clamp(1, DEFAULT_LOG_ENTRIES_CAP))),
            },
        }
    }

    pub(super) fn delay(&mut self, path: &str, v: &Value) -> Option<u64> {
        let Value::String(s) = v else {
            self.wrong_type(path, v, "a duration string such as \"500ms\" (or use max_delay_ms)");
            return None;
        };
        match parse_duration_ms(s) {
            Ok(ms) if ms <= MAX_DELAY_MS => Some(ms),
            Ok(_) => {
                self.report(path, Some(v), Problem::DelayTooLong { max_ms: MAX_DELAY_MS });
                None
            }
            Err(e) => {
                self.report(path, Some(v), Problem::Duration(e.kind));
                None
            }
        }
    }
}
