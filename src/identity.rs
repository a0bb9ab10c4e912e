//! Who a request is counted against: the client IP (from Envoy's `source.address` or trusted
//! `x-forwarded-for` hops, canonicalised), header / query / cookie values, and the keyed,
//! fixed-length hash that stands for them in every key.
//!
//! One client, one identity: an IPv4-mapped IPv6 address is its IPv4 address, and so is one
//! built from an IPv4 address (6to4, NAT64, Teredo); any other IPv6 client is its network of
//! `client_ip.ipv6_prefix` bits, and a query or cookie value is percent-decoded.
//! Distinct values never merge: the hash is taken over the value's bytes, each part tagged and
//! length-prefixed, so no spelling of one value (an escape, a separator) stands for another.
//! When a header repeats, its first occurrence counts (Envoy's single header read answers the
//! first value too); a parameter or cookie repeated with another value is a conflict
//! ([`Found`]), which enforced rules deny.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::hash::Hasher as _;
use std::net::IpAddr;

use siphasher::sip::SipHasher13;

use crate::config::{ClientIpSpec, IdentFallback, IdentPart, Identifier};

/// What the engine needs to know about a request. The host implements it lazily (one host call
/// per value actually asked for); tests implement it over plain maps.
pub trait RequestInfo {
    /// A request header by lower-case name (pseudo-headers included), as the bytes Envoy
    /// holds: HTTP lets a value carry bytes that are not UTF-8. The first one when it repeats.
    fn header(&self, name: &str) -> Option<Vec<u8>>;
    /// Every `cookie` line of the request joined with `; `, as the application reads them:
    /// Envoy passes repeated lines on as they came (HTTP/1.1), and a server joins them, so a
    /// cookie repeated on a second line is a repeat like one on the same line. No default: a
    /// wrapper that forgot it would read the first line alone.
    fn cookies(&self) -> Option<Vec<u8>>;
    /// Envoy's `source.address` property, e.g. `10.0.0.1:5555` or `[::1]:5555`.
    fn source_address(&self) -> Option<String>;
    /// Envoy's `xds.route_name` property.
    fn route_name(&self) -> Option<String>;
    fn method(&self) -> Option<Vec<u8>> {
        self.header(":method")
    }
    /// The `:path` pseudo-header, query string included. The core asks for it once per walk
    /// over the rules (`engine::applies`): once per request, twice for a WebSocket upgrade when
    /// message rules exist, so an implementation need keep a copy only then.
    fn path(&self) -> Option<Vec<u8>> {
        self.header(":path")
    }
}

/// Strips the port from an Envoy address (`1.2.3.4:80`, `[::1]:80`, or a bare IP) and
/// canonicalises it: `::ffff:1.2.3.4` is `1.2.3.4`.
pub fn parse_address(addr: &str) -> Option<IpAddr> {
    let addr = addr.trim();
    let ip = match addr.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => addr.parse::<std::net::SocketAddr>().ok()?.ip(),
    };
    Some(ip.to_canonical())
}

/// The IPv4 address that owns an IPv6 address built from it, for counting: a 6to4 address
/// (`2002:V4::/48`: whoever holds the IPv4 address holds 65,536 /64s), a NAT64 translation
/// (`64:ff9b::V4`: every IPv4 client would otherwise share one /64), a Teredo client (`2001:0::/32`,
/// the client's public IPv4 address stored inverted in the last 32 bits) and the deprecated
/// IPv4-compatible form (`::V4`, not `::` or `::1`). Exemptions do not use it: a relayed address
/// is not the IPv4 network it names.
pub fn ipv4_behind(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let bits = u128::from(v6);
    let low32 = bits as u32;
    match v6.segments() {
        [0x2002, ..] => Some(std::net::Ipv4Addr::from((bits >> 80) as u32)),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(std::net::Ipv4Addr::from(low32)),
        [0x2001, 0, ..] => Some(std::net::Ipv4Addr::from(!low32)),
        [0, 0, 0, 0, 0, 0, _, _] if low32 > 1 => Some(std::net::Ipv4Addr::from(low32)),
        _ => None,
    }
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
            // From the right, so a header of many entries costs no more than `hops` of them.
            let entry = xff.rsplit(|b| *b == b',').nth(hops - 1).and_then(|e| std::str::from_utf8(e).ok());
            if let Some(ip) = entry.and_then(parse_address) {
                return Some(ip);
            }
        }
    }
    req.source_address().as_deref().and_then(parse_address)
}

/// The value of query parameter `name` in a path: its first occurrence, name and value
/// percent-decoded as a form would be (`+` is a space), so `?user=%61lice` is `alice`, as the
/// application behind the proxy reads it. A `%` not followed by two hex digits stays as it is.
pub fn query_param(path: &[u8], name: &str) -> Option<Vec<u8>> {
    query_values(path, name).map(|f| f.value)
}

/// A value a request names its client by, and whether the request also carries another value
/// under the same name: applications differ in which one they read (the first, the last, all),
/// so such a request has no one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub value: Vec<u8>,
    pub conflict: bool,
}

/// Every occurrence of `name` among `pairs` (each read by `read` into the name it is compared
/// by and its decoded value): the first value, and whether a later one differs. `name` is the
/// configured name, compared by as the request's are.
fn first_of<'a>(
    pairs: impl Iterator<Item = &'a [u8]>,
    name: &[u8],
    read: impl Fn(&'a [u8]) -> Option<(Cow<'a, [u8]>, Cow<'a, [u8]>)>,
) -> Option<Found> {
    let mut found: Option<Found> = None;
    for (k, v) in pairs.filter_map(read) {
        if *k != *name {
            continue;
        }
        match &mut found {
            None => found = Some(Found { value: v.into_owned(), conflict: false }),
            Some(f) => f.conflict |= *f.value != *v,
        }
    }
    found
}

