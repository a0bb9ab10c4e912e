//! Rate strings (`100/min`, `2 per 5s`, `0/0`), duration strings (`500ms`, `1 min`) and their
//! parsed forms.
//!
//! The grammar, case-insensitive, spaces optional everywhere between tokens:
//!
//! ```text
//! rate     = "0" sep "0"                    (unlimited)
//!          | LIMIT sep [COUNT] UNIT
//! sep      = "/" | "per"
//! duration = COUNT UNIT
//! UNIT     = ms | millisecond(s) | s | sec(s) | second(s) | m | min(s) | minute(s)
//!          | h | hr(s) | hour(s) | d | day(s)
//! ```
//!
//! ```
//! use sluice::rate::{parse_duration_ms, Rate};
//! assert_eq!(Rate::parse("20 per 2 mins").unwrap(), Rate { limit: 20, period_ms: 120_000 });
//! assert_eq!(Rate::parse("0/0").unwrap(), Rate::UNLIMITED);
//! assert_eq!(parse_duration_ms("1 min").unwrap(), 60_000);
//! let err = Rate::parse("100/fortnight").unwrap_err();
//! assert!(err.to_string().starts_with("\"100/fortnight\": unknown unit \"fortnight\""));
//! ```
//!
//! Written by hand (no regex crate) to keep the `.wasm` small.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A limit of `limit` units of cost per `period_ms` milliseconds.
/// `Rate { limit: 0, period_ms: 0 }` is "unlimited" (`0/0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Rate {
    pub limit: u64,
    pub period_ms: u64,
}

/// The largest limit a rate may carry. Strategies multiply limits by times in milliseconds;
/// this bound (with [`MAX_PERIOD_MS`]) keeps every such product inside `u128` comfortably and
/// far from anything a real limit needs.
pub const MAX_LIMIT: u64 = 1_000_000_000_000;
/// The longest period a rate may have: 366 days.
pub const MAX_PERIOD_MS: u64 = 366 * DAY_MS;

const SECOND_MS: u64 = 1_000;
const MINUTE_MS: u64 = 60 * SECOND_MS;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;

/// What every unit error lists.
pub const UNITS_EXPECTED: &str = "expected one of ms, s, m, h, d (or their long forms)";

impl Rate {
    pub const UNLIMITED: Rate = Rate { limit: 0, period_ms: 0 };

    pub fn is_unlimited(&self) -> bool {
        self.limit == 0 && self.period_ms == 0
    }

    /// Parses a rate string; see the module docs for the grammar.
    pub fn parse(text: &str) -> Result<Rate, RateError> {
        parse_rate(text).map_err(|kind| RateError { text: text.to_string(), kind })
    }
}

/// A rule's limits: all of them must admit; or none at all (`0/0`, alone), which admits every
/// request and counts nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limits {
    Unlimited,
    /// Never empty; no `0/0` among them.
    Rates(Vec<Rate>),
}

impl Limits {
    /// The rates in force (none when unlimited).
    pub fn rates(&self) -> &[Rate] {
        match self {
            Limits::Unlimited => &[],
            Limits::Rates(rates) => rates,
        }
    }

    pub fn is_unlimited(&self) -> bool {
        matches!(self, Limits::Unlimited)
    }

    /// As the config spells them (`0/0` when unlimited).
    pub fn written(&self) -> Vec<String> {
        match self {
            Limits::Unlimited => vec![Rate::UNLIMITED.to_string()],
            Limits::Rates(rates) => rates.iter().map(ToString::to_string).collect(),
        }
    }
}

/// The normalized config shows `0/0` as the rate it is written as.
impl serde::Serialize for Limits {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Limits::Unlimited => [Rate::UNLIMITED].serialize(s),
            Limits::Rates(rates) => rates.serialize(s),
        }
    }
}

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(s: &str) -> Result<Rate, RateError> {
        Rate::parse(s)
    }
}

/// The shortest canonical spelling: `100/m`, `2/5s`, `1000/500ms`, `0/0`.
impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unlimited() {
            return f.write_str("0/0");
        }
        write!(f, "{}/", self.limit)?;
        write_duration(f, self.period_ms)
    }
}

/// Writes `ms` as `<n><largest unit that divides it>`, omitting a count of 1 (`m`, `5s`).
fn write_duration(f: &mut fmt::Formatter<'_>, ms: u64) -> fmt::Result {
    let (count, unit) = [(DAY_MS, "d"), (HOUR_MS, "h"), (MINUTE_MS, "m"), (SECOND_MS, "s")]
        .iter()
        .find(|(size, _)| ms != 0 && ms.is_multiple_of(*size))
        .map(|(size, unit)| (ms / size, *unit))
        .unwrap_or((ms, "ms"));
    if count == 1 {
        f.write_str(unit)
    } else {
        write!(f, "{count}{unit}")
    }
}

