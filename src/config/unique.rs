//! Configuration text into a `serde_json::Value` that tells of every object naming a key twice.
//! serde_json (and serde_yaml_ng) keep the last value, so a rule that wrote `match` twice
//! would silently count what its second `match` says; the filter's JSON and the CLI's YAML
//! both go through [`read`] instead, which keeps the first value and records each repeat as an
//! error at its path, so that the config is refused with the repeat beside its other errors.
//! It also keeps a [`Budget`] of what a reading may build, which YAML's aliases need.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::compile::{index, join};
use super::error::{ConfigError, Problem};
use crate::rate::quote;

/// The repeats recorded: the config is refused with the first 16 named, however many it has,
/// so that a config of repeats costs its reader no more than its own size.
const MAX_REPEATS: usize = 16;
/// A key's length in a path before it is cut (as [`quote`] cuts the found text).
const MAX_KEY_IN_PATH: usize = 60;

/// What a reading may still build. The filter's JSON reads [`Unbounded`]: JSON has no aliases,
/// so what it builds is bounded by its size, and the check costs the module nothing.
pub trait Allowance {
    /// Takes `units` (see [`Budget`]), or fails the reading.
    fn take<E: Error>(&mut self, units: usize) -> Result<(), E>;
}

/// No bound.
pub struct Unbounded;

impl Allowance for Unbounded {
    fn take<E: Error>(&mut self, _: usize) -> Result<(), E> {
        Ok(())
    }
}

/// What the reading of a text may build, in units of about a value's memory (32 bytes): a value
/// is 1, an object [`OBJECT`] more once it has a key (its map's first node), a byte of key or
/// string 1. A YAML alias builds its anchor's values again wherever it stands, so a file of a
/// few hundred KB can ask for billions of them (serde_yaml_ng bounds how many aliases it
/// follows, not what they build). A reading past it fails, naming the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    left: usize,
    limit: usize,
    spent: bool,
}

/// An object's map, beyond the value: its first node holds eleven entries, about 630 bytes.
const OBJECT: usize = 20;
/// [`Budget::for_text`]: a text without aliases builds at most 7.7 units per byte of it (in a
/// YAML flow sequence, `?a,` is an object of one key and no value in 3 bytes: 23 units; a
/// string's escape such as `\L`, 2 bytes for 3, is 1.5; JSON's densest, `{"":{"":…}}`, about
/// 4.4); 8 per byte reads any such text, and a budget spent builds no more than the costliest
/// plain text of the same size.
const PER_BYTE: usize = 8;
/// However short the text: room for a small file to reuse an anchor many times, about 32 MB.
const FLOOR: usize = 1_000_000;

impl Budget {
    /// The budget of reading a text of `len` bytes (all its documents together).
    pub fn for_text(len: usize) -> Budget {
        let limit = len.saturating_mul(PER_BYTE).max(FLOOR);
        Budget { left: limit, limit, spent: false }
    }

    /// Whether a reading failed for want of it.
    pub fn spent(&self) -> bool {
        self.spent
    }
}

impl Allowance for Budget {
    fn take<E: Error>(&mut self, units: usize) -> Result<(), E> {
        match self.left.checked_sub(units) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => {
                self.spent = true;
                Err(E::custom(format_args!(
                    "over the limit of {} units built for a file of this size (a value 1, an object {OBJECT} more, a byte of text 1; {PER_BYTE} per byte of the file, at least {FLOOR}; each alias builds its anchor's values again)",
                    self.limit
                )))
            }
        }
    }
}

/// A document as read: the value (a repeated key holds its first value) and every repeat.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub value: Value,
    /// One [`Problem::DuplicateKey`] per key written again, at its path, in document order.
    pub repeats: Vec<ConfigError>,
}

/// Reads one value from `deserializer` (JSON, YAML, ...), as [`Parsed`], taking what it builds
/// from `budget`.
pub fn read<'de, D: Deserializer<'de>, B: Allowance>(deserializer: D, budget: &mut B) -> Result<Parsed, D::Error> {
    let mut repeats = Vec::new();
    let value = Seed { at: At::Root, repeats: &mut repeats, budget }.deserialize(deserializer)?;
    Ok(Parsed { value, repeats })
}

/// Parses JSON as [`read`] does.
pub fn parse_json(bytes: &[u8]) -> Result<Parsed, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = read(&mut de, &mut Unbounded)?;
    de.end()?;
    Ok(parsed)
}

/// Where a value is, as links up to the root: a path is spelled out only for a repeat, so
/// reading a config that has none allocates nothing for paths.
#[derive(Clone, Copy)]
enum At<'a> {
    Root,
    Key(&'a At<'a>, &'a str),
    Index(&'a At<'a>, usize),
}

impl At<'_> {
    /// The path as the compiler's errors spell it (`rules[0].match`).
    fn path(&self) -> String {
        match *self {
            At::Root => String::new(),
            // A key past a readable length is cut, as the found text is: a config of long keys
            // repeated must not make every repeat's path as long as the config.
            At::Key(up, key) if key.len() > MAX_KEY_IN_PATH => format!("{}[{}]", up.path(), quote(key)),
            At::Key(up, key) => join(&up.path(), key),
            At::Index(up, i) => index(&up.path(), i),
        }
    }
}

