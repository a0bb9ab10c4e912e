//! Raw HTTP/2 with prior knowledge (h2c) over a real socket, for clients that misbehave on
//! purpose: frames are written by hand (RFC 9113), header blocks as HPACK literals (RFC 7541),
//! so a test can open more streams than allowed, send a header block of any size, or never
//! send a body. Responses are read as frames; of a response's header block only `:status` is
//! decoded, which is all the tests need (the client announces a header table of size 0, so the
//! server's blocks never refer to a dynamic table).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::raw::BOUND;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

pub const REFUSED_STREAM: u32 = 0x7;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The largest frame payload a peer must accept without asking (SETTINGS_MAX_FRAME_SIZE's
/// initial value).
pub const MAX_FRAME: usize = 16_384;

#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A SETTINGS parameter's value, if the frame carries it.
    pub fn setting(&self, id: u16) -> Option<u32> {
        self.payload
            .chunks_exact(6)
            .find(|p| u16::from_be_bytes([p[0], p[1]]) == id)
            .map(|p| u32::from_be_bytes([p[2], p[3], p[4], p[5]]))
    }

    /// The error code of a RST_STREAM or GOAWAY.
    pub fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().expect("an error code"))
    }
}

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length");
    assert!(len < 1 << 24);
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK integer with an `n`-bit prefix, the prefix's other bits set to `flags`.
fn integer(out: &mut Vec<u8>, value: usize, n: u32, flags: u8) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A header block of literal fields without indexing, names and values as plain strings.
pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        integer(&mut out, name.len(), 7, 0);
        out.extend_from_slice(name.as_bytes());
        integer(&mut out, value.len(), 7, 0);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// The fields of `POST path` to the gateway.
pub fn post_fields<'a>(path: &'a str, token: &'a str, length: Option<usize>) -> Vec<(String, String)> {
    let mut fields = vec![
        (":method".to_string(), "POST".to_string()),
        (":scheme".to_string(), "http".to_string()),
        (":path".to_string(), path.to_string()),
        (":authority".to_string(), "gateway".to_string()),
        ("authorization".to_string(), format!("Bearer {token}")),
        ("content-type".to_string(), "application/json".to_string()),
    ];
    if let Some(n) = length {
        fields.push(("content-length".to_string(), n.to_string()));
    }
    fields
}

pub fn block_of(fields: &[(String, String)]) -> Vec<u8> {
    let refs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    block(&refs)
}

/// A header block as frames: HEADERS, then CONTINUATIONs when it is larger than one frame.
/// `end_headers: false` leaves the block unfinished.
pub fn header_frames(stream: u32, block: &[u8], end_stream: bool, end_headers: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let chunks: Vec<&[u8]> = if block.is_empty() { vec![&[][..]] } else { block.chunks(MAX_FRAME).collect() };
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let mut flags = if i == 0 && end_stream { END_STREAM } else { 0 };
        if i == last && end_headers {
            flags |= END_HEADERS;
        }
        out.extend(frame(kind, flags, stream, chunk));
    }
    out
}

/// A connection that has sent the preface and its SETTINGS (a header table of size 0), and
/// has read the server's SETTINGS, which it returns.
pub async fn connect(addr: &str) -> (TcpStream, Frame) {
    connect_with(addr, &[]).await
}

/// [`connect`], with more SETTINGS of the client's.
pub async fn connect_with(addr: &str, more: &[(u16, u32)]) -> (TcpStream, Frame) {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the gateway");
    let mut hello = PREFACE.to_vec();
    let mut settings = Vec::new();
    for (id, value) in [(SETTINGS_HEADER_TABLE_SIZE, 0)].iter().chain(more) {
        settings.extend_from_slice(&id.to_be_bytes());
        settings.extend_from_slice(&value.to_be_bytes());
    }
    hello.extend(frame(SETTINGS, 0, 0, &settings));
    stream.write_all(&hello).await.expect("send the preface");
    loop {
        let f = read_frame(&mut stream).await.expect("the server's SETTINGS");
        if f.kind == SETTINGS && f.flags & ACK == 0 {
            stream.write_all(&frame(SETTINGS, ACK, 0, &[])).await.expect("ack the server's SETTINGS");
            return (stream, f);
        }
    }
}

/// The next frame, within the bound.
pub async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Frame> {
    tokio::time::timeout(BOUND, async {
        let mut head = [0u8; 9];
        stream.read_exact(&mut head).await?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await?;
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        Ok(Frame { kind: head[3], flags: head[4], stream: id, payload })
    })
    .await
    .expect("a frame within the bound")
}

/// What happened to one stream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: Option<u16>,
    pub body: String,
    /// Its RST_STREAM's error code, if it was reset.
    pub reset: Option<u32>,
    /// The response (or the reset) is complete.
    pub done: bool,
}

