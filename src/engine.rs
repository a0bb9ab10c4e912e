//! The request path: which rules apply, who the request is counted against, what it costs, and
//! the verdict, decided against a [`SharedStore`]. Pure: the host hands in the request view,
//! the store and the time.

use std::net::IpAddr;

use crate::breaker::{Breaker, Permit};
use crate::config::{Backend, Config, Cost, IdentPart, OnError, Rule};
use crate::identity::{self, Identity, IdentityHasher, RequestInfo};
use crate::rate::Rate;
use crate::redis::wire::Reply;
use crate::response::{self, LocalResponse, Reported};
use crate::store::{Prepared, SharedStore, StoreError, Table};
use crate::strategy::{self, lua, Decision, Outcome};

/// A compiled config plus what requests need precomputed: the slot table of every rule.
#[derive(Debug, Clone)]
pub struct Limiter {
    pub config: Config,
    rules: Vec<Compiled>,
    /// Shared-data key of the Redis circuit breaker.
    breaker_key: String,
    /// SHA-1 of the Redis decision script.
    sha: String,
    /// Turns identities into keyed hashes.
    hasher: IdentityHasher,
    /// Whether any rule looks at the method / the path: each is a host call per request, so
    /// a config that never asks does not pay for it.
    needs_method: bool,
    needs_path: bool,
    /// Distinct request headers (pseudo-headers included) the rules may read for one request.
    header_names: usize,
}

/// From this many distinct header reads per request on, the host reads all headers at once.
const MANY_HEADERS: usize = 3;

/// The request headers `config` may read: pseudo-headers for method and path, match and
/// exemption headers, cost headers, identity parts, and `x-forwarded-for` when trusted.
fn header_names(config: &Config, needs_method: bool, needs_path: bool) -> usize {
    let mut names: Vec<&str> = Vec::new();
    if needs_method {
        names.push(":method");
    }
    if needs_path {
        names.push(":path");
    }
    if config.client_ip.xff_trusted_hops > 0 {
        names.push("x-forwarded-for");
    }
    for rule in &config.rules {
        names.extend(rule.matcher.headers.iter().chain(&rule.exempt.headers).map(|(k, _)| k.as_str()));
        if let Cost::Header { name, .. } = &rule.cost {
            names.push(name);
        }
        for part in &rule.identifier.parts {
            match part {
                IdentPart::Header(h) => names.push(h),
                IdentPart::Query(_) => names.push(":path"),
                IdentPart::Cookie(_) => names.push("cookie"),
                IdentPart::ClientIp | IdentPart::Global => {}
            }
        }
    }
    names.sort_unstable();
    names.dedup();
    names.len()
}

#[derive(Debug, Clone)]
struct Compiled {
    /// Limits other than `0/0`; empty = the rule admits everything.
    limits: Vec<Rate>,
    table: Table,
}

/// What happened to one rule for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleOutcome {
    pub rule: usize,
    pub identity: Identity,
    pub cost: u64,
    /// One decision per active limit.
    pub decisions: Vec<Decision>,
    pub allowed: bool,
    /// The store failed and `on_error` decided.
    pub store_error: bool,
    /// This request created the identity's slot in shared data.
    pub created_slot: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the request (after `delay_ms`, for queued requests), adding `headers` to the
    /// response.
    Admit { headers: Vec<(String, String)>, delay_ms: u64, outcomes: Vec<RuleOutcome> },
    /// Answer with `response`.
    Deny { response: LocalResponse, outcomes: Vec<RuleOutcome> },
}

impl Verdict {
    pub fn outcomes(&self) -> &[RuleOutcome] {
        match self {
            Verdict::Admit { outcomes, .. } | Verdict::Deny { outcomes, .. } => outcomes,
        }
    }
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

/// A request waiting for Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    applied: Vec<Applied>,
    /// Indexes into `applied` of the Redis rules, in command order.
    redis: Vec<usize>,
    /// One command per Redis rule.
    pub commands: Vec<Vec<String>>,
    permit: Permit,
    /// The commands carry the script itself (after a NOSCRIPT).
    eval: bool,
    /// A first pass that decides without writing (several Redis rules: they live in different
    /// cluster slots, so no one script call covers them all).
    dry: bool,
}

/// A rule that applies to a request, before deciding: its index in `config.rules`, the
/// identity the request is counted against, and its cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub rule: usize,
    pub identity: Identity,
    pub cost: u64,
}

/// Why a rule does or does not apply to a request (for `sluice explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applies {
    Yes(Applied),
    /// Its `match` does not hold.
    NoMatch,
    /// Every limit is `0/0`.
    Unlimited,
    /// The request is exempt (CIDR or header).
    Exempt,
    /// An identity part is missing and `fallback: skip`.
    NoIdentity,
}

/// Names a rule's strategy and limits in its keys, so a changed rule starts from fresh state.
/// Not keyed: it carries no request data, and proxies of one deployment must agree on it.
fn fingerprint(rule: &Rule, limits: &[Rate]) -> u32 {
    let text = format!("{:?}|{:?}", rule.strategy, limits);
    IdentityHasher::new(None, &crate::config::ClientIpSpec::default()).hash(text.as_bytes()) as u32
}

/// The decisions of a rule's outcomes (what is reported; the states were stored).
fn decisions(outcomes: Vec<Outcome>) -> Vec<Decision> {
    outcomes.into_iter().map(|o| o.decision).collect()
}

/// Strips the query string and fragment from a `:path`.
pub fn path_only(path: &[u8]) -> &[u8] {
    let end = path.iter().position(|b| matches!(b, b'?' | b'#')).unwrap_or(path.len());
    &path[..end]
}

impl Limiter {
    pub fn new(config: Config) -> Self {
        let rules = config
            .rules
            .iter()
            .map(|rule| {
                let limits: Vec<Rate> = rule.limits.iter().copied().filter(|r| !r.is_unlimited()).collect();
                let table = Table {
                    prefix: format!("{}:{}:", config.namespace, rule.name),
                    slots: config.local.max_clients,
                    fingerprint: fingerprint(rule, &limits),
                };
                Compiled { limits, table }
            })
            .collect();
        let breaker_key = format!("{}:breaker", config.namespace);
        let needs_method = config.rules.iter().any(|r| !r.matcher.methods.is_empty());
        let needs_path = config.rules.iter().any(|r| !r.matcher.paths.is_empty());
        let header_names = header_names(&config, needs_method, needs_path);
        let hasher = IdentityHasher::new(config.identity_secret.as_deref(), &config.client_ip);
        Limiter { config, rules, breaker_key, sha: crate::redis::script_sha(), hasher, needs_method, needs_path, header_names }
    }

    /// Whether a request may need so many header values that reading them all in one host call
    /// is cheaper than one call per value (each call also crosses back into the guest to
    /// allocate the value).
    pub fn reads_many_headers(&self) -> bool {
        self.header_names >= MANY_HEADERS
    }

