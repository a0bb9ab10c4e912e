//! Command-line flags and environment variables (every flag has one), parsed by clap.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

const AFTER_HELP: &str = "\
What runs: sluice's decision script and nothing else. A command is accepted only as that
script's call exactly as the filter makes it: EVALSHA <its SHA> (or EVAL with its exact text),
1 to 8 keys <namespace>:{<rule>:<16 hex>}:<i>.<8 hex> of one rule and identity, 6 arguments per
key (strategy, limit, period_ms, cost >= 1, p1, p2), optionally \"dry\". Any other script, SHA,
command (PING, SCRIPT, FLUSHALL, ...), key, argument count or clock override refuses the whole
request with 400 and nothing runs; refusals are counted in sluice_gateway_refused_total{reason}.
Accepted calls run as FCALL of the gateway's own function library where Redis has functions
(Redis 7 and later), else as EVALSHA of its own SHA (--redis-calls; /healthz shows which).

The gateway loads what it calls itself (FUNCTION LOAD or SCRIPT LOAD): at start (on a Cluster,
on every primary; best effort, Redis may be down), and when a call finds it missing
(ERR Function not found, NOSCRIPT: Redis restarted or flushed, a failover), on that node, then
runs the call once more. Clients never see either error. Loads are counted in
sluice_gateway_library_loads_total and sluice_gateway_script_loads_total{trigger,outcome}.