/// A rate string that does not parse: the text as given and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {kind}", quote(text))]
pub struct RateError {
    pub text: String,
    pub kind: RateErrorKind,
}

/// What was wrong with a rate string (displayed without the text itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateErrorKind {
    #[error("empty rate; expected a rate like \"100/min\" or \"0/0\" for unlimited")]
    Empty,
    #[error("limit {0} is negative; expected a whole number ≥ 0 before \"/\" or \"per\"")]
    NegativeLimit(String),
    #[error("limit {0} is not a whole number; expected digits only (no separators, exponents or words), as in \"100/min\"")]
    BadLimit(String),
    #[error("missing \"/\" or \"per\" after the limit; expected a rate like \"100/min\"")]
    MissingSeparator,
    #[error("missing period after {0:?}; expected a unit such as \"s\" or \"min\", as in \"100/min\"")]
    MissingPeriod(&'static str),
    #[error("period count {0} is negative; expected a whole number of units")]
    NegativePeriod(String),
    #[error("period count {0} is not a whole number; use a smaller unit (e.g. 1500ms for 1.5s)")]
    BadPeriod(String),
    #[error("missing unit after period count {0}; {UNITS_EXPECTED}")]
    MissingUnit(u64),
    #[error("unknown unit {}; {UNITS_EXPECTED}", quote(.0))]
    UnknownUnit(String),
    #[error("period is zero but the limit is {0}; expected a period > 0 (or \"0/0\" for unlimited)")]
    ZeroPeriod(u64),
    #[error("limit is zero, which would block everything; use \"0/0\" for unlimited, or a limit ≥ 1")]
    ZeroLimit,
    #[error("number {0} is too large to represent; expected a limit of at most {MAX_LIMIT} and a period of at most 366 days")]
    Overflow(String),
    #[error("limit {0} is too large; expected at most {MAX_LIMIT}")]
    LimitTooLarge(u64),
    #[error("period of {0} ms is too long; expected at most 366 days")]
    PeriodTooLong(u64),
}

