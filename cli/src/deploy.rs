//! Deployment warnings: what in a config would fail where it is deployed (a filter build that
//! refuses it, a Redis cluster its bootstrap lacks, the examples' public token). `sluice lint`
//! prints each as a warning; the config stays valid.

use sluice::config::{Config, Transport, EXAMPLE_TOKEN};

use crate::trust::Warning;

/// The deployment warnings of `config`; `clusters`: those of the bootstrap carrying it, when
/// it came in one.
pub fn warnings(config: &Config, clusters: Option<&[String]>) -> Vec<Warning> {
    let mut out = Vec::new();
    let Some(redis) = &config.redis else { return out };
    // `sluice.wasm` refuses this config at start (`src/host/mod.rs`); lint compiled it as the
    // Higress build would.
    if redis.transport == Transport::RedisCallout {
        out.push(Warning {
            path: "redis.transport".into(),
            message: "\"redis_callout\" needs Higress and sluice-redis-callout.wasm; sluice.wasm refuses this config at start"
                .into(),
        });
        // Only HTTP callouts carry an authority (the compiler sets none by itself here).
        if let Some(authority) = &redis.authority {
            out.push(Warning {
                path: "redis.authority".into(),
                message: format!("{authority:?}: not used: Redis callouts carry no authority; remove it, or use transport: http"),
            });
        }
    }
    // Envoy knows no such cluster: every Redis call would fail at once, and each rule follow
    // its `on_error`, by default admitting everything, with nothing but `.store_errors` to show.
    if let Some(known) = clusters.filter(|known| !known.contains(&redis.cluster)) {
        out.push(Warning {
            path: "redis.cluster".into(),
            message: format!(
                "{:?}: no cluster of the Envoy bootstrap is named so (its clusters: {}); every Redis call would fail and follow on_error",
                redis.cluster,
                known.join(", ")
            ),
        });
    }
    if redis.token.as_deref() == Some(EXAMPLE_TOKEN) {
        out.push(Warning {
            path: "redis.token".into(),
            message: "the examples' public token: a gateway listening beyond loopback refuses it, so one deployed \
                      elsewhere has a token of its own and answers this one 401 (every Redis rule then follows \
                      on_error); use a secret of your own, the same as the gateway's SLUICE_GATEWAY_TOKEN"
                .into(),
        });
    }
    out
}
