//! Handlers that pass callouts on to real servers on loopback: an HTTP/1.1 server (e.g.
//! sluice-gateway) for `proxy_http_call`, a Redis server for `proxy_redis_call`.
//!
//! They block the test thread for one round trip; harness time does not move meanwhile, so a
//! real server's answer arrives "instantly" in harness time. A connection error becomes a
//! callout failure, as it would in Envoy.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::http::{Callout, CalloutReply, HttpResponse, RedisCall, RedisReply};
use sluice::redis::wire;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A callout handler that sends every callout to `addr` (which must be loopback).
pub fn http_to(addr: SocketAddr) -> impl FnMut(&Callout) -> CalloutReply + 'static {
    move |call: &Callout| match http_round_trip(addr, call) {
        Ok(resp) => CalloutReply::Respond(resp),
        Err(_) => CalloutReply::Fail,
    }
}

fn http_round_trip(addr: SocketAddr, call: &Callout) -> std::io::Result<HttpResponse> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::other("the harness only talks to loopback servers"));
    }
    let req = &call.request;
    let method = req.header(":method").unwrap_or("GET");
    let path = req.header(":path").unwrap_or("/");
    let authority = req.header(":authority").unwrap_or("localhost");
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n");
    for (k, v) in &req.headers {
        if k.starts_with(':') || k.eq_ignore_ascii_case("host") || k.eq_ignore_ascii_case("content-length") {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", req.body.len()));
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(head.as_bytes())?;
    stream.write_all(&req.body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_http_response(&raw).ok_or_else(|| std::io::Error::other("malformed HTTP response"))
}

fn parse_http_response(raw: &[u8]) -> Option<HttpResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let mut resp = HttpResponse::new(status);
    let mut chunked = false;
    for l in lines {
        let (k, v) = l.split_once(':')?;
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
        if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
            continue;
        }
        resp.headers.push((k, v));
    }
    let body = &raw[end + 4..];
    resp.body = if chunked { dechunk(body)? } else { body.to_vec() };
    resp.headers.insert(0, (":status".to_string(), status.to_string()));
    Some(resp)
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// A Redis handler that sends every call's RESP bytes to a Redis server at `addr` (loopback)
/// over one connection kept open between calls.
pub fn redis_to(addr: SocketAddr) -> impl FnMut(&RedisCall) -> RedisReply + 'static {
    let mut conn: Option<TcpStream> = None;
    move |call: &RedisCall| {
        for _attempt in 0..2 {
            if conn.is_none() {
                conn = redis_connect(addr).ok();
            }
            let Some(stream) = conn.as_mut() else { return RedisReply::Fail(1) };
            match redis_round_trip(stream, &call.query) {
                Ok(reply) => return RedisReply::Resp(reply),
                // A stale connection: reconnect once.
                Err(_) => conn = None,
            }
        }
        RedisReply::Fail(1)
    }
}

fn redis_connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::other("the harness only talks to loopback servers"));
    }
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn redis_round_trip(stream: &mut TcpStream, query: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(query)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(n) = wire::resp_len(&buf) {
            buf.truncate(n);
            return Ok(buf);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("redis closed the connection"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let r = parse_http_response(b"HTTP/1.1 201 Created\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nhi").unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.body, b"hi");
        assert!(r.headers.contains(&("x-a".to_string(), "1".to_string())));
        let r = parse_http_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!(r.body, b"abcde");
    }
}