/// A duration string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {kind}", quote(text))]
pub struct DurationError {
    pub text: String,
    pub kind: DurationErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationErrorKind {
    #[error("empty duration; expected a duration like \"500ms\" or \"2s\"")]
    Empty,
    #[error("{0} is negative; expected a duration like \"500ms\" or \"2s\"")]
    Negative(String),
    #[error("{0} is not a whole number; expected a duration like \"500ms\" (use a smaller unit for fractions)")]
    BadNumber(String),
    #[error("missing unit; {UNITS_EXPECTED}")]
    MissingUnit,
    #[error("unknown unit {}; {UNITS_EXPECTED}", quote(.0))]
    UnknownUnit(String),
    #[error("number {0} is too large to represent; expected a shorter duration")]
    Overflow(String),
}

/// Parses a duration such as `500ms`, `2s`, `1 min` or `0s` into milliseconds.
/// A unit is required (a bare `5` is ambiguous).
pub fn parse_duration_ms(text: &str) -> Result<u64, DurationError> {
    let err = |kind| DurationError { text: text.to_string(), kind };
    let lower = text.trim().to_ascii_lowercase();
    if lower.is_empty() {
        return Err(err(DurationErrorKind::Empty));
    }
    let (num, rest) = take_number(&lower);
    let count = match classify(num) {
        Number::Value(n) => n,
        Number::Missing => return Err(err(DurationErrorKind::BadNumber(quote(first_word(&lower))))),
        Number::Negative => return Err(err(DurationErrorKind::Negative(quote(num)))),
        Number::NotWhole => return Err(err(DurationErrorKind::BadNumber(quote(num)))),
        Number::Overflow => return Err(err(DurationErrorKind::Overflow(short(num)))),
    };
    let unit = rest.trim();
    if unit.is_empty() {
        return Err(err(DurationErrorKind::MissingUnit));
    }
    let size = unit_ms(unit).ok_or_else(|| err(DurationErrorKind::UnknownUnit(unit.to_string())))?;
    count.checked_mul(size).ok_or_else(|| err(DurationErrorKind::Overflow(short(num))))
}

fn parse_rate(text: &str) -> Result<Rate, RateErrorKind> {
    let lower = text.trim().to_ascii_lowercase();
    if lower.is_empty() {
        return Err(RateErrorKind::Empty);
    }
    let (num, rest) = take_number(&lower);
    let limit = match classify(num) {
        Number::Value(n) => n,
        Number::Missing => return Err(RateErrorKind::BadLimit(quote(first_word(&lower)))),
        Number::Negative => return Err(RateErrorKind::NegativeLimit(quote(num))),
        Number::NotWhole => return Err(RateErrorKind::BadLimit(quote(num))),
        Number::Overflow => return Err(RateErrorKind::Overflow(short(num))),
    };
    let rest = rest.trim_start();
    let (sep, rest) = if let Some(r) = rest.strip_prefix('/') {
        ("/", r)
    } else if let Some(r) = rest.strip_prefix("per") {
        ("per", r)
    } else {
        // `1e9/s`, `10k/min`, `100 requests/minute`: the separator comes later, so what stands
        // before it is a limit that did not read as one.
        return Err(match lower.find('/').or_else(|| lower.find("per")) {
            Some(at) => RateErrorKind::BadLimit(quote(lower[..at].trim_end())),
            None => RateErrorKind::MissingSeparator,
        });
    };
    let rest = rest.trim_start();
    if rest.is_empty() {
        return Err(RateErrorKind::MissingPeriod(sep));
    }
    let (num, unit) = take_number(rest);
    let count = match classify(num) {
        Number::Value(n) => Some(n),
        Number::Missing => None,
        Number::Negative => return Err(RateErrorKind::NegativePeriod(quote(num))),
        Number::NotWhole => return Err(RateErrorKind::BadPeriod(quote(num))),
        Number::Overflow => return Err(RateErrorKind::Overflow(short(num))),
    };
    let unit = unit.trim();
    let period_ms = match (count, unit.is_empty()) {
        // A zero period needs no unit: `0/0` is the documented spelling of "unlimited".
        (Some(0), true) => 0,
        (Some(n), true) => return Err(RateErrorKind::MissingUnit(n)),
        (None, true) => return Err(RateErrorKind::MissingPeriod(sep)),
        (count, false) => {
            let size = unit_ms(unit).ok_or_else(|| RateErrorKind::UnknownUnit(unit.to_string()))?;
            let count = count.unwrap_or(1);
            count.checked_mul(size).ok_or_else(|| RateErrorKind::Overflow(format!("{count} {unit}")))?
        }
    };
    match (limit, period_ms) {
        (0, 0) => Ok(Rate::UNLIMITED),
        (l, 0) => Err(RateErrorKind::ZeroPeriod(l)),
        (0, _) => Err(RateErrorKind::ZeroLimit),
        (l, _) if l > MAX_LIMIT => Err(RateErrorKind::LimitTooLarge(l)),
        (_, p) if p > MAX_PERIOD_MS => Err(RateErrorKind::PeriodTooLong(p)),
        (limit, period_ms) => Ok(Rate { limit, period_ms }),
    }
}

/// Milliseconds in one `unit` (already lower-cased and trimmed), if it is a known unit.
pub(crate) fn unit_ms(unit: &str) -> Option<u64> {
    Some(match unit {
        "ms" | "millisecond" | "milliseconds" => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => SECOND_MS,
        "m" | "min" | "mins" | "minute" | "minutes" => MINUTE_MS,
        "h" | "hr" | "hrs" | "hour" | "hours" => HOUR_MS,
        "d" | "day" | "days" => DAY_MS,
        _ => return None,
    })
}

enum Number {
    Value(u64),
    Missing,
    Negative,
    NotWhole,
    Overflow,
}

/// Splits off a leading number-like token (digits and the characters people put in numbers by
/// mistake: sign, decimal point, digit separators) so it can be judged as a whole.
fn take_number(s: &str) -> (&str, &str) {
    let end = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | ',' | '_')))
        .map_or(s.len(), |(i, _)| i);
    s.split_at(end)
}

fn classify(token: &str) -> Number {
    if token.is_empty() {
        Number::Missing
    } else if token.starts_with('-') {
        Number::Negative
    } else if !token.bytes().all(|b| b.is_ascii_digit()) {
        Number::NotWhole
    } else {
        // Only digits remain, so the sole possible failure is overflow.
        token.parse().map_or(Number::Overflow, Number::Value)
    }
}

/// A number as shown in errors: long runs of digits are cut.
fn short(num: &str) -> String {
    const MAX_CHARS: usize = 24;
    let mut out: String = num.chars().take(MAX_CHARS).collect();
    if out.len() < num.len() {
        out.push('…');
    }
    out
}

fn first_word(s: &str) -> &str {
    s.split(|c: char| c.is_whitespace() || c == '/').next().unwrap_or(s)
}

