//! HTTP side: routes, bearer-token check, body limits and deadline, status codes, graceful
//! shutdown. Connections themselves (cap, header and idle deadlines) are in `conn`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value as Json};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::backend::{redact, Backend, BackendError, Failure, Outcome};
use crate::body::{self, BodyError, Budget, Claim, HeldAnswer};
use crate::command::{self, parse_command, parse_pipeline, Command, RequestError, RunAs};
use crate::config::{Config, ListenError};
use crate::conn::{self, Limits, Stop};
use crate::health::{Finding, Health};
use crate::metrics::{ClientTimeout, Endpoint, Metrics, RedisErrorKind, BODY_UNREADABLE};
use crate::reply::{to_json, Encoding, ReplyError};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("--token is set but empty; unset it to run without authentication")]
    EmptyToken,
    #[error("--token has leading or trailing whitespace or a control character (a secret file's newline?); no client could ever present it")]
    UnmatchableToken,
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(
        "--max-body-bytes-in-flight ({in_flight}) is below --max-body-bytes ({body}): a body of the largest size \
         accepted could never be read"
    )]
    BudgetBelowBody { in_flight: u64, body: u64 },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
}

/// Everything a request needs; shared by all requests, never changed after start.
pub struct Gateway {
    backend: Backend,
    token: Option<Vec<u8>>,
    timeout: Duration,
    max_body: usize,
    bodies: Budget,
    max_pipeline: usize,
    body_timeout: Duration,
    limits: Limits,
    health: Health,
    metrics: Metrics,
}

impl Gateway {
    /// Builds the gateway from its configuration. Redis is not contacted yet.
    pub fn from_config(config: &Config) -> Result<Arc<Self>, GatewayError> {
        let timeout = config.timeout();
        let backend = if config.cluster_urls().is_empty() {
            Backend::standalone(&config.redis_url, timeout, config.redis_calls)?.batching(config.batch_calls)
        } else {
            Backend::cluster(&config.cluster_urls(), timeout, config.redis_calls)?.batching(config.batch_calls)
        };
        let token = match &config.token {
            Some(t) if t.is_empty() => return Err(GatewayError::EmptyToken),
            // A token is compared as the client's header carries it, trimmed and without
            // control bytes: one with them (a secret file's trailing newline) could never
            // match, and every call would fail into on_error with nothing said.
            Some(t) if t.trim_ascii() != t || t.bytes().any(|b| b.is_ascii_control()) => {
                return Err(GatewayError::UnmatchableToken)
            }
            Some(t) => Some(t.as_bytes().to_vec()),
            None => None,
        };
        let bodies = Budget::new(usize::try_from(config.max_body_bytes_in_flight).unwrap_or(usize::MAX));
        // Compared as the budget holds it (a 32-bit target caps a semaphore lower).
        if (bodies.total() as u64) < config.max_body_bytes {
            return Err(GatewayError::BudgetBelowBody { in_flight: bodies.total() as u64, body: config.max_body_bytes });
        }
        Ok(Arc::new(Gateway {
            backend,
            token,
            timeout,
            max_body: usize::try_from(config.max_body_bytes).unwrap_or(usize::MAX),
            bodies,
            max_pipeline: usize::try_from(config.max_pipeline).unwrap_or(usize::MAX),
            body_timeout: config.body_read_timeout(),
            limits: Limits {
                max_connections: usize::try_from(config.max_connections).unwrap_or(usize::MAX),
                header_read: config.header_read_timeout(),
                idle: config.idle_timeout(),
                max_header_bytes: usize::try_from(config.max_header_bytes).unwrap_or(usize::MAX),
                max_streams: config.max_concurrent_streams,
            },
            health: Health::new(config.health_cache()),
            metrics: Metrics::default(),
        }))
    }

    pub(crate) fn budget(&self) -> &Budget {
        &self.bodies
    }

