//! Who a request is counted against: the client IP (from Envoy's `source.address` or trusted
//! `x-forwarded-for` hops), header / query / cookie values, and the fixed-length hash that
//! stands for them in every key.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::config::{ClientIpSpec, IdentFallback, IdentPart, Identifier};

/// What the engine needs to know about a request. The host implements it lazily (one host call
/// per value actually asked for); tests implement it over plain maps.
pub trait RequestInfo {
    fn method(&self) -> Option<String>;
    /// The `:path` pseudo-header, query string included.
    fn path(&self) -> Option<String>;
    /// A request header by lower-case name.
    fn header(&self, name: &str) -> Option<String>;
    /// Envoy's `source.address` property, e.g. `10.0.0.1:5555` or `[::1]:5555`.
    fn source_address(&self) -> Option<String>;
    /// Envoy's `xds.route_name` property.
    fn route_name(&self) -> Option<String>;
}

/// Strips the port from an Envoy address (`1.2.3.4:80`, `[::1]:80`, or a bare IP).
pub fn parse_address(addr: &str) -> Option<IpAddr> {
    let addr = addr.trim();
    if let Ok(ip) = addr.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sock) = addr.parse::<std::net::SocketAddr>() {
        return Some(sock.ip());
    }
    None
}

/// The client IP per `client_ip`: Envoy's view by default; with `xff_trusted_hops = N`, the
/// N-th entry from the right of `x-forwarded-for` (each trusted proxy appends the address it
/// saw, so the entries right of it were written by proxies we trust). Falls back to Envoy's
/// view when the header is absent, too short or malformed, so a client cannot pick its IP by
/// sending a header unless the operator said the header is trustworthy.
pub fn client_ip(spec: &ClientIpSpec, req: &impl RequestInfo) -> Option<IpAddr> {
    let hops = spec.xff_trusted_hops as usize;
    if hops > 0 {
        if let Some(xff) = req.header("x-forwarded-for") {
            let entries: Vec<&str> = xff.split(',').map(str::trim).collect();
            if entries.len() >= hops {
                if let Some(ip) = entries.get(entries.len() - hops).and_then(|e| parse_address(e)) {
                    return Some(ip);
                }
            }
        }
    }
    req.source_address().as_deref().and_then(parse_address)
}

/// Value of query parameter `name` in a path (raw, not percent-decoded: both sides of a
/// comparison see the same bytes, and the value is only hashed).
pub fn query_param(path: &str, name: &str) -> Option<String> {
    let query = path.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_string())
    })
}

/// Value of cookie `name` in a `cookie` header.
pub fn cookie(header: &str, name: &str) -> Option<String> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// The identity of a request under one rule, or `None` when the rule does not apply
/// (a missing part with `fallback: skip`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Human-readable form, e.g. `header:x-api-key=k1` (for `sluice explain` and logs).
    pub text: String,
    /// Fixed-length hash used in keys: request data never reaches key syntax.
    pub hash: u64,
}

