//! examples/istio against what Istio documents (istio/api extensions/v1alpha1/wasm.proto and
//! networking/v1alpha3/{service_entry,destination_rule}.proto): the WasmPlugin resources use
//! only documented fields and enum values, their pluginConfig passes the schema and the
//! filter's compiler, the Redis cluster they name is the one the ServiceEntry creates, and the
//! Dockerfile builds the image layout Istio pulls (one layer holding plugin.wasm).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn docs(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join("examples/istio").join(name)).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

// WasmPlugin.spec, from wasm.proto (JSON names). targetRef and verificationKey are hidden from
// Istio's docs but part of the API.
const SPEC_FIELDS: &[&str] = &[
    "selector",
    "targetRef",
    "targetRefs",
    "url",
    "sha256",
    "imagePullPolicy",
    "imagePullSecret",
    "verificationKey",
    "pluginConfig",
    "pluginName",
    "phase",
    "priority",
    "failStrategy",
    "vmConfig",
    "match",
    "type",
];
const PHASES: &[&str] = &["UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"];
const PULL_POLICIES: &[&str] = &["UNSPECIFIED_POLICY", "IfNotPresent", "Always"];
const FAIL_STRATEGIES: &[&str] = &["FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"];
const PLUGIN_TYPES: &[&str] = &["UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"];
const WORKLOAD_MODES: &[&str] = &["UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"];
const ENV_SOURCES: &[&str] = &["INLINE", "HOST"];
const URL_SCHEMES: &[&str] = &["oci", "file", "http", "https"];

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().map(|m| m.keys().map(String::as_str).collect()).unwrap_or_default()
}

fn only(v: &Value, allowed: &[&str], what: &str) {
    for k in keys(v) {
        assert!(allowed.contains(&k), "{what}: {k:?} is not a documented field (allowed: {allowed:?})");
    }
}

fn one_of(v: &Value, allowed: &[&str], what: &str) {
    let s = v.as_str().unwrap_or_else(|| panic!("{what}: {v} is not a string"));
    assert!(allowed.contains(&s), "{what}: {s:?} is not one of {allowed:?}");
}

fn dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks one WasmPlugin against the documented API; returns its url scheme.
fn check_wasm_plugin(doc: &Value, file: &str) -> String {
    assert_eq!(doc["apiVersion"], "extensions.istio.io/v1alpha1", "{file}");
    let name = doc["metadata"]["name"].as_str().unwrap_or_default();
    assert!(dns_label(name), "{file}: metadata.name {name:?}");
    assert!(doc["metadata"]["namespace"].as_str().is_some_and(dns_label), "{file}: metadata.namespace");
    let spec = &doc["spec"];
    only(spec, SPEC_FIELDS, file);
    let targets = ["selector", "targetRef", "targetRefs"].iter().filter(|k| spec.get(**k).is_some()).count();
    assert!(targets <= 1, "{file}: only one of selector, targetRef, targetRefs");
    if let Some(sel) = spec.get("selector") {
        only(sel, &["matchLabels"], &format!("{file}: selector"));
        assert!(sel["matchLabels"].as_object().is_some_and(|m| !m.is_empty() && m.values().all(Value::is_string)), "{file}");
    }
    let url = spec["url"].as_str().unwrap_or_else(|| panic!("{file}: url is required"));
    assert!(!url.is_empty(), "{file}: url");
    let scheme = url.split_once("://").map_or("oci", |(s, _)| s).to_string();
    assert!(URL_SCHEMES.contains(&scheme.as_str()), "{file}: url scheme {scheme:?}");
    if let Some(sha) = spec.get("sha256") {
        let s = sha.as_str().unwrap_or_default();
        assert!(
            s.is_empty() || (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())),
            "{file}: sha256"
        );
    }
    if let Some(p) = spec.get("imagePullPolicy") {
        one_of(p, PULL_POLICIES, &format!("{file}: imagePullPolicy"));
    }
    if let Some(s) = spec.get("imagePullSecret") {
        assert!(s.as_str().is_some_and(|s| (1..=253).contains(&s.len())), "{file}: imagePullSecret");
    }
    if let Some(n) = spec.get("pluginName") {
        assert!(n.as_str().is_some_and(|s| (1..=256).contains(&s.len())), "{file}: pluginName");
    }
    if let Some(p) = spec.get("phase") {
        one_of(p, PHASES, &format!("{file}: phase"));
    }
    if let Some(p) = spec.get("priority") {
        assert!(p.as_i64().is_some_and(|x| i32::try_from(x).is_ok()), "{file}: priority is an int32");
    }
    if let Some(f) = spec.get("failStrategy") {
        one_of(f, FAIL_STRATEGIES, &format!("{file}: failStrategy"));
    }
    if let Some(t) = spec.get("type") {
        one_of(t, PLUGIN_TYPES, &format!("{file}: type"));
    }
    if let Some(vm) = spec.get("vmConfig") {
        only(vm, &["env"], &format!("{file}: vmConfig"));
        for e in vm["env"].as_array().into_iter().flatten() {
            only(e, &["name", "value", "valueFrom"], &format!("{file}: vmConfig.env"));
            assert!(e["name"].as_str().is_some_and(|s| !s.is_empty()), "{file}: env name");
            if let Some(src) = e.get("valueFrom") {
                one_of(src, ENV_SOURCES, &format!("{file}: env valueFrom"));
            }
        }
    }
    for m in spec["match"].as_array().into_iter().flatten() {
        only(m, &["mode", "ports"], &format!("{file}: match"));
        if let Some(mode) = m.get("mode") {
            one_of(mode, WORKLOAD_MODES, &format!("{file}: match.mode"));
        }
        for p in m["ports"].as_array().into_iter().flatten() {
            only(p, &["number"], &format!("{file}: match.ports"));
        }
    }
    assert!(spec["pluginConfig"].is_object(), "{file}: pluginConfig");
    scheme
}

