//! The config compiler: walks a `serde_json::Value` by hand (rather than deriving
//! `Deserialize`) so that every error of a config is found in one pass, each with its path,
//! the offending text and what was expected.
//!
//! ```
//! use sluice::config::compile_json;
//! let cfg = compile_json(br#"{"rules": [{"name": "api", "limit": "100/min"}]}"#).unwrap();
//! assert_eq!(cfg.rules[0].limits.rates()[0].limit, 100);
//!
//! let errs = compile_json(br#"{"rules": [{"name": "api", "limit": "100/fortnight"}]}"#).unwrap_err();
//! assert_eq!(errs.to_string(), "rules[0].limit: \"100/fortnight\": unknown unit \"fortnight\"; \
//!     expected one of ms, s, m, h, d (or their long forms)");
//! ```
//!
//! Conventions: an explicit `null` is the same as leaving a field out; lists that restrict
//! something (paths, methods, cidrs, ...) may not be empty, because an empty list would read as
//! "nothing" but mean "anything".

use serde_json::{Map, Value};

use super::error::{ConfigError, ConfigErrors, Problem};
use super::*;
use crate::rate::quote;

mod parts;
mod rules;

pub use rules::lua_largest;
mod strategy;
mod top;

/// Default key prefix.
pub const DEFAULT_NAMESPACE: &str = "sluice";
pub const DEFAULT_STATUS: u16 = 429;
/// RESOURCE_EXHAUSTED, gRPC's status for a spent quota. Envoy would otherwise map 429 to
/// UNAVAILABLE, which Istio's default retry policy retries, on another pod.
pub const DEFAULT_GRPC_STATUS: u8 = 8;
pub const DEFAULT_MAX_CLIENTS: u32 = 10_000;
pub const MAX_MAX_CLIENTS: u64 = 10_000_000;
pub const MAX_XFF_TRUSTED_HOPS: u64 = 16;
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 20;
pub const MAX_REDIS_TIMEOUT_MS: u64 = 60_000;
/// Content type of a custom body when none is given.
pub const DEFAULT_CONTENT_TYPE: &str = "text/plain";
/// At most this many rates per rule (`limits`).
pub const MAX_LIMITS: usize = 8;
/// At most this many parts in a composite identifier.
pub const MAX_IDENTIFIER_PARTS: usize = 8;
pub const MAX_COST: u64 = 1_000_000;
pub const DEFAULT_HEADER_COST_MAX: u64 = 1_000;
/// `leaky_bucket_queue` holds requests at most this long: past it, Envoy's own timeouts
/// (route timeout 15 s by default) would fail them anyway.
pub const MAX_DELAY_MS: u64 = 60_000;
pub const DEFAULT_MAX_DELAY_MS: u64 = 1_000;
/// The most entries a `sliding_window_log` keeps. Decided in shared data, its state (1 + 16
/// bytes per entry) travels in a slot value with a 16-bit length per state; decided in Redis,
/// each decision reads and rewrites the whole log, so its length bounds the time one call holds
/// Redis (see [`crate::redis::script::MAX_LOG_WORK`]).
pub const MAX_LOG_ENTRIES: u64 = ((u16::MAX as u64) - 1) / 16;
/// `over_limit.close_after`: at most this many messages over the limit before the close.
pub const MAX_CLOSE_AFTER: u64 = 1_000_000;
/// Lua numbers are doubles: integers above this lose their exactness.
pub const LUA_EXACT: u128 = 1 << 53;
/// A level decided in the proxy is kept as a signed 64-bit number (the debt's sign).
pub const LOCAL_EXACT: u128 = i64::MAX as u128;
/// Size caps of what a config may list (each rule is looked at for every request).
pub const MAX_RULES: usize = 128;
pub const MAX_PATHS: usize = 64;
pub const MAX_METHODS: usize = 16;
pub const MAX_CIDRS: usize = 256;
pub const MAX_ROUTES: usize = 64;
pub const MAX_HEADER_PAIRS: usize = 32;
/// `identity_secret` length bounds: short secrets can be guessed offline from one known hash.
pub const MIN_SECRET_LEN: usize = 16;
pub const MAX_SECRET_LEN: usize = 256;
pub const MIN_IPV6_PREFIX: u64 = 1;
pub const MAX_IPV6_PREFIX: u64 = 128;
/// Default `max_entries` of `sliding_window_log`: the largest limit, capped here.
pub const DEFAULT_LOG_ENTRIES_CAP: u64 = 1_024;

const TOP_FIELDS: &[&str] =
    &["namespace", "rate_limit_headers", "response", "client_ip", "local", "redis", "identity_secret", "rules"];