/// [`query_param`], telling whether the parameter repeats with another value.
///
/// Read so that the spellings common applications read as the same parameter do not escape
/// the repeat check: pairs end at `&` and at `;` (Rack before 3, Go before 1.17 and Python
/// before 3.9.2 split on both), and names are compared by [`query_name`]. A value with a raw
/// `;` is read up to it, as those parsers read it; to an application that does not split
/// there, a value that truly holds a `;` then has two spellings (raw, and `%3B`), which is
/// the price of not letting `?user=alice;x=<fresh>` be a fresh client to the others.
pub fn query_values(path: &[u8], name: &str) -> Option<Found> {
    let start = path.iter().position(|b| *b == b'?')? + 1;
    let query = &path[start..];
    let query = query.split(|b| *b == b'#').next().unwrap_or(query);
    let wanted = query_name(decode(name.as_bytes(), Plus::Space));
    first_of(query.split(|b| matches!(b, b'&' | b';')), &wanted, |pair| {
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        Some((query_name(decode(k, Plus::Space)), decode(v, Plus::Space)))
    })
}

/// A decoded parameter or cookie name as the least strict application reads it: cut at a NUL,
/// leading whitespace dropped, `.`, spaces and an unclosed `[` read as `_` (PHP), letters in
/// either case alike (ASP.NET).
fn query_name(name: Cow<'_, [u8]>) -> Cow<'_, [u8]> {
    let plain = |b: &u8| !b.is_ascii_uppercase() && !matches!(b, b'.' | b' ' | b'[' | 0);
    if name.first().is_none_or(|b| !b.is_ascii_whitespace()) && name.iter().all(plain) {
        return name;
    }
    Cow::Owned(php_name(&name).iter().map(u8::to_ascii_lowercase).collect())
}

/// A name as PHP reads it into `$_GET` and `$_COOKIE`: cut at a NUL, leading whitespace
/// dropped, `.` and spaces read as `_` up to the first `[`, and that `[` read as `_` too when
/// no `]` closes it (`user[name` is `user_name`; a closed one makes an array, another name).
fn php_name(name: &[u8]) -> Vec<u8> {
    let cut = name.split(|b| *b == 0).next().unwrap_or_default().trim_ascii_start();
    let bracket = cut.iter().position(|b| *b == b'[');
    let (head, tail) = cut.split_at(bracket.unwrap_or(cut.len()));
    let mut out: Vec<u8> = head.iter().map(|&b| if matches!(b, b'.' | b' ') { b'_' } else { b }).collect();
    match tail.split_first() {
        Some((_, rest)) if !rest.contains(&b']') => {
            out.push(b'_');
            out.extend_from_slice(rest);
        }
        _ => out.extend_from_slice(tail),
    }
    out
}

/// How a decoder reads `+` and spaces.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plus {
    /// As a form does (queries): `+` is a space.
    Space,
    /// Cookies: some frameworks read `+` as a space (PHP), others keep it (Express, ASP.NET),
    /// so `+`, `%2B`, a space and `%20` are one byte, `+`: a session token holding `+`s has
    /// one identity however each is spelled.
    Alike,
}

/// Percent-decoded in one pass (`%XX`, and `%uXXXX` as classic ASP.NET reads it, a surrogate
/// pair as its one character), `+` and spaces read per `plus`; borrowed when there is nothing
/// to decode. A `%` not followed by an escape stays as it is.
fn decode(bytes: &[u8], plus: Plus) -> Cow<'_, [u8]> {
    let special = |b: &u8| matches!(b, b'%' | b'+') || (plus == Plus::Alike && *b == b' ');
    if !bytes.iter().any(special) {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            if let Some((byte, after)) = hex_escape(tail) {
                out.push(byte);
                rest = after;
                continue;
            }
            if let Some((c, after)) = unicode_escape(tail) {
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                rest = after;
                continue;
            }
        }
        // A literal `+` only: an escaped one (`%2B`) is a plus to a form too.
        out.push(if plus == Plus::Space && b == b'+' { b' ' } else { b });
        rest = tail;
    }
    if plus == Plus::Alike {
        // Every space, literal or escaped, reads as the `+` some frameworks keep.
        out.iter_mut().filter(|b| **b == b' ').for_each(|b| *b = b'+');
    }
    Cow::Owned(out)
}

/// The byte of `XX` at the start of `after_percent`, and what follows it (the one reader of a
/// `%XX` escape: request paths and globs use it too, `config::glob`).
pub(crate) fn hex_escape(after_percent: &[u8]) -> Option<(u8, &[u8])> {
    let (digits, rest) = after_percent.split_at_checked(2)?;
    let text = std::str::from_utf8(digits).ok()?;
    let byte = u8::from_str_radix(text, 16).ok().filter(|_| digits.iter().all(u8::is_ascii_hexdigit))?;
    Some((byte, rest))
}

/// The character of `uXXXX` at the start of `after_percent` (with a following `%uXXXX` when it
/// is the high half of a surrogate pair; a lone half is U+FFFD), and what follows it.
fn unicode_escape(after_percent: &[u8]) -> Option<(char, &[u8])> {
    fn unit(s: &[u8]) -> Option<(u32, &[u8])> {
        let s = s.strip_prefix(b"u").or_else(|| s.strip_prefix(b"U"))?;
        let (digits, rest) = s.split_at_checked(4)?;
        let text = std::str::from_utf8(digits).ok().filter(|_| digits.iter().all(u8::is_ascii_hexdigit))?;
        Some((u32::from_str_radix(text, 16).ok()?, rest))
    }
    let (first, rest) = unit(after_percent)?;
    if (0xd800..0xdc00).contains(&first) {
        if let Some((second, after)) = rest.strip_prefix(b"%").and_then(unit).filter(|(u, _)| (0xdc00..0xe000).contains(u)) {
            let c = char::from_u32(0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00)).unwrap_or('\u{fffd}');
            return Some((c, after));
        }
    }
    Some((char::from_u32(first).unwrap_or('\u{fffd}'), rest))
}

