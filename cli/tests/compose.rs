//! examples/compose/docker-compose.yaml against the native topology: no Docker engine runs
//! here, so this checks, by reading the files, that compose and `scripts/integration.sh`
//! (native mode) and tests/e2e/tests/deployed.rs use the same Envoy files, the same ports, the
//! same token and the same Redis Cluster layout, and that what compose mounts exists.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(p: &str) -> String {
    std::fs::read_to_string(root().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn compose() -> Value {
    let mut v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read("examples/compose/docker-compose.yaml")).unwrap();
    v.apply_merge().unwrap();
    serde_yaml_ng::from_value(v).unwrap()
}

fn services(c: &Value) -> &serde_json::Map<String, Value> {
    c["services"].as_object().unwrap()
}

fn yaml(p: &str) -> Value {
    serde_yaml_ng::from_str(&read(p)).unwrap()
}

/// Repository paths of the files a service bind-mounts, and where they land in the container.
fn mounts(service: &Value) -> Vec<(String, String)> {
    let dir = Path::new("examples/compose");
    service["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let parts: Vec<&str> = m.as_str().unwrap().split(':').collect();
            let host = dir.join(parts[0]);
            // Normalise examples/compose/../../x to x.
            let mut norm = PathBuf::new();
            for c in host.components() {
                match c {
                    std::path::Component::ParentDir => {
                        norm.pop();
                    }
                    other => norm.push(other),
                }
            }
            (norm.display().to_string(), parts[1].to_string())
        })
        .collect()
}

