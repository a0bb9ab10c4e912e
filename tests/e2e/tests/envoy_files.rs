//! Every Envoy file shipped in envoy/: `envoy --mode validate` accepts it as shipped, from the
//! repository root (as each file's header says to run it), and it follows the house rules:
//! a header saying how to run it, loopback addresses only, an admin port, and
//! `failure_policy: FAIL_RELOAD` on the sluice filter.
//!
//! `envoy --mode validate` is worth running because it is not a schema check: it creates every
//! Wasm VM and runs the plugin's on_configure (a bad plugin config or a module with a missing
//! import fails validation, shown below). That is also why envoy/higress-redis.yaml cannot be
//! validated as shipped with stock Envoy: its module imports Higress' proxy_redis_* functions,
//! which stock Envoy does not provide. It is validated with sluice.wasm swapped in instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use sluice_e2e::{repo, wasm, TempDir};

const HIGRESS: &str = "higress-redis.yaml";
const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";

fn envoy_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("envoy"))
        .expect("envoy/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml"))
        .collect();
    files.sort();
    files
}

fn validate(path: &Path) -> Output {
    // The .wasm paths in the files are relative to the repository root.
    Command::new("envoy").args(["--mode", "validate", "-c"]).arg(path).current_dir(repo()).output().expect("run envoy")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("read");
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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

fn walk_mut(v: &mut Value, f: &mut dyn FnMut(&mut serde_json::Map<String, Value>)) {
    match v {
        Value::Object(m) => {
            f(m);
            m.values_mut().for_each(|c| walk_mut(c, f));
        }
        Value::Array(a) => a.iter_mut().for_each(|c| walk_mut(c, f)),
        _ => {}
    }
}

#[test]
fn every_shipped_envoy_file_validates() {
    let files = envoy_files();
    assert!(files.len() >= 6, "{files:?}");
    for path in &files {
        if path.ends_with(HIGRESS) {
            continue; // see higress_variant_* below
        }
        let out = validate(path);
        assert!(out.status.success(), "{} does not validate:\n{}", path.display(), text(&out));
    }
}

#[test]
fn shipped_envoy_files_follow_the_house_rules() {
    for path in envoy_files() {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let raw = std::fs::read_to_string(&path).expect("read");
        let header: Vec<&str> = raw.lines().take_while(|l| l.starts_with('#')).collect();
        assert!(header.len() >= 3, "{name}: a comment header explains the file");
        assert!(
            header.iter().any(|l| l.contains(&format!("envoy -c envoy/{name}"))),
            "{name}: the header says how to run it (envoy -c envoy/{name} ...)"
        );
        let boot = load(&path);
        let admin = &boot["admin"]["address"]["socket_address"];
        assert_eq!(admin["address"], "127.0.0.1", "{name}: admin on loopback");
        assert!(admin["port_value"].as_u64().is_some_and(|p| p > 0), "{name}: an admin port");
        let mut addresses = 0;
        let mut filters = 0;
        let mut managers = 0;
        walk(&boot, &mut |m| {
            // A connection manager in front of sluice hands it paths as applications route on
            // them: without these, `//login` or `/x/../login` would pass a rule on `/login`.
            let wasm = |f: &Value| f["typed_config"]["@type"] == "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
            if m.get("http_filters").and_then(Value::as_array).is_some_and(|fs| fs.iter().any(wasm)) {
                assert_eq!((&m["normalize_path"], &m["merge_slashes"]), (&Value::Bool(true), &Value::Bool(true)), "{name}");
                managers += 1;
            }
            if let Some(sa) = m.get("socket_address") {
                addresses += 1;
                assert_eq!(sa["address"], "127.0.0.1", "{name}: every address is loopback: {sa}");
            }
            if m.get("@type").and_then(Value::as_str) == Some("type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm") {
                filters += 1;
                let c = &m["config"];
                assert_eq!(c["failure_policy"], "FAIL_RELOAD", "{name}: a trap must restart the VM");
                assert_eq!(c["vm_config"]["runtime"], "envoy.wasm.runtime.v8", "{name}");
                let file = c["vm_config"]["code"]["local"]["filename"].as_str().unwrap_or_default();
                assert!(file.starts_with("target/wasm32-wasip1/release/"), "{name}: the .wasm comes from the build: {file}");
                assert_eq!(c["configuration"]["@type"], STRING_VALUE, "{name}: the plugin config is a StringValue");
            }
        });
        assert!(addresses >= 2, "{name}: listener and admin addresses");
        if name != "upstream.yaml" {
            assert_eq!((filters, managers), (1, 1), "{name}: one sluice filter, behind one connection manager");
        }
    }
}

/// A minimal module with the proxy-wasm ABI marker and one import Higress' Envoy provides and
/// stock Envoy does not: `env.proxy_redis_init(i32 ×7) -> i32`.
fn module_importing_proxy_redis_init() -> Vec<u8> {
    fn section(id: u8, body: &[u8]) -> Vec<u8> {
        let mut s = vec![id, body.len() as u8];
        s.extend_from_slice(body);
        s
    }
    fn name(s: &str) -> Vec<u8> {
        let mut v = vec![s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }
    let mut types = vec![2, 0x60, 7];
    types.extend([0x7f; 7]);
    types.extend([1, 0x7f, 0x60, 0, 0]); // (i32 ×7) -> i32; () -> ()
    let mut imports = vec![1];
    imports.extend(name("env"));
    imports.extend(name("proxy_redis_init"));
    imports.extend([0x00, 0]); // a function of type 0
    let mut exports = vec![2];
    exports.extend(name("proxy_abi_version_0_2_1"));
    exports.extend([0x00, 1]); // function 1 (0 is the import)
    exports.extend(name("memory"));
    exports.extend([0x02, 0]);
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend(section(1, &types));
    m.extend(section(2, &imports));
    m.extend(section(3, &[1, 1])); // one function of type 1
    m.extend(section(5, &[1, 0, 1])); // one memory, 1 page
    m.extend(section(7, &exports));
    m.extend(section(10, &[1, 2, 0, 0x0b])); // its body: no locals, end
    m
}

/// The Higress bootstrap with `filename` as its module and, if `http`, transport "http".
fn higress_with(filename: &str, http: bool, dir: &TempDir) -> PathBuf {
    let mut boot = load(&repo().join("envoy").join(HIGRESS));
    walk_mut(&mut boot, &mut |m| {
        if let Some(Value::Object(local)) = m.get_mut("local") {
            local.insert("filename".into(), Value::String(filename.into()));
        }
        if m.get("@type").and_then(Value::as_str) == Some(STRING_VALUE) && http {
            let mut cfg: Value = serde_json::from_str(m["value"].as_str().expect("value")).expect("JSON");
            cfg["redis"]["transport"] = "http".into();
            m.insert("value".into(), Value::String(cfg.to_string()));
        }
    });
    let path = dir.0.join("higress.json");
    std::fs::write(&path, boot.to_string()).expect("write");
    path
}

#[test]
fn higress_variant_validates_with_the_stock_filter_and_stock_envoy_refuses_its_imports() {
    let dir = TempDir::new("higress");
    let shipped = load(&repo().join("envoy").join(HIGRESS));
    let mut code = Vec::new();
    let mut transport = Vec::new();
    walk(&shipped, &mut |m| {
        if let Some(f) = m.get("local").and_then(|l| l.get("filename")).and_then(Value::as_str) {
            code.push(f.to_string());
        }
        if m.get("@type").and_then(Value::as_str) == Some(STRING_VALUE) {
            let cfg: Value = serde_json::from_str(m["value"].as_str().unwrap_or("null")).expect("JSON");
            transport.push(cfg["redis"]["transport"].clone());
            let cluster = cfg["redis"]["cluster"].as_str().unwrap_or_default().to_string();
            assert!(
                shipped["static_resources"]["clusters"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["name"] == cluster.as_str())),
                "redis.cluster {cluster:?} is a cluster of the bootstrap"
            );
        }
    });
    assert_eq!(code, vec!["target/wasm32-wasip1/release/sluice-redis-callout.wasm".to_string()]);
    assert_eq!(transport, vec![Value::from("redis_callout")]);

    // Everything but the module (and the transport the HTTP build refuses) as shipped: stock
    // Envoy validates the listener, filter chain, clusters and the rest of the plugin config in
    // the real filter.
    let swapped = higress_with(&wasm().display().to_string(), true, &dir);
    let out = validate(&swapped);
    assert!(out.status.success(), "the Higress bootstrap with sluice.wasm does not validate:\n{}", text(&out));

    // And the reason it needs swapping: a module importing Higress' Redis calls does not load.
    let probe = dir.0.join("imports-proxy-redis.wasm");
    std::fs::write(&probe, module_importing_proxy_redis_init()).expect("write module");
    let out = validate(&higress_with(&probe.display().to_string(), false, &dir));
    assert!(!out.status.success(), "stock Envoy loaded a module importing proxy_redis_init");
    assert!(text(&out).contains("missing import: env.proxy_redis_init"), "{}", text(&out));

    // The real Higress build, when it has been built, is refused the same way.
    let callout = repo().join("target/wasm32-wasip1/release/sluice-redis-callout.wasm");
    if callout.exists() {
        let out = validate(&repo().join("envoy").join(HIGRESS));
        assert!(!out.status.success() && text(&out).contains("missing import: env.proxy_redis"), "{}", text(&out));
    } else {
        eprintln!("{} not built: only the probe module shows stock Envoy's refusal", callout.display());
    }
}

/// Why validating shipped files catches plugin-config mistakes: validation runs on_configure.
#[test]
fn validate_mode_runs_the_filters_on_configure() {
    let dir = TempDir::new("validate");
    let mut boot = load(&repo().join("envoy/demo.yaml"));
    walk_mut(&mut boot, &mut |m| {
        if m.get("@type").and_then(Value::as_str) == Some(STRING_VALUE) {
            m.insert("value".into(), Value::String(r#"{"rules": [{"name": "a", "limit": "5/fortnight"}]}"#.into()));
        }
    });
    let path = dir.0.join("bad.json");
    std::fs::write(&path, boot.to_string()).expect("write");
    let out = validate(&path);
    assert!(!out.status.success(), "a bad plugin config passed --mode validate");
    assert!(text(&out).contains("fortnight"), "the filter's own error is in the output:\n{}", text(&out));
}
