//! EVERY plugin config the project ships, wherever it lives, against filter-config/schema.json
//! (with the `jsonschema` crate) and against the filter's own compiler:
//! - filter-config/*.yaml|json (except the schema itself);
//! - the StringValue plugin config of the Wasm filter in every envoy/*.yaml, compiled from the
//!   exact bytes Envoy passes to on_configure;
//! - every document under examples/ (Istio WasmPlugin `pluginConfig`, per-route YAML, any
//!   bootstrap), and the yaml/json code blocks of examples/**/*.md;
//! - the yaml/json code blocks of README.md.
//!
//! Nothing is skipped silently: every document or block is either a plugin config (or holds
//! one) or is one of the listed non-config kinds, each checked by its own test; anything else
//! fails. Bootstraps that carry a copy of a YAML config must carry it unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use serde_json::Value;

mod markdown;
use markdown::code_blocks;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string().trim_start_matches("cli/../").to_string()
}

const WASM_FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";

/// A plugin config found somewhere, with the bytes Envoy would receive when there are such.
#[derive(Debug)]
struct Found {
    origin: String,
    doc: Value,
    bytes: Option<Vec<u8>>,
}

/// What a document that is not a plugin config is, and which test checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Other {
    /// An Envoy bootstrap without the sluice filter (envoy/upstream.yaml): tests/e2e envoy_files.rs.
    BootstrapWithoutFilter,
    /// Istio networking resources: cli/tests/istio.rs.
    IstioNetworking,
    /// docker-compose: cli/tests/compose.rs.
    Compose,
    /// An example limited response (problem+json): cli/tests/readme.rs.
    ProblemBody,
    /// A fragment of an Envoy connection manager (the README's trust boundaries): below, it
    /// must be what envoy/local.yaml runs.
    ManagerFragment,
}

fn yaml_documents(text: &str, origin: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let mut v: serde_yaml_ng::Value = serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{origin}: {e}"));
        v.apply_merge().unwrap_or_else(|e| panic!("{origin}: {e}"));
        let v: Value = serde_yaml_ng::from_value(v).unwrap_or_else(|e| panic!("{origin}: {e}"));
        if !v.is_null() {
            out.push(v);
        }
    }
    out
}

fn walk<'a>(v: &'a Value, f: &mut dyn FnMut(&'a serde_json::Map<String, Value>)) {
    match v {
        Value::Object(m) => {
            f(m);
            m.values().for_each(|c| walk(c, f));
        }
        Value::Array(a) => a.iter().for_each(|c| walk(c, f)),
        _ => {}
    }
}

/// The plugin configs of the Wasm filters of a bootstrap.
fn bootstrap_configs(boot: &Value, origin: &str) -> Vec<Found> {
    let mut out = Vec::new();
    walk(boot, &mut |m| {
        if m.get("@type").and_then(Value::as_str) != Some(WASM_FILTER) {
            return;
        }
        let conf = &m["config"]["configuration"];
        assert_eq!(conf["@type"], STRING_VALUE, "{origin}: the plugin config is a StringValue");
        let text = conf["value"].as_str().unwrap_or_else(|| panic!("{origin}: StringValue without value"));
        let doc = serde_json::from_str(text).unwrap_or_else(|e| panic!("{origin}: the plugin config is not JSON: {e}"));
        out.push(Found { origin: format!("{origin} (Wasm filter configuration)"), doc, bytes: Some(text.as_bytes().to_vec()) });
    });
    out
}