    /// `response` on a connection with `out` answers out, holding its bytes of the budget until
    /// it is sent ([`HeldAnswer`]); when they
    /// would pass it, an empty 503 instead. Its work is done (a call ran, and counted): its
    /// proxy follows `on_error`, as for any answer it does not get.
    pub(crate) fn held(self: &Arc<Self>, out: &Arc<std::sync::atomic::AtomicU32>, response: Response) -> Response {
        match HeldAnswer::hold(self, out, response) {
            Some(held) => held,
            None => {
                // No body: a client that takes no answer would leave one here too, uncharged.
                self.metrics.body_budget_refusal();
                let mut response = Response::new(Body::empty());
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/", post(command_handler))
            .route("/pipeline", post(pipeline_handler))
            .route("/healthz", get(healthz_handler))
            .route("/metrics", get(metrics_handler))
            .fallback(not_found)
            .layer(middleware::from_fn_with_state(self.clone(), observe))
            .with_state(self.clone())
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets requests in flight finish
    /// and returns; if they take longer than `grace`, closes what is left and returns anyway.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
        grace: Duration,
    ) -> Result<(), GatewayError> {
        let cap = self.limits.max_connections;
        self.metrics.set_connections_max(cap as u64);
        // One permit per open connection; getting all of them back means all are closed.
        let slots = Arc::new(Semaphore::new(cap.min(Semaphore::MAX_PERMITS)));
        let (stop_tx, stop_rx) = watch::channel(Stop::Serve);
        tokio::spawn(self.clone().load_script_at_start());
        let server = Arc::new(conn::Server::new(self.clone(), self.router(), self.limits));
        tokio::select! {
            () = server.accept(listener, slots.clone(), stop_rx) => {}
            () = shutdown => {}
        }
        // The accept loop, and with it the listener, is gone: new connections are refused.
        log::info!("shutting down: no new connections; waiting for requests in flight");
        let _ = stop_tx.send(Stop::Drain);
        let all = u32::try_from(cap).unwrap_or(u32::MAX);
        if tokio::time::timeout(grace, slots.acquire_many(all)).await.is_err() {
            log::warn!("requests still in flight after {grace:?}; exiting anyway");
            let _ = stop_tx.send(Stop::Abort);
        }
        Ok(())
    }

    /// Loads the script or library so that the first calls find it (with `--redis-calls auto`,
    /// finding out which); best effort, each load bounded by `--timeout-ms`. A Redis that is
    /// down now gets it when a call first finds it missing (or, with `auto`, when a health probe
    /// finds Redis up).
    async fn load_script_at_start(self: Arc<Self>) {
        match self.backend.load_at_start(&self.metrics).await {
            Ok(RunAs::Fcall) => {
                log::info!("loaded sluice's function library into Redis: calls run as FCALL {}", command::function())
            }
            Ok(RunAs::Module) => {
                log::info!("Redis has sluice's module: calls run as {}", command::module_command())
            }
            Ok(RunAs::EvalSha) => {
                log::info!("loaded sluice's decision script into Redis: calls run as EVALSHA {}", command::sha())
            }
            Err(Failure::Reply(e) | Failure::Transport(e)) => {
                log::warn!("cannot load sluice's decision script at start ({e}); it is loaded when a call needs it")
            }
        }
    }

    /// Binds `config.listen` and serves (see [`Gateway::serve`]).
    pub async fn run(config: &Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), GatewayError> {
        config.check_listen()?;
        let mut config = config.clone();
        config.max_connections = conn::fit_open_files(config.max_connections);
        let config = &config;
        let gateway = Gateway::from_config(config)?;
        let listener =
            TcpListener::bind(config.listen).await.map_err(|source| GatewayError::Bind { addr: config.listen, source })?;
        let target = if gateway.backend.is_cluster() {
            let nodes: Vec<String> = config.cluster_urls().iter().map(|u| redact(u)).collect();
            format!("Redis Cluster {nodes:?}")
        } else {
            format!("Redis {}", redact(&config.redis_url))
        };
        log::info!(
            "sluice-gateway listening on {} for {target} (auth {}, at most {} connections), running sluice's script {} only",
            config.listen,
            if gateway.token.is_some() { "on" } else { "off" },
            config.max_connections,
            command::sha(),
        );
        gateway.serve(listener, shutdown, config.shutdown_grace()).await
    }

    /// `Authorization: Bearer <token>`, compared in constant time. The scheme is
    /// case-insensitive (RFC 9110); the token is not.
    pub(crate) fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        headers
            .get(AUTHORIZATION)
            .map(HeaderValue::as_bytes)
            .and_then(|v| {
                let (scheme, rest) = v.split_at_checked(7)?;
                scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii())
            })
            .is_some_and(|token| constant_time_eq(token, expected))
    }

