//! The config compiler: walks a `serde_json::Value` by hand (rather than deriving
//! `Deserialize`) so that every error of a config is found in one pass, each with its path,
//! the offending text and what was expected.
//!
//! ```
//! use sluice::config::compile_json;
//! let cfg = compile_json(br#"{"rules": [{"name": "api", "limit": "100/min"}]}"#).unwrap();
//! assert_eq!(cfg.rules[0].limits[0].limit, 100);
//!
//! let errs = compile_json(br#"{"rules": [{"name": "api", "limit": "100/fortnight"}]}"#).unwrap_err();
//! assert_eq!(errs.to_string(), "rules[0].limit: \"100/fortnight\": unknown unit \"fortnight\"; \
//!     expected one of ms, s, m, h, d (or their long forms)");
//! ```
//!
//! Conventions: an explicit `null` is the same as leaving a field out; lists that restrict
//! something (paths, methods, cidrs, ...) may not be empty, because an empty list would read as
//! "nothing" but mean "anything".

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::error::{ConfigError, ConfigErrors, Problem};
use super::*;
use crate::breaker::BreakerSpec;
use crate::rate::{parse_duration_ms, quote, Rate, MAX_LIMIT};

/// Default key prefix.
pub const DEFAULT_NAMESPACE: &str = "sluice";
pub const DEFAULT_STATUS: u16 = 429;
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
pub const MAX_LOG_ENTRIES: u64 = 100_000;
/// The most entries a `sliding_window_log` decided in shared data can keep: its state
/// (1 + 16 bytes per entry) travels in a slot value with a 16-bit length per state.
pub const MAX_LOCAL_LOG_ENTRIES: u64 = ((u16::MAX as u64) - 1) / 16;
/// Lua numbers are doubles: integers above this lose their exactness.
pub const LUA_EXACT: u128 = 1 << 53;
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
const RESPONSE_FIELDS: &[&str] = &["status", "headers", "body", "content_type"];
const CLIENT_IP_FIELDS: &[&str] = &["xff_trusted_hops", "ipv6_prefix"];
const LOCAL_FIELDS: &[&str] = &["max_clients"];
const REDIS_FIELDS: &[&str] = &["cluster", "transport", "token", "authority", "timeout_ms", "breaker"];
const BREAKER_FIELDS: &[&str] = &["failure_threshold", "open_ms", "half_open_probes", "success_threshold"];
const RULE_FIELDS: &[&str] =
    &["name", "match", "limit", "limits", "strategy", "identifier", "cost", "exempt", "backend", "on_error", "shadow"];
const MATCH_FIELDS: &[&str] = &["path", "methods", "headers", "routes"];
const EXEMPT_FIELDS: &[&str] = &["cidrs", "headers"];
const COST_FIELDS: &[&str] = &["header", "default", "min", "max"];
const IDENT_FIELDS: &[&str] = &["header", "query", "cookie", "fallback", "parts"];
const IDENT_PARTS_FIELDS: &[&str] = &["parts", "fallback"];
const IDENT_PART_FIELDS: &[&str] = &["header", "query", "cookie"];
const ON_ERROR_FIELDS: &[&str] = &["fallback"];
const FALLBACK_FIELDS: &[&str] = &["share"];

const HEADER_MODES: &[&str] = &["draft10", "legacy", "both", "none"];
const TRANSPORTS: &[&str] = &["http", "redis_callout"];
const BACKENDS: &[&str] = &["local", "redis"];
const ON_ERRORS: &[&str] = &["allow", "deny", "fallback"];
const FALLBACKS: &[&str] = &["client_ip", "global", "skip"];
const IDENT_NAMES: &[&str] = &["client_ip", "global"];
/// Every strategy name, as written in configs.
pub const STRATEGIES: &[&str] = &[
    "fixed_window",
    "sliding_window_counter",
    "sliding_window_log",
    "token_bucket",
    "token_bucket_debt",
    "leaky_bucket",
    "leaky_bucket_queue",
    "gcra",
];
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
];

/// Compiles plugin configuration bytes (JSON, as Envoy delivers it). Empty or blank input is an
/// error ("no configuration"), as is anything that is not JSON.
pub fn compile_json(bytes: &[u8]) -> Result<Config, ConfigErrors> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(one(Problem::NoConfiguration));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(value) => compile(&value),
        Err(e) => Err(one(Problem::InvalidJson(e.to_string()))),
    }
}

/// Compiles a parsed configuration, reporting every error at once.
pub fn compile(value: &Value) -> Result<Config, ConfigErrors> {
    let mut c = Compiler { errors: Vec::new() };
    let config = c.config(value);
    match config {
        Some(config) if c.errors.is_empty() => Ok(config),
        _ if c.errors.is_empty() => Err(one(Problem::NoConfiguration)),
        _ => Err(ConfigErrors { errors: c.errors }),
    }
}

fn one(problem: Problem) -> ConfigErrors {
    ConfigErrors { errors: vec![ConfigError { path: String::new(), found: None, problem }] }
}

fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{}]", quote(key)),
    }
}

fn index(path: &str, i: usize) -> String {
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
}