/// Value of cookie `name` in a `cookie` header: its first occurrence, surrounding double
/// quotes removed (RFC 6265 allows them around a value), name and value percent-decoded
/// (frameworks decode cookies), so `session=%61bc` is the session `abc`.
pub fn cookie(header: &[u8], name: &str) -> Option<Vec<u8>> {
    cookie_values(header, name).map(|f| f.value)
}

/// [`cookie`], telling whether the cookie repeats with another value, read so that no
/// spelling some application reads as the session is a fresh client:
/// - pairs end at `;` and, outside quotes, at `,` (ASP.NET and old Rack split there too), and a
///   value ends at whitespace outside quotes (Python reads `session=a x=1` as two cookies):
///   RFC 6265 values hold neither;
/// - a name is compared decoded and trimmed, in either case (ASP.NET's cookies are), with `.`,
///   spaces and an unclosed `[` read as `_` as PHP reads them (`laravel.session` is Laravel's
///   `laravel_session`);
/// - a value's `+`, `%2B`, space and `%20` are alike ([`Plus::Alike`]), and a quoted value has
///   its backslash escapes read as Python's cookie parser reads them (`\141` and `\a` are `a`).
pub fn cookie_values(header: &[u8], name: &str) -> Option<Found> {
    let wanted = cookie_name(decode(name.as_bytes(), Plus::Alike));
    first_of(cookie_pairs(header), &wanted, |pair| {
        let i = pair.iter().position(|b| *b == b'=')?;
        let (k, v) = (pair[..i].trim_ascii(), pair[i + 1..].trim_ascii());
        let v = match v.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")) {
            Some(quoted) if quoted.contains(&b'\\') => Cow::Owned(decode(&unescape(quoted), Plus::Alike).into_owned()),
            Some(quoted) => decode(quoted, Plus::Alike),
            None => decode(v.split(u8::is_ascii_whitespace).next().unwrap_or_default(), Plus::Alike),
        };
        Some((cookie_name(decode(k, Plus::Alike)), v))
    })
}

/// A cookie header's pairs: split at `;`, and at `,` outside double quotes.
fn cookie_pairs(header: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut quoted = false;
    let mut escaped = false;
    header.split(move |&b| {
        match b {
            // Every `;` ends a pair, inside quotes or after a backslash too, as the frameworks
            // that split only there read it: a quote left open ends with its pair.
            b';' => {
                quoted = false;
                escaped = false;
                return true;
            }
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' => return !quoted,
            _ => {}
        }
        false
    })
}

/// A decoded cookie name, trimmed, in lower case, and read as PHP reads it ([`php_name`]).
fn cookie_name(name: Cow<'_, [u8]>) -> Cow<'_, [u8]> {
    let special = |b: &u8| matches!(b, b'.' | b'+' | b'[' | 0) || b.is_ascii_uppercase() || b.is_ascii_whitespace();
    if !name.iter().any(special) {
        return name;
    }
    // `+` is how a decoded name's space reads (`Plus::Alike`): a space, to trim and for PHP's `_`.
    let spaced: Vec<u8> = name.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
    Cow::Owned(php_name(spaced.trim_ascii()).iter().map(u8::to_ascii_lowercase).collect())
}

/// A quoted cookie value's backslash escapes as Python's parser reads them: `\` and three
/// octal digits up to `\377` are that byte, any other escaped byte is itself.
fn unescape(quoted: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(quoted.len());
    let mut rest = quoted;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let octal = rest
            .get(..3)
            .filter(|d| d.first().is_some_and(|c| (b'0'..=b'3').contains(c)) && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (octal, rest.split_first()) {
            (Some(d), _) => {
                // At most 0o377: the first digit is 0 to 3.
                let value = d.iter().fold(0u8, |n, c| n.wrapping_mul(8).wrapping_add(c - b'0'));
                out.push(value);
                rest = rest.get(3..).unwrap_or_default();
            }
            (None, Some((&escaped, tail))) => {
                out.push(escaped);
                rest = tail;
            }
            (None, None) => out.push(b),
        }
    }
    out
}

/// The identity of a request under one rule, or `None` when the rule does not apply
/// (a missing part with `fallback: skip`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Human-readable form, e.g. `header:x-api-key=k1` (for `sluice explain` and logs; bytes
    /// that are not UTF-8 are shown escaped). Not what is hashed; empty unless asked for.
    pub text: String,
    /// Keyed fixed-length hash used in keys: request data never reaches key syntax.
    pub hash: u64,
    /// A query parameter or cookie it is made of repeats with another value ([`Found`]): an
    /// enforced rule denies such a request rather than count it against one of them.
    pub conflict: bool,
}

/// The public key of configs without `identity_secret`. Documented, so anyone can compute
/// hashes under it: set a secret of your own where clients may aim at each other's buckets.
pub const DEFAULT_SECRET: &str = "sluice identity hash, public default key v1";

/// How identities become hashes: SipHash-1-3 (made to resist chosen inputs) keyed by a secret
/// shared by every proxy of one deployment, and the IPv6 prefix a client is counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityHasher {
    k0: u64,
    k1: u64,
    ipv6_prefix: u8,
}

