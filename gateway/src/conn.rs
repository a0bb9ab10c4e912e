//! Client connections: the accept loop and its cap, which protocol a connection speaks
//! (HTTP/1.1 or h2c), the deadlines each connection lives under (headers, idle keep-alive, an
//! answer the client does not take), the drain on shutdown, and the open-file limit the cap
//! needs.
//!
//! `axum::serve` has none of these bounds, so connections are served here with hyper directly.
//! The body deadline is not here: it belongs to the handlers, which read the body.
//!
//! **Protocol.** Both HTTP/1.1 and HTTP/2 with prior knowledge (h2c, what Envoy speaks to a
//! cluster with `http2_protocol_options`) are served on the one port. The first bytes decide:
//! the HTTP/2 connection preface (`PRI * HTTP/2.0…`, 24 bytes) means h2c, anything else that
//! differs from it is HTTP/1.1 (a request line differs at its first or second byte). They are
//! read under the head deadline and handed back to hyper. On h2c, each stream is one request
//! and the same bounds hold per stream (body size and deadline, in the handlers); the
//! connection adds `--max-concurrent-streams` (more are refused with `REFUSED_STREAM`) and a
//! header list limit of `--max-header-bytes` (a larger block is answered 431 on its stream).
//!
//! A connection is always in one of three phases, and the phase decides its deadline:
//!
//! | phase | from | deadline |
//! |---|---|---|
//! | head | the connection's opening, or the first byte of a later request (HTTP/1.1) | `--header-read-timeout-ms` |
//! | busy | headers parsed, until the handler returns (h2c: while any stream's handler runs) | none: the handler bounds itself (body and Redis timeouts) |
//! | idle | the last handler returned; restarted by every byte of the answer written | `--idle-timeout-ms` once a request showed the token, else `--header-read-timeout-ms` |
//!
//! A connection none of whose requests showed the token is also closed after its answers (see
//! `Clock::trust`), so that requests that need no token (health, metrics) or are refused 401
//! cannot keep connections open and fill the cap: proxies' connections would be refused.
//!
//! The socket wrapper only records bytes moving (on HTTP/1.1 a request's first byte starts its
//! head phase; an answer's bytes restart the idle clock). On h2c a byte read says nothing (it
//! may be a `WINDOW_UPDATE` or a `PING`), so after the first request an h2c connection
//! without a request in progress lives until its idle deadline, whatever else it sends. The
//! deadline itself is kept by the connection's task, which races the hyper connection against
//! a timer: hyper polls the socket on no schedule a timer could rely on (after an answer it may
//! wait for the socket to wake it without reading, so a timer armed in a read would never be).
//!
//! hyper's own `header_read_timeout` is not used: it also runs while a keep-alive connection
//! waits for its next request, so it would close a client's idle pooled connections as soon as
//! the (short) header deadline passed. HTTP/2 keep-alive `PING`s are not sent either: an idle
//! pooled connection is the client's to keep until the idle deadline, and a `PING`'s bytes
//! would restart that deadline for ever.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::header::CONNECTION;
use axum::http::HeaderValue;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt as _;

use crate::metrics::{ClientTimeout, Metrics, Protocol};

/// The bounds connections are served under.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read: Duration,
    pub idle: Duration,
    pub max_header_bytes: usize,
    /// Requests in progress at once on one h2c connection.
    pub max_streams: u32,
}

/// What the connections are told to do, through one watch channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Serve,
    /// Finish the request in progress, if any, then close.
    Drain,
    /// Close now: the shutdown grace is over.
    Abort,
}

