//! Static analysis of a compiled config for `sluice explain`: rules that can never match, rules
//! that can never limit, rules made redundant by another rule, and limits of one rule that can
//! never be the one that denies.
//!
//! Every finding is a proof, not a guess: each check below is sound (what it reports is true
//! for every request Envoy can deliver) and deliberately incomplete (it may miss cases).
//!
//! What is detected, precisely:
//! - `never_matches`: the rule's `match` holds for no request, because
//!   - the only method is `CONNECT` and a path is required (a CONNECT target is `host:port`), or
//!   - `match.headers` names a hop-by-hop header Envoy removes before filters run
//!     (`keep-alive`, `proxy-connection`, `transfer-encoding`), or a value with leading or
//!     trailing whitespace (HTTP strips it), or a `:method` outside `methods`, or a `:path` none
//!     of the path globs match, or
//!   - with a bootstrap at hand, every name in `match.routes` is missing from its routes.
//! - `never_limits`: the rule matches but every matching request is exempt (its `exempt.cidrs`
//!   cover all of IPv4 and IPv6, or an `exempt.headers` pair is also a `match.headers` pair,
//!   unless it is an `upgrade` or `:protocol` pair: its match takes any case, its exemption not).
//! - `shadowed`: rule B never denies a request that another rule A admits, because every request
//!   B applies to is also counted by A, against the same identity, at no lower cost, with limits
//!   at least as strict. Conditions, all required: B's match implies A's (methods, headers,
//!   routes, and every B glob included in an A glob); identical identifier; A exempts nothing B
//!   does not; same backend and `on_error`; A enforced (not `shadow`); same strategy type with
//!   parameters at least as strict (burst, max_debt), `leaky_bucket_queue` excluded (it delays
//!   rather than denies); cost: fixed costs with A's ≥ B's, or the same header cost; and each
//!   limit of B has a limit of A with the same period and a count no larger. Why that suffices:
//!   all applying rules must admit and a denied request consumes from none, so A's counter
//!   never holds less than B's; whenever B is full, A is too. When A and B shadow each other,
//!   only the later one is reported.
//! - `redundant_limit`: two limits of one rule share a period; the larger (or, if equal, the
//!   later) one can never be the one that denies.
//! - `burst_caps_limit`: a rule of several limits whose strategy sets a `burst` below the count
//!   of a limit other than its shortest-period one. One `burst` sizes every limit's bucket, so
//!   that limit never admits more than `burst` at once, then only its own steady rate (a daily
//!   quota of 1000000 with `burst: 200` admits about 11.6 a second, whatever the per-second
//!   limit says). A burst meant for one limit needs a rule of its own.
//! - `cost_above_capacity`: a rule's largest cost (a header cost's `max`) is more than one of its
//!   limits admits at once (its limit, or its bucket's `burst` and debt): a request stating
//!   more is denied however long it waits, while its 429 asks it to retry after the window.
//! - `share_rounds_up`: `on_error: fallback` gives each proxy `share` of a limit, rounded down
//!   but never below 1; where `limit × share` is under 1, each proxy admits 1, so while Redis
//!   is down the proxies together admit their number times the share they were meant to.
//! - `stats_collide`: two rules' stats are one series in Prometheus, which turns the `.` and `-`
//!   of `sluice.rule.<name>.<what>` into `_` (rules `a.b` and `a_b`, or `x.shadow`'s `limited`
//!   and `x`'s `shadow_limited`): one is summed into or dropped for the other.

use std::collections::HashMap;
use std::fmt;

use ipnet::IpNet;
use serde::Serialize;
use serde_json::Value;
use sluice::config::{Config, Cost, Match, OnError, Rule};
use sluice::strategy::{Param, Strategy};
use sluice::websocket::PROTOCOL_HEADERS;

/// Headers Envoy (1.40, HTTP/1.1) removes before any HTTP filter sees the request; verified
/// against a real Envoy in tests/e2e/tests/per_route.rs.
pub const INVISIBLE_HEADERS: &[&str] = &["keep-alive", "proxy-connection", "transfer-encoding"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    NeverMatches,
    NeverLimits,
    Shadowed,
    RedundantLimit,
    BurstCapsLimit,
    CostAboveCapacity,
    ShareRoundsUp,
    StatsCollide,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::NeverMatches => "never matches",
            Kind::NeverLimits => "never limits",
            Kind::Shadowed => "shadowed",
            Kind::RedundantLimit => "redundant limit",
            Kind::BurstCapsLimit => "burst caps a limit",
            Kind::CostAboveCapacity => "cost above capacity",
            Kind::ShareRoundsUp => "share rounds up",
            Kind::StatsCollide => "stats collide",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: Kind,
    pub rule: String,
    /// The other rule, for `shadowed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    pub message: String,
}

/// Route names known from an Envoy bootstrap, when one was given.
pub type Routes<'a> = Option<&'a [String]>;