const RESPONSE_FIELDS: &[&str] = &["status", "headers", "body", "content_type", "grpc_status"];
const CLIENT_IP_FIELDS: &[&str] = &["xff_trusted_hops", "ipv6_prefix"];
const LOCAL_FIELDS: &[&str] = &["max_clients"];
const REDIS_FIELDS: &[&str] = &["cluster", "transport", "token", "authority", "timeout_ms", "breaker", "deny_cache"];
const BREAKER_FIELDS: &[&str] = &["failure_threshold", "open_ms", "half_open_probes", "success_threshold"];
const RULE_FIELDS: &[&str] = &[
    "name",
    "match",
    "limit",
    "limits",
    "strategy",
    "identifier",
    "cost",
    "exempt",
    "backend",
    "on_error",
    "shadow",
    "advertise",
    "per",
    "over_limit",
];
const MATCH_FIELDS: &[&str] = &["path", "methods", "headers", "routes"];
const EXEMPT_FIELDS: &[&str] = &["cidrs", "headers"];
const COST_FIELDS: &[&str] = &["header", "default", "min", "max"];
const IDENT_FIELDS: &[&str] = &["header", "query", "cookie", "fallback", "parts"];
const IDENT_PARTS_FIELDS: &[&str] = &["parts", "fallback"];
const IDENT_PART_FIELDS: &[&str] = &["header", "query", "cookie"];
const ON_ERROR_FIELDS: &[&str] = &["fallback"];
const FALLBACK_FIELDS: &[&str] = &["share"];
const OVER_LIMIT_FIELDS: &[&str] = &["notify", "close_after"];

const HEADER_MODES: &[&str] = &["draft10", "legacy", "both", "none"];
const TRANSPORTS: &[&str] = &["http", "redis_callout"];
const BACKENDS: &[&str] = &["local", "redis"];
const ON_ERRORS: &[&str] = &["allow", "deny", "fallback"];
const FALLBACKS: &[&str] = &["client_ip", "global", "skip"];
const PERS: &[&str] = &["request", "message"];
const COST_WORDS: &[&str] = &["payload_bytes"];
const IDENT_NAMES: &[&str] = &["client_ip", "global"];
const KNOWN_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

/// Headers a custom limited response may not set, with why.
const RESERVED_RESPONSE_HEADERS: &[(&str, &str)] = &[
    ("content-type", "set the content type with response.content_type"),
    ("content-length", "content-length is computed from the body"),
    ("retry-after", "retry-after is set by sluice itself"),
    ("ratelimit", "ratelimit is set by sluice itself (see rate_limit_headers)"),
    ("ratelimit-policy", "ratelimit-policy is set by sluice itself (see rate_limit_headers)"),
    ("x-ratelimit-limit", "x-ratelimit-limit is set by sluice itself (see rate_limit_headers)"),
    ("x-ratelimit-remaining", "x-ratelimit-remaining is set by sluice itself (see rate_limit_headers)"),
    ("x-ratelimit-reset", "x-ratelimit-reset is set by sluice itself (see rate_limit_headers)"),
    ("x-envoy-ratelimited", "x-envoy-ratelimited is set by sluice itself (it stops Envoy's retries)"),
    // Envoy keeps a local reply's own grpc-status, so one here would replace response.grpc_status
    // (0 would tell a gRPC client its call succeeded).
    ("grpc-status", "set the gRPC status with response.grpc_status"),
    ("grpc-message", "grpc-message is the body Envoy sends a gRPC client"),
];

/// Compiles plugin configuration bytes (JSON, as Envoy delivers it). Empty or blank input is an
/// error ("no configuration"), as is anything that is not JSON.
pub fn compile_json(bytes: &[u8]) -> Result<Config, ConfigErrors> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(one(Problem::NoConfiguration));
    }
    match super::parse_json(bytes) {
        Ok(parsed) => compile_read(&parsed.value, parsed.repeats),
        Err(e) => Err(one(Problem::InvalidJson(e.to_string()))),
    }
}

/// Compiles a value as [`super::read`] gave it: each key it found written twice (`repeats`) is
/// an error, reported before every error of the value, which holds each key's first value.
pub fn compile_read(value: &Value, mut repeats: Vec<ConfigError>) -> Result<Config, ConfigErrors> {
    let compiled = compile(value);
    if repeats.is_empty() {
        return compiled;
    }
    if let Err(errors) = compiled {
        repeats.extend(errors.errors);
    }
    Err(ConfigErrors { errors: repeats })
}