/// Sorts one document into configs or a known non-config kind.
fn classify(doc: &Value, origin: &str, configs: &mut Vec<Found>, others: &mut Vec<(Other, String)>) {
    let kind = doc["kind"].as_str().unwrap_or_default();
    if kind == "WasmPlugin" {
        let cfg = doc["spec"]["pluginConfig"].clone();
        assert!(cfg.is_object(), "{origin}: WasmPlugin without pluginConfig");
        configs.push(Found {
            origin: format!("{origin} (WasmPlugin {} pluginConfig)", doc["metadata"]["name"]),
            doc: cfg,
            bytes: None,
        });
    } else if matches!(kind, "ServiceEntry" | "DestinationRule") {
        others.push((Other::IstioNetworking, format!("{origin} ({kind})")));
    } else if doc.get("static_resources").is_some() {
        let found = bootstrap_configs(doc, origin);
        if found.is_empty() {
            others.push((Other::BootstrapWithoutFilter, origin.to_string()));
        }
        configs.extend(found);
    } else if doc.get("services").is_some() {
        others.push((Other::Compose, origin.to_string()));
    } else if doc.get("violated_rules").is_some() && doc.get("status").is_some() {
        others.push((Other::ProblemBody, origin.to_string()));
    } else if doc.get("early_header_mutation_extensions").is_some() {
        let boot = yaml_documents(&std::fs::read_to_string(root().join("envoy/local.yaml")).unwrap(), "envoy/local.yaml");
        let mut found = false;
        walk(&boot[0], &mut |m| {
            found |= m.get("early_header_mutation_extensions") == doc.get("early_header_mutation_extensions")
        });
        assert!(found, "{origin}: envoy/local.yaml does not carry this early_header_mutation_extensions");
        others.push((Other::ManagerFragment, origin.to_string()));
    } else if doc.get("rules").is_some() {
        configs.push(Found { origin: origin.to_string(), doc: doc.clone(), bytes: None });
    } else {
        panic!("{origin}: neither a plugin config nor a known kind of document; classify it in cli/tests/shipped.rs:\n{doc}");
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn ext(p: &Path) -> &str {
    p.extension().and_then(|e| e.to_str()).unwrap_or_default()
}

fn collect() -> (Vec<Found>, Vec<(Other, String)>) {
    let mut configs = Vec::new();
    let mut others = Vec::new();

    let mut fc: Vec<PathBuf> = std::fs::read_dir(root().join("filter-config")).unwrap().map(|e| e.unwrap().path()).collect();
    fc.sort();
    for p in fc.iter().filter(|p| matches!(ext(p), "yaml" | "yml" | "json") && !p.ends_with("schema.json")) {
        let text = std::fs::read_to_string(p).unwrap();
        let docs = yaml_documents(&text, &rel(p));
        assert_eq!(docs.len(), 1, "{}: one config per file", rel(p));
        configs.push(Found { origin: rel(p), doc: docs.into_iter().next().unwrap(), bytes: None });
    }

    let mut envoy: Vec<PathBuf> = std::fs::read_dir(root().join("envoy")).unwrap().map(|e| e.unwrap().path()).collect();
    envoy.sort();
    for p in envoy.iter().filter(|p| ext(p) == "yaml") {
        for doc in yaml_documents(&std::fs::read_to_string(p).unwrap(), &rel(p)) {
            classify(&doc, &rel(p), &mut configs, &mut others);
        }
    }

    let mut examples = Vec::new();
    files_under(&root().join("examples"), &mut examples);
    examples.sort();
    let mut markdown = vec![root().join("README.md")];
    for p in &examples {
        match ext(p) {
            "yaml" | "yml" | "json" => {
                for doc in yaml_documents(&std::fs::read_to_string(p).unwrap(), &rel(p)) {
                    classify(&doc, &rel(p), &mut configs, &mut others);
                }
            }
            "md" => markdown.push(p.clone()),
            _ => {}
        }
    }
    for p in markdown {
        let text = std::fs::read_to_string(&p).unwrap();
        for (line, lang, body) in code_blocks(&text) {
            if !matches!(lang.as_str(), "yaml" | "yml" | "json") {
                continue;
            }
            let origin = format!("{}:{line} ({lang} block)", rel(&p));
            for doc in yaml_documents(&body, &origin) {
                classify(&doc, &origin, &mut configs, &mut others);
            }
        }
    }
    (configs, others)
}

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join("filter-config/schema.json")).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

#[test]
fn every_shipped_config_passes_the_schema_and_the_filters_compiler() {
    let (configs, others) = collect();
    let v = validator();
    let mut problems = Vec::new();
    for f in &configs {
        let errs: Vec<String> = v.iter_errors(&f.doc).map(|e| format!("{}: {e}", e.instance_path())).collect();
        if !errs.is_empty() {
            problems.push(format!("{}: schema: {errs:?}", f.origin));
        }
        let compiled = match &f.bytes {
            Some(bytes) => sluice::config::compile_json(bytes),
            None => sluice::config::compile(&f.doc),
        };
        if let Err(e) = compiled {
            problems.push(format!("{}: compiler: {e}", f.origin));
        }
    }
    let mut list: Vec<&str> = configs.iter().map(|f| f.origin.as_str()).collect();
    list.sort();
    eprintln!("{} plugin configs checked:\n  {}", configs.len(), list.join("\n  "));
    eprintln!("{} other documents: {others:?}", others.len());
    assert!(problems.is_empty(), "{problems:#?}");

    // Each place is covered (so a broken collector cannot pass by finding nothing).
    let from = |prefix: &str| configs.iter().filter(|f| f.origin.starts_with(prefix)).count();
    assert!(from("filter-config/") >= 6, "filter-config: {}", from("filter-config/"));
    assert!(from("envoy/") >= 5, "envoy: {}", from("envoy/"));
    assert!(from("examples/istio/") >= 2, "istio: {}", from("examples/istio/"));
    assert!(from("examples/per-route/") >= 1, "per-route: {}", from("examples/per-route/"));
    assert!(from("README.md") >= 1, "README: {}", from("README.md"));
    let kinds: std::collections::BTreeSet<Other> = others.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        vec![Other::BootstrapWithoutFilter, Other::IstioNetworking, Other::Compose, Other::ProblemBody, Other::ManagerFragment],
        "{others:?}"
    );
}