/// `text` as a JSON string literal, cut to a readable length, with every character that shows
/// as nothing (controls, format characters such as a zero-width space or a right-to-left
/// override, line separators, spaces other than ASCII's) escaped as `\uXXXX`: `"1/s"` with a
/// zero-width space after it must not read as a valid rate in an error, nor reorder a log line.
pub(crate) fn quote(text: &str) -> String {
    const MAX_CHARS: usize = 60;
    let mut shown: String = text.chars().take(MAX_CHARS).collect();
    if shown.len() < text.len() {
        shown.push('…');
    }
    let json = serde_json::to_string(&shown).unwrap_or_else(|_| format!("\"{shown}\""));
    if !json.chars().any(invisible) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 12);
    for c in json.chars() {
        if invisible(c) {
            // As JSON writes a character: one escape in the Basic Multilingual Plane, a
            // surrogate pair past it (the tag characters).
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters that show as nothing, or move the text around them (what serde_json leaves as
/// they are: it escapes only ASCII's controls).
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{7f}'..='\u{a0}' | '\u{ad}' | '\u{34f}' | '\u{61c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}'
        | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{206f}'
        | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}' | '\u{ffa0}' | '\u{fff0}'..='\u{fffb}'
        | '\u{e0000}'..='\u{e007f}')
        || (!c.is_ascii() && c.is_whitespace())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const S: u64 = 1_000;
    const M: u64 = 60_000;
    const H: u64 = 3_600_000;

    #[test]
    fn quoted_text_shows_what_would_show_as_nothing() {
        assert_eq!(quote("1/s\u{200b}"), r#""1/s\u200b""#);
        assert_eq!(quote("a\u{202e}b\u{85}c\u{a0}d\u{3000}"), r#""a\u202eb\u0085c\u00a0d\u3000""#);
        assert_eq!(quote("tab\t\"é"), r#""tab\t\"é""#, "serde_json's own escapes, and a visible accent, as they were");
        // Still a JSON string: it reads back to the text.
        assert_eq!(serde_json::from_str::<String>(&quote("x\u{feff}y")).unwrap(), "x\u{feff}y");
        assert_eq!(quote("a\u{e0041}"), r#""a\udb40\udc41""#, "a tag character, as a surrogate pair");
        assert_eq!(serde_json::from_str::<String>(&quote("a\u{e0041}")).unwrap(), "a\u{e0041}");
    }
    const D: u64 = 86_400_000;

    #[rustfmt::skip]
    const GOOD: &[(&str, u64, u64)] = &[
        ("5/m",               5,    M),
        ("100/minute",        100,  M),
        ("2/5s",              2,    5 * S),
        ("10/30 seconds",     10,   30 * S),
        ("20 per 2 mins",     20,   2 * M),
        ("2 per second",      2,    S),
        ("2 persecond",       2,    S),
        ("2persecond",        2,    S),
        ("1000/500ms",        1000, 500),
        ("0/0",               0,    0),
        ("0 per 0",           0,    0),
        ("0/0s",              0,    0),
        (" 7 / 3 h ",         7,    3 * H),
        ("7/HOUR",            7,    H),
        ("7 PER Hrs",         7,    H),
        ("7/hr",              7,    H),
        ("1/d",               1,    D),
        ("1/day",             1,    D),
        ("1/2days",           1,    2 * D),
        ("1/1ms",             1,    1),
        ("1/1millisecond",    1,    1),
        ("1/10 milliseconds", 1,    10),
        ("1/sec",             1,    S),
        ("1/secs",            1,    S),
        ("1/s",               1,    S),
        ("1/min",             1,    M),
        ("1/mins",            1,    M),
        ("1/minutes",         1,    M),
        ("1/h",               1,    H),
        ("1/hours",           1,    H),
        ("1/366d",            1,    366 * D),
        ("1000000000000/s",   1_000_000_000_000, S),
    ];

    #[test]
    fn good_rates_parse() {
        for &(text, limit, period_ms) in GOOD {
            let got: Rate = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(got, Rate { limit, period_ms }, "{text}");
        }
    }

    #[rustfmt::skip]
    const BAD: &[(&str, &str)] = &[
        ("",                 "empty rate"),
        ("   ",              "empty rate"),
        ("-5/m",             "limit \"-5\" is negative"),
        ("abc/m",            "limit \"abc\" is not a whole number"),
        ("1.5/m",            "limit \"1.5\" is not a whole number"),
        ("1,000/m",          "limit \"1,000\" is not a whole number; expected digits only (no separators"),
        ("1e9/second",       "limit \"1e9\" is not a whole number"),
        ("10k/min",          "limit \"10k\" is not a whole number"),
        ("100 requests/minute", "limit \"100 requests\" is not a whole number"),
        ("100 requests per minute", "limit \"100 requests\" is not a whole number"),
        ("100",              "missing \"/\" or \"per\""),
        ("100 m",            "missing \"/\" or \"per\""),
        ("100/",             "missing period after \"/\""),
        ("100 per",          "missing period after \"per\""),
        ("5/-2s",            "period count \"-2\" is negative"),
        ("5/1.5s",           "period count \"1.5\" is not a whole number"),
        ("5/10",             "missing unit after period count 10"),
        ("100/fortnight",    "unknown unit \"fortnight\"; expected one of ms, s, m, h, d (or their long forms)"),
        ("5/m extra",        "unknown unit \"m extra\""),
        ("5/mss",            "unknown unit \"mss\""),
        ("5/0",              "period is zero but the limit is 5"),
        ("5/0s",             "period is zero but the limit is 5"),
        ("0/m",              "use \"0/0\" for unlimited"),
        ("0/5s",             "use \"0/0\" for unlimited"),
        ("99999999999999999999/m", "number 99999999999999999999 is too large"),
        ("1/99999999999999999999ms", "number 99999999999999999999 is too large"),
        ("1/9999999999999999 d", "too large to represent"),
        ("1000000000001/s",  "limit 1000000000001 is too large"),
        ("1/367d",           "too long; expected at most 366 days"),
    ];

    #[test]
    fn bad_rates_are_rejected_with_the_text_and_what_was_expected() {
        for &(text, want) in BAD {
            let err = Rate::parse(text).expect_err(text);
            let msg = err.to_string();
            assert!(msg.starts_with(&quote(text)), "{text}: {msg}");
            assert!(msg.contains(want), "{text}: got {msg:?}, want {want:?}");
        }
    }

    #[test]
    fn error_kinds_are_typed() {
        assert_eq!(Rate::parse("0/m").unwrap_err().kind, RateErrorKind::ZeroLimit);
        assert_eq!(Rate::parse("").unwrap_err().kind, RateErrorKind::Empty);
        assert_eq!(Rate::parse("1/x").unwrap_err().kind, RateErrorKind::UnknownUnit("x".into()));
        assert_eq!(Rate::parse("3/0").unwrap_err().kind, RateErrorKind::ZeroPeriod(3));
    }

    #[test]
    fn long_text_is_truncated_in_errors() {
        let text = format!("1/{}", "x".repeat(500));
        let msg = Rate::parse(&text).unwrap_err().to_string();
        assert!(msg.len() < 400, "{msg}");
        assert!(msg.contains('…'));
    }

    #[test]
    fn display_is_canonical_and_parses_back() {
        for &(text, _, _) in GOOD {
            let r: Rate = text.parse().unwrap();
            let shown = r.to_string();
            assert_eq!(shown.parse::<Rate>().unwrap(), r, "{text} -> {shown}");
        }
        assert_eq!(Rate { limit: 100, period_ms: M }.to_string(), "100/m");
        assert_eq!(Rate { limit: 2, period_ms: 5 * S }.to_string(), "2/5s");
        assert_eq!(Rate { limit: 1000, period_ms: 500 }.to_string(), "1000/500ms");
        assert_eq!(Rate::UNLIMITED.to_string(), "0/0");
    }

    #[test]
    fn serializes_as_limit_and_period() {
        let json = serde_json::to_string(&Rate { limit: 100, period_ms: 60_000 }).unwrap();
        assert_eq!(json, r#"{"limit":100,"period_ms":60000}"#);
    }

    #[test]
    fn durations() {
        for (text, ms) in [("500ms", 500), ("2s", 2000), ("1 min", 60_000), ("0s", 0), ("3 Hours", 3 * H), ("1d", D)] {
            assert_eq!(parse_duration_ms(text).unwrap(), ms, "{text}");
        }
        for (text, want) in [
            ("", "empty duration"),
            ("5", "missing unit"),
            ("-1s", "\"-1\" is negative"),
            ("1.5s", "\"1.5\" is not a whole number"),
            ("s", "\"s\" is not a whole number"),
            ("2 fortnights", "unknown unit \"fortnights\""),
            ("99999999999999999999s", "too large"),
            ("999999999999999999 d", "too large"),
        ] {
            let msg = parse_duration_ms(text).unwrap_err().to_string();
            assert!(msg.contains(want), "{text}: {msg}");
        }
    }
}