/// Compiles a parsed configuration, reporting every error at once.
pub fn compile(value: &Value) -> Result<Config, ConfigErrors> {
    let mut c = Compiler { errors: Vec::new(), unlisted: 0 };
    let config = c.config(value);
    if c.unlisted > 0 {
        c.errors.push(ConfigError { path: String::new(), found: None, problem: Problem::Unlisted { count: c.unlisted } });
    }
    match config {
        Some(config) if c.errors.is_empty() => Ok(config),
        _ if c.errors.is_empty() => Err(one(Problem::NoConfiguration)),
        _ => Err(ConfigErrors { errors: c.errors }),
    }
}

fn one(problem: Problem) -> ConfigErrors {
    ConfigErrors { errors: vec![ConfigError { path: String::new(), found: None, problem }] }
}

/// `path`'s field `key`; a key other than `[A-Za-z0-9_-]+` is quoted: `headers["x y"]`.
pub(super) fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{}]", quote(key)),
    }
}

pub(super) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// A field's value; `null` counts as absent.
fn field<'v>(map: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    map.get(key).filter(|v| !v.is_null())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The value as the user would recognise it: strings quoted, everything cut short.
fn render(v: &Value) -> String {
    match v {
        Value::String(s) => quote(s),
        other => {
            let text = other.to_string();
            const MAX: usize = 60;
            if text.chars().count() > MAX {
                let mut cut: String = text.chars().take(MAX).collect();
                cut.push('…');
                cut
            } else {
                text
            }
        }
    }
}

/// Optimal-string-alignment distance (Levenshtein plus adjacent swaps), ASCII case-insensitive.
pub(super) fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The closest of `options` to `word`, if it is close enough to be a likely typo.
fn did_you_mean(word: &str, options: &'static [&'static str]) -> Option<&'static str> {
    if word.len() > 64 {
        return None;
    }
    let limit = if word.chars().count() <= 4 { 1 } else { 2 };
    options.iter().map(|o| (distance(word, o), *o)).filter(|(d, _)| *d <= limit).min_by_key(|(d, _)| *d).map(|(_, o)| o)
}

fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

fn valid_header_value(s: &str) -> bool {
    s.chars().all(|c| c == '\t' || !c.is_control())
}

struct Compiler {
    errors: Vec<ConfigError>,
    /// Errors found past [`MAX_ERRORS`], counted, not kept.
    unlisted: usize,
}

/// The most errors one compile lists: a 50 MB file of unknown keys made millions of lines (each
/// naming every allowed field), which the filter would log and lint print, and held them all.
pub const MAX_ERRORS: usize = 100;

/// Where a header map is used decides whether pseudo-headers and reserved names are allowed.
#[derive(Clone, Copy, PartialEq)]
enum HeaderUse {
    Request,
    Response,
}

impl Compiler {
    fn report(&mut self, path: impl Into<String>, found: Option<&Value>, problem: Problem) {
        if self.listing() {
            self.errors.push(ConfigError { path: path.into(), found: found.map(render), problem });
        }
    }

    fn report_text(&mut self, path: impl Into<String>, text: &str, problem: Problem) {
        if self.listing() {
            self.errors.push(ConfigError { path: path.into(), found: Some(quote(text)), problem });
        }
    }

    /// Whether one more error is listed, or only counted.
    fn listing(&mut self) -> bool {
        if self.errors.len() < MAX_ERRORS {
            return true;
        }
        self.unlisted += 1;
        false
    }

    fn wrong_type(&mut self, path: &str, v: &Value, expected: &'static str) {
        self.report(path, Some(v), Problem::WrongType { expected, found: kind(v) });
    }

