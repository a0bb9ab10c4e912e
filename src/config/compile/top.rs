//! The top level of a config: namespace, headers mode, the limited response, client_ip,
//! local sizing, the identity secret, the Redis block and its breaker.
use serde_json::Value;

use super::*;
use crate::breaker::BreakerSpec;

impl Compiler {
    pub(super) fn config(&mut self, v: &Value) -> Option<Config> {
        if v.is_null() {
            self.report("", None, Problem::NoConfiguration);
            return None;
        }
        let Value::Object(_) = v else {
            self.report("", Some(v), Problem::WrongType { expected: "an object at the top level", found: kind(v) });
            return None;
        };
        let top = self.object("", v, TOP_FIELDS)?;

        let namespace = match field(top, "namespace") {
            Some(v) => self.name("namespace", v, "namespace"),
            None => Some(DEFAULT_NAMESPACE.to_string()),
        };
        let rate_limit_headers = match field(top, "rate_limit_headers") {
            Some(v) => self.keyword("rate_limit_headers", v, HEADER_MODES).map(|k| match k {
                "legacy" => HeaderMode::Legacy,
                "both" => HeaderMode::Both,
                "none" => HeaderMode::None,
                _ => HeaderMode::Draft10,
            }),
            None => Some(HeaderMode::Draft10),
        };
        let response = match field(top, "response") {
            Some(v) => self.response("response", v),
            None => Some(default_response()),
        };
        let client_ip = match field(top, "client_ip") {
            Some(v) => self.object("client_ip", v, CLIENT_IP_FIELDS).and_then(|m| {
                let d = ClientIpSpec::default();
                let hops = match field(m, "xff_trusted_hops") {
                    Some(v) => self.uint("client_ip.xff_trusted_hops", v, 0, MAX_XFF_TRUSTED_HOPS),
                    None => Some(u64::from(d.xff_trusted_hops)),
                };
                let prefix = match field(m, "ipv6_prefix") {
                    Some(v) => self.uint("client_ip.ipv6_prefix", v, MIN_IPV6_PREFIX, MAX_IPV6_PREFIX),
                    None => Some(u64::from(d.ipv6_prefix)),
                };
                Some(ClientIpSpec { xff_trusted_hops: u32::try_from(hops?).ok()?, ipv6_prefix: u8::try_from(prefix?).ok()? })
            }),
            None => Some(ClientIpSpec::default()),
        };
        let local = match field(top, "local") {
            Some(v) => self.object("local", v, LOCAL_FIELDS).and_then(|m| {
                let n = match field(m, "max_clients") {
                    Some(v) => self.uint("local.max_clients", v, 1, MAX_MAX_CLIENTS)?,
                    None => u64::from(DEFAULT_MAX_CLIENTS),
                };
                Some(LocalSpec { max_clients: u32::try_from(n).ok()? })
            }),
            None => Some(LocalSpec { max_clients: DEFAULT_MAX_CLIENTS }),
        };
        let redis_declared = field(top, "redis").is_some();
        let redis = match field(top, "redis") {
            Some(v) => self.redis("redis", v).map(Some),
            None => Some(None),
        };
        let identity_secret = match field(top, "identity_secret") {
            Some(v) => self.secret("identity_secret", v).map(Some),
            None => Some(None),
        };
        let rules = match field(top, "rules") {
            Some(v) => self.rules("rules", v, redis_declared),
            None => {
                self.report("rules", None, Problem::Missing);
                None
            }
        };
        if let (Some(Some(r)), Some(rules)) = (&redis, &rules) {
            let in_redis = |rule: &&Rule| rule.per == Per::Message && rule.backend == Backend::Redis;
            if r.transport == Transport::RedisCallout {
                for (i, _) in rules.iter().enumerate().filter(|(_, rule)| in_redis(rule)) {
                    self.report_text(join(&index("rules", i), "per"), "message", Problem::MessageRedisCallout);
                }
            }
        }
        Some(Config {
            namespace: namespace?,
            rate_limit_headers: rate_limit_headers?,
            response: response?,
            client_ip: client_ip?,
            local: local?,
            redis: redis?,
            identity_secret: identity_secret?,
            rules: rules?,
        })
    }