#[test]
fn wasm_plugins_use_only_documented_fields_and_values() {
    let mut schemes = Vec::new();
    for file in ["wasmplugin.yaml", "wasmplugin-file.yaml"] {
        let d = docs(file);
        assert_eq!(d.len(), 1, "{file}");
        assert_eq!(d[0]["kind"], "WasmPlugin", "{file}");
        schemes.push(check_wasm_plugin(&d[0], file));
        // The filter reads its plugin config as it is: no root_id/pluginName is needed.
        assert!(d[0]["spec"].get("pluginName").is_none(), "{file}");
    }
    assert_eq!(schemes, vec!["oci", "file"], "an OCI and a file:// variant");
}

#[test]
fn the_shape_check_rejects_what_istio_would() {
    let good = docs("wasmplugin.yaml").remove(0);
    let broken = |path: &[&str], value: Value| {
        let mut d = good.clone();
        let mut at = &mut d["spec"];
        for p in &path[..path.len() - 1] {
            at = &mut at[*p];
        }
        at[path[path.len() - 1]] = value;
        std::panic::catch_unwind(|| check_wasm_plugin(&d, "mutant")).is_err()
    };
    assert!(broken(&["phase"], "AUTHORIZATION".into()));
    assert!(broken(&["failStrategy"], "FAIL_CLOSED".into()), "Istio spells it FAIL_CLOSE");
    assert!(broken(&["imagePullPolicy"], "IF_NOT_PRESENT".into()));
    assert!(broken(&["url"], "ftp://x/y.wasm".into()));
    assert!(broken(&["sha256"], "abc".into()));
    assert!(broken(&["priority"], Value::from(1u64 << 40)));
    assert!(broken(&["pluginConfigs"], serde_json::json!({})));
    assert!(broken(
        &["targetRefs"],
        serde_json::json!([{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}])
    ));
    assert!(broken(&["match"], serde_json::json!([{"mode": "INBOUND"}])));
}

#[test]
fn plugin_configs_pass_the_schema_and_the_compiler() {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("filter-config/schema.json")).unwrap()).unwrap();
    let v = jsonschema::validator_for(&schema).unwrap();
    for file in ["wasmplugin.yaml", "wasmplugin-file.yaml"] {
        let cfg = &docs(file)[0]["spec"]["pluginConfig"];
        let errs: Vec<String> = v.iter_errors(cfg).map(|e| e.to_string()).collect();
        assert!(errs.is_empty(), "{file}: {errs:?}");
        // Istio hands the Struct to the filter as JSON text: compile those bytes.
        let bytes = serde_json::to_vec(cfg).unwrap();
        if let Err(e) = sluice::config::compile_json(&bytes) {
            panic!("{file}: {e}");
        }
    }
}

