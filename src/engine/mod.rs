//! The request path, around one compiled rule each ([`rule`]): which rules apply and why not
//! ([`applies`]), local decisions in shared data ([`local`]) and the worker's memo of the
//! denials among them ([`memo`]), remote decisions in Redis ([`remote`]), what the requests
//! waiting on it hold ([`inflight`]) and the cache of the denials Redis gave ([`deny`]), and the
//! verdict ([`verdict`]). Pure: the host hands in the
//! request view, the store and the time.

mod applies;
mod deny;
mod inflight;
mod local;
mod memo;
mod remote;
mod rule;
#[cfg(any(test, feature = "fuzzing"))]
pub mod skew;
mod verdict;

pub use applies::{path_only, Applied, Applies, Exemption, Mismatch, Missing};
pub use remote::{Heard, Pending};
pub use verdict::{RuleOutcome, Verdict};

use std::sync::Arc;

use applies::ReadPlan;
use rule::CompiledRule;

use crate::config::{ClientIpSpec, Config, HeaderMode, RedisSpec, ResponseSpec, Rule};
use crate::identity::IdentityHasher;
use crate::response::LocalResponse;

/// A compiled config as requests read it: every rule with what it needs precomputed, and the
/// settings around them. Built once in `on_configure`.
#[derive(Debug, Clone)]
pub struct Limiter {
    rules: Vec<CompiledRule>,
    namespace: String,
    headers_mode: HeaderMode,
    response: ResponseSpec,
    client_ip: ClientIpSpec,
    redis: Option<RedisSpec>,
    /// Shared-data key of the Redis circuit breaker.
    breaker_key: String,
    /// SHA-1 of the Redis decision script.
    sha: String,
    /// Turns identities into keyed hashes.
    hasher: IdentityHasher,
    plan: ReadPlan,
    /// The worker's memo of local denials.
    memo: memo::Memo,
    /// The worker's copies of its own writes (`crate::store::own`).
    own: crate::store::Own,
    /// The worker's copies of Redis denials (the deny cache's).
    denials: deny::Copies,
    /// The worker's last limited response, and the one every denied message shares.
    last_limited: verdict::LastLimited,
    message_denied: Arc<LocalResponse>,
    /// Some rule is a shadow rule, whose denials the verdict logs.
    shadows: bool,
    /// What the worker's requests waiting on Redis hold (`inflight`), made when first needed.
    in_flight: inflight::Lazy,
}

/// The first step of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Done(Verdict),
    /// Send `commands` (a pipeline) to Redis and call [`Limiter::resume`] with the replies.
    Redis(Pending),
}

/// What happened after Redis answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumed {
    Done(Verdict),
    /// Send the (changed) commands: with the script itself after a NOSCRIPT, or for real after
    /// a dry pass in which every rule admitted.
    Retry(Pending),
}

impl Limiter {
    pub fn new(config: Config) -> Self {
        let plan = ReadPlan::of(&config);
        let hasher = IdentityHasher::new(config.identity_secret.as_deref(), &config.client_ip);
        let Config { namespace, rate_limit_headers, response, client_ip, local, redis, rules, .. } = config;
        let rules = CompiledRule::all(rules, &namespace, local.max_clients, redis.as_ref().map(|r| r.cluster.as_str()));
        let shadows = rules.iter().any(CompiledRule::is_shadow);
        let message_denied = Arc::new(LocalResponse {
            status: response.status,
            grpc_status: response.grpc_status,
            headers: Vec::new(),
            body: Vec::new(),
        });
        Limiter {
            rules,
            // One breaker per Redis: two configs of one namespace in a VM that reach different
            // gateways must not open each other's. `#` is in no rule name, so no rule called
            // `breaker` has a table key (`<namespace>:breaker:<slot>`) equal to it.
            breaker_key: match &redis {
                Some(r) => format!("{namespace}:breaker#{}", r.cluster),
                None => format!("{namespace}:breaker"),
            },
            namespace,
            headers_mode: rate_limit_headers,
            response,
            client_ip,
            redis,
            sha: crate::redis::script::sha(),
            hasher,
            plan,
            memo: memo::Memo::default(),
            own: crate::store::Own::default(),
            denials: deny::Copies::default(),
            last_limited: verdict::LastLimited::default(),
            message_denied,
            shadows,
            in_flight: inflight::Lazy::default(),
        }
    }

    /// Prefix of every key the filter writes.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Where Redis rules are decided, if any rule may be.
    pub fn redis(&self) -> Option<&RedisSpec> {
        self.redis.as_ref()
    }

    /// The rules, in config order (outcomes name them by this index).
    pub fn rules(&self) -> impl ExactSizeIterator<Item = &Rule> {
        self.rules.iter().map(|c| &c.rule)
    }

    /// Whether any rule may delay requests (so the host must run a release tick).
    pub fn queues(&self) -> bool {
        self.rules.iter().any(|c| c.rule.strategy.entry().params.contains(&crate::strategy::Param::MaxDelayMs))
    }

    /// Whether a request may need so many header values that reading them all in one host call
    /// is cheaper than one call per value (each call also crosses back into the guest to
    /// allocate the value).
    pub fn reads_many_headers(&self) -> bool {
        self.plan.reads_many_headers()
    }

    /// The shared-data key prefix of a rule's slot table: `<namespace>:identity#<hash>:` for
    /// the table the enforced local rules of one identifier share, else `<namespace>:<rule>:`
    /// (docs/architecture.md, "Contracts: keys").
    pub fn table_prefix(&self, rule: usize) -> Option<&str> {
        self.rules.get(rule).map(|c| c.table.prefix.as_str())
    }

    /// The Redis key prefix of a rule's identity (`<namespace>:{<rule>:<hash>}:`).
    pub fn redis_key_prefix(&self, rule: usize, identity: u64) -> Option<String> {
        self.rules.get(rule).map(|c| crate::redis::key_prefix(&self.namespace, &c.rule.name, identity))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
