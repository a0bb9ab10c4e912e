//! Counters and latency histograms, exposed at `/metrics` in Prometheus' text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::body::Budget;
use crate::command::{CommandKind, RunAs, REASONS};

/// The reason a request whose body could not be read (a broken chunked encoding, a client gone
/// half-way) is refused for, beside the body's own (`command::REASONS`).
pub const BODY_UNREADABLE: &str = "body";

/// The endpoints, as they appear in the `endpoint` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    Command,
    Pipeline,
    Healthz,
    Metrics,
    Other,
}

impl Endpoint {
    const ALL: [Endpoint; 5] = [Endpoint::Command, Endpoint::Pipeline, Endpoint::Healthz, Endpoint::Metrics, Endpoint::Other];

    pub fn from_path(path: &str) -> Self {
        match path {
            "/" => Endpoint::Command,
            "/pipeline" => Endpoint::Pipeline,
            "/healthz" => Endpoint::Healthz,
            "/metrics" => Endpoint::Metrics,
            // Unknown paths share one label so scanners cannot grow the label set.
            _ => Endpoint::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Endpoint::Command => "/",
            Endpoint::Pipeline => "/pipeline",
            Endpoint::Healthz => "/healthz",
            Endpoint::Metrics => "/metrics",
            Endpoint::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Kinds of Redis trouble, as they appear in the `kind` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisErrorKind {
    /// Redis answered with an error reply (NOSCRIPT, a script's error, CLUSTERDOWN, …).
    Reply,
    /// No answer: connection refused or lost.
    Transport,
    /// No answer within `--timeout-ms`.
    Timeout,
    /// A reply with non-UTF-8 bytes that the client did not ask to receive as base64.
    Encoding,
}

impl RedisErrorKind {
    const ALL: [RedisErrorKind; 4] =
        [RedisErrorKind::Reply, RedisErrorKind::Transport, RedisErrorKind::Timeout, RedisErrorKind::Encoding];

    fn label(self) -> &'static str {
        match self {
            RedisErrorKind::Reply => "reply",
            RedisErrorKind::Transport => "transport",
            RedisErrorKind::Timeout => "timeout",
            RedisErrorKind::Encoding => "encoding",
        }
    }
}

/// What made the gateway load the decision script or library, as it appears in the `trigger`
/// label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadTrigger {
    /// The gateway started (or, with `--redis-calls auto`, a health probe first found Redis up).
    Start,
    /// A call met NOSCRIPT: Redis restarted, was flushed, or failed over to a node without it.
    /// (With `auto` before any load reached Redis, the library is tried first.)
    NoScript,
    /// A call met `ERR Function not found`: Redis restarted or its functions were flushed.
    NotFound,
}

impl LoadTrigger {
    const ALL: [LoadTrigger; 3] = [LoadTrigger::Start, LoadTrigger::NoScript, LoadTrigger::NotFound];

    fn label(self) -> &'static str {
        match self {
            LoadTrigger::Start => "start",
            LoadTrigger::NoScript => "noscript",
            LoadTrigger::NotFound => "not_found",
        }
    }
}

/// Which deadline a client missed, as it appears in the `phase` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientTimeout {
    /// Request line and headers not in within `--header-read-timeout-ms`; connection closed.
    Header,
    /// Body not in within `--body-read-timeout-ms`; answered 408, connection closed.
    Body,
    /// No request, or an answer not taken, within `--idle-timeout-ms` (within
    /// `--header-read-timeout-ms` on a connection that never showed the token); closed.
    Idle,
}

impl ClientTimeout {
    pub const ALL: [ClientTimeout; 3] = [ClientTimeout::Header, ClientTimeout::Body, ClientTimeout::Idle];

    fn label(self) -> &'static str {
        match self {
            ClientTimeout::Header => "header",
            ClientTimeout::Body => "body",
            ClientTimeout::Idle => "idle",
        }
    }
}

/// What a client connection speaks, as it appears in the `protocol` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge, without TLS.
    H2c,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Http1, Protocol::H2c];

    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
        }
    }
}

