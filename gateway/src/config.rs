//! Command-line flags and environment variables (every flag has one), parsed by clap.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

const AFTER_HELP: &str = "\
Requests and replies (Upstash REST dialect):
  curl -H 'Authorization: Bearer TOKEN' -d '[\"EVALSHA\",\"<sha>\",\"1\",\"key\",\"arg\"]' http://127.0.0.1:7379/
    -> {\"result\": ...}     integers -> numbers, strings -> strings, nil -> null, arrays -> arrays
    -> {\"error\": \"NOSCRIPT No matching script. Please use EVAL.\"}   Redis' error text, verbatim
  POST /pipeline with [[...],[...]] -> [{\"result\": ...}, {\"error\": ...}], one entry per command, in order
  Header 'Upstash-Encoding: base64': strings in results come base64-encoded (except \"OK\");
  without it a reply holding non-UTF-8 bytes is an error that asks for this header.

Status codes: 200 done (pipelines: per-command errors inside), 400 refused request or a failed
command on POST /, 401 missing or wrong token, 404/405 wrong path or method, 413 body too large,
502 Redis unreachable, 504 no answer within --timeout-ms. Errors made by the gateway start
with 'ERR sluice-gateway:'. Only EVAL, EVALSHA, SCRIPT LOAD, SCRIPT EXISTS and PING run; any
other command refuses the whole request (400) and nothing runs. HTTP/1.1 only.

Logging goes to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change the level (default info).";

/// Stateless HTTP bridge from the Upstash REST dialect to Redis or Redis Cluster, for the sluice
/// rate-limiting filter. It runs EVAL, EVALSHA, SCRIPT LOAD, SCRIPT EXISTS and PING only.
///
/// Endpoints: POST / (one command as a JSON array), POST /pipeline (an array of commands),
/// GET /healthz (200 when Redis answers PING in time, else 503), GET /metrics (Prometheus).
#[derive(Clone, Debug, Parser)]
#[command(name = "sluice-gateway", version, about, long_about, after_long_help = AFTER_HELP)]
pub struct Config {
    /// Address and port to listen on. Keep it on loopback or a private network: the gateway
    /// runs scripts on your Redis for whoever holds the token.
    #[arg(long, env = "SLUICE_GATEWAY_LISTEN", default_value = "127.0.0.1:7379")]
    pub listen: SocketAddr,

    /// Standalone Redis to use, as a URL: `redis://[:PASSWORD@]HOST:PORT[/DB]`.
    /// Ignored when --cluster-nodes is given.
    #[arg(
        long,
        env = "SLUICE_GATEWAY_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// Use Redis Cluster: comma-separated seed nodes, as HOST:PORT or redis:// URLs
    /// (e.g. 10.0.0.1:7000,10.0.0.2:7000). The client discovers the other nodes itself.
    #[arg(long, env = "SLUICE_GATEWAY_CLUSTER_NODES", value_delimiter = ',')]
    pub cluster_nodes: Vec<String>,

    /// Bearer token that clients must send (Authorization: Bearer TOKEN). When unset, no
    /// authentication is required. Prefer the environment variable: flags show up in `ps`.
    #[arg(long, env = "SLUICE_GATEWAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// How long one request may wait for Redis, in milliseconds. Past it the request is
    /// answered 504 (and /healthz 503).
    #[arg(long, env = "SLUICE_GATEWAY_TIMEOUT_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub timeout_ms: u64,

    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "SLUICE_GATEWAY_MAX_BODY_BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(2..=1024 * 1024 * 1024))]
    pub max_body_bytes: u64,

    /// Most commands accepted in one POST /pipeline; longer pipelines get 400.
    #[arg(long, env = "SLUICE_GATEWAY_MAX_PIPELINE", default_value_t = 128,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_pipeline: u64,

    /// On SIGTERM/SIGINT the gateway stops accepting connections and lets requests in flight
    /// finish; after this many milliseconds it exits anyway.
    #[arg(long, env = "SLUICE_GATEWAY_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,
}

impl Config {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// Cluster seed nodes as URLs (bare HOST:PORT gets `redis://`), blanks dropped.
    pub fn cluster_urls(&self) -> Vec<String> {
        self.cluster_nodes
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
            .map(|n| {
                if n.contains("://") {
                    n.to_string()
                } else {
                    format!("redis://{n}")
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::try_parse_from(["sluice-gateway"]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:7379".parse().unwrap());
        assert_eq!(c.redis_url, "redis://127.0.0.1:6379");
        assert!(c.cluster_nodes.is_empty());
        assert_eq!(c.timeout(), Duration::from_secs(1));
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(c.max_pipeline, 128);
    }

    #[test]
    fn cluster_nodes_are_normalised() {
        let c = Config::try_parse_from([
            "sluice-gateway",
            "--cluster-nodes",
            "127.0.0.1:7000, redis://127.0.0.1:7001,,",
        ])
        .unwrap();
        assert_eq!(
            c.cluster_urls(),
            vec!["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
        );
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Config::try_parse_from(["sluice-gateway", "--timeout-ms", "0"]).is_err());
        assert!(Config::try_parse_from(["sluice-gateway", "--listen", "nowhere"]).is_err());
        assert!(Config::try_parse_from(["sluice-gateway", "--max-pipeline", "0"]).is_err());
    }
}