#[test]
fn the_redis_cluster_is_the_one_the_service_entry_creates() {
    let plugin = docs("wasmplugin.yaml").remove(0);
    let redis = &plugin["spec"]["pluginConfig"]["redis"];
    let net = docs("gateway.yaml");
    let se = net.iter().find(|d| d["kind"] == "ServiceEntry").expect("ServiceEntry");
    let dr = net.iter().find(|d| d["kind"] == "DestinationRule").expect("DestinationRule");
    for d in [se, dr] {
        assert_eq!(d["apiVersion"], "networking.istio.io/v1", "{}", d["kind"]);
        assert_eq!(d["metadata"]["namespace"], plugin["metadata"]["namespace"], "same namespace as the WasmPlugin");
    }
    only(
        &se["spec"],
        &[
            "hosts",
            "addresses",
            "ports",
            "location",
            "resolution",
            "endpoints",
            "workloadSelector",
            "exportTo",
            "subjectAltNames",
        ],
        "ServiceEntry",
    );
    one_of(&se["spec"]["location"], &["MESH_EXTERNAL", "MESH_INTERNAL"], "location");
    one_of(&se["spec"]["resolution"], &["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"], "resolution");
    let host = se["spec"]["hosts"][0].as_str().unwrap();
    let port = &se["spec"]["ports"][0];
    only(port, &["number", "protocol", "name", "targetPort"], "ServiceEntry port");
    assert_eq!(port["protocol"], "HTTP2", "the gateway is reached over h2c, as envoy/redis.yaml reaches it");
    assert_eq!(redis["cluster"], format!("outbound|{}||{host}", port["number"]), "Istio names the cluster outbound|PORT||HOST");
    assert_eq!(redis["authority"], host);
    assert_eq!(redis["transport"], Value::Null, "HTTP transport (the default) in Istio");

    only(&dr["spec"], &["host", "trafficPolicy", "subsets", "exportTo", "workloadSelector"], "DestinationRule");
    assert_eq!(dr["spec"]["host"], host);
    let tp = &dr["spec"]["trafficPolicy"];
    only(
        tp,
        &[
            "loadBalancer",
            "connectionPool",
            "outlierDetection",
            "tls",
            "portLevelSettings",
            "tunnel",
            "proxyProtocol",
            "retryBudget",
        ],
        "trafficPolicy",
    );
    only(&tp["connectionPool"], &["tcp", "http"], "connectionPool");
    only(
        &tp["connectionPool"]["tcp"],
        &["maxConnections", "connectTimeout", "tcpKeepalive", "maxConnectionDuration", "idleTimeout"],
        "tcp",
    );
    only(
        &tp["connectionPool"]["http"],
        &[
            "http1MaxPendingRequests",
            "http2MaxRequests",
            "maxRequestsPerConnection",
            "maxRetries",
            "idleTimeout",
            "h2UpgradePolicy",
            "useClientProtocol",
            "maxConcurrentStreams",
        ],
        "http",
    );
    let upgrade = &tp["connectionPool"]["http"]["h2UpgradePolicy"];
    if !upgrade.is_null() {
        one_of(upgrade, &["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"], "h2UpgradePolicy");
    }
    only(
        &tp["outlierDetection"],
        &[
            "splitExternalLocalOriginErrors",
            "consecutiveLocalOriginFailures",
            "consecutiveGatewayErrors",
            "consecutive5xxErrors",
            "interval",
            "baseEjectionTime",
            "maxEjectionPercent",
            "minHealthPercent",
        ],
        "outlierDetection",
    );
}

#[test]
fn the_image_has_one_layer_holding_plugin_wasm() {
    let text = std::fs::read_to_string(root().join("examples/istio/Dockerfile")).unwrap();
    let instructions: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert_eq!(instructions, vec!["FROM scratch", "COPY target/wasm32-wasip1/release/sluice.wasm ./plugin.wasm"]);
    let ignore = std::fs::read_to_string(root().join("examples/istio/Dockerfile.dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "!target/wasm32-wasip1/release/sluice.wasm"), "the build context keeps the .wasm");
    // The url of the OCI variant is the tag the Dockerfile's header builds.
    let url = docs("wasmplugin.yaml")[0]["spec"]["url"].as_str().unwrap().to_string();
    let tag = url.trim_start_matches("oci://");
    assert!(text.contains(&format!("-t {tag} .")) && text.contains(&format!("docker push {tag}")), "{tag}");
}
