//! The built `sluice-gateway` binary: its --help, its flags from the environment, and a clean
//! exit on SIGTERM.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::calls::{call, verdict};
use support::{free_ports, Http, Reaped, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_sluice-gateway");

#[test]
fn help_documents_every_flag() {
    let out = Command::new(BIN).arg("--help").output().expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--redis-url",
        "--cluster-nodes",
        "--token",
        "--timeout-ms",
        "--max-body-bytes",
        "--max-pipeline",
        "--shutdown-grace-ms",
        "--max-connections",
        "--header-read-timeout-ms",
        "--body-read-timeout-ms",
        "--idle-timeout-ms",
        "--max-header-bytes",
        "--health-cache-ms",
        "--max-concurrent-streams",
        "--redis-calls",
        "SLUICE_GATEWAY_TOKEN",
        "SLUICE_GATEWAY_REDIS_URL",
        "SLUICE_GATEWAY_MAX_CONNECTIONS",
        "SLUICE_GATEWAY_HEADER_READ_TIMEOUT_MS",
        "SLUICE_GATEWAY_BODY_READ_TIMEOUT_MS",
        "SLUICE_GATEWAY_IDLE_TIMEOUT_MS",
        "SLUICE_GATEWAY_MAX_HEADER_BYTES",
        "SLUICE_GATEWAY_HEALTH_CACHE_MS",
        "SLUICE_GATEWAY_MAX_CONCURRENT_STREAMS",
        "SLUICE_GATEWAY_REDIS_CALLS",
        "[default: 127.0.0.1:7379]",
        "[default: redis://127.0.0.1:6379]",
        "[default: 10000]",
        "[default: 5000]",
        "[default: 90000]",
        "sluice's decision script and nothing else",
        "sluice_gateway_refused_total",
        "sluice_gateway_script_loads_total",
        "sluice_gateway_library_loads_total",
        "NOSCRIPT",
        "FCALL",
        "h2c",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    // The token's value must never be echoed by --help.
    let out = Command::new(BIN).arg("--help").env("SLUICE_GATEWAY_TOKEN", "do-not-print-me").output().expect("run --help");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("do-not-print-me"));
}

#[test]
fn bad_flags_fail_fast() {
    let out = Command::new(BIN).args(["--timeout-ms", "0"]).output().expect("run");
    assert!(!out.status.success());
    let out = Command::new(BIN).args(["--token", ""]).env("SLUICE_GATEWAY_LISTEN", "127.0.0.1:0").output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
}

/// Without a token only loopback is allowed; the check comes before anything is bound, so the
/// refused addresses are never listened on.
#[test]
fn non_loopback_listen_without_token_is_refused_at_start() {
    for (how, addr) in [("flag", "192.0.2.7:7379"), ("env", "[::]:0"), ("flag", "0.0.0.0:0")] {
        let mut cmd = Command::new(BIN);
        cmd.env_remove("SLUICE_GATEWAY_TOKEN").env_remove("SLUICE_GATEWAY_LISTEN");
        if how == "flag" {
            cmd.args(["--listen", addr]);
        } else {
            cmd.env("SLUICE_GATEWAY_LISTEN", addr);
        }
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("run");
        // Bounded, so that a regression fails here instead of serving until killed.
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().expect("poll") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{addr}: started without a token");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(!status.success(), "{addr}: exited cleanly without a token");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("read stderr");
        for needed in ["--token", "SLUICE_GATEWAY_TOKEN", "--listen", "without a token"] {
            assert!(stderr.contains(needed), "{addr}: error lacks {needed:?}: {stderr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_without_token_still_starts() {
    let redis = RedisServer::start();
    let port = free_ports(1)[0];
    let mut child = Reaped(
        Command::new(BIN)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--redis-url", &redis.url()])
            .env_remove("SLUICE_GATEWAY_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start gateway"),
    );
    let http = Http::new(&format!("http://127.0.0.1:{port}"), None);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(resp) = http.client.post(format!("{}/", http.base)).body(call(1).to_string()).send().await {
            assert_eq!(resp.status(), 200);
            break;
        }
        assert!(child.try_wait().expect("poll").is_none(), "gateway exited");
        assert!(Instant::now() < deadline, "gateway never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_from_env_config_and_exits_cleanly_on_sigterm() {
    let redis = RedisServer::start();
    let port = free_ports(1)[0];
    let mut child = Reaped(
        Command::new(BIN)
            .env("SLUICE_GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("SLUICE_GATEWAY_REDIS_URL", redis.url())
            .env("SLUICE_GATEWAY_TOKEN", "env-token")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start gateway"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = Http::new(&base, Some("env-token"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(resp) = http.client.get(format!("{base}/healthz")).send().await {
            if resp.status() == 200 {
                break;
            }
        }
        assert!(child.try_wait().expect("poll").is_none(), "gateway exited early");
        assert!(Instant::now() < deadline, "gateway did not become healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = http.post("/", call(1)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(verdict(&body["result"]), (true, support::calls::LIMIT - 1));
    // Anything but sluice's call is refused by the binary too.
    assert_eq!(http.post("/", serde_json::json!(["PING"])).await.0, 400);

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("send SIGTERM");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("gateway ignored SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
}
