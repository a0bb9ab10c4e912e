//! The connection against a reference: messages encoded by a plain RFC 6455 encoder written
//! here (not the module's own), cut into chunks at random, fed as Envoy feeds a body filter
//! (a held buffer grows; a released one goes on), and what reaches each side decoded again.

use proptest::prelude::*;

use super::*;

/// One frame as the reference encoder writes it.
#[derive(Debug, Clone)]
struct RefFrame {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    payload: Vec<u8>,
    mask: Option<[u8; 4]>,
    /// Length field width forced wider than needed (RFC 6455 forbids it; parsers meet it).
    wide: bool,
}

fn encode(f: &RefFrame) -> Vec<u8> {
    let mut out = vec![(u8::from(f.fin) << 7) | (u8::from(f.rsv1) << 6) | f.opcode];
    let m = if f.mask.is_some() { 0x80 } else { 0 };
    let n = f.payload.len();
    if n < 126 && !f.wide {
        out.push(m | n as u8);
    } else if n < 65536 && !(f.wide && n < 126 && n % 2 == 0) {
        out.push(m | 126);
        out.extend_from_slice(&[(n >> 8) as u8, n as u8]);
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    let mut payload = f.payload.clone();
    if let Some(k) = f.mask {
        out.extend_from_slice(&k);
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= k[i % 4];
        }
    }
    out.extend_from_slice(&payload);
    out
}

/// The reference decoder: whole frames from a complete byte string, payloads unmasked.
fn decode(mut bytes: &[u8]) -> Result<Vec<(bool, bool, u8, Vec<u8>)>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 2 {
            return Err(format!("{} stray bytes", bytes.len()));
        }
        let (b0, b1) = (bytes[0], bytes[1]);
        let mut at = 2;
        let mut len = u64::from(b1 & 0x7f);
        if len == 126 {
            len = u64::from(u16::from_be_bytes([bytes[2], bytes[3]]));
            at = 4;
        } else if len == 127 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[2..10]);
            len = u64::from_be_bytes(b);
            at = 10;
        }
        let key = if b1 & 0x80 != 0 {
            let k = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
            at += 4;
            Some(k)
        } else {
            None
        };
        let end = at + len as usize;
        if end > bytes.len() {
            return Err(format!("a frame of {len} bytes is cut short"));
        }
        let mut payload = bytes[at..end].to_vec();
        if let Some(k) = key {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= k[i % 4];
            }
        }
        out.push((b0 & 0x80 != 0, b0 & 0x40 != 0, b0 & 0x0f, payload));
        bytes = &bytes[end..];
    }
    Ok(out)
}

/// A client message: its payload cut into fragments, pings between them, maybe compressed.
#[derive(Debug, Clone)]
struct Msg {
    binary: bool,
    compressed: bool,
    fragments: Vec<Vec<u8>>,
    /// A ping goes before fragment i (i ≥ 1) when set.
    pings: Vec<bool>,
}

fn frames_of(m: &Msg, key: [u8; 4], wide: bool) -> Vec<RefFrame> {
    let mut out = Vec::new();
    let last = m.fragments.len() - 1;
    for (i, f) in m.fragments.iter().enumerate() {
        if i > 0 && m.pings.get(i).copied().unwrap_or(false) {
            out.push(RefFrame { fin: true, rsv1: false, opcode: 9, payload: b"cp".to_vec(), mask: Some(key), wide: false });
        }
        let opcode = if i > 0 {
            0
        } else if m.binary {
            2
        } else {
            1
        };
        out.push(RefFrame { fin: i == last, rsv1: i == 0 && m.compressed, opcode, payload: f.clone(), mask: Some(key), wide });
    }
    out
}

/// The host as Envoy behaves for a body filter, around one connection.
struct Sim {
    conn: Connection,
    /// The body buffer of the current callback (Envoy's, grown while held).
    body: Vec<u8>,
    held: bool,
    /// An asked frame whose judgement is "in flight" (as a Redis call is).
    waiting: Option<Ask>,
    to_server: Vec<u8>,
    /// Judgements to give, one per ask, in order; admit when they run out.
    plan: Vec<bool>,
    /// The rules of a denial its store could not decide.
    unchecked: Vec<usize>,
    asks: Vec<Ask>,
    fates: Vec<Fate>,
    eos: bool,
}