/// Tags of the parts in the hashed encoding: what a part is can never be mistaken for a value.
mod tag {
    pub const GLOBAL: u8 = 1;
    pub const IPV4: u8 = 2;
    pub const IPV6_NET: u8 = 3;
    pub const IP_UNKNOWN: u8 = 4;
    pub const HEADER: u8 = 5;
    pub const QUERY: u8 = 6;
    pub const COOKIE: u8 = 7;
}

impl IdentityHasher {
    /// The hasher of `secret` (`None`: [`DEFAULT_SECRET`]). The key is the secret's SHA-1, cut to
    /// SipHash's 128 bits, so any length of secret works.
    pub fn new(secret: Option<&str>, client_ip: &ClientIpSpec) -> Self {
        let mut sha = sha1_smol::Sha1::new();
        sha.update(b"sluice identity key\0");
        sha.update(secret.unwrap_or(DEFAULT_SECRET).as_bytes());
        let d = sha.digest().bytes();
        let word = |i: usize| u64::from_le_bytes([d[i], d[i + 1], d[i + 2], d[i + 3], d[i + 4], d[i + 5], d[i + 6], d[i + 7]]);
        IdentityHasher { k0: word(0), k1: word(8), ipv6_prefix: client_ip.ipv6_prefix.clamp(1, 128) }
    }

    /// The identity of `req` under `id`, with its readable text when `describe`. `ip` gives the
    /// canonical client IP when a part needs it (it costs a host call in Envoy, so identities
    /// without an IP part never ask).
    pub fn resolve(
        &self,
        id: &Identifier,
        ip: impl Fn() -> Option<IpAddr>,
        req: &impl RequestInfo,
        describe: bool,
    ) -> Option<Identity> {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        let mut text = Shown(describe.then(|| String::with_capacity(48)));
        let mut conflict = false;
        for (i, part) in id.parts.iter().enumerate() {
            if i > 0 {
                // Display only; the hashed encoding is self-delimiting.
                let _ = text.write_char('\u{1f}');
            }
            let value = match part {
                IdentPart::Global => {
                    self.global(&mut h, &mut text);
                    continue;
                }
                IdentPart::ClientIp => {
                    self.ip(&mut h, &mut text, ip());
                    continue;
                }
                IdentPart::Header(name) => req.header(name).map(|v| (tag::HEADER, "header", name, v)),
                IdentPart::Query(name) => req.path().and_then(|p| query_values(&p, name)).map(|f| {
                    conflict |= f.conflict;
                    (tag::QUERY, "query", name, f.value)
                }),
                IdentPart::Cookie(name) => req.cookies().and_then(|c| cookie_values(&c, name)).map(|f| {
                    conflict |= f.conflict;
                    (tag::COOKIE, "cookie", name, f.value)
                }),
            };
            match value {
                Some((t, kind, name, v)) => {
                    h.write_u8(t);
                    write_len_prefixed(&mut h, name.as_bytes());
                    write_len_prefixed(&mut h, &v);
                    // Formatting costs even into a text nobody reads: only when asked for.
                    if text.on() {
                        let _ = write!(text, "{kind}:{name}=");
                        text.bytes(&v);
                    }
                }
                None => match id.fallback {
                    IdentFallback::ClientIp => self.ip(&mut h, &mut text, ip()),
                    IdentFallback::Global => self.global(&mut h, &mut text),
                    IdentFallback::Skip => return None,
                },
            }
        }
        if conflict && text.on() {
            let _ = text.write_str(" (repeated with another value)");
        }
        Some(Identity { hash: h.finish(), text: text.0.unwrap_or_default(), conflict })
    }

    fn global(&self, h: &mut SipHasher13, text: &mut Shown) {
        h.write_u8(tag::GLOBAL);
        let _ = text.write_str("global");
    }

    /// An IPv4 client as its address; an IPv6 client as its network of `ipv6_prefix` bits,
    /// unless its address is one an IPv4 address owns ([`ipv4_behind`]).
    fn ip(&self, h: &mut SipHasher13, text: &mut Shown, ip: Option<IpAddr>) {
        let ip = match ip {
            Some(IpAddr::V6(v6)) => Some(ipv4_behind(v6).map_or(IpAddr::V6(v6), IpAddr::V4)),
            other => other,
        };
        match ip {
            Some(IpAddr::V4(v4)) => {
                h.write_u8(tag::IPV4);
                h.write(&v4.octets());
                if text.on() {
                    let _ = write!(text, "ip={v4}");
                }
            }
            Some(IpAddr::V6(v6)) => {
                let bits = u128::from(v6);
                let prefix = u32::from(self.ipv6_prefix);
                let net = if prefix >= 128 { bits } else { bits & !(u128::MAX >> prefix) };
                h.write_u8(tag::IPV6_NET);
                h.write_u8(self.ipv6_prefix);
                h.write(&net.to_be_bytes());
                if text.on() {
                    let _ = write!(text, "ip={}/{prefix}", std::net::Ipv6Addr::from(net));
                }
            }
            None => {
                h.write_u8(tag::IP_UNKNOWN);
                let _ = text.write_str("ip=unknown");
            }
        }
    }

    /// A plain hash of `bytes` under this key (rule fingerprints).
    pub fn hash(&self, bytes: &[u8]) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write(bytes);
        h.finish()
    }
}

fn write_len_prefixed(h: &mut SipHasher13, bytes: &[u8]) {
    h.write(&(bytes.len() as u64).to_le_bytes());
    h.write(bytes);
}

/// The readable form of an identity, written only when asked for (`sluice explain`, shadow
/// logs): the hash does not depend on it, and every request would pay for it.
struct Shown(Option<String>);

