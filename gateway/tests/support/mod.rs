//! Test support: real `redis-server` processes on loopback ports (one standalone server, or a
//! 6-node Redis Cluster of 3 primaries and 3 replicas), killed when dropped; a gateway
//! started in-process; calls of sluice's script as the filter makes them ([`calls`]); and raw
//! HTTP/1.1 ([`raw`]) and h2c ([`h2`]) for clients that misbehave on purpose.
//! The Redis part needs only std, and the `redis-server`/`redis-cli` binaries (override with
//! REDIS_SERVER / REDIS_CLI).
// Test support may fail loudly: a broken fixture must stop the test.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod calls;
pub mod h2;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Longest wait for a server to come up or a cluster to converge.
const READY_DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

fn redis_server_bin() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

fn redis_cli_bin() -> String {
    std::env::var("REDIS_CLI").unwrap_or_else(|_| "redis-cli".into())
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "sluice-{tag}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub use sluice_test_ports::free_ports;

/// Sends one command in RESP and returns the raw reply (enough for readiness checks).
/// One command in RESP over a fresh connection, its raw reply: no process to start, for a test
/// that must act within milliseconds of what it saw.
pub fn raw_command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut request = format!("*{}\r\n", args.len());
    for a in args {
        request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(request.as_bytes())?;
    let mut buf = vec![0u8; 8192];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Runs `redis-cli -p PORT ARGS…` and returns its standard output.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new(redis_cli_bin())
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + READY_DEADLINE;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

/// [`wait_until`] for an async check, which also answers what it saw, for the failure.
pub async fn wait_until_async<F: std::future::Future<Output = (bool, String)>>(what: &str, mut ready: impl FnMut() -> F) {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let (done, seen) = ready().await;
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}: {seen}");
        tokio::time::sleep(POLL).await;
    }
}

/// A child process, killed and reaped on drop: a test that fails half-way leaves none behind.
pub struct Reaped(pub Child);

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `redis-server` process, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    args: Vec<String>,
    _dir: Option<TempDir>,
}

impl RedisServer {
    /// A standalone server on a free loopback port, without persistence.
    pub fn start() -> Self {
        let port = free_ports(1)[0];
        let dir = TempDir::new("redis");
        let args = vec!["--dir".to_string(), dir.path().display().to_string()];
        let mut server = RedisServer { port, child: None, args, _dir: Some(dir) };
        server.restart();
        server
    }

