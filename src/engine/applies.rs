//! Which rules apply to a request, and why the others do not: the match, the `0/0` limits, the
//! exemptions and the identity, then the cost. The reasons are what `sluice explain` shows;
//! the request path asks without them and stops at the first condition that fails.

use std::net::IpAddr;

use ipnet::IpNet;

use super::Limiter;
use crate::config::{ClientIpSpec, Config, Cost, IdentPart, Per, Rule};
use crate::identity::{self, Identity, RequestInfo};
use crate::websocket::{self, PROTOCOL_HEADERS};

/// A rule that applies to a request, before deciding: its index among the rules, the identity
/// the request is counted against, and its cost (at least 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub rule: usize,
    pub identity: Identity,
    pub cost: u64,
}

/// Whether a rule applies to a request, and why not. The reasons are filled only when asked
/// for ([`Limiter::explain`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applies {
    Yes(Applied),
    /// Its `match` does not hold: every condition that fails.
    NoMatch(Vec<Mismatch>),
    /// Its limit is `0/0`.
    Unlimited,
    /// The request is exempt: every exemption that holds.
    Exempt(Vec<Exemption>),
    /// Identity parts are absent and the identifier says `fallback: skip`.
    NoIdentity(Vec<Missing>),
    /// A message rule (`per: message`), and the request is not a WebSocket upgrade: the rule
    /// counts the messages of upgraded connections, never requests.
    NotUpgrade,
}

/// A `match` condition that fails, with what the request had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    Method {
        got: String,
    },
    /// The path without its query (all globs fail on it).
    Path {
        got: String,
    },
    /// A header that is absent (`None`) or holds another value.
    Header {
        name: String,
        want: String,
        got: Option<String>,
    },
    /// The route Envoy chose, if any.
    Route {
        got: Option<String>,
    },
}

/// An exemption that holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exemption {
    Cidr { ip: IpAddr, net: IpNet },
    Header { name: String, value: String },
}

/// An identity part the request does not carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    Header(String),
    Query(String),
    Cookie(String),
}

/// From this many distinct header reads per request on, the host reads all headers at once.
const MANY_HEADERS: usize = 3;

/// What a request of this config may need read from the host, so that a config that never
/// asks for the method, the path or many headers does not pay a host call for them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadPlan {
    pub method: bool,
    pub path: bool,
    /// Whether the request rules alone match on the method, and on the path: a request that is
    /// no upgrade is judged by them only, and need not read what only message rules match on.
    pub request_method: bool,
    pub request_path: bool,
    /// Distinct request headers (pseudo-headers included) the rules may read for one request.
    pub headers: usize,
    /// Whether a rule counts WebSocket messages: only then is a request looked at as an upgrade.
    pub messages: bool,
    /// Whether an identity reads a cookie: every `cookie` line is read, which takes every
    /// header at once anyway.
    pub cookies: bool,
}

impl ReadPlan {
    pub fn of(config: &Config) -> Self {
        let methods =
            |per: Option<Per>| config.rules.iter().any(|r| per.is_none_or(|p| p == r.per) && !r.matcher.methods.is_empty());
        let paths = |per: Option<Per>| config.rules.iter().any(|r| per.is_none_or(|p| p == r.per) && !r.matcher.paths.is_empty());
        let (method, path) = (methods(None), paths(None));
        ReadPlan {
            method,
            path,
            request_method: methods(Some(Per::Request)),
            request_path: paths(Some(Per::Request)),
            headers: header_names(config, method, path),
            messages: config.rules.iter().any(|r| r.per == Per::Message),
            cookies: config.rules.iter().any(|r| r.identifier.parts.iter().any(|p| matches!(p, IdentPart::Cookie(_)))),
        }
    }

    /// Whether the first header asked for reads them all: several are read, or the cookie
    /// lines all are (a single read answers the first line only).
    pub fn reads_many_headers(&self) -> bool {
        self.headers >= MANY_HEADERS || self.cookies
    }
}

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

/// Strips the query string and fragment from a `:path`.
pub fn path_only(path: &[u8]) -> &[u8] {
    let end = path.iter().position(|b| matches!(b, b'?' | b'#')).unwrap_or(path.len());
    &path[..end]
}

