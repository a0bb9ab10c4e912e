//! The plugin configuration: its compiled, immutable form (this file) and the compiler that
//! builds it from JSON (or YAML in the CLI), reporting every error at once with its path.

mod compile;
mod error;
mod glob;
mod serialize;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
mod unique;

pub use compile::{
    compile, compile_json, compile_read, lua_largest, LOCAL_EXACT, LUA_EXACT, MAX_COST, MAX_DELAY_MS, MAX_LOG_ENTRIES, MAX_RULES,
};
pub use error::{ConfigError, ConfigErrors, Problem};
pub use glob::{decode_path, GlobError, GlobErrorKind};
pub use unique::{parse_json, read, Budget, Parsed};

use crate::rate::Limits;
use crate::strategy::Strategy;

/// A compiled plugin configuration. Built once in `on_configure`; requests only read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Prefix of every counter key (default "sluice").
    pub namespace: String,
    pub rate_limit_headers: HeaderMode,
    pub response: ResponseSpec,
    pub client_ip: ClientIpSpec,
    pub local: LocalSpec,
    pub redis: Option<RedisSpec>,
    /// Keys the identity hash (see [`crate::identity::IdentityHasher`]): the same on every proxy
    /// that shares counters. `None` uses the documented public default, which lets a client who
    /// knows it aim values at another client's bucket.
    pub identity_secret: Option<String>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderMode {
    Draft10,
    Legacy,
    Both,
    None,
}

/// The limited response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseSpec {
    /// Default 429.
    pub status: u16,
    /// Extra headers (lower-cased names) added to every limited response.
    pub headers: Vec<(String, String)>,
    /// Custom body; `None` = an RFC 9457 problem+json body naming the violated rules.
    pub body: Option<String>,
    /// Content type of a custom body (default "text/plain").
    pub content_type: Option<String>,
    /// The gRPC status a gRPC request is answered with (Envoy turns the response into a gRPC
    /// error for those): default 8, RESOURCE_EXHAUSTED, which clients and meshes do not retry.
    pub grpc_status: u8,
}

/// How the client IP is derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIpSpec {
    /// 0 (default): Envoy's `source.address`. N > 0: the N-th address from the right of
    /// `x-forwarded-for` (the left-most one added by a trusted proxy), falling back to
    /// `source.address` when the header has fewer entries.
    pub xff_trusted_hops: u32,
    /// An IPv6 client is counted by its network of this many leading bits (default 64): one
    /// host owns a whole /64 and can rotate addresses inside it at will.
    pub ipv6_prefix: u8,
}

impl Default for ClientIpSpec {
    fn default() -> Self {
        ClientIpSpec { xff_trusted_hops: 0, ipv6_prefix: 64 }
    }
}

/// Sizing of the per-proxy (shared-data) store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalSpec {
    /// Shared-data slots per table: a rule's, or one shared by the rules that count the same
    /// identity (default 10000); about ten times the identities live at once.
    pub max_clients: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Http,
    RedisCallout,
}

/// The token every shipped example and bootstrap carries, in `redis.token` and as the gateway's:
/// public, so good on loopback only (the gateway refuses it on any other address).
pub const EXAMPLE_TOKEN: &str = "sluice-dev-token";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSpec {
    /// Envoy cluster of the gateway (or of Redis on Higress).
    pub cluster: String,
    pub transport: Transport,
    /// Bearer token for the HTTP endpoint.
    pub token: Option<String>,
    /// `:authority` of HTTP callouts, a valid URI authority: as given, else the cluster name
    /// (its host, for an Istio `outbound|port||host` name). Unset, Redis callouts send none.
    pub authority: Option<String>,
    pub timeout_ms: u64,
    /// When to stop calling Redis after failures, and how to come back.
    pub breaker: crate::breaker::BreakerSpec,
    /// Whether a denial Redis gave is remembered until its retry-after (on by default; off only
    /// to measure what it saves).
    pub deny_cache: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub matcher: Match,
    /// All must admit; `0/0` admits everything.
    pub limits: Limits,
    pub strategy: Strategy,
    pub identifier: Identifier,
    pub cost: Cost,
    pub exempt: Exempt,
    pub backend: Backend,
    pub on_error: OnError,
    pub shadow: bool,
    /// Whether its limits appear in the rate limit fields (default: unless `shadow`). A rule
    /// kept out still denies, and its denial still sets `Retry-After` and names it in the body.
    pub advertise: bool,
    /// What the rule counts: requests, or the messages of upgraded WebSocket connections.
    pub per: Per,
    /// What a message over the limit brings about (message rules).
    pub over_limit: OverLimit,
}

/// What a rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Per {
    #[default]
    Request,
    /// Client-to-server data messages of WebSocket connections whose upgrade the rule matched,
    /// each counted against the identity the upgrade request had (see [`crate::websocket`]).
    Message,
}

/// A message over the limit is dropped; these add to that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OverLimit {
    /// Tell the client with a text frame naming the rule and when to retry.
    pub notify: bool,
    /// At this many messages over the limit, close the connection with 1008.
    pub close_after: Option<u32>,
}

/// All conditions must hold; an empty list means "any".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Match {
    pub paths: Vec<Glob>,
    /// Upper-case method names.
    pub methods: Vec<String>,
    /// Lower-case header name and exact value.
    pub headers: Vec<(String, String)>,
    /// Envoy route names (`xds.route_name`).
    pub routes: Vec<String>,
}

