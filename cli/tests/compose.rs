//! examples/compose/docker-compose.yaml against the native topology, by reading the files (the
//! compose run itself is `scripts/integration.sh --compose`, in CI after the native one): that
//! compose and `scripts/integration.sh` (native mode) and tests/e2e/tests/deployed.rs use the
//! same Envoy files, the same ports, the same token and the same Redis Cluster layout, that what
//! compose mounts exists, that its start order makes `up` return with Envoy serving, that both
//! Compose v1.29 and v2 accept it, and that every image it names can be replaced by a local one
//! (scripts/images.sh builds them all).

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

const COMPOSE: &str = "examples/compose/docker-compose.yaml";

/// The image variables the compose file reads, as its header lists them.
const IMAGE_VARS: [&str; 3] = ["SLUICE_REDIS_IMAGE", "SLUICE_ENVOY_IMAGE", "SLUICE_GATEWAY_IMAGE"];

/// The compose file as Compose reads it with no variable set: anchors merged, `${VAR:-default}`
/// replaced by its default and `$$` by `$`.
fn compose() -> Value {
    let mut v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read(COMPOSE)).unwrap();
    v.apply_merge().unwrap();
    let mut v: Value = serde_yaml_ng::from_value(v).unwrap();
    interpolate(&mut v);
    v
}

/// Every `${NAME:-default}` of the compose file: (NAME, default).
fn variables(text: &str) -> Vec<(String, String)> {
    text.match_indices("${")
        .map(|(i, _)| {
            let rest = &text[i + 2..];
            let body = &rest[..rest.find('}').unwrap()];
            let (name, default) = body.split_once(":-").unwrap_or_else(|| panic!("${{{body}}} has no default"));
            (name.to_string(), default.to_string())
        })
        .collect()
}

fn interpolate(v: &mut Value) {
    match v {
        Value::String(s) => {
            let mut out = s.replace("$$", "\u{0}");
            for (name, default) in variables(&out.clone()) {
                out = out.replace(&format!("${{{name}:-{default}}}"), &default);
            }
            *s = out.replace('\u{0}', "$");
        }
        Value::Array(a) => a.iter_mut().for_each(interpolate),
        Value::Object(m) => m.values_mut().for_each(interpolate),
        _ => {}
    }
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
        "warm-up",
        "ready",
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
    for name in ["redis-7000", "redis-7005", "redis-cluster-create", "warm-up", "ready"] {
        assert_eq!(s[name]["image"], "redis:7", "{name}");
    }
    // `--build` tags gateway/Dockerfile's image with this name, the same with v1 and v2.
    assert_eq!(s["gateway"]["image"], "sluice-gateway");
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
    assert_eq!(depends(create).len(), 6);
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
    assert!(script.contains("docker compose -f examples/compose/docker-compose.yaml"), "Compose v2");
    assert!(script.contains("docker-compose -f examples/compose/docker-compose.yaml"), "Compose v1");
    assert!(script.contains("scripts/redis-cluster.sh start \"$run_dir/redis\" 7000"), "native cluster on the compose ports");
}

/// Each image can be replaced through a variable with the public image as its default, the
/// header names every variable, and scripts/images.sh hands integration.sh a local image for
/// each: the compose run reaches no registry.
#[test]
fn every_image_is_a_variable_and_the_local_run_sets_each() {
    let text = read(COMPOSE);
    let vars = variables(&text);
    let names: BTreeSet<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, IMAGE_VARS.into(), "variables of {COMPOSE}");
    for line in text.lines().filter(|l| l.contains("${")) {
        assert!(line.trim_start().starts_with("image: ${"), "only images are variables: {line}");
    }
    let images = read("scripts/images.sh");
    for var in IMAGE_VARS {
        assert!(text.lines().any(|l| l.starts_with(&format!("#   {var} "))), "the header documents {var}");
        assert!(images.contains(&format!("echo \"{var}=$")), "scripts/images.sh prints {var}");
    }
    let script = read("scripts/integration.sh");
    assert!(
        script.contains("images=$(./scripts/images.sh)") && script.contains("SLUICE_*_IMAGE) export"),
        "integration.sh exports them"
    );
    // The local images are built from files that exist, and the run takes none from a build.
    for file in ["redis", "envoy", "gateway"] {
        let path = format!("examples/compose/local-images/{file}.Dockerfile");
        assert!(root().join(&path).exists() && images.contains(&path), "{path}");
    }
    assert!(script.contains("up -d --no-build"), "the local gateway image is not rebuilt from gateway/Dockerfile");
}

/// The gateway image made from the host's binary is gateway/Dockerfile's runtime stage: the
/// same user, listen default, port, stop signal and entrypoint.
#[test]
fn the_local_gateway_image_runs_like_gateway_dockerfile() {
    fn runtime(text: &str) -> Vec<String> {
        let lines: Vec<&str> = text.lines().collect();
        let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
        lines[last_from + 1..]
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("COPY "))
            .map(String::from)
            .collect()
    }
    let shipped = runtime(&read("gateway/Dockerfile"));
    let local = runtime(&read("examples/compose/local-images/gateway.Dockerfile"));
    assert_eq!(local, shipped);
    assert!(shipped.iter().any(|l| l.starts_with("ENTRYPOINT")) && shipped.iter().any(|l| l.starts_with("USER")), "{shipped:?}");
}