/// Whether a request header's value satisfies a `match.headers` value: exactly, except for the
/// headers that name an upgrade's protocol, where Envoy upgrades on any token of the list in any
/// case (`Upgrade: WebSocket`, `h2c, websocket`): there the value need only be one of them.
fn header_holds(name: &str, want: &str, got: &[u8]) -> bool {
    // The exact value first: what nearly every request of a matching rule sends, at no more
    // than the comparison every other header costs.
    got == want.as_bytes() || (PROTOCOL_HEADERS.contains(&name) && websocket::names_protocol(got, want.as_bytes()))
}

fn text(bytes: Option<Vec<u8>>) -> Option<String> {
    bytes.map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The request as the rules see it, each value read from the host at most once.
struct View<'r, R: RequestInfo> {
    req: &'r R,
    method: &'r [u8],
    path: &'r str,
    /// The client IP is a host call (Envoy's `source.address`): asked once, and only when a
    /// rule's exemptions or identity need it.
    ip: std::cell::OnceCell<Option<IpAddr>>,
    client_ip: &'r ClientIpSpec,
}

impl<R: RequestInfo> View<'_, R> {
    fn ip(&self) -> Option<IpAddr> {
        *self.ip.get_or_init(|| identity::client_ip(self.client_ip, self.req))
    }

    /// Whether `rule`'s match holds. With `why`, every condition that fails is added to it;
    /// without, the first failure ends the look (and nothing is allocated).
    fn matches(&self, rule: &Rule, mut why: Option<&mut Vec<Mismatch>>) -> bool {
        let m = &rule.matcher;
        let mut ok = true;
        let mut fail = |mismatch: &dyn Fn() -> Mismatch| {
            ok = false;
            match why.as_deref_mut() {
                Some(why) => {
                    why.push(mismatch());
                    true
                }
                None => false,
            }
        };
        // In any case: HTTP/2 lets a client send `:method: post`, and an application that
        // upper-cases the method (Django does) would take it for the POST the rule limits.
        if !m.methods.is_empty()
            && !m.methods.iter().any(|x| x.as_bytes().eq_ignore_ascii_case(self.method))
            && !fail(&|| Mismatch::Method { got: String::from_utf8_lossy(self.method).into_owned() })
        {
            return false;
        }
        if !m.paths.is_empty()
            && !m.paths.iter().any(|g| g.matches(self.path))
            && !fail(&|| Mismatch::Path { got: self.path.to_string() })
        {
            return false;
        }
        for (name, want) in &m.headers {
            let got = self.req.header(name);
            if !got.as_deref().is_some_and(|got| header_holds(name, want, got))
                && !fail(&|| Mismatch::Header { name: name.clone(), want: want.clone(), got: text(got.clone()) })
            {
                return false;
            }
        }
        if !m.routes.is_empty() {
            let route = self.req.route_name();
            if !route.as_ref().is_some_and(|r| m.routes.contains(r)) && !fail(&|| Mismatch::Route { got: route.clone() }) {
                return false;
            }
        }
        ok
    }

    /// Whether the request is exempt from `rule`. With `why`, every exemption that holds is
    /// added to it. The IP is canonical (an IPv4-mapped address is its IPv4 address), so one
    /// CIDR covers a client however it reached the listener.
    fn exempt(&self, rule: &Rule, mut why: Option<&mut Vec<Exemption>>) -> bool {
        let e = &rule.exempt;
        let mut exempt = false;
        if !e.cidrs.is_empty() {
            if let Some(ip) = self.ip() {
                for net in e.cidrs.iter().filter(|n| n.contains(&ip)) {
                    exempt = true;
                    match why.as_deref_mut() {
                        Some(why) => why.push(Exemption::Cidr { ip, net: *net }),
                        None => return true,
                    }
                }
            }
        }
        for (name, value) in &e.headers {
            if self.req.header(name).as_deref() == Some(value.as_bytes()) {
                exempt = true;
                match why.as_deref_mut() {
                    Some(why) => why.push(Exemption::Header { name: name.clone(), value: value.clone() }),
                    None => return true,
                }
            }
        }
        exempt
    }

    /// At least 1, whatever the request says: a cost of 0 is the strategies' peek.
    fn cost(&self, rule: &Rule) -> u64 {
        match &rule.cost {
            Cost::Fixed(_) | Cost::PayloadBytes => rule.cost.of(None),
            Cost::Header { name, .. } => rule.cost.of(self.req.header(name).as_deref()),
        }
    }

    /// The identity parts of `rule` the request lacks (the reason `fallback: skip` gives).
    fn missing(&self, rule: &Rule) -> Vec<Missing> {
        let path = || self.req.path().unwrap_or_default();
        rule.identifier
            .parts
            .iter()
            .filter_map(|p| match p {
                IdentPart::Header(h) if self.req.header(h).is_none() => Some(Missing::Header(h.clone())),
                IdentPart::Query(q) if identity::query_param(&path(), q).is_none() => Some(Missing::Query(q.clone())),
                IdentPart::Cookie(c) if self.req.cookies().and_then(|h| identity::cookie(&h, c)).is_none() => {
                    Some(Missing::Cookie(c.clone()))
                }
                _ => None,
            })
            .collect()
    }
}