impl Sim {
    fn new(conn: Connection, plan: Vec<bool>) -> Self {
        Sim {
            conn,
            body: Vec::new(),
            held: false,
            waiting: None,
            to_server: Vec::new(),
            plan,
            unchecked: Vec::new(),
            asks: Vec::new(),
            fates: Vec::new(),
            eos: false,
        }
    }

    fn judgement(&mut self) -> Judgement {
        let admit = self.plan.get(self.asks.len() - 1).copied().unwrap_or(true);
        if admit {
            Judgement::Admit { delay_ms: 0 }
        } else {
            Judgement::Deny { violated: vec![0], unchecked: self.unchecked.clone(), retry_after_ms: 1_500 }
        }
    }

    /// A chunk arrives; `defer` makes the next ask wait for [`Sim::answer`].
    fn chunk(&mut self, bytes: &[u8], eos: bool, defer: bool) {
        self.eos |= eos;
        if self.held {
            self.body.extend_from_slice(bytes);
        } else {
            self.body = bytes.to_vec();
        }
        if self.waiting.is_some() {
            self.held = true;
            return;
        }
        self.pump(defer);
    }

    fn pump(&mut self, defer: bool) {
        loop {
            match self.conn.client_advance(&mut self.body).unwrap() {
                Advance::End => break,
                Advance::Ask(a) => {
                    self.asks.push(a);
                    if defer {
                        self.waiting = Some(a);
                        break;
                    }
                    let j = self.judgement();
                    self.fates.push(self.conn.judge(a, j, 0));
                }
            }
        }
        self.held = self.conn.client_finish(&mut self.body, self.eos, 0).unwrap();
        if !self.held {
            self.to_server.append(&mut self.body);
        }
    }

    fn answer(&mut self) {
        if let Some(a) = self.waiting.take() {
            let j = self.judgement();
            self.fates.push(self.conn.judge(a, j, 0));
            self.pump(false);
        }
    }
}

fn conn(notify: bool, close_after: Option<u32>, bytes: bool) -> Connection {
    Connection::new(vec![Policy::new(0, "chat", notify, close_after)], bytes, true, 1)
}

fn msg(text: &str) -> Msg {
    Msg { binary: false, compressed: false, fragments: vec![text.as_bytes().to_vec()], pings: vec![] }
}

fn wire(msgs: &[Msg]) -> Vec<u8> {
    msgs.iter().flat_map(|m| frames_of(m, [9, 8, 7, 6], false)).flat_map(|f| encode(&f)).collect()
}

/// Data messages the server can assemble (payloads joined), and its control frames.
fn messages(frames: &[(bool, bool, u8, Vec<u8>)]) -> (Vec<Vec<u8>>, Vec<(u8, Vec<u8>)>) {
    let (mut data, mut control, mut open): (Vec<Vec<u8>>, _, Option<Vec<u8>>) = (Vec::new(), Vec::new(), None);
    for (fin, _, op, payload) in frames {
        if *op >= 8 {
            control.push((*op, payload.clone()));
            continue;
        }
        let mut m = if *op == 0 { open.take().unwrap_or_default() } else { Vec::new() };
        m.extend_from_slice(payload);
        if *fin {
            data.push(m);
        } else {
            open = Some(m);
        }
    }
    (data, control)
}

#[test]
fn messages_over_the_limit_never_reach_the_server() {
    let mut sim = Sim::new(conn(false, None, false), vec![true, false, true]);
    sim.chunk(&wire(&[msg("one"), msg("two"), msg("three")]), false, false);
    let (data, control) = messages(&decode(&sim.to_server).unwrap());
    assert_eq!(data, vec![b"one".to_vec(), b"three".to_vec()]);
    assert!(control.is_empty());
    assert_eq!(sim.fates, vec![Fate::Admitted, Fate::Dropped, Fate::Admitted]);
}

