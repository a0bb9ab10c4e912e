//! A WebSocket connection's frame reader on any bytes either side might send, cut into chunks
//! anywhere, with any judgements, fed as Envoy feeds a body filter (a held buffer grows, a
//! released one goes on). It must never trap, must keep a small fixed state whatever lengths
//! the frames claim, and must pass every byte through unchanged when it has nothing to do:
//! every message admitted (client side) or nothing to tell the client (server side). The one
//! exception is a client frame whose length RFC 6455 forbids: what came before it passes, then
//! sluice's close (1002) and nothing more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::websocket::frame::{Header, Parsed};
use sluice::websocket::{Advance, Connection, Judgement, Policy};

/// More than a connection ever keeps between callbacks (the unit test measures ~700 bytes).
const MAX_STATE: usize = 2048;

struct Input<'a> {
    notify: bool,
    close_after: Option<u32>,
    bytes_cost: bool,
    /// One bit per judgement: admit or deny (admit when they run out).
    plan: &'a [u8],
    /// Chunk lengths, one byte each.
    cuts: &'a [u8],
    stream: &'a [u8],
}

fn input(data: &[u8]) -> Option<Input<'_>> {
    let (&flags, rest) = data.split_first()?;
    let (&plan_len, rest) = rest.split_first()?;
    let (&cut_len, rest) = rest.split_first()?;
    let plan_len = usize::from(plan_len % 16).min(rest.len());
    let (plan, rest) = rest.split_at(plan_len);
    let cut_len = usize::from(cut_len % 32).min(rest.len());
    let (cuts, stream) = rest.split_at(cut_len);
    let close_after = (flags & 0b100 != 0).then_some(u32::from(flags >> 4) + 1);
    Some(Input { notify: flags & 1 != 0, close_after, bytes_cost: flags & 0b10 != 0, plan, cuts, stream })
}

fn chunks<'a>(stream: &'a [u8], cuts: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    for &c in cuts {
        let n = usize::from(c).min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out.push(rest);
    out
}

/// sluice's close for a frame length RFC 6455 forbids, as it reaches the server: a masked close
/// frame with 1002 and the reason (2 + 4 + 2 + 20 bytes).
const PROTOCOL_CLOSE: usize = 28;

/// Feeds the client's stream; returns what reached the server.
fn client(conn: &mut Connection, chunks: &[&[u8]], mut admit: impl FnMut() -> bool) -> Vec<u8> {
    let mut to_server = Vec::new();
    let mut body: Vec<u8> = Vec::new();
    let mut held = false;
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        if !held {
            body.clear();
        }
        body.extend_from_slice(chunk);
        // Bounded: every ask consumes a header of at least 2 bytes of the body.
        for _ in 0..=body.len() {
            match conn.client_advance(&mut body).expect("a Vec never refuses") {
                Advance::End => break,
                Advance::Ask(ask) => {
                    let judgement = if admit() {
                        Judgement::Admit { delay_ms: 0 }
                    } else {
                        Judgement::Deny { violated: vec![0], unchecked: vec![], retry_after_ms: 1500 }
                    };
                    conn.judge(ask, judgement, 0);
                }
            }
        }
        held = conn.client_finish(&mut body, last, 0).expect("a Vec never refuses");
        assert!(!held, "every ask was answered at once, so nothing is held");
        to_server.append(&mut body);
        assert!(conn.memory_bytes() <= MAX_STATE, "{} bytes kept", conn.memory_bytes());
    }
    to_server
}

fn server(conn: &mut Connection, chunks: &[&[u8]]) -> Vec<u8> {
    let mut to_client = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let mut body = chunk.to_vec();
        conn.server_chunk(&mut body, i + 1 == chunks.len()).expect("a Vec never refuses");
        to_client.append(&mut body);
        assert!(conn.memory_bytes() <= MAX_STATE, "{} bytes kept", conn.memory_bytes());
    }
    to_client
}

fuzz_target!(|data: &[u8]| {
    let Some(inp) = input(data) else { return };
    let chunks = chunks(inp.stream, inp.cuts);
    let policy = || vec![Policy::new(0, "chat", inp.notify, inp.close_after)];

    // Every message admitted: the server gets the client's bytes exactly, however they are cut,
    // up to a frame whose length RFC 6455 forbids, which only a close takes the place of.
    let mut conn = Connection::new(policy(), inp.bytes_cost, true, 7);
    let to_server = client(&mut conn, &chunks, || true);
    if conn.is_closed() {
        let cut = to_server.len().checked_sub(PROTOCOL_CLOSE).expect("a close went out");
        assert_eq!(&to_server[..cut], &inp.stream[..cut]);
        assert!(matches!(Header::parse(&inp.stream[cut..]), Parsed::Header(h) if !h.has_valid_length()));
        assert_eq!(to_server[cut..cut + 2], [0x88, 0x80 | 22]);
        // The server's direction now waits for the close's answer: it starts afresh.
        conn = Connection::new(policy(), inp.bytes_cost, true, 7);
    } else {
        assert_eq!(to_server, inp.stream);
    }
    // Nothing to tell the client: the server's bytes reach it exactly.
    assert_eq!(server(&mut conn, &chunks), inp.stream);

    // Any judgements: no trap, bounded state, and the client's stream then the server's (with
    // the notices and the close they bring) dealt with.
    let mut conn = Connection::new(policy(), inp.bytes_cost, inp.stream.len() % 2 == 0, 7);
    let mut n = 0usize;
    let plan = inp.plan;
    let _ = client(&mut conn, &chunks, || {
        n += 1;
        plan.get((n - 1) / 8).is_none_or(|b| b & (1 << ((n - 1) % 8)) != 0)
    });
    let _ = server(&mut conn, &chunks);
});