/// Reads frames until every stream in `streams` is done (answered whole, or reset), acking
/// SETTINGS and PINGs on the way; returns each stream's outcome in `streams`' order. A GOAWAY
/// that leaves none of the streams still to come (they are done, or past its last stream), or
/// a closed connection, ends the wait early, with the streams not done as they are.
pub async fn outcomes(stream: &mut TcpStream, streams: &[u32]) -> Vec<Outcome> {
    let mut got: Vec<Outcome> = vec![Outcome::default(); streams.len()];
    while got.iter().any(|o| !o.done) {
        let Ok(f) = read_frame(stream).await else { break };
        match f.kind {
            SETTINGS if f.flags & ACK == 0 => {
                let _ = stream.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
            }
            PING if f.flags & ACK == 0 => {
                let _ = stream.write_all(&frame(PING, ACK, 0, &f.payload)).await;
            }
            GOAWAY => {
                let last = f.payload.get(..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff);
                if streams.iter().zip(&got).all(|(&s, o)| o.done || s > last) {
                    break;
                }
            }
            _ => {}
        }
        let Some(i) = streams.iter().position(|&s| s == f.stream && s != 0) else { continue };
        let o = &mut got[i];
        match f.kind {
            HEADERS => {
                assert!(f.flags & END_HEADERS != 0, "a response header block in several frames");
                o.status = Some(status(&f.payload));
                o.done |= f.flags & END_STREAM != 0;
            }
            DATA => {
                o.body.push_str(&String::from_utf8_lossy(&f.payload));
                o.done |= f.flags & END_STREAM != 0;
                if !f.payload.is_empty() {
                    // Give the window back, so that large answers keep flowing.
                    let inc = u32::try_from(f.payload.len()).expect("frame size").to_be_bytes();
                    let _ = stream
                        .write_all(&[frame(WINDOW_UPDATE, 0, 0, &inc), frame(WINDOW_UPDATE, 0, f.stream, &inc)].concat())
                        .await;
                }
            }
            RST_STREAM => {
                o.reset = Some(f.error_code());
                o.done = true;
            }
            _ => {}
        }
    }
    got
}

/// The `:status` of each of `streams`' answers, read (within the bound) as their header blocks
/// come, whether or not their bodies ever do; other frames are skipped.
pub async fn statuses(stream: &mut TcpStream, streams: &[u32]) -> Vec<Option<u16>> {
    let mut got = vec![None; streams.len()];
    while got.iter().any(Option::is_none) {
        let Ok(f) = read_frame(stream).await else { break };
        if f.kind == SETTINGS && f.flags & ACK == 0 {
            let _ = stream.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
        }
        if let (HEADERS, Some(i)) = (f.kind, streams.iter().position(|&s| s == f.stream && s != 0)) {
            got[i] = Some(status(&f.payload));
        }
    }
    got
}

/// The `:status` of a response header block: its first field, static-indexed or a literal
/// with `:status`'s name index and a Huffman-coded (or plain) value.
fn status(block: &[u8]) -> u16 {
    let mut b = block;
    // Dynamic table size updates (the server acking our size 0) come first.
    while let Some(&first) = b.first() {
        if first & 0xe0 != 0x20 {
            break;
        }
        b = skip_integer(b, 5);
    }
    let first = *b.first().expect("an empty header block");
    if first & 0x80 != 0 {
        return match first & 0x7f {
            8 => 200,
            9 => 204,
            10 => 206,
            11 => 304,
            12 => 400,
            13 => 404,
            14 => 500,
            other => panic!("indexed field {other} is not a :status"),
        };
    }
    let name = if first & 0x40 != 0 { first & 0x3f } else { first & 0x0f };
    assert!((8..=14).contains(&name), "the first field is not :status: {block:?}");
    let (huffman, len) = (b[1] & 0x80 != 0, usize::from(b[1] & 0x7f));
    let value = &b[2..2 + len];
    let text = if huffman { huffman_digits(value) } else { String::from_utf8_lossy(value).into_owned() };
    text.parse().unwrap_or_else(|_| panic!("a :status that is not a number: {text:?}"))
}

fn skip_integer(b: &[u8], n: u32) -> &[u8] {
    let max = (1u8 << n) - 1;
    if b[0] & max != max {
        return &b[1..];
    }
    let mut i = 1;
    while b[i] & 0x80 != 0 {
        i += 1;
    }
    &b[i + 1..]
}

/// Decodes a Huffman-coded string of decimal digits (RFC 7541, appendix B: `0`-`2` are the
/// 5-bit codes 0-2, `3`-`9` the 6-bit codes 0x19-0x1f), ending in padding of 1 bits.
fn huffman_digits(bytes: &[u8]) -> String {
    let bits: Vec<u8> = bytes.iter().flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1)).collect();
    let value = |from: usize, n: usize| bits[from..from + n].iter().fold(0u8, |v, b| v << 1 | b);
    let mut out = String::new();
    let mut at = 0;
    while bits.len() - at >= 5 {
        if bits[at..].iter().all(|&b| b == 1) {
            break;
        }
        match value(at, 5) {
            v @ 0..=2 => {
                out.push(char::from(b'0' + v));
                at += 5;
            }
            _ => {
                let v = value(at, 6);
                assert!((0x19..=0x1f).contains(&v), "not a digit's code at bit {at} of {bytes:?}");
                out.push(char::from(b'3' + v - 0x19));
                at += 6;
            }
        }
    }
    out
}

/// Waits (bounded) until the server closes the connection, reading and dropping what comes.
pub async fn until_closed(stream: &mut TcpStream) -> Duration {
    let started = std::time::Instant::now();
    tokio::time::timeout(BOUND, async {
        let mut buf = [0u8; 8192];
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await
    .expect("the gateway closed the connection within the bound");
    started.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huffman_digits_decode() {
        // RFC 7541 C.6.1: "302" is 0x6402; "307" is 0x640e|ff.
        assert_eq!(huffman_digits(&[0x64, 0x02]), "302");
        assert_eq!(huffman_digits(&[0x64, 0x0e, 0xff]), "307");
    }
}