struct Seed<'a, 'r, B> {
    at: At<'a>,
    repeats: &'r mut Vec<ConfigError>,
    budget: &'r mut B,
}

impl<'de, B: Allowance> DeserializeSeed<'de> for Seed<'_, '_, B> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.budget.take(1)?;
        deserializer.deserialize_any(self)
    }
}

impl<'de, B: Allowance> Visitor<'de> for Seed<'_, '_, B> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // YAML's .inf and .nan have no JSON number: kept as their text, so the field that holds
        // one is refused by name (as null they would read as a field not set).
        // (Spelled here: formatting a float would link all of core's float printing, 25 KB of
        // module.)
        let text = || {
            if v.is_nan() {
                "NaN"
            } else if v > 0.0 {
                "inf"
            } else {
                "-inf"
            }
        };
        Ok(Number::from_f64(v).map_or_else(|| Value::String(text().to_string()), Value::Number))
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Value, E> {
        self.budget.take(v.len())?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: Error>(self, v: String) -> Result<Value, E> {
        self.budget.take(v.len())?;
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) =
            seq.next_element_seed(Seed { at: At::Index(&self.at, items.len()), repeats: self.repeats, budget: self.budget })?
        {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            self.budget.take(key.len() + if out.is_empty() { OBJECT } else { 0 })?;
            let at = At::Key(&self.at, &key);
            if out.contains_key(&key) {
                if self.repeats.len() < MAX_REPEATS {
                    self.repeats.push(ConfigError { path: at.path(), found: Some(quote(&key)), problem: Problem::DuplicateKey });
                }
                // Read (it must still be valid text) and dropped, with any repeat inside it:
                // its paths would name the first value's fields. (It builds nothing: an alias in
                // it is skipped, not followed.)
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let value = map.next_value_seed(Seed { at, repeats: self.repeats, budget: self.budget })?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(p: &Parsed) -> Vec<(&str, Option<&str>)> {
        p.repeats.iter().map(|r| (r.path.as_str(), r.found.as_deref())).collect()
    }

    #[test]
    fn a_key_twice_keeps_its_first_value_and_is_recorded_at_its_path() {
        let text = br#"{"rules": [{"name": "a", "limit": "1/s"}, {"name": "login", "limit": "5/min", "match": {"path": "/login"}, "match": {"path": "/**"}}]}"#;
        let p = parse_json(text).unwrap();
        assert_eq!(paths(&p), [("rules[1].match", Some("\"match\""))]);
        assert_eq!(p.repeats[0].problem, Problem::DuplicateKey);
        assert_eq!(p.value["rules"][1]["match"]["path"], "/login");
        // At the top, in a key that is not plain, three times, and inside a repeat's own value
        // (dropped: its path would name the first value's field).
        let p = parse_json(br#"{"a": 1, "a": {"b": 1, "b": 2}, "h": {"x y": 1, "x y": 2, "x y": 3}}"#).unwrap();
        assert_eq!(paths(&p), [("a", Some("\"a\"")), ("h[\"x y\"]", Some("\"x y\"")), ("h[\"x y\"]", Some("\"x y\""))]);
        assert_eq!(p.value, serde_json::json!({"a": 1, "h": {"x y": 1}}));
        assert_eq!(paths(&parse_json(br#"[{"k": 1, "k": 1}]"#).unwrap()), [("[0].k", Some("\"k\""))]);
    }

    /// A config of repeats costs no more than its size: at most [`MAX_REPEATS`] are recorded,
    /// a long key is cut in their paths, and a repeat's own value is only read.
    #[test]
    fn a_config_of_repeats_is_refused_at_the_cost_of_its_size() {
        let long = "k".repeat(100_000);
        let inner: String = (0..1000).map(|_| r#""a": {"b": 0, "b": 0}"#).collect::<Vec<_>>().join(",");
        let text = format!(r#"{{"{long}": {{{inner}}}, "{long}": {{{inner}}}}}"#);
        let p = parse_json(text.as_bytes()).unwrap();
        assert_eq!(p.repeats.len(), MAX_REPEATS);
        assert!(p.repeats.iter().all(|r| r.path.len() < 200), "{:?}", p.repeats[0].path);
        assert!(p.repeats[0].path.starts_with("[\"kkk") && p.repeats[0].path.contains('…'), "{}", p.repeats[0].path);
    }

    #[test]
    fn without_repeats_it_reads_as_serde_json_reads_it() {
        let same = br#"{"a": [1, -2, 3.5, "x", null, true, {"b": {}}], "c": 18446744073709551615}"#;
        let p = parse_json(same).unwrap();
        assert!(p.repeats.is_empty());
        assert_eq!(Some(p.value), serde_json::from_slice::<Value>(same).ok());
        assert!(parse_json(br#"{"a": 1} x"#).is_err(), "trailing text");
        assert!(parse_json(br#"{"a": 1, "a": [}"#).is_err(), "a repeat's value is still read");
    }
}
