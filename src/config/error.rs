//! Config compile errors: each one a path (`rules[2].limit`), the offending text (quoted,
//! truncated) and what was expected; [`ConfigErrors`] is every error of one compile.

use std::fmt;

use super::glob::GlobErrorKind;
use crate::rate::{DurationErrorKind, RateErrorKind};

/// Every error found in one config: keys written twice first, then the rest in the order of
/// the config's fields (the compiler's walk, not the text's: an object's keys come sorted).
/// Never empty.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }

    pub fn len(&self) -> usize {
        self.errors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

/// One error per line.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// One error: `path: "found": problem`. The path is empty for the document itself; `found` is
/// `None` when there is nothing to quote (a missing field).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigError {
    pub path: String,
    /// The offending value rendered as JSON (strings quoted), truncated.
    pub found: Option<String>,
    pub problem: Problem,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        if let Some(found) = &self.found {
            write!(f, "{found}: ")?;
        }
        write!(f, "{}", self.problem)
    }
}

/// What was wrong (displayed after the path and the quoted value).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error("no configuration; expected a JSON object with at least \"rules\"")]
    NoConfiguration,
    #[error("and {count} more problems, not listed; fix these and run again")]
    Unlisted { count: usize },
    #[error("not valid JSON: {0}")]
    InvalidJson(String),
    #[error("expected {expected}, found {found}")]
    WrongType { expected: &'static str, found: &'static str },
    #[error("missing required field")]
    Missing,
    #[error("unknown field{}; expected one of {}", suggestion(.did_you_mean), .allowed.join(", "))]
    UnknownField { did_you_mean: Option<&'static str>, allowed: &'static [&'static str] },
    #[error("unknown value{}; expected one of {}", suggestion(.did_you_mean), .allowed.join(", "))]
    UnknownValue { did_you_mean: Option<&'static str>, allowed: &'static [&'static str] },
    #[error("expected an integer from {min} to {max}")]
    OutOfRange { min: u64, max: u64 },
    #[error("expected a number greater than 0 and at most 1")]
    BadShare,
    #[error("invalid {what}; expected 1 to 64 characters from A-Z a-z 0-9 _ . -")]
    BadName { what: &'static str },
    #[error("empty {what}; {expected}")]
    Empty { what: &'static str, expected: &'static str },
    #[error("too many entries ({found}); expected at most {max}")]
    TooMany { found: usize, max: usize },
    #[error("duplicate rule name; rules[{first}] already uses it")]
    DuplicateRule { first: usize },
    #[error("the rate limit fields call limit {limit} of rules[{rule}] by this name; pick another")]
    PolicyNameTaken { rule: usize, limit: usize },
    #[error("duplicate {what}; expected each once")]
    Duplicate { what: &'static str },
    /// Found by the reader, which keeps the first value: the other errors are of that one.
    #[error("duplicate key; each key may appear once in an object")]
    DuplicateKey,
    #[error("{0}")]
    Rate(RateErrorKind),
    #[error("{0}")]
    Duration(DurationErrorKind),
    #[error("{0}")]
    Glob(GlobErrorKind),
    #[error("invalid header name; expected a lower- or upper-case token such as \"x-api-key\"{}", if *.pseudo_ok { " (or a pseudo-header such as \":authority\")" } else { "" })]
    BadHeaderName { pseudo_ok: bool },
    #[error("invalid header value; expected visible characters, spaces or tabs (no line breaks or control characters)")]
    BadHeaderValue,
    #[error("{0}; expected another header, or none")]
    ReservedHeader(&'static str),
    #[error("invalid {what}; expected {expected}")]
    BadText { what: &'static str, expected: &'static str },
    #[error("invalid CIDR or IP address ({reason}); expected e.g. \"10.0.0.0/8\", \"2001:db8::/32\" or \"192.0.2.7\"")]
    BadCidr { reason: String },
    #[error("host bits are set; did you mean \"{network}\"?")]
    HostBitsSet { network: String },
    #[error("\"limit\" and \"limits\" are both set; expected exactly one")]
    LimitAndLimits,
    #[error("missing \"limit\" (or \"limits\"); expected a rate such as \"100/min\"")]
    NoLimit,
    #[error("\"0/0\" (unlimited) cannot be combined with other limits; remove it")]
    UnlimitedMixed,
    #[error("cannot be combined with other identifier parts (global counts every request together); expected global alone, or the other parts without it")]
    GlobalMixed,
    #[error("an identifier object needs exactly one of header, query, cookie (or parts); found {found}")]
    IdentifierKind { found: usize },
    #[error("\"fallback\" applies to the whole identifier; put it next to \"parts\": {{parts: [...], fallback: ...}}")]
    FallbackInPart,
    #[error(
        "\"fallback\" has no effect: the identifier has no header, query or cookie part; expected such a part, or no fallback"
    )]
    FallbackUnused,
    #[error("backend redis needs a top-level \"redis\" block (with at least \"cluster\")")]
    RedisNotConfigured,
    #[error("on_error only applies to backend: redis (this rule is local); remove it or set backend: redis")]
    OnErrorLocal,
    #[error("{param:?} is not a parameter of strategy {strategy}{}; expected one of {}", suggestion(.did_you_mean), list_or_none(.allowed))]
    UnknownParam { strategy: &'static str, did_you_mean: Option<&'static str>, allowed: &'static [&'static str], param: String },
    #[error("\"max_delay\" and \"max_delay_ms\" are both set; expected at most one")]
    DelayTwice,
    #[error("max_delay is longer than {max_ms} ms; requests would be held past typical proxy timeouts")]
    DelayTooLong { max_ms: u64 },
    #[error("default {default} is greater than max {max}")]
    DefaultAboveMax { default: u64, max: u64 },
    #[error("default {default} is below min {min}; a value below min takes the default, so it must be at least min")]
    DefaultBelowMin { default: u64, min: u64 },
    #[error("min {min} is greater than max {max}")]
    MinAboveMax { min: u64, max: u64 },
    #[error("invalid secret (value not shown); expected {min} to {max} printable ASCII characters, the same on every proxy")]
    BadSecret { min: usize, max: usize },
    #[error("with backend: redis the decision script forms numbers up to {largest}, above 2^53 (9007199254740992), which Lua cannot hold exactly; expected a smaller limit, period, burst, max_debt or cost max")]
    NotExactInLua { largest: u128 },
    #[error("a cost of {cost} is more than the limit {rate} admits at once ({capacity}): no request would ever be admitted; expected a cost of at most {capacity}, or a larger limit or burst")]
    CostAboveCapacity { cost: u64, capacity: u64, rate: crate::rate::Rate },
    #[error("a bucket decided in the proxy keeps its level × period in 64 bits, and this rule's reaches {largest}, above 2^63 - 1 (9223372036854775807); expected a smaller limit, period, burst, max_debt, max_delay or cost max")]
    LevelTooLarge { largest: u128 },
    #[error("content_type is set without a body; the default problem+json body has its own type; expected a body with it, or no content_type")]
    ContentTypeWithoutBody,
    #[error("method looks misspelled; did you mean {0}?")]
    MethodTypo(&'static str),
    #[error("payload_bytes is what a WebSocket message costs; expected per: message on the rule, or a number or {{header: ...}} for requests")]
    PayloadBytesPerRequest,
    #[error("a message rule's cost is per message, read from no header (headers are read once, at the upgrade); expected a number or payload_bytes")]
    HeaderCostPerMessage,
    #[error("over_limit says what a message over the limit brings about; expected per: message on the rule, or remove it")]
    OverLimitPerRequest,
    #[error("advertise says whether a rule shows in the rate limit fields, which a message's verdict does not send; expected per: request on the rule, or remove it")]
    AdvertisePerMessage,
    #[error("a message rule decided in Redis needs redis.transport: http, not redis_callout (Higress' Redis callout answers at the root context, which cannot reach a connection's frames); expected per: request, backend: local, or transport: http")]
    MessageRedisCallout,
}

fn suggestion(s: &Option<&'static str>) -> String {
    s.map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default()
}

fn list_or_none(allowed: &[&str]) -> String {
    if allowed.is_empty() {
        "(none: this strategy takes no parameters)".to_string()
    } else {
        allowed.join(", ")
    }
}