/// How much of one value an identity's readable text shows.
const SHOWN_BYTES: usize = 64;

impl Shown {
    fn on(&self) -> bool {
        self.0.is_some()
    }

    /// Appends `bytes` for a reader: UTF-8 as it is but for control characters, anything else
    /// escaped (`\xff`, `\n`): the text goes into logs (a shadow rule's), where a decoded
    /// `%0A` in a query must not start a line of its own. At most [`SHOWN_BYTES`] of a value,
    /// then `…`: a shadow rule keeps its text with a WebSocket connection and logs it at every
    /// limited message, and a header may hold 60 KiB.
    fn bytes(&mut self, bytes: &[u8]) {
        if bytes.len() > SHOWN_BYTES {
            let head = &bytes[..SHOWN_BYTES];
            // Cut before a character the cut would split; bytes that are not UTF-8 anyway stay.
            let cut = match std::str::from_utf8(head) {
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                _ => SHOWN_BYTES,
            };
            self.bytes(&bytes[..cut]);
            let _ = self.write_str("…");
            return;
        }
        if let Some(text) = &mut self.0 {
            match std::str::from_utf8(bytes) {
                Ok(s) if !s.chars().any(char::is_control) => text.push_str(s),
                Ok(s) => {
                    for c in s.chars() {
                        if c.is_control() {
                            let _ = write!(text, "{}", c.escape_default());
                        } else {
                            text.push(c);
                        }
                    }
                }
                Err(_) => {
                    let _ = write!(text, "{}", bytes.escape_ascii());
                }
            }
        }
    }
}

impl fmt::Write for Shown {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(text) = &mut self.0 {
            text.push_str(s);
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    use proptest::prelude::*;

    /// A request made of plain values.
    #[derive(Default, Clone, Debug)]
    pub struct Req {
        pub method: String,
        pub path: Vec<u8>,
        pub headers: HashMap<String, Vec<u8>>,
        pub source: Option<String>,
        pub route: Option<String>,
    }

    impl Req {
        pub fn new(method: &str, path: &str) -> Self {
            Req { method: method.into(), path: path.into(), source: Some("10.0.0.1:1234".into()), ..Default::default() }
        }
        pub fn header(self, k: &str, v: &str) -> Self {
            self.header_bytes(k, v.as_bytes())
        }
        pub fn header_bytes(mut self, k: &str, v: &[u8]) -> Self {
            self.headers.insert(k.to_ascii_lowercase(), v.to_vec());
            self
        }
        pub fn source(mut self, s: &str) -> Self {
            self.source = Some(s.into());
            self
        }
    }

    impl RequestInfo for Req {
        fn header(&self, name: &str) -> Option<Vec<u8>> {
            match name {
                ":method" => Some(self.method.clone().into_bytes()),
                ":path" => Some(self.path.clone()),
                _ => self.headers.get(name).cloned(),
            }
        }
        fn cookies(&self) -> Option<Vec<u8>> {
            self.header("cookie")
        }
        fn source_address(&self) -> Option<String> {
            self.source.clone()
        }
        fn route_name(&self) -> Option<String> {
            self.route.clone()
        }
    }

    fn hasher() -> IdentityHasher {
        IdentityHasher::new(None, &ClientIpSpec::default())
    }

    fn id(parts: Vec<IdentPart>, fallback: IdentFallback) -> Identifier {
        Identifier { parts, fallback }
    }

    fn resolve(parts: Vec<IdentPart>, req: &Req) -> Option<Identity> {
        let ip = || client_ip(&ClientIpSpec::default(), req);
        hasher().resolve(&id(parts, IdentFallback::ClientIp), ip, req, true)
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_address("10.1.2.3:80"), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(parse_address("[::1]:80"), Some("::1".parse().unwrap()));
        assert_eq!(parse_address("::1"), Some("::1".parse().unwrap()));
        assert_eq!(parse_address("nonsense"), None);
        // An IPv4 client reaching a dual-stack listener is the same client.
        assert_eq!(parse_address("[::ffff:192.0.2.7]:443"), Some("192.0.2.7".parse().unwrap()));
        assert_eq!(parse_address("::ffff:192.0.2.7"), Some("192.0.2.7".parse().unwrap()));
    }