pub fn analyze(config: &Config, routes: Routes<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut live = Vec::with_capacity(config.rules.len());
    for rule in &config.rules {
        let never = never_matches(rule, routes, &mut out);
        if !never {
            never_limits(rule, &mut out);
        }
        redundant_limits(rule, &mut out);
        burst_caps(rule, &mut out);
        capacity_and_share(rule, &mut out);
        live.push(!never);
    }
    // A rule that never matches is reported as such, not also as shadowed.
    shadowed(config, &live, &mut out);
    stats_collide(config, &mut out);
    out
}

/// A header cost whose `max` no limit can admit at once, and a fallback share under one unit.
fn capacity_and_share(rule: &Rule, out: &mut Vec<Finding>) {
    for rate in rule.limits.rates() {
        let capacity = sluice::config::largest_admissible(&rule.strategy, rate);
        if let Cost::Header { name, max, .. } = &rule.cost {
            if *max > capacity {
                let message = format!(
                    "cost.max {max} is more than the limit {rate} admits at once ({capacity}): a request whose {name} states more is \
                     denied however long it waits, while its 429 asks it to come back after the window; lower cost.max to {capacity}"
                );
                out.push(finding(Kind::CostAboveCapacity, rule, message));
                break;
            }
        }
    }
    if let OnError::Fallback { share } = rule.on_error {
        if let Some(rate) = rule.limits.rates().iter().find(|r| (r.limit as f64 * share) < 1.0) {
            let message = format!(
                "on_error.fallback.share {share} of the limit {rate} is {}, under 1, and each proxy admits at least 1: while \
                 Redis is down every proxy admits 1 per window, so together they admit more than the share was sized to \
                 keep; raise the share, or use deny",
                rate.limit as f64 * share
            );
            out.push(finding(Kind::ShareRoundsUp, rule, message));
        }
    }
}

/// Rules whose stats are one series once exported: Envoy keeps `sluice.rule.<name>.<what>` apart,
/// but its Prometheus output turns `.` and `-` into `_`, so rules `a.b`, `a-b` and `a_b` (or a
/// rule `x.shadow`'s `limited` and rule `x`'s `shadow_limited`) are summed or dropped there.
fn stats_collide(config: &Config, out: &mut Vec<Finding>) {
    let exported = |name: &str, what: &str| format!("sluice_rule_{name}_{what}").replace(['.', '-'], "_");
    let mut seen: HashMap<String, &str> = HashMap::new();
    for rule in &config.rules {
        let mut by: Option<&str> = None;
        for what in rule.stats() {
            let series = exported(&rule.name, what);
            match seen.get(&series) {
                Some(other) if by.is_none() => by = Some(other),
                Some(_) => {}
                None => {
                    seen.insert(series, &rule.name);
                }
            }
        }
        if let Some(other) = by {
            out.push(Finding {
                by: Some(other.to_string()),
                ..finding(
                    Kind::StatsCollide,
                    rule,
                    format!("its stats and rule {other:?}'s have one name in Prometheus (which turns '.' and '-' into '_'); rename one"),
                )
            });
        }
    }
}

fn finding(kind: Kind, rule: &Rule, message: String) -> Finding {
    Finding { kind, rule: rule.name.clone(), by: None, message }
}

fn never_matches(rule: &Rule, routes: Routes<'_>, out: &mut Vec<Finding>) -> bool {
    let m = &rule.matcher;
    let mut reasons: Vec<String> = Vec::new();

    if !m.paths.is_empty() && m.methods.iter().all(|x| x == "CONNECT") && !m.methods.is_empty() {
        reasons.push("the only method is CONNECT, whose request target is host:port, never a path the globs could match".into());
    }
    for (name, value) in &m.headers {
        if INVISIBLE_HEADERS.contains(&name.as_str()) {
            reasons.push(format!("header {name:?} is hop-by-hop: Envoy removes it before any filter runs"));
        }
        // HTTP strips spaces and tabs around a value (RFC 9110 §5.5), nothing else.
        if value.trim_matches([' ', '\t']) != value {
            reasons.push(format!("header {name:?} must equal {value:?}, but HTTP strips whitespace around header values"));
        }
        // The methods match in any case (as the filter does: `engine/applies.rs`), the header
        // as written: `get` from an HTTP/2 client meets both `methods: [GET]` and `:method: get`.
        if name == ":method" && !m.methods.is_empty() && !m.methods.iter().any(|x| x.eq_ignore_ascii_case(value)) {
            reasons.push(format!("header :method must be {value:?} but methods are {}", m.methods.join(", ")));
        }
        // Compared decoded, as the filter compares a request's path (`config::glob`).
        let decoded = String::from_utf8_lossy(&sluice::config::decode_path(value.as_bytes())).into_owned();
        if name == ":path" && !m.paths.is_empty() && !m.paths.iter().any(|g| g.matches(&decoded)) {
            let globs: Vec<&str> = m.paths.iter().map(|g| g.source.as_str()).collect();
            reasons.push(format!("header :path must be {value:?}, which none of the path globs {globs:?} match"));
        }
    }
    if let Some(known) = routes {
        if !m.routes.is_empty() && m.routes.iter().all(|r| !known.contains(r)) {
            reasons.push(format!(
                "no route of the Envoy bootstrap is named {} (its routes: {})",
                m.routes.join(" or "),
                if known.is_empty() { "none named".to_string() } else { known.join(", ") }
            ));
        }
    }
    let never = !reasons.is_empty();
    if never {
        out.push(finding(Kind::NeverMatches, rule, reasons.join("; ")));
    }
    never
}

