//! Runs the built `sluice` binary on fixture files and checks exit codes and output.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice")).args(args).output().unwrap()
}

fn lint(name: &str) -> Output {
    sluice(&["lint", fixture(name).to_str().unwrap()])
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn good_yaml_prints_normalized_json_and_exits_0() {
    let out = lint("good.yaml");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["namespace"], "shop");
    assert_eq!(v["rate_limit_headers"], "draft10");
    let api = &v["rules"][0];
    assert_eq!(api["limits"], serde_json::json!([{"limit": 100, "period_ms": 60000}]));
    assert_eq!(api["strategy"], serde_json::json!({"type": "token_bucket", "burst": 150}));
    assert_eq!(api["match"]["methods"], serde_json::json!(["GET", "POST"]));
    assert_eq!(api["identifier"]["parts"], serde_json::json!([{"header": "x-api-key"}]));
    assert_eq!(api["exempt"]["cidrs"], serde_json::json!(["10.0.0.0/8"]));
    let login = &v["rules"][1];
    assert_eq!(login["limits"], serde_json::json!([{"limit": 5, "period_ms": 60000}, {"limit": 20, "period_ms": 3600000}]));
    assert_eq!(login["strategy"], serde_json::json!({"type": "gcra", "burst": null}));
    // Valid, with a warning for every value the client controls that weakens a limit.
    let warnings: Vec<String> = text(&out.stderr).lines().map(str::to_string).collect();
    assert_eq!(
        warnings.iter().map(|w| w.split(": ").next().unwrap_or_default()).collect::<Vec<_>>(),
        ["warning", "warning", "warning"],
        "{warnings:#?}"
    );
    for path in ["warning: identity_secret: ", "warning: rules[0].exempt.headers.x-internal: ", "warning: rules[0].identifier: "]
    {
        assert!(warnings.iter().any(|w| w.starts_with(path)), "no {path:?} in {warnings:#?}");
    }
}

#[test]
fn bad_yaml_prints_every_error_one_per_line_and_exits_1() {
    let out = lint("bad.yaml");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    let want_prefixes = [
        "rate_limit_headers: \"draft9\": unknown value (did you mean \"draft10\"?)",
        "rules[0].limit: \"100/fortnight\": unknown unit \"fortnight\"; expected one of ms, s, m, h, d (or their long forms)",
        "rules[0].strategy.burts: ",
        "rules[1].name: \"api\": duplicate rule name; rules[0] already uses it",
        "rules[1].identifier[0]: \"global\": cannot be combined",
        "rules[1].exempt.cidrs[0]: \"10.0.0.1/8\": host bits are set; did you mean \"10.0.0.0/8\"?",
        "rules[1].backend: \"redis\": backend redis needs a top-level \"redis\" block",
    ];
    for want in want_prefixes {
        assert!(lines.iter().any(|l| l.starts_with(want)), "missing {want:?} in:\n{err}");
    }
    assert_eq!(lines.len(), want_prefixes.len() + 1, "{err}");
    assert!(lines.last().unwrap().ends_with("bad.yaml: 7 errors"), "{err}");
}

#[test]
fn json_file_uses_the_filter_json_path() {
    let out = lint("good.json");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rules"][0]["limits"][0]["period_ms"], 5000);
    assert_eq!(v["rules"][0]["cost"], serde_json::json!({"header": "x-cost", "default": 1, "min": 1, "max": 1000}));

    let out = lint("broken.json");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("not valid JSON: "), "{}", text(&out.stderr));
}

const DUPLICATE: &str = "duplicate key; each key may appear once in an object";

/// `sluice lint`'s error lines (without the count), of an input it refused.
#[track_caller]
fn refused(out: &Output) -> Vec<String> {
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    let mut lines: Vec<String> = err.lines().map(str::to_string).collect();
    assert!(lines.pop().is_some_and(|l| l.starts_with("sluice: ")), "{err}");
    lines
}

#[test]
fn a_key_written_twice_is_refused_at_its_path_beside_the_other_errors() {
    // YAML keeps the last value, as JSON does: the rule would count every path, silently.
    let want = [format!("rules[1].match: \"match\": {DUPLICATE}"), "rules[0].limit: \"100/fortnight\": unknown unit".into()];
    for name in ["duplicate-key.yaml", "duplicate-key.json"] {
        let lines = refused(&lint(name));
        assert_eq!(lines.len(), 2, "{name}: {lines:#?}");
        assert_eq!(lines[0], want[0], "{name}");
        assert!(lines[1].starts_with(&want[1]), "{name}: {lines:#?}");
        let fixture = std::fs::read_to_string(fixture(name)).unwrap();
        assert_eq!(refused(&lint_stdin(&fixture)), lines, "{name} from stdin");
    }
}