    /// The common front of both command endpoints: auth, then the bounded body, which holds
    /// its share of the gateway's body budget until the claim is dropped.
    async fn admit(&self, headers: &HeaderMap, body: Body) -> Result<(Bytes, Claim<'_>), Rejection> {
        if !self.authorized(headers) {
            return Err(Rejection::Unauthorized);
        }
        // One deadline for the whole body, so a client cannot hold a handler by trickling it.
        match tokio::time::timeout(self.body_timeout, body::read(body, headers, self.max_body, &self.bodies)).await {
            Ok(Ok(read)) => Ok(read),
            Ok(Err(BodyError::TooLarge)) => Err(Rejection::TooLarge(self.max_body)),
            Ok(Err(BodyError::Busy)) => {
                self.metrics.body_budget_refusal();
                Err(Rejection::Busy(self.bodies.total()))
            }
            Ok(Err(BodyError::Read(msg))) => {
                self.metrics.refused(BODY_UNREADABLE);
                Err(Rejection::Unreadable(msg))
            }
            Err(_) => {
                self.metrics.client_timeout(ClientTimeout::Body);
                Err(Rejection::BodyTimeout(self.body_timeout))
            }
        }
    }

    fn count_commands(&self, cmds: &[Command]) {
        for c in cmds {
            self.metrics.command(c.kind());
        }
    }

    /// A body that is not calls of sluice's script: 400, nothing sent to Redis, counted.
    fn refuse(&self, e: &RequestError) -> Response {
        self.metrics.refused(e.reason());
        error_response(StatusCode::BAD_REQUEST, &format!("ERR sluice-gateway: {e}"))
    }

    fn timed_out(&self) -> Response {
        self.metrics.redis_error(RedisErrorKind::Timeout);
        self.health.invalidate();
        self.backend.timed_out();
        error_response(
            StatusCode::GATEWAY_TIMEOUT,
            &format!("ERR sluice-gateway: Redis did not answer within {} ms", self.timeout.as_millis()),
        )
    }

    /// One command's outcome as the client sees it, counted in the metrics.
    fn settle(&self, outcome: Outcome, enc: Encoding) -> Result<Json, Settled> {
        let error = match outcome {
            Ok(value) => match to_json(value, enc) {
                Ok(json) => return Ok(json),
                Err(ReplyError::Redis(text)) => Settled::Reply(text),
                Err(e) => Settled::Encoding(e.text()),
            },
            Err(Failure::Reply(text)) => Settled::Reply(text),
            Err(Failure::Transport(text)) => Settled::Transport(text),
        };
        self.metrics.redis_error(match error {
            Settled::Reply(_) => RedisErrorKind::Reply,
            Settled::Transport(_) => {
                self.health.invalidate();
                RedisErrorKind::Transport
            }
            Settled::Encoding(_) => RedisErrorKind::Encoding,
        });
        Err(error)
    }
}

/// A request refused before its body was parsed.
enum Rejection {
    Unauthorized,
    TooLarge(usize),
    Busy(usize),
    Unreadable(String),
    BodyTimeout(Duration),
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        match self {
            Rejection::Unauthorized => {
                let mut response = error_response(StatusCode::UNAUTHORIZED, "ERR sluice-gateway: missing or wrong bearer token");
                response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                response
            }
            Rejection::TooLarge(max) => {
                error_response(StatusCode::PAYLOAD_TOO_LARGE, &format!("ERR sluice-gateway: request body exceeds {max} bytes"))
            }
            Rejection::Busy(total) => {
                let mut response = error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "ERR sluice-gateway: this request would pass the {total} bytes that requests in flight may hold (--max-body-bytes-in-flight)"
                    ),
                );
                response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
                // The rest of the body may still come: an HTTP/1.1 connection cannot be reused
                // (on h2c the field is dropped and only the stream ends).
                response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
                response
            }
            Rejection::Unreadable(msg) => {
                error_response(StatusCode::BAD_REQUEST, &format!("ERR sluice-gateway: cannot read request body: {msg}"))
            }
            Rejection::BodyTimeout(allowed) => {
                let mut response = error_response(
                    StatusCode::REQUEST_TIMEOUT,
                    &format!("ERR sluice-gateway: request body not received within {} ms", allowed.as_millis()),
                );
                // The rest of the body may still come; the connection cannot be reused.
                response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
                response
            }
        }
    }
}

