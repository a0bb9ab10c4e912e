//! examples/per-route in a real Envoy: the walkthrough tables of examples/per-route/README.md
//! are parsed and replayed against envoy/per-route.yaml as shipped, row by row, checking the
//! status, the rules a 429 names, Retry-After and the exact RateLimit-Policy field each row
//! documents. Also checks which request headers Envoy hides from filters (what
//! `sluice explain` reports as never matching).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_e2e::{adapt, bootstrap, repo, Envoy};

/// A response read off a raw HTTP/1.1 connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One request on its own connection, written byte for byte (an HTTP client library would
/// rewrite `connection` and refuse `upgrade`).
fn send(port: u16, method: &str, path: &str, headers: &[(String, String)]) -> Raw {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let upgrade = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("upgrade"));
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !upgrade {
        req.push_str("connection: close\r\n");
    }
    if method == "POST" {
        req.push_str("content-length: 0\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut buf).expect("read response");
        assert!(n > 0, "connection closed before the response head: {:?}", String::from_utf8_lossy(&data));
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("status line");
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = data[head_end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut buf).expect("read body");
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    Raw { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// One row of a walkthrough table.
#[derive(Debug)]
struct Row {
    number: usize,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    times: usize,
    status: u16,
    violated: Vec<String>,
    policy: Option<String>,
}

/// The text between backticks in a table cell.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

fn parse_rows(readme: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for line in readme.lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        let Some(number) = cells.first().and_then(|c| c.parse::<usize>().ok()) else { continue };
        assert_eq!(cells.len(), 6, "row {number}: 6 cells expected: {line}");
        let request = ticked(cells[1]);
        let (method, path) = request.first().and_then(|r| r.split_once(' ')).unwrap_or_else(|| panic!("row {number}: request"));
        let headers = ticked(cells[2])
            .iter()
            .map(|h| {
                let (k, v) = h.split_once(':').unwrap_or_else(|| panic!("row {number}: header {h}"));
                (k.trim().to_string(), v.trim().to_string())
            })
            .collect();
        let (status, violated) = match cells[4].split_once(' ') {
            Some((code, rest)) => {
                (code, rest.trim_matches(|c| c == '(' || c == ')').split(',').map(|s| s.trim().to_string()).collect())
            }
            None => (cells[4], Vec::new()),
        };
        rows.push(Row {
            number,
            method: method.to_string(),
            path: path.to_string(),
            headers,
            times: cells[3].parse().unwrap_or_else(|_| panic!("row {number}: times")),
            status: status.parse().unwrap_or_else(|_| panic!("row {number}: status")),
            violated,
            policy: ticked(cells[5]).into_iter().next(),
        });
    }
    rows
}

fn string_value_config(boot: &Value) -> Value {
    let mut found = Vec::new();
    fn walk(v: &Value, found: &mut Vec<Value>) {
        if v["@type"] == "type.googleapis.com/google.protobuf.StringValue" {
            if let Some(text) = v["value"].as_str() {
                found.push(serde_json::from_str(text).expect("plugin config is JSON"));
            }
        }
        match v {
            Value::Object(m) => m.values().for_each(|c| walk(c, found)),
            Value::Array(a) => a.iter().for_each(|c| walk(c, found)),
            _ => {}
        }
    }
    walk(boot, &mut found);
    assert_eq!(found.len(), 1);
    found.remove(0)
}

#[test]
fn the_per_route_walkthrough_is_what_envoy_answers() {
    let rules_text = std::fs::read_to_string(repo().join("examples/per-route/rules.yaml")).expect("rules.yaml");
    let rules: Value = serde_yaml_ng::from_str(&rules_text).expect("rules.yaml is YAML");
    let mut boot = bootstrap("per-route.yaml");
    assert_eq!(string_value_config(&boot), rules, "envoy/per-route.yaml must carry examples/per-route/rules.yaml");

    let readme = std::fs::read_to_string(repo().join("examples/per-route/README.md")).expect("README");
    let rows = parse_rows(&readme);
    assert!(rows.len() >= 24, "{} rows", rows.len());
    assert!(rows.iter().enumerate().all(|(i, r)| r.number == i + 1), "rows are numbered 1, 2, 3, ... in order");
    for name in ["catalog-reads", "order-writes", "orders-per-tenant", "search", "login", "ws-upgrades"] {
        assert!(rows.iter().any(|r| r.violated.iter().any(|v| v == name)), "no row shows {name} limiting");
    }

    adapt(&mut boot, None);
    let envoy = Envoy::running(&boot, 2);
    for row in &rows {
        for n in 1..=row.times {
            let r = send(envoy.port, &row.method, &row.path, &row.headers);
            let at = format!("row {} ({} {}), request {n} of {}: {r:?}", row.number, row.method, row.path, row.times);
            assert_eq!(r.status, row.status, "{at}");
            assert_eq!(r.header("ratelimit-policy"), row.policy.as_deref(), "{at}");
            if row.status == 429 {
                let body: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{at}: body: {e}"));
                assert_eq!(body["violated_rules"], json!(row.violated), "{at}");
                assert!(r.header("retry-after").is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s >= 1)), "{at}");
            } else {
                assert!(r.header("retry-after").is_none(), "{at}");
            }
        }
    }
}

/// The hop-by-hop headers `sluice explain` calls invisible (cli/src/analysis.rs,
/// INVISIBLE_HEADERS) never reach the filter; a visible header in the same requests does.
#[test]
fn hop_by_hop_headers_never_reach_the_filter() {
    let invisible = [("keep-alive", "timeout=5"), ("proxy-connection", "keep-alive"), ("transfer-encoding", "chunked")];
    let mut rules: Vec<Value> = invisible
        .iter()
        .map(|(k, v)| json!({"name": k, "match": {"path": format!("/{k}"), "headers": {*k: *v}}, "limit": "1/min"}))
        .collect();
    rules.push(json!({"name": "control", "match": {"path": "/control", "headers": {"x-visible": "yes"}}, "limit": "1/min"}));
    let mut boot = bootstrap("per-route.yaml");
    adapt(&mut boot, Some(&json!({"rules": rules})));
    let envoy = Envoy::running(&boot, 1);
    for (k, v) in invisible {
        for _ in 0..3 {
            let headers = vec![(k.to_string(), v.to_string()), ("x-visible".to_string(), "yes".to_string())];
            // A chunked request needs a body; an empty chunked body is "0\r\n\r\n".
            let r = if k == "transfer-encoding" {
                send_chunked(envoy.port, &format!("/{k}"))
            } else {
                send(envoy.port, "GET", &format!("/{k}"), &headers)
            };
            assert_eq!(r.status, 200, "{k} reached the filter: {r:?}");
            assert!(r.header("ratelimit-policy").is_none(), "{k}: {r:?}");
        }
    }
    let visible = [("x-visible".to_string(), "yes".to_string())];
    assert_eq!(send(envoy.port, "GET", "/control", &visible).status, 200);
    assert_eq!(send(envoy.port, "GET", "/control", &visible).status, 429, "the control rule must limit");
}

fn send_chunked(port: u16, path: &str) -> Raw {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n1\r\na\r\n0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Raw { status, headers, body: String::new() }
}