const PLUGIN: &str = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: s}\nspec:\n  url: oci://x\n  pluginConfig:\n    rules:\n    - name: r\n      limit: 5/s\n      match: {path: /a}\n      match: {path: /b}\n    - {name: r, limit: 1/s}\n";

#[test]
fn a_key_written_twice_in_a_wasm_plugins_config_is_an_error_of_that_config() {
    let lines = refused(&lint_stdin(PLUGIN));
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(lines[0], format!("rules[0].match: \"match\": {DUPLICATE}"));
    assert!(lines[1].starts_with("rules[1].name: \"r\": duplicate rule name"), "{lines:#?}");
    // Around the config, a key written twice is refused at its path in the file (and its
    // document's, in a file of several), before the config's own errors.
    let around = PLUGIN.replace("{name: s}", "{name: s, name: t}");
    let outside = format!("outside the plugin config: metadata.name: \"name\": {DUPLICATE}");
    assert_eq!(refused(&lint_stdin(&around)), [outside.as_str(), &lines[0], &lines[1]]);
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {type: ClusterIP, type: NodePort}\n---\n";
    assert_eq!(
        refused(&lint_stdin(&format!("{service}{PLUGIN}"))),
        [format!("outside the plugin config: document 1: spec.type: \"type\": {DUPLICATE}").as_str(), &lines[0], &lines[1]]
    );
    let twice = PLUGIN.replace("  pluginConfig:\n", "  pluginConfig: {}\n  pluginConfig:\n");
    assert_eq!(
        refused(&lint_stdin(&format!("{service}{twice}").replace("type: NodePort", "port: 80"))),
        [
            format!("outside the plugin config: document 2: spec.pluginConfig: \"pluginConfig\": {DUPLICATE}"),
            "rules: missing required field".into()
        ],
        "the first pluginConfig, empty, is the config"
    );
    // A config that compiles adds nothing, and the file is still refused.
    let valid = around.replace("      match: {path: /b}\n    - {name: r, limit: 1/s}\n", "");
    assert_eq!(refused(&lint_stdin(&valid)), [outside]);
}

const BOOTSTRAP: &str = r#"static_resources:
  listeners:
  - name: l
    filter_chains:
    - filters:
      - typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
          config:
            configuration:
              "@type": type.googleapis.com/google.protobuf.StringValue
              value: '{"rules": [{"name": "a", "limit": "1/s", "limit": "2/s", "backend": "redis"}]}'
"#;

#[test]
fn a_key_written_twice_in_a_bootstraps_config_is_an_error_of_that_config() {
    let lines = refused(&lint_stdin(BOOTSTRAP));
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(lines[0], format!("rules[0].limit: \"limit\": {DUPLICATE}"));
    assert!(lines[1].starts_with("rules[0].backend: \"redis\": backend redis needs"), "{lines:#?}");
    // Around it, a key written twice is refused before the config's own errors.
    let around = BOOTSTRAP.replace("  - name: l\n", "  - name: l\n    name: m\n");
    let outside = format!("outside the plugin config: static_resources.listeners[0].name: \"name\": {DUPLICATE}");
    assert_eq!(refused(&lint_stdin(&around)), [outside.as_str(), &lines[0], &lines[1]]);
    // A config that compiles adds nothing, and the file is still refused.
    let valid = around.replace(r#", "limit": "2/s", "backend": "redis""#, "");
    assert_eq!(refused(&lint_stdin(&valid)), [outside]);
}

#[test]
fn what_explain_proves_of_a_config_is_a_warning() {
    // A valid config (exit 0) whose burst caps its daily limit: lint says so, as explain does.
    let out = lint("burst-caps.yaml");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("warning: rule \"pro\": burst caps a limit: burst 200"), "{err}");
}