/// A path glob: `*` matches within one segment, `**` any number of segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    /// The text as written by the user.
    pub source: String,
    pub(crate) segments: Vec<GlobSegment>,
    /// The same glob as a plain comparison, when it has no `*` but a final `**`.
    pub(crate) literal: Option<Literal>,
}

/// A glob without wildcards but a final `**`, matched by comparing text: the path (without its
/// leading and trailing `/`) equals `text`, or, with `prefix`, also continues with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Literal {
    pub text: String,
    pub prefix: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GlobSegment {
    /// `**`: zero or more whole segments.
    AnySegments,
    /// A segment pattern; `*` inside matches any run of characters except `/`.
    Pattern(String),
}

/// Where the identity comes from. Several parts form a composite identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identifier {
    pub parts: Vec<IdentPart>,
    /// What to do when a header/query/cookie part is absent.
    pub fallback: IdentFallback,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentPart {
    ClientIp,
    Global,
    /// Lower-case header name.
    Header(String),
    Query(String),
    Cookie(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentFallback {
    /// Use the client IP in place of the missing part (default).
    ClientIp,
    /// Count all such requests together.
    Global,
    /// The rule does not apply to the request.
    Skip,
}

/// What one request takes from each limit: always at least 1 (a cost of 0 would be the
/// strategies' peek, which admits without counting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cost {
    Fixed(u64),
    /// Read from a header (lower-case name): a value that is absent, not a plain decimal
    /// integer or below `min` takes `default`; one above `max` is clamped to `max`.
    /// `1 <= min <= default <= max`.
    Header {
        name: String,
        default: u64,
        min: u64,
        max: u64,
    },
    /// A message's payload bytes as they cross the wire (compressed size under
    /// permessage-deflate), at least 1; message rules only.
    PayloadBytes,
}

impl Cost {
    /// The cost of a request whose cost header (if the rule reads one) holds `value`.
    pub fn of(&self, value: Option<&[u8]>) -> u64 {
        match self {
            Cost::Fixed(n) => (*n).max(1),
            Cost::PayloadBytes => 1,
            Cost::Header { default, min, max, .. } => match value.and_then(plain_decimal) {
                Some(n) if n >= *min => n.min(*max),
                _ => *default,
            }
            .max(1),
        }
    }
}

impl Rule {
    /// `advertise` where it means something: none for a message rule, whose verdicts send no
    /// rate limit fields.
    pub fn advertise_if_request(&self) -> Option<bool> {
        (self.per == Per::Request).then_some(self.advertise)
    }

    /// The cost of one message with `payload` bytes. A payload-byte cost above what any limit of
    /// the rule could ever admit is held at one more than that: denied just the same (a cost
    /// above a strategy's capacity never passes), and the numbers stay small enough for the Lua
    /// mirror to hold exactly.
    pub fn message_cost(&self, payload: u64) -> u64 {
        match self.cost {
            Cost::PayloadBytes => payload.clamp(1, self.largest_admissible().saturating_add(1)),
            ref other => other.of(None),
        }
    }

    /// The largest cost one request or message can be admitted with under every limit.
    pub fn largest_admissible(&self) -> u64 {
        self.limits.rates().iter().map(|r| largest_admissible(&self.strategy, r)).max().unwrap_or(0)
    }

    /// The last part of each of the rule's stats (`sluice.rule.<name>.<what>`): admitted,
    /// denied, denied by a shadow rule, store errors, cached denials, then for a message rule
    /// the connections it closed.
    pub fn stats(&self) -> &'static [&'static str] {
        match self.per {
            Per::Request => &["allowed", "limited", "shadow_limited", "store_errors", "cached_denials"],
            Per::Message => &[
                "messages_admitted",
                "messages_dropped",
                "messages_shadow_limited",
                "store_errors",
                "cached_denials",
                "connections_closed",
            ],
        }
    }
}

/// The largest cost `strategy` can ever admit at once for `rate`: the window's limit, or the
/// bucket's capacity (with its debt).
pub fn largest_admissible(strategy: &Strategy, rate: &crate::rate::Rate) -> u64 {
    let capacity = |burst: Option<u64>| burst.filter(|b| *b > 0).unwrap_or(rate.limit);
    match strategy {
        Strategy::FixedWindow | Strategy::SlidingWindowCounter | Strategy::SlidingWindowLog { .. } => rate.limit,
        Strategy::TokenBucket { burst }
        | Strategy::LeakyBucket { burst }
        | Strategy::LeakyBucketQueue { burst, .. }
        | Strategy::Gcra { burst } => capacity(*burst),
        Strategy::TokenBucketDebt { burst, max_debt } => capacity(*burst).saturating_add(*max_debt),
    }
}

/// A plain decimal integer: ASCII digits only (no sign, space or other spelling), saturating
/// at `u64::MAX` (which any `max` then clamps).
fn plain_decimal(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(bytes.iter().fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0'))))
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Exempt {
    pub cidrs: Vec<ipnet::IpNet>,
    /// Lower-case header name and exact value.
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OnError {
    Allow,
    Deny,
    /// Decide locally with `share` (0 < share ≤ 1) of each limit.
    Fallback {
        share: f64,
    },
}

impl OnError {
    /// The config's word for it.
    pub fn name(&self) -> &'static str {
        match self {
            OnError::Allow => "allow",
            OnError::Deny => "deny",
            OnError::Fallback { .. } => "fallback",
        }
    }
}
