//! Measures a running sluice-gateway under slow clients: a normal request's latency (p50, p99,
//! max) and the gateway's resident memory, first with no slow connection, then with `--slow`
//! of them held open, in one run. Driven by `scripts/bench-gateway-slow.sh`, which starts
//! Redis and the gateway; run by hand as
//!
//! ```text
//! cargo run --release -p sluice-gateway --example slow_clients -- \
//!     --addr 127.0.0.1:7379 --token TOKEN --pid $(pgrep -n sluice-gateway)
//! ```
//!
//! Three phases, one row each: no slow connection; `--slow` connections held open, a third
//! silent (connect, send nothing), a third half a request head, a third a request whose 1 MiB
//! body is declared and never sent; then the same connections trickling, the last two kinds
//! sending one more byte every `--trickle-ms` as a slowloris does (skipped with 0). They only
//! stay open if the gateway's header and body deadlines are longer than the run (the script
//! sets them so), which is the case where the gateway holds the most. The slow connections
//! live on a thread of their own, so that writing their bytes does not delay the timing.
//!
//! A normal request is what the filter sends: `POST /pipeline` with one EVALSHA of sluice's
//! script, built by the filter's own code, timed from its first byte written to its answer's
//! last byte read, one at a time, over one keep-alive connection (as Envoy pools them) and over
//! a new connection each (which also times accept).

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    /// The gateway, HOST:PORT.
    #[arg(long)]
    addr: String,
    /// Its bearer token.
    #[arg(long)]
    token: String,
    /// Its process id, for /proc/PID/status.
    #[arg(long)]
    pid: u32,
    /// Slow connections to hold open in the second phase.
    #[arg(long, default_value_t = 2_000)]
    slow: usize,
    /// Requests timed per phase on the keep-alive connection.
    #[arg(long, default_value_t = 5_000)]
    requests: usize,
    /// Requests timed per phase on new connections.
    #[arg(long, default_value_t = 500)]
    connects: usize,
    /// How often the slow connections send one more byte (0: never).
    #[arg(long, default_value_t = 1_000)]
    trickle_ms: u64,
}

type Error = Box<dyn std::error::Error>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let body = decision();
    let request = format!(
        "POST /pipeline HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        args.token,
        body.len()
    );

    let mut rows = Vec::new();
    rows.push(("0".to_string(), measure(&args, &request).await?, rss_kib(args.pid)?));

    let holder = Holder::start(&args)?;
    wait_open(&args.addr, args.slow).await?;
    rows.push((format!("{} held", args.slow), measure(&args, &request).await?, rss_kib(args.pid)?));
    if args.trickle_ms > 0 {
        holder.start_trickling();
        rows.push((format!("{} trickling", args.slow), measure(&args, &request).await?, rss_kib(args.pid)?));
    }
    let metrics = get(&args.addr, "/metrics").await?;
    holder.stop();
    // The quiet case again: on a shared machine, how far it moved is the noise.
    wait_closed(&args.addr).await?;
    rows.push(("0 again (after)".to_string(), measure(&args, &request).await?, rss_kib(args.pid)?));

    println!("sluice-gateway at {} (pid {}), one request at a time", args.addr, args.pid);
    println!(
        "{:<24} {:>9} | {:>27} | {:>27}",
        "",
        "RSS",
        format!("keep-alive ({} req)", args.requests),
        format!("new connection ({} req)", args.connects)
    );
    println!(
        "{:<24} {:>9} | {:>8} {:>8} {:>9} | {:>8} {:>8} {:>9}",
        "slow connections", "MiB", "p50 µs", "p99 µs", "max µs", "p50 µs", "p99 µs", "max µs"
    );
    for (label, m, rss) in &rows {
        println!(
            "{:<24} {:>9.1} | {:>8} {:>8} {:>9} | {:>8} {:>8} {:>9}",
            label,
            *rss as f64 / 1024.0,
            m.keep_alive.p(50.0),
            m.keep_alive.p(99.0),
            m.keep_alive.p(100.0),
            m.fresh.p(50.0),
            m.fresh.p(99.0),
            m.fresh.p(100.0),
        );
    }
    println!(
        "held: a third silent, a third half a request head, a third a 1 MiB body declared and \
         never sent; trickling: the last two send one byte every {} ms",
        args.trickle_ms
    );
    println!("gateway counters with the slow connections open:");
    for line in metrics.lines().filter(|l| {
        l.starts_with("sluice_gateway_connections_")
            || l.starts_with("sluice_gateway_client_timeouts_total")
            || l.starts_with("sluice_gateway_requests_in_flight")
    }) {
        println!("  {line}");
    }
    Ok(())
}

struct Latencies(Vec<Duration>);