/// Written to a connection refused at the cap, before it is closed. Best effort: a client that
/// has already sent its request may see the connection reset instead.
const AT_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
content-length: 63\r\n\
connection: close\r\n\
\r\n\
{\"error\":\"ERR sluice-gateway: too many connections, try later\"}";

/// File descriptors kept for everything but client connections: Redis connections (one per
/// Cluster node and then some), the listener, stdio, the runtime's own.
const RESERVED_FDS: u64 = 128;

/// The most an HTTP/1.1 connection reads into its buffer at once, unless a head may be larger
/// (the allocation may be up to twice this).
const MAX_READ_BUFFER: usize = 64 * 1024;

/// What a client sends first on an h2c connection (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Everything a connection task needs, built once.
pub struct Server {
    router: Router,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    limits: Limits,
    gateway: Arc<crate::Gateway>,
}

/// How a connection ended.
enum Ended {
    /// hyper finished it: the client closed, or it failed.
    Served(Result<(), hyper::Error>),
    /// A deadline passed (recorded in the clock).
    Deadline,
    /// The shutdown grace is over, or the server is gone.
    Aborted,
}

impl Server {
    pub fn new(gateway: Arc<crate::Gateway>, router: Router, limits: Limits) -> Self {
        let mut http1 = http1::Builder::new();
        // hyper's read buffer grows to some 400 KB by default while a large body streams in, and
        // keeps that allocation for the connection's life: a body needs no more than a few
        // reads' worth, a head must fit whole.
        let read_buffer = (limits.max_header_bytes + 8 * 1024).max(MAX_READ_BUFFER);
        http1.header_read_timeout(None).max_header_size(limits.max_header_bytes).max_buf_size(read_buffer).keep_alive(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .max_concurrent_streams(limits.max_streams)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            // See the module's notes: no PINGs of ours.
            .keep_alive_interval(None);
        Server { router, http1, http2, limits, gateway }
    }

    fn metrics(&self) -> &Metrics {
        self.gateway.metrics()
    }

    /// Accepts connections until the future is dropped; each one that fits under the cap is
    /// served on its own task, holding one of `slots` until it closes.
    pub async fn accept(self: Arc<Self>, listener: TcpListener, slots: Arc<Semaphore>, stop: watch::Receiver<Stop>) {
        // Refusals and accept errors come in bursts; one line per burst is enough.
        let mut last_refusal_log: Option<Instant> = None;
        let mut last_error_log: Option<Instant> = None;
        let quiet = Duration::from_secs(10);
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) if per_connection(&e) => continue,
                Err(e) => {
                    if last_error_log.is_none_or(|t| t.elapsed() >= quiet) {
                        log::warn!("accepting connections failed: {e}; retrying");
                        last_error_log = Some(Instant::now());
                    }
                    // Out of file descriptors or memory: retrying at once would spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    // Answers are small and written whole; Nagle would only delay them.
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(self.clone().serve(stream, slot, stop.clone()));
                }
                Err(_) => {
                    self.metrics().connection_refused();
                    // A fresh socket's send buffer is empty, so this write never waits.
                    let _ = stream.try_write(AT_CAPACITY);
                    drop(stream);
                    if last_refusal_log.is_none_or(|t| t.elapsed() >= quiet) {
                        log::warn!("{} connections open (--max-connections): refusing new ones", self.limits.max_connections);
                        last_refusal_log = Some(Instant::now());
                    }
                }
            }
        }
    }

    async fn serve(self: Arc<Self>, mut stream: TcpStream, _slot: OwnedSemaphorePermit, mut stop: watch::Receiver<Stop>) {
        let _open = self.metrics().connection_opened();
        let clock = Arc::new(Clock::new());
        // The first bytes say which protocol; they must come within the head deadline.
        let first = tokio::select! {
            first = First::read(&mut stream) => first,
            () = until(clock.deadline(&self.limits).map(|(at, _)| at)) => {
                clock.miss(ClientTimeout::Header);
                self.classify(&Ended::Deadline, &clock);
                return;
            }
            // Nothing was asked yet: nothing to finish before closing.
            _ = stop.changed() => return,
        };
        // Closed (or failed) before a byte of a request: nothing to answer or count.
        let Ok(Some(first)) = first else { return };
        let protocol = first.protocol();
        self.metrics().connection_protocol(protocol);
        let io = TokioIo::new(Guarded { stream, clock: clock.clone(), first, protocol });
        let router = self.router.clone();
        let service_clock = clock.clone();
        let gateway = self.gateway.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let busy = Busy::enter(service_clock.clone());
            if !service_clock.trusted() && gateway.authorized(request.headers()) {
                service_clock.trust();
            }
            // On h2c a client without the token gets one stream answered; the rest of its
            // streams get an empty 503. Answers a client does not take stay in memory (one
            // /metrics is some 12 KB), and one connection could open a hundred streams at once.
            let one_too_many = protocol == Protocol::H2c
                && !service_clock.trusted()
                && service_clock.untrusted_streams.fetch_add(1, Ordering::Relaxed) > 0;
            let router = router.clone();
            let clock = service_clock.clone();
            let gateway = gateway.clone();
            async move {
                let _busy = busy;
                if one_too_many {
                    let mut refused = axum::response::Response::new(Body::empty());
                    *refused.status_mut() = axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    return Ok(refused);
                }
                let mut answer = router.oneshot(request.map(Body::new)).await;
                if !clock.trusted() {
                    match (protocol, &mut answer) {
                        (Protocol::Http1, Ok(response)) => {
                            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
                        }
                        _ => clock.close_after_answers(),
                    }
                }
                answer.map(|response| gateway.held(&clock.answers_out, response))
            }
        });
        match protocol {
            Protocol::Http1 => {
                let conn = self.http1.serve_connection(io, service);
                tokio::pin!(conn);
                self.drive(conn, |c| c.graceful_shutdown(), &clock, &mut stop).await;
            }
            Protocol::H2c => {
                let conn = self.http2.serve_connection(io, service);
                tokio::pin!(conn);
                self.drive(conn, |c| c.graceful_shutdown(), &clock, &mut stop).await;
            }
        }
    }

    /// Runs a hyper connection until it ends, a deadline passes or the server stops it, and
    /// counts how it ended while the socket is still open (a client that saw it close finds
    /// it counted).
    async fn drive<C>(
        &self,
        conn: Pin<&mut C>,
        graceful_shutdown: fn(Pin<&mut C>),
        clock: &Clock,
        stop: &mut watch::Receiver<Stop>,
    ) where
        C: std::future::Future<Output = Result<(), hyper::Error>>,
    {
        let ended = self.run(conn, graceful_shutdown, clock, stop).await;
        self.classify(&ended, clock);
    }

    async fn run<C>(
        &self,
        mut conn: Pin<&mut C>,
        graceful_shutdown: fn(Pin<&mut C>),
        clock: &Clock,
        stop: &mut watch::Receiver<Stop>,
    ) -> Ended
    where
        C: std::future::Future<Output = Result<(), hyper::Error>>,
    {
        let mut shutting = false;
        loop {
            // Registered before the deadline is read, so that no phase change is missed.
            let changed = clock.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // A proxy's request may have shown the token since: its connection stays.
            if !shutting && clock.closing.load(Ordering::Relaxed) && !clock.trusted() {
                graceful_shutdown(conn.as_mut());
                shutting = true;
            }
            let deadline = clock.deadline(&self.limits);
            tokio::select! {
                result = conn.as_mut() => return Ended::Served(result),
                () = until(deadline.map(|(at, _)| at)) => {
                    // The deadline may have moved while the timer ran (bytes of an answer
                    // taken); only one still passed closes the connection.
                    if let Some((at, phase)) = clock.deadline(&self.limits) {
                        if Instant::now() >= at {
                            clock.miss(phase);
                            return Ended::Deadline;
                        }
                    }
                }
                () = &mut changed => {}
                changed = stop.changed() => {
                    let order = *stop.borrow_and_update();
                    match (changed, order) {
                        (Ok(()), Stop::Serve) => {}
                        (Ok(()), Stop::Drain) if !shutting => {
                            graceful_shutdown(conn.as_mut());
                            shutting = true;
                        }
                        (Ok(()), Stop::Drain) => {}
                        // Aborted, or the server is gone: nothing will wait for this any more.
                        _ => return Ended::Aborted,
                    }
                }
            }
        }
    }

    /// Counts how a connection ended.
    fn classify(&self, ended: &Ended, clock: &Clock) {
        if let Some(phase) = clock.missed() {
            self.metrics().client_timeout(phase);
            log::debug!("closed a connection: {phase:?} deadline passed");
        } else if let Ended::Served(Err(e)) = ended {
            if e.is_parse() || e.is_parse_too_large() {
                self.metrics().malformed_request();
                log::debug!("refused a malformed request: {e}");
            } else {
                log::debug!("connection ended: {e}");
            }
        }
    }
}

