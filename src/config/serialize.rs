//! The normalized JSON view of a compiled config (what `sluice lint` prints): every default
//! filled in, rates as `{"limit": 100, "period_ms": 60000}`, globs as written, strategies as
//! `{"type": ..., params}`. It is a report, not an input format.
//!
//! Field names follow the input format. `null` means "not set": a `burst` of `null` is the
//! limit of each rate; a `body` of `null` is the default problem+json body.

use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};

use super::*;

/// Header pairs as a JSON object, in compiled order.
struct Headers<'a>(&'a [(String, String)]);

impl Serialize for Headers<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Any `Display` value as a JSON string (globs, CIDRs).
struct Texts<'a, T>(&'a [T]);

impl<T: std::fmt::Display> Serialize for Texts<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for x in self.0 {
            seq.serialize_element(&x.to_string())?;
        }
        seq.end()
    }
}

impl Serialize for Config {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Config", 8)?;
        st.serialize_field("namespace", &self.namespace)?;
        st.serialize_field("rate_limit_headers", &self.rate_limit_headers)?;
        st.serialize_field("response", &self.response)?;
        st.serialize_field("client_ip", &self.client_ip)?;
        st.serialize_field("local", &self.local)?;
        st.serialize_field("redis", &self.redis)?;
        // A secret: show that one is set, never its value (`null`: the public default).
        st.serialize_field("identity_secret", &self.identity_secret.as_ref().map(|_| "<redacted>"))?;
        st.serialize_field("rules", &self.rules)?;
        st.end()
    }
}

impl Serialize for HeaderMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            HeaderMode::Draft10 => "draft10",
            HeaderMode::Legacy => "legacy",
            HeaderMode::Both => "both",
            HeaderMode::None => "none",
        })
    }
}

impl Serialize for ResponseSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("ResponseSpec", 5)?;
        st.serialize_field("status", &self.status)?;
        st.serialize_field("headers", &Headers(&self.headers))?;
        st.serialize_field("body", &self.body)?;
        st.serialize_field("content_type", &self.content_type)?;
        st.serialize_field("grpc_status", &self.grpc_status)?;
        st.end()
    }
}

impl Serialize for ClientIpSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("ClientIpSpec", 2)?;
        st.serialize_field("xff_trusted_hops", &self.xff_trusted_hops)?;
        st.serialize_field("ipv6_prefix", &self.ipv6_prefix)?;
        st.end()
    }
}

impl Serialize for LocalSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("LocalSpec", 1)?;
        st.serialize_field("max_clients", &self.max_clients)?;
        st.end()
    }
}

impl Serialize for RedisSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("RedisSpec", 7)?;
        st.serialize_field("cluster", &self.cluster)?;
        st.serialize_field(
            "transport",
            match self.transport {
                Transport::Http => "http",
                Transport::RedisCallout => "redis_callout",
            },
        )?;
        // The token is a secret: show that one is set, never its value.
        st.serialize_field("token", &self.token.as_ref().map(|_| "<redacted>"))?;
        st.serialize_field("authority", &self.authority)?;
        st.serialize_field("timeout_ms", &self.timeout_ms)?;
        let b = &self.breaker;
        st.serialize_field(
            "breaker",
            &serde_json::json!({
                "failure_threshold": b.failure_threshold,
                "open_ms": b.open_ms,
                "half_open_probes": b.half_open_probes,
                "success_threshold": b.success_threshold,
            }),
        )?;
        st.serialize_field("deny_cache", &self.deny_cache)?;
        st.end()
    }
}

impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Rule", 14)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("match", &self.matcher)?;
        st.serialize_field("limits", &self.limits)?;
        st.serialize_field("strategy", &StrategyView(&self.strategy))?;
        st.serialize_field("identifier", &self.identifier)?;
        st.serialize_field("cost", &self.cost)?;
        st.serialize_field("exempt", &self.exempt)?;
        st.serialize_field(
            "backend",
            match self.backend {
                Backend::Local => "local",
                Backend::Redis => "redis",
            },
        )?;
        st.serialize_field("on_error", &self.on_error)?;
        st.serialize_field("shadow", &self.shadow)?;
        st.serialize_field("advertise", &self.advertise_if_request())?;
        st.serialize_field(
            "per",
            match self.per {
                Per::Request => "request",
                Per::Message => "message",
            },
        )?;
        // A request rule has no over_limit: its limited requests get the limited response.
        let over_limit = (self.per == Per::Message)
            .then(|| serde_json::json!({"notify": self.over_limit.notify, "close_after": self.over_limit.close_after}));
        st.serialize_field("over_limit", &over_limit)?;
        st.end()
    }
}

impl Serialize for Match {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Match", 4)?;
        st.serialize_field("path", &Texts(&self.paths))?;
        st.serialize_field("methods", &self.methods)?;
        st.serialize_field("headers", &Headers(&self.headers))?;
        st.serialize_field("routes", &self.routes)?;
        st.end()
    }
}

impl Serialize for Glob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// A strategy as `{"type": name, params...}`, in the catalogue's order (a default burst is
/// `null`).
struct StrategyView<'a>(&'a Strategy);

impl Serialize for StrategyView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let entry = self.0.entry();
        let mut m = s.serialize_map(Some(1 + entry.params.len()))?;
        m.serialize_entry("type", entry.name)?;
        for &p in entry.params {
            m.serialize_entry(p.key(), &self.0.param(p))?;
        }
        m.end()
    }
}

impl Serialize for Identifier {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Identifier", 2)?;
        st.serialize_field("parts", &self.parts)?;
        st.serialize_field("fallback", &self.fallback)?;
        st.end()
    }
}

impl Serialize for IdentPart {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (key, name) = match self {
            IdentPart::ClientIp => return s.serialize_str("client_ip"),
            IdentPart::Global => return s.serialize_str("global"),
            IdentPart::Header(n) => ("header", n),
            IdentPart::Query(n) => ("query", n),
            IdentPart::Cookie(n) => ("cookie", n),
        };
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry(key, name)?;
        m.end()
    }
}

impl Serialize for IdentFallback {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            IdentFallback::ClientIp => "client_ip",
            IdentFallback::Global => "global",
            IdentFallback::Skip => "skip",
        })
    }
}

impl Serialize for Cost {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Cost::Fixed(n) => s.serialize_u64(*n),
            Cost::PayloadBytes => s.serialize_str("payload_bytes"),
            Cost::Header { name, default, min, max } => {
                let mut st = s.serialize_struct("Cost", 4)?;
                st.serialize_field("header", name)?;
                st.serialize_field("default", default)?;
                st.serialize_field("min", min)?;
                st.serialize_field("max", max)?;
                st.end()
            }
        }
    }
}

impl Serialize for Exempt {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Exempt", 2)?;
        st.serialize_field("cidrs", &Texts(&self.cidrs))?;
        st.serialize_field("headers", &Headers(&self.headers))?;
        st.end()
    }
}

impl Serialize for OnError {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            OnError::Allow => s.serialize_str("allow"),
            OnError::Deny => s.serialize_str("deny"),
            OnError::Fallback { share } => {
                struct Share(f64);
                impl Serialize for Share {
                    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                        let mut st = s.serialize_struct("Fallback", 1)?;
                        st.serialize_field("share", &self.0)?;
                        st.end()
                    }
                }
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("fallback", &Share(*share))?;
                m.end()
            }
        }
    }
}