impl Latencies {
    fn p(&self, percentile: f64) -> u128 {
        let mut sorted = self.0.clone();
        sorted.sort();
        let rank = ((percentile / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted.get(rank.saturating_sub(1).min(sorted.len().saturating_sub(1))).map_or(0, |d| d.as_micros())
    }
}

struct Phase {
    keep_alive: Latencies,
    fresh: Latencies,
}

async fn measure(args: &Args, request: &str) -> Result<Phase, Error> {
    let mut conn = TcpStream::connect(&args.addr).await?;
    conn.set_nodelay(true)?;
    // Warm-up, not timed.
    for _ in 0..200 {
        conn.write_all(request.as_bytes()).await?;
        expect_ok(read_response(&mut conn).await?)?;
    }
    let mut keep_alive = Vec::with_capacity(args.requests);
    for _ in 0..args.requests {
        let started = Instant::now();
        conn.write_all(request.as_bytes()).await?;
        let answer = read_response(&mut conn).await?;
        keep_alive.push(started.elapsed());
        expect_ok(answer)?;
    }
    let closing = request.replacen("\r\n", "\r\nConnection: close\r\n", 1);
    let mut fresh = Vec::with_capacity(args.connects);
    for _ in 0..args.connects {
        let started = Instant::now();
        let mut conn = TcpStream::connect(&args.addr).await?;
        conn.set_nodelay(true)?;
        conn.write_all(closing.as_bytes()).await?;
        let answer = read_response(&mut conn).await?;
        fresh.push(started.elapsed());
        expect_ok(answer)?;
    }
    Ok(Phase { keep_alive: Latencies(keep_alive), fresh: Latencies(fresh) })
}

/// The slow connections, on a thread of their own with blocking sockets, so that sending
/// their bytes never delays the timed requests on the measuring thread.
struct Holder {
    trickle: Arc<AtomicBool>,
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Holder {
    /// Returns once every slow connection is connected and has sent what it sends at first.
    fn start(args: &Args) -> Result<Self, Error> {
        let declared = format!(
            "POST /pipeline HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {}\r\n\
             Content-Length: 1048576\r\n\r\n",
            args.token
        );
        let mut silent = Vec::with_capacity(args.slow);
        let mut talkers = Vec::with_capacity(args.slow);
        for i in 0..args.slow {
            let mut conn = std::net::TcpStream::connect(&args.addr)?;
            match i % 3 {
                0 => silent.push(conn),
                1 => {
                    conn.write_all(b"POST /pipeline HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")?;
                    talkers.push(conn);
                }
                _ => {
                    conn.write_all(declared.as_bytes())?;
                    talkers.push(conn);
                }
            }
        }
        let trickle = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = mpsc::channel::<()>();
        let every = Duration::from_millis(args.trickle_ms.max(1));
        let thread = std::thread::spawn({
            let trickle = trickle.clone();
            move || {
                let _silent = silent;
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    if trickle.load(Ordering::Relaxed) {
                        for conn in &mut talkers {
                            // A closed connection only stops trickling.
                            let _ = conn.write_all(b"a");
                        }
                    }
                }
            }
        });
        Ok(Holder { trickle, stop, thread })
    }

    fn start_trickling(&self) {
        self.trickle.store(true, Ordering::Relaxed);
    }

    /// Closes every slow connection.
    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Waits until the gateway has let go of the slow connections (only the scrape is open).
async fn wait_closed(addr: &str) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while open_connections(addr).await? > 1 {
        if Instant::now() > deadline {
            return Err("slow connections still open 60 s after closing them".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn open_connections(addr: &str) -> Result<usize, Error> {
    let metrics = get(addr, "/metrics").await?;
    Ok(metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_gateway_connections_open "))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0))
}

/// Waits until the gateway reports the slow connections open (plus the scrape itself).
async fn wait_open(addr: &str, slow: usize) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let open = open_connections(addr).await?;
        if open > slow {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("only {open} of {slow} slow connections open after 60 s").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One decision as the filter asks for it: one rule, one limit far out of reach, so every
/// request is admitted and written.
fn decision() -> String {
    use sluice::rate::Rate;
    use sluice::redis::script::{command, sha, Form, RuleCall};
    let rates = [Rate { limit: 1_000_000_000_000, period_ms: 60_000 }];
    let strategy = sluice::strategy::Strategy::FixedWindow;
    let call =
        RuleCall { namespace: "bench", rule: "slow", identity: 1, fingerprint: 0, strategy: &strategy, rates: &rates, cost: 1 };
    serde_json::json!([command(&call, Form::Sha(&sha()), false)]).to_string()
}

async fn get(addr: &str, path: &str) -> Result<String, Error> {
    let mut conn = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await?;
    let (_, body) = read_response(&mut conn).await?;
    Ok(String::from_utf8(body)?)
}

fn expect_ok((status, body): (u16, Vec<u8>)) -> Result<(), Error> {
    if status == 200 && body.starts_with(br#"[{"result""#) {
        Ok(())
    } else {
        Err(format!("unexpected answer {status}: {}", String::from_utf8_lossy(&body)).into())
    }
}

/// One response with a Content-Length body (all the gateway sends).
async fn read_response(conn: &mut TcpStream) -> Result<(u16, Vec<u8>), Error> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err("connection closed before an answer".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])?;
    let status: u16 = head.split(' ').nth(1).ok_or("no status")?.parse()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
        })
        .ok_or("no content-length")?;
    let mut body = buf.split_off(head_end);
    while body.len() < length {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err("connection closed mid-answer".into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((status, body))
}

fn rss_kib(pid: u32) -> Result<u64, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS in /proc status".into())
}
