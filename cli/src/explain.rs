//! `sluice explain`: which rules a request meets, who it is counted against (identity, hash,
//! the shared-data slot table and the Redis key), and the static analysis of the config. The
//! verdict per rule comes from the filter's own `Limiter::explain`; this module only adds the
//! reasons and the presentation.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;
use serde_json::Value;
use sluice::config::{Backend, Config, Cost, Per, Rule};
use sluice::engine::{Applies, Exemption, Limiter, Mismatch, Missing};
use sluice::identity::{self, RequestInfo};

use crate::analysis::{self, Finding};

/// A request given on the command line.
#[derive(Debug, Clone, Default)]
pub struct CliRequest {
    pub method: String,
    pub path: String,
    /// Lower-case names, in the order given.
    pub headers: Vec<(String, String)>,
    pub ip: Option<IpAddr>,
    pub route: Option<String>,
}

impl CliRequest {
    /// `name: value` as curl's `-H` takes it: the name is lower-cased, the value trimmed.
    /// Pseudo-headers keep their colon (`:authority: example.com`).
    pub fn parse_header(text: &str) -> Result<(String, String), String> {
        let start = usize::from(text.starts_with(':'));
        let colon = text[start..].find(':').map(|i| i + start).ok_or_else(|| format!("header {text:?} is not NAME: VALUE"))?;
        let name = text[..colon].trim().to_ascii_lowercase();
        if name.is_empty() || name == ":" || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("header {text:?} has no valid name; expected NAME: VALUE"));
        }
        // Around the value only spaces and tabs, as HTTP strips them (RFC 9110 §5.5).
        Ok((name, text[colon + 1..].trim_matches([' ', '\t']).to_string()))
    }
}

impl CliRequest {
    /// A header as the filter reads it in Envoy: its first occurrence, or every occurrence
    /// joined with `,` for the names Envoy joins as they arrive (docs/architecture.md, "Host
    /// facts: headers"), so `x-forwarded-for` given twice is read as the proxy reads it.
    fn read(&self, name: &str) -> Option<String> {
        match name {
            ":method" => return Some(self.method.clone()),
            ":path" => return Some(self.path.clone()),
            _ => {}
        }
        // Envoy answers `host` and `:authority` alike.
        let authority = matches!(name, ":authority" | "host");
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(k, _)| k == name || (authority && matches!(k.as_str(), ":authority" | "host")))
            .map(|(_, v)| v.as_str())
            .collect();
        match values.first() {
            None => None,
            Some(_) if ENVOY_JOINS.contains(&name) => Some(values.join(",")),
            Some(first) => Some((*first).to_string()),
        }
    }
}

/// Request headers whose repeats Envoy joins into one value with `,` before any filter runs.
const ENVOY_JOINS: [&str; 3] = ["x-forwarded-for", "user-agent", "authorization"];

impl RequestInfo for CliRequest {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.read(name).map(String::into_bytes)
    }
    fn cookies(&self) -> Option<Vec<u8>> {
        let lines: Vec<&str> = self.headers.iter().filter(|(k, _)| k == "cookie").map(|(_, v)| v.as_str()).collect();
        (!lines.is_empty()).then(|| lines.join("; ").into_bytes())
    }
    fn source_address(&self) -> Option<String> {
        self.ip.map(|ip| ip.to_string())
    }
    fn route_name(&self) -> Option<String> {
        self.route.clone()
    }
}

/// One rule's result for the request.
#[derive(Debug, Clone, Serialize)]
pub struct RuleReport {
    pub rule: String,
    /// applies | no_match | unlimited | exempt | no_identity | not_upgrade
    pub outcome: &'static str,
    /// Why the rule does not apply (empty when it does).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counted: Option<Counted>,
}

