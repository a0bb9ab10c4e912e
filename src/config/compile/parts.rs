//! A rule's parts: match conditions, identifier, cost, exemptions and on_error.
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde_json::Value;

use super::*;

impl Compiler {
    pub(super) fn identifier(&mut self, path: &str, v: &Value) -> Option<Identifier> {
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
                    Some(pv) => self.list(&pp, pv, "identifier parts", MAX_IDENTIFIER_PARTS),
                    None => {
                        self.report(&pp, None, Problem::Missing);
                        None
                    }
                };
                let Some(items) = items else {
                    // The fallback is still read, so that its own problem is named in this run.
                    if let Some(fv) = field(m, "fallback") {
                        let _ = self.keyword(&join(path, "fallback"), fv, FALLBACKS);
                    }
                    return None;
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
    pub(super) fn ident_part(&mut self, path: &str, v: &Value, fallback_here: bool) -> Option<IdentPart> {
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

    pub(super) fn cost(&mut self, path: &str, v: &Value) -> Option<Cost> {
        match v {
            Value::Number(_) => self.uint(path, v, 1, MAX_COST).map(Cost::Fixed),
            Value::String(word) if word == "payload_bytes" => Some(Cost::PayloadBytes),
            Value::String(word) if did_you_mean(word, COST_WORDS).is_some() => {
                self.keyword(path, v, COST_WORDS).map(|_| Cost::PayloadBytes)
            }
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
                let min = match field(m, "min") {
                    Some(x) => self.uint(&join(path, "min"), x, 1, MAX_COST),
                    None => Some(1),
                };
                // Left out, `max` and `default` follow a `min` above theirs: `min: 5` means a
                // request without the header costs 5, not an error about a default never written.
                let max = match field(m, "max") {
                    Some(x) => self.uint(&join(path, "max"), x, 1, MAX_COST),
                    None => Some(min.unwrap_or(1).max(DEFAULT_HEADER_COST_MAX)),
                };
                // At least 1: a cost of 0 is the strategies' peek, which admits without counting.
                let default = match field(m, "default") {
                    Some(x) => self.uint(&join(path, "default"), x, 1, MAX_COST),
                    None => Some(min.unwrap_or(1)),
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
                self.wrong_type(
                    path,
                    v,
                    "a positive integer or an object such as {header: x-cost} (or payload_bytes in a message rule)",
                );
                None
            }
        }
    }

    /// A message rule's `over_limit`: `{notify, close_after}`.
    pub(super) fn over_limit(&mut self, path: &str, v: &Value) -> Option<OverLimit> {
        let m = self.object(path, v, OVER_LIMIT_FIELDS)?;
        let notify = match field(m, "notify") {
            Some(v) => self.boolean(&join(path, "notify"), v),
            None => Some(false),
        };
        let close_after = match field(m, "close_after") {
            Some(v) => self.uint(&join(path, "close_after"), v, 1, MAX_CLOSE_AFTER).map(|n| Some(n as u32)),
            None => Some(None),
        };
        Some(OverLimit { notify: notify?, close_after: close_after? })
    }

    pub(super) fn exempt(&mut self, path: &str, v: &Value) -> Option<Exempt> {
        let m = self.object(path, v, EXEMPT_FIELDS)?;
        let cidrs = match field(m, "cidrs") {
            Some(cv) => {
                let p = join(path, "cidrs");
                // Not `?`: the headers beside a bad list are still checked.
                self.list(&p, cv, "cidrs", MAX_CIDRS).and_then(|items| {
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
                })
            }
            None => Some(Vec::new()),
        };
        let headers = match field(m, "headers") {
            Some(hv) => self.header_map(&join(path, "headers"), hv, HeaderUse::Request),
            None => Some(Vec::new()),
        };
        Some(Exempt { cidrs: cidrs?, headers: headers? })
    }

    /// A CIDR, or a plain address meaning just that host (/32 or /128); an IPv4-mapped one
    /// (`::ffff:192.0.2.0/120`) as the IPv4 network it names, the form client addresses are
    /// compared in (`identity::parse_address`): kept mapped, it would never match.
    ///
    /// The address is read by std's parser with or without a prefix: it refuses an octet with a
    /// leading zero (`010.0.0.0/8` is 8.0.0.0/8 to a reader of octal, 10.0.0.0/8 to ipnet's
    /// parser), which a network must not mean one thing here and another to its author.
    pub(super) fn cidr(&mut self, path: &str, v: &Value) -> Option<IpNet> {
        let s = self.string(path, v)?.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let Ok(addr) = IpAddr::from_str(addr) else {
            let reason = "not an IPv4 or IPv6 address (no octet may have a leading zero)".to_string();
            self.report(path, Some(v), Problem::BadCidr { reason });
            return None;
        };
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    let reason = format!("the prefix length must be a number from 0 to {max}");
                    self.report(path, Some(v), Problem::BadCidr { reason });
                    return None;
                }
            },
        };
        let net = IpNet::new(addr, prefix).ok()?;
        if net.addr() != net.network() {
            self.report(path, Some(v), Problem::HostBitsSet { network: net.trunc().to_string() });
            return None;
        }
        Some(unmapped(net))
    }

    pub(super) fn on_error(&mut self, path: &str, v: &Value) -> Option<OnError> {
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

    pub(super) fn matcher(&mut self, path: &str, v: &Value) -> Option<Match> {
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

    pub(super) fn globs(&mut self, path: &str, v: &Value) -> Option<Vec<Glob>> {
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
    pub(super) fn methods(&mut self, path: &str, v: &Value) -> Option<Vec<String>> {
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

/// An IPv6 network inside `::ffff:0:0/96` as the IPv4 network it maps; any other unchanged.
fn unmapped(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => {
            n.addr().to_ipv4_mapped().and_then(|v4| ipnet::Ipv4Net::new(v4, n.prefix_len() - 96).ok()).map_or(net, IpNet::V4)
        }
        _ => net,
    }
}
