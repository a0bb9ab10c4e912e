//! The built `sluice-gateway` binary: its --help, its flags from the environment, and a clean
//! exit on SIGTERM. Every run is bounded and its process killed on every path ([`Reaped`]), so
//! a regression that starts serving fails the test instead of hanging it.
// A test may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::calls::{call, verdict};
use support::{free_ports, Http, Reaped, RedisServer, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_sluice-gateway");

/// How long a run that must end by itself may take. --help or a refusal is over in
/// milliseconds; this only bounds a regression, a gateway that serves instead of exiting.
const EXIT_LIMIT: Duration = Duration::from_secs(10);

/// A run of the binary that ended by itself.
struct Ended {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to its exit, for at most [`EXIT_LIMIT`]: still running then, it is killed and
/// the test fails. Its output goes to files rather than pipes, so nothing waits on a pipe the
/// child keeps open, and the child never blocks on one nobody reads.
fn run_to_exit(cmd: &mut Command) -> Ended {
    let dir = TempDir::new("gateway-run");
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let file = |p: &Path| Stdio::from(std::fs::File::create(p).expect("output file"));
    cmd.stdin(Stdio::null()).stdout(file(&out)).stderr(file(&err));
    let mut child = Reaped(cmd.spawn().expect("run the gateway"));
    let deadline = Instant::now() + EXIT_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll") {
            break status;
        }
        // Failing here drops `child`, which kills it.
        assert!(Instant::now() < deadline, "{cmd:?} still running after {EXIT_LIMIT:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |p: &Path| std::fs::read_to_string(p).expect("output");
    Ended { status, stdout: read(&out), stderr: read(&err) }
}

#[test]
fn help_documents_every_flag() {
    let out = run_to_exit(Command::new(BIN).arg("--help"));
    assert!(out.status.success(), "{}", out.stderr);
    let help = out.stdout;
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
    let out = run_to_exit(Command::new(BIN).arg("--help").env("SLUICE_GATEWAY_TOKEN", "do-not-print-me"));
    assert!(!out.stdout.contains("do-not-print-me") && !out.stderr.contains("do-not-print-me"));
}

#[test]
fn bad_flags_fail_fast() {
    // On loopback port 0: a regression that takes the flag serves on a port nobody else uses,
    // until it is killed.
    let out = run_to_exit(Command::new(BIN).args(["--timeout-ms", "0", "--listen", "127.0.0.1:0"]));
    assert!(!out.status.success());
    let out = run_to_exit(Command::new(BIN).args(["--token", ""]).env("SLUICE_GATEWAY_LISTEN", "127.0.0.1:0"));
    assert!(!out.status.success());
    assert!(out.stderr.contains("empty"), "{}", out.stderr);
}

/// Without a token only loopback is allowed, and the check comes before anything is bound. The
/// addresses here are documentation ones (RFC 5737, RFC 3849), on no machine's interface: a
/// gateway that checked after binding, or not at all, fails to bind and says that instead, and
/// none of them is ever listened on. That the unspecified addresses (`0.0.0.0`, `[::]`) are
/// refused as well is `config::tests::only_loopback_without_token`'s to show.
#[test]
fn non_loopback_listen_without_token_is_refused_at_start() {
    for (how, addr) in [("flag", "192.0.2.7:7379"), ("env", "[2001:db8::7]:0"), ("flag", "[::ffff:198.51.100.7]:0")] {
        let mut cmd = Command::new(BIN);
        cmd.env_remove("SLUICE_GATEWAY_TOKEN").env_remove("SLUICE_GATEWAY_LISTEN");
        if how == "flag" {
            cmd.args(["--listen", addr]);
        } else {
            cmd.env("SLUICE_GATEWAY_LISTEN", addr);
        }
        let out = run_to_exit(&mut cmd);
        assert!(!out.status.success(), "{addr}: exited cleanly without a token");
        for needed in ["--token", "SLUICE_GATEWAY_TOKEN", "--listen", "without a token"] {
            assert!(out.stderr.contains(needed), "{addr}: error lacks {needed:?}: {}", out.stderr);
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
