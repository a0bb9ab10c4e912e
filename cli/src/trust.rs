//! Trust boundaries: every place a config lets what a request carries weaken a limit. `sluice
//! lint` prints each as a warning (the config stays valid): a client controls its own headers,
//! query and cookies, so each of these holds only if that value is stripped at the edge or set
//! by a trusted step (an authenticating filter, an internal listener) before sluice runs.

use sluice::config::{Config, IdentFallback, IdentPart, Match, Rule};

/// One warning: where in the config, and what a client can do there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

const STRIP: &str = "strip it at the edge or set it only after authentication (README: Trust boundaries)";

pub fn warnings(config: &Config) -> Vec<Warning> {
    let mut out = Vec::new();
    if config.identity_secret.is_none() {
        out.push(Warning {
            path: "identity_secret".into(),
            message: "not set: identities are hashed with the public default key, so a client can compute values whose \
                      slots crowd another client's and, with a few requests, evict its count (it starts afresh); set a secret \
                      of your own, the same on every proxy"
                .into(),
        });
    }
    for (i, rule) in config.rules.iter().enumerate() {
        rule_warnings(&format!("rules[{i}]"), rule, capped(config, rule), &mut out);
    }
    out
}

/// What the bootstrap's connection manager makes of the client's address, for a config that
/// counts or exempts by it (`remote`: `use_remote_address`, `hops`: its `xff_num_trusted_hops`).
pub fn address_warnings(config: &Config, remote: bool, hops: u64) -> Vec<Warning> {
    let by_address = config.rules.iter().any(|r| {
        r.identifier.parts.contains(&IdentPart::ClientIp)
            || r.identifier.fallback == IdentFallback::ClientIp
            || !r.exempt.cidrs.is_empty()
    });
    let mut out = Vec::new();
    if !by_address {
        return out;
    }
    let own = config.client_ip.xff_trusted_hops;
    if own == 0 && !remote && hops == 0 {
        out.push(Warning {
            path: "use_remote_address".into(),
            message: "off in the connection manager, so Envoy takes source.address from the last x-forwarded-for \
                      entry: a client that reaches this proxy directly names its own address and gets a fresh \
                      budget (or an exemption) per name; at the edge set use_remote_address: true, behind a \
                      trusted load balancer that appends the client's address this is right"
                .into(),
        });
    }
    if own > 0 && remote {
        out.push(Warning {
            path: "client_ip.xff_trusted_hops".into(),
            message: format!(
                "{own} with use_remote_address: true: Envoy appends the address of its own peer to x-forwarded-for \
                 before sluice reads it, so hop {own} from the right is one hop nearer than meant (hop 1 is the \
                 peer itself: every client behind it is one); count that hop too, or leave xff_trusted_hops at 0 \
                 and let Envoy's xff_num_trusted_hops decide source.address"
            ),
        });
    }
    out
}

/// Whether a rule that counts by address alone applies to every request `rule` does (it
/// matches every request, or exactly what `rule` matches), and counts what `rule` counts
/// (requests, or messages): it caps what any one address gets, however it varies the values
/// `rule` counts by. A request rule caps no messages: each connection it lets open brings a
/// message rule's fresh budget.
fn capped(config: &Config, rule: &Rule) -> bool {
    config.rules.iter().any(|r| {
        let by_address = r.identifier.parts.as_slice() == [IdentPart::ClientIp];
        let covers = r.matcher == Match::default() || r.matcher == rule.matcher;
        by_address && covers && !r.shadow && r.per == rule.per && !r.limits.rates().is_empty()
    })
}