/// Bootstraps that carry a YAML config as JSON carry it unchanged.
#[test]
fn bootstraps_carry_their_yaml_configs_unchanged() {
    let pairs = [
        ("envoy/local.yaml", "filter-config/local.yaml"),
        ("envoy/redis.yaml", "filter-config/redis.yaml"),
        ("envoy/per-route.yaml", "examples/per-route/rules.yaml"),
        ("envoy/websocket.yaml", "filter-config/websocket.yaml"),
    ];
    for (boot, yaml) in pairs {
        let b = yaml_documents(&std::fs::read_to_string(root().join(boot)).unwrap(), boot);
        let inside = bootstrap_configs(&b[0], boot);
        assert_eq!(inside.len(), 1, "{boot}");
        let y = yaml_documents(&std::fs::read_to_string(root().join(yaml)).unwrap(), yaml);
        assert_eq!(inside[0].doc, y[0], "{boot} does not carry {yaml} as it is: update the copy");
    }
}

/// The collector itself: a broken config in any of the places is caught.
#[test]
fn the_collector_sees_broken_configs_in_each_kind_of_place() {
    let v = validator();
    let bad_rule = r#"{"rules": [{"name": "a", "limit": "5/fortnight"}]}"#;
    let boot = format!(
        "static_resources:\n  listeners:\n  - filter_chains:\n    - filters:\n      - typed_config:\n          \"@type\": {WASM_FILTER}\n          config:\n            configuration:\n              \"@type\": {STRING_VALUE}\n              value: '{bad_rule}'\n"
    );
    let plugin = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: x}\nspec:\n  url: oci://x/y:1\n  pluginConfig:\n    rules: [{name: a, limit: 5/fortnight}]\n";
    let md = "text\n\n```yaml\nrules:\n  - name: a\n    limit: 5/fortnight\n```\n";
    let mut configs = Vec::new();
    let mut others = Vec::new();
    for (origin, text) in [("boot", boot.as_str()), ("plugin", plugin)] {
        for doc in yaml_documents(text, origin) {
            classify(&doc, origin, &mut configs, &mut others);
        }
    }
    for (line, _, body) in code_blocks(md) {
        for doc in yaml_documents(&body, &format!("md:{line}")) {
            classify(&doc, "md", &mut configs, &mut others);
        }
    }
    assert_eq!(configs.len(), 3, "{configs:?}");
    for f in configs {
        let compiled = match &f.bytes {
            Some(b) => sluice::config::compile_json(b),
            None => sluice::config::compile(&f.doc),
        };
        assert!(compiled.is_err(), "{}", f.origin);
        assert!(!v.is_valid(&f.doc), "{}", f.origin);
    }
}