fn depends(service: &Value) -> Vec<(String, String)> {
    service["depends_on"]
        .as_object()
        .unwrap_or_else(|| panic!("depends_on must give a condition for each dependency: {service}"))
        .iter()
        .map(|(k, v)| (k.clone(), v["condition"].as_str().unwrap().to_string()))
        .collect()
}

/// The port a health check's `test` dials (bash's /dev/tcp/127.0.0.1/N).
fn probe_port(service: &Value) -> u64 {
    let test = &service["healthcheck"]["test"];
    let cmd = test.as_array().unwrap().last().unwrap().as_str().unwrap();
    let at = cmd.find("/dev/tcp/127.0.0.1/").unwrap_or_else(|| panic!("{cmd}")) + "/dev/tcp/127.0.0.1/".len();
    cmd[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
}

/// `up -d` returns only when Envoy serves: each service waits for the health (or completion)
/// of what it needs, each such health check probes the service's own port, the Redis nodes are
/// waited for by the one-shot create, the one-shot warm-up sends requests through Envoy once it
/// is healthy, and the one-shot `ready` waits for the warm-up. Every wait is bounded.
#[test]
fn the_start_order_makes_up_return_with_envoy_serving() {
    let c = compose();
    let s = services(&c);
    let redis_boot = yaml("envoy/redis.yaml");
    let upstream_boot = yaml("envoy/upstream.yaml");
    let admin = |b: &Value| b["admin"]["address"]["socket_address"]["port_value"].as_u64().unwrap();
    let healthy = |names: &[&str]| -> Vec<(String, String)> {
        names.iter().map(|n| (n.to_string(), "service_healthy".to_string())).collect()
    };
    let started: Vec<(String, String)> = (7000..=7005).map(|p| (format!("redis-{p}"), "service_started".to_string())).collect();
    assert_eq!(depends(&s["redis-cluster-create"]), started);
    assert_eq!(depends(&s["gateway"]), vec![("redis-cluster-create".to_string(), "service_completed_successfully".to_string())]);
    assert_eq!(depends(&s["envoy"]), healthy(&["gateway", "upstream"]));
    assert_eq!(depends(&s["warm-up"]), healthy(&["envoy"]));
    assert_eq!(depends(&s["ready"]), vec![("warm-up".to_string(), "service_completed_successfully".to_string())]);

    let waited_for: BTreeSet<&str> = ["gateway", "upstream", "envoy"].into();
    for (name, svc) in s {
        assert_eq!(
            svc["healthcheck"].is_object(),
            waited_for.contains(name.as_str()),
            "{name}: a health check where one is waited for"
        );
        let one_shot = ["redis-cluster-create", "warm-up", "ready"].contains(&name.as_str());
        assert_eq!(svc["restart"], if one_shot { "no" } else { "unless-stopped" }, "{name}");
    }
    for name in &waited_for {
        let h = &s[*name]["healthcheck"];
        assert_eq!(h["test"][0], "CMD", "{name}: exec form");
        let secs = |k: &str| h[k].as_str().unwrap().trim_end_matches('s').parse::<u64>().unwrap();
        let bound = secs("interval") * h["retries"].as_u64().unwrap();
        assert!((10..=120).contains(&bound), "{name}: unhealthy after {bound} s");
    }
    assert_eq!(probe_port(&s["gateway"]), endpoint_port(&redis_boot, "sluice_gateway"));
    assert_eq!(probe_port(&s["envoy"]), admin(&redis_boot));
    assert_eq!(probe_port(&s["upstream"]), admin(&upstream_boot));

    // The create's waits: every node, then the cluster, each bounded.
    let create = command(&s["redis-cluster-create"]).join(" ");
    assert!(create.contains("for i in $(seq 300)") && !create.contains("until "), "{create}");
    assert!(create.contains("for p in 7000 7001 7002 7003 7004 7005") && create.contains("redis-cli -p $p ping"), "{create}");
    // The warm-up goes through Envoy's listener, to a path of a Redis-backed rule, under one
    // deadline.
    let warm = command(&s["warm-up"]).join(" ");
    let listener = redis_boot["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"].as_u64().unwrap();
    assert!(warm.contains(&format!("/dev/tcp/127.0.0.1/{listener}")), "{warm}");
    assert!(warm.contains("GET /api/") && warm.contains("x-api-key: warm-up-%s"), "{warm}");
    assert!(warm.contains("deadline=$((SECONDS + 60))") && warm.contains("(( SECONDS < deadline ))"), "{warm}");
    let api = plugin_config(&redis_boot)["rules"].as_array().unwrap().iter().find(|r| r["name"] == "api").cloned().unwrap();
    assert_eq!((api["match"]["path"].as_str(), api["backend"].as_str()), (Some("/api/**"), Some("redis")));
    assert_eq!(api["identifier"]["header"], "x-api-key", "one counter per warm-up request");
}

/// Compose v1.29 rejects a top-level `name:` (v2 accepts it): the project name comes from
/// .env, which both read from the compose file's directory, and integration.sh cleans up by it.
#[test]
fn both_compose_versions_accept_the_file_and_name_the_project() {
    let c = compose();
    let top: BTreeSet<&str> = c.as_object().unwrap().keys().map(String::as_str).filter(|k| !k.starts_with("x-")).collect();
    assert_eq!(top, ["services"].into(), "top-level keys Compose v1.29 accepts without a version");
    let env = read("examples/compose/.env");
    assert!(env.lines().any(|l| l == "COMPOSE_PROJECT_NAME=sluice"), "{env}");
    assert!(read("scripts/integration.sh").contains("PROJECT=sluice"));
}