impl Limiter {
    /// For every rule in order, whether it applies to `req` and why not, with each identity's
    /// readable text.
    /// A message rule applies to an upgrade request's messages.
    pub fn explain(&self, req: &impl RequestInfo) -> Vec<Applies> {
        let upgrade = crate::websocket::is_upgrade_request(req);
        let mut out = Vec::with_capacity(self.rules.len());
        self.applies(req, true, if upgrade { None } else { Some(Per::Request) }, &mut out);
        out
    }

    /// The message rules that apply to the WebSocket upgrade `req`, each with the identity its
    /// messages are counted against.
    pub fn message_rules(&self, req: &impl RequestInfo) -> Vec<Applied> {
        let mut out = Applying::new(self.rules.len());
        self.applies(req, false, Some(Per::Message), &mut out);
        out.list
    }

    /// Whether any rule counts WebSocket messages.
    pub fn has_message_rules(&self) -> bool {
        self.plan.messages
    }

    /// The rules that apply to `req`, with identity and cost.
    pub(super) fn applicable(&self, req: &impl RequestInfo) -> Vec<Applied> {
        let mut out = Applying::new(self.rules.len());
        self.applies(req, false, Some(Per::Request), &mut out);
        out.list
    }

    /// [`Limiter::explain`], with reasons and identity text only when `describe` (identities
    /// of shadow rules always carry their text: their would-be limits are logged). With `only`,
    /// rules of the other kind are passed over ([`Applies::NotUpgrade`] stands in for a message
    /// rule, [`Applies::NoMatch`] without reasons for a request rule). Each rule's answer goes
    /// to `out`, in rule order.
    fn applies(&self, req: &impl RequestInfo, describe: bool, only: Option<Per>, out: &mut impl Answers) {
        let (needs_method, needs_path) = match only {
            Some(Per::Request) => (self.plan.request_method, self.plan.request_path),
            _ => (self.plan.method, self.plan.path),
        };
        let req = &PathOnce { req, path: std::cell::OnceCell::new() };
        let method = if needs_method { req.method().unwrap_or_default() } else { Vec::new() };
        let full_path = if needs_path { req.full_path().unwrap_or_default() } else { &[] };
        // Globs see the path decoded, as text (`config::glob`); bytes that are not UTF-8
        // become U+FFFD.
        let raw = path_only(full_path);
        // Checked first the fast way: almost every path is ASCII, without an escape.
        let plain = if raw.contains(&b'%') { None } else { std::str::from_utf8(raw).ok() };
        let path = match plain {
            Some(text) => std::borrow::Cow::Borrowed(text),
            None => std::borrow::Cow::Owned(String::from_utf8_lossy(&crate::config::decode_path(raw)).into_owned()),
        };
        let view = View { req, method: &method, path: &path, ip: std::cell::OnceCell::new(), client_ip: &self.client_ip };
        for (i, compiled) in self.rules.iter().enumerate() {
            let rule = &compiled.rule;
            if only.is_some_and(|per| per != rule.per) {
                out.push(i, if rule.per == Per::Message { Applies::NotUpgrade } else { Applies::NoMatch(Vec::new()) });
                continue;
            }
            let mut mismatches = Vec::new();
            if !view.matches(rule, describe.then_some(&mut mismatches)) {
                out.push(i, Applies::NoMatch(mismatches));
                continue;
            }
            if rule.limits.is_unlimited() {
                out.push(i, Applies::Unlimited);
                continue;
            }
            let mut exemptions = Vec::new();
            if view.exempt(rule, describe.then_some(&mut exemptions)) {
                out.push(i, Applies::Exempt(exemptions));
                continue;
            }
            // Resolved already under an earlier rule with the same identifier (when no text is
            // wanted: that rule may have been resolved without it).
            let earlier = compiled.same_identity_as.filter(|_| !describe && !rule.shadow).and_then(|j| out.resolved(j));
            match earlier {
                Some(Some(identity)) => {
                    out.push(i, Applies::Yes(Applied { rule: i, identity, cost: view.cost(rule) }));
                    continue;
                }
                Some(None) => {
                    out.push(i, Applies::NoIdentity(Vec::new()));
                    continue;
                }
                None => {}
            }
            let ip = || view.ip();
            out.push(
                i,
                match self.hasher.resolve(&rule.identifier, ip, req, describe || rule.shadow) {
                    Some(identity) => Applies::Yes(Applied { rule: i, identity, cost: view.cost(rule) }),
                    None if describe => Applies::NoIdentity(view.missing(rule)),
                    None => Applies::NoIdentity(Vec::new()),
                },
            );
        }
    }
}