    pub(super) fn response(&mut self, path: &str, v: &Value) -> Option<ResponseSpec> {
        let m = self.object(path, v, RESPONSE_FIELDS)?;
        let status = match field(m, "status") {
            Some(v) => self.uint(&join(path, "status"), v, 400, 599).and_then(|s| u16::try_from(s).ok()),
            None => Some(DEFAULT_STATUS),
        };
        // 1-16: every gRPC status but OK, which would tell the client its call succeeded.
        let grpc_status = match field(m, "grpc_status") {
            Some(v) => self.uint(&join(path, "grpc_status"), v, 1, 16).and_then(|s| u8::try_from(s).ok()),
            None => Some(DEFAULT_GRPC_STATUS),
        };
        let headers = match field(m, "headers") {
            Some(v) => self.header_map(&join(path, "headers"), v, HeaderUse::Response),
            None => Some(Vec::new()),
        };
        let body = match field(m, "body") {
            Some(v) => self.string(&join(path, "body"), v).map(|s| Some(s.to_string())),
            None => Some(None),
        };
        let content_type = match field(m, "content_type") {
            Some(v) => {
                let p = join(path, "content_type");
                match self.string(&p, v) {
                    Some(s) if s.trim().is_empty() => {
                        self.report(
                            &p,
                            Some(v),
                            Problem::Empty { what: "content type", expected: "expected e.g. \"text/plain\"" },
                        );
                        None
                    }
                    Some(s) if !valid_header_value(s) => {
                        self.report(&p, Some(v), Problem::BadHeaderValue);
                        None
                    }
                    Some(_) if field(m, "body").is_none() => {
                        self.report(&p, Some(v), Problem::ContentTypeWithoutBody);
                        None
                    }
                    Some(s) => Some(Some(s.to_string())),
                    None => None,
                }
            }
            None => Some(None),
        };
        let body = body?;
        // A custom body always carries its type explicitly, so the engine never guesses.
        let content_type = match content_type? {
            None if body.is_some() => Some(DEFAULT_CONTENT_TYPE.to_string()),
            ct => ct,
        };
        Some(ResponseSpec { status: status?, headers: headers?, body, content_type, grpc_status: grpc_status? })
    }

    pub(super) fn redis(&mut self, path: &str, v: &Value) -> Option<RedisSpec> {
        let m = self.object(path, v, REDIS_FIELDS)?;
        let cluster = match field(m, "cluster") {
            Some(v) => self.non_empty_text(&join(path, "cluster"), v, "cluster name", "expected the name of an Envoy cluster"),
            None => {
                self.report(join(path, "cluster"), None, Problem::Missing);
                None
            }
        };
        let transport = match field(m, "transport") {
            Some(v) => self.keyword(&join(path, "transport"), v, TRANSPORTS).map(|t| match t {
                "redis_callout" => Transport::RedisCallout,
                _ => Transport::Http,
            }),
            None => Some(Transport::Http),
        };
        let token = match field(m, "token") {
            Some(v) => self.token(&join(path, "token"), v).map(Some),
            None => Some(None),
        };
        let authority = match field(m, "authority") {
            Some(v) => self.authority(&join(path, "authority"), v).map(Some),
            // A Redis callout sends no authority: its cluster may be named anyhow.
            None => match (&cluster, transport) {
                (Some(cluster), Some(Transport::Http)) => self.default_authority(&join(path, "authority"), cluster).map(Some),
                _ => Some(None),
            },
        };
        let timeout_ms = match field(m, "timeout_ms") {
            Some(v) => self.uint(&join(path, "timeout_ms"), v, 1, MAX_REDIS_TIMEOUT_MS),
            None => Some(DEFAULT_REDIS_TIMEOUT_MS),
        };
        let breaker = match field(m, "breaker") {
            Some(v) => self.breaker(&join(path, "breaker"), v),
            None => Some(BreakerSpec::default()),
        };
        let deny_cache = match field(m, "deny_cache") {
            Some(v) => self.boolean(&join(path, "deny_cache"), v),
            None => Some(true),
        };
        Some(RedisSpec {
            cluster: cluster?,
            transport: transport?,
            token: token?,
            authority: authority?,
            timeout_ms: timeout_ms?,
            breaker: breaker?,
            deny_cache: deny_cache?,
        })
    }

    pub(super) fn breaker(&mut self, path: &str, v: &Value) -> Option<BreakerSpec> {
        let m = self.object(path, v, BREAKER_FIELDS)?;
        let d = BreakerSpec::default();
        let mut num = |name: &str, max: u64, default: u64| match field(m, name) {
            Some(v) => self.uint(&join(path, name), v, 1, max),
            None => Some(default),
        };
        let failure_threshold = num("failure_threshold", 1000, u64::from(d.failure_threshold));
        let open_ms = num("open_ms", 600_000, d.open_ms);
        let half_open_probes = num("half_open_probes", 100, u64::from(d.half_open_probes));
        let success_threshold = num("success_threshold", 100, u64::from(d.success_threshold));
        Some(BreakerSpec {
            failure_threshold: failure_threshold? as u32,
            open_ms: open_ms?,
            half_open_probes: half_open_probes? as u32,
            success_threshold: success_threshold? as u32,
        })
    }