    /// Whether any rule may delay requests (so the host must run a release tick).
    pub fn queues(&self) -> bool {
        self.config.rules.iter().any(|r| matches!(r.strategy, strategy::Strategy::LeakyBucketQueue { .. }))
    }

    fn matches(rule: &Rule, method: &[u8], path: &str, req: &impl RequestInfo) -> bool {
        let m = &rule.matcher;
        (m.methods.is_empty() || m.methods.iter().any(|x| x.as_bytes() == method))
            && (m.paths.is_empty() || m.paths.iter().any(|g| g.matches(path)))
            && m.headers.iter().all(|(k, v)| req.header(k).as_deref() == Some(v.as_bytes()))
            && (m.routes.is_empty() || req.route_name().is_some_and(|r| m.routes.contains(&r)))
    }

    /// `ip` is canonical (an IPv4-mapped address is its IPv4 address), so one CIDR covers a
    /// client however it reached the listener.
    fn exempt(rule: &Rule, ip: impl Fn() -> Option<IpAddr>, req: &impl RequestInfo) -> bool {
        let e = &rule.exempt;
        !e.cidrs.is_empty() && ip().is_some_and(|ip| e.cidrs.iter().any(|n| n.contains(&ip)))
            || e.headers.iter().any(|(k, v)| req.header(k).as_deref() == Some(v.as_bytes()))
    }

    /// At least 1, whatever the request says: a cost of 0 is the strategies' peek.
    fn cost(rule: &Rule, req: &impl RequestInfo) -> u64 {
        match &rule.cost {
            Cost::Fixed(_) => rule.cost.of(None),
            Cost::Header { name, .. } => rule.cost.of(req.header(name).as_deref()),
        }
    }

    /// For every rule in order, whether it applies to `req` and why not, with each identity's
    /// readable text.
    pub fn explain(&self, req: &impl RequestInfo) -> Vec<Applies> {
        self.applies(req, true)
    }

    /// [`Limiter::explain`]; identities are described only when `describe` or for shadow rules
    /// (whose would-be limits are logged): the hash never needs the text.
    fn applies(&self, req: &impl RequestInfo, describe: bool) -> Vec<Applies> {
        let method = if self.needs_method { req.method().unwrap_or_default() } else { Vec::new() };
        let full_path = if self.needs_path { req.path().unwrap_or_default() } else { Vec::new() };
        // Globs see the path as text; bytes that are not UTF-8 become U+FFFD, which no glob
        // that can match a path contains.
        let path = String::from_utf8_lossy(path_only(&full_path));
        // The client IP is a host call (Envoy's `source.address`): asked once, and only when a
        // rule's exemptions or identity need it.
        let ip_memo = std::cell::OnceCell::new();
        let ip = || *ip_memo.get_or_init(|| identity::client_ip(&self.config.client_ip, req));
        let mut out = Vec::with_capacity(self.config.rules.len());
        for (i, rule) in self.config.rules.iter().enumerate() {
            if !Self::matches(rule, &method, &path, req) {
                out.push(Applies::NoMatch);
                continue;
            }
            if self.rules[i].limits.is_empty() {
                out.push(Applies::Unlimited);
                continue;
            }
            if Self::exempt(rule, ip, req) {
                out.push(Applies::Exempt);
                continue;
            }
            out.push(match self.hasher.resolve(&rule.identifier, ip, req, describe || rule.shadow) {
                Some(identity) => Applies::Yes(Applied { rule: i, identity, cost: Self::cost(rule, req) }),
                None => Applies::NoIdentity,
            });
        }
        out
    }

    /// The rules that apply to `req`, with identity and cost.
    fn applicable(&self, req: &impl RequestInfo) -> Vec<Applied> {
        self.applies(req, false)
            .into_iter()
            .filter_map(|a| match a {
                Applies::Yes(applied) => Some(applied),
                _ => None,
            })
            .collect()
    }

    /// The shared-data key prefix of a rule's slot table (`<namespace>:<rule>:`).
    pub fn table_prefix(&self, rule: usize) -> Option<&str> {
        self.rules.get(rule).map(|r| r.table.prefix.as_str())
    }