/// Upper bounds in seconds: from a loopback round trip to the longest timeout worth setting.
const BUCKETS: [f64; 14] = [0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Default)]
struct Histogram {
    /// Per bucket, not cumulative; the +Inf bucket is the last slot.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let slot = BUCKETS.iter().position(|&le| secs <= le).unwrap_or(BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct Metrics {
    /// Status codes are open-ended, so a small map; one uncontended lock per request.
    requests: Mutex<BTreeMap<(Endpoint, u16), u64>>,
    commands: [AtomicU64; CommandKind::ALL.len()],
    redis_errors: [AtomicU64; RedisErrorKind::ALL.len()],
    in_flight: AtomicI64,
    latency: [Histogram; Endpoint::ALL.len()],
    connections_open: AtomicI64,
    connections_max: AtomicU64,
    connections_accepted: AtomicU64,
    connections_refused: AtomicU64,
    connections_by_protocol: [AtomicU64; Protocol::ALL.len()],
    client_timeouts: [AtomicU64; ClientTimeout::ALL.len()],
    malformed: AtomicU64,
    health_probes: AtomicU64,
    /// By reason; the reasons are the gateway's own words, so the set stays small.
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// By trigger, then failed (0) or loaded (1).
    script_loads: [[AtomicU64; 2]; LoadTrigger::ALL.len()],
    library_loads: [[AtomicU64; 2]; LoadTrigger::ALL.len()],
    /// Calls sent to Redis, by how they ran.
    redis_calls: [AtomicU64; RunAs::ALL.len()],
    /// Calls run as `EVAL` of the script: found it missing again right after it was loaded.
    eval_calls: AtomicU64,
    /// FCALLs of the batch function sent, and the calls they carried.
    batches: AtomicU64,
    batched_calls: AtomicU64,
    /// Calls sent again after their answer was a redirect the client did not follow.
    redirect_retries: AtomicU64,
    /// Calls sent again after Redis answered `CLUSTERDOWN` (they ran nowhere).
    cluster_down_retries: AtomicU64,
    /// Requests answered 503 because they would pass the body budget.
    body_budget_refusals: AtomicU64,
}