/// Who an applying rule counts the request against, and where.
#[derive(Debug, Clone, Serialize)]
pub struct Counted {
    /// The identity as text (composite parts joined by " + ").
    pub identity: String,
    /// The fixed-length hash that stands for the identity in every key.
    pub hash: String,
    pub cost: u64,
    /// What is counted: `request`, or `message` (each client message of the upgraded
    /// connection, against this identity).
    pub per: &'static str,
    /// A message rule's cost is its payload bytes (`cost` is then the least, 1).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub payload_bytes: bool,
    /// What a message over a message rule's limit brings about, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub over_limit: Option<String>,
    pub limits: Vec<String>,
    pub strategy: String,
    pub backend: &'static str,
    pub shadow: bool,
    /// Whether the rule's limits appear in the response's rate limit fields (`advertise`); none
    /// for a message rule, whose verdicts send no such fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<bool>,
    /// Shared-data keys of the rule's slot table: this prefix and a slot number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_data_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// The Redis key of this identity, up to the per-limit suffix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_key: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub namespace: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestView>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleReport>,
    /// Names of the rules that apply, in config order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applies: Option<Vec<String>>,
    /// Names of the message rules that will count the connection's messages once the upgrade
    /// is admitted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<String>,
    /// Enforced rules whose identity the request names by two values (a query parameter or
    /// cookie repeated with another value): the filter denies it at once, counting nothing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
    /// Enforced message rules in that case: the upgrade is judged by the request rules, and
    /// then every message is dropped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub message_conflicts: Vec<String>,
    pub findings: Vec<Finding>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestView {
    pub method: String,
    pub path: String,
    pub route: Option<String>,
    /// The client IP as the filter derives it (`client_ip` settings applied).
    pub client_ip: Option<String>,
}

fn strategy_text(config: &Config, index: usize) -> String {
    let json = serde_json::to_value(config).unwrap_or(Value::Null);
    let s = &json["rules"][index]["strategy"];
    let name = s["type"].as_str().unwrap_or("?").to_string();
    let params: Vec<String> = s
        .as_object()
        .map(|m| m.iter().filter(|(k, v)| *k != "type" && !v.is_null()).map(|(k, v)| format!("{k} {v}")).collect())
        .unwrap_or_default();
    if params.is_empty() {
        name
    } else {
        format!("{name} ({})", params.join(", "))
    }
}

/// Why the rule's match does not hold, as the engine found it.
fn no_match_reasons(rule: &Rule, why: &[Mismatch]) -> Vec<String> {
    let m = &rule.matcher;
    let mut out: Vec<String> = why
        .iter()
        .map(|w| match w {
            Mismatch::Method { got } => format!("method {got} is not one of {}", m.methods.join(", ")),
            Mismatch::Path { got } => {
                let globs: Vec<String> = m.paths.iter().map(|g| format!("{:?}", g.source)).collect();
                format!("path {got:?} matches none of {}", globs.join(", "))
            }
            Mismatch::Header { name, want, got: Some(got) } => format!("header {name} is {got:?}, not {want:?}"),
            Mismatch::Header { name, want, got: None } => format!("header {name} is absent (needs {want:?})"),
            Mismatch::Route { got: Some(r) } => format!("route {r:?} is not one of {}", m.routes.join(", ")),
            Mismatch::Route { got: None } => format!("no route name given (--route); needs one of {}", m.routes.join(", ")),
        })
        .collect();
    if out.is_empty() {
        out.push("its match does not hold".into());
    }
    out
}

fn exempt_reasons(why: &[Exemption]) -> Vec<String> {
    why.iter()
        .map(|e| match e {
            Exemption::Cidr { ip, net } => format!("client ip {ip} is in exempt cidr {net}"),
            Exemption::Header { name, value } => format!("exempt header {name}: {value:?}"),
        })
        .collect()
}

fn missing_parts(why: &[Missing]) -> Vec<String> {
    why.iter()
        .map(|m| match m {
            Missing::Header(h) => format!("header {h} is absent and the identifier says fallback: skip"),
            Missing::Query(q) => format!("query parameter {q} is absent and the identifier says fallback: skip"),
            Missing::Cookie(c) => format!("cookie {c} is absent and the identifier says fallback: skip"),
        })
        .collect()
}

/// Explains `req` (if given) under `config` and analyses the config.
pub fn explain(config: Config, req: Option<&CliRequest>, routes: Option<&[String]>) -> Report {
    let findings = analysis::analyze(&config, routes);
    let namespace = config.namespace.clone();
    let Some(req) = req else {
        return Report {
            namespace,
            request: None,
            rules: Vec::new(),
            applies: None,
            messages: Vec::new(),
            conflicts: Vec::new(),
            message_conflicts: Vec::new(),
            findings,
        };
    };
    let limiter = Limiter::new(config.clone());
    let config = &config;
    let ip = identity::client_ip(&config.client_ip, req);
    let mut rules = Vec::with_capacity(config.rules.len());
    let mut applies = Vec::new();
    let mut messages = Vec::new();
    let mut conflicts = Vec::new();
    let mut message_conflicts = Vec::new();
    for (i, (rule, result)) in config.rules.iter().zip(limiter.explain(req)).enumerate() {
        let (outcome, reasons, counted) = match result {
            Applies::Yes(a) => {
                if a.identity.conflict && !rule.shadow {
                    match rule.per {
                        Per::Request => conflicts.push(rule.name.clone()),
                        Per::Message => message_conflicts.push(rule.name.clone()),
                    }
                }
                if rule.per == Per::Message {
                    messages.push(rule.name.clone());
                } else {
                    applies.push(rule.name.clone());
                }
                let local = rule.backend == Backend::Local || matches!(rule.on_error, sluice::config::OnError::Fallback { .. });
                let counted = Counted {
                    identity: a.identity.text.replace('\u{1f}', " + "),
                    hash: format!("{:016x}", a.identity.hash),
                    cost: a.cost,
                    per: if rule.per == Per::Message { "message" } else { "request" },
                    payload_bytes: rule.cost == Cost::PayloadBytes,
                    over_limit: (rule.per == Per::Message).then(|| over_limit_text(&rule.over_limit)),
                    limits: rule.limits.written(),
                    strategy: strategy_text(config, i),
                    backend: if rule.backend == Backend::Redis { "redis" } else { "local" },
                    shadow: rule.shadow,
                    advertise: rule.advertise_if_request(),
                    shared_data_prefix: if local { limiter.table_prefix(i).map(str::to_string) } else { None },
                    slots: local.then_some(config.local.max_clients),
                    redis_key: (rule.backend == Backend::Redis)
                        .then(|| limiter.redis_key_prefix(i, a.identity.hash))
                        .flatten()
                        .map(|prefix| format!("{prefix}<limit index>.<fingerprint>")),
                };
                ("applies", Vec::new(), Some(counted))
            }
            Applies::NoMatch(why) => ("no_match", no_match_reasons(rule, &why), None),
            Applies::Unlimited => ("unlimited", vec!["every limit is 0/0".to_string()], None),
            Applies::Exempt(why) => ("exempt", exempt_reasons(&why), None),
            Applies::NoIdentity(why) => ("no_identity", missing_parts(&why), None),
            Applies::NotUpgrade => (
                "not_upgrade",
                vec!["a message rule counts the messages of WebSocket connections; the request has no upgrade: websocket".into()],
                None,
            ),
        };
        rules.push(RuleReport { rule: rule.name.clone(), outcome, reasons, counted });
    }
    let request = RequestView {
        method: req.method.clone(),
        path: req.path.clone(),
        route: req.route.clone(),
        client_ip: ip.map(|i| i.to_string()),
    };
    Report { namespace, request: Some(request), rules, applies: Some(applies), messages, conflicts, message_conflicts, findings }
}

/// What a message over the limit brings about: it is always dropped (or, when it cannot be
/// taken out whole, the connection is closed); `notify` and `close_after` add to that.
fn over_limit_text(o: &sluice::config::OverLimit) -> String {
    let mut s = "the message is dropped".to_string();
    if o.notify {
        s.push_str(", the client gets a rate_limited text frame");
    }
    match o.close_after {
        Some(1) => s.push_str("; instead, the connection is closed with 1008"),
        Some(n) => s.push_str(&format!("; a connection is closed with 1008 at its {n} messages over the limit")),
        None => {}
    }
    s
}

/// The report as people read it.
pub fn render(report: &Report) -> String {
    let mut s = String::new();
    if let Some(req) = &report.request {
        let route = req.route.as_deref().unwrap_or("-");
        let ip = req.client_ip.as_deref().unwrap_or("unknown (give --ip)");
        let _ = writeln!(s, "request: {} {}  route {route}  client ip {ip}", req.method, req.path);
        let _ = writeln!(s);
        let width = report.rules.iter().map(|r| r.rule.len()).max().unwrap_or(4).max(4);
        for r in &report.rules {
            let label = r.outcome.replace('_', " ");
            match &r.counted {
                Some(c) => {
                    let pad = " ".repeat(width + 2 + 12);
                    let cost = match (c.per, c.payload_bytes) {
                        ("message", true) => "payload bytes per message".to_string(),
                        ("message", false) => format!("{} per message", c.cost),
                        _ => c.cost.to_string(),
                    };
                    let _ =
                        writeln!(s, "{:<width$}  {:<12}identity {} (hash {}), cost {cost}", r.rule, label, c.identity, c.hash);
                    let shadow = if c.shadow { ", shadow (counts, never denies)" } else { "" };
                    let hidden = if c.advertise == Some(false) { ", kept out of the rate limit fields" } else { "" };
                    let _ = writeln!(s, "{pad}{} {}, backend {}{shadow}{hidden}", c.limits.join(" + "), c.strategy, c.backend);
                    if let Some(over) = &c.over_limit {
                        let _ = writeln!(s, "{pad}over the limit: {over}");
                    }
                    if let Some(key) = &c.redis_key {
                        let _ = writeln!(s, "{pad}redis key {key}");
                    }
                    if let (Some(prefix), Some(slots)) = (&c.shared_data_prefix, c.slots) {
                        let when = if c.backend == "redis" { " when Redis fails (on_error: fallback)" } else { "" };
                        let _ = writeln!(s, "{pad}shared data {prefix}<slot> ({slots} slots){when}");
                    }
                }
                None => {
                    let _ = writeln!(s, "{:<width$}  {:<12}{}", r.rule, label, r.reasons.join("; "));
                }
            }
        }
        let _ = writeln!(s);
        match report.applies.as_deref() {
            _ if !report.conflicts.is_empty() => {
                let _ = writeln!(
                    s,
                    "denied at once, counted nowhere: the request names its client by two values of one query parameter or cookie ({}).",
                    report.conflicts.join(", ")
                );
            }
            Some([]) | None => {
                let _ = writeln!(s, "no rule applies: the request is not limited.");
            }
            Some(names) => {
                // Shadow rules count and report but never deny: they are named apart.
                let shadow =
                    |n: &String| report.rules.iter().any(|r| &r.rule == n && r.counted.as_ref().is_some_and(|c| c.shadow));
                let (shadows, enforced): (Vec<&String>, Vec<&String>) = names.iter().partition(|n| shadow(n));
                let join = |v: &[&String]| v.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ");
                let _ = match enforced.as_slice() {
                    [] => writeln!(s, "no enforced rule applies: the request is not limited."),
                    _ => writeln!(
                        s,
                        "{} of {} rules apply ({}); the request is admitted only if every one admits.",
                        enforced.len(),
                        report.rules.len(),
                        join(&enforced)
                    ),
                };
                if !shadows.is_empty() {
                    let _ = writeln!(s, "Shadow rules count it too, without denying: {}.", join(&shadows));
                }
            }
        }
        if !report.message_conflicts.is_empty() {
            let _ = writeln!(
                s,
                "Every message would be dropped by {}: the request names its client by two values of one query parameter or cookie.",
                report.message_conflicts.join(", ")
            );
        }
        if !report.messages.is_empty() {
            let _ = writeln!(
                s,
                "Once the upgrade is admitted, every message the client sends is counted by {} (identity as above).",
                report.messages.join(", ")
            );
        }
        let _ = writeln!(s);
    }
    if report.findings.is_empty() {
        let _ = writeln!(s, "static analysis: no findings");
    } else {
        let _ = writeln!(
            s,
            "static analysis: {} finding{}",
            report.findings.len(),
            if report.findings.len() == 1 { "" } else { "s" }
        );
        for f in &report.findings {
            let _ = writeln!(s, "  {} {:?}: {}", f.kind, f.rule, f.message);
        }
    }
    s
}
