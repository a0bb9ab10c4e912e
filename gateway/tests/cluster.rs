//! The gateway against a real 6-node Redis Cluster (3 primaries, 3 replicas) on loopback.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_gateway::command::key_slot;
use support::{redis_cli, Http, RedisCluster, TestGateway};

/// Slot ranges `redis-cli --cluster create` gives 3 primaries.
fn third(slot: u16) -> usize {
    match slot {
        0..=5460 => 0,
        5461..=10922 => 1,
        _ => 2,
    }
}

/// Hash tags whose slots fall in different thirds, so their keys live on different primaries.
fn tags_on_three_primaries() -> Vec<String> {
    let mut chosen: Vec<Option<String>> = vec![None, None, None];
    for i in 0.. {
        let tag = format!("t{i}");
        let t = third(key_slot(tag.as_bytes()));
        if chosen[t].is_none() {
            chosen[t] = Some(tag);
        }
        if chosen.iter().all(Option::is_some) {
            break;
        }
    }
    chosen.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_scripts_pipelines_and_outage() {
    let mut cluster = RedisCluster::start();
    let seeds = cluster.seed_nodes();
    let gw = TestGateway::start(&["--cluster-nodes", &seeds, "--timeout-ms", "1000"]).await;
    let http = Http::new(&gw.base, None);

    let (status, health) = http.get("/healthz").await;
    assert_eq!(status, 200, "{health}");
    assert!(health.contains("\"cluster\""), "{health}");

    let tags = tags_on_three_primaries();
    assert_eq!(tags.len(), 3);
    // Our slot function agrees with the cluster's own.
    let port = cluster.nodes[0].port;
    for tag in &tags {
        let key = format!("sluice:{{{tag}}}:c");
        let theirs = redis_cli(port, &["CLUSTER", "KEYSLOT", &key]);
        assert_eq!(theirs.trim(), key_slot(key.as_bytes()).to_string(), "{key}");
    }
    let key = |tag: &str| format!("sluice:{{{tag}}}:c");

    // SCRIPT LOAD reaches every node, so EVALSHA works on every slot.
    let script = "return {redis.call('INCR', KEYS[1]), KEYS[1]}";
    let (status, loaded) = http.post("/", json!(["SCRIPT", "LOAD", script])).await;
    assert_eq!(status, 200, "{loaded}");
    let sha = loaded["result"].as_str().expect("sha").to_string();
    for tag in &tags {
        assert_eq!(http.post("/", json!(["EVALSHA", sha, "1", key(tag)])).await, (200, json!({"result": [1, key(tag)]})));
    }
    assert_eq!(http.post("/", json!(["SCRIPT", "EXISTS", sha])).await, (200, json!({"result": [1]})));

    // NOSCRIPT comes through with its text.
    let (status, body) = http.post("/", json!(["EVALSHA", "e".repeat(40), "1", key(&tags[0])])).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().is_some_and(|e| e.starts_with("NOSCRIPT ")), "{body}");

    // A pipeline across three slots: replies in request order, calls on one key in order.
    let (a, b, c) = (key(&tags[0]), key(&tags[1]), key(&tags[2]));
    let (status, body) = http
        .post(
            "/pipeline",
            json!([
                ["EVALSHA", sha, "1", a],
                ["EVALSHA", sha, "1", b],
                ["EVALSHA", sha, "1", a],
                ["EVALSHA", "e".repeat(40), "1", c],
                ["EVALSHA", sha, "1", c],
                ["PING"],
                ["EVALSHA", sha, "1", a],
                ["EVAL", "return KEYS[1] .. ARGV[1]", "1", b, "!"],
                ["SCRIPT", "LOAD", "return 'late'"],
                ["EVAL", "return 'late'", "1", c],
            ]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let e = body.as_array().expect("array");
    assert_eq!(e.len(), 10);
    assert_eq!(e[0], json!({"result": [2, a]}));
    assert_eq!(e[1], json!({"result": [2, b]}));
    assert_eq!(e[2], json!({"result": [3, a]}));
    assert!(e[3]["error"].as_str().is_some_and(|t| t.starts_with("NOSCRIPT ")), "{}", e[3]);
    assert_eq!(e[4], json!({"result": [2, c]}));
    assert_eq!(e[5], json!({"result": "PONG"}));
    assert_eq!(e[6], json!({"result": [4, a]}));
    assert_eq!(e[7], json!({"result": format!("{b}!")}));
    assert_eq!(e[8]["result"].as_str().map(str::len), Some(40));
    assert_eq!(e[9], json!({"result": "late"}));

    // The keys really live on three different primaries.
    let holders: BTreeSet<u16> = cluster.primaries().into_iter().filter(|&p| redis_cli(p, &["DBSIZE"]).trim() != "0").collect();
    assert_eq!(holders.len(), 3, "keys on primaries {holders:?}");

    // Disallowed commands are refused on Cluster too.
    assert_eq!(http.post("/", json!(["FLUSHALL"])).await.0, 400);

    // Whole cluster down: errors within the timeout, never a hang; /healthz says 503.
    cluster.stop_all();
    let bound = Duration::from_millis(1000 + 2000);
    for (path, body) in
        [("/", json!(["EVALSHA", sha, "1", a])), ("/pipeline", json!([["EVALSHA", sha, "1", a], ["EVALSHA", sha, "1", b]]))]
    {
        let started = Instant::now();
        let (status, body) = http.post(path, body).await;
        assert!(started.elapsed() < bound, "{path} took {:?}", started.elapsed());
        assert!(status == 502 || status == 504, "{path}: {status} {body}");
    }
    let started = Instant::now();
    let (status, body) = http.get("/healthz").await;
    assert!(started.elapsed() < bound);
    assert_eq!(status, 503, "{body}");
}