/// Resolves at `at`, or never.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Errors a single failed connection attempt can cause; the listener itself is fine.
fn per_connection(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset)
}

/// The bytes read to tell the protocol, handed back to hyper before the socket's.
struct First {
    bytes: [u8; H2_PREFACE.len()],
    /// Read so far, and handed back so far.
    len: usize,
    given: usize,
}

impl First {
    /// Reads until the bytes differ from the HTTP/2 preface (HTTP/1.1) or are all of it
    /// (h2c); `None` when the client closes first. Never more than the preface's 24 bytes.
    async fn read(stream: &mut TcpStream) -> io::Result<Option<First>> {
        let mut first = First { bytes: [0; H2_PREFACE.len()], len: 0, given: 0 };
        loop {
            let n = stream.read(&mut first.bytes[first.len..]).await?;
            if n == 0 {
                return Ok(None);
            }
            first.len += n;
            if first.bytes[..first.len] != H2_PREFACE[..first.len] || first.len == H2_PREFACE.len() {
                return Ok(Some(first));
            }
        }
    }

    fn protocol(&self) -> Protocol {
        if self.bytes[..self.len] == H2_PREFACE[..] {
            Protocol::H2c
        } else {
            Protocol::Http1
        }
    }

    /// Copies what is left of them into `buf`; false when none was left.
    fn give(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let left = &self.bytes[self.given..self.len];
        if left.is_empty() {
            return false;
        }
        let n = left.len().min(buf.remaining());
        buf.put_slice(&left[..n]);
        self.given += n;
        true
    }
}