/// The request with its path read once for all that ask (globs, query identities): the
/// host's request view need not keep a copy of it ([`RequestInfo::path`]).
struct PathOnce<'r, R> {
    req: &'r R,
    path: std::cell::OnceCell<Option<Vec<u8>>>,
}

impl<R: RequestInfo> PathOnce<'_, R> {
    fn full_path(&self) -> Option<&[u8]> {
        self.path.get_or_init(|| self.req.path()).as_deref()
    }
}

impl<R: RequestInfo> RequestInfo for PathOnce<'_, R> {
    /// `:path` named as a header (a config may name pseudo-headers) is the path read once.
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        if name == ":path" {
            return self.path();
        }
        self.req.header(name)
    }
    fn method(&self) -> Option<Vec<u8>> {
        self.req.method()
    }
    fn cookies(&self) -> Option<Vec<u8>> {
        self.req.cookies()
    }
    fn source_address(&self) -> Option<String> {
        self.req.source_address()
    }
    fn route_name(&self) -> Option<String> {
        self.req.route_name()
    }
    fn path(&self) -> Option<Vec<u8>> {
        self.full_path().map(<[u8]>::to_vec)
    }
}

/// Where [`Limiter::applies`] puts each rule's answer: every answer (what `sluice explain`
/// shows), or only the rules that apply (the request path, which then allocates one list).
trait Answers {
    /// Rule `rule`'s answer (rules come in order).
    fn push(&mut self, rule: usize, answer: Applies);
    /// The identity rule `j` (an earlier rule) was resolved to, if it is known here: `Some(None)`
    /// when the request lacks it.
    fn resolved(&self, j: usize) -> Option<Option<Identity>>;
}

impl Answers for Vec<Applies> {
    fn push(&mut self, _rule: usize, answer: Applies) {
        Vec::push(self, answer);
    }
    fn resolved(&self, j: usize) -> Option<Option<Identity>> {
        match self.get(j)? {
            Applies::Yes(a) => Some(Some(a.identity.clone())),
            Applies::NoIdentity(_) => Some(None),
            _ => None,
        }
    }
}

/// The rules that apply, out of `rules`: nothing is allocated until one does, and then room
/// for every rule left.
struct Applying {
    rules: usize,
    list: Vec<Applied>,
    /// Rules the request lacks the identity of, so that a later rule with the same identifier
    /// does not look for it again.
    lacking: Vec<usize>,
}

impl Applying {
    fn new(rules: usize) -> Self {
        Applying { rules, list: Vec::new(), lacking: Vec::new() }
    }
}

impl Answers for Applying {
    fn push(&mut self, rule: usize, answer: Applies) {
        match answer {
            Applies::Yes(a) => {
                if self.list.capacity() == 0 {
                    self.list.reserve_exact(self.rules.saturating_sub(a.rule));
                }
                self.list.push(a);
            }
            Applies::NoIdentity(_) => self.lacking.push(rule),
            _ => {}
        }
    }
    fn resolved(&self, j: usize) -> Option<Option<Identity>> {
        if self.lacking.contains(&j) {
            return Some(None);
        }
        self.list.iter().find(|a| a.rule == j).map(|a| Some(a.identity.clone()))
    }
}