fn covers_everything(cidrs: &[IpNet]) -> bool {
    let v4 = cidrs.iter().any(|n| matches!(n, IpNet::V4(n) if n.prefix_len() == 0));
    let v6 = cidrs.iter().any(|n| matches!(n, IpNet::V6(n) if n.prefix_len() == 0));
    v4 && v6
}

fn never_limits(rule: &Rule, out: &mut Vec<Finding>) {
    if covers_everything(&rule.exempt.cidrs) {
        out.push(finding(Kind::NeverLimits, rule, "exempt.cidrs cover every IPv4 and IPv6 address".into()));
        return;
    }
    // An upgrade header's match holds for any case of its token, its exemption only for the
    // exact value: `Upgrade: WebSocket` matches without being exempt.
    let exact = |(name, _): &&(String, String)| !PROTOCOL_HEADERS.contains(&name.as_str());
    if let Some((name, value)) = rule.exempt.headers.iter().filter(exact).find(|pair| rule.matcher.headers.contains(pair)) {
        out.push(finding(
            Kind::NeverLimits,
            rule,
            format!("every request it matches has {name}: {value:?}, which exempt.headers exempts"),
        ));
    }
}

fn redundant_limits(rule: &Rule, out: &mut Vec<Finding>) {
    let limits = rule.limits.rates();
    for (i, a) in limits.iter().enumerate() {
        // a is redundant if another limit of the same period is smaller, or equal and earlier.
        let by = limits
            .iter()
            .enumerate()
            .find(|(j, b)| *j != i && b.period_ms == a.period_ms && (b.limit < a.limit || (b.limit == a.limit && *j < i)));
        if let Some((j, b)) = by {
            out.push(finding(
                Kind::RedundantLimit,
                rule,
                format!("limits[{i}] {a} never denies first: limits[{j}] {b} has the same period and a count no larger"),
            ));
        }
    }
}

fn burst_caps(rule: &Rule, out: &mut Vec<Finding>) {
    let (Some(burst), limits) = (rule.strategy.param(Param::Burst), rule.limits.rates()) else { return };
    let Some(shortest) = limits.iter().map(|r| r.period_ms).min() else { return };
    if limits.len() < 2 {
        return;
    }
    for (i, r) in limits.iter().enumerate().filter(|(_, r)| r.period_ms > shortest && r.limit > burst) {
        out.push(finding(
            Kind::BurstCapsLimit,
            rule,
            format!(
                "burst {burst} sizes every limit's bucket: limits[{i}] {r} never admits more than {burst} at once, then its own steady rate; a burst meant for a shorter limit alone needs a rule of its own"
            ),
        ));
    }
}

// ---- shadowing ----

fn shadowed(config: &Config, live: &[bool], out: &mut Vec<Finding>) {
    let rules = &config.rules;
    for (b, rb) in rules.iter().enumerate().filter(|(b, _)| live[*b]) {
        let by = rules.iter().enumerate().find(|(a, ra)| {
            *a != b && live[*a] && covers(ra, rb) && !(covers(rb, ra) && *a > b)
            // mutual: report the later only
        });
        if let Some((_, ra)) = by {
            let mut f = finding(
                Kind::Shadowed,
                rb,
                format!(
                    "rule {:?} applies to every request this rule does, counts the same identity at no lower cost, and its limits ({}) are at least as strict as these ({}): this rule never denies a request {:?} admits",
                    ra.name,
                    rates(ra),
                    rates(rb),
                    ra.name
                ),
            );
            f.by = Some(ra.name.clone());
            out.push(f);
        }
    }
}

fn rates(rule: &Rule) -> String {
    rule.limits.written().join(", ")
}

/// Whether rule `a` makes rule `b` redundant (see the module docs for the conditions).
pub fn covers(a: &Rule, b: &Rule) -> bool {
    !a.shadow
        && same_kind(a, b)
        && matcher_includes(&a.matcher, &b.matcher)
        && a.identifier == b.identifier
        && exempt_within(a, b)
        && a.backend == b.backend
        && same_on_error(a.on_error, b.on_error)
        && cost_at_least(&a.cost, &b.cost)
        && strategy_at_least(a, b)
        && !b.limits.is_unlimited()
        && b.limits
            .rates()
            .iter()
            .all(|lb| a.limits.rates().iter().any(|la| la.period_ms == lb.period_ms && la.limit <= lb.limit))
}

/// Both count requests, or both count messages; a message rule also acts through `over_limit`
/// when it denies alongside `a` (its notices, its count towards a close), so it is redundant
/// only if that adds nothing: none of its own, or the same as `a`'s (it is over whenever `a`
/// is, so its count never runs ahead).
fn same_kind(a: &Rule, b: &Rule) -> bool {
    a.per == b.per && (b.over_limit == sluice::config::OverLimit::default() || b.over_limit == a.over_limit)
}