    #[test]
    fn xff_is_trusted_only_as_far_as_configured() {
        let req = Req::new("GET", "/").header("x-forwarded-for", "6.6.6.6, 1.1.1.1, ::ffff:2.2.2.2");
        let ip = |hops| client_ip(&ClientIpSpec { xff_trusted_hops: hops, ..Default::default() }, &req).map(|i| i.to_string());
        assert_eq!(ip(0).as_deref(), Some("10.0.0.1"));
        assert_eq!(ip(1).as_deref(), Some("2.2.2.2"));
        assert_eq!(ip(2).as_deref(), Some("1.1.1.1"));
        assert_eq!(ip(4).as_deref(), Some("10.0.0.1"), "too few entries: Envoy's view");
        let bad = Req::new("GET", "/").header("x-forwarded-for", "not-an-ip");
        let spec = ClientIpSpec { xff_trusted_hops: 1, ..Default::default() };
        assert_eq!(client_ip(&spec, &bad).map(|i| i.to_string()).as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn query_values_are_decoded_and_the_first_occurrence_counts() {
        let q = |path: &str, name: &str| query_param(path.as_bytes(), name);
        assert_eq!(q("/a?x=1&key=abc#f", "key").as_deref(), Some(&b"abc"[..]));
        assert_eq!(q("/a?flag&key=", "flag").as_deref(), Some(&b""[..]));
        assert_eq!(q("/a", "key"), None);
        assert_eq!(q("/login?user=%61lice", "user"), q("/login?user=alice", "user"));
        assert_eq!(q("/login?%75ser=alice", "user").as_deref(), Some(&b"alice"[..]));
        assert_eq!(q("/s?q=a+b", "q"), q("/s?q=a%20b", "q"));
        assert_eq!(q("/s?q=a%2Bb", "q").as_deref(), Some(&b"a+b"[..]), "an escaped plus is a plus");
        assert_eq!(query_values(b"/s?q=a%2Bb&q=a+b", "q").map(|f| f.conflict), Some(true), "two values to a form");
        assert_eq!(q("/s?user=a&user=b", "user").as_deref(), Some(&b"a"[..]));
        assert_eq!(q("/s?user=%zz", "user").as_deref(), Some(&b"%zz"[..]));
        assert_eq!(q("/s?user=%FF", "user").as_deref(), Some(&[0xff][..]));
    }

    #[test]
    fn cookies_read() {
        assert_eq!(cookie(b"a=1; session=\"s1\"; b=2", "session").as_deref(), Some(&b"s1"[..]));
        assert_eq!(cookie(b"a=1", "session"), None);
        assert_eq!(cookie(b"session=x; session=y", "session").as_deref(), Some(&b"x"[..]));
        // Decoded as frameworks read them: one session however it is spelled.
        assert_eq!(cookie(b"session=%61b%63", "session").as_deref(), Some(&b"abc"[..]));
        assert_eq!(cookie(b"%73ession=abc", "session").as_deref(), Some(&b"abc"[..]));
        assert_eq!(cookie(b"session=\"a%2Bb\"", "session").as_deref(), Some(&b"a+b"[..]));
        assert_eq!(cookie(b"session=a+b", "session"), cookie(b"session=a%20b", "session"), "a space either way");
    }

    #[test]
    fn a_value_repeated_with_another_is_a_conflict() {
        let found = |value: &str, conflict| Some(Found { value: value.as_bytes().to_vec(), conflict });
        assert_eq!(query_values(b"/login?user=zz1&user=alice", "user"), found("zz1", true));
        assert_eq!(query_values(b"/login?user=alice&x=1&user=%61lice", "user"), found("alice", false), "the same value twice");
        assert_eq!(query_values(b"/login?user=alice&users=bob", "user"), found("alice", false));
        assert_eq!(cookie_values(b"session=decoy; a=1; session=real", "session"), found("decoy", true));
        assert_eq!(cookie_values(b"session=real; %73ession=real", "session"), found("real", false));
        // A configured name with a `+` or an escape is read as the request's names are.
        assert_eq!(cookie_values(b"a+b=1", "a+b"), found("1", false));
        assert_eq!(query_values(b"/?x%41=1", "x%41"), found("1", false));
        let req = Req::new("GET", "/login?user=zz1&user=alice");
        let parts = vec![IdentPart::Query("user".into())];
        let shown = hasher().resolve(&id(parts.clone(), IdentFallback::Skip), || None, &req, true).unwrap();
        assert!(shown.conflict && shown.text.ends_with("(repeated with another value)"), "{shown:?}");
        let one = Req::new("GET", "/login?user=zz1");
        assert!(!hasher().resolve(&id(parts, IdentFallback::Skip), || None, &one, false).unwrap().conflict);
    }

    /// Spellings some application reads as the parameter or cookie: each is a repeat (so a
    /// request carrying a fresh value beside the real one is no fresh client), or, alone, the
    /// value itself.
    #[test]
    fn every_spelling_an_application_reads_as_the_name_is_that_name() {
        let found = |value: &str, conflict| Some(Found { value: value.as_bytes().to_vec(), conflict });
        let q = |path: &str| query_values(path.as_bytes(), "user");
        // Split on `;` too (Rack 2, old Go and Python).
        assert_eq!(q("/login?user=zz1;user=alice"), found("zz1", true));
        assert_eq!(q("/login?user=alice;x=1"), found("alice", false));
        // PHP drops a name's leading spaces; ASP.NET ignores its case.
        assert_eq!(q("/login?user=zz1&+user=alice"), found("zz1", true));
        assert_eq!(q("/login?user=zz1&%20user=alice"), found("zz1", true));
        assert_eq!(q("/login?User=alice&user=zz1"), found("alice", true));
        assert_eq!(q("/login?USER=alice"), found("alice", false));
        // PHP reads `.` and spaces in a name as `_`.
        assert_eq!(query_values(b"/login?user_name=zz1&user.name=alice", "user_name"), found("zz1", true));
        assert_eq!(query_values(b"/login?user+name=alice", "user_name"), found("alice", false));
        assert_eq!(q("/login?users=alice&username=bob"), None);

        let c = |header: &str| cookie_values(header.as_bytes(), "session");
        // Python's cookie parser reads a quoted value's escapes: `\a` and `\141` are `a`, and
        // `\477` (past `\377`) is `477`, as unescaped.
        assert_eq!(c("session=\"\\a\\b\\c\""), found("abc", false));
        assert_eq!(c("session=\"\\141bc\""), found("abc", false));
        assert_eq!(c("session=477; session=\"\\477\""), found("477", false), "one session, escaped or not");
        assert_eq!(c("session=abc; session=\"\\a\\bc\""), found("abc", false), "one session, however escaped");
        assert_eq!(c("session=\"a\\\\b\""), found("a\\b", false), "an escaped backslash is one");
        assert_eq!(c("session=\"ab\\\"\""), found("ab\"", false), "an escaped quote is the quote");
        // A name is compared decoded and trimmed, `.` and spaces read as `_` (PHP).
        assert_eq!(c("%20session=real; session=zz1"), found("real", true));
        assert_eq!(c("session%20=real"), found("real", false));
        assert_eq!(cookie_values(b"laravel.session=real; laravel_session=zz1", "laravel_session"), found("real", true));
        // PHP cuts a query name at a NUL.
        assert_eq!(q("/login?user%00=alice"), found("alice", false));
        // PHP reads an unclosed `[` in a name as `_`; a closed one makes an array.
        assert_eq!(query_values(b"/login?user_name=zz1&user[name=alice", "user_name"), found("zz1", true));
        assert_eq!(query_values(b"/login?user[name]=alice", "user_name"), None);
        // Classic ASP.NET decodes `%uXXXX`, in names and values.
        assert_eq!(q("/login?%u0075ser=alice"), found("alice", false));
        assert_eq!(q("/login?user=%u0061lice&user=alice"), found("alice", false), "one spelling of alice");
        let emoji = |path: &str| query_values(path.as_bytes(), "u").map(|f| f.value);
        assert_eq!(emoji("/?u=%uD83D%uDE00"), emoji("/?u=%F0%9F%98%80"), "a surrogate pair is its character");
        assert_eq!(emoji("/?u=%uD800x"), Some("\u{fffd}x".as_bytes().to_vec()), "a lone half is U+FFFD");
        assert_eq!(emoji("/?u=%u00"), Some(b"%u00".to_vec()), "not an escape: as it is");
        assert_eq!(emoji("/?u=%u0025%41"), Some(b"%A".to_vec()), "one pass: an escaped % starts nothing");
        // Cookie pairs end at `,` outside quotes, and a value at whitespace (Python, ASP.NET).
        assert_eq!(c("session=real,x=1"), found("real", false));
        assert_eq!(c("session=real x=1"), found("real", false));
        assert_eq!(c("session=zz1,session=real"), found("zz1", true));
        assert_eq!(c("session=\"a,b\"; x=1"), found("a,b", false), "a quoted comma is the value's");
        // Every `;` ends a pair, after a backslash in an open quote too (Express and PHP split
        // at each): no quoting hides the session.
        assert_eq!(c("x=\"\\; session=real"), found("real", false));
        assert_eq!(c("x=\"a; session=real"), found("real", false));
        // `+`, `%2B`, a space and `%20` are one byte in a cookie (PHP reads `+` as a space,
        // Express and ASP.NET keep it).
        assert_eq!(c("session=a+b; session=a%2Bb; session=a%20b"), found("a+b", false));
        // Cookie names in either case (ASP.NET's are): `Session` is the session too.
        assert_eq!(c("Session=zz1; session=real"), found("zz1", true));
        assert_eq!(c("SESSION=real"), found("real", false));
    }

    #[test]
    fn identities_and_fallbacks() {
        let req = Req::new("GET", "/x?tenant=t1").header("x-api-key", "k1");
        let composite = vec![IdentPart::Header("x-api-key".into()), IdentPart::Query("tenant".into())];
        assert_eq!(resolve(composite, &req).unwrap().text, "header:x-api-key=k1\u{1f}query:tenant=t1");
        assert_eq!(resolve(vec![IdentPart::Header("x-user".into())], &req).unwrap().text, "ip=10.0.0.1");
        let ip = || client_ip(&ClientIpSpec::default(), &req);
        let skip = id(vec![IdentPart::Header("x-user".into())], IdentFallback::Skip);
        assert_eq!(hasher().resolve(&skip, ip, &req, true), None);
        // An IP and a header holding the same text do not collide.
        let by_ip = resolve(vec![IdentPart::ClientIp], &req).unwrap();
        let spoof = Req::new("GET", "/").header("x-api-key", "10.0.0.1");
        let by_header = resolve(vec![IdentPart::Header("x-api-key".into())], &spoof).unwrap();
        assert_ne!(by_ip.hash, by_header.hash);
    }

    #[test]
    fn control_characters_are_shown_escaped() {
        let id = resolve(vec![IdentPart::Query("user".into())], &Req::new("GET", "/?user=a%0Afake%09x")).unwrap();
        assert_eq!(id.text, "query:user=a\\nfake\\tx", "one line, whatever the value");
    }

    #[test]
    fn a_long_value_is_shown_cut_and_counted_whole() {
        let part = || vec![IdentPart::Header("x-user".into())];
        // One ASCII byte first: the 64th byte is the first half of an `é`.
        let long = |tail: &str| Req::new("GET", "/").header("x-user", &format!("a{}{tail}", "é".repeat(40_000)));
        let (a, b) = (resolve(part(), &long("a")).unwrap(), resolve(part(), &long("b")).unwrap());
        assert_eq!(a.text, format!("header:x-user=a{}…", "é".repeat(31)), "cut before a character, not inside one");
        assert_eq!(a.text, b.text);
        assert_ne!(a.hash, b.hash, "the whole value is counted");
        let raw = resolve(part(), &Req::new("GET", "/").header_bytes("x-user", &[0xff; 10_000])).unwrap();
        assert_eq!(raw.text, format!("header:x-user={}…", "\\xff".repeat(64)));
    }

    #[test]
    fn a_raw_byte_and_its_escaped_spelling_are_different_clients() {
        let part = || vec![IdentPart::Header("x-api-key".into())];
        let raw = resolve(part(), &Req::new("GET", "/").header_bytes("x-api-key", b"\xff")).unwrap();
        let escaped = resolve(part(), &Req::new("GET", "/").header("x-api-key", "\\xff")).unwrap();
        assert_eq!(raw.text, escaped.text, "shown alike");
        assert_ne!(raw.hash, escaped.hash, "counted apart");
        let q = |path: &[u8]| {
            resolve(vec![IdentPart::Query("u".into())], &Req { path: path.to_vec(), ..Req::new("GET", "") }).unwrap()
        };
        assert_ne!(q(b"/?u=%FF").hash, q(b"/?u=%5Cxff").hash);
    }

    #[test]
    fn ipv4_mapped_and_ipv6_rotation_are_one_client() {
        let by_ip = |src: &str| resolve(vec![IdentPart::ClientIp], &Req::new("GET", "/").source(src)).unwrap();
        assert_eq!(by_ip("[::ffff:192.0.2.7]:1").hash, by_ip("192.0.2.7:2").hash);
        let a = by_ip("[2001:db8:1:2:aaaa::1]:1");
        assert_eq!(a.text, "ip=2001:db8:1:2::/64");
        assert_eq!(a.hash, by_ip("[2001:db8:1:2:ffff:1:2:3]:9").hash, "same /64");
        assert_ne!(a.hash, by_ip("[2001:db8:1:3::1]:1").hash, "next /64");
        let per_host = IdentityHasher::new(None, &ClientIpSpec { ipv6_prefix: 128, ..Default::default() });
        let req = |s: &str| Req::new("GET", "/").source(s);
        let at = |s: &str| {
            per_host
                .resolve(&id(vec![IdentPart::ClientIp], IdentFallback::ClientIp), || parse_address(s), &req(s), false)
                .unwrap()
                .hash
        };
        assert_ne!(at("2001:db8::1"), at("2001:db8::2"));
    }

    #[test]
    fn a_source_that_is_no_address_is_one_client() {
        // A Unix socket or an internal listener: every client of it is the same one, whatever
        // Envoy names it, and none is an IP's.
        let by_ip = |src: Option<&str>| {
            let mut req = Req::new("GET", "/");
            req.source = src.map(String::from);
            resolve(vec![IdentPart::ClientIp], &req).unwrap()
        };
        let unknown = by_ip(Some("/var/run/envoy.sock"));
        assert_eq!(unknown.text, "ip=unknown");
        for other in [Some("envoy://internal_client_address/"), Some("not:an:address"), Some(""), None] {
            assert_eq!(by_ip(other).hash, unknown.hash, "{other:?}");
        }
        assert_ne!(by_ip(Some("0.0.0.0:0")).hash, unknown.hash);
    }

    #[test]
    fn an_ipv6_address_built_from_an_ipv4_one_is_that_ipv4_client() {
        let by_ip = |src: &str| resolve(vec![IdentPart::ClientIp], &Req::new("GET", "/").source(src)).unwrap();
        let v4 = by_ip("192.0.2.1:1");
        // 6to4: the /48 of 192.0.2.1 is 65,536 /64s, one client.
        for six_to_four in ["[2002:c000:201::1]:1", "[2002:c000:201:ffff:1:2:3:4]:2"] {
            assert_eq!(by_ip(six_to_four).hash, v4.hash, "{six_to_four}");
        }
        assert_eq!(by_ip("[2002:c000:201::1]:1").text, "ip=192.0.2.1");
        // NAT64: IPv4 clients translated into one /64 stay apart.
        assert_eq!(by_ip("[64:ff9b::c000:201]:1").hash, v4.hash);
        assert_ne!(by_ip("[64:ff9b::c000:202]:1").hash, v4.hash);
        // Teredo keeps the client's public address inverted in its last 32 bits.
        assert_eq!(by_ip("[2001:0:4136:e378:8000:63bf:3fff:fdfe]:1").hash, by_ip("192.0.2.1:3").hash);
        // IPv4-compatible, but not the unspecified or loopback address.
        assert_eq!(by_ip("[::c000:201]:1").hash, v4.hash);
        assert_eq!(by_ip("[::1]:1").text, "ip=::/64");
        assert_eq!(ipv4_behind("2001:db8::c000:201".parse().unwrap()), None, "not an embedding prefix");
    }

    #[test]
    fn the_hash_is_keyed() {
        let req = Req::new("GET", "/").header("x-api-key", "k1");
        let ident = id(vec![IdentPart::Header("x-api-key".into())], IdentFallback::ClientIp);
        let with = |secret: Option<&str>| {
            IdentityHasher::new(secret, &ClientIpSpec::default()).resolve(&ident, || None, &req, false).unwrap().hash
        };
        assert_ne!(with(None), with(Some("a secret of this deployment")));
        assert_eq!(
            with(Some("a secret of this deployment")),
            with(Some("a secret of this deployment")),
            "the same on every proxy"
        );
    }

    /// A part's value as a request carries it, for the property below.
    fn part_value() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop_oneof![Just(b'a'), Just(b'='), Just(b'\\'), Just(0x1f), Just(b'x'), any::<u8>()], 0..6)
    }

    proptest! {
        /// Different header values (composites included) never share an identity encoding:
        /// equal hashes only for equal inputs, over inputs built to look alike.
        #[test]
        fn identities_are_injective(a in prop::collection::vec(part_value(), 1..4), b in prop::collection::vec(part_value(), 1..4)) {
            let names = ["x-a", "x-b", "x-c"];
            let parts = |n: usize| (0..n).map(|i| IdentPart::Header(names[i].into())).collect::<Vec<_>>();
            let req = |vals: &[Vec<u8>]| vals.iter().enumerate().fold(Req::new("GET", "/"), |r, (i, v)| r.header_bytes(names[i], v));
            let ident = |vals: &[Vec<u8>]| {
                let r = req(vals);
                hasher().resolve(&id(parts(vals.len()), IdentFallback::Global), || None, &r, false).unwrap().hash
            };
            prop_assert_eq!(ident(&a) == ident(&b), a == b);
        }
    }
}