/// Valid for the Higress build only: sluice.wasm refuses it at start, so lint says so.
#[test]
fn a_redis_callout_config_is_linted_with_the_build_it_needs() {
    let out = lint_stdin("redis: {cluster: redis, transport: redis_callout}\nrules: [{name: a, limit: 1/s, backend: redis}]\n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let warnings = text(&out.stderr);
    assert!(warnings.lines().any(|w| w.starts_with("warning: redis.transport: \"redis_callout\" needs Higress")), "{warnings}");
    assert!(!warnings.contains("redis.authority"), "{warnings}");
    // An authority there is validated and never sent.
    let out = lint_stdin(
        "redis: {cluster: redis, transport: redis_callout, authority: gw.local}\nrules: [{name: a, limit: 1/s, backend: redis}]\n",
    );
    let warnings = text(&out.stderr);
    assert!(warnings.lines().any(|w| w.starts_with("warning: redis.authority: \"gw.local\": not used")), "{warnings}");
    let out = lint_stdin("redis: {cluster: gw, authority: gw.local}\nrules: [{name: a, limit: 1/s, backend: redis}]\n");
    assert!(!text(&out.stderr).contains("redis.authority"), "{}", text(&out.stderr));
    let out = lint_stdin("redis: {cluster: gw}\nrules: [{name: a, limit: 1/s, backend: redis}]\n");
    assert!(!text(&out.stderr).contains("Higress"), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("redis.token"), "{}", text(&out.stderr));
}

/// The examples' token works only with a gateway on loopback: a deployed gateway refuses it, so
/// a config that kept it would have every call answered 401.
#[test]
fn the_examples_token_is_warned_of() {
    let out = lint_stdin("redis: {cluster: gw, token: sluice-dev-token}\nrules: [{name: a, limit: 1/s, backend: redis}]\n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let warnings = text(&out.stderr);
    assert!(warnings.lines().any(|w| w.starts_with("warning: redis.token: the examples' public token")), "{warnings}");
    let out = lint_stdin("redis: {cluster: gw, token: s3cret-of-mine}\nrules: [{name: a, limit: 1/s, backend: redis}]\n");
    assert!(!text(&out.stderr).contains("redis.token"), "{}", text(&out.stderr));
}

#[test]
fn empty_file_is_no_configuration() {
    let out = lint("empty.yaml");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("no configuration"), "{}", text(&out.stderr));
}

#[test]
fn stdin_is_guessed_json_or_yaml() {
    for input in ["{\"rules\": [{\"name\": \"a\", \"limit\": \"1/s\"}]}", "rules:\n  - {name: a, limit: 1/s}\n"] {
        let out = lint_stdin(input);
        assert_eq!(out.status.code(), Some(0), "{input}: {}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["rules"][0]["limits"][0]["period_ms"], 1000);
    }
}

/// `sluice lint -` on `input`.
fn lint_stdin(input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["lint", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn yaml_infinities_are_refused_by_path_not_read_as_unset() {
    // As null, `.inf` read as a field never set: share 1, a status of 429.
    let out = lint_stdin("redis: {cluster: gw}\nresponse: {status: .nan}\nrules:\n  - {name: a, limit: 1/s, backend: redis, on_error: {fallback: {share: .inf}}}\n");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains("response.status") && err.contains("rules[0].on_error.fallback.share"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let out = sluice(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("Usage: sluice <COMMAND>"));
    assert_eq!(sluice(&["lint"]).status.code(), Some(2));
    assert_eq!(sluice(&["frobnicate"]).status.code(), Some(2));
    let missing = sluice(&["lint", "/nonexistent/sluice.yaml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("cannot read /nonexistent/sluice.yaml"));
}

#[test]
fn help_lists_lint_and_exits_0() {
    let out = sluice(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    assert!(help.contains("lint") && help.contains("Usage: sluice"), "{help}");
    let out = sluice(&["lint", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("\"-\" reads standard input"));
}

#[test]
fn bootstraps_and_wasm_plugins_are_linted_for_the_config_they_carry() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let at = |p: &str| root.join(p).display().to_string();
    let out = sluice(&["lint", &at("examples/istio/wasmplugin.yaml")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["redis"]["cluster"], "outbound|7379||sluice-gateway.example.internal");
    let out = sluice(&["lint", &at("envoy/per-route.yaml")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rules"][0]["name"], "catalog-reads");
    let out = sluice(&["lint", &at("envoy/upstream.yaml")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no Wasm filter"), "{}", text(&out.stderr));
    // The shipped edge bootstrap sets use_remote_address; without it a client names its own
    // address, and lint says so.
    let edge = std::fs::read_to_string(at("envoy/demo.yaml")).unwrap();
    assert!(!text(&sluice(&["lint", &at("envoy/demo.yaml")]).stderr).contains("warning: use_remote_address"));
    let dir = std::env::temp_dir().join(format!("sluice-lint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let open = dir.join("open-edge.yaml");
    std::fs::write(&open, edge.replace("use_remote_address: true", "use_remote_address: false")).unwrap();
    let out = sluice(&["lint", &open.display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("warning: use_remote_address: off in the connection manager"), "{}", text(&out.stderr));
    // A manager that finds the client's address another way is left to the operator.
    let detected = dir.join("detected-edge.yaml");
    let with_extension = edge.replace(
        "use_remote_address: true",
        "original_ip_detection_extensions: [{name: xff, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.http.original_ip_detection.xff.v3.XffConfig, xff_num_trusted_hops: 1}}]",
    );
    std::fs::write(&detected, with_extension).unwrap();
    let out = sluice(&["lint", &detected.display().to_string()]);
    assert!(!text(&out.stderr).contains("warning: use_remote_address"), "{}", text(&out.stderr));
    // A redis.cluster the bootstrap does not define: every call would fail into on_error.
    let redis = std::fs::read_to_string(at("envoy/redis.yaml")).unwrap();
    assert!(!text(&sluice(&["lint", &at("envoy/redis.yaml")]).stderr).contains("warning: redis.cluster"));
    let misspelt = dir.join("misspelt-cluster.yaml");
    std::fs::write(&misspelt, redis.replace(r#""cluster": "sluice_gateway""#, r#""cluster": "sluice_gatway""#)).unwrap();
    let out = sluice(&["lint", &misspelt.display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("warning: redis.cluster: \"sluice_gatway\": no cluster of the Envoy bootstrap is named so"),
        "{}",
        text(&out.stderr)
    );
    // kubectl reads YAML 1.1: an unquoted `yes` in a pluginConfig reaches Envoy as `true`.
    let plugin = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: s}\nspec:\n  url: oci://x\n  pluginConfig:\n    rules:\n    - name: r\n      limit: 5/s\n      exempt: {headers: {x-internal: yes}}\n";
    let out = lint_stdin(plugin);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("warning: rules[0].exempt.headers.x-internal: \"yes\": if not quoted, Kubernetes reads it as a boolean"),
        "{err}"
    );
    assert!(!text(&lint_stdin(&plugin.replace("yes}", "\"on-call\"}")).stderr).contains("Kubernetes"));
    // Two WasmPlugins in one file (the second's config invalid): not the first alone, passed.
    let out = lint("two-wasmplugins.yaml");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("this file has 2 WasmPlugins"), "{}", text(&out.stderr));
}

/// An anchor of 50,000 values aliased 30,000 times: 270 KB asking for a billion and a half
/// values. Refused for its size; anchors reused as configs reuse them are read.
#[test]
fn a_yaml_whose_aliases_build_too_much_is_refused_and_ordinary_aliases_are_read() {
    let bomb = format!("rules: [{{name: a, limit: 1/s}}]\nx: &a [{}0]\ny: [{}*a]\n", "0, ".repeat(49_999), "*a, ".repeat(29_999));
    let limit = 8 * bomb.len();
    let lines = refused(&lint_stdin(&bomb));
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let want = format!("over the limit of {limit} units built for a file of this size (a value 1, an object 20 more, a byte of text 1; 8 per byte of the file, at least 1000000; each alias builds its anchor's values again)");
    assert!(lines[0].starts_with("y[") && lines[0].contains(&want), "{lines:#?}");
    let reused = "rules:\n  - name: a\n    limit: 5/s\n    match: &api {path: /api/**}\n  - {name: b, limit: 50/min, match: *api, identifier: {header: x-api-key}}\n";
    let out = lint_stdin(reused);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rules"][1]["match"], v["rules"][0]["match"]);
}

/// Found by fuzzing (fuzz/ config_yaml): a Wasm filter object without `config` made both
/// commands exit 101 (a panic); it is an invalid bootstrap like any other.
#[test]
fn a_wasm_filter_without_config_is_an_error_not_a_panic() {
    let doc = "static_resources:\n  listeners:\n  - \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n";
    let out = lint_stdin(doc);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("panicked"), "{}", text(&out.stderr));
}