fn rule_warnings(path: &str, rule: &Rule, capped: bool, out: &mut Vec<Warning>) {
    let mut warn = |p: String, message: String| out.push(Warning { path: p, message });
    for (name, value) in &rule.matcher.headers {
        warn(
            format!("{path}.match.headers.{name}"),
            format!("the rule applies only when the request says {name}: {value:?}, so a client opts out by dropping or changing it; {STRIP}"),
        );
    }
    for (name, value) in &rule.exempt.headers {
        warn(
            format!("{path}.exempt.headers.{name}"),
            format!("any client that sends {name}: {value:?} is never limited by this rule; {STRIP}"),
        );
    }
    if let sluice::config::Cost::Header { name, min, max, .. } = &rule.cost {
        warn(
            format!("{path}.cost.header"),
            format!(
                "the client states its own cost in {name}: one that sends {min} always pays the least, and one \
                 that sends {max} spends that much of a budget it may share with others at once; {STRIP}"
            ),
        );
    }
    let request_parts: Vec<String> = rule
        .identifier
        .parts
        .iter()
        .filter_map(|p| match p {
            IdentPart::Header(h) => Some(format!("header {h}")),
            IdentPart::Query(q) => Some(format!("query parameter {q}")),
            IdentPart::Cookie(c) => Some(format!("cookie {c}")),
            IdentPart::ClientIp | IdentPart::Global => None,
        })
        .collect();
    if request_parts.is_empty() {
        return;
    }
    let parts = request_parts.join(", ");
    if rule.identifier.fallback == IdentFallback::Skip {
        warn(
            format!("{path}.identifier.fallback"),
            format!("skip: a request without {parts} is not limited by this rule at all; {STRIP}"),
        );
    }
    if !capped {
        // client_ip as a part too only makes the budget per value and address: one address
        // still gets a fresh budget with every value it makes up.
        warn(
            format!("{path}.identifier"),
            format!(
                "counted per value of {parts}, which the client chooses: unless a trusted step verifies it (an API key, a \
                 session), a client that changes it gets a fresh budget (client_ip as a part too: one per value from each \
                 address); cap each address with a rule that counts every request by client_ip alone"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(json: serde_json::Value) -> Config {
        sluice::config::compile(&json).unwrap()
    }

    fn paths(c: &Config) -> Vec<String> {
        warnings(c).into_iter().map(|w| w.path).collect()
    }

    #[test]
    fn every_request_controlled_decision_is_named() {
        let c = config(serde_json::json!({"rules": [{
            "name": "r", "limit": "5/min",
            "match": {"headers": {"x-tier": "free"}},
            "exempt": {"headers": {"x-internal": "yes"}, "cidrs": ["10.0.0.0/8"]},
            "cost": {"header": "x-cost", "max": 10},
            "identifier": {"header": "x-user", "fallback": "skip"}
        }]}));
        assert_eq!(
            paths(&c),
            [
                "identity_secret",
                "rules[0].match.headers.x-tier",
                "rules[0].exempt.headers.x-internal",
                "rules[0].cost.header",
                "rules[0].identifier.fallback",
                "rules[0].identifier",
            ]
        );
    }

    #[test]
    fn a_config_that_trusts_no_request_value_is_quiet() {
        let c = config(serde_json::json!({"identity_secret": "0123456789abcdef-secret", "rules": [
            {"name": "ip", "limit": "5/min", "exempt": {"cidrs": ["10.0.0.0/8"]}},
            {"name": "k", "limit": "5/min", "identifier": [{"header": "x-api-key"}, "client_ip"]}
        ]}));
        assert!(warnings(&c).is_empty(), "{:?}", warnings(&c));
    }

    #[test]
    fn client_ip_as_a_part_caps_nothing_by_itself() {
        // Per (x-account, address): one address still gets 10/min for every account it names.
        let composite = serde_json::json!({"name": "k", "limit": "10/min", "identifier": [{"header": "x-account"}, "client_ip"]});
        let c = config(serde_json::json!({"identity_secret": "0123456789abcdef-secret", "rules": [composite]}));
        assert_eq!(paths(&c), ["rules[0].identifier"]);
        // A per-address rule on another path, in shadow or without a limit caps only some
        // requests, or none; nor does a global rule cap any one address.
        for cap in [
            serde_json::json!({"name": "ip", "limit": "100/min", "match": {"path": "/other/**"}}),
            serde_json::json!({"name": "ip", "limit": "100/min", "shadow": true}),
            serde_json::json!({"name": "ip", "limit": "0/0"}),
            serde_json::json!({"name": "ip", "limit": "10000/s", "identifier": "global"}),
        ] {
            let c = config(serde_json::json!({"identity_secret": "0123456789abcdef-secret", "rules": [composite, cap]}));
            assert_eq!(paths(&c), ["rules[0].identifier"], "{cap}");
        }
        // One on the same requests does.
        let on_login = |extra: serde_json::Value| {
            let mut r = serde_json::json!({"limit": "10/min", "match": {"path": "/login", "methods": ["POST"]}});
            r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            r
        };
        let c = config(serde_json::json!({"identity_secret": "0123456789abcdef-secret", "rules": [
            on_login(serde_json::json!({"name": "per-user", "identifier": {"query": "user"}})),
            on_login(serde_json::json!({"name": "per-ip"}))]}));
        assert!(paths(&c).is_empty(), "{:?}", warnings(&c));
    }

    #[test]
    fn the_connection_managers_address_settings_are_checked_against_the_config() {
        let by_ip = config(serde_json::json!({"rules": [{"name": "r", "limit": "5/min"}]}));
        let paths = |c: &Config, remote, hops| address_warnings(c, remote, hops).into_iter().map(|w| w.path).collect::<Vec<_>>();
        assert_eq!(paths(&by_ip, false, 0), ["use_remote_address"], "the client's x-forwarded-for decides");
        assert!(paths(&by_ip, true, 0).is_empty() && paths(&by_ip, false, 1).is_empty());
        let hops = config(serde_json::json!({"client_ip": {"xff_trusted_hops": 1}, "rules": [{"name": "r", "limit": "5/min"}]}));
        assert_eq!(paths(&hops, true, 0), ["client_ip.xff_trusted_hops"], "hop 1 is Envoy's own peer");
        assert!(paths(&hops, false, 0).is_empty());
        let by_key = config(
            serde_json::json!({"rules": [{"name": "r", "limit": "5/min", "identifier": {"header": "x-key", "fallback": "skip"}}]}),
        );
        assert!(paths(&by_key, false, 0).is_empty(), "no rule reads the address");
    }

    #[test]
    fn only_a_message_rule_caps_messages() {
        // Each connection the per-address request rule lets open brings x-user's fresh budget.
        let messages = serde_json::json!({"name": "msgs", "per": "message", "limit": "10/s", "identifier": {"header": "x-user"}});
        let per_ip = |per: &str| serde_json::json!({"name": "per-ip", "per": per, "limit": "100/min"});
        let c = config(serde_json::json!({"identity_secret": "0123456789abcdef-secret", "rules": [per_ip("request"), messages]}));
        assert_eq!(paths(&c), ["rules[1].identifier"]);
        let c = config(serde_json::json!({"identity_secret": "0123456789abcdef-secret", "rules": [per_ip("message"), messages]}));
        assert!(paths(&c).is_empty(), "{:?}", warnings(&c));
    }
}