    /// [`RedisServer::start`] with more `redis-server` arguments.
    pub fn start_with_args(extra: &[&str]) -> Self {
        let port = free_ports(1)[0];
        let dir = TempDir::new("redis");
        let mut args = vec!["--dir".to_string(), dir.path().display().to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut server = RedisServer { port, child: None, args, _dir: Some(dir) };
        server.restart();
        server
    }

    /// Starts again on the same port with only its directory and `args` (what was added
    /// before is dropped: a module no longer loaded, say).
    pub fn restart_replacing_args(&mut self, args: &[&str]) {
        let dir = self.args.iter().position(|a| a == "--dir").and_then(|i| self.args.get(i..i + 2)).map(<[String]>::to_vec);
        self.args = dir.unwrap_or_default();
        self.restart_with_args(args);
    }

    /// Starts again on the same port, with `extra` added to its arguments from now on.
    pub fn restart_with_args(&mut self, extra: &[&str]) {
        self.args.extend(extra.iter().map(|a| a.to_string()));
        self.restart();
    }

    fn start_with(port: u16, args: Vec<String>) -> Self {
        let mut server = RedisServer { port, child: None, args, _dir: None };
        server.restart();
        server
    }

    /// Starts (again) on the same port with the same arguments, and waits for PONG.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(redis_server_bin())
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (is it installed?)");
        self.child = Some(child);
        let port = self.port;
        let child = self.child.as_mut().expect("child just set");
        wait_until(&format!("redis-server on port {port}"), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("redis-server on port {port} exited early: {status}");
            }
            raw_command(port, &["PING"]).is_ok_and(|r| r.starts_with("+PONG"))
        });
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the process where it stands (SIGSTOP: it neither answers nor closes a connection,
    /// as a hung host does), or lets it go on (SIGCONT).
    pub fn hang(&self, hung: bool) {
        let Some(child) = &self.child else { return };
        let signal = if hung { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").args([signal, &child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill {signal} {}", child.id());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of 6 nodes (3 primaries, 3 replicas) on loopback, stopped on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: TempDir,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// [`RedisCluster::start`], every node with more `redis-server` arguments.
    pub fn start_with_args(extra: &[&str]) -> Self {
        // Data ports and cluster-bus ports are both chosen, instead of Redis' default
        // port+10000, which may be taken or out of range.
        let ports = free_ports(12);
        let dir = TempDir::new("cluster");
        let mut nodes = Vec::with_capacity(6);
        for i in 0..6 {
            let (port, bus) = (ports[i], ports[i + 6]);
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let args: Vec<String> = [
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-port".into(),
                bus.to_string(),
                "--cluster-config-file".into(),
                node_dir.join("nodes.conf").display().to_string(),
                "--cluster-node-timeout".into(),
                "2000".into(),
                "--dir".into(),
                node_dir.display().to_string(),
            ]
            .into_iter()
            .chain(extra.iter().map(|a| a.to_string()))
            .collect();
            nodes.push(RedisServer::start_with(port, args));
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("timeout")
            .arg("60")
            .arg(redis_cli_bin())
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes, _dir: dir };
        cluster.wait_converged();
        cluster
    }

    /// Every node says `cluster_state:ok` and knows all 6 nodes.
    fn wait_converged(&self) {
        for node in &self.nodes {
            let port = node.port;
            wait_until(&format!("cluster_state:ok on port {port}"), || {
                raw_command(port, &["CLUSTER", "INFO"])
                    .is_ok_and(|info| info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:6"))
            });
        }
    }

    /// Seed list for clients: `127.0.0.1:P1,127.0.0.1:P2,…`.
    pub fn seed_nodes(&self) -> String {
        self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// Ports of the nodes that are primaries now.
    pub fn primaries(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.port)
            .filter(|&p| redis_cli(p, &["ROLE"]).starts_with("master"))
            .collect()
    }

    /// The primary serving `slot` now (its own line of CLUSTER NODES lists its slot ranges).
    pub fn primary_for(&self, slot: u16) -> u16 {
        let serves = |port: u16| {
            let nodes = redis_cli(port, &["CLUSTER", "NODES"]);
            let me = nodes.lines().find(|l| l.contains("myself")).expect("a CLUSTER NODES line for the node itself");
            me.split_whitespace().skip(8).any(|range| match range.split_once('-') {
                Some((a, b)) => a.parse::<u16>().is_ok_and(|a| a <= slot) && b.parse::<u16>().is_ok_and(|b| slot <= b),
                None => range.parse::<u16>().is_ok_and(|s| s == slot),
            })
        };
        self.primaries().into_iter().find(|&p| serves(p)).unwrap_or_else(|| panic!("no primary serves slot {slot}"))
    }

    /// The replica of primary `port` now.
    pub fn replica_of(&self, port: u16) -> u16 {
        let of_port = |r: u16| {
            let role = redis_cli(r, &["ROLE"]);
            let lines: Vec<&str> = role.lines().collect();
            lines.first() == Some(&"slave") && lines.get(2) == Some(&port.to_string().as_str())
        };
        self.nodes.iter().filter(|n| n.is_running()).map(|n| n.port).find(|&r| of_port(r)).expect("a replica")
    }

    pub fn stop_all(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
    }
}

/// Promotes `replica` in place of `primary` (a manual failover), waiting for both to agree.
/// A manual failover gives up silently when the replica is not in step in time, so it is asked
/// again until it happens.
pub async fn failover(replica: u16, primary: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let swapped = || redis_cli(replica, &["ROLE"]).starts_with("master") && redis_cli(primary, &["ROLE"]).starts_with("slave");
    'ask: loop {
        if redis_cli(replica, &["INFO", "replication"]).contains("master_link_status:up") {
            assert_eq!(redis_cli(replica, &["CLUSTER", "FAILOVER"]).trim(), "OK");
            let asked = Instant::now();
            while asked.elapsed() < Duration::from_secs(10) {
                if swapped() {
                    break 'ask;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        assert!(Instant::now() < deadline, "the failover did not happen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// sluice's Redis module as `scripts/test.sh` builds it: the production build
/// (`cargo build --release -p sluice-redis-module`), or with `testing` the build whose commands
/// take a clock (`--features testing --profile redis-module-testing`). Override with
/// SLUICE_REDIS_MODULE / SLUICE_REDIS_MODULE_TESTING.
pub fn redis_module(testing: bool) -> String {
    let (var, dir) =
        if testing { ("SLUICE_REDIS_MODULE_TESTING", "redis-module-testing") } else { ("SLUICE_REDIS_MODULE", "release") };
    let path = std::env::var(var).unwrap_or_else(|_| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
        target.join(dir).join("libsluice_redis.so").display().to_string()
    });
    let build = if testing {
        "cargo build -p sluice-redis-module --features testing --profile redis-module-testing"
    } else {
        "cargo build --release -p sluice-redis-module"
    };
    assert!(Path::new(&path).is_file(), "no Redis module at {path}: build it first ({build}; scripts/test.sh does)");
    path
}

/// A gateway served in-process on a free loopback port.
pub struct TestGateway {
    pub base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), sluice_gateway::GatewayError>>>,
}

impl TestGateway {
    /// `args` are the binary's flags (without `--listen`, which is chosen here).
    pub async fn start(args: &[&str]) -> Self {
        use clap::Parser as _;
        let config = sluice_gateway::Config::try_parse_from(std::iter::once("sluice-gateway").chain(args.iter().copied()))
            .expect("gateway flags");
        let gateway = sluice_gateway::Gateway::from_config(&config).expect("gateway config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind gateway");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gateway.serve(
            listener,
            async move {
                let _ = rx.await;
            },
            Duration::from_secs(10),
        ));
        TestGateway { base, stop: Some(tx), task: Some(task) }
    }

    /// Asks for a graceful shutdown (as SIGTERM would) without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Whether the server task has returned (after shutdown: all connections are closed).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits (bounded) for the server task to return after `begin_shutdown`.
    pub async fn finished(&mut self) -> Result<(), sluice_gateway::GatewayError> {
        let task = self.task.take().expect("gateway task");
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("gateway did not stop in time")
            .expect("gateway task panicked")
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.begin_shutdown();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Minimal client helpers over reqwest.
pub struct Http {
    pub client: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
}

impl Http {
    pub fn new(base: &str, token: Option<&str>) -> Self {
        Http {
            client: reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(20)).build().expect("http client"),
            base: base.to_string(),
            token: token.map(str::to_string),
        }
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        let mut req = self.client.post(format!("{}{path}", self.base)).body(body);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("send request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("read body");
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}), status {status}: {text:?}"));
        (status, json)
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.post_raw(path, body.to_string(), &[]).await
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = self.client.get(format!("{}{path}", self.base)).send().await.expect("send request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("read body"))
    }

    /// Waits (bounded) until `/metrics` shows `series` at `value`; returns that scrape.
    pub async fn wait_metric(&self, series: &str, value: f64) -> String {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            let (_, text) = self.get("/metrics").await;
            if metric(&text, series) == Some(value) {
                return text;
            }
            assert!(Instant::now() < deadline, "{series} never reached {value}:\n{text}");
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Value of one sample line (`name{labels} value`) in a Prometheus exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Like [`metric`], for a series that must be there.
pub fn metric_value(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// Raw HTTP/1.1 over a real socket, for clients that misbehave on purpose.
pub mod raw {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Longest any raw read in a test may wait; only a broken gateway gets near it.
    pub const BOUND: Duration = Duration::from_secs(30);

    /// `host:port` of a gateway base URL.
    pub fn addr(base: &str) -> String {
        base.trim_start_matches("http://").to_string()
    }

    pub async fn connect(addr: &str) -> TcpStream {
        TcpStream::connect(addr).await.expect("connect to the gateway")
    }

    /// A request head; `extra` lines end with `\r\n`.
    pub fn head(method: &str, path: &str, extra: &str) -> String {
        format!("{method} {path} HTTP/1.1\r\nHost: gateway\r\n{extra}\r\n")
    }

    /// `POST path` with a JSON body, keep-alive.
    pub fn post(path: &str, token: Option<&str>, body: &str) -> String {
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        format!("{}{body}", head("POST", path, &format!("{auth}Content-Length: {}\r\n", body.len())))
    }

    /// Reads one response (head and a Content-Length body) off a keep-alive connection.
    pub async fn read_response(stream: &mut TcpStream) -> std::io::Result<(u16, String)> {
        tokio::time::timeout(BOUND, async {
            let mut buf = Vec::new();
            let mut byte = [0u8; 1];
            while !buf.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&buf).into_owned();
            let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let mut body = vec![0u8; length];
            stream.read_exact(&mut body).await?;
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        })
        .await
        .expect("a response within the bound")
    }

    /// Sends a request and reads everything until the gateway closes the connection; a reset
    /// counts as closed. Returns what was read.
    pub async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        tokio::time::timeout(BOUND, async {
            let mut buf = [0u8; 8192];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .expect("the gateway closed the connection within the bound");
        got
    }

    /// One request on a fresh connection that asks to be closed after the answer; `None` when
    /// the gateway closed or reset the connection without a full answer.
    pub async fn once(addr: &str, request: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = request.replacen("\r\n", "\r\nConnection: close\r\n", 1);
        stream.write_all(request.as_bytes()).await.ok()?;
        read_response(&mut stream).await.ok()
    }

    /// `/metrics`, on a connection of its own that does not stay open.
    pub async fn scrape(addr: &str) -> String {
        once(addr, &head("GET", "/metrics", "")).await.map(|(_, body)| body).expect("metrics")
    }
}

/// Raises this process's soft open-file limit to at least `n` (up to the hard limit), for tests
/// that hold thousands of sockets; panics when the hard limit is lower.
pub fn ensure_open_files(n: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|soft| soft >= n) {
        return;
    }
    assert!(
        limit.maximum.is_none_or(|hard| hard >= n),
        "this test needs {n} open files; the hard limit is {:?} (raise it: ulimit -Hn)",
        limit.maximum
    );
    setrlimit(Resource::Nofile, Rlimit { current: Some(n), maximum: limit.maximum }).expect("raise the soft open-file limit");
}

/// Resident memory of a process, in KiB, from /proc/<pid>/status.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}