fn same_on_error(a: OnError, b: OnError) -> bool {
    match (a, b) {
        (OnError::Allow, OnError::Allow) | (OnError::Deny, OnError::Deny) => true,
        (OnError::Fallback { share: x }, OnError::Fallback { share: y }) => x == y,
        _ => false,
    }
}

/// Every request `a` exempts is exempt from `b` too (else `b` could deny what `a` never counts).
fn exempt_within(a: &Rule, b: &Rule) -> bool {
    a.exempt.cidrs.iter().all(|na| b.exempt.cidrs.iter().any(|nb| nb.contains(na)))
        && a.exempt.headers.iter().all(|pair| b.exempt.headers.contains(pair))
}

fn cost_at_least(a: &Cost, b: &Cost) -> bool {
    match (a, b) {
        (Cost::Fixed(x), Cost::Fixed(y)) => x >= y,
        (x @ Cost::Header { .. }, y @ Cost::Header { .. }) => x == y,
        (Cost::PayloadBytes, Cost::PayloadBytes) => true,
        _ => false,
    }
}

/// Same strategy type, with `a`'s parameters at least as strict. A burst left out is each
/// limit's own count, which for the limit pairs compared (same period, `a`'s count no larger)
/// is already ordered; an explicit burst against a default one compares only for one limit.
fn strategy_at_least(a: &Rule, b: &Rule) -> bool {
    let single = |rule: &Rule| match rule.limits.rates() {
        [only] => Some(only.limit),
        _ => None,
    };
    let bursts = |x: Option<u64>, y: Option<u64>| match (x, y) {
        (None, None) => true,
        (Some(p), Some(q)) => p <= q,
        (Some(p), None) => single(b).is_some_and(|q| p <= q),
        (None, Some(q)) => single(a).is_some_and(|p| p <= q),
    };
    // A log that holds at least as many entries as every limit is exact, whatever its size.
    let exact = |rule: &Rule, n: u32| rule.limits.rates().iter().all(|r| r.limit <= u64::from(n));
    match (&a.strategy, &b.strategy) {
        (Strategy::FixedWindow, Strategy::FixedWindow) | (Strategy::SlidingWindowCounter, Strategy::SlidingWindowCounter) => true,
        (Strategy::SlidingWindowLog { max_entries: x }, Strategy::SlidingWindowLog { max_entries: y }) => {
            x == y || (exact(a, *x) && exact(b, *y))
        }
        (Strategy::TokenBucket { burst: x }, Strategy::TokenBucket { burst: y })
        | (Strategy::LeakyBucket { burst: x }, Strategy::LeakyBucket { burst: y })
        | (Strategy::Gcra { burst: x }, Strategy::Gcra { burst: y }) => bursts(*x, *y),
        (Strategy::TokenBucketDebt { burst: x, max_debt: dx }, Strategy::TokenBucketDebt { burst: y, max_debt: dy }) => {
            bursts(*x, *y) && dx <= dy
        }
        _ => false,
    }
}

/// Whether every request `b` matches is matched by `a`.
pub fn matcher_includes(a: &Match, b: &Match) -> bool {
    let methods = a.methods.is_empty() || (!b.methods.is_empty() && b.methods.iter().all(|m| a.methods.contains(m)));
    let routes = a.routes.is_empty() || (!b.routes.is_empty() && b.routes.iter().all(|r| a.routes.contains(r)));
    let headers = a.headers.iter().all(|pair| b.headers.contains(pair));
    // Globs compared as the filter compares them: decoded.
    let text = |g: &sluice::config::Glob| String::from_utf8_lossy(&sluice::config::decode_path(g.source.as_bytes())).into_owned();
    let paths = a.paths.is_empty()
        || (!b.paths.is_empty() && b.paths.iter().all(|gb| a.paths.iter().any(|ga| glob_includes(&text(ga), &text(gb)))));
    methods && routes && headers && paths
}

// ---- glob inclusion ----

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Any,
    Pat(Vec<char>),
}

/// The segments of a glob, by the rules of `sluice::config::Glob` (documented in its module):
/// one leading `/`, one insignificant trailing `/`, `**` segments merged.
fn segments(source: &str) -> Vec<Seg> {
    let rest = source.strip_prefix('/').unwrap_or(source);
    let rest = if rest.len() > 1 { rest.strip_suffix('/').unwrap_or(rest) } else { rest };
    let mut out: Vec<Seg> = Vec::new();
    if rest.is_empty() {
        return out;
    }
    for seg in rest.split('/') {
        if seg == "**" {
            if out.last() != Some(&Seg::Any) {
                out.push(Seg::Any);
            }
        } else {
            out.push(Seg::Pat(seg.chars().collect()));
        }
    }
    out
}

/// Whether every path glob `b` matches is matched by glob `a` (sound, not complete: a `true`
/// is always right; some inclusions that hold are not recognised).
pub fn glob_includes(a: &str, b: &str) -> bool {
    let (a, b) = (segments(a), segments(b));
    let mut memo = vec![vec![None; b.len() + 1]; a.len() + 1];
    seg_includes(&a, &b, 0, 0, &mut memo)
}

