//! Client connections: the accept loop and its cap, the deadlines each connection lives under
//! (headers, idle keep-alive, an answer the client does not take), the drain on shutdown, and
//! the open-file limit the cap needs.
//!
//! `axum::serve` has none of these bounds, so connections are served here with hyper directly.
//! The body deadline is not here: it belongs to the handlers, which read the body.
//!
//! A connection is always in one of three phases, and the phase decides its deadline:
//!
//! | phase | from | deadline |
//! |---|---|---|
//! | head | the connection's opening, or the first byte of a later request | `--header-read-timeout-ms` |
//! | busy | headers parsed, until the handler returns | none: the handler bounds itself (body and Redis timeouts) |
//! | idle | the handler returned; restarted by every byte of the answer written | `--idle-timeout-ms` |
//!
//! The socket wrapper only records bytes moving (a request's first byte starts its head phase;
//! an answer's bytes restart the idle clock). The deadline itself is kept by the connection's
//! task, which races the hyper connection against a timer: hyper polls the socket on no
//! schedule a timer could rely on (after an answer it may wait for the socket to wake it
//! without reading, so a timer armed in a read would never be).
//!
//! hyper's own `header_read_timeout` is not used: it also runs while a keep-alive connection
//! waits for its next request, so it would close a client's idle pooled connections as soon as
//! the (short) header deadline passed.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt as _;

use crate::metrics::{ClientTimeout, Metrics};

/// The bounds connections are served under.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read: Duration,
    pub idle: Duration,
    pub max_header_bytes: usize,
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

/// Everything a connection task needs, built once.
pub struct Server {
    router: Router,
    http: http1::Builder,
    limits: Limits,
    gateway: Arc<crate::Gateway>,
}

impl Server {
    pub fn new(gateway: Arc<crate::Gateway>, router: Router, limits: Limits) -> Self {
        let mut http = http1::Builder::new();
        http.header_read_timeout(None).max_header_size(limits.max_header_bytes).keep_alive(true);
        Server { router, http, limits, gateway }
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

    async fn serve(self: Arc<Self>, stream: TcpStream, _slot: OwnedSemaphorePermit, mut stop: watch::Receiver<Stop>) {
        let _open = self.metrics().connection_opened();
        let clock = Arc::new(Clock::new());
        let io = TokioIo::new(Guarded { stream, clock: clock.clone() });
        let router = self.router.clone();
        let service_clock = clock.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let busy = Busy::enter(service_clock.clone());
            let router = router.clone();
            async move {
                let _busy = busy;
                router.oneshot(request.map(Body::new)).await
            }
        });
        let conn = self.http.serve_connection(io, service);
        tokio::pin!(conn);
        let result = loop {
            // Registered before the deadline is read, so that no phase change is missed.
            let changed = clock.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let deadline = clock.deadline(&self.limits);
            tokio::select! {
                result = conn.as_mut() => break Some(result),
                () = until(deadline.map(|(at, _)| at)) => {
                    // The deadline may have moved while the timer ran (bytes of an answer
                    // taken); only one still passed closes the connection.
                    if let Some((at, phase)) = clock.deadline(&self.limits) {
                        if Instant::now() >= at {
                            clock.miss(phase);
                            break None;
                        }
                    }
                }
                () = &mut changed => {}
                changed = stop.changed() => {
                    let order = *stop.borrow_and_update();
                    match (changed, order) {
                        (Ok(()), Stop::Serve) => {}
                        (Ok(()), Stop::Drain) => conn.as_mut().graceful_shutdown(),
                        // Aborted, or the server is gone: nothing will wait for this any more.
                        _ => return,
                    }
                }
            }
        };
        self.classify(result.as_ref(), &clock);
    }

    /// Counts how a connection ended; `None` is closed by a deadline.
    fn classify(&self, result: Option<&Result<(), hyper::Error>>, clock: &Clock) {
        if let Some(phase) = clock.missed() {
            self.metrics().client_timeout(phase);
            log::debug!("closed a connection: {phase:?} deadline passed");
        } else if let Some(Err(e)) = result {
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

const HEAD: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;

/// A connection's phase and when it began; shared by the socket wrapper, the service and the
/// connection's task, all on one task (atomics only because hyper needs them to be `Send`).
struct Clock {
    opened: Instant,
    phase: AtomicU8,
    /// Milliseconds from `opened` to the start of the current phase's deadline.
    since_ms: AtomicU64,
    /// The deadline that closed the connection: 0 none, else 1 + `ClientTimeout as u8`.
    missed: AtomicU8,
    /// Told when the phase changes, so that the connection's task re-reads the deadline.
    changed: Notify,
}

impl Clock {
    fn new() -> Self {
        Clock {
            opened: Instant::now(),
            phase: AtomicU8::new(HEAD),
            since_ms: AtomicU64::new(0),
            missed: AtomicU8::new(0),
            changed: Notify::new(),
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

    /// A byte of a request arrived: on an idle connection, a new request has begun.
    fn bytes_read(&self) {
        if self.phase.load(Ordering::Relaxed) == IDLE {
            self.enter(HEAD);
        }
    }

    /// A byte of an answer left: the client is taking it, so the idle deadline restarts. (Only
    /// ever later: the task's timer finds it moved when it fires, and sleeps on.)
    fn bytes_written(&self) {
        if self.phase.load(Ordering::Relaxed) == IDLE {
            self.since_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    fn deadline(&self, limits: &Limits) -> Option<(Instant, ClientTimeout)> {
        let (allowed, phase) = match self.phase.load(Ordering::Relaxed) {
            HEAD => (limits.header_read, ClientTimeout::Header),
            IDLE => (limits.idle, ClientTimeout::Idle),
            _ => return None,
        };
        let since = Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
        Some((self.opened + since + allowed, phase))
    }
}

/// Marks a connection busy while its handler runs, and idle again when the handler's future
/// ends, however it ends.
struct Busy(Arc<Clock>);

impl Busy {
    fn enter(clock: Arc<Clock>) -> Self {
        clock.enter(BUSY);
        Busy(clock)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.enter(IDLE);
    }
}

/// The client socket, telling the clock when bytes move.
struct Guarded {
    stream: TcpStream,
    clock: Arc<Clock>,
}

impl AsyncRead for Guarded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.clock.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.clock.bytes_written();
        }
        polled
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
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

    #[test]
    fn phases_set_deadlines() {
        let limits = Limits {
            max_connections: 1,
            header_read: Duration::from_secs(5),
            idle: Duration::from_secs(90),
            max_header_bytes: 1024,
        };
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
    fn open_file_limit_fits_the_cap() {
        assert_eq!(fit_open_files(1), 1);
        // More than any hard limit allows: the cap comes down to what fits.
        let fit = fit_open_files(u64::MAX / 2);
        assert!(fit < u64::MAX / 2);
        assert!(fit >= 1);
    }
}
