//! Trailers (gRPC's status travels in them) through a real Envoy 1.40 with the real
//! `sluice.wasm` on a limited route: sluice exports no trailers callbacks (the host then
//! passes them on without entering the VM, docs/architecture.md "Host facts: callbacks"), and
//! both directions' trailers still reach the other side, beside sluice's own response fields.

use std::io::Write;
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_e2e::{adapt, add_cluster, bootstrap, read_message, send_raw, Envoy};

const LIMIT: Duration = Duration::from_secs(5);

/// An upstream that answers one request with a chunked body and a trailer, and hands over
/// the request it read.
fn upstream() -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let port = listener.local_addr().expect("upstream address").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else { return };
        if conn.set_read_timeout(Some(LIMIT)).is_err() {
            return;
        }
        let request = String::from_utf8_lossy(&read_message(&mut conn).unwrap_or_default()).into_owned();
        let _ = conn.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\nx-answer-trailer: t2\r\n\r\n",
        );
        let _ = tx.send(request);
    });
    (port, rx)
}

/// HTTP/1.1 trailers are off by default in Envoy, downstream and upstream.
fn enable_trailers(boot: &mut Value) {
    boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_protocol_options"] =
        json!({"enable_trailers": true});
    if let Some(clusters) = boot["static_resources"]["clusters"].as_array_mut() {
        for c in clusters.iter_mut().filter(|c| c["name"] == "upstream") {
            c["typed_extension_protocol_options"] = json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {"enable_trailers": true}}}});
        }
    }
}

#[test]
fn trailers_pass_both_ways_through_a_limited_route() {
    let (up_port, seen) = upstream();
    let mut boot = bootstrap("local.yaml");
    adapt(&mut boot, Some(&json!({"rules": [{"name": "api", "limit": "100/minute", "strategy": "fixed_window"}]})));
    add_cluster(&mut boot, "upstream", up_port);
    enable_trailers(&mut boot);
    let envoy = Envoy::running(&boot, 1);

    let answer = send_raw(
        envoy.port,
        b"POST /api/x HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\ntrailer: x-ask-trailer\r\n\r\n\
          4\r\nping\r\n0\r\nx-ask-trailer: t1\r\n\r\n",
    )
    .expect("an answer from Envoy");
    let request = seen.recv_timeout(LIMIT).expect("the upstream got the request").to_ascii_lowercase();

    assert!(request.contains("x-ask-trailer: t1"), "the request's trailer reached the upstream:\n{request}");
    assert_eq!(answer.status, 200, "{answer:?}");
    let field = answer.header("ratelimit").unwrap_or_default();
    assert!(field.starts_with("\"api\";r=99;"), "sluice decided the request: {answer:?}");
    let body = answer.body.to_ascii_lowercase();
    assert!(body.contains("hello"), "{answer:?}");
    assert!(body.contains("x-answer-trailer: t2"), "the response's trailer reached the client: {answer:?}");
    assert!(!envoy.log_text().contains("panicked"));
}