    /// Limits in force for a rule right now: a Redis rule decided locally (`on_error:
    /// fallback`) gets its configured share of each limit.
    fn limits_for(&self, a: &Applied) -> std::borrow::Cow<'_, [Rate]> {
        let rule = &self.config.rules[a.rule];
        let limits = &self.rules[a.rule].limits;
        match (rule.backend, rule.on_error) {
            (Backend::Redis, OnError::Fallback { share }) => limits
                .iter()
                .map(|r| Rate { limit: ((r.limit as f64 * share).floor() as u64).max(1), period_ms: r.period_ms })
                .collect(),
            _ => std::borrow::Cow::Borrowed(limits),
        }
    }

    fn decide_all(rule: &Rule, limits: &[Rate], states: &[&[u8]], now_us: u64, cost: u64) -> (Vec<Outcome>, bool) {
        let outcomes: Vec<Outcome> = limits
            .iter()
            .enumerate()
            .map(|(i, rate)| strategy::decide(&rule.strategy, rate, states.get(i).copied().unwrap_or(&[]), now_us, cost))
            .collect();
        // All limits of a rule admit, or nothing is consumed from any of them.
        let write = outcomes.iter().all(|o| o.decision.allowed) && outcomes.iter().any(|o| o.state.is_some());
        (outcomes, write)
    }

    /// The strategy's decision for `a` on a slot's states: every limit in force, at `now_us`.
    fn decider<'a>(&'a self, a: &'a Applied, now_us: u64) -> impl Fn(&[&[u8]]) -> (Vec<Outcome>, bool) + 'a {
        let rule = &self.config.rules[a.rule];
        let limits = self.limits_for(a);
        move |states| Self::decide_all(rule, &limits, states, now_us, a.cost)
    }

    /// Decides one rule. With `write`, the decision is stored (CAS); without, it is a dry run
    /// against the current state.
    fn decide_rule(&self, a: &Applied, store: &impl SharedStore, now_us: u64, write: bool) -> RuleOutcome {
        let table = &self.rules[a.rule].table;
        let decide = self.decider(a, now_us);
        let result = if write {
            table.update(store, a.identity.hash, now_us, decide).map(|u| (decisions(u.outcomes), u.created))
        } else {
            table.peek(store, a.identity.hash, now_us, |states| (decisions(decide(states).0), false))
        };
        self.rule_outcome(a, result)
    }

    /// Decides one rule on the store's current state without writing, keeping what
    /// [`Table::commit`] needs to store the decision (`None` after a store failure).
    fn prepare_rule(&self, a: &Applied, store: &impl SharedStore, now_us: u64) -> (RuleOutcome, Option<Prepared>) {
        match self.rules[a.rule].table.prepare(store, a.identity.hash, now_us, self.decider(a, now_us)) {
            Ok(mut p) => {
                let created = p.created();
                // The outcomes become the decisions in place; committing needs only the write.
                let decisions = decisions(std::mem::take(&mut p.outcomes));
                (self.rule_outcome(a, Ok((decisions, created))), Some(p))
            }
            Err(e) => (self.rule_outcome(a, Err(e)), None),
        }
    }

    fn rule_outcome(&self, a: &Applied, result: Result<(Vec<Decision>, bool), StoreError>) -> RuleOutcome {
        let rule = &self.config.rules[a.rule];
        let (decisions, allowed, store_error, created_slot) = match result {
            Ok((decisions, created)) => {
                let allowed = decisions.iter().all(|d| d.allowed);
                (decisions, allowed, false, created)
            }
            Err(e) => {
                log::warn!("sluice: rule {:?}: local store failed: {e}", rule.name);
                // A decision that could not be stored is not an admission: it would let a
                // request through uncounted.
                let allowed =
                    !matches!(e, StoreError::Contended(_)) && matches!(rule.on_error, OnError::Allow | OnError::Fallback { .. });
                (Vec::new(), allowed, true, false)
            }
        };
        RuleOutcome { rule: a.rule, identity: a.identity.clone(), cost: a.cost, decisions, allowed, store_error, created_slot }
    }

    fn is_redis(&self, a: &Applied) -> bool {
        self.config.rules[a.rule].backend == Backend::Redis
    }

    fn is_shadow(&self, rule: usize) -> bool {
        self.config.rules[rule].shadow
    }

    fn breaker(&self) -> Option<Breaker<'_>> {
        self.config.redis.as_ref().map(|r| Breaker { key: &self.breaker_key, spec: r.breaker, timeout_ms: r.timeout_ms })
    }

    /// Decides `req` at `now_us` (epoch microseconds) with no Redis transport: Redis rules
    /// take their `on_error` path. The host uses [`Limiter::start`] and [`Limiter::resume`].
    pub fn check(&self, req: &impl RequestInfo, store: &impl SharedStore, now_us: u64) -> Verdict {
        match self.start(req, store, now_us) {
            Step::Done(v) => v,
            Step::Redis(p) => match self.resume(p, Err("no Redis transport".into()), store, now_us) {
                Resumed::Done(v) => v,
                Resumed::Retry(p) => self.redis_failed(&p.applied, store, now_us),
            },
        }
    }

    /// Begins deciding `req`: either the verdict, or the Redis commands whose replies
    /// [`Limiter::resume`] needs.
    ///
    /// Every applying rule must admit. A request the local rules deny never costs a Redis round
    /// trip (they are checked first without writing), and one Redis denies consumes nothing
    /// locally (local rules are written after Redis admitted).
    pub fn start(&self, req: &impl RequestInfo, store: &impl SharedStore, now_us: u64) -> Step {
        let applied = self.applicable(req);
        let redis: Vec<usize> = (0..applied.len()).filter(|&i| self.is_redis(&applied[i])).collect();
        if redis.is_empty() {
            return Step::Done(self.local_phase(&applied, Vec::new(), store, now_us));
        }
        let dry: Vec<RuleOutcome> = applied
            .iter()
            .filter(|a| !self.is_redis(a) && !self.is_shadow(a.rule))
            .map(|a| self.decide_rule(a, store, now_us, false))
            .collect();
        if dry.iter().any(|o| !o.allowed) {
            return Step::Done(self.verdict(dry, true));
        }
        let permit = self.breaker().map(|b| b.permit(store, now_us)).unwrap_or(Permit::Skip);
        if permit == Permit::Skip {
            return Step::Done(self.redis_failed(&applied, store, now_us));
        }
        // Several Redis rules: check them all without writing first, so a request one of them
        // denies consumes nothing from the others. A race between the passes can only make a
        // request denied after an earlier rule counted it, never admit one past a limit.
        let dry = redis.len() > 1;
        let mut p = Pending { applied, redis, commands: Vec::new(), permit, eval: false, dry };
        self.set_commands(&mut p);
        Step::Redis(p)
    }

    fn set_commands(&self, p: &mut Pending) {
        p.commands = p.redis.iter().map(|&i| self.redis_command(&p.applied[i], p.eval, p.dry)).collect();
    }

    /// One `EVALSHA` (or, with `eval`, `EVAL` with the script) deciding every limit of a rule;
    /// with `dry`, deciding without writing.
    fn redis_command(&self, a: &Applied, eval: bool, dry: bool) -> Vec<String> {
        let rule = &self.config.rules[a.rule];
        let compiled = &self.rules[a.rule];
        let n = compiled.limits.len();
        let mut cmd = Vec::with_capacity(3 + n * (1 + lua::ARGS_PER_RULE));
        if eval {
            cmd.push("EVAL".to_string());
            cmd.push(lua::SCRIPT.to_string());
        } else {
            cmd.push("EVALSHA".to_string());
            cmd.push(self.sha.clone());
        }
        cmd.push(n.to_string());
        for i in 0..n {
            cmd.push(crate::redis::key(&self.config.namespace, &rule.name, a.identity.hash, i, compiled.table.fingerprint));
        }
        for rate in &compiled.limits {
            cmd.extend(lua::rule_args(&rule.strategy, rate, a.cost));
        }
        if dry {
            cmd.push("dry".to_string());
        }
        cmd
    }

    fn parse_redis(&self, p: &Pending, replies: &[Reply]) -> Result<Vec<RuleOutcome>, String> {
        if replies.len() != p.redis.len() {
            return Err(format!("{} replies for {} commands", replies.len(), p.redis.len()));
        }
        p.redis
            .iter()
            .zip(replies)
            .map(|(&i, reply)| {
                let a = &p.applied[i];
                let limits = &self.rules[a.rule].limits;
                // The longest a reply may hold the request: what the rule allows, never what the
                // reply says (a broken or hostile endpoint must not park requests for ever).
                let max_delay_ms = match self.config.rules[a.rule].strategy {
                    strategy::Strategy::LeakyBucketQueue { max_delay_ms, .. } => max_delay_ms,
                    _ => 0,
                };
                let items = match reply {
                    Reply::Array(items) => items,
                    Reply::Error(e) => return Err(format!("redis: {e}")),
                    other => return Err(format!("unexpected reply {other:?}")),
                };
                let all = items.first().and_then(Reply::as_int).ok_or("reply without verdict")?;
                if items.len() != limits.len() + 1 {
                    return Err(format!("{} decisions for {} limits", items.len() - 1, limits.len()));
                }
                let decisions = limits
                    .iter()
                    .zip(&items[1..])
                    .map(|(rate, item)| {
                        let fields: Option<Vec<i64>> = match item {
                            Reply::Array(f) => f.iter().map(Reply::as_int).collect(),
                            _ => None,
                        };
                        fields
                            .and_then(|f| lua::decision_from_reply(rate.limit, &f))
                            .map(|(d, _ttl)| Decision { delay_ms: d.delay_ms.min(max_delay_ms), ..d })
                            .ok_or_else(|| format!("malformed decision {item:?}"))
                    })
                    .collect::<Result<Vec<Decision>, String>>()?;
                Ok(RuleOutcome {
                    rule: a.rule,
                    identity: a.identity.clone(),
                    cost: a.cost,
                    allowed: all == 1 && decisions.iter().all(|d| d.allowed),
                    decisions,
                    store_error: false,
                    created_slot: false,
                })
            })
            .collect()
    }

    /// Continues a request with Redis' replies (or the transport's failure).
    pub fn resume(&self, mut p: Pending, replies: Result<Vec<Reply>, String>, store: &impl SharedStore, now_us: u64) -> Resumed {
        let parsed = match replies {
            Ok(r) if !p.eval && r.iter().any(Reply::is_noscript) => {
                // The script is not cached on (some node of) Redis: send it whole once, which
                // caches it for every later EVALSHA.
                p.eval = true;
                self.set_commands(&mut p);
                return Resumed::Retry(p);
            }
            Ok(r) => self.parse_redis(&p, &r),
            Err(e) => Err(e),
        };
        let breaker = self.breaker();
        match parsed {
            Ok(outcomes) => {
                let denied = outcomes.iter().any(|o| !o.allowed && !self.is_shadow(o.rule));
                if p.dry && !denied {
                    // Every rule admits: now decide for real. The breaker hears of this call
                    // once, when that pass ends.
                    p.dry = false;
                    self.set_commands(&mut p);
                    return Resumed::Retry(p);
                }
                if let Some(b) = breaker {
                    b.record(store, p.permit, true, now_us);
                }
                Resumed::Done(self.local_phase(&p.applied, outcomes, store, now_us))
            }
            Err(e) => {
                let rules: Vec<String> = p
                    .redis
                    .iter()
                    .map(|&i| {
                        let rule = &self.config.rules[p.applied[i].rule];
                        format!("{:?} (on_error: {})", rule.name, rule.on_error.name())
                    })
                    .collect();
                log::warn!("sluice: redis call failed: {e}; decided by on_error for rule(s) {}", rules.join(", "));
                if let Some(b) = breaker {
                    b.record(store, p.permit, false, now_us);
                }
                Resumed::Done(self.redis_failed(&p.applied, store, now_us))
            }
        }
    }

    /// The request waiting on `p` ended before Redis answered (the client went away): a probe
    /// gives its place back to the breaker, counting neither way.
    pub fn abandon(&self, p: &Pending, store: &impl SharedStore) {
        if let Some(b) = self.breaker() {
            b.abandon(store, p.permit);
        }
    }

    /// Redis could not decide (failure, timeout, open breaker): each Redis rule follows its
    /// `on_error`, then the local rules decide as usual.
    fn redis_failed(&self, applied: &[Applied], store: &impl SharedStore, now_us: u64) -> Verdict {
        let outcomes = applied
            .iter()
            .filter(|a| self.is_redis(a))
            .map(|a| match self.config.rules[a.rule].on_error {
                OnError::Fallback { .. } => RuleOutcome { store_error: true, ..self.decide_rule(a, store, now_us, true) },
                on_error => RuleOutcome {
                    rule: a.rule,
                    identity: a.identity.clone(),
                    cost: a.cost,
                    decisions: Vec::new(),
                    allowed: on_error == OnError::Allow || self.is_shadow(a.rule),
                    store_error: true,
                    created_slot: false,
                },
            })
            .collect();
        self.local_phase(applied, outcomes, store, now_us)
    }

    /// Decides the local rules of `applied`, after the Redis rules' `outcomes` (if any).
    /// Enforced rules are decided before shadow rules, and shadow rules only count requests
    /// that are admitted. When several enforced rules apply, all are checked first without
    /// writing, so a request denied by one consumes nothing from the others; a race between
    /// that check and the writes can only make the request denied after an earlier rule
    /// counted it (never an admission past a limit).
    fn local_phase(&self, applied: &[Applied], mut outcomes: Vec<RuleOutcome>, store: &impl SharedStore, now_us: u64) -> Verdict {
        if outcomes.iter().any(|o| !o.allowed && !self.is_shadow(o.rule)) {
            return self.verdict(outcomes, true);
        }
        let (enforced, shadow): (Vec<&Applied>, Vec<&Applied>) =
            applied.iter().filter(|a| !self.is_redis(a)).partition(|a| !self.is_shadow(a.rule));
        // Decide every enforced rule on what the store holds now before writing any, so a
        // request one rule denies consumes nothing from the others; then store each decision.
        // A slot another worker wrote in between is decided again on what it holds: that can
        // only deny the request after an earlier rule counted it, never admit it past a limit.
        let prepared: Vec<(RuleOutcome, Option<Prepared>)> =
            enforced.iter().map(|a| self.prepare_rule(a, store, now_us)).collect();
        if prepared.iter().any(|(o, _)| !o.allowed) {
            outcomes.extend(prepared.into_iter().map(|(o, _)| o));
            return self.verdict(outcomes, true);
        }
        for (a, (o, p)) in enforced.iter().zip(prepared) {
            let o = match p.map(|p| self.rules[a.rule].table.commit(store, &p)) {
                // Stored, or a store failure that `on_error` admitted.
                Some(Ok(())) | None => o,
                Some(Err(_)) => self.decide_rule(a, store, now_us, true),
            };
            let denied = !o.allowed;
            outcomes.push(o);
            if denied {
                return self.verdict(outcomes, true);
            }
        }
        for a in &shadow {
            let o = self.decide_rule(a, store, now_us, true);
            if !o.allowed {
                log::info!("sluice: shadow rule {:?} would limit {}", self.config.rules[a.rule].name, a.identity.text);
            }
            outcomes.push(o);
        }
        self.verdict(outcomes, false)
    }

    fn verdict(&self, outcomes: Vec<RuleOutcome>, denied: bool) -> Verdict {
        let mut reported = Vec::new();
        for o in &outcomes {
            let rule = &self.config.rules[o.rule];
            let limits = &self.rules[o.rule].limits;
            for (index, (rate, decision)) in limits.iter().zip(&o.decisions).enumerate() {
                reported.push(Reported { rule: &rule.name, index, of: limits.len(), rate: *rate, decision: *decision });
            }
        }
        if denied {
            let violated: Vec<&str> = outcomes
                .iter()
                .filter(|o| !o.allowed && !self.config.rules[o.rule].shadow)
                .map(|o| self.config.rules[o.rule].name.as_str())
                .collect();
            let response = response::limited(&self.config.response, self.config.rate_limit_headers, &reported, &violated);
            return Verdict::Deny { response, outcomes };
        }
        let delay_ms = outcomes
            .iter()
            .filter(|o| !self.config.rules[o.rule].shadow)
            .flat_map(|o| o.decisions.iter().map(|d| d.delay_ms))
            .max()
            .unwrap_or(0);
        let headers = response::rate_limit_headers(self.config.rate_limit_headers, &reported);
        Verdict::Admit { headers, delay_ms, outcomes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::tests::Req;
    use crate::store::MemStore;

    fn limiter(config: serde_json::Value) -> Limiter {
        Limiter::new(crate::config::compile(&config).unwrap())
    }

    const T0: u64 = 1_700_000_040_000_000;

    fn status(v: &Verdict) -> u16 {
        match v {
            Verdict::Admit { .. } => 200,
            Verdict::Deny { response, .. } => response.status,
        }
    }

    fn header<'a>(v: &'a Verdict, name: &str) -> Option<&'a str> {
        let headers = match v {
            Verdict::Admit { headers, .. } => headers,
            Verdict::Deny { response, .. } => &response.headers,
        };
        headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn only_matching_rules_apply() {
        let l = limiter(serde_json::json!({"rules": [
            {"name": "get-api", "match": {"path": "/api/**", "methods": ["GET"]}, "limit": "1/min"},
            {"name": "tenant", "match": {"headers": {"x-tenant": "acme"}}, "limit": "1/min"}
        ]}));
        let s = MemStore::default();
        assert_eq!(status(&l.check(&Req::new("GET", "/api/a?x=1"), &s, T0)), 200);
        assert_eq!(status(&l.check(&Req::new("GET", "/api/b"), &s, T0)), 429);
        assert_eq!(status(&l.check(&Req::new("POST", "/api/b"), &s, T0)), 200, "method does not match");
        assert_eq!(status(&l.check(&Req::new("GET", "/other"), &s, T0)), 200, "path does not match");
        let acme = Req::new("POST", "/x").header("x-tenant", "acme");
        assert_eq!(status(&l.check(&acme, &s, T0)), 200);
        assert_eq!(status(&l.check(&acme, &s, T0)), 429);
    }

    /// A request view that counts how often the client address is asked for.
    struct CountingSource<'a>(&'a Req, std::cell::Cell<u32>);

    impl RequestInfo for CountingSource<'_> {
        fn header(&self, name: &str) -> Option<Vec<u8>> {
            self.0.header(name)
        }
        fn source_address(&self) -> Option<String> {
            self.1.set(self.1.get() + 1);
            self.0.source_address()
        }
        fn route_name(&self) -> Option<String> {
            self.0.route_name()
        }
    }

    #[test]
    fn the_client_address_is_read_only_when_a_rule_needs_it() {
        let reads = |rules: serde_json::Value, req: &Req| {
            let l = limiter(serde_json::json!({ "rules": rules }));
            let counting = CountingSource(req, std::cell::Cell::new(0));
            let v = l.check(&counting, &MemStore::default(), T0);
            (status(&v), counting.1.get())
        };
        let keyed = Req::new("GET", "/").header("x-api-key", "k1");
        let by_key = serde_json::json!([{"name": "k", "limit": "5/min", "identifier": {"header": "x-api-key"}},
                                         {"name": "g", "limit": "5/min", "identifier": "global"}]);
        assert_eq!(reads(by_key.clone(), &keyed), (200, 0), "header and global identities need no address");
        // A missing header falls back to the client IP, which then is read (once).
        assert_eq!(reads(by_key, &Req::new("GET", "/")), (200, 1));
        let by_ip = serde_json::json!([{"name": "a", "limit": "5/min"}, {"name": "b", "limit": "5/min"}]);
        assert_eq!(reads(by_ip, &keyed), (200, 1), "two IP rules read it once");
        let exempt = serde_json::json!([{"name": "x", "limit": "5/min", "identifier": "global",
                                         "exempt": {"cidrs": ["10.0.0.0/8"]}}]);
        assert_eq!(reads(exempt, &keyed), (200, 1), "a CIDR exemption needs it");
    }

    /// A store that counts reads and writes, and can let "another worker" act just before the
    /// first write to a key with a given prefix.
    struct Racing<'a> {
        inner: &'a MemStore,
        reads: std::cell::Cell<u32>,
        writes: std::cell::Cell<u32>,
        before_write: std::cell::RefCell<Option<(String, Box<dyn FnOnce(&MemStore) + 'a>)>>,
    }

    impl<'a> Racing<'a> {
        fn new(inner: &'a MemStore) -> Self {
            Racing { inner, reads: Default::default(), writes: Default::default(), before_write: Default::default() }
        }
    }

    impl SharedStore for Racing<'_> {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            self.reads.set(self.reads.get() + 1);
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            let due = matches!(&*self.before_write.borrow(), Some((prefix, _)) if key.starts_with(prefix.as_str()));
            if due {
                if let Some((_, act)) = self.before_write.borrow_mut().take() {
                    act(self.inner);
                }
            }
            self.writes.set(self.writes.get() + 1);
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn a_multi_rule_request_reads_and_writes_each_slot_once() {
        let l = limiter(serde_json::json!({"rules": [
            {"name": "a", "limit": "5/min"}, {"name": "b", "limit": "5/min"}, {"name": "c", "limit": "5/min"}
        ]}));
        let mem = MemStore::default();
        let store = Racing::new(&mem);
        for _ in 0..2 {
            assert_eq!(status(&l.check(&Req::new("GET", "/"), &store, T0)), 200);
        }
        // The first request finds every home slot unwritten; the second finds each identity there.
        assert_eq!((store.reads.get(), store.writes.get()), (6, 6));
    }

    #[test]
    fn a_slot_written_between_the_decision_and_its_write_is_decided_again() {
        let l = limiter(serde_json::json!({"rules": [
            {"name": "wide", "limit": "5/min", "strategy": "fixed_window"},
            {"name": "narrow", "limit": "1/min", "strategy": "fixed_window"}
        ]}));
        let mem = MemStore::default();
        let store = Racing::new(&mem);
        let narrow = l.table_prefix(1).unwrap_or_default().to_string();
        // Another worker's request takes narrow's only unit after ours read it.
        let other = |m: &MemStore| assert_eq!(status(&l.check(&Req::new("GET", "/"), m, T0)), 200);
        *store.before_write.borrow_mut() = Some((narrow, Box::new(other)));
        let v = l.check(&Req::new("GET", "/"), &store, T0);
        assert_eq!(status(&v), 429, "narrow is decided again on what the other worker wrote");
        // Narrow admitted exactly its limit; wide counted the other request and, in this race,
        // ours too (denied after wide had stored it: never an admission past a limit). A third
        // request sees that: wide would leave 5 − 2 − 1 = 2, narrow has nothing left.
        let v = l.check(&Req::new("GET", "/"), &mem, T0);
        assert_eq!(status(&v), 429);
        let remaining: Vec<u64> = v.outcomes().iter().map(|o| o.decisions.first().map_or(99, |d| d.remaining)).collect();
        assert_eq!(remaining, vec![2, 0]);
    }

    #[test]
    fn configs_reading_several_headers_are_told_apart() {
        let many = |rules: serde_json::Value| limiter(serde_json::json!({ "rules": rules })).reads_many_headers();
        assert!(!many(serde_json::json!([{"name": "ip", "limit": "5/min"}])));
        // :path and one identity header; the same header twice counts once.
        assert!(!many(serde_json::json!([
            {"name": "a", "match": {"path": "/a/**"}, "limit": "5/min", "identifier": {"header": "x-k"}},
            {"name": "b", "limit": "5/min", "identifier": {"header": "x-k"}}
        ])));
        // :path (for the query part), a cookie and a cost header.
        assert!(many(serde_json::json!([{"name": "q", "limit": "5/min", "cost": {"header": "x-cost"},
            "identifier": {"parts": [{"query": "tenant"}, {"cookie": "session"}]}}])));
    }

    #[test]
    fn a_request_denied_by_one_rule_consumes_nothing_from_the_others() {
        let l = limiter(serde_json::json!({"rules": [
            {"name": "wide", "limit": "3/min", "strategy": "fixed_window"},
            {"name": "narrow", "match": {"path": "/n"}, "limit": "1/min", "strategy": "fixed_window"}
        ]}));
        let s = MemStore::default();
        assert_eq!(status(&l.check(&Req::new("GET", "/n"), &s, T0)), 200); // wide 1, narrow 1
        for _ in 0..5 {
            assert_eq!(status(&l.check(&Req::new("GET", "/n"), &s, T0)), 429); // narrow denies
        }
        // Wide has 2 left: the five denied requests took nothing from it.
        assert_eq!(status(&l.check(&Req::new("GET", "/w"), &s, T0)), 200);
        assert_eq!(status(&l.check(&Req::new("GET", "/w"), &s, T0)), 200);
        let v = l.check(&Req::new("GET", "/w"), &s, T0);
        assert_eq!(status(&v), 429);
        let body: serde_json::Value = match &v {
            Verdict::Deny { response, .. } => serde_json::from_slice(&response.body).unwrap(),
            _ => unreachable!(),
        };
        assert_eq!(body["violated_rules"], serde_json::json!(["wide"]));
    }

    #[test]
    fn every_limit_of_a_rule_must_admit_and_is_reported() {
        let l = limiter(serde_json::json!({"rules": [{"name": "r", "limits": ["2/s", "3/min"], "strategy": "fixed_window"}]}));
        let s = MemStore::default();
        let req = Req::new("GET", "/");
        let first = l.check(&req, &s, T0);
        assert_eq!(header(&first, "ratelimit-policy"), Some("\"r.0\";q=2;w=1, \"r.1\";q=3;w=60"));
        assert_eq!(status(&l.check(&req, &s, T0)), 200);
        assert_eq!(status(&l.check(&req, &s, T0)), 429, "2/s reached");
        assert_eq!(status(&l.check(&req, &s, T0 + 1_000_000)), 200);
        assert_eq!(status(&l.check(&req, &s, T0 + 2_000_000)), 429, "3/min reached");
    }

    #[test]
    fn shadow_rules_never_block_but_report() {
        let l = limiter(serde_json::json!({"rules": [{"name": "s", "limit": "1/min", "shadow": true}]}));
        let s = MemStore::default();
        for _ in 0..3 {
            let v = l.check(&Req::new("GET", "/"), &s, T0);
            assert_eq!(status(&v), 200);
        }
        let v = l.check(&Req::new("GET", "/"), &s, T0);
        assert!(v.outcomes().iter().any(|o| !o.allowed));
        assert!(header(&v, "ratelimit").is_some_and(|h| h.contains("r=0")));
    }

    #[test]
    fn costs_exemptions_and_skipped_identities() {
        let l = limiter(serde_json::json!({"rules": [{
            "name": "c", "limit": "10/min", "strategy": "fixed_window",
            "cost": {"header": "x-cost", "default": 2, "max": 6},
            "identifier": {"header": "x-user", "fallback": "skip"},
            "exempt": {"cidrs": ["192.0.2.0/24"]}
        }]}));
        let s = MemStore::default();
        let u = |cost: &str| Req::new("GET", "/").header("x-user", "u").header("x-cost", cost);
        assert_eq!(status(&l.check(&u("100"), &s, T0)), 200); // clamped to 6
        assert_eq!(status(&l.check(&u("junk"), &s, T0)), 200); // default 2 → 8
        assert_eq!(status(&l.check(&u("3"), &s, T0)), 429); // 11 > 10
        assert_eq!(status(&l.check(&u("2"), &s, T0)), 200); // 10
                                                            // No x-user: the rule does not apply.
        assert!(l.check(&Req::new("GET", "/"), &s, T0).outcomes().is_empty());
        let exempt = u("1").source("192.0.2.7:4000");
        assert!(l.check(&exempt, &s, T0).outcomes().is_empty());
    }

    #[test]
    fn unlimited_rules_and_queued_delays() {
        let l = limiter(serde_json::json!({"rules": [
            {"name": "free", "limit": "0/0"},
            {"name": "q", "match": {"path": "/q"}, "limit": "2/s", "strategy": {"type": "leaky_bucket_queue", "max_delay": "1s"}}
        ]}));
        let s = MemStore::default();
        assert!(l.queues());
        assert!(l.check(&Req::new("GET", "/"), &s, T0).outcomes().is_empty());
        let mut delays = Vec::new();
        for _ in 0..6 {
            match l.check(&Req::new("GET", "/q"), &s, T0) {
                Verdict::Admit { delay_ms, .. } => delays.push(delay_ms),
                Verdict::Deny { .. } => delays.push(u64::MAX),
            }
        }
        assert_eq!(delays[0], 0);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "delays grow in arrival order: {delays:?}");
        assert_eq!(*delays.last().unwrap(), u64::MAX, "beyond max_delay: rejected ({delays:?})");
    }

    #[test]
    fn shared_data_per_client_is_small_and_capped() {
        let l = limiter(serde_json::json!({"local": {"max_clients": 1000}, "rules": [{"name": "api", "limit": "100/min"}]}));
        let s = MemStore::default();
        for i in 0..200u32 {
            let ip = format!("10.0.{}.{}:1", i / 256, i % 256);
            l.check(&Req::new("GET", "/").source(&ip), &s, T0);
        }
        let (keys, bytes) = s.size();
        assert_eq!(keys, 200);
        let per_client = bytes / keys;
        assert!(per_client < 96, "{per_client} bytes per client");
        for i in 0..20_000u32 {
            let ip = format!("10.{}.{}.{}:1", i / 65536, (i / 256) % 256, i % 256);
            l.check(&Req::new("GET", "/").source(&ip), &s, T0);
        }
        let (keys, bytes) = s.size();
        assert!(keys <= 1000, "{keys} keys for max_clients 1000");
        eprintln!("shared data: {} bytes per client (key + value), {keys} keys / {bytes} bytes at the cap", bytes / keys);
    }

    fn redis_limiter(rules: serde_json::Value) -> Limiter {
        limiter(
            serde_json::json!({"namespace": "ns", "redis": {"cluster": "gw", "breaker": {"failure_threshold": 2, "open_ms": 1000}}, "rules": rules}),
        )
    }

    /// A Redis reply for one rule: `{all, {allowed, remaining, reset, retry, delay, ttl}...}`.
    fn reply(allowed: bool, remaining: i64) -> Reply {
        let d =
            Reply::Array([i64::from(allowed), remaining, 1000, if allowed { 0 } else { 500 }, 0, 1000].map(Reply::Int).to_vec());
        Reply::Array(vec![Reply::Int(i64::from(allowed)), d])
    }

    fn pending(step: Step) -> Pending {
        match step {
            Step::Redis(p) => p,
            Step::Done(v) => panic!("expected a Redis call, got {v:?}"),
        }
    }

    fn done(r: Resumed) -> Verdict {
        match r {
            Resumed::Done(v) => v,
            Resumed::Retry(p) => panic!("unexpected retry {p:?}"),
        }
    }

    #[test]
    fn redis_rules_send_one_evalsha_per_rule_with_hashed_keys() {
        let l = redis_limiter(
            serde_json::json!([{"name": "api", "limits": ["5/s", "100/min"], "backend": "redis", "identifier": {"header": "x-k"}}]),
        );
        let s = MemStore::default();
        let p = pending(l.start(&Req::new("GET", "/").header("x-k", "a b{c}"), &s, T0));
        assert_eq!(p.commands.len(), 1);
        let cmd = &p.commands[0];
        assert_eq!(cmd[0], "EVALSHA");
        assert_eq!(cmd[1], crate::redis::script_sha());
        assert_eq!(cmd[2], "2");
        for key in &cmd[3..5] {
            assert!(key.starts_with("ns:{api:") && !key.contains(' ') && key.matches('{').count() == 1, "{key}");
        }
        assert_eq!(cmd.len(), 3 + 2 + 2 * lua::ARGS_PER_RULE);
        // NOSCRIPT: once more with the script itself.
        let retry = match l.resume(p, Ok(vec![Reply::Error("NOSCRIPT No matching script".into())]), &s, T0) {
            Resumed::Retry(p) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(retry.commands[0][0], "EVAL");
        assert_eq!(retry.commands[0][1], lua::SCRIPT);
        // A second NOSCRIPT is a failure, not a loop.
        let v = done(l.resume(retry, Ok(vec![Reply::Error("NOSCRIPT again".into())]), &s, T0));
        assert!(v.outcomes()[0].store_error);
    }

    #[test]
    fn redis_denial_consumes_nothing_locally_and_local_denial_skips_redis() {
        let l = redis_limiter(serde_json::json!([
            {"name": "remote", "limit": "10/min", "backend": "redis"},
            {"name": "local", "limit": "1/min", "strategy": "fixed_window"}
        ]));
        let s = MemStore::default();
        let p = pending(l.start(&Req::new("GET", "/"), &s, T0));
        let v = done(l.resume(p, Ok(vec![reply(false, 0)]), &s, T0));
        assert_eq!(status(&v), 429);
        // The local rule still has its one request.
        let p = pending(l.start(&Req::new("GET", "/"), &s, T0));
        let v = done(l.resume(p, Ok(vec![reply(true, 9)]), &s, T0));
        assert_eq!(status(&v), 200);
        assert_eq!(header(&v, "ratelimit"), Some("\"remote\";r=9;t=1, \"local\";r=0;t=60"));
        // Now the local rule denies before any Redis call.
        assert!(matches!(l.start(&Req::new("GET", "/"), &s, T0), Step::Done(Verdict::Deny { .. })));
    }

    #[test]
    fn redis_failures_follow_on_error_and_open_the_breaker() {
        let l = redis_limiter(serde_json::json!([
            {"name": "a", "match": {"path": "/allow"}, "limit": "10/min", "backend": "redis", "on_error": "allow"},
            {"name": "d", "match": {"path": "/deny"}, "limit": "10/min", "backend": "redis", "on_error": "deny"},
            {"name": "f", "match": {"path": "/fb"}, "limit": "4/min", "strategy": "fixed_window", "backend": "redis",
             "on_error": {"fallback": {"share": 0.5}}}
        ]));
        let s = MemStore::default();
        let fail =
            |path: &str, now: u64| done(l.resume(pending(l.start(&Req::new("GET", path), &s, now)), Err("down".into()), &s, now));
        assert_eq!(status(&fail("/allow", T0)), 200);
        let denied = fail("/deny", T0);
        assert_eq!(status(&denied), 429);
        assert!(header(&denied, "retry-after").is_some());
        // Two failures: the breaker is open, so no Redis call is even attempted.
        for (path, want) in [("/allow", 200), ("/deny", 429), ("/fb", 200), ("/fb", 200), ("/fb", 429)] {
            match l.start(&Req::new("GET", path), &s, T0 + 1) {
                Step::Done(v) => assert_eq!(status(&v), want, "{path}"),
                Step::Redis(_) => panic!("called Redis with the breaker open"),
            }
        }
        // After open_ms a probe goes out; its success (and a second) closes the breaker.
        let later = T0 + 1_000_002;
        for _ in 0..2 {
            let p = pending(l.start(&Req::new("GET", "/allow"), &s, later));
            assert_eq!(status(&done(l.resume(p, Ok(vec![reply(true, 5)]), &s, later))), 200);
        }
        assert!(matches!(l.start(&Req::new("GET", "/allow"), &s, later), Step::Redis(_)));
    }

    #[test]
    fn malformed_redis_replies_are_failures() {
        let l = redis_limiter(serde_json::json!([{"name": "d", "limit": "10/min", "backend": "redis", "on_error": "deny"}]));
        for bad in [
            vec![],
            vec![Reply::Int(1)],
            vec![Reply::Array(vec![Reply::Int(1)])],
            vec![Reply::Array(vec![Reply::Int(1), Reply::Str("x".into())])],
        ] {
            let s = MemStore::default(); // a fresh breaker each time
            let p = pending(l.start(&Req::new("GET", "/"), &s, T0));
            let v = done(l.resume(p, Ok(bad.clone()), &s, T0));
            assert_eq!(status(&v), 429, "{bad:?}");
        }
    }

    #[test]
    fn several_redis_rules_are_checked_dry_first_so_a_denial_consumes_nothing() {
        let l = redis_limiter(serde_json::json!([
            {"name": "a", "limit": "10/min", "backend": "redis"},
            {"name": "b", "limit": "10/min", "backend": "redis"}
        ]));
        let s = MemStore::default();
        let p = pending(l.start(&Req::new("GET", "/"), &s, T0));
        assert!(p.commands.iter().all(|c| c.last().map(String::as_str) == Some("dry")));
        // One denies: answered without a second pass, so nothing was written anywhere.
        let v = done(l.resume(p.clone(), Ok(vec![reply(true, 5), reply(false, 0)]), &s, T0));
        assert_eq!(status(&v), 429);
        // Both admit: the same commands for real, then the verdict.
        let real = match l.resume(p, Ok(vec![reply(true, 5), reply(true, 5)]), &s, T0) {
            Resumed::Retry(p) => p,
            other => panic!("{other:?}"),
        };
        assert!(real.commands.iter().all(|c| c.last().map(String::as_str) != Some("dry")));
        assert_eq!(status(&done(l.resume(real, Ok(vec![reply(true, 4), reply(true, 4)]), &s, T0))), 200);
        // One rule: a single pass.
        let one = redis_limiter(serde_json::json!([{"name": "a", "limit": "10/min", "backend": "redis"}]));
        let p = pending(one.start(&Req::new("GET", "/"), &s, T0));
        assert_ne!(p.commands[0].last().map(String::as_str), Some("dry"));
    }

    /// A store on which every conditional write loses its race, as if another worker always
    /// wrote the key between our read and our write.
    struct AlwaysContended<'a>(&'a MemStore);

    impl SharedStore for AlwaysContended<'_> {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            self.0.get(key)
        }
        fn set(&self, _key: &str, _value: &[u8], _cas: u32) -> Result<(), StoreError> {
            Err(StoreError::CasMismatch)
        }
    }

    #[test]
    fn a_write_that_never_lands_denies_and_counts_as_a_store_error() {
        let l = limiter(serde_json::json!({"rules": [{"name": "g", "limit": "100/min", "identifier": "global"}]}));
        let mem = MemStore::default();
        let v = l.check(&Req::new("GET", "/"), &AlwaysContended(&mem), T0);
        assert_eq!(status(&v), 429, "an admission that cannot be counted is not made");
        let o = &v.outcomes()[0];
        assert!(o.store_error && !o.allowed);
        assert_eq!(header(&v, "retry-after"), Some("1"));
        // A Redis rule's local fallback follows the same policy.
        let l = redis_limiter(serde_json::json!([{"name": "f", "limit": "100/min", "backend": "redis", "on_error": "fallback"}]));
        let v = done(l.resume(pending(l.start(&Req::new("GET", "/"), &mem, T0)), Err("down".into()), &AlwaysContended(&mem), T0));
        assert_eq!(status(&v), 429);
    }

    #[test]
    fn no_request_reaches_a_peek() {
        let l = limiter(serde_json::json!({"rules": [{"name": "c", "limit": "2/min", "strategy": "fixed_window",
            "identifier": "global", "cost": {"header": "x-cost", "max": 10}}]}));
        let s = MemStore::default();
        let mut admitted = 0;
        for v in ["0", "00", "+0", " 0", "-1", "0.5", "0x0"] {
            if status(&l.check(&Req::new("GET", "/").header("x-cost", v), &s, T0)) == 200 {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 2, "each of these costs the default, 1: the limit holds");
    }

    #[test]
    fn a_probe_is_one_success_however_many_passes_it_takes() {
        // Two Redis rules: a dry pass, then the write pass. success_threshold 2 needs two probes.
        let l = limiter(serde_json::json!({"namespace": "ns",
            "redis": {"cluster": "gw", "breaker": {"failure_threshold": 1, "open_ms": 1000, "success_threshold": 2}},
            "rules": [{"name": "a", "limit": "10/min", "backend": "redis"}, {"name": "b", "limit": "10/min", "backend": "redis"}]}));
        let s = MemStore::default();
        let b = l.breaker().unwrap();
        done(l.resume(pending(l.start(&Req::new("GET", "/"), &s, T0)), Err("down".into()), &s, T0));
        assert_eq!(b.phase(&s), crate::breaker::Phase::Open);
        let later = T0 + 1_000_001;
        let probe = pending(l.start(&Req::new("GET", "/"), &s, later));
        let write = match l.resume(probe, Ok(vec![reply(true, 5), reply(true, 5)]), &s, later) {
            Resumed::Retry(p) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(b.phase(&s), crate::breaker::Phase::HalfOpen, "the dry pass is not a result yet");
        assert!(matches!(l.start(&Req::new("GET", "/"), &s, later), Step::Done(_)), "one probe at a time, across its passes");
        done(l.resume(write, Ok(vec![reply(true, 4), reply(true, 4)]), &s, later));
        assert_eq!(b.phase(&s), crate::breaker::Phase::HalfOpen, "one probe, one success: not closed by two passes");
        let probe = pending(l.start(&Req::new("GET", "/"), &s, later));
        // Its client hangs up: the place is freed, nothing counted.
        l.abandon(&probe, &s);
        assert_eq!(b.phase(&s), crate::breaker::Phase::HalfOpen);
        let probe = pending(l.start(&Req::new("GET", "/"), &s, later));
        let write = match l.resume(probe, Ok(vec![reply(true, 3), reply(true, 3)]), &s, later) {
            Resumed::Retry(p) => p,
            other => panic!("{other:?}"),
        };
        done(l.resume(write, Ok(vec![reply(true, 2), reply(true, 2)]), &s, later));
        assert_eq!(b.phase(&s), crate::breaker::Phase::Closed);
    }

    #[test]
    fn a_delay_from_redis_never_exceeds_the_rules_max_delay() {
        let l = redis_limiter(serde_json::json!([
            {"name": "q", "limit": "10/s", "backend": "redis", "strategy": {"type": "leaky_bucket_queue", "max_delay": "200ms"}},
        ]));
        let s = MemStore::default();
        let long = Reply::Array(vec![Reply::Int(1), Reply::Array([1, 5, 1000, 0, 86_400_000, 1000].map(Reply::Int).to_vec())]);
        match done(l.resume(pending(l.start(&Req::new("GET", "/"), &s, T0)), Ok(vec![long.clone()]), &s, T0)) {
            Verdict::Admit { delay_ms, .. } => assert_eq!(delay_ms, 200),
            v => panic!("{v:?}"),
        }
        // A strategy that never queues is never held, whatever the reply says.
        let l =
            redis_limiter(serde_json::json!([{"name": "t", "limit": "10/s", "backend": "redis", "strategy": "token_bucket"}]));
        match done(l.resume(pending(l.start(&Req::new("GET", "/"), &s, T0)), Ok(vec![long]), &s, T0)) {
            Verdict::Admit { delay_ms, .. } => assert_eq!(delay_ms, 0),
            v => panic!("{v:?}"),
        }
    }
}