/// Decrements the open-connections gauge when a connection's task ends, however it ends.
pub struct OpenConnection<'a>(&'a Metrics);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Decrements the in-flight gauge when a request ends, also when its client goes away and
/// the handler is dropped half-way.
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn start_request(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    pub fn finish_request(&self, endpoint: Endpoint, status: u16, elapsed: Duration) {
        {
            let mut requests = crate::lock(&self.requests);
            *requests.entry((endpoint, status)).or_insert(0) += 1;
        }
        self.latency[endpoint.index()].observe(elapsed);
    }

    pub fn set_connections_max(&self, max: u64) {
        self.connections_max.store(max, Ordering::Relaxed);
    }

    pub fn connection_opened(&self) -> OpenConnection<'_> {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self)
    }

    /// A connection's first bytes said which protocol it speaks.
    pub fn connection_protocol(&self, protocol: Protocol) {
        self.connections_by_protocol[protocol as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn client_timeout(&self, phase: ClientTimeout) {
        self.client_timeouts[phase as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn malformed_request(&self) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn health_probe(&self) {
        self.health_probes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn command(&self, kind: CommandKind) {
        self.commands[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn redis_error(&self, kind: RedisErrorKind) {
        self.redis_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A request refused before anything reached Redis (400), for `reason`: one of
    /// `command::REASONS`, or [`BODY_UNREADABLE`].
    pub fn refused(&self, reason: &'static str) {
        let mut refused = crate::lock(&self.refused);
        *refused.entry(reason).or_insert(0) += 1;
    }

    /// A `SCRIPT LOAD` (`EvalSha`) or `FUNCTION LOAD` (`Fcall`) of the gateway's.
    pub fn load(&self, what: RunAs, trigger: LoadTrigger, loaded: bool) {
        let loads = if what == RunAs::Fcall { &self.library_loads } else { &self.script_loads };
        loads[trigger as usize][usize::from(loaded)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn redis_calls(&self, run_as: RunAs, n: u64) {
        self.redis_calls[run_as as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// One FCALL of the batch function about to be sent, carrying `calls` calls.
    pub fn batch(&self, calls: u64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batched_calls.fetch_add(calls, Ordering::Relaxed);
    }

    /// A call sent again because its answer was a redirect (see `Backend::send`).
    pub fn redirect_retry(&self) {
        self.redirect_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// A call sent again because Redis answered `CLUSTERDOWN` (see `Backend::following`).
    pub fn cluster_down_retry(&self) {
        self.cluster_down_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// A request refused because it would pass `--max-body-bytes-in-flight`.
    pub fn body_budget_refusal(&self) {
        self.body_budget_refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// A call sent as `EVAL` of the gateway's own script (see `Backend::run`).
    pub fn eval_call(&self) {
        self.eval_calls.fetch_add(1, Ordering::Relaxed);
    }

    /// The text of `/metrics`; `bodies` is the gateway's body budget, whose gauge it reads.
    pub fn render(&self, bodies: &Budget) -> String {
        self.render_with(bodies, None)
    }

    /// [`Metrics::render`], with the Cluster connections the backend made afresh (`None` on a
    /// standalone Redis).
    pub fn render_with(&self, bodies: &Budget, cluster_remakes: Option<u64>) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail; the results are ignored for that reason.
        let _ = self.write_to(&mut out, bodies, cluster_remakes);
        out
    }

    fn write_to(&self, out: &mut String, bodies: &Budget, cluster_remakes: Option<u64>) -> std::fmt::Result {
        writeln!(out, "# HELP sluice_gateway_requests_total HTTP requests answered, by endpoint and status code.")?;
        writeln!(out, "# TYPE sluice_gateway_requests_total counter")?;
        let requests = crate::lock(&self.requests).clone();
        for ((endpoint, status), n) in requests {
            writeln!(out, "sluice_gateway_requests_total{{endpoint=\"{}\",status=\"{status}\"}} {n}", endpoint.label())?;
        }

        writeln!(
            out,
            "# HELP sluice_gateway_commands_total Calls of sluice's script accepted, by the command the client sent (all run alike: see sluice_gateway_redis_calls_total)."
        )?;
        writeln!(out, "# TYPE sluice_gateway_commands_total counter")?;
        for kind in CommandKind::ALL {
            writeln!(
                out,
                "sluice_gateway_commands_total{{command=\"{}\"}} {}",
                kind.name(),
                self.commands[kind.index()].load(Ordering::Relaxed)
            )?;
        }

        writeln!(out, "# HELP sluice_gateway_refused_total Requests refused with 400 before anything reached Redis, by reason.")?;
        writeln!(out, "# TYPE sluice_gateway_refused_total counter")?;
        let mut refused = crate::lock(&self.refused).clone();
        for reason in REASONS.into_iter().chain([BODY_UNREADABLE]) {
            refused.entry(reason).or_insert(0);
        }
        for (reason, n) in refused {
            writeln!(out, "sluice_gateway_refused_total{{reason=\"{reason}\"}} {n}")?;
        }

        for (name, help, loads, triggers) in [
            (
                "sluice_gateway_script_loads_total",
                "SCRIPT LOADs of sluice's script by the gateway, by trigger and outcome.",
                &self.script_loads,
                &LoadTrigger::ALL[..2],
            ),
            (
                "sluice_gateway_library_loads_total",
                "FUNCTION LOADs of sluice's function library by the gateway, by trigger and outcome.",
                &self.library_loads,
                &LoadTrigger::ALL[..],
            ),
        ] {
            writeln!(out, "# HELP {name} {help}")?;
            writeln!(out, "# TYPE {name} counter")?;
            for &trigger in triggers {
                for (outcome, i) in [("loaded", 1), ("failed", 0)] {
                    writeln!(
                        out,
                        "{name}{{trigger=\"{}\",outcome=\"{outcome}\"}} {}",
                        trigger.label(),
                        loads[trigger as usize][i].load(Ordering::Relaxed)
                    )?;
                }
            }
        }

        writeln!(out, "# HELP sluice_gateway_redis_calls_total Calls of sluice's decision sent to Redis, by how they ran: EVALSHA, FCALL, MODULE (the native module's command) or EVAL (reruns after a load included; a batch is one call).")?;
        writeln!(out, "# TYPE sluice_gateway_redis_calls_total counter")?;
        for run_as in RunAs::ALL {
            writeln!(
                out,
                "sluice_gateway_redis_calls_total{{command=\"{}\"}} {}",
                run_as.name(),
                self.redis_calls[run_as as usize].load(Ordering::Relaxed)
            )?;
        }
        writeln!(out, "sluice_gateway_redis_calls_total{{command=\"EVAL\"}} {}", self.eval_calls.load(Ordering::Relaxed))?;
        writeln!(out, "# HELP sluice_gateway_redis_batches_total FCALLs of the batch function sent to Redis (reruns after a load included), each deciding several calls.")?;
        writeln!(out, "# TYPE sluice_gateway_redis_batches_total counter")?;
        writeln!(out, "sluice_gateway_redis_batches_total {}", self.batches.load(Ordering::Relaxed))?;
        writeln!(out, "# HELP sluice_gateway_batched_calls_total Calls of sluice's script sent to Redis inside a batch.")?;
        writeln!(out, "# TYPE sluice_gateway_batched_calls_total counter")?;
        writeln!(out, "sluice_gateway_batched_calls_total {}", self.batched_calls.load(Ordering::Relaxed))?;
        writeln!(out, "# HELP sluice_gateway_redirect_retries_total Calls whose answer was a Cluster redirect the client lost (they ran nowhere), sent again.")?;
        writeln!(out, "# TYPE sluice_gateway_redirect_retries_total counter")?;
        writeln!(out, "sluice_gateway_redirect_retries_total {}", self.redirect_retries.load(Ordering::Relaxed))?;
        writeln!(out, "# HELP sluice_gateway_cluster_down_retries_total Calls Redis answered CLUSTERDOWN (they ran nowhere), sent again within half the timeout.")?;
        writeln!(out, "# TYPE sluice_gateway_cluster_down_retries_total counter")?;
        writeln!(out, "sluice_gateway_cluster_down_retries_total {}", self.cluster_down_retries.load(Ordering::Relaxed))?;
        if let Some(n) = cluster_remakes {
            writeln!(out, "# HELP sluice_gateway_cluster_reconnects_total Times requests kept running out of --timeout-ms and a Cluster connection was made afresh, to learn the topology from the nodes that answer.")?;
            writeln!(out, "# TYPE sluice_gateway_cluster_reconnects_total counter")?;
            writeln!(out, "sluice_gateway_cluster_reconnects_total {n}")?;
        }

        writeln!(out, "# HELP sluice_gateway_redis_errors_total Commands or requests that got no result from Redis, by kind.")?;
        writeln!(out, "# TYPE sluice_gateway_redis_errors_total counter")?;
        for kind in RedisErrorKind::ALL {
            writeln!(
                out,
                "sluice_gateway_redis_errors_total{{kind=\"{}\"}} {}",
                kind.label(),
                self.redis_errors[kind as usize].load(Ordering::Relaxed)
            )?;
        }

        writeln!(out, "# HELP sluice_gateway_requests_in_flight HTTP requests being handled now.")?;
        writeln!(out, "# TYPE sluice_gateway_requests_in_flight gauge")?;
        writeln!(out, "sluice_gateway_requests_in_flight {}", self.in_flight.load(Ordering::Relaxed))?;
        writeln!(
            out,
            "# HELP sluice_gateway_body_bytes_held Bytes of request headers and bodies held now (being read, or their calls running), and of answers not yet sent (but each connection's first)."
        )?;
        writeln!(out, "# TYPE sluice_gateway_body_bytes_held gauge")?;
        writeln!(out, "sluice_gateway_body_bytes_held {}", bodies.held())?;
        writeln!(
            out,
            "# HELP sluice_gateway_body_bytes_max Most bytes of request headers and bodies held at once (--max-body-bytes-in-flight)."
        )?;
        writeln!(out, "# TYPE sluice_gateway_body_bytes_max gauge")?;
        writeln!(out, "sluice_gateway_body_bytes_max {}", bodies.total())?;
        writeln!(out, "# HELP sluice_gateway_body_budget_refusals_total Requests answered 503 because they would pass --max-body-bytes-in-flight.")?;
        writeln!(out, "# TYPE sluice_gateway_body_budget_refusals_total counter")?;
        writeln!(out, "sluice_gateway_body_budget_refusals_total {}", self.body_budget_refusals.load(Ordering::Relaxed))?;

        writeln!(out, "# HELP sluice_gateway_connections_open Client connections open now.")?;
        writeln!(out, "# TYPE sluice_gateway_connections_open gauge")?;
        writeln!(out, "sluice_gateway_connections_open {}", self.connections_open.load(Ordering::Relaxed))?;
        writeln!(out, "# HELP sluice_gateway_connections_max Most client connections open at once (--max-connections, after the open-file limit).")?;
        writeln!(out, "# TYPE sluice_gateway_connections_max gauge")?;
        writeln!(out, "sluice_gateway_connections_max {}", self.connections_max.load(Ordering::Relaxed))?;
        for (name, help, value) in [
            ("sluice_gateway_connections_accepted_total", "Client connections accepted and served.", &self.connections_accepted),
            (
                "sluice_gateway_connections_refused_total",
                "Client connections closed at once because --max-connections were open.",
                &self.connections_refused,
            ),
            (
                "sluice_gateway_malformed_requests_total",
                "HTTP/1.1 requests refused before routing: bad syntax, or headers over --max-header-bytes (431). An h2c header block over it is answered 431 by the HTTP/2 library and not counted.",
                &self.malformed,
            ),
            ("sluice_gateway_health_probes_total", "PINGs sent to Redis to answer GET /healthz.", &self.health_probes),
        ] {
            writeln!(out, "# HELP {name} {help}")?;
            writeln!(out, "# TYPE {name} counter")?;
            writeln!(out, "{name} {}", value.load(Ordering::Relaxed))?;
        }

        writeln!(out, "# HELP sluice_gateway_connections_protocol_total Client connections by the protocol their first bytes spoke (http1, or h2c: HTTP/2 with prior knowledge).")?;
        writeln!(out, "# TYPE sluice_gateway_connections_protocol_total counter")?;
        for protocol in Protocol::ALL {
            writeln!(
                out,
                "sluice_gateway_connections_protocol_total{{protocol=\"{}\"}} {}",
                protocol.label(),
                self.connections_by_protocol[protocol as usize].load(Ordering::Relaxed)
            )?;
        }

        writeln!(out, "# HELP sluice_gateway_client_timeouts_total Connections closed because a client was too slow, by what it was slow at.")?;
        writeln!(out, "# TYPE sluice_gateway_client_timeouts_total counter")?;
        for phase in ClientTimeout::ALL {
            writeln!(
                out,
                "sluice_gateway_client_timeouts_total{{phase=\"{}\"}} {}",
                phase.label(),
                self.client_timeouts[phase as usize].load(Ordering::Relaxed)
            )?;
        }

        writeln!(out, "# HELP sluice_gateway_request_duration_seconds Time from request to response, by endpoint.")?;
        writeln!(out, "# TYPE sluice_gateway_request_duration_seconds histogram")?;
        for endpoint in Endpoint::ALL {
            let h = &self.latency[endpoint.index()];
            let label = endpoint.label();
            let mut cumulative = 0u64;
            for (i, le) in BUCKETS.iter().enumerate() {
                cumulative += h.buckets[i].load(Ordering::Relaxed);
                writeln!(out, "sluice_gateway_request_duration_seconds_bucket{{endpoint=\"{label}\",le=\"{le}\"}} {cumulative}")?;
            }
            cumulative += h.buckets[BUCKETS.len()].load(Ordering::Relaxed);
            writeln!(out, "sluice_gateway_request_duration_seconds_bucket{{endpoint=\"{label}\",le=\"+Inf\"}} {cumulative}")?;
            let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            writeln!(out, "sluice_gateway_request_duration_seconds_sum{{endpoint=\"{label}\"}} {sum}")?;
            writeln!(
                out,
                "sluice_gateway_request_duration_seconds_count{{endpoint=\"{label}\"}} {}",
                h.count.load(Ordering::Relaxed)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_value(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
            .and_then(|l| l[prefix.len()..].trim().parse().ok())
    }

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let m = Metrics::default();
        {
            let _g = m.start_request();
            assert!(m.render(&Budget::new(0)).contains("sluice_gateway_requests_in_flight 1\n"));
        }
        m.finish_request(Endpoint::Pipeline, 200, Duration::from_micros(300));
        m.finish_request(Endpoint::Pipeline, 200, Duration::from_millis(30));
        m.finish_request(Endpoint::Pipeline, 504, Duration::from_secs(10));
        m.command(CommandKind::EvalSha);
        m.redis_error(RedisErrorKind::Timeout);
        m.refused("script");
        m.refused("script");
        m.load(RunAs::EvalSha, LoadTrigger::NoScript, true);
        m.load(RunAs::EvalSha, LoadTrigger::Start, false);
        m.load(RunAs::Fcall, LoadTrigger::NotFound, true);
        m.redis_calls(RunAs::Fcall, 3);
        let text = m.render(&Budget::new(0));
        let get = |p: &str| line_value(&text, p);
        assert_eq!(get("sluice_gateway_requests_in_flight"), Some(0.0));
        assert_eq!(get(r#"sluice_gateway_requests_total{endpoint="/pipeline",status="200"}"#), Some(2.0));
        assert_eq!(get(r#"sluice_gateway_requests_total{endpoint="/pipeline",status="504"}"#), Some(1.0));
        assert_eq!(get(r#"sluice_gateway_commands_total{command="EVALSHA"}"#), Some(1.0));
        assert_eq!(get(r#"sluice_gateway_commands_total{command="EVAL"}"#), Some(0.0));
        assert_eq!(get(r#"sluice_gateway_redis_errors_total{kind="timeout"}"#), Some(1.0));
        assert_eq!(get(r#"sluice_gateway_refused_total{reason="script"}"#), Some(2.0));
        assert_eq!(get(r#"sluice_gateway_refused_total{reason="command"}"#), Some(0.0), "every reason is shown from the start");
        assert_eq!(get(r#"sluice_gateway_refused_total{reason="body"}"#), Some(0.0));
        assert_eq!(get(r#"sluice_gateway_script_loads_total{trigger="noscript",outcome="loaded"}"#), Some(1.0));
        assert_eq!(get(r#"sluice_gateway_script_loads_total{trigger="start",outcome="failed"}"#), Some(1.0));
        assert_eq!(get(r#"sluice_gateway_script_loads_total{trigger="start",outcome="loaded"}"#), Some(0.0));
        assert_eq!(get(r#"sluice_gateway_script_loads_total{trigger="not_found",outcome="loaded"}"#), None, "scripts are not");
        assert_eq!(get(r#"sluice_gateway_library_loads_total{trigger="not_found",outcome="loaded"}"#), Some(1.0));
        assert_eq!(get(r#"sluice_gateway_library_loads_total{trigger="noscript",outcome="loaded"}"#), Some(0.0));
        assert_eq!(get(r#"sluice_gateway_redis_calls_total{command="FCALL"}"#), Some(3.0));
        assert_eq!(get(r#"sluice_gateway_redis_calls_total{command="EVALSHA"}"#), Some(0.0));
        assert_eq!(get(r#"sluice_gateway_redis_calls_total{command="EVAL"}"#), Some(0.0));
        m.eval_call();
        assert_eq!(line_value(&m.render(&Budget::new(0)), r#"sluice_gateway_redis_calls_total{command="EVAL"}"#), Some(1.0));
        let b = |le: &str| get(&format!(r#"sluice_gateway_request_duration_seconds_bucket{{endpoint="/pipeline",le="{le}"}}"#));
        assert_eq!(b("0.00025"), Some(0.0));
        assert_eq!(b("0.0005"), Some(1.0));
        assert_eq!(b("0.05"), Some(2.0));
        assert_eq!(b("5"), Some(2.0));
        assert_eq!(b("+Inf"), Some(3.0));
        assert_eq!(get(r#"sluice_gateway_request_duration_seconds_count{endpoint="/pipeline"}"#), Some(3.0));
        let sum = get(r#"sluice_gateway_request_duration_seconds_sum{endpoint="/pipeline"}"#).unwrap();
        assert!((sum - 10.0303).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn connection_counters() {
        let m = Metrics::default();
        m.set_connections_max(3);
        {
            let _a = m.connection_opened();
            let _b = m.connection_opened();
            m.connection_refused();
            assert_eq!(line_value(&m.render(&Budget::new(0)), "sluice_gateway_connections_open"), Some(2.0));
        }
        m.client_timeout(ClientTimeout::Body);
        m.connection_protocol(Protocol::H2c);
        m.malformed_request();
        m.health_probe();
        let text = m.render(&Budget::new(0));
        let get = |p: &str| line_value(&text, p);
        assert_eq!(get("sluice_gateway_connections_open"), Some(0.0));
        assert_eq!(get("sluice_gateway_connections_max"), Some(3.0));
        assert_eq!(get("sluice_gateway_connections_accepted_total"), Some(2.0));
        assert_eq!(get("sluice_gateway_connections_refused_total"), Some(1.0));
        assert_eq!(get("sluice_gateway_malformed_requests_total"), Some(1.0));
        assert_eq!(get("sluice_gateway_health_probes_total"), Some(1.0));
        assert_eq!(get(r#"sluice_gateway_client_timeouts_total{phase="body"}"#), Some(1.0));
        assert_eq!(get(r#"sluice_gateway_client_timeouts_total{phase="header"}"#), Some(0.0));
        assert_eq!(get(r#"sluice_gateway_connections_protocol_total{protocol="h2c"}"#), Some(1.0));
        assert_eq!(get(r#"sluice_gateway_connections_protocol_total{protocol="http1"}"#), Some(0.0));
    }
}