fn command(service: &Value) -> Vec<String> {
    service["command"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

/// The `-c FILE` of an Envoy command line.
fn config_arg(args: &[String]) -> String {
    let i = args.iter().position(|a| a == "-c").unwrap();
    args[i + 1].clone()
}

fn endpoint_port(boot: &Value, cluster: &str) -> u64 {
    let c = boot["static_resources"]["clusters"].as_array().unwrap().iter().find(|c| c["name"] == cluster).unwrap();
    c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"]
        .as_u64()
        .unwrap()
}

fn plugin_config(boot: &Value) -> Value {
    let text = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
        ["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .unwrap()
        .to_string();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn every_service_is_there_with_the_official_images() {
    let c = compose();
    let s = services(&c);
    let names: BTreeSet<&str> = s.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = [
        "redis-7000",
        "redis-7001",
        "redis-7002",
        "redis-7003",
        "redis-7004",
        "redis-7005",
        "redis-cluster-create",
        "gateway",
        "upstream",
        "envoy",
    ]
    .into();
    assert_eq!(names, want);
    for (name, svc) in s {
        // Host networking: the shipped files bind and dial 127.0.0.1, unchanged.
        assert_eq!(svc["network_mode"], "host", "{name}");
        assert!(svc.get("ports").is_none(), "{name}: ports do not apply with host networking");
    }
    assert_eq!(s["envoy"]["image"], "envoyproxy/envoy:v1.40.0");
    assert_eq!(s["upstream"]["image"], "envoyproxy/envoy:v1.40.0");
    assert_eq!(s["gateway"]["build"]["dockerfile"], "gateway/Dockerfile");
    assert_eq!(s["gateway"]["build"]["context"], "../..");
    assert!(root().join("gateway/Dockerfile").exists());
}

#[test]
fn the_redis_cluster_has_six_nodes_and_a_one_shot_create() {
    let c = compose();
    let s = services(&c);
    let mut ports = Vec::new();
    for p in 7000..=7005 {
        let cmd = command(&s[&format!("redis-{p}")]);
        let arg = |flag: &str| cmd.iter().position(|a| a == flag).map(|i| cmd[i + 1].clone());
        assert_eq!(arg("--port").as_deref(), Some(p.to_string().as_str()));
        assert_eq!(arg("--cluster-enabled").as_deref(), Some("yes"));
        assert_eq!(arg("--bind").as_deref(), Some("127.0.0.1"));
        ports.push(format!("127.0.0.1:{p}"));
    }
    let create = &s["redis-cluster-create"];
    assert_eq!(create["restart"], "no");
    let deps: BTreeSet<&str> = create["depends_on"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert_eq!(deps.len(), 6);
    let script = command(create).join(" ");
    assert!(script.contains(&format!("--cluster create {}", ports.join(" "))), "{script}");
    assert!(script.contains("--cluster-replicas 1"), "{script}");
    // The gateway waits for the cluster and is given every node.
    assert_eq!(s["gateway"]["depends_on"]["redis-cluster-create"]["condition"], "service_completed_successfully");
    assert_eq!(s["gateway"]["environment"]["SLUICE_GATEWAY_CLUSTER_NODES"], ports.join(","));
}

#[test]
fn compose_wires_the_same_ports_and_token_as_the_envoy_files() {
    let c = compose();
    let s = services(&c);
    let redis_boot = yaml("envoy/redis.yaml");
    let upstream_boot = yaml("envoy/upstream.yaml");
    let env = &s["gateway"]["environment"];
    assert_eq!(env["SLUICE_GATEWAY_LISTEN"], format!("127.0.0.1:{}", endpoint_port(&redis_boot, "sluice_gateway")));
    let token = plugin_config(&redis_boot)["redis"]["token"].as_str().unwrap().to_string();
    assert_eq!(env["SLUICE_GATEWAY_TOKEN"], token.as_str(), "gateway token = redis.token of envoy/redis.yaml");
    let upstream_port =
        upstream_boot["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"].as_u64().unwrap();
    assert_eq!(endpoint_port(&redis_boot, "upstream"), upstream_port);
    // integration.sh passes the same token in native mode.
    assert!(read("scripts/integration.sh").contains(&format!("TOKEN={token}")), "scripts/integration.sh TOKEN");
}

#[test]
fn compose_mounts_existing_files_where_the_commands_look_for_them() {
    let c = compose();
    let s = services(&c);
    for name in ["envoy", "upstream"] {
        let svc = &s[name];
        let wd = svc["working_dir"].as_str().unwrap();
        let cfg = config_arg(&command(svc));
        let m = mounts(svc);
        let inside: Vec<&str> = m.iter().map(|(_, c)| c.as_str()).collect();
        assert!(inside.contains(&format!("{wd}/{cfg}").as_str()), "{name}: -c {cfg} is mounted under {wd}: {m:?}");
        for (host, container) in &m {
            // Each file lands at its repository path under the working directory, so relative
            // paths inside the files (the .wasm) resolve as they do from the repository root.
            assert_eq!(container, &format!("{wd}/{host}"), "{name}");
            if !host.starts_with("target/") {
                assert!(root().join(host).exists(), "{name}: {host} does not exist");
            }
        }
        assert!(command(svc).contains(&"--disable-hot-restart".to_string()), "{name}: two Envoys share the host network");
    }
    let boot = yaml("envoy/redis.yaml");
    let wasm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
        ["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(mounts(&s["envoy"]).iter().any(|(h, _)| *h == wasm), "the .wasm envoy/redis.yaml loads is mounted");
}

/// The files each side loads: compose's mounts, integration.sh's `envoy -c` lines, and the
/// bootstraps tests/e2e/tests/deployed.rs reads. They must be the same set.
#[test]
fn compose_and_the_native_topology_use_the_same_config_files() {
    let c = compose();
    let s = services(&c);
    let compose_files: BTreeSet<String> = s
        .values()
        .flat_map(mounts)
        .map(|(h, _)| h)
        .filter(|h| h.starts_with("envoy/") || h.starts_with("filter-config/"))
        .collect();

    let script = read("scripts/integration.sh");
    let native: BTreeSet<String> = script
        .lines()
        .filter_map(|l| l.trim().strip_prefix("envoy -c "))
        .map(|rest| rest.split_whitespace().next().unwrap().to_string())
        .collect();

    let deployed = read("tests/e2e/tests/deployed.rs");
    let tests: BTreeSet<String> = deployed
        .match_indices("bootstrap(\"")
        .map(|(i, m)| {
            let rest = &deployed[i + m.len()..];
            format!("envoy/{}", &rest[..rest.find('"').unwrap()])
        })
        .collect();

    let want: BTreeSet<String> = ["envoy/redis.yaml", "envoy/upstream.yaml"].into_iter().map(String::from).collect();
    assert_eq!(compose_files, want, "compose mounts");
    assert_eq!(native, want, "integration.sh (native) runs");
    assert_eq!(tests, want, "deployed.rs loads");
    // The plugin config inside envoy/redis.yaml is filter-config/redis.yaml (cli/tests/shipped.rs
    // checks they are identical); deployed.rs reads it from the bootstrap, as Envoy does.
    assert!(read("envoy/redis.yaml").contains("filter-config/redis.yaml as JSON"));
    // Both modes of integration.sh run the same test file against the running topology.
    assert_eq!(script.matches("run_deployed_tests\n").count() + script.matches("run_deployed_tests\r\n").count(), 2, "{script}");
    assert!(script.contains("--test deployed"));
    assert!(script.contains("docker compose -f examples/compose/docker-compose.yaml"));
    assert!(script.contains("scripts/redis-cluster.sh start \"$run_dir/redis\" 7000"), "native cluster on the compose ports");
}