fn seg_includes(a: &[Seg], b: &[Seg], i: usize, j: usize, memo: &mut Vec<Vec<Option<bool>>>) -> bool {
    if let Some(known) = memo[i][j] {
        return known;
    }
    let result = match (a.get(i), b.get(j)) {
        (None, None) => true,
        // `a` is exhausted while `b` still needs segments: some path of `b` is too long.
        (None, Some(_)) => false,
        // `a`'s `**` swallows nothing more, or one more segment of `b` (whatever it is).
        (Some(Seg::Any), _) => seg_includes(a, b, i + 1, j, memo) || (j < b.len() && seg_includes(a, b, i, j + 1, memo)),
        // One segment of `a` against `b`'s `**`, which may stand for zero or several segments.
        (Some(Seg::Pat(_)), Some(Seg::Any)) | (Some(Seg::Pat(_)), None) => false,
        (Some(Seg::Pat(pa)), Some(Seg::Pat(pb))) => pattern_includes(pa, pb) && seg_includes(a, b, i + 1, j + 1, memo),
    };
    memo[i][j] = Some(result);
    result
}

/// Whether segment pattern `a` matches everything segment pattern `b` does: `a`'s literals must
/// meet `b`'s literals, and only `a`'s `*` may absorb `b`'s `*` (which stands for any text).
fn pattern_includes(a: &[char], b: &[char]) -> bool {
    // dp[i][j]: a[i..] includes b[j..].
    let (n, m) = (a.len(), b.len());
    let mut dp = vec![vec![false; m + 1]; n + 1];
    dp[n][m] = true;
    for i in (0..n).rev() {
        for j in (0..=m).rev() {
            dp[i][j] = if a[i] == '*' {
                dp[i + 1][j] || (j < m && dp[i][j + 1])
            } else {
                j < m && b[j] != '*' && a[i] == b[j] && dp[i + 1][j + 1]
            };
        }
    }
    dp[0][0]
}

/// Route names of an Envoy bootstrap's static route configurations; `None` when a connection
/// manager takes its routes from elsewhere (RDS, scoped routes), which this file does not show.
pub fn bootstrap_routes(boot: &Value) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut dynamic = false;
    walk(boot, &mut |map| {
        dynamic |= map.contains_key("rds") || map.contains_key("scoped_routes");
        if let Some(Value::Array(vhosts)) = map.get("virtual_hosts") {
            for vh in vhosts {
                if let Some(Value::Array(routes)) = vh.get("routes") {
                    for r in routes {
                        if let Some(Value::String(name)) = r.get("name") {
                            if !out.contains(name) {
                                out.push(name.clone());
                            }
                        }
                    }
                }
            }
        }
    });
    (!dynamic).then_some(out)
}

/// Cluster names of an Envoy bootstrap's `static_resources`; `None` when it also takes clusters
/// from CDS, which this file does not show.
pub fn bootstrap_clusters(boot: &Value) -> Option<Vec<String>> {
    if boot.pointer("/dynamic_resources/cds_config").is_some() {
        return None;
    }
    let clusters = boot.pointer("/static_resources/clusters").and_then(Value::as_array)?;
    Some(clusters.iter().filter_map(|c| c.get("name").and_then(Value::as_str)).map(String::from).collect())
}