/// A command that produced no `result`.
enum Settled {
    Reply(String),
    Transport(String),
    /// The reply has no faithful JSON form (non-UTF-8 bytes without base64 asked for).
    Encoding(String),
}

impl Settled {
    fn text(&self) -> String {
        match self {
            Settled::Reply(text) => text.clone(),
            Settled::Transport(text) => format!("ERR sluice-gateway: Redis unavailable: {text}"),
            Settled::Encoding(text) => text.clone(),
        }
    }
}

async fn command_handler(State(gw): State<Arc<Gateway>>, request: Request) -> Response {
    // The request taken apart, not its headers extracted: that extractor copies them.
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let (bytes, _claim) = match gw.admit(headers, body).await {
        Ok(read) => read,
        Err(rejection) => return rejection.into_response(),
    };
    let cmd = match parse_command(&bytes) {
        Ok(c) => c,
        Err(e) => return gw.refuse(&e),
    };
    gw.count_commands(std::slice::from_ref(&cmd));
    let enc = encoding(headers);
    let Ok(outcome) = tokio::time::timeout(gw.timeout, gw.backend.run(&cmd, &gw.metrics)).await else {
        return gw.timed_out();
    };
    match gw.settle(outcome, enc) {
        Ok(result) => json_response(StatusCode::OK, &json!({ "result": result })),
        // Upstash answers a failed command with 400; a Redis that did not answer is the
        // upstream's fault, hence 502.
        Err(s @ (Settled::Reply(_) | Settled::Encoding(_))) => error_response(StatusCode::BAD_REQUEST, &s.text()),
        Err(s @ Settled::Transport(_)) => error_response(StatusCode::BAD_GATEWAY, &s.text()),
    }
}

async fn pipeline_handler(State(gw): State<Arc<Gateway>>, request: Request) -> Response {
    // The request taken apart, not its headers extracted: that extractor copies them.
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let (bytes, _claim) = match gw.admit(headers, body).await {
        Ok(read) => read,
        Err(rejection) => return rejection.into_response(),
    };
    let cmds = match parse_pipeline(&bytes, gw.max_pipeline) {
        Ok(c) => c,
        Err(e) => return gw.refuse(&e),
    };
    gw.count_commands(&cmds);
    let enc = encoding(headers);
    let Ok(outcomes) = tokio::time::timeout(gw.timeout, gw.backend.run_pipeline(&cmds, &gw.metrics)).await else {
        return gw.timed_out();
    };
    let mut entries = Vec::with_capacity(outcomes.len());
    let mut transport_failures = 0;
    let mut first_transport = None;
    for outcome in outcomes {
        entries.push(match gw.settle(outcome, enc) {
            Ok(result) => json!({ "result": result }),
            Err(s) => {
                if matches!(s, Settled::Transport(_)) {
                    transport_failures += 1;
                    first_transport.get_or_insert_with(|| s.text());
                }
                json!({ "error": s.text() })
            }
        });
    }
    // Nothing reached Redis: say so once, with the status a proxy expects, rather than as
    // a 200 full of identical errors.
    if transport_failures == entries.len() {
        if let Some(text) = first_transport {
            return error_response(StatusCode::BAD_GATEWAY, &text);
        }
    }
    json_response(StatusCode::OK, &Json::Array(entries))
}

async fn healthz_handler(State(gw): State<Arc<Gateway>>) -> Response {
    let report = gw.health.check(&gw.backend, gw.timeout, &gw.metrics).await;
    let age_ms = report.age.as_secs_f64() * 1000.0;
    let (status, body) = match report.finding {
        Finding::Up { latency_ms } => (
            StatusCode::OK,
            json!({
                "status": "ok",
                "redis": if gw.backend.is_cluster() { "cluster" } else { "standalone" },
                "script": command::sha(),
                "function": command::function(),
                "module_command": command::module_command(),
                "calls": gw.backend.runs_as().name(),
                "latency_ms": latency_ms,
                "age_ms": age_ms,
            }),
        ),
        Finding::Down(error) => {
            (StatusCode::SERVICE_UNAVAILABLE, json!({ "status": "unavailable", "error": error, "age_ms": age_ms }))
        }
    };
    json_response(status, &body)
}