Requests and replies (Upstash REST dialect):
  curl -H 'Authorization: Bearer TOKEN' -d '[[\"EVALSHA\",\"<sha>\",\"1\",\"<key>\",\"fixed_window\",\"5\",\"60000\",\"1\",\"0\",\"0\"]]' \\
       http://127.0.0.1:7379/pipeline
    -> [{\"result\": [1, [1, 4, ...]]}]   one entry per call, in order; integers -> numbers
    -> [{\"error\": \"WRONGTYPE ...\"}]     a call Redis failed: its error text, verbatim
  POST / takes one call and answers {\"result\": ...} or {\"error\": ...}.
  Header 'Upstash-Encoding: base64': strings in results come base64-encoded (except \"OK\").

Status codes: 200 done (pipelines: per-call errors inside), 400 refused request or a failed
call on POST /, 401 missing or wrong token, 404/405 wrong path or method, 408 body not in
within --body-read-timeout-ms, 413 body too large, 431 headers over --max-header-bytes,
502 Redis unreachable, 504 no answer within --timeout-ms. Errors made by the gateway start
with 'ERR sluice-gateway:'.

Protocols: HTTP/1.1 and h2c (HTTP/2 with prior knowledge, no TLS, as Envoy speaks to a cluster
with http2_protocol_options) on the same port, told apart by the first bytes. On h2c every
stream is one request under the same limits, at most --max-concurrent-streams at once per
connection; a header block over --max-header-bytes is answered 431 on its stream.

Slow or greedy clients: headers not in within --header-read-timeout-ms, or a connection idle
for --idle-timeout-ms, are closed without an answer (a connection that never showed the token
is closed after its answers, and idle after --header-read-timeout-ms); connections past
--max-connections are closed at once (503 when it can be sent). Each is counted in /metrics
(sluice_gateway_client_timeouts_total, sluice_gateway_connections_refused_total).

Logging goes to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change the level (default info, and error for the Redis client, which warns once per call while a Cluster node is gone: RUST_LOG=info,redis=warn shows those).";

/// HTTP service that runs sluice's decision script, and nothing else, on Redis or Redis Cluster
/// for the sluice rate-limiting filter (Upstash REST dialect). It loads the script itself.
///
/// Endpoints: POST / (one call as a JSON array), POST /pipeline (an array of calls),
/// GET /healthz (200 when Redis answers PING in time, else 503), GET /metrics (Prometheus).
#[derive(Clone, Debug, Parser)]
#[command(name = "sluice-gateway", version, about, long_about, after_long_help = AFTER_HELP)]
pub struct Config {
    /// Address and port to listen on. Keep it on loopback or a private network: whoever holds
    /// the token can spend or reset any identity's limits (it runs nothing but sluice's
    /// script). Any address but loopback needs --token: without one the gateway refuses to
    /// start.
    #[arg(long, env = "SLUICE_GATEWAY_LISTEN", default_value = "127.0.0.1:7379")]
    pub listen: SocketAddr,

    /// Standalone Redis to use, as a URL: `redis://[:PASSWORD@]HOST:PORT[/DB]`.
    /// Ignored when --cluster-nodes is given.
    #[arg(long, env = "SLUICE_GATEWAY_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
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

    /// Most bytes of request headers and bodies held at once, across all connections and
    /// streams (requests being read, and those whose calls are running); a request that would
    /// pass it gets 503 at once (the filter then follows its rule's on_error) and is counted in
    /// sluice_gateway_body_budget_refusals_total. At least --max-body-bytes. The filter's
    /// calls are a few hundred bytes each, so only a client holding many large bodies meets it.
    #[arg(long, env = "SLUICE_GATEWAY_MAX_BODY_BYTES_IN_FLIGHT", default_value_t = 64 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(2..=64 * 1024 * 1024 * 1024))]
    pub max_body_bytes_in_flight: u64,

    /// Most commands accepted in one POST /pipeline; longer pipelines get 400. At least 128,
    /// the most rules a filter config may have: a request sends all its Redis rules' commands
    /// in one call.
    #[arg(long, env = "SLUICE_GATEWAY_MAX_PIPELINE", default_value_t = 128,
          value_parser = clap::value_parser!(u64).range(MIN_PIPELINE..=100_000))]
    pub max_pipeline: u64,

    /// On SIGTERM/SIGINT the gateway stops accepting connections and lets requests in flight
    /// finish; after this many milliseconds it exits anyway.
    #[arg(long, env = "SLUICE_GATEWAY_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,

    /// Most client connections open at once. A connection past it is closed as soon as it is
    /// accepted (after a best-effort 503) and counted in
    /// sluice_gateway_connections_refused_total. At start the gateway raises its open-file
    /// limit to fit, and lowers this cap (with a warning) if the hard limit is too low.
    #[arg(long, env = "SLUICE_GATEWAY_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// Time allowed for a request's line and headers, in milliseconds: from the connection's
    /// opening for its first request, from the request's first byte for later ones. Past it
    /// the connection is closed without an answer.
    #[arg(long, env = "SLUICE_GATEWAY_HEADER_READ_TIMEOUT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub header_read_timeout_ms: u64,

    /// Time allowed for a request's whole body once its headers are in, in milliseconds
    /// (however the bytes trickle). Past it the answer is 408 and the connection is closed.
    #[arg(long, env = "SLUICE_GATEWAY_BODY_READ_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub body_read_timeout_ms: u64,

    /// A connection is closed after this many milliseconds without a request (keep-alive), or
    /// without a byte of its answer being taken by a client that stopped reading. Keep it
    /// above the idle timeout of the client's connection pool (Envoy: the cluster's
    /// common_http_protocol_options.idle_timeout) so that the client closes idle connections
    /// first and never sends a request on one the gateway is closing. Only for a connection
    /// one of whose requests showed the token: any other is closed after its answers, and
    /// idle after --header-read-timeout-ms.
    #[arg(long, env = "SLUICE_GATEWAY_IDLE_TIMEOUT_MS", default_value_t = 90_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub idle_timeout_ms: u64,

    /// Largest request line plus headers accepted, in bytes; larger ones get 431 and the
    /// connection is closed. Bounds what a client can make the gateway buffer before a
    /// request starts.
    #[arg(long, env = "SLUICE_GATEWAY_MAX_HEADER_BYTES", default_value_t = 16 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=1024 * 1024))]
    pub max_header_bytes: u64,

    /// Most requests in progress at once on one h2c (HTTP/2) connection: the
    /// SETTINGS_MAX_CONCURRENT_STREAMS the gateway announces; streams past it are refused with
    /// REFUSED_STREAM (a client such as Envoy then opens another connection, under
    /// --max-connections). Each stream may hold a body of up to --max-body-bytes, all of them
    /// together at most --max-body-bytes-in-flight.
    #[arg(long, env = "SLUICE_GATEWAY_MAX_CONCURRENT_STREAMS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_concurrent_streams: u32,

    /// How calls run on Redis: `fcall` loads sluice's function library (FUNCTION LOAD, Redis 7
    /// and later) and runs each call as FCALL, which spares Redis defining the strategies on
    /// every call; `evalsha` loads the script (SCRIPT LOAD) and runs each call as EVALSHA;
    /// `module` runs each call as the native command of sluice's Redis module
    /// (libsluice_redis.so, which Redis' operator loads: `loadmodule` in redis.conf), which
    /// spares Redis Lua altogether; `auto` uses the module where every primary has it, else
    /// FCALL where every primary has functions, else EVALSHA, and falls back the same way when
    /// Redis stops knowing one. Same keys, same arguments, same decisions: proxies whose
    /// gateways run calls differently share one Redis.
    #[arg(long, env = "SLUICE_GATEWAY_REDIS_CALLS", value_enum, default_value_t = RedisCalls::Auto)]
    pub redis_calls: RedisCalls,

    /// With FCALL, run the calls of one pipeline (on a Cluster, those of one slot) as one FCALL
    /// of the library's batch function, which decides them in order, each all-or-nothing, as if
    /// each had been its own FCALL: Redis pays its per-call dispatch, Lua entry and clock once
    /// per round trip. `false` sends each call as its own FCALL (for comparison).
    #[arg(long, env = "SLUICE_GATEWAY_BATCH_CALLS", default_value_t = true, action = clap::ArgAction::Set)]
    pub batch_calls: bool,

    /// How long one Redis probe answers GET /healthz, in milliseconds: a flood of probes costs
    /// Redis at most one PING per period, and never more than one at a time. A request that
    /// finds Redis unreachable or too slow ends the period early. 0 probes on every call
    /// (still one at a time).
    #[arg(long, env = "SLUICE_GATEWAY_HEALTH_CACHE_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub health_cache_ms: u64,
}

/// `--redis-calls`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RedisCalls {
    /// The module where every primary has it, else FCALL where Redis has functions (every
    /// primary of a Cluster), else EVALSHA; decided by the first probe or load that reaches
    /// Redis, and again when Redis no longer knows the module.
    Auto,
    /// Always the module's commands (`sluice.decide.<id>`, `sluice.batch.<id>`).
    Module,
    /// Always FCALL of the library (Redis 7 and later).
    Fcall,
    /// Always EVALSHA of the script.
    Evalsha,
}

impl Config {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub fn health_cache(&self) -> Duration {
        Duration::from_millis(self.health_cache_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// Whether `--listen` may be used as given: without a token, or with the token every
    /// shipped example carries ([`DEV_TOKEN`]), only a loopback address (only local processes
    /// can reach it), so a gateway on a shared network always checks who runs scripts on its
    /// Redis with a secret of its operator's.
    pub fn check_listen(&self) -> Result<(), ListenError> {
        if self.listen.ip().to_canonical().is_loopback() {
            return Ok(());
        }
        match self.token.as_deref().filter(|t| !t.is_empty()) {
            None => Err(ListenError::OpenWithoutToken(self.listen)),
            Some(DEV_TOKEN) => Err(ListenError::OpenWithDevToken(self.listen)),
            Some(_) => Ok(()),
        }
    }

    /// Cluster seed nodes as URLs (bare HOST:PORT gets `redis://`), blanks dropped.
    pub fn cluster_urls(&self) -> Vec<String> {
        self.cluster_nodes
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
            .map(|n| if n.contains("://") { n.to_string() } else { format!("redis://{n}") })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "refusing to listen on {0} without a token: anyone who can reach it could run scripts on \
         your Redis. Set --token (or SLUICE_GATEWAY_TOKEN), or listen on a loopback address \
         with --listen (or SLUICE_GATEWAY_LISTEN), e.g. 127.0.0.1:7379"
    )]
    OpenWithoutToken(SocketAddr),
    #[error(
        "refusing to listen on {0} with the token of sluice's examples ({DEV_TOKEN:?}), which \
         anyone can read: set a token of your own with --token (or SLUICE_GATEWAY_TOKEN), the \
         same as the filter's redis.token, or listen on a loopback address"
    )]
    OpenWithDevToken(SocketAddr),
}

/// The least `--max-pipeline`: the most rules a filter config may have. A busy filter gathers at most
/// [`sluice::redis::wire::GATHERED_COMMANDS`] commands into one call, but a request that meets
/// more Redis rules than that sends them all in a call of its own; a smaller cap would answer
/// that call with 400 every time, and the request would follow `on_error`.
pub const MIN_PIPELINE: u64 = sluice::config::MAX_RULES as u64;

/// The token of the shipped examples and bootstraps: public, so good on loopback only.
pub const DEV_TOKEN: &str = sluice::config::EXAMPLE_TOKEN;

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
        assert_eq!(c.max_body_bytes_in_flight, 64 << 20);
        assert_eq!(c.max_pipeline, 128);
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.header_read_timeout_ms, 5_000);
        assert_eq!(c.body_read_timeout_ms, 10_000);
        assert_eq!(c.idle_timeout_ms, 90_000);
        assert_eq!(c.max_header_bytes, 16 * 1024);
        assert_eq!(c.health_cache_ms, 1_000);
        assert_eq!(c.max_concurrent_streams, 100);
        assert!(c.batch_calls);
        assert!(!Config::try_parse_from(["sluice-gateway", "--batch-calls", "false"]).unwrap().batch_calls);
        assert_eq!(c.redis_calls, RedisCalls::Auto);
        let c = Config::try_parse_from(["sluice-gateway", "--redis-calls", "evalsha"]).unwrap();
        assert_eq!(c.redis_calls, RedisCalls::Evalsha);
        let c = Config::try_parse_from(["sluice-gateway", "--redis-calls", "module"]).unwrap();
        assert_eq!(c.redis_calls, RedisCalls::Module);
    }

    #[test]
    fn only_loopback_without_token() {
        let check = |args: &[&str]| {
            let c = Config::try_parse_from(std::iter::once("sluice-gateway").chain(args.iter().copied())).unwrap();
            c.check_listen()
        };
        assert!(check(&[]).is_ok());
        assert!(check(&["--listen", "127.0.0.1:7379"]).is_ok());
        assert!(check(&["--listen", "127.8.9.10:7379"]).is_ok());
        assert!(check(&["--listen", "[::1]:7379"]).is_ok());
        assert!(check(&["--listen", "[::ffff:127.0.0.1]:7379"]).is_ok());
        for open in ["0.0.0.0:7379", "10.0.0.5:7379", "[::]:7379", "[::ffff:10.0.0.5]:7379"] {
            let err = check(&["--listen", open]).unwrap_err().to_string();
            assert!(err.contains("--token") && err.contains("SLUICE_GATEWAY_TOKEN"), "{err}");
            assert!(err.contains(open.trim_start_matches('[').split(']').next().unwrap()), "{err}");
            assert!(check(&["--listen", open, "--token", "t"]).is_ok());
            let err = check(&["--listen", open, "--token", DEV_TOKEN]).unwrap_err().to_string();
            assert!(err.contains("token of sluice's examples"), "{err}");
        }
        assert!(check(&["--listen", "127.0.0.1:7379", "--token", DEV_TOKEN]).is_ok(), "loopback: the examples' own setup");
    }

    #[test]
    fn cluster_nodes_are_normalised() {
        let c =
            Config::try_parse_from(["sluice-gateway", "--cluster-nodes", "127.0.0.1:7000, redis://127.0.0.1:7001,,"]).unwrap();
        assert_eq!(c.cluster_urls(), vec!["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Config::try_parse_from(["sluice-gateway", "--timeout-ms", "0"]).is_err());
        assert!(Config::try_parse_from(["sluice-gateway", "--listen", "nowhere"]).is_err());
        assert!(Config::try_parse_from(["sluice-gateway", "--max-pipeline", "0"]).is_err());
        assert!(Config::try_parse_from(["sluice-gateway", "--max-connections", "0"]).is_err());
        assert!(Config::try_parse_from(["sluice-gateway", "--header-read-timeout-ms", "0"]).is_err());
        assert!(Config::try_parse_from(["sluice-gateway", "--max-header-bytes", "100"]).is_err());
        assert!(Config::try_parse_from(["sluice-gateway", "--max-concurrent-streams", "0"]).is_err());
        assert!(Config::try_parse_from(["sluice-gateway", "--redis-calls", "eval"]).is_err());
    }

    /// Below the most rules a config may have, a request meeting that many Redis rules (one
    /// call, never split) would be refused with 400 every time.
    #[test]
    fn max_pipeline_fits_a_request_of_every_rule() {
        let pipeline = |n: u64| Config::try_parse_from(["sluice-gateway", "--max-pipeline", &n.to_string()]);
        for refused in [63, 64, 127] {
            assert!(pipeline(refused).is_err(), "--max-pipeline {refused}");
        }
        assert_eq!(pipeline(128).map(|c| c.max_pipeline).ok(), Some(128));
        assert_eq!(pipeline(MIN_PIPELINE).map(|c| c.max_pipeline).ok(), Some(MIN_PIPELINE));
    }

    /// [`MIN_PIPELINE`] is the filter's own bound: a config of that many Redis rules compiles,
    /// one more does not.
    #[test]
    fn min_pipeline_is_the_filters_most_rules() {
        let config = |n: u64| {
            let rules: Vec<String> = (0..n).map(|i| format!(r#"{{"name":"r{i}","limit":"1/s","backend":"redis"}}"#)).collect();
            let json = format!(r#"{{"redis":{{"cluster":"gw"}},"rules":[{}]}}"#, rules.join(","));
            sluice::config::compile_json(json.as_bytes())
        };
        assert!(config(MIN_PIPELINE).is_ok());
        let too_many = config(MIN_PIPELINE + 1).unwrap_err().to_string();
        assert!(too_many.contains(&format!("at most {MIN_PIPELINE}")), "{too_many}");
    }
}