/// Calls `f` on every object of `v`, depth first.
pub fn walk(v: &Value, f: &mut dyn FnMut(&serde_json::Map<String, Value>)) {
    match v {
        Value::Object(map) => {
            f(map);
            for child in map.values() {
                walk(child, f);
            }
        }
        Value::Array(items) => items.iter().for_each(|c| walk(c, f)),
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice::config::Glob;

    fn config(rules: Value) -> Config {
        sluice::config::compile(&json!({ "rules": rules })).unwrap()
    }

    fn kinds(rules: Value) -> Vec<(Kind, String, Option<String>)> {
        analyze(&config(rules), None).into_iter().map(|f| (f.kind, f.rule, f.by)).collect()
    }

    #[test]
    fn glob_inclusion_cases() {
        #[rustfmt::skip]
        let cases = [
            ("/api/**", "/api/x", true),
            ("/api/**", "/api/**", true),
            ("/api/**", "/api", true),
            ("/api/**", "/api/*/orders/**", true),
            ("/**", "/anything/**", true),
            ("/api/*", "/api/x", true),
            ("/api/*", "/api/x*", true),
            ("/api/*.json", "/api/a*.json", true),
            ("/api/*", "/api/**", false),
            ("/api/*", "/api", false),
            ("/api/x", "/api/*", false),
            ("/api/**", "/apix/**", false),
            ("/a/**/z", "/a/b/z", true),
            ("/a/**/z", "/a/**/y/z", true),
            ("/a/**/z", "/a/**", false),
            ("/a*b", "/ab", true),
            ("/a*b", "/a*", false),
            ("/", "/", true),
            ("/**", "/", true),
            ("/api/", "/api", true),
        ];
        for (a, b, want) in cases {
            assert_eq!(glob_includes(a, b), want, "{a} ⊇ {b}");
        }
    }

    /// Soundness against the filter's own matcher: whenever inclusion is claimed, every path
    /// built from `b` (its stars and double stars filled in several ways) matches `a`.
    #[test]
    fn claimed_inclusions_hold_for_the_filters_matcher() {
        let globs = [
            "/",
            "/**",
            "/api",
            "/api/**",
            "/api/*",
            "/api/*/x",
            "/api/**/x",
            "/api/a*",
            "/api/*b",
            "/api/a*b",
            "/a/*/*",
            "/a/**/b/**",
            "/*",
            "/*/x",
            "/x/**/y/*.json",
            "/api/v*/items",
        ];
        let fills = ["", "q", "a", "b", "ab", "x.json", "v1"];
        let paths_of = |g: &str| -> Vec<String> {
            let mut paths = vec![String::new()];
            for seg in segments(g) {
                let mut next = Vec::new();
                for p in &paths {
                    match &seg {
                        Seg::Any => {
                            next.push(p.clone());
                            next.push(format!("{p}/a"));
                            next.push(format!("{p}/b/x"));
                        }
                        Seg::Pat(chars) => {
                            for fill in fills {
                                let s: String =
                                    chars.iter().map(|c| if *c == '*' { fill.to_string() } else { c.to_string() }).collect();
                                if !s.is_empty() {
                                    next.push(format!("{p}/{s}"));
                                }
                            }
                        }
                    }
                }
                paths = next;
            }
            paths.into_iter().map(|p| if p.is_empty() { "/".to_string() } else { p }).collect()
        };
        let mut claimed = 0;
        for a in globs {
            let ga = Glob::parse(a).unwrap();
            for b in globs {
                if !glob_includes(a, b) {
                    continue;
                }
                claimed += 1;
                let gb = Glob::parse(b).unwrap();
                for p in paths_of(b) {
                    if gb.matches(&p) {
                        assert!(ga.matches(&p), "{a} claimed to include {b}, but {p} matches {b} only");
                    }
                }
            }
        }
        assert!(claimed > 30, "{claimed}");
    }

    #[test]
    fn dead_globs_and_contradictions() {
        let found = kinds(json!([
            // Paths are matched decoded: a space or an accent arrives escaped and matches.
            {"name": "space", "match": {"path": "/a b/**"}, "limit": "1/s"},
            {"name": "accent", "match": {"path": ["/café", "/cafe"]}, "limit": "1/s"},
            {"name": "connect", "match": {"path": "/x", "methods": ["CONNECT"]}, "limit": "1/s"},
            {"name": "hop", "match": {"headers": {"keep-alive": "timeout=5"}}, "limit": "1/s"},
            {"name": "ws", "match": {"headers": {"x-a": " v"}}, "limit": "1/s"},
            {"name": "method", "match": {"methods": ["GET"], "headers": {":method": "POST"}}, "limit": "1/s"},
            {"name": "path", "match": {"path": "/api/**", "headers": {":path": "/other"}}, "limit": "1/s"},
            // The request whose raw :path is the header value meets the glob decoded.
            {"name": "path-escaped", "match": {"path": "/thé", "headers": {":path": "/th%C3%A9"}}, "limit": "1/s"},
            {"name": "fine", "match": {"path": "/api/**", "methods": ["GET", "CONNECT"], "headers": {":method": "GET"}}, "limit": "1/s"},
            {"name": "method-case", "match": {"methods": ["GET"], "headers": {":method": "get"}}, "limit": "1/s"},
            // Not whitespace to HTTP: sent and matched as it is.
            {"name": "nbsp", "match": {"headers": {"x-team": "caf\u{e9}\u{a0}"}}, "limit": "1/s"},
            // A list matches a request that sends exactly it.
            {"name": "upgrade-list", "match": {"headers": {"upgrade": "websocket, h2c"}}, "limit": "1/s"},
            {"name": "upgrade-case", "match": {"headers": {"upgrade": "WebSocket", "x-list": "a, b"}}, "limit": "1/s"}
        ]));
        let want = |k: Kind, r: &str| (k, r.to_string(), None);
        assert_eq!(
            found,
            vec![
                want(Kind::NeverMatches, "connect"),
                want(Kind::NeverMatches, "hop"),
                want(Kind::NeverMatches, "ws"),
                want(Kind::NeverMatches, "method"),
                want(Kind::NeverMatches, "path"),
            ]
        );
    }

    #[test]
    fn routes_missing_from_the_bootstrap() {
        let c = config(json!([
            {"name": "known", "match": {"routes": ["a", "zzz"]}, "limit": "1/s"},
            {"name": "unknown", "match": {"routes": ["zzz"]}, "limit": "1/s", "identifier": "global"}
        ]));
        let routes = vec!["a".to_string(), "b".to_string()];
        let found = analyze(&c, Some(&routes));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].kind, found[0].rule.as_str()), (Kind::NeverMatches, "unknown"));
        assert!(analyze(&c, None).is_empty(), "without a bootstrap nothing is known about routes");
    }

    #[test]
    fn never_limits_and_redundant_limits() {
        let found = kinds(json!([
            {"name": "all-exempt", "limit": "1/s", "exempt": {"cidrs": ["0.0.0.0/0", "::/0"]}},
            {"name": "v4-only", "limit": "1/s", "exempt": {"cidrs": ["0.0.0.0/0"]}, "match": {"path": "/v4"}},
            {"name": "same-header", "match": {"headers": {"x-int": "1"}}, "limit": "1/s", "exempt": {"headers": {"x-int": "1"}}},
            // `Upgrade: WebSocket` matches and is not exempt.
            {"name": "same-upgrade", "match": {"headers": {"upgrade": "websocket"}}, "limit": "1/s",
             "exempt": {"headers": {"upgrade": "websocket"}}},
            {"name": "limits", "match": {"path": "/l"}, "limits": ["10/s", "5/s", "100/min", "100/min"]}
        ]));
        let want = |k: Kind, r: &str| (k, r.to_string(), None);
        assert_eq!(
            found,
            vec![
                want(Kind::NeverLimits, "all-exempt"),
                want(Kind::NeverLimits, "same-header"),
                want(Kind::RedundantLimit, "limits"),
                want(Kind::RedundantLimit, "limits"),
            ]
        );
    }

    /// Inclusion is judged on globs as the filter compares them, decoded: `/x/%41` is `/x/A`,
    /// which `/x/*1` does not cover, and `/y/*` covers `/y/%41`.
    #[test]
    fn glob_inclusion_sees_globs_decoded() {
        let found = kinds(json!([
            {"name": "ones", "match": {"path": "/x/*1"}, "limit": "1/min"},
            {"name": "a", "match": {"path": "/x/%41"}, "limit": "1/min"},
            {"name": "any", "match": {"path": "/y/*"}, "limit": "1/min"},
            {"name": "b", "match": {"path": "/y/%41"}, "limit": "1/min"}
        ]));
        assert_eq!(found, vec![(Kind::Shadowed, "b".to_string(), Some("any".to_string()))]);
    }

    #[test]
    fn costs_no_limit_admits_and_shares_under_one_are_reported() {
        let rules = json!([
            {"name": "big-cost", "match": {"path": "/b"}, "limit": "10/min", "cost": {"header": "x-cost", "max": 50}},
            {"name": "fits", "match": {"path": "/f"}, "limit": "10/min", "cost": {"header": "x-cost", "max": 10}},
            {"name": "bucket", "match": {"path": "/k"}, "limit": "10/min", "strategy": {"type": "token_bucket", "burst": 50},
             "cost": {"header": "x-cost", "max": 50}},
            {"name": "tiny-share", "match": {"path": "/t"}, "limit": "1/min", "backend": "redis", "on_error": {"fallback": {"share": 0.1}}},
            {"name": "whole-share", "match": {"path": "/w"}, "limit": "4/min", "backend": "redis", "on_error": {"fallback": {"share": 0.25}}}
        ]);
        let config = sluice::config::compile(&json!({"redis": {"cluster": "gw"}, "rules": rules})).unwrap();
        let found: Vec<_> = analyze(&config, None).into_iter().map(|f| (f.kind, f.rule, f.by)).collect();
        let want = |k: Kind, r: &str| (k, r.to_string(), None);
        assert_eq!(found, vec![want(Kind::CostAboveCapacity, "big-cost"), want(Kind::ShareRoundsUp, "tiny-share")]);
    }

    #[test]
    fn a_burst_below_a_longer_limit_is_reported() {
        let found = kinds(json!([
            {"name": "pro", "match": {"path": "/p"}, "limits": ["100/s", "1000000/day"],
             "strategy": {"type": "token_bucket", "burst": 200}},
            {"name": "smooth", "match": {"path": "/s"}, "limits": ["10/s", "100/min"], "strategy": {"type": "gcra", "burst": 1}},
            {"name": "roomy", "match": {"path": "/r"}, "limits": ["10/s", "100/min"], "strategy": {"type": "token_bucket", "burst": 100}},
            {"name": "alone", "match": {"path": "/a"}, "limit": "100/min", "strategy": {"type": "gcra", "burst": 1}},
            {"name": "default", "match": {"path": "/d"}, "limits": ["10/s", "100/min"], "strategy": "token_bucket"}
        ]));
        let want = |r: &str| (Kind::BurstCapsLimit, r.to_string(), None);
        assert_eq!(found, vec![want("pro"), want("smooth")]);
    }

    #[test]
    fn shadowing_needs_every_condition() {
        let base = json!({"name": "wide", "match": {"path": "/api/**"}, "limit": "10/min", "strategy": "fixed_window"});
        let narrow = |extra: Value| {
            let mut r = json!({"name": "narrow", "match": {"path": "/api/orders/*", "methods": ["POST"]}, "limit": "20/min", "strategy": "fixed_window"});
            for (k, v) in extra.as_object().unwrap() {
                r[k] = v.clone();
            }
            r
        };
        let shadowed = |narrow_rule: Value| {
            kinds(json!([base.clone(), narrow_rule])).contains(&(Kind::Shadowed, "narrow".into(), Some("wide".into())))
        };
        assert!(shadowed(narrow(json!({}))), "subset match, looser limit, same identity");
        assert!(shadowed(narrow(json!({"limit": "10/min"}))), "equal limit");
        assert!(!shadowed(narrow(json!({"limit": "5/min"}))), "stricter limit bites first");
        assert!(!shadowed(narrow(json!({"limit": "20/hour"}))), "another period");
        assert!(!shadowed(narrow(json!({"match": {"path": "/other/**"}}))), "not a subset");
        assert!(!shadowed(narrow(json!({"identifier": {"header": "x-key"}}))), "another identity");
        assert!(!shadowed(narrow(json!({"strategy": "sliding_window_counter"}))), "another strategy");
        assert!(!shadowed(narrow(json!({"cost": 2}))), "costs more than the wide rule counts");
        assert!(shadowed(narrow(json!({"exempt": {"cidrs": ["10.0.0.0/8"]}}))), "the narrow rule exempting more is fine");
        let wide_exempts = json!({"name": "wide", "match": {"path": "/api/**"}, "limit": "10/min", "strategy": "fixed_window", "exempt": {"headers": {"x-i": "1"}}});
        assert!(
            !kinds(json!([wide_exempts, narrow(json!({}))])).iter().any(|k| k.0 == Kind::Shadowed),
            "wide exempts what narrow counts"
        );
        let wide_shadow =
            json!({"name": "wide", "match": {"path": "/api/**"}, "limit": "10/min", "strategy": "fixed_window", "shadow": true});
        assert!(
            !kinds(json!([wide_shadow, narrow(json!({}))])).iter().any(|k| k.0 == Kind::Shadowed),
            "a shadow rule denies nothing"
        );
        // Order does not matter (every applying rule is checked), and equivalent rules are
        // reported once, as the later one.
        let twins = kinds(json!([
            narrow(json!({"name": "first", "limit": "10/min"})),
            narrow(json!({"name": "second", "limit": "10/min"}))
        ]));
        assert_eq!(twins, vec![(Kind::Shadowed, "second".into(), Some("first".into()))]);
        let reversed = kinds(json!([narrow(json!({})), base.clone()]));
        assert_eq!(reversed, vec![(Kind::Shadowed, "narrow".into(), Some("wide".into()))]);
    }

    #[test]
    fn bursts_compare_per_strategy() {
        let rule = |name: &str, limit: &str, strategy: Value| json!({"name": name, "limit": limit, "strategy": strategy, "match": {"path": if name == "a" {"/**"} else {"/x"}}});
        let shadowed = |a: Value, b: Value| kinds(json!([a, b])).iter().any(|k| k.0 == Kind::Shadowed);
        assert!(shadowed(rule("a", "10/s", json!("token_bucket")), rule("b", "20/s", json!("token_bucket"))));
        assert!(
            !shadowed(rule("a", "10/s", json!({"type": "token_bucket", "burst": 50})), rule("b", "20/s", json!("token_bucket"))),
            "a's burst 50 > b's 20"
        );
        assert!(
            !shadowed(
                rule("a", "10/s", json!({"type": "leaky_bucket_queue"})),
                rule("b", "20/s", json!({"type": "leaky_bucket_queue"}))
            ),
            "queues delay"
        );
        assert!(shadowed(
            rule("a", "10/s", json!({"type": "gcra", "burst": 1})),
            rule("b", "10/s", json!({"type": "gcra", "burst": 2}))
        ));
    }

    #[test]
    fn rules_whose_stats_prometheus_names_alike() {
        // Different paths and identities: nothing else to report between them.
        let found = kinds(json!([
            {"name": "a.b", "match": {"path": "/1"}, "limit": "1/s"},
            {"name": "a-b", "match": {"path": "/2"}, "limit": "1/s"},
            {"name": "x", "match": {"path": "/3"}, "limit": "1/s"},
            {"name": "x.shadow", "match": {"path": "/4"}, "limit": "1/s"},
            {"name": "ab", "match": {"path": "/5"}, "limit": "1/s"},
            {"name": "x.shadows", "match": {"path": "/6"}, "limit": "1/s"}
        ]));
        let collide = |r: &str, by: &str| (Kind::StatsCollide, r.to_string(), Some(by.to_string()));
        assert_eq!(found, vec![collide("a-b", "a.b"), collide("x.shadow", "x")]);
    }

    #[test]
    fn routes_of_a_bootstrap() {
        let boot = json!({"static_resources": {"listeners": [{"filter_chains": [{"filters": [{"typed_config": {"route_config": {"virtual_hosts": [
            {"routes": [{"name": "a"}, {"match": {}}]}, {"routes": [{"name": "b"}, {"name": "a"}]}
        ]}}}]}]}]}});
        assert_eq!(bootstrap_routes(&boot), Some(vec!["a".to_string(), "b".to_string()]));
        // Routes from RDS are not in the file: no route name can be said to be missing.
        let rds = json!({"static_resources": {"listeners": [{"filter_chains": [{"filters": [{"typed_config":
            {"rds": {"route_config_name": "r"}}}]}]}]}});
        assert_eq!(bootstrap_routes(&rds), None);
    }
}