    /// A non-empty string without control characters or spaces.
    pub(super) fn non_empty_text(&mut self, path: &str, v: &Value, what: &'static str, expected: &'static str) -> Option<String> {
        let s = self.string(path, v)?;
        self.plain_text(path, s, Some(v), what, expected)
    }

    /// `s` if it is non-empty and has no control characters or spaces; its errors show `shown`.
    fn plain_text(
        &mut self,
        path: &str,
        s: &str,
        shown: Option<&Value>,
        what: &'static str,
        expected: &'static str,
    ) -> Option<String> {
        if s.is_empty() {
            self.report(path, shown, Problem::Empty { what, expected });
            None
        } else if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            self.report(path, shown, Problem::BadText { what, expected: "no spaces or control characters" });
            None
        } else {
            Some(s.to_string())
        }
    }

    /// A secret's text: its errors never echo the value (they reach Envoy's log), whatever was
    /// wrong with it, its type included.
    fn secret_string<'v>(&mut self, path: &str, v: &'v Value) -> Option<&'v str> {
        match v {
            Value::String(s) => Some(s),
            _ => {
                self.report(path, None, Problem::WrongType { expected: "a string", found: kind(v) });
                None
            }
        }
    }

    /// A secret of printable ASCII, long enough not to be guessed.
    pub(super) fn secret(&mut self, path: &str, v: &Value) -> Option<String> {
        let s = self.secret_string(path, v)?;
        let printable = s.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
        if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&s.len()) || !printable {
            self.report(path, None, Problem::BadSecret { min: MIN_SECRET_LEN, max: MAX_SECRET_LEN });
            return None;
        }
        Some(s.to_string())
    }

    /// The gateway's bearer token: a header value's text, non-empty, without spaces or control
    /// characters, and never echoed.
    fn token(&mut self, path: &str, v: &Value) -> Option<String> {
        let s = self.secret_string(path, v)?;
        self.plain_text(path, s, None, "token", "expected the bearer token for the endpoint")
    }

    /// An explicit `redis.authority`: it becomes the callouts' `:authority` as written.
    fn authority(&mut self, path: &str, v: &Value) -> Option<String> {
        let s = self.non_empty_text(path, v, "authority", "expected host[:port], such as \"gateway.local\"")?;
        if is_authority(&s) {
            Some(s)
        } else {
            self.report(path, Some(v), Problem::BadText { what: "authority", expected: AUTHORITY });
            None
        }
    }

    /// The `:authority` of HTTP callouts when the config names none: the cluster's name, or the
    /// host of an Istio cluster name (`outbound|7379||gw.ns.svc.cluster.local`), whose `|` an h2
    /// server refuses, resetting every callout.
    fn default_authority(&mut self, path: &str, cluster: &str) -> Option<String> {
        let mut parts = cluster.split('|');
        let authority = match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("outbound"), Some(port), Some(_subset), Some(host), None)
                if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !host.is_empty() =>
            {
                host
            }
            _ => cluster,
        };
        if is_authority(authority) {
            Some(authority.to_string())
        } else {
            self.report_text(path, authority, Problem::BadText { what: "authority", expected: AUTHORITY_FROM_CLUSTER });
            None
        }
    }
}

const AUTHORITY: &str =
    "host[:port] of a URI (a host name, an IPv4 address or an [IPv6] one; no spaces, |, /, @ or control characters)";
const AUTHORITY_FROM_CLUSTER: &str = "host[:port] of a URI; redis.authority is not set, and redis.cluster (or the host of \
     an Istio outbound|port||host name) is not one: set redis.authority to the gateway's host name";

/// Whether `s` is a URI authority without user info (RFC 3986 §3.2): a reg-name or IPv4
/// address, or an IPv6 address in brackets, then an optional port. h2 servers check
/// `:authority` so, and reset the stream of one that is not.
fn is_authority(s: &str) -> bool {
    let (host_ok, rest) = match s.strip_prefix('[') {
        Some(inner) => match inner.split_once(']') {
            Some((ip, rest)) => (ip.parse::<std::net::Ipv6Addr>().is_ok(), rest),
            None => return false,
        },
        None => {
            let end = s.find(':').unwrap_or(s.len());
            (is_reg_name(&s[..end]), &s[end..])
        }
    };
    let port_ok = match rest.strip_prefix(':') {
        Some(port) => !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok(),
        None => rest.is_empty(),
    };
    host_ok && port_ok
}

/// RFC 3986's reg-name (which IPv4 addresses are written in), not empty: unreserved
/// characters, sub-delims and percent-encoded octets.
fn is_reg_name(host: &str) -> bool {
    let b = host.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit) && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
            }
            c if c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&c) => i += 1,
            _ => return false,
        }
    }
    !b.is_empty()
}