const HEAD: u8 = 0;
const IDLE: u8 = 1;

/// A connection's phase and when it began; shared by the socket wrapper, the service and the
/// connection's task (and, on h2c, the tasks that run its streams' handlers).
///
/// Busy is not a stored phase but `active > 0`, so that streams starting and ending in any
/// order on h2c cannot leave it wrong: the stored phase (head or idle) only counts while no
/// handler runs.
struct Clock {
    opened: Instant,
    phase: AtomicU8,
    /// Handlers running now: at most one on HTTP/1.1, up to `--max-concurrent-streams` on h2c.
    active: AtomicU32,
    /// Milliseconds from `opened` to the start of the current phase's deadline.
    since_ms: AtomicU64,
    /// The deadline that closed the connection: 0 none, else 1 + `ClientTimeout as u8`.
    missed: AtomicU8,
    /// A request on it carried the token (or none is required): see [`Clock::trust`].
    trusted: AtomicBool,
    /// An h2c connection not trusted has had an answer: it takes no more streams.
    closing: AtomicBool,
    /// Streams begun on an h2c connection while it was not trusted.
    untrusted_streams: AtomicU32,
    /// Answers made and not yet sent whole (`crate::body::HeldAnswer`).
    answers_out: Arc<AtomicU32>,
    /// Told when the phase changes, so that the connection's task re-reads the deadline.
    changed: Notify,
}

impl Clock {
    fn new() -> Self {
        Clock {
            opened: Instant::now(),
            phase: AtomicU8::new(HEAD),
            active: AtomicU32::new(0),
            since_ms: AtomicU64::new(0),
            missed: AtomicU8::new(0),
            trusted: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            untrusted_streams: AtomicU32::new(0),
            answers_out: Arc::default(),
            changed: Notify::new(),
        }
    }

    fn trusted(&self) -> bool {
        self.trusted.load(Ordering::Relaxed)
    }

    /// A request carried the token: the connection is a proxy's, and may stay open between
    /// requests up to the idle deadline. Until then a connection holds its place only while it
    /// is being answered: a client without the token (a health probe, a scraper, or someone
    /// filling the connection cap with cheap requests) is closed after each answer (HTTP/1.1:
    /// `Connection: close`; h2c: `GOAWAY` once its first answer is made, streams already
    /// begun still answered, the first in full, the others with an empty 503), and idle, it
    /// has the header deadline instead of the idle one.
    fn trust(&self) {
        self.trusted.store(true, Ordering::Relaxed);
        self.changed.notify_one();
    }