#[test]
fn a_dropped_fragmented_message_goes_whole_and_its_pings_stay() {
    let m = Msg {
        binary: true,
        compressed: false,
        fragments: vec![b"ab".to_vec(), b"cd".to_vec(), b"ef".to_vec()],
        pings: vec![false, true, true],
    };
    let bytes = wire(&[m, msg("after")]);
    // One byte at a time: every header is split.
    let mut sim = Sim::new(conn(false, None, false), vec![false]);
    for b in &bytes {
        sim.chunk(std::slice::from_ref(b), false, false);
    }
    let (data, control) = messages(&decode(&sim.to_server).unwrap());
    assert_eq!(data, vec![b"after".to_vec()]);
    assert_eq!(control, vec![(9, b"cp".to_vec()), (9, b"cp".to_vec())]);
    assert_eq!(sim.asks.len(), 2, "a fragmented message is judged once");
}

#[test]
fn notify_sends_a_ping_and_its_pong_brings_the_notice() {
    let mut sim = Sim::new(conn(true, None, false), vec![false]);
    sim.chunk(&wire(&[msg("spam")]), false, false);
    let (data, control) = messages(&decode(&sim.to_server).unwrap());
    assert!(data.is_empty());
    let [(9, token)] = control.as_slice() else { panic!("expected one ping, got {control:?}") };
    // The server answers with its pong (and an echo of something else before it).
    let mut down = frame::frame(frame::TEXT, b"echo", None);
    down.extend(frame::frame(frame::PONG, token, None));
    sim.conn.server_chunk(&mut down, false).unwrap();
    let frames = decode(&down).unwrap();
    assert_eq!(frames.len(), 2, "the notice went in before the echo, the pong went out: {frames:?}");
    assert_eq!(frames[0].3, br#"{"type":"rate_limited","rule":"chat","retry_after":2,"retry_after_ms":1500}"#.to_vec());
    assert_eq!(frames[1].3, b"echo".to_vec());
}

#[test]
fn a_late_pong_to_an_earlier_ping_never_reaches_the_client() {
    // A second denial more than a second after the first, its ping still unanswered: sluice
    // pings again, and a server that then answers both sends two pongs of sluice's.
    let mut c = conn(true, None, false);
    let mut pings = Vec::new();
    for (i, now) in [0u64, 1_100_000].into_iter().enumerate() {
        let mut up = wire(&[msg(&format!("spam{i}"))]);
        while let Advance::Ask(a) = c.client_advance(&mut up).unwrap() {
            c.judge(a, Judgement::Deny { violated: vec![0], unchecked: vec![], retry_after_ms: 1_500 }, now);
        }
        c.client_finish(&mut up, false, now).unwrap();
        let (_, control) = messages(&decode(&up).unwrap());
        pings.extend(control.into_iter().filter(|(op, _)| *op == 9).map(|(_, token)| token));
    }
    assert_eq!(pings.len(), 2, "a second ping after a second without a pong");
    let mut down: Vec<u8> = pings.iter().flat_map(|token| frame::frame(frame::PONG, token, None)).collect();
    c.server_chunk(&mut down, false).unwrap();
    let frames = decode(&down).unwrap();
    assert!(frames.iter().all(|f| f.2 != 10), "no pong of sluice's reaches the client: {frames:?}");
    assert!(frames.iter().any(|f| f.2 == 1), "the notice did: {frames:?}");
}

#[test]
fn the_notice_waits_for_the_end_of_a_server_message() {
    let mut sim = Sim::new(conn(true, None, false), vec![false]);
    // The server is in the middle of a fragmented message when the client's is dropped.
    let mut first = encode(&RefFrame { fin: false, rsv1: false, opcode: 1, payload: b"par".into(), mask: None, wide: false });
    sim.conn.server_chunk(&mut first, false).unwrap();
    sim.chunk(&wire(&[msg("spam")]), false, false);
    let mut rest = encode(&RefFrame { fin: true, rsv1: false, opcode: 0, payload: b"t".into(), mask: None, wide: false });
    sim.conn.server_chunk(&mut rest, false).unwrap();
    first.extend(rest);
    let frames = decode(&first).unwrap();
    let ops: Vec<u8> = frames.iter().map(|f| f.2).collect();
    assert_eq!(ops, vec![1, 0, 1], "the notice comes after the fragmented message: {frames:?}");
}

#[test]
fn no_notice_follows_the_servers_close() {
    let mut c = conn(true, None, false);
    // The server is inside a fragmented message when a notice comes due, so the notice waits
    // for its end; the server closes instead. The notice would have gone in after the close.
    let mut down = encode(&RefFrame { fin: false, rsv1: false, opcode: 1, payload: b"par".into(), mask: None, wide: false });
    c.server_chunk(&mut down, false).unwrap();
    c.server.notice = Some(notice("chat", 10));
    let mut close = frame::frame(frame::CLOSE, &1000u16.to_be_bytes(), None);
    let sent = close.clone();
    c.server_chunk(&mut close, false).unwrap();
    assert_eq!(close, sent, "the server's close passes whole");
    let mut after = frame::frame(frame::TEXT, b"late", None);
    let late = after.clone();
    c.server_chunk(&mut after, true).unwrap();
    assert_eq!(after, late, "and nothing of sluice's follows it");
}

/// A close on a message its store could not decide (a Redis message rule's `on_error: deny`
/// during an outage) does not claim a limit was exceeded; nor does one on a lost decision.
#[test]
fn a_close_no_limit_decided_says_the_rule_could_not_be_checked() {
    let mut sim = Sim::new(conn(false, Some(1), false), vec![false]);
    sim.unchecked = vec![0];
    sim.chunk(&wire(&[msg("a")]), false, false);
    assert_eq!(sim.fates, vec![Fate::Closed]);
    let to_server = decode(&sim.to_server).unwrap();
    assert_eq!(&to_server.last().unwrap().3[2..], b"rate limit \"chat\" could not be checked");
    assert_eq!(super::close_reason(None), "rate limit could not be checked");
}

#[test]
fn close_after_n_closes_both_ways_with_1008() {
    let mut sim = Sim::new(conn(true, Some(2), false), vec![false, false, true]);
    sim.chunk(&wire(&[msg("a"), msg("b"), msg("c")]), false, false);
    assert_eq!(sim.fates, vec![Fate::Dropped, Fate::Closed], "nothing is judged after the close");
    let to_server = decode(&sim.to_server).unwrap();
    let last = to_server.last().unwrap();
    assert_eq!((last.2, &last.3[..2]), (8, &1008u16.to_be_bytes()[..]));
    assert_eq!(&last.3[2..], b"rate limit \"chat\" exceeded");
    // The client gets the notice of the first drop, what the server sent before it heard of
    // the close, then sluice's close in place of the server's own (its answer), and nothing after.
    let mut down = frame::frame(frame::TEXT, b"echo", None);
    down.extend(frame::close_frame(1008, "bye", None));
    down.extend(frame::frame(frame::TEXT, b"late", None));
    sim.conn.server_chunk(&mut down, false).unwrap();
    let frames = decode(&down).unwrap();
    assert_eq!(frames.iter().map(|f| (f.2, f.3.len())).collect::<Vec<_>>()[1..], [(1, 4), (8, 28)], "{frames:?}");
    assert_eq!(frames[0].2, 1, "the notice first");
    assert_eq!(&frames[2].3[2..], b"rate limit \"chat\" exceeded");
    // Whatever the client sends afterwards goes nowhere.
    let before = sim.to_server.len();
    sim.chunk(&wire(&[msg("d")]), false, false);
    assert_eq!(sim.to_server.len(), before);
}

#[test]
fn a_compressed_message_closes_when_it_may_be_needed_later() {
    let mut c = conn(false, None, false);
    c.set_may_drop(MayDrop::Uncompressed);
    let mut sim = Sim::new(c, vec![false, false]);
    let plain = msg("plain");
    let packed = Msg { compressed: true, ..msg("zz") };
    sim.chunk(&wire(&[plain, packed]), false, false);
    assert_eq!(sim.fates, vec![Fate::Dropped, Fate::Closed]);
}

#[test]
fn a_continuation_over_a_byte_limit_closes() {
    let m = Msg { binary: true, compressed: false, fragments: vec![vec![1; 10], vec![2; 10]], pings: vec![] };
    let mut sim = Sim::new(conn(false, None, true), vec![true, false]);
    sim.chunk(&wire(&[m]), false, false);
    assert_eq!(sim.asks.iter().map(|a| a.continuation).collect::<Vec<_>>(), vec![false, true]);
    assert_eq!(sim.fates, vec![Fate::Admitted, Fate::Closed]);
    let frames = decode(&sim.to_server).unwrap();
    assert_eq!(frames.iter().map(|f| f.2).collect::<Vec<_>>(), vec![2, 8], "the start, then the close");
}

#[test]
fn a_queued_message_holds_the_stream_until_its_time() {
    // leaky_bucket_queue admits after a delay: the client's stream is held (later chunks pile
    // up behind it) and goes on whole, in order, once the time has come.
    let mut c = conn(false, None, false);
    let mut body = wire(&[msg("one")]);
    let Advance::Ask(ask) = c.client_advance(&mut body).unwrap() else { panic!("an ask") };
    assert_eq!(c.judge(ask, Judgement::Admit { delay_ms: 250 }, 1_000_000), Fate::Admitted);
    assert_eq!(c.client_advance(&mut body).unwrap(), Advance::End);
    assert!(c.client_finish(&mut body, false, 1_000_000).unwrap(), "held");
    assert_eq!(c.hold_until_us(), 1_250_000);
    body.extend(wire(&[msg("two")]));
    let Advance::Ask(ask) = c.client_advance(&mut body).unwrap() else { panic!("the next message is judged") };
    c.judge(ask, Judgement::Admit { delay_ms: 0 }, 1_100_000);
    assert_eq!(c.client_advance(&mut body).unwrap(), Advance::End);
    assert!(c.client_finish(&mut body, false, 1_249_999).unwrap(), "still held a microsecond before");
    assert!(!c.client_finish(&mut body, false, 1_250_000).unwrap(), "let go at its time");
    let (data, _) = messages(&decode(&body).unwrap());
    assert_eq!(data, vec![b"one".to_vec(), b"two".to_vec()]);
}

#[test]
fn protocol_breakers_are_judged_not_let_through() {
    // A continuation with no message open, an oversized "ping", a reserved opcode: each is
    // judged as a message, so denying them keeps them from the server.
    let frames = [
        RefFrame { fin: true, rsv1: false, opcode: 0, payload: b"x".into(), mask: Some([1; 4]), wide: false },
        RefFrame { fin: true, rsv1: false, opcode: 9, payload: vec![7; 200], mask: Some([1; 4]), wide: false },
        RefFrame { fin: true, rsv1: false, opcode: 3, payload: b"y".into(), mask: Some([1; 4]), wide: false },
    ];
    let bytes: Vec<u8> = frames.iter().flat_map(encode).collect();
    let mut sim = Sim::new(conn(false, None, false), vec![false, false, false]);
    sim.chunk(&bytes, false, false);
    assert_eq!(sim.asks.len(), 3);
    assert!(sim.to_server.is_empty());
}

/// A header claiming a 64-bit length with its top bit set (`lead`: the length's first byte),
/// then bytes a server reading the length as 63 bits or signed would take for frames.
fn top_bit_frame(b0: u8, masked: bool, lead: u8) -> Vec<u8> {
    let mut out = vec![b0, if masked { 0xff } else { 0x7f }, lead, 0, 0, 0, 0, 0, 0, 2];
    if masked {
        out.extend_from_slice(&[5, 6, 7, 8]);
    }
    out.extend_from_slice(&[0x81, 0x00]);
    out
}

#[test]
fn a_length_with_its_top_bit_set_closes_both_ways_with_1002() {
    let part = |fin, payload: &[u8]| {
        encode(&RefFrame { fin, rsv1: false, opcode: 1, payload: payload.into(), mask: Some([9, 8, 7, 6]), wide: false })
    };
    // What comes before, whether its message is admitted, payload-byte costs, the frame's byte 0.
    let cases = [
        (vec![], true, false, 0x81),
        (part(true, b"one"), true, false, 0x82),
        (part(true, b"one"), true, false, 0x89),
        (part(true, b"one"), true, false, 0x88),
        (part(true, b"one"), true, false, 0x8b),
        (part(false, b"par"), true, false, 0x80),
        (part(false, b"par"), false, false, 0x80),
        (part(false, b"par"), true, true, 0x00),
        (part(false, b"par"), true, false, 0x89),
    ];
    let mut reason = 1002u16.to_be_bytes().to_vec();
    reason.extend_from_slice(b"invalid frame length");
    for (before, admit, bytes, b0) in &cases {
        for (masked, lead) in [(true, 0x80), (false, 0xff)] {
            for (bytewise, defer) in [(false, false), (true, false), (false, true), (true, true)] {
                let what =
                    format!("{b0:#x} after {before:?} (admitted {admit}), masked {masked}, bytewise {bytewise}, defer {defer}");
                let mut rest = top_bit_frame(*b0, masked, lead);
                rest.extend(wire(&[msg("after")]));
                let mut sim = Sim::new(conn(false, None, *bytes), vec![*admit]);
                // Deferred, the frame arrives while its stream is held for the judgement before it.
                sim.chunk(before, false, defer);
                if bytewise {
                    for b in &rest {
                        sim.chunk(std::slice::from_ref(b), false, false);
                    }
                } else {
                    sim.chunk(&rest, false, false);
                }
                sim.answer();
                assert_eq!(sim.asks.len(), usize::from(!before.is_empty()), "never judged: {what}");
                let mut want = if *admit { decode(before).unwrap() } else { Vec::new() };
                want.push((true, false, 8, reason.clone()));
                assert_eq!(decode(&sim.to_server).unwrap(), want, "{what}");
                assert!(!sim.held && sim.conn.is_closed(), "{what}");
                let sent = sim.to_server.len();
                sim.chunk(&wire(&[msg("late")]), false, false);
                assert_eq!(sim.to_server.len(), sent, "nothing more reaches the server: {what}");
                // The server answers the close; the client gets sluice's in its place.
                let mut down = frame::close_frame(1002, "bye", None);
                down.extend(frame::frame(frame::TEXT, b"late", None));
                sim.conn.server_chunk(&mut down, false).unwrap();
                assert_eq!(decode(&down).unwrap(), vec![(true, false, 8, reason.clone())], "{what}");
            }
        }
    }
}

/// The figure for the note: what one connection keeps between callbacks, whatever its
/// frames claim. Deterministic (no clock, no randomness): `cargo test -p sluice --lib
/// memory_per_connection -- --nocapture` prints it, natively and (with `--target
/// wasm32-wasip1`) as the filter runs.
#[test]
fn memory_per_connection_is_small_and_fixed() {
    let mut sim = Sim::new(conn(true, None, true), (0..400).map(|i| i % 3 != 0).collect());
    let fresh = sim.conn.memory_bytes();
    let mut most = fresh;
    // Messages, some dropped (each with a notice), fed whole and then a byte at a time.
    for round in 0..50 {
        let bytes = wire(&[msg("a"), msg("b")]);
        if round % 2 == 0 {
            sim.chunk(&bytes, false, false);
        } else {
            for b in bytes.chunks(1) {
                sim.chunk(b, false, false);
            }
        }
        most = most.max(sim.conn.memory_bytes());
    }
    // A frame that claims 2^62 bytes, then 1 MiB of it in 64 KiB chunks: the claim is a number
    // counted down, never a buffer.
    let mut head = vec![0x82, 0xff];
    head.extend_from_slice(&(1u64 << 62).to_be_bytes());
    head.extend_from_slice(&[1, 2, 3, 4]);
    sim.chunk(&head, false, false);
    for _ in 0..16 {
        sim.chunk(&vec![0u8; 65_536], false, false);
        most = most.max(sim.conn.memory_bytes());
    }
    let server = {
        let mut down: Vec<u8> = (0..20).flat_map(|_| frame::frame(frame::TEXT, b"echo", None)).collect();
        sim.conn.server_chunk(&mut down, false).unwrap();
        sim.conn.memory_bytes()
    };
    most = most.max(server);
    eprintln!(
        "websocket connection state ({} bit): {fresh} bytes fresh, at most {most} bytes between callbacks \
         (struct {} bytes: client carry {} + server carry {} inline; one rule)",
        usize::BITS,
        std::mem::size_of::<Connection>(),
        frame::MAX_HEADER - 1,
        frame::MAX_HEADER + frame::MAX_CONTROL_PAYLOAD as usize,
    );
    assert!(most < 1024, "{most}");
}

/// A host buffer that counts the bytes each rewrite copies.
struct Counting {
    bytes: Vec<u8>,
    copied: usize,
}

impl body::Body for Counting {
    fn len(&self) -> usize {
        self.bytes.len()
    }
    fn read(&self, start: usize, max: usize) -> Option<Vec<u8>> {
        self.bytes.read(start, max)
    }
    fn replace_prefix(&mut self, n: usize, with: &[u8]) -> bool {
        self.copied += n + with.len();
        self.bytes.replace_prefix(n, with)
    }
}

#[test]
fn cleaning_a_buffer_of_small_denied_messages_copies_it_a_bounded_number_of_times() {
    // 1 MiB of empty denied messages, each kept apart by a ping that stays: one edit per 12
    // bytes. A rewrite every 32 edits copied the prefix each time: 1,370 times the buffer, 84
    // now.
    let denied = encode(&RefFrame { fin: true, rsv1: false, opcode: 1, payload: vec![], mask: Some([1, 2, 3, 4]), wide: false });
    let ping = encode(&RefFrame { fin: true, rsv1: false, opcode: 9, payload: vec![], mask: Some([1, 2, 3, 4]), wide: false });
    let pairs = (1 << 20) / (denied.len() + ping.len());
    let mut body = Counting { bytes: [denied, ping].concat().repeat(pairs), copied: 0 };
    let len = body.bytes.len();
    let mut c = conn(false, None, false);
    loop {
        match c.client_advance(&mut body).unwrap() {
            Advance::End => break,
            Advance::Ask(a) => {
                c.judge(a, Judgement::Deny { violated: vec![0], unchecked: vec![], retry_after_ms: 1_000 }, 0);
            }
        }
    }
    c.client_finish(&mut body, false, 0).unwrap();
    assert_eq!(body.bytes.len(), len / 2, "only the pings are left");
    assert!(body.copied <= 128 * len, "{} bytes copied to clean {len}", body.copied);
}

#[test]
fn control_frames_between_the_pieces_of_a_dropped_message_cost_no_rewrites_of_their_own() {
    // One denied message left open, then 1 MiB of pings each followed by a piece of it: the
    // pieces are dropped without asking the limiter, and a ping kept in place split the drop,
    // one edit per 4 bytes (unmasked, the smallest frames): 250 copies of the buffer to clean.
    // Each ping now moves in front of the drop.
    let frame = |fin: bool, opcode: u8, payload: &[u8]| {
        encode(&RefFrame { fin, rsv1: false, opcode, payload: payload.to_vec(), mask: None, wide: false })
    };
    let ping = frame(true, 9, b"");
    let pairs = (1 << 20) / 4;
    let mut bytes = frame(false, 1, b"x");
    bytes.extend([ping.clone(), frame(false, 0, b"")].concat().repeat(pairs));
    bytes.extend(frame(true, 0, b"y"));
    let mut body = Counting { bytes, copied: 0 };
    let len = body.bytes.len();
    let mut c = conn(false, None, false);
    let ask = match c.client_advance(&mut body).unwrap() {
        Advance::Ask(a) => a,
        Advance::End => panic!("the message's first frame is asked about"),
    };
    assert_eq!(c.judge(ask, Judgement::Deny { violated: vec![0], unchecked: vec![], retry_after_ms: 1_000 }, 0), Fate::Dropped);
    assert_eq!(c.client_advance(&mut body).unwrap(), Advance::End, "no piece is asked about");
    c.client_finish(&mut body, false, 0).unwrap();
    assert!(body.bytes == ping.repeat(pairs), "every ping reaches the server, in order, and nothing of the message");
    // A rewrite waits for an eighth of the prefix moved, half of what it walked here: about
    // eight copies of the buffer (253 before).
    assert!(body.copied <= 10 * len, "{} bytes copied to clean {len}", body.copied);
}

fn arb_msg() -> impl Strategy<Value = Msg> {
    (
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..4),
        prop::collection::vec(any::<bool>(), 4),
    )
        .prop_map(|(binary, compressed, fragments, pings)| Msg { binary, compressed, fragments, pings })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// However the bytes are cut and however long judgements take, the server receives exactly
    /// the admitted messages, whole and in order, every client ping, and nothing it cannot parse;
    /// each message is judged once.
    #[test]
    fn the_server_sees_exactly_the_admitted_messages(
        msgs in prop::collection::vec(arb_msg(), 1..12),
        plan in prop::collection::vec(any::<bool>(), 12),
        cuts in prop::collection::vec(0usize..4000, 0..20),
        defers in prop::collection::vec(any::<bool>(), 20),
        wide in any::<bool>(),
    ) {
        let bytes: Vec<u8> = msgs.iter().flat_map(|m| frames_of(m, [3, 1, 4, 1], wide)).flat_map(|f| encode(&f)).collect();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let mut sim = Sim::new(conn(false, None, false), plan.clone());
        let mut from = 0;
        for (i, to) in cuts.into_iter().enumerate() {
            sim.chunk(&bytes[from..to], false, defers[i]);
            if !defers[(i + 1) % defers.len()] {
                sim.answer();
            }
            from = to;
        }
        sim.answer();
        prop_assert_eq!(sim.asks.len(), msgs.len());
        prop_assert!(!sim.held);
        let frames = decode(&sim.to_server).map_err(|e| TestCaseError::fail(e))?;
        let (data, control) = messages(&frames);
        let admitted: Vec<Vec<u8>> = msgs.iter().enumerate().filter(|(i, _)| plan.get(*i).copied().unwrap_or(true)).map(|(_, m)| m.fragments.concat()).collect();
        prop_assert_eq!(data, admitted);
        let pings = msgs.iter().map(|m| m.pings.iter().enumerate().skip(1).take(m.fragments.len().saturating_sub(1)).filter(|(_, p)| **p).count()).sum::<usize>();
        prop_assert_eq!(control.len(), pings);
        // RSV1 stays on the first frame of each admitted compressed message.
        let rsv: Vec<bool> = frames.iter().filter(|f| f.2 == 1 || f.2 == 2).map(|f| f.1).collect();
        let want: Vec<bool> = msgs.iter().enumerate().filter(|(i, _)| plan.get(*i).copied().unwrap_or(true)).map(|(_, m)| m.compressed).collect();
        prop_assert_eq!(rsv, want);
    }

    /// The server's stream reaches the client unchanged, however it is cut, when sluice has
    /// nothing to tell; and a notice goes in whole between messages.
    #[test]
    fn server_bytes_pass_unchanged_and_notices_land_between_messages(
        msgs in prop::collection::vec(arb_msg(), 1..8),
        cuts in prop::collection::vec(0usize..3000, 0..12),
        notify_at in 0usize..8,
    ) {
        let bytes: Vec<u8> = msgs.iter().flat_map(|m| frames_of(m, [0; 4], false)).map(|f| RefFrame { mask: None, ..f }).flat_map(|f| encode(&f)).collect();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let mut c = conn(true, None, false);
        let mut out = Vec::new();
        let mut from = 0;
        for (i, to) in cuts.into_iter().enumerate() {
            if i == notify_at {
                c.server.notice = Some(notice("chat", 10));
            }
            let mut chunk = bytes[from..to].to_vec();
            c.server_chunk(&mut chunk, false).unwrap();
            out.extend(chunk);
            from = to;
        }
        let frames = decode(&out).map_err(|e| TestCaseError::fail(e))?;
        let notices = frames.iter().filter(|f| f.3.starts_with(b"{\"type\":\"rate_limited\"")).count();
        let without: Vec<_> = frames.iter().filter(|f| !f.3.starts_with(b"{\"type\":\"rate_limited\"")).cloned().collect();
        prop_assert_eq!(decode(&bytes).map_err(|e| TestCaseError::fail(e))?, without);
        prop_assert!(notices <= 1);
        // A notice never splits a fragmented message.
        let mut open = false;
        for f in &frames {
            if f.3.starts_with(b"{\"type\":\"rate_limited\"") { prop_assert!(!open); }
            if f.2 < 8 { open = !f.0; }
        }
    }
}

#[test]
fn a_denials_wait_is_its_rules_longest_to_the_millisecond() {
    assert_eq!(denial_wait_ms([250, 40].into_iter()), 250, "a limit's wait as it is, under a second too");
    assert_eq!(denial_wait_ms([250, 7_000].into_iter()), 7_000, "an open breaker's");
    assert_eq!(denial_wait_ms(std::iter::empty()), 1_000, "none named: a second");
    assert_eq!(denial_wait_ms([0].into_iter()), 1_000);
}