pub fn hash(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

/// `ip` gives the client IP when a part needs it (it costs a host call in Envoy, so identities
/// without an IP part never ask).
pub fn resolve(id: &Identifier, ip: impl Fn() -> Option<IpAddr>, req: &impl RequestInfo) -> Option<Identity> {
    // Parts are written straight into one string (this runs for every rule of every request),
    // separated by the unit separator: it cannot be confused with anything a header value may
    // contain legitimately.
    let mut text = String::with_capacity(48);
    let write_ip = |text: &mut String| match ip() {
        Some(ip) => {
            let _ = write!(text, "ip={ip}");
        }
        None => text.push_str("ip=unknown"),
    };
    for (i, part) in id.parts.iter().enumerate() {
        if i > 0 {
            text.push('\u{1f}');
        }
        let found = match part {
            IdentPart::Global => {
                text.push_str("global");
                true
            }
            IdentPart::ClientIp => {
                write_ip(&mut text);
                true
            }
            IdentPart::Header(name) => req.header(name).map(|v| write_part(&mut text, "header", name, &v)).is_some(),
            IdentPart::Query(name) => {
                req.path().and_then(|p| query_param(&p, name)).map(|v| write_part(&mut text, "query", name, &v)).is_some()
            }
            IdentPart::Cookie(name) => {
                req.header("cookie").and_then(|c| cookie(&c, name)).map(|v| write_part(&mut text, "cookie", name, &v)).is_some()
            }
        };
        if !found {
            match id.fallback {
                IdentFallback::ClientIp => write_ip(&mut text),
                IdentFallback::Global => text.push_str("global"),
                IdentFallback::Skip => return None,
            }
        }
    }
    Some(Identity { hash: hash(&text), text })
}

/// `kind:name=value`, one part of an identity's text.
fn write_part(text: &mut String, kind: &str, name: &str, value: &str) {
    text.push_str(kind);
    text.push(':');
    text.push_str(name);
    text.push('=');
    text.push_str(value);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A request made of plain values.
    #[derive(Default, Clone)]
    pub struct Req {
        pub method: String,
        pub path: String,
        pub headers: HashMap<String, String>,
        pub source: Option<String>,
        pub route: Option<String>,
    }

    impl Req {
        pub fn new(method: &str, path: &str) -> Self {
            Req { method: method.into(), path: path.into(), source: Some("10.0.0.1:1234".into()), ..Default::default() }
        }
        pub fn header(mut self, k: &str, v: &str) -> Self {
            self.headers.insert(k.to_ascii_lowercase(), v.into());
            self
        }
        pub fn source(mut self, s: &str) -> Self {
            self.source = Some(s.into());
            self
        }
    }

    impl RequestInfo for Req {
        fn method(&self) -> Option<String> {
            Some(self.method.clone())
        }
        fn path(&self) -> Option<String> {
            Some(self.path.clone())
        }
        fn header(&self, name: &str) -> Option<String> {
            self.headers.get(name).cloned()
        }
        fn source_address(&self) -> Option<String> {
            self.source.clone()
        }
        fn route_name(&self) -> Option<String> {
            self.route.clone()
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_address("10.1.2.3:80"), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(parse_address("[::1]:80"), Some("::1".parse().unwrap()));
        assert_eq!(parse_address("::1"), Some("::1".parse().unwrap()));
        assert_eq!(parse_address("nonsense"), None);
    }

    #[test]
    fn xff_is_trusted_only_as_far_as_configured() {
        let req = Req::new("GET", "/").header("x-forwarded-for", "6.6.6.6, 1.1.1.1, 2.2.2.2");
        let ip = |hops| client_ip(&ClientIpSpec { xff_trusted_hops: hops }, &req).map(|i| i.to_string());
        assert_eq!(ip(0).as_deref(), Some("10.0.0.1"));
        assert_eq!(ip(1).as_deref(), Some("2.2.2.2"));
        assert_eq!(ip(2).as_deref(), Some("1.1.1.1"));
        assert_eq!(ip(4).as_deref(), Some("10.0.0.1"), "too few entries: Envoy's view");
        let bad = Req::new("GET", "/").header("x-forwarded-for", "not-an-ip");
        assert_eq!(client_ip(&ClientIpSpec { xff_trusted_hops: 1 }, &bad).map(|i| i.to_string()).as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn query_and_cookie_values() {
        assert_eq!(query_param("/a?x=1&key=abc#f", "key").as_deref(), Some("abc"));
        assert_eq!(query_param("/a?flag&key=", "flag").as_deref(), Some(""));
        assert_eq!(query_param("/a", "key"), None);
        assert_eq!(cookie("a=1; session=\"s1\"; b=2", "session").as_deref(), Some("s1"));
        assert_eq!(cookie("a=1", "session"), None);
    }

    #[test]
    fn identities_and_fallbacks() {
        let id = |parts, fallback| Identifier { parts, fallback };
        let req = Req::new("GET", "/x?tenant=t1").header("x-api-key", "k1");
        let ip = || client_ip(&ClientIpSpec::default(), &req);
        let composite = id(vec![IdentPart::Header("x-api-key".into()), IdentPart::Query("tenant".into())], IdentFallback::ClientIp);
        let got = resolve(&composite, ip, &req).unwrap();
        assert_eq!(got.text, "header:x-api-key=k1\u{1f}query:tenant=t1");
        let missing = id(vec![IdentPart::Header("x-user".into())], IdentFallback::ClientIp);
        assert_eq!(resolve(&missing, ip, &req).unwrap().text, "ip=10.0.0.1");
        let skip = id(vec![IdentPart::Header("x-user".into())], IdentFallback::Skip);
        assert_eq!(resolve(&skip, ip, &req), None);
        // An IP and a header holding the same text do not collide.
        let by_ip = resolve(&id(vec![IdentPart::ClientIp], IdentFallback::ClientIp), ip, &req).unwrap();
        let spoof = Req::new("GET", "/").header("x-api-key", "10.0.0.1");
        let by_header = resolve(&id(vec![IdentPart::Header("x-api-key".into())], IdentFallback::ClientIp), ip, &spoof).unwrap();
        assert_ne!(by_ip.hash, by_header.hash);
    }
}
