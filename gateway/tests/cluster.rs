//! The gateway against a real 6-node Redis Cluster (3 primaries, 3 replicas) on loopback, with
//! calls of sluice's script built by the filter's own code.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_gateway::command::key_slot;
use support::calls::{call, entry_verdict, eval_call, hash_tag, key, sha, verdict, LIMIT};
use support::{failover, redis_cli, wait_until_async, Http, RedisCluster, TestGateway};

/// Slot ranges `redis-cli --cluster create` gives 3 primaries.
fn third(slot: u16) -> usize {
    match slot {
        0..=5460 => 0,
        5461..=10922 => 1,
        _ => 2,
    }
}

/// Identities whose keys' slots fall in different thirds, so they live on different primaries.
fn identities_on_three_primaries() -> Vec<u64> {
    let mut chosen: Vec<Option<u64>> = vec![None, None, None];
    for identity in 1u64.. {
        let t = third(key_slot(hash_tag(identity).as_bytes()));
        if chosen[t].is_none() {
            chosen[t] = Some(identity);
        }
        if chosen.iter().all(Option::is_some) {
            break;
        }
    }
    chosen.into_iter().flatten().collect()
}

/// A gateway running calls as FCALL on `cluster`, once it has loaded the library at start.
async fn fcall_gateway(cluster: &RedisCluster) -> (TestGateway, Http) {
    let seeds = cluster.seed_nodes();
    let gw = TestGateway::start(&["--cluster-nodes", &seeds, "--timeout-ms", "1000", "--redis-calls", "fcall"]).await;
    let http = Http::new(&gw.base, None);
    http.wait_metric(r#"sluice_gateway_library_loads_total{trigger="start",outcome="loaded"}"#, 1.0).await;
    (gw, http)
}

fn script_exists(port: u16) -> String {
    redis_cli(port, &["SCRIPT", "EXISTS", &sha()]).trim().to_string()
}

fn library_loaded(port: u16) -> bool {
    redis_cli(port, &["FUNCTION", "LIST"]).contains(sluice_gateway::command::library_name())
}

/// EVALSHA (as on a cluster without functions): the script on every primary, loaded again
/// where NOSCRIPT says, including a replica promoted by a failover (Redis does not pass
/// scripts on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_loads_the_script_everywhere_runs_calls_and_refuses_the_rest() {
    let mut cluster = RedisCluster::start();
    let seeds = cluster.seed_nodes();
    let gw = TestGateway::start(&["--cluster-nodes", &seeds, "--timeout-ms", "1000", "--redis-calls", "evalsha"]).await;
    let http = Http::new(&gw.base, None);

    let (status, health) = http.get("/healthz").await;
    assert_eq!(status, 200, "{health}");
    assert!(health.contains("\"cluster\""), "{health}");

    // Loaded at start on every primary.
    http.wait_metric(r#"sluice_gateway_script_loads_total{trigger="start",outcome="loaded"}"#, 1.0).await;
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3);
    for &p in &primaries {
        assert_eq!(script_exists(p), "1", "primary {p}");
    }

    let ids = identities_on_three_primaries();
    assert_eq!(ids.len(), 3);
    // Our slot function agrees with the cluster's own.
    let port = cluster.nodes[0].port;
    for &id in &ids {
        let theirs = redis_cli(port, &["CLUSTER", "KEYSLOT", &key(id)]);
        assert_eq!(theirs.trim(), key_slot(key(id).as_bytes()).to_string(), "{}", key(id));
    }

    // Calls on three slots, one by one.
    for &id in &ids {
        let (status, body) = http.post("/", call(id)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(verdict(&body["result"]), (true, LIMIT - 1));
    }
    // The keys really live on three different primaries.
    let holders: BTreeSet<u16> = cluster.primaries().into_iter().filter(|&p| redis_cli(p, &["DBSIZE"]).trim() != "0").collect();
    assert_eq!(holders.len(), 3, "keys on primaries {holders:?}");

    // A pipeline across three slots: answers in request order, calls on one key in order.
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    redis_cli(port, &["-c", "LPUSH", &key(99), "x"]);
    let (status, body) =
        http.post("/pipeline", json!([call(a), call(b), call(a), call(c), call(99), eval_call(a), call(c), call(b)])).await;
    assert_eq!(status, 200, "{body}");
    let e = body.as_array().expect("array");
    assert_eq!(e.len(), 8);
    assert_eq!(entry_verdict(&e[0]), (true, 3));
    assert_eq!(entry_verdict(&e[1]), (true, 3));
    assert_eq!(entry_verdict(&e[2]), (true, 2));
    assert_eq!(entry_verdict(&e[3]), (true, 3));
    assert!(e[4]["error"].as_str().is_some_and(|t| t.contains("WRONGTYPE")), "{}", e[4]);
    assert_eq!(entry_verdict(&e[5]), (true, 1));
    assert_eq!(entry_verdict(&e[6]), (true, 2));
    assert_eq!(entry_verdict(&e[7]), (true, 2));

    // One primary lost the script (as after a restart or a failover): the gateway loads it
    // there and the call goes through.
    let flushed = cluster.primary_for(key_slot(key(a).as_bytes()));
    redis_cli(flushed, &["SCRIPT", "FLUSH"]);
    let (status, body) = http.post("/pipeline", json!([call(a), call(b)])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!([entry_verdict(&body[0]), entry_verdict(&body[1])], [(true, 0), (true, 1)]);
    assert_eq!(redis_cli(flushed, &["SCRIPT", "EXISTS", &sha()]).trim(), "1");
    http.wait_metric(r#"sluice_gateway_script_loads_total{trigger="noscript",outcome="loaded"}"#, 1.0).await;

    // A failover to a replica, which never had the script (Redis does not pass it on): the
    // first call there meets NOSCRIPT, and the gateway loads it on the new primary.
    let old = cluster.primary_for(key_slot(key(b).as_bytes()));
    let replica = cluster.replica_of(old);
    assert_eq!(script_exists(replica), "0");
    failover(replica, old).await;
    let (status, body) = http.post("/", call(b)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(verdict(&body["result"]), (true, 0));
    assert_eq!(script_exists(replica), "1");
    http.wait_metric(r#"sluice_gateway_script_loads_total{trigger="noscript",outcome="loaded"}"#, 2.0).await;

    // Anything else is refused on a Cluster too, and nothing runs.
    let sizes = |c: &RedisCluster| c.primaries().into_iter().map(|p| redis_cli(p, &["DBSIZE"])).collect::<Vec<_>>();
    let before = sizes(&cluster);
    for cmd in [json!(["FLUSHALL"]), json!(["EVAL", "redis.call('SET','pwned','1')", "0"]), json!(["SCRIPT", "FLUSH"])] {
        assert_eq!(http.post("/", cmd.clone()).await.0, 400, "{cmd}");
        assert_eq!(http.post("/pipeline", json!([call(c), cmd])).await.0, 400, "{cmd}");
    }
    assert_eq!(sizes(&cluster), before);
    for p in cluster.primaries() {
        assert_eq!(script_exists(p), "1", "primary {p}");
    }

    // Whole cluster down: errors within the timeout, never a hang; /healthz says 503.
    cluster.stop_all();
    let bound = Duration::from_millis(1000 + 2000);
    for (path, body) in [("/", call(a)), ("/pipeline", json!([call(a), call(b)]))] {
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

/// FCALL (Redis 7, the default `auto`): the library on every primary at start, every call run
/// as FCALL; a primary whose functions were flushed gets it again from the call that found it
/// gone (once, the call counted once); a failover needs no load, since Redis passes functions
/// on to replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_runs_calls_as_fcall_of_the_library_on_every_primary() {
    let cluster = RedisCluster::start();
    let seeds = cluster.seed_nodes();
    let gw = TestGateway::start(&["--cluster-nodes", &seeds, "--timeout-ms", "1000"]).await;
    let http = Http::new(&gw.base, None);
    http.wait_metric(r#"sluice_gateway_library_loads_total{trigger="start",outcome="loaded"}"#, 1.0).await;
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3);
    for &p in &primaries {
        assert!(library_loaded(p), "primary {p}");
    }

    let ids = identities_on_three_primaries();
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let (status, body) = http.post("/pipeline", json!([call(a), call(b), call(c), call(a)])).await;
    assert_eq!(status, 200, "{body}");
    let e = body.as_array().expect("array");
    assert_eq!(
        [entry_verdict(&e[0]), entry_verdict(&e[1]), entry_verdict(&e[2]), entry_verdict(&e[3])],
        [(true, LIMIT - 1), (true, LIMIT - 1), (true, LIMIT - 1), (true, LIMIT - 2)]
    );

    // One primary's functions flushed: its calls get the library back, each runs once.
    let flushed = cluster.primary_for(key_slot(key(a).as_bytes()));
    redis_cli(flushed, &["FUNCTION", "FLUSH"]);
    let (status, body) = http.post("/pipeline", json!([call(a), call(b), call(a)])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!([entry_verdict(&body[0]), entry_verdict(&body[1]), entry_verdict(&body[2])], [(true, 2), (true, 3), (true, 1)]);
    assert!(library_loaded(flushed));
    http.wait_metric(r#"sluice_gateway_library_loads_total{trigger="not_found",outcome="loaded"}"#, 1.0).await;

    // A failover: the promoted replica already has the library (once in step with its
    // primary, which the failover waits for).
    let old = cluster.primary_for(key_slot(key(b).as_bytes()));
    let replica = cluster.replica_of(old);
    failover(replica, old).await;
    assert!(library_loaded(replica), "Redis passes functions on to replicas");
    let (status, body) = http.post("/", call(b)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(verdict(&body["result"]), (true, 2));

    let (_, text) = http.get("/metrics").await;
    let value = |series: &str| support::metric_value(&text, series);
    assert_eq!(value(r#"sluice_gateway_library_loads_total{trigger="not_found",outcome="loaded"}"#), 1.0, "{text}");
    // One slot's calls go as one batch: a's two in each pipeline, the second batch sent twice
    // (before and after the load).
    assert_eq!(value("sluice_gateway_redis_batches_total"), 3.0, "{text}");
    assert_eq!(value("sluice_gateway_batched_calls_total"), 6.0);
    assert_eq!(value(r#"sluice_gateway_redis_calls_total{command="EVALSHA"}"#), 0.0);
    assert_eq!(value(r#"sluice_gateway_script_loads_total{trigger="start",outcome="loaded"}"#), 0.0);
    for p in cluster.primaries() {
        assert_eq!(script_exists(p), "0", "primary {p} never needed the script");
    }
}

/// A call that Redis sends on to a node other than the one the gateway's slot map names, and
/// that finds its script or library missing there, still runs, once. So it goes right after a
/// failover, when the client follows MOVED to the new primary before its slot map names it
/// (the map is read from a node that has not heard yet); here, deterministically, with ASK
/// while the slot migrates to a node that lacks it. The load goes where the slot map says (the
/// node that has it), so the call, run again, finds it missing again: the gateway then runs it
/// as EVAL of its own script, redirected like the call, instead of answering "lost again".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_redirected_to_a_node_without_the_script_or_library_still_runs_once() {
    let cluster = RedisCluster::start();
    let seeds = cluster.seed_nodes();
    for (mode, identity, flush) in [("evalsha", 7001u64, ["SCRIPT", "FLUSH"]), ("fcall", 7002, ["FUNCTION", "FLUSH"])] {
        let gw = TestGateway::start(&["--cluster-nodes", &seeds, "--timeout-ms", "1000", "--redis-calls", mode]).await;
        let http = Http::new(&gw.base, None);
        let start_loads = if mode == "fcall" { "library" } else { "script" };
        http.wait_metric(&format!(r#"sluice_gateway_{start_loads}_loads_total{{trigger="start",outcome="loaded"}}"#), 1.0).await;

        let slot = key_slot(key(identity).as_bytes());
        let owner = cluster.primary_for(slot);
        let importer = cluster.primaries().into_iter().find(|&p| p != owner).expect("another primary");
        let id_of = |port: u16| redis_cli(port, &["CLUSTER", "MYID"]).trim().to_string();
        assert_eq!(redis_cli(importer, &flush).trim(), "OK");
        let slot_arg = slot.to_string();
        assert_eq!(redis_cli(importer, &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &id_of(owner)]).trim(), "OK");
        assert_eq!(redis_cli(owner, &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &id_of(importer)]).trim(), "OK");

        // The identity's keys are new: the owner answers ASK, and the call runs on the importer.
        for remaining in [LIMIT - 1, LIMIT - 2] {
            let (status, body) = http.post("/", call(identity)).await;
            assert_eq!(status, 200, "{mode}: {body}");
            assert_eq!(verdict(&body["result"]), (true, remaining), "{mode}: each call counted once");
        }
        // Two in one pipeline: as FCALL they go as a batch, which finds the library missing on
        // the importer again after the load; it did not run, so its calls run one by one. As
        // EVALSHA they go as two calls of one slot, both redirected with ASK.
        let (status, body) = http.post("/pipeline", json!([call(identity), call(identity)])).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!([entry_verdict(&body[0]), entry_verdict(&body[1])], [(true, LIMIT - 3), (true, LIMIT - 4)], "{mode}: {body}");
        // Two calls at once, as from two workers: each is a decision, never the redirect.
        let (a, b) = tokio::join!(http.post("/", call(identity)), http.post("/", call(identity)));
        for (status, body) in [a, b] {
            assert_eq!(status, 200, "{mode}: {body}");
            assert!(body.get("error").is_none(), "{mode}: {body}");
        }
        let keys_in = |port: u16| redis_cli(port, &["CLUSTER", "COUNTKEYSINSLOT", &slot_arg]).trim().to_string();
        assert_eq!(keys_in(owner), "0", "{mode}");
        assert_ne!(keys_in(importer), "0", "{mode}: the calls ran where Redis sent them");
        let (_, text) = http.get("/metrics").await;
        assert!(support::metric_value(&text, r#"sluice_gateway_redis_calls_total{command="EVAL"}"#) >= 1.0, "{mode}: {text}");
    }
}

/// A coordinated failover (`CLUSTER FAILOVER` on a replica in step with its primary) costs no
/// call an answer: the primary holds writes for the few milliseconds until the replica takes
/// over, then answers MOVED; the client follows. Calls keep coming from several clients on the
/// failing primary's slots, through a gateway running EVALSHA (the new primary never had the
/// script: Redis does not pass scripts on) and one running FCALL (Redis passes functions on).
/// Counted, not timed: every answer must be a decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinated_failover_answers_every_call_with_a_decision() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    const CLIENTS: usize = 4;
    const AROUND: usize = 150;
    let cluster = RedisCluster::start();
    let seeds = cluster.seed_nodes();
    let evalsha = TestGateway::start(&["--cluster-nodes", &seeds, "--timeout-ms", "1000", "--redis-calls", "evalsha"]).await;
    let fcall = TestGateway::start(&["--cluster-nodes", &seeds, "--timeout-ms", "1000", "--redis-calls", "fcall"]).await;
    Http::new(&evalsha.base, None)
        .wait_metric(r#"sluice_gateway_script_loads_total{trigger="start",outcome="loaded"}"#, 1.0)
        .await;
    Http::new(&fcall.base, None)
        .wait_metric(r#"sluice_gateway_library_loads_total{trigger="start",outcome="loaded"}"#, 1.0)
        .await;

    let old = cluster.primary_for(0);
    let replica = cluster.replica_of(old);
    assert_eq!(script_exists(replica), "0", "the replica never had the script");
    let ids: Vec<u64> = (1u64..).filter(|&i| third(key_slot(hash_tag(i).as_bytes())) == 0).take(CLIENTS * 2 * 40).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for (g, base) in [&evalsha.base, &fcall.base].into_iter().enumerate() {
        for c in 0..CLIENTS {
            let mine: Vec<u64> = ids.iter().copied().skip(g * CLIENTS + c).step_by(2 * CLIENTS).collect();
            let (http, stop, answered) = (Http::new(base, None), stop.clone(), answered.clone());
            clients.push(tokio::spawn(async move {
                let mut failed = Vec::new();
                for n in 0..20_000usize {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (status, body) = http.post("/", call(mine[n % mine.len()])).await;
                    if status != 200 || body.get("result").is_none() {
                        failed.push(format!("{status} {body}"));
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                failed
            }));
        }
    }
    let wait_answers = |n: usize| {
        let answered = answered.clone();
        async move {
            let from = answered.load(Ordering::Relaxed);
            let deadline = Instant::now() + Duration::from_secs(60);
            while answered.load(Ordering::Relaxed) < from + n {
                assert!(Instant::now() < deadline, "the clients stopped answering");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_answers(AROUND).await;
    failover(replica, old).await;
    wait_answers(AROUND).await;
    stop.store(true, Ordering::Relaxed);
    let mut failed = Vec::new();
    for c in clients {
        failed.extend(c.await.expect("client"));
    }
    let total = answered.load(Ordering::Relaxed);
    assert!(failed.is_empty(), "{} of {total} calls got no decision, e.g. {:?}", failed.len(), &failed[..failed.len().min(3)]);
    assert_eq!(cluster.primary_for(0), replica);
}

/// A batch naming keys on both sides of a migrating slot (one identity's keys still on the
/// owner, another's not yet written) is answered TRYAGAIN as a whole: nothing ran. Its calls
/// then run one by one, each where its keys are, and each is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_across_a_migrating_slot_runs_its_calls_one_by_one() {
    let cluster = RedisCluster::start();
    let (_gw, http) = fcall_gateway(&cluster).await;

    // Two identities whose keys share a slot; the first has counted once already.
    let old = 9001u64;
    let slot = key_slot(key(old).as_bytes());
    let new = (old + 1..).find(|&i| key_slot(key(i).as_bytes()) == slot).expect("another identity in the slot");
    let (status, body) = http.post("/", call(old)).await;
    assert_eq!((status, verdict(&body["result"])), (200, (true, LIMIT - 1)), "{body}");

    let owner = cluster.primary_for(slot);
    let importer = cluster.primaries().into_iter().find(|&p| p != owner).expect("another primary");
    let id_of = |port: u16| redis_cli(port, &["CLUSTER", "MYID"]).trim().to_string();
    let slot_arg = slot.to_string();
    assert_eq!(redis_cli(importer, &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &id_of(owner)]).trim(), "OK");
    assert_eq!(redis_cli(owner, &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &id_of(importer)]).trim(), "OK");

    let batches = || async {
        let (_, text) = http.get("/metrics").await;
        support::metric_value(&text, "sluice_gateway_redis_batches_total")
    };
    let batches_before = batches().await;
    let (status, body) = http.post("/pipeline", json!([call(old), call(new)])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!([entry_verdict(&body[0]), entry_verdict(&body[1])], [(true, LIMIT - 2), (true, LIMIT - 1)], "{body}");
    // The two went as one batch first (answered TRYAGAIN), not one by one from the start.
    assert!(batches().await > batches_before, "no batch was sent");
    let keys_in = |port: u16| redis_cli(port, &["CLUSTER", "COUNTKEYSINSLOT", &slot_arg]).trim().to_string();
    assert_ne!(keys_in(owner), "0", "the old identity counted where its keys are");
    assert_ne!(keys_in(importer), "0", "the new one where Redis sent it");
}

/// A call whose slot its owner does not serve for a while (`CLUSTER DELSLOTS` there: the node
/// answers `CLUSTERDOWN`, as one did during a coordinated failover) ran nowhere: it goes again
/// until the slot is served, and counts once. A slot that stays unserved is answered with
/// Redis' reason after three sends more at most, not with the gateway's timeout, so the
/// filter follows `on_error` in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_answered_clusterdown_goes_again_until_its_slot_is_served() {
    let cluster = RedisCluster::start();
    let (gw, http) = fcall_gateway(&cluster).await;
    let identity = 9101u64;
    let slot = key_slot(key(identity).as_bytes());
    let owner = cluster.primary_for(slot);
    let (status, body) = http.post("/", call(identity)).await;
    assert_eq!((status, verdict(&body["result"])), (200, (true, LIMIT - 1)), "{body}");
    let retries = || async {
        let (_, text) = http.get("/metrics").await;
        support::metric_value(&text, "sluice_gateway_cluster_down_retries_total")
    };
    assert_eq!(retries().await, 0.0);

    let slot_arg = slot.to_string();
    assert_eq!(redis_cli(owner, &["CLUSTER", "DELSLOTS", &slot_arg]).trim(), "OK");
    let pending = tokio::spawn({
        let http = Http::new(&gw.base, None);
        async move { http.post("/", call(identity)).await }
    });
    // Served again once the call has been answered CLUSTERDOWN at least once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while retries().await < 1.0 {
        assert!(Instant::now() < deadline, "the call was never answered CLUSTERDOWN");
        assert!(!pending.is_finished(), "the call ended before its slot was served again");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The call's last send comes some 60-140 ms after its first retry: served again at once,
    // over a socket (starting redis-cli could take that long on a loaded machine).
    let added = support::raw_command(owner, &["CLUSTER", "ADDSLOTS", &slot_arg]).expect("ADDSLOTS");
    assert_eq!(added.trim(), "+OK");
    let (status, body) = pending.await.expect("the call");
    assert_eq!((status, verdict(&body["result"])), (200, (true, LIMIT - 2)), "counted once: {body}");

    // Unserved for good: Redis' reason, and nothing counted.
    assert_eq!(redis_cli(owner, &["CLUSTER", "DELSLOTS", &slot_arg]).trim(), "OK");
    let before = retries().await;
    let (status, body) = http.post("/", call(identity)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.starts_with("CLUSTERDOWN")), "{body}");
    let resent = retries().await - before;
    assert!((1.0..=3.0).contains(&resent), "sent again before giving up, three times at most: {resent}");
    assert_eq!(redis_cli(owner, &["CLUSTER", "ADDSLOTS", &slot_arg]).trim(), "OK");
    let (status, body) = http.post("/", call(identity)).await;
    assert_eq!((status, verdict(&body["result"])), (200, (true, LIMIT - 3)), "{body}");
}

/// A primary that hangs (it neither answers nor closes its connections) is failed over by the
/// cluster within its node timeout, and the gateway must follow: calls for its slots are
/// decided by the promoted replica while the old primary still hangs, and every slot is served
/// once it resumes (as a replica). The cluster client alone waited on the hung node and never
/// learned the new owner: its slots answered 504 for as long as the hang lasted, and after a
/// hang under load, every slot until the gateway was restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_primary_is_failed_over_and_followed_without_a_restart() {
    let cluster = RedisCluster::start_with_args(&["--cluster-node-timeout", "1000"]);
    let seeds = cluster.seed_nodes();
    let gw = TestGateway::start(&["--cluster-nodes", &seeds, "--timeout-ms", "100", "--redis-calls", "fcall"]).await;
    let http = Http::new(&gw.base, None);
    http.wait_metric(r#"sluice_gateway_library_loads_total{trigger="start",outcome="loaded"}"#, 1.0).await;
    let ids = identities_on_three_primaries();
    let decided = |id: u64| {
        let http = &http;
        async move {
            let (status, body) = http.post("/", call(id)).await;
            (status == 200 && body.get("result").is_some(), format!("{status} {body}"))
        }
    };
    for &id in &ids {
        assert!(decided(id).await.0, "identity {id} before the hang");
    }
    let old = cluster.primary_for(0);
    let replica = cluster.replica_of(old);
    // A replica that has not copied its primary yet holds no data it could serve: it never
    // takes over.
    support::wait_until("the replica in step with its primary", || {
        redis_cli(replica, &["INFO", "replication"]).contains("master_link_status:up")
    });
    let node = cluster.nodes.iter().find(|n| n.port == old).expect("the primary's node");
    node.hang(true);
    wait_until_async("the hung primary's slots decided by its promoted replica", || decided(ids[0])).await;
    let (_, metrics) = http.get("/metrics").await;
    assert!(support::metric_value(&metrics, "sluice_gateway_cluster_reconnects_total") >= 1.0, "{metrics}");
    // Asked of the replica: redis-cli would wait on the hung node for good.
    assert!(redis_cli(replica, &["ROLE"]).starts_with("master"), "the replica took over");
    node.hang(false);
    for &id in &ids {
        wait_until_async(&format!("identity {id} decided after the old primary resumed"), || decided(id)).await;
    }
}