    /// An object whose keys are all in `allowed`; unknown keys are reported.
    fn object<'v>(&mut self, path: &str, v: &'v Value, allowed: &'static [&'static str]) -> Option<&'v Map<String, Value>> {
        let Value::Object(map) = v else {
            self.wrong_type(path, v, "an object");
            return None;
        };
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                let did_you_mean = did_you_mean(key, allowed);
                self.report(join(path, key), None, Problem::UnknownField { did_you_mean, allowed });
            }
        }
        Some(map)
    }

    fn string<'v>(&mut self, path: &str, v: &'v Value) -> Option<&'v str> {
        match v {
            Value::String(s) => Some(s),
            _ => {
                self.wrong_type(path, v, "a string");
                None
            }
        }
    }

    fn boolean(&mut self, path: &str, v: &Value) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(*b),
            _ => {
                self.wrong_type(path, v, "a boolean (true or false)");
                None
            }
        }
    }

    fn uint(&mut self, path: &str, v: &Value, min: u64, max: u64) -> Option<u64> {
        let Value::Number(n) = v else {
            self.wrong_type(path, v, "an integer");
            return None;
        };
        // `1e6` and `429.0` are integers to JSON Schema (and to YAML writers that print floats):
        // serde_json keeps them as floats, whole ones within the range are taken as written.
        let whole = n.as_f64().filter(|f| f.fract() == 0.0);
        match n.as_u64().or(whole.filter(|f| *f >= min as f64 && *f <= max as f64).map(|f| f as u64)) {
            Some(x) if (min..=max).contains(&x) => Some(x),
            Some(_) => {
                self.report(path, Some(v), Problem::OutOfRange { min, max });
                None
            }
            None if n.is_i64() || whole.is_some() => {
                self.report(path, Some(v), Problem::OutOfRange { min, max });
                None
            }
            None => {
                self.report(path, Some(v), Problem::WrongType { expected: "an integer", found: "a fractional number" });
                None
            }
        }
    }

    /// One of a fixed set of lower-case words.
    fn keyword(&mut self, path: &str, v: &Value, allowed: &'static [&'static str]) -> Option<&'static str> {
        let s = self.string(path, v)?;
        if let Some(k) = allowed.iter().find(|k| **k == s) {
            return Some(k);
        }
        self.report(path, Some(v), Problem::UnknownValue { did_you_mean: did_you_mean(s, allowed), allowed });
        None
    }

    /// A non-empty list of at most `max` items.
    fn list<'v>(&mut self, path: &str, v: &'v Value, what: &'static str, max: usize) -> Option<&'v [Value]> {
        let Value::Array(items) = v else {
            self.wrong_type(path, v, "a list");
            return None;
        };
        if items.is_empty() {
            self.report(path, Some(v), Problem::Empty { what, expected: "remove the field, or list at least one" });
            return None;
        }
        if items.len() > max {
            self.report(path, None, Problem::TooMany { found: items.len(), max });
            return None;
        }
        Some(items)
    }

    /// A string of 1..=64 `[A-Za-z0-9_.-]` (names end up in keys, headers and stats).
    fn name(&mut self, path: &str, v: &Value, what: &'static str) -> Option<String> {
        let s = self.string(path, v)?;
        if valid_name(s) {
            Some(s.to_string())
        } else {
            self.report(path, Some(v), Problem::BadName { what });
            None
        }
    }

    fn header_name(&mut self, path: &str, name: &str, usage: HeaderUse) -> Option<String> {
        let pseudo_ok = usage == HeaderUse::Request;
        let body = if pseudo_ok { name.strip_prefix(':').unwrap_or(name) } else { name };
        if !is_token(body) {
            self.report_text(path, name, Problem::BadHeaderName { pseudo_ok });
            return None;
        }
        let lower = name.to_ascii_lowercase();
        if usage == HeaderUse::Response {
            if let Some((_, why)) = RESERVED_RESPONSE_HEADERS.iter().find(|(n, _)| *n == lower) {
                self.report_text(path, name, Problem::ReservedHeader(why));
                return None;
            }
        }
        Some(lower)
    }

    fn header_value(&mut self, path: &str, v: &Value) -> Option<String> {
        let Value::String(s) = v else {
            self.wrong_type(path, v, "a string (quote numbers and booleans in YAML)");
            return None;
        };
        if valid_header_value(s) {
            Some(s.clone())
        } else {
            self.report(path, Some(v), Problem::BadHeaderValue);
            None
        }
    }

    /// `{name: value}` with names lower-cased; names equal after lower-casing are duplicates.
    fn header_map(&mut self, path: &str, v: &Value, usage: HeaderUse) -> Option<Vec<(String, String)>> {
        let Value::Object(map) = v else {
            self.wrong_type(path, v, "an object of header names to values");
            return None;
        };
        if map.is_empty() {
            self.report(
                path,
                Some(v),
                Problem::Empty { what: "header map", expected: "remove the field, or name at least one header" },
            );
            return None;
        }
        if map.len() > MAX_HEADER_PAIRS {
            self.report(path, None, Problem::TooMany { found: map.len(), max: MAX_HEADER_PAIRS });
            return None;
        }
        let mut out: Vec<(String, String)> = Vec::with_capacity(map.len());
        let mut ok = true;
        for (name, value) in map {
            let p = join(path, name);
            let name = self.header_name(&p, name, usage);
            let value = self.header_value(&p, value);
            match (name, value) {
                (Some(n), Some(val)) => {
                    if out.iter().any(|(existing, _)| *existing == n) {
                        self.report_text(&p, &n, Problem::Duplicate { what: "header name (names are case-insensitive)" });
                        ok = false;
                    } else {
                        out.push((n, val));
                    }
                }
                _ => ok = false,
            }
        }
        ok.then_some(out)
    }
}

fn default_response() -> ResponseSpec {
    ResponseSpec { status: DEFAULT_STATUS, headers: Vec::new(), body: None, content_type: None, grpc_status: DEFAULT_GRPC_STATUS }
}
