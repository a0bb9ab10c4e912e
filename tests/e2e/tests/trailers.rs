//! Trailers (gRPC's status travels in them) through a real Envoy 1.40 with the real
//! `sluice.wasm` on a limited route: sluice exports no trailers callbacks (the host then
//! passes them on without entering the VM, docs/architecture.md "Host facts: callbacks"), and
//! both directions' trailers still reach the other side, beside sluice's own response fields.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_e2e::{adapt, add_cluster, bootstrap, Envoy};

const LIMIT: Duration = Duration::from_secs(5);

/// Reads an HTTP/1.1 message with a chunked body up to the end of its trailers (or until the
/// peer stops sending or `LIMIT` passes).
fn read_chunked(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(LIMIT)).expect("read timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got);
        if let Some(at) = text.find("\r\n0\r\n") {
            if text[at + 5..].contains("\r\n\r\n") || text[at + 5..].starts_with("\r\n") {
                return text.into_owned();
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if got.len() > 1 << 16 {
            return String::from_utf8_lossy(&got).into_owned();
        }
    }
}

/// An upstream that answers one request with a chunked body and a trailer, and hands over
/// the request it read.
fn upstream() -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let port = listener.local_addr().expect("upstream address").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else { return };
        let request = read_chunked(&mut conn);
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

    let mut client = TcpStream::connect(("127.0.0.1", envoy.port)).expect("connect to Envoy");
    client
        .write_all(
            b"POST /api/x HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\ntrailer: x-ask-trailer\r\n\r\n\
              4\r\nping\r\n0\r\nx-ask-trailer: t1\r\n\r\n",
        )
        .expect("send");
    let answer = read_chunked(&mut client).to_ascii_lowercase();
    let request = seen.recv_timeout(LIMIT).expect("the upstream got the request").to_ascii_lowercase();

    assert!(request.contains("x-ask-trailer: t1"), "the request's trailer reached the upstream:\n{request}");
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("ratelimit: \"api\";r=99;"), "sluice decided the request:\n{answer}");
    assert!(answer.contains("hello"), "{answer}");
    assert!(answer.contains("x-answer-trailer: t2"), "the response's trailer reached the client:\n{answer}");
    assert!(!envoy.log_text().contains("panicked"));
}