    fn close_after_answers(&self) {
        if !self.closing.swap(true, Ordering::Relaxed) {
            self.changed.notify_one();
        }
    }

    fn miss(&self, phase: ClientTimeout) {
        self.missed.store(1 + phase as u8, Ordering::Relaxed);
    }

    fn missed(&self) -> Option<ClientTimeout> {
        match self.missed.load(Ordering::Relaxed) {
            0 => None,
            n => ClientTimeout::ALL.get(usize::from(n - 1)).copied(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn enter(&self, phase: u8) {
        self.since_ms.store(self.now_ms(), Ordering::Relaxed);
        self.phase.store(phase, Ordering::Relaxed);
        self.changed.notify_one();
    }

    fn idle(&self) -> bool {
        self.active.load(Ordering::Relaxed) == 0 && self.phase.load(Ordering::Relaxed) == IDLE
    }

    /// A byte of an HTTP/1.1 request arrived: on an idle connection, a new request has begun.
    fn bytes_read(&self) {
        if self.idle() {
            self.enter(HEAD);
        }
    }

    /// A byte of an HTTP/1.1 answer left: the client is taking it, so the idle deadline
    /// restarts. (Only ever later: the task's timer finds it moved when it fires, and sleeps
    /// on.) Not on h2c, where the server writes on its own too (PING and SETTINGS
    /// acknowledgements): a client pinging an idle connection would keep it open for ever.
    fn bytes_written(&self) {
        if self.idle() {
            self.since_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    fn deadline(&self, limits: &Limits) -> Option<(Instant, ClientTimeout)> {
        if self.active.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let (allowed, phase) = match self.phase.load(Ordering::Relaxed) {
            HEAD => (limits.header_read, ClientTimeout::Header),
            _ if self.trusted() => (limits.idle, ClientTimeout::Idle),
            _ => (limits.header_read, ClientTimeout::Idle),
        };
        let since = Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
        Some((self.opened + since + allowed, phase))
    }
}

/// Marks a connection busy while a handler runs, and idle again when the last handler's future
/// ends, however it ends.
struct Busy(Arc<Clock>);

impl Busy {
    fn enter(clock: Arc<Clock>) -> Self {
        clock.active.fetch_add(1, Ordering::Relaxed);
        clock.changed.notify_one();
        Busy(clock)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // A stream that starts between these two steps keeps the connection busy whatever
        // phase is stored.
        if self.0.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.enter(IDLE);
        }
    }
}

/// The client socket, telling the clock when bytes move; it first hands back the bytes read to
/// tell the protocol.
struct Guarded {
    stream: TcpStream,
    clock: Arc<Clock>,
    first: First,
    protocol: Protocol,
}

impl AsyncRead for Guarded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.first.give(buf) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if this.protocol == Protocol::Http1 && matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.clock.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        if this.protocol == Protocol::Http1 && matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.clock.bytes_written();
        }
        polled
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if this.protocol == Protocol::Http1 && matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.clock.bytes_written();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Makes room for `max_connections` open sockets: raises the soft open-file limit (up to the
/// hard one) when it is too low, and returns the cap that fits, lowered when even the hard limit
/// is too low. Past the limit, `accept` would fail with EMFILE and connections would wait in
/// the kernel's backlog unanswered, instead of being refused and counted.
#[cfg(unix)]
pub fn fit_open_files(max_connections: u64) -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let needed = max_connections.saturating_add(RESERVED_FDS);
    let limit = getrlimit(Resource::Nofile);
    // `None` is RLIM_INFINITY.
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft >= needed {
        return max_connections;
    }
    let target = limit.maximum.map_or(needed, |hard| hard.min(needed));
    let soft = if target > soft {
        match setrlimit(Resource::Nofile, Rlimit { current: Some(target), maximum: limit.maximum }) {
            Ok(()) => {
                log::info!("open-file limit raised from {soft} to {target} to fit --max-connections");
                target
            }
            Err(e) => {
                log::warn!("cannot raise the open-file limit from {soft} to {target}: {e}");
                soft
            }
        }
    } else {
        soft
    };
    if soft >= needed {
        return max_connections;
    }
    let fit = soft.saturating_sub(RESERVED_FDS).max(1);
    log::warn!(
        "--max-connections lowered from {max_connections} to {fit}: the open-file limit is \
         {soft} (raise the hard limit, e.g. `ulimit -Hn` or LimitNOFILE=, to serve more)"
    );
    fit
}

#[cfg(not(unix))]
pub fn fit_open_files(max_connections: u64) -> u64 {
    max_connections
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_whole_http_response() {
        let text = std::str::from_utf8(AT_CAPACITY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}\r\n", body.len())), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(json["error"].as_str().unwrap().starts_with("ERR sluice-gateway:"));
    }

    /// One connection's limits, with the header phase shorter than the idle one.
    fn limits() -> Limits {
        Limits {
            max_connections: 1,
            header_read: Duration::from_secs(5),
            idle: Duration::from_secs(90),
            max_header_bytes: 1024,
            max_streams: 4,
        }
    }

    #[test]
    fn phases_set_deadlines() {
        let limits = limits();
        let clock = Arc::new(Clock::new());
        let (at, phase) = clock.deadline(&limits).unwrap();
        assert_eq!((at, phase), (clock.opened + limits.header_read, ClientTimeout::Header));
        {
            let _busy = Busy::enter(clock.clone());
            assert!(clock.deadline(&limits).is_none());
            clock.bytes_read();
            assert!(clock.deadline(&limits).is_none(), "body bytes keep it busy");
        }
        let (_, phase) = clock.deadline(&limits).unwrap();
        assert_eq!(phase, ClientTimeout::Idle);
        clock.bytes_written();
        assert_eq!(clock.deadline(&limits).unwrap().1, ClientTimeout::Idle);
        clock.bytes_read();
        assert_eq!(clock.deadline(&limits).unwrap().1, ClientTimeout::Header);
    }

    #[test]
    fn overlapping_streams_keep_a_connection_busy() {
        let limits = limits();
        let clock = Arc::new(Clock::new());
        let a = Busy::enter(clock.clone());
        let b = Busy::enter(clock.clone());
        drop(a);
        assert!(clock.deadline(&limits).is_none(), "one stream still runs");
        let c = Busy::enter(clock.clone());
        drop(b);
        assert!(clock.deadline(&limits).is_none());
        drop(c);
        assert_eq!(clock.deadline(&limits).unwrap().1, ClientTimeout::Idle);
    }

    #[tokio::test]
    async fn the_first_bytes_tell_the_protocol_and_are_handed_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for (sent, protocol) in [
            (&b"POST / HTTP/1.1\r\n"[..], Protocol::Http1),
            (b"PUT", Protocol::Http1),
            (b"PRI * HTTP/1.1\r\n", Protocol::Http1),
            (&H2_PREFACE[..], Protocol::H2c),
        ] {
            let client = tokio::spawn(async move {
                let mut c = TcpStream::connect(addr).await.unwrap();
                // Byte by byte: the reader must wait for as many as it needs, no more.
                for b in sent {
                    tokio::io::AsyncWriteExt::write_all(&mut c, &[*b]).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                c
            });
            let (mut server, _) = listener.accept().await.unwrap();
            let mut first = First::read(&mut server).await.unwrap().unwrap();
            assert_eq!(first.protocol(), protocol, "{:?}", String::from_utf8_lossy(sent));
            let mut out = [0u8; 64];
            let mut buf = ReadBuf::new(&mut out);
            assert!(first.give(&mut buf));
            assert!(sent.starts_with(buf.filled()) && !buf.filled().is_empty());
            assert!(!first.give(&mut buf));
            drop(client.await.unwrap());
        }
        // Closed before a byte: nothing to serve.
        let client = tokio::spawn(async move { drop(TcpStream::connect(addr).await.unwrap()) });
        let (mut server, _) = listener.accept().await.unwrap();
        client.await.unwrap();
        assert!(First::read(&mut server).await.unwrap().is_none());
    }

    #[test]
    fn open_file_limit_fits_the_cap() {
        assert_eq!(fit_open_files(1), 1);
        // More than any hard limit allows: the cap comes down to what fits.
        let fit = fit_open_files(u64::MAX / 2);
        assert!(fit < u64::MAX / 2);
        assert!(fit >= 1);
    }
}