async fn metrics_handler(State(gw): State<Arc<Gateway>>) -> Response {
    (
        StatusCode::OK,
        [(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))],
        gw.metrics.render_with(&gw.bodies, gw.backend.cluster_remakes()),
    )
        .into_response()
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "ERR sluice-gateway: no such endpoint; use POST /, POST /pipeline, GET /healthz or GET /metrics",
    )
}

/// Counts every response (including 401/404/405/413) with its latency.
async fn observe(State(gw): State<Arc<Gateway>>, request: Request, next: Next) -> Response {
    let endpoint = Endpoint::from_path(request.uri().path());
    let started = Instant::now();
    let _in_flight = gw.metrics.start_request();
    let response = next.run(request).await;
    gw.metrics.finish_request(endpoint, response.status().as_u16(), started.elapsed());
    response
}

fn encoding(headers: &HeaderMap) -> Encoding {
    Encoding::from_header(headers.get("upstash-encoding").map(HeaderValue::as_bytes))
}

fn error_response(status: StatusCode, text: &str) -> Response {
    json_response(status, &json!({ "error": text }))
}

fn json_response(status: StatusCode, body: &Json) -> Response {
    (status, [(CONTENT_TYPE, HeaderValue::from_static("application/json"))], body.to_string()).into_response()
}

/// Compares in time that depends only on the expected token's length, never on where the
/// first difference is.
fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(presented.len() != expected.len());
    for (i, &e) in expected.iter().enumerate() {
        let p = presented.get(i).copied().unwrap_or(!e);
        diff |= std::hint::black_box(p ^ e);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret2", b"secret"));
        assert!(!constant_time_eq(b"secre", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        // A presented byte that is missing must not compare equal to any expected byte.
        assert!(!constant_time_eq(b"secre", b"secre\xff"));
        assert!(!constant_time_eq(b"secre", b"secre\x00"));
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://:pw@h:6379/0"), "redis://***@h:6379/0");
        assert_eq!(redact("redis://u:p@w@h:1"), "redis://***@h:1");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact("redis+unix:///run/redis.sock?pass=S3cret"), "redis+unix:///run/redis.sock?***");
        assert_eq!(redact("rediss://:pw@h:1/0?protocol=resp3"), "rediss://***@h:1/0?***");
        let bad = Backend::standalone("redis://:S3cret@h:notaport", Duration::from_millis(10), crate::config::RedisCalls::Auto);
        let shown = bad.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(shown.contains("redis://***@h:notaport") && !shown.contains("S3cret"), "{shown}");
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[tokio::test]
    async fn a_body_budget_below_one_body_is_refused_at_start() {
        let parse = |args: &[&str]| <crate::config::Config as clap::Parser>::parse_from(["sluice-gateway"].iter().chain(args));
        let low = parse(&["--max-body-bytes", "4096", "--max-body-bytes-in-flight", "4095"]);
        let shown = Gateway::from_config(&low).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(shown.contains("--max-body-bytes-in-flight (4095) is below --max-body-bytes (4096)"), "{shown}");
        assert!(Gateway::from_config(&parse(&["--max-body-bytes", "4096", "--max-body-bytes-in-flight", "4096"])).is_ok());
    }

    #[tokio::test]
    async fn bearer_scheme() {
        let config = crate::config::Config {
            token: Some("t0k".into()),
            ..<crate::config::Config as clap::Parser>::parse_from(["sluice-gateway"])
        };
        let gw = Gateway::from_config(&config).unwrap();
        assert!(gw.authorized(&headers(&[("authorization", "Bearer t0k")])));
        assert!(gw.authorized(&headers(&[("authorization", "bearer  t0k ")])));
        for bad in ["Bearer t0K", "Basic t0k", "Bearer", "t0k", "Bearer t0k2"] {
            assert!(!gw.authorized(&headers(&[("authorization", bad)])), "{bad}");
        }
        assert!(!gw.authorized(&HeaderMap::new()));
        // A token no header can carry is refused at start, not by every request.
        for unmatchable in ["t0k\n", " t0k", "t0k\t", "t0\u{7f}k"] {
            let config = crate::config::Config { token: Some(unmatchable.into()), ..config.clone() };
            assert!(matches!(Gateway::from_config(&config), Err(GatewayError::UnmatchableToken)), "{unmatchable:?}");
        }
    }
}