/// Where a header map is used decides whether pseudo-headers and reserved names are allowed.
#[derive(Clone, Copy, PartialEq)]
enum HeaderUse {
    Request,
    Response,
}

impl Compiler {
    fn report(&mut self, path: impl Into<String>, found: Option<&Value>, problem: Problem) {
        self.errors.push(ConfigError { path: path.into(), found: found.map(render), problem });
    }

    fn report_text(&mut self, path: impl Into<String>, text: &str, problem: Problem) {
        self.errors.push(ConfigError { path: path.into(), found: Some(quote(text)), problem });
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
        match n.as_u64() {
            Some(x) if (min..=max).contains(&x) => Some(x),
            Some(_) => {
                self.report(path, Some(v), Problem::OutOfRange { min, max });
                None
            }
            None if n.is_i64() => {
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

    fn config(&mut self, v: &Value) -> Option<Config> {
        if v.is_null() {
            self.report("", None, Problem::NoConfiguration);
            return None;
        }
        let Value::Object(_) = v else {
            self.report("", Some(v), Problem::WrongType { expected: "an object at the top level", found: kind(v) });
            return None;
        };
        let top = self.object("", v, TOP_FIELDS)?;

        let namespace = match field(top, "namespace") {
            Some(v) => self.name("namespace", v, "namespace"),
            None => Some(DEFAULT_NAMESPACE.to_string()),
        };
        let rate_limit_headers = match field(top, "rate_limit_headers") {
            Some(v) => self.keyword("rate_limit_headers", v, HEADER_MODES).map(|k| match k {
                "legacy" => HeaderMode::Legacy,
                "both" => HeaderMode::Both,
                "none" => HeaderMode::None,
                _ => HeaderMode::Draft10,
            }),
            None => Some(HeaderMode::Draft10),
        };
        let response = match field(top, "response") {
            Some(v) => self.response("response", v),
            None => Some(default_response()),
        };
        let client_ip = match field(top, "client_ip") {
            Some(v) => self.object("client_ip", v, CLIENT_IP_FIELDS).and_then(|m| {
                let d = ClientIpSpec::default();
                let hops = match field(m, "xff_trusted_hops") {
                    Some(v) => self.uint("client_ip.xff_trusted_hops", v, 0, MAX_XFF_TRUSTED_HOPS),
                    None => Some(u64::from(d.xff_trusted_hops)),
                };
                let prefix = match field(m, "ipv6_prefix") {
                    Some(v) => self.uint("client_ip.ipv6_prefix", v, MIN_IPV6_PREFIX, MAX_IPV6_PREFIX),
                    None => Some(u64::from(d.ipv6_prefix)),
                };
                Some(ClientIpSpec { xff_trusted_hops: u32::try_from(hops?).ok()?, ipv6_prefix: u8::try_from(prefix?).ok()? })
            }),
            None => Some(ClientIpSpec::default()),
        };
        let local = match field(top, "local") {
            Some(v) => self.object("local", v, LOCAL_FIELDS).and_then(|m| {
                let n = match field(m, "max_clients") {
                    Some(v) => self.uint("local.max_clients", v, 1, MAX_MAX_CLIENTS)?,
                    None => u64::from(DEFAULT_MAX_CLIENTS),
                };
                Some(LocalSpec { max_clients: u32::try_from(n).ok()? })
            }),
            None => Some(LocalSpec { max_clients: DEFAULT_MAX_CLIENTS }),
        };
        let redis_declared = field(top, "redis").is_some();
        let redis = match field(top, "redis") {
            Some(v) => self.redis("redis", v).map(Some),
            None => Some(None),
        };
        let identity_secret = match field(top, "identity_secret") {
            Some(v) => self.secret("identity_secret", v).map(Some),
            None => Some(None),
        };
        let rules = match field(top, "rules") {
            Some(v) => self.rules("rules", v, redis_declared),
            None => {
                self.report("rules", None, Problem::Missing);
                None
            }
        };
        Some(Config {
            namespace: namespace?,
            rate_limit_headers: rate_limit_headers?,
            response: response?,
            client_ip: client_ip?,
            local: local?,
            redis: redis?,
            identity_secret: identity_secret?,
            rules: rules?,
        })
    }

    fn response(&mut self, path: &str, v: &Value) -> Option<ResponseSpec> {
        let m = self.object(path, v, RESPONSE_FIELDS)?;
        let status = match field(m, "status") {
            Some(v) => self.uint(&join(path, "status"), v, 400, 599).and_then(|s| u16::try_from(s).ok()),
            None => Some(DEFAULT_STATUS),
        };
        let headers = match field(m, "headers") {
            Some(v) => self.header_map(&join(path, "headers"), v, HeaderUse::Response),
            None => Some(Vec::new()),
        };
        let body = match field(m, "body") {
            Some(v) => self.string(&join(path, "body"), v).map(|s| Some(s.to_string())),
            None => Some(None),
        };
        let content_type = match field(m, "content_type") {
            Some(v) => {
                let p = join(path, "content_type");
                match self.string(&p, v) {
                    Some(s) if s.trim().is_empty() => {
                        self.report(
                            &p,
                            Some(v),
                            Problem::Empty { what: "content type", expected: "expected e.g. \"text/plain\"" },
                        );
                        None
                    }
                    Some(s) if !valid_header_value(s) => {
                        self.report(&p, Some(v), Problem::BadHeaderValue);
                        None
                    }
                    Some(_) if field(m, "body").is_none() => {
                        self.report(&p, Some(v), Problem::ContentTypeWithoutBody);
                        None
                    }
                    Some(s) => Some(Some(s.to_string())),
                    None => None,
                }
            }
            None => Some(None),
        };
        let body = body?;
        // A custom body always carries its type explicitly, so the engine never guesses.
        let content_type = match content_type? {
            None if body.is_some() => Some(DEFAULT_CONTENT_TYPE.to_string()),
            ct => ct,
        };
        Some(ResponseSpec { status: status?, headers: headers?, body, content_type })
    }

    fn redis(&mut self, path: &str, v: &Value) -> Option<RedisSpec> {
        let m = self.object(path, v, REDIS_FIELDS)?;
        let cluster = match field(m, "cluster") {
            Some(v) => self.non_empty_text(&join(path, "cluster"), v, "cluster name", "expected the name of an Envoy cluster"),
            None => {
                self.report(join(path, "cluster"), None, Problem::Missing);
                None
            }
        };
        let transport = match field(m, "transport") {
            Some(v) => self.keyword(&join(path, "transport"), v, TRANSPORTS).map(|t| match t {
                "redis_callout" => Transport::RedisCallout,
                _ => Transport::Http,
            }),
            None => Some(Transport::Http),
        };
        let token = match field(m, "token") {
            Some(v) => self.opt_header_text(&join(path, "token"), v, "token", "expected the bearer token for the endpoint"),
            None => Some(None),
        };
        let authority = match field(m, "authority") {
            Some(v) => {
                self.opt_header_text(&join(path, "authority"), v, "authority", "expected a host name such as \"gateway.local\"")
            }
            None => Some(None),
        };
        let timeout_ms = match field(m, "timeout_ms") {
            Some(v) => self.uint(&join(path, "timeout_ms"), v, 1, MAX_REDIS_TIMEOUT_MS),
            None => Some(DEFAULT_REDIS_TIMEOUT_MS),
        };
        let breaker = match field(m, "breaker") {
            Some(v) => self.breaker(&join(path, "breaker"), v),
            None => Some(BreakerSpec::default()),
        };
        Some(RedisSpec {
            cluster: cluster?,
            transport: transport?,
            token: token?,
            authority: authority?,
            timeout_ms: timeout_ms?,
            breaker: breaker?,
        })
    }

    fn breaker(&mut self, path: &str, v: &Value) -> Option<BreakerSpec> {
        let m = self.object(path, v, BREAKER_FIELDS)?;
        let d = BreakerSpec::default();
        let mut num = |name: &str, max: u64, default: u64| match field(m, name) {
            Some(v) => self.uint(&join(path, name), v, 1, max),
            None => Some(default),
        };
        let failure_threshold = num("failure_threshold", 1000, u64::from(d.failure_threshold));
        let open_ms = num("open_ms", 600_000, d.open_ms);
        let half_open_probes = num("half_open_probes", 100, u64::from(d.half_open_probes));
        let success_threshold = num("success_threshold", 100, u64::from(d.success_threshold));
        Some(BreakerSpec {
            failure_threshold: failure_threshold? as u32,
            open_ms: open_ms?,
            half_open_probes: half_open_probes? as u32,
            success_threshold: success_threshold? as u32,
        })
    }

    /// A non-empty string without control characters or spaces.
    fn non_empty_text(&mut self, path: &str, v: &Value, what: &'static str, expected: &'static str) -> Option<String> {
        let s = self.string(path, v)?;
        if s.is_empty() {
            self.report(path, Some(v), Problem::Empty { what, expected });
            None
        } else if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            self.report(path, Some(v), Problem::BadText { what, expected: "no spaces or control characters" });
            None
        } else {
            Some(s.to_string())
        }
    }

    /// A secret of printable ASCII, long enough not to be guessed.
    fn secret(&mut self, path: &str, v: &Value) -> Option<String> {
        let s = self.string(path, v)?;
        let printable = s.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
        if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&s.len()) || !printable {
            // The value is a secret: never echo it into logs.
            self.report(path, None, Problem::BadSecret { min: MIN_SECRET_LEN, max: MAX_SECRET_LEN });
            return None;
        }
        Some(s.to_string())
    }

    fn opt_header_text(&mut self, path: &str, v: &Value, what: &'static str, expected: &'static str) -> Option<Option<String>> {
        self.non_empty_text(path, v, what, expected).map(Some)
    }

    fn rules(&mut self, path: &str, v: &Value, redis_declared: bool) -> Option<Vec<Rule>> {
        let Value::Array(items) = v else {
            self.wrong_type(path, v, "a list of rules");
            return None;
        };
        if items.is_empty() {
            self.report(path, Some(v), Problem::Empty { what: "rules", expected: "expected at least one rule" });
            return None;
        }
        if items.len() > MAX_RULES {
            self.report(path, None, Problem::TooMany { found: items.len(), max: MAX_RULES });
            return None;
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut rules = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = index(path, i);
            if let Some(Value::String(name)) = item.get("name") {
                if let Some(first) = seen.get(name.as_str()) {
                    self.report(join(&p, "name"), item.get("name"), Problem::DuplicateRule { first: *first });
                    ok = false;
                } else {
                    seen.insert(name, i);
                }
            }
            match self.rule(&p, item, redis_declared) {
                Some(rule) => rules.push(rule),
                None => ok = false,
            }
        }
        ok.then_some(rules)
    }

    fn rule(&mut self, path: &str, v: &Value, redis_declared: bool) -> Option<Rule> {
        let m = self.object(path, v, RULE_FIELDS)?;
        let name = match field(m, "name") {
            Some(v) => self.name(&join(path, "name"), v, "rule name"),
            None => {
                self.report(join(path, "name"), None, Problem::Missing);
                None
            }
        };
        let matcher = match field(m, "match") {
            Some(v) => self.matcher(&join(path, "match"), v),
            None => Some(Match::default()),
        };
        let limits = self.limits(path, m);
        let strategy = self.strategy(&join(path, "strategy"), field(m, "strategy"), limits.as_deref().unwrap_or(&[]));
        let identifier = match field(m, "identifier") {
            Some(v) => self.identifier(&join(path, "identifier"), v),
            None => Some(Identifier { parts: vec![IdentPart::ClientIp], fallback: IdentFallback::ClientIp }),
        };
        let cost = match field(m, "cost") {
            Some(v) => self.cost(&join(path, "cost"), v),
            None => Some(Cost::Fixed(1)),
        };
        let exempt = match field(m, "exempt") {
            Some(v) => self.exempt(&join(path, "exempt"), v),
            None => Some(Exempt::default()),
        };
        let backend = match field(m, "backend") {
            Some(v) => {
                let p = join(path, "backend");
                match self.keyword(&p, v, BACKENDS) {
                    Some("redis") if !redis_declared => {
                        self.report(&p, Some(v), Problem::RedisNotConfigured);
                        None
                    }
                    Some("redis") => Some(Backend::Redis),
                    Some(_) => Some(Backend::Local),
                    None => None,
                }
            }
            None => Some(Backend::Local),
        };
        let on_error = match field(m, "on_error") {
            Some(v) => {
                let p = join(path, "on_error");
                let parsed = self.on_error(&p, v);
                if backend == Some(Backend::Local) {
                    self.report(&p, Some(v), Problem::OnErrorLocal);
                    None
                } else {
                    parsed
                }
            }
            None => Some(OnError::Allow),
        };
        let shadow = match field(m, "shadow") {
            Some(v) => self.boolean(&join(path, "shadow"), v),
            None => Some(false),
        };
        let rule = Rule {
            name: name?,
            matcher: matcher?,
            limits: limits?,
            strategy: strategy?,
            identifier: identifier?,
            cost: cost?,
            exempt: exempt?,
            backend: backend?,
            on_error: on_error?,
            shadow: shadow?,
        };
        self.bounds(path, m, &rule).then_some(rule)
    }

    /// What only the whole rule tells: state that must fit where it is kept, and numbers the
    /// Lua mirror must hold exactly.
    fn bounds(&mut self, path: &str, m: &Map<String, Value>, rule: &Rule) -> bool {
        let mut ok = true;
        let decided_locally = rule.backend == Backend::Local || matches!(rule.on_error, OnError::Fallback { .. });
        if let Strategy::SlidingWindowLog { max_entries } = rule.strategy {
            if decided_locally && u64::from(max_entries) > MAX_LOCAL_LOG_ENTRIES {
                let p = join(&join(path, "strategy"), "max_entries");
                let found = field(m, "strategy").and_then(|s| s.get("max_entries"));
                self.report(p, found, Problem::LogTooLong { max: MAX_LOCAL_LOG_ENTRIES });
                ok = false;
            }
        }
        if rule.backend == Backend::Redis {
            let max_cost = match rule.cost {
                Cost::Fixed(n) => n,
                Cost::Header { max, .. } => max,
            };
            for (i, rate) in rule.limits.iter().enumerate().filter(|(_, r)| !r.is_unlimited()) {
                let largest = lua_largest(&rule.strategy, rate, max_cost);
                if largest > LUA_EXACT {
                    let (p, found) = match field(m, "limits") {
                        Some(list) => (index(&join(path, "limits"), i), list.get(i)),
                        None => (join(path, "limit"), field(m, "limit")),
                    };
                    self.report(p, found, Problem::NotExactInLua { largest });
                    ok = false;
                }
            }
        }
        ok
    }

    fn rate(&mut self, path: &str, v: &Value) -> Option<Rate> {
        let Value::String(s) = v else {
            self.wrong_type(path, v, "a rate string such as \"100/min\"");
            return None;
        };
        match Rate::parse(s) {
            Ok(r) => Some(r),
            Err(e) => {
                self.report(path, Some(v), Problem::Rate(e.kind));
                None
            }
        }
    }

    fn limits(&mut self, path: &str, m: &Map<String, Value>) -> Option<Vec<Rate>> {
        match (field(m, "limit"), field(m, "limits")) {
            (Some(_), Some(_)) => {
                self.report(join(path, "limits"), None, Problem::LimitAndLimits);
                None
            }
            (None, None) => {
                self.report(path, None, Problem::NoLimit);
                None
            }
            (Some(v), None) => self.rate(&join(path, "limit"), v).map(|r| vec![r]),
            (None, Some(v)) => {
                let p = join(path, "limits");
                if let Value::String(_) = v {
                    // `limits: 10/s` is an easy slip for `limit: 10/s`; a one-item list is meant.
                    self.wrong_type(&p, v, "a list of rate strings (or use \"limit\" for one rate)");
                    return None;
                }
                let items = self.list(&p, v, "limits", MAX_LIMITS)?;
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match self.rate(&index(&p, i), item) {
                        Some(r) => out.push(r),
                        None => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                let unlimited = out.iter().filter(|r| r.is_unlimited()).count();
                if unlimited > 0 && unlimited < out.len() {
                    for (i, _) in out.iter().enumerate().filter(|(_, r)| r.is_unlimited()) {
                        self.report(index(&p, i), items.get(i), Problem::UnlimitedMixed);
                    }
                    return None;
                }
                Some(out)
            }
        }
    }

    fn strategy(&mut self, path: &str, v: Option<&Value>, limits: &[Rate]) -> Option<Strategy> {
        let Some(v) = v else {
            return Some(Strategy::SlidingWindowCounter);
        };
        let (name, params) = match v {
            Value::String(_) => (self.keyword(path, v, STRATEGIES)?, None),
            Value::Object(m) => {
                let tp = join(path, "type");
                let name = match field(m, "type") {
                    Some(t) => self.keyword(&tp, t, STRATEGIES)?,
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
        let allowed: &'static [&'static str] = match name {
            "sliding_window_log" => &["max_entries"],
            "token_bucket" | "leaky_bucket" | "gcra" => &["burst"],
            "token_bucket_debt" => &["burst", "max_debt"],
            "leaky_bucket_queue" => &["burst", "max_delay", "max_delay_ms"],
            _ => &[],
        };
        let empty = Map::new();
        let params = params.unwrap_or(&empty);
        let mut ok = true;
        for key in params.keys().filter(|k| *k != "type") {
            if !allowed.contains(&key.as_str()) {
                let did_you_mean = did_you_mean(key, allowed);
                self.report(
                    join(path, key),
                    None,
                    Problem::UnknownParam { strategy: name, did_you_mean, allowed, param: key.clone() },
                );
                ok = false;
            }
        }
        let active: Vec<u64> = limits.iter().filter(|r| !r.is_unlimited()).map(|r| r.limit).collect();
        let mut burst = || -> Option<Option<u64>> {
            match field(params, "burst") {
                Some(v) => self.uint(&join(path, "burst"), v, 1, MAX_LIMIT).map(Some),
                None => Some(None),
            }
        };
        let strategy = match name {
            "fixed_window" => Some(Strategy::FixedWindow),
            "sliding_window_counter" => Some(Strategy::SlidingWindowCounter),
            "token_bucket" => burst().map(|burst| Strategy::TokenBucket { burst }),
            "leaky_bucket" => burst().map(|burst| Strategy::LeakyBucket { burst }),
            "gcra" => burst().map(|burst| Strategy::Gcra { burst }),
            "token_bucket_debt" => {
                let burst = burst();
                let max_debt = match field(params, "max_debt") {
                    Some(v) => self.uint(&join(path, "max_debt"), v, 0, MAX_LIMIT),
                    None => Some(active.iter().copied().min().unwrap_or(0)),
                };
                Some(Strategy::TokenBucketDebt { burst: burst?, max_debt: max_debt? })
            }
            "leaky_bucket_queue" => {
                let burst = burst();
                let max_delay_ms = match (field(params, "max_delay"), field(params, "max_delay_ms")) {
                    (Some(_), Some(_)) => {
                        self.report(join(path, "max_delay_ms"), None, Problem::DelayTwice);
                        None
                    }
                    (Some(v), None) => self.delay(&join(path, "max_delay"), v),
                    (None, Some(v)) => self.uint(&join(path, "max_delay_ms"), v, 0, MAX_DELAY_MS),
                    (None, None) => Some(DEFAULT_MAX_DELAY_MS),
                };
                Some(Strategy::LeakyBucketQueue { burst: burst?, max_delay_ms: max_delay_ms? })
            }
            _ => {
                let max_entries = match field(params, "max_entries") {
                    Some(v) => self.uint(&join(path, "max_entries"), v, 1, MAX_LOG_ENTRIES),
                    None => Some(active.iter().copied().max().unwrap_or(1).clamp(1, DEFAULT_LOG_ENTRIES_CAP)),
                };
                max_entries.and_then(|n| u32::try_from(n).ok()).map(|max_entries| Strategy::SlidingWindowLog { max_entries })
            }
        };
        if ok {
            strategy
        } else {
            None
        }
    }

    fn delay(&mut self, path: &str, v: &Value) -> Option<u64> {
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

    fn identifier(&mut self, path: &str, v: &Value) -> Option<Identifier> {
        let (items, fallback_value, fallback_path): (Vec<(String, &Value)>, _, _) = match v {
            Value::String(_) => (vec![(path.to_string(), v)], None, String::new()),
            Value::Array(_) => {
                let items = self.list(path, v, "identifier", MAX_IDENTIFIER_PARTS)?;
                (items.iter().enumerate().map(|(i, x)| (index(path, i), x)).collect(), None, String::new())
            }
            Value::Object(m) if m.contains_key("parts") => {
                let m = self.object(path, v, IDENT_PARTS_FIELDS)?;
                let pp = join(path, "parts");
                let parts_value = field(m, "parts");
                let items = match parts_value {
                    Some(pv) => self.list(&pp, pv, "identifier parts", MAX_IDENTIFIER_PARTS)?,
                    None => {
                        self.report(&pp, None, Problem::Missing);
                        return None;
                    }
                };
                let items = items.iter().enumerate().map(|(i, x)| (index(&pp, i), x)).collect();
                (items, field(m, "fallback"), join(path, "fallback"))
            }
            Value::Object(m) => {
                self.object(path, v, IDENT_FIELDS)?;
                // The single-part object form: the part and the fallback share one object.
                (vec![(path.to_string(), v)], field(m, "fallback"), join(path, "fallback"))
            }
            _ => {
                self.wrong_type(path, v, "client_ip, global, an object such as {header: x-api-key}, or a list of them");
                return None;
            }
        };
        let single_object = matches!(v, Value::Object(m) if !m.contains_key("parts"));
        let mut parts: Vec<IdentPart> = Vec::with_capacity(items.len());
        let mut ok = true;
        for (p, item) in &items {
            match self.ident_part(p, item, single_object) {
                Some(part) if parts.contains(&part) => {
                    self.report(p.as_str(), Some(item), Problem::Duplicate { what: "identifier part" });
                    ok = false;
                }
                Some(part) => parts.push(part),
                None => ok = false,
            }
        }
        if ok && parts.len() > 1 {
            if let Some(i) = parts.iter().position(|p| *p == IdentPart::Global) {
                if let Some((p, item)) = items.get(i) {
                    self.report(p.as_str(), Some(item), Problem::GlobalMixed);
                }
                ok = false;
            }
        }
        let fallback = match fallback_value {
            Some(fv) => {
                let f = self.keyword(&fallback_path, fv, FALLBACKS).map(|f| match f {
                    "global" => IdentFallback::Global,
                    "skip" => IdentFallback::Skip,
                    _ => IdentFallback::ClientIp,
                });
                let has_request_part =
                    parts.iter().any(|p| matches!(p, IdentPart::Header(_) | IdentPart::Query(_) | IdentPart::Cookie(_)));
                if ok && !has_request_part {
                    self.report(&fallback_path, Some(fv), Problem::FallbackUnused);
                    None
                } else {
                    f
                }
            }
            None => Some(IdentFallback::ClientIp),
        };
        if ok {
            fallback.map(|fallback| Identifier { parts, fallback })
        } else {
            None
        }
    }

    /// One identifier part: `client_ip`, `global`, or `{header|query|cookie: NAME}`.
    /// `fallback_here` is true for the single-object form, where `fallback` sits beside the part.
    fn ident_part(&mut self, path: &str, v: &Value, fallback_here: bool) -> Option<IdentPart> {
        match v {
            Value::String(_) => {
                let k = self.keyword(path, v, IDENT_NAMES)?;
                Some(if k == "global" { IdentPart::Global } else { IdentPart::ClientIp })
            }
            Value::Object(m) => {
                if !fallback_here {
                    if m.contains_key("fallback") {
                        self.report(join(path, "fallback"), None, Problem::FallbackInPart);
                        return None;
                    }
                    self.object(path, v, IDENT_PART_FIELDS)?;
                }
                let present: Vec<&str> = IDENT_PART_FIELDS.iter().copied().filter(|k| m.contains_key(*k)).collect();
                let [which] = present.as_slice() else {
                    if present.len() > 1 || m.keys().all(|k| IDENT_FIELDS.contains(&k.as_str())) {
                        self.report(path, None, Problem::IdentifierKind { found: present.len() });
                    }
                    return None;
                };
                let p = join(path, which);
                let raw = m.get(*which).unwrap_or(&Value::Null);
                let name = self.string(&p, raw)?;
                match *which {
                    "header" => self.header_name(&p, name, HeaderUse::Request).map(IdentPart::Header),
                    "cookie" if is_token(name) => Some(IdentPart::Cookie(name.to_string())),
                    "cookie" => {
                        self.report(
                            &p,
                            Some(raw),
                            Problem::BadText { what: "cookie name", expected: "a token such as \"session\" (no spaces, = or ;)" },
                        );
                        None
                    }
                    _ if !name.is_empty()
                        && name.len() <= 256
                        && !name.chars().any(|c| c.is_control() || matches!(c, '&' | '=' | '#' | '?')) =>
                    {
                        Some(IdentPart::Query(name.to_string()))
                    }
                    _ => {
                        self.report(
                            &p,
                            Some(raw),
                            Problem::BadText {
                                what: "query parameter name",
                                expected: "1 to 256 characters without & = # ? or control characters",
                            },
                        );
                        None
                    }
                }
            }
            _ => {
                self.wrong_type(path, v, "client_ip, global or an object such as {header: x-api-key}");
                None
            }
        }
    }

    fn cost(&mut self, path: &str, v: &Value) -> Option<Cost> {
        match v {
            Value::Number(_) => self.uint(path, v, 1, MAX_COST).map(Cost::Fixed),
            Value::Object(_) => {
                let m = self.object(path, v, COST_FIELDS)?;
                let hp = join(path, "header");
                let name = match field(m, "header") {
                    Some(h) => self.string(&hp, h).and_then(|s| self.header_name(&hp, s, HeaderUse::Request)),
                    None => {
                        self.report(&hp, None, Problem::Missing);
                        None
                    }
                };
                let max = match field(m, "max") {
                    Some(x) => self.uint(&join(path, "max"), x, 1, MAX_COST),
                    None => Some(DEFAULT_HEADER_COST_MAX),
                };
                let min = match field(m, "min") {
                    Some(x) => self.uint(&join(path, "min"), x, 1, MAX_COST),
                    None => Some(1),
                };
                // At least 1: a cost of 0 is the strategies' peek, which admits without counting.
                let default = match field(m, "default") {
                    Some(x) => self.uint(&join(path, "default"), x, 1, MAX_COST),
                    None => Some(1),
                };
                let (name, default, min, max) = (name?, default?, min?, max?);
                if min > max {
                    self.report(join(path, "min"), field(m, "min"), Problem::MinAboveMax { min, max });
                    return None;
                }
                if default > max {
                    self.report(join(path, "default"), field(m, "default"), Problem::DefaultAboveMax { default, max });
                    return None;
                }
                if default < min {
                    self.report(join(path, "default"), field(m, "default"), Problem::DefaultBelowMin { default, min });
                    return None;
                }
                Some(Cost::Header { name, default, min, max })
            }
            _ => {
                self.wrong_type(path, v, "a positive integer or an object such as {header: x-cost}");
                None
            }
        }
    }

    fn exempt(&mut self, path: &str, v: &Value) -> Option<Exempt> {
        let m = self.object(path, v, EXEMPT_FIELDS)?;
        let cidrs = match field(m, "cidrs") {
            Some(cv) => {
                let p = join(path, "cidrs");
                let items = self.list(&p, cv, "cidrs", MAX_CIDRS)?;
                let mut out: Vec<IpNet> = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match self.cidr(&index(&p, i), item) {
                        Some(net) if out.contains(&net) => {}
                        Some(net) => out.push(net),
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            }
            None => Some(Vec::new()),
        };
        let headers = match field(m, "headers") {
            Some(hv) => self.header_map(&join(path, "headers"), hv, HeaderUse::Request),
            None => Some(Vec::new()),
        };
        Some(Exempt { cidrs: cidrs?, headers: headers? })
    }

    /// A CIDR, or a plain address meaning just that host (/32 or /128).
    fn cidr(&mut self, path: &str, v: &Value) -> Option<IpNet> {
        let s = self.string(path, v)?.trim();
        if let Ok(addr) = IpAddr::from_str(s) {
            return Some(IpNet::from(addr));
        }
        match IpNet::from_str(s) {
            Ok(net) if net.addr() != net.network() => {
                self.report(path, Some(v), Problem::HostBitsSet { network: net.trunc().to_string() });
                None
            }
            Ok(net) => Some(net),
            Err(e) => {
                self.report(path, Some(v), Problem::BadCidr { reason: e.to_string() });
                None
            }
        }
    }

    fn on_error(&mut self, path: &str, v: &Value) -> Option<OnError> {
        match v {
            Value::String(_) => self.keyword(path, v, ON_ERRORS).map(|k| match k {
                "deny" => OnError::Deny,
                "fallback" => OnError::Fallback { share: 1.0 },
                _ => OnError::Allow,
            }),
            Value::Object(_) => {
                let m = self.object(path, v, ON_ERROR_FIELDS)?;
                let fp = join(path, "fallback");
                let Some(fv) = field(m, "fallback") else {
                    self.report(fp, None, Problem::Missing);
                    return None;
                };
                let fm = self.object(&fp, fv, FALLBACK_FIELDS)?;
                let sp = join(&fp, "share");
                match field(fm, "share") {
                    None => Some(OnError::Fallback { share: 1.0 }),
                    Some(sv) => match sv.as_f64() {
                        Some(share) if share > 0.0 && share <= 1.0 => Some(OnError::Fallback { share }),
                        Some(_) => {
                            self.report(sp, Some(sv), Problem::BadShare);
                            None
                        }
                        None => {
                            self.wrong_type(&sp, sv, "a number greater than 0 and at most 1");
                            None
                        }
                    },
                }
            }
            _ => {
                self.wrong_type(path, v, "allow, deny, fallback or {fallback: {share: 0.5}}");
                None
            }
        }
    }

    fn matcher(&mut self, path: &str, v: &Value) -> Option<Match> {
        let m = self.object(path, v, MATCH_FIELDS)?;
        let paths = match field(m, "path") {
            Some(pv) => self.globs(&join(path, "path"), pv),
            None => Some(Vec::new()),
        };
        let methods = match field(m, "methods") {
            Some(mv) => self.methods(&join(path, "methods"), mv),
            None => Some(Vec::new()),
        };
        let headers = match field(m, "headers") {
            Some(hv) => self.header_map(&join(path, "headers"), hv, HeaderUse::Request),
            None => Some(Vec::new()),
        };
        let routes = match field(m, "routes") {
            Some(rv) => {
                let p = join(path, "routes");
                let items = self.list(&p, rv, "routes", MAX_ROUTES)?;
                let mut out: Vec<String> = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match self.string(&index(&p, i), item) {
                        Some("") => {
                            self.report(
                                index(&p, i),
                                Some(item),
                                Problem::Empty { what: "route name", expected: "expected an Envoy route name" },
                            );
                            ok = false;
                        }
                        Some(s) if !out.iter().any(|r| r == s) => out.push(s.to_string()),
                        Some(_) => {}
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            }
            None => Some(Vec::new()),
        };
        Some(Match { paths: paths?, methods: methods?, headers: headers?, routes: routes? })
    }

    fn globs(&mut self, path: &str, v: &Value) -> Option<Vec<Glob>> {
        let items: Vec<(String, &Value)> = match v {
            Value::String(_) => vec![(path.to_string(), v)],
            Value::Array(_) => {
                let items = self.list(path, v, "path list", MAX_PATHS)?;
                items.iter().enumerate().map(|(i, x)| (index(path, i), x)).collect()
            }
            _ => {
                self.wrong_type(path, v, "a path glob such as \"/api/**\" or a list of them");
                return None;
            }
        };
        let mut out: Vec<Glob> = Vec::with_capacity(items.len());
        let mut ok = true;
        for (p, item) in items {
            let Some(s) = self.string(&p, item) else {
                ok = false;
                continue;
            };
            match Glob::parse(s) {
                Ok(g) if out.iter().any(|x| x.source == g.source) => {}
                Ok(g) => out.push(g),
                Err(e) => {
                    self.report(&p, Some(item), Problem::Glob(e.kind));
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// HTTP methods, upper-cased. Any token is accepted (WebDAV and custom methods exist), but
    /// one a single typo away from a standard method is taken for a typo.
    fn methods(&mut self, path: &str, v: &Value) -> Option<Vec<String>> {
        let items = self.list(path, v, "methods", MAX_METHODS)?;
        let mut out: Vec<String> = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = index(path, i);
            let Some(s) = self.string(&p, item) else {
                ok = false;
                continue;
            };
            let upper = s.to_ascii_uppercase();
            if !is_token(&upper) {
                self.report(&p, Some(item), Problem::BadText { what: "HTTP method", expected: "a method such as GET or POST" });
                ok = false;
            } else if !KNOWN_METHODS.contains(&upper.as_str()) {
                match KNOWN_METHODS.iter().find(|k| distance(&upper, k) == 1) {
                    Some(k) => {
                        self.report(&p, Some(item), Problem::MethodTypo(k));
                        ok = false;
                    }
                    None => out.push(upper),
                }
            } else if !out.contains(&upper) {
                out.push(upper);
            }
        }
        ok.then_some(out)
    }
}

/// The largest number the decision script forms for `rate` under `strategy` with costs up to
/// `max_cost` (see `src/redis/scripts/`): fluid levels are kept in cost × period_ms units
/// (`(capacity + max_debt + cost) × period`, plus `max_delay × limit` for a queue), the sliding
/// window counter weighs up to two windows in the same units, and the counters of the others
/// stay below `limit + cost`. A conservative bound: each term is counted at its largest.
pub fn lua_largest(strategy: &Strategy, rate: &Rate, max_cost: u64) -> u128 {
    let (limit, period, cost) = (u128::from(rate.limit), u128::from(rate.period_ms), u128::from(max_cost));
    let cap = |burst: Option<u64>| u128::from(burst.filter(|b| *b > 0).unwrap_or(rate.limit)).max(limit);
    match strategy {
        Strategy::FixedWindow | Strategy::SlidingWindowLog { .. } => limit + cost,
        Strategy::SlidingWindowCounter => 2 * (limit + cost) * period,
        Strategy::TokenBucket { burst } | Strategy::LeakyBucket { burst } | Strategy::Gcra { burst } => {
            (cap(*burst) + cost) * period
        }
        Strategy::TokenBucketDebt { burst, max_debt } => (cap(*burst) + u128::from(*max_debt) + cost) * period,
        Strategy::LeakyBucketQueue { burst, max_delay_ms } => (cap(*burst) + cost) * period + u128::from(*max_delay_ms) * limit,
    }
}

fn default_response() -> ResponseSpec {
    ResponseSpec { status: DEFAULT_STATUS, headers: Vec::new(), body: None, content_type: None }
}
