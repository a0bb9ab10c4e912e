//! WebSocket message limits: after an upgrade, Envoy hands the filter the connection's raw RFC
//! 6455 frames, client to server in request body chunks and server to client in response body
//! chunks. A [`Connection`] follows both directions frame by frame ([`client`], [`server`]),
//! stops each client message at its first frame until the limiter has judged it, and carries
//! out the judgement: the message goes on, is removed whole (optionally replaced by a ping whose
//! pong brings the client a notice), or the connection is closed with 1008 on both sides. A
//! client frame whose length RFC 6455 forbids closes it with 1002.
//!
//! Pure: the host lends the buffers ([`Body`]) and the time, and asks the limiter.
//!
//! ```
//! use sluice::websocket::{frame, Advance, Connection, Judgement, Policy, Fate};
//! let mut conn = Connection::new(vec![Policy::new(0, "chat", false, None)], false, true, 7);
//! let mut up = frame::frame(frame::TEXT, b"hi", Some([1, 2, 3, 4]));
//! let ask = match conn.client_advance(&mut up).unwrap() { Advance::Ask(a) => a, Advance::End => unreachable!() };
//! assert_eq!(ask.payload, 2);
//! let deny = Judgement::Deny { violated: vec![0], unchecked: vec![], retry_after_ms: 500 };
//! assert_eq!(conn.judge(ask, deny, 0), Fate::Dropped);
//! assert_eq!(conn.client_advance(&mut up).unwrap(), Advance::End);
//! conn.client_finish(&mut up, false, 0).unwrap();
//! assert!(up.is_empty(), "the message never reaches the server");
//! ```

pub mod body;
mod client;
pub mod extensions;
pub mod frame;
mod server;

pub use body::Body;
pub use client::{Advance, Ask, HostError};

use body::Reader;
use client::{ClientStream, Walk};
use server::ServerStream;

/// A few bytes kept between chunks (a partial header, a partial control frame).
#[derive(Debug, Clone, Copy)]
pub struct Carry<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Default for Carry<N> {
    fn default() -> Self {
        Carry { bytes: [0; N], len: 0 }
    }
}

impl<const N: usize> Carry<N> {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
    /// Keeps `bytes`, or nothing and false when they are more than N: the callers carry what
    /// fits by construction, unless the host handed over less than it said it had.
    pub fn set(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() > N {
            self.len = 0;
            return false;
        }
        self.len = bytes.len();
        self.bytes[..self.len].copy_from_slice(bytes);
        true
    }
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// A message rule as one connection applies it: what over the limit means, and how often this
/// connection has been over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The rule's index in the config.
    pub rule: usize,
    pub name: String,
    /// Tell the client with a text frame when its message is dropped.
    pub notify: bool,
    /// Close the connection at this many messages over the limit.
    pub close_after: Option<u32>,
    violations: u32,
}

impl Policy {
    pub fn new(rule: usize, name: &str, notify: bool, close_after: Option<u32>) -> Self {
        Policy { rule, name: name.to_string(), notify, close_after, violations: 0 }
    }
}

/// What the limiter said about a message (or, with payload-byte costs, a continuation frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Let it through, after `delay_ms` (`leaky_bucket_queue`): the stream is held until then.
    Admit { delay_ms: u64 },
    /// Over the limit of these rules (config indexes); the same message would be admitted in
    /// `retry_after_ms`. Those also in `unchecked` were denied because their store could not
    /// decide (their `on_error`), not over any limit.
    Deny { violated: Vec<usize>, unchecked: Vec<usize>, retry_after_ms: u64 },
}

/// What became of a judged message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Admitted,
    Dropped,
    /// The connection is being closed (1008); the message is not delivered.
    Closed,
}

/// Which messages over the limit may be removed rather than closed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MayDrop {
    /// Any: no compression, or the client compresses each message on its own.
    All,
    /// Uncompressed ones only: a compressed message may be referred to by later ones.
    Uncompressed,
    /// None: an unknown extension may give the frame bits a meaning sluice cannot keep.
    Nothing,
}

/// The wait a denied message's notice names, from its violated rules' waits (each the longest
/// of its limits', or of an `on_error` denial: the breaker's): the longest, to the millisecond;
/// a second when none names one, as a limited response's `Retry-After` would.
pub fn denial_wait_ms(waits: impl Iterator<Item = u64>) -> u64 {
    waits.max().filter(|&ms| ms > 0).unwrap_or(1000)
}

/// A sluice ping goes out at most once per this long while its pong is awaited.
const PING_PATIENCE_US: u64 = 1_000_000;

/// One upgraded connection.
#[derive(Debug)]
pub struct Connection {
    client: ClientStream,
    server: ServerStream,
    /// The client buffer's window read in this callback (emptied when it ends).
    reader: Reader,
    policies: Vec<Policy>,
    may_drop: MayDrop,
    /// The client's stream is held until then (epoch µs) by a queued admission.
    hold_until_us: u64,
    ping_seq: u32,
    ping_sent_us: u64,
    /// Varies the masking keys of the frames sluice sends the server.
    mask_seed: u32,
}

/// Text frames and close reasons name the rule, which is `[A-Za-z0-9_.-]`: nothing to escape.
fn notice(rule: &str, retry_after_ms: u64) -> Vec<u8> {
    let secs = retry_after_ms.div_ceil(1000).max(1);
    let text = format!(r#"{{"type":"rate_limited","rule":"{rule}","retry_after":{secs},"retry_after_ms":{retry_after_ms}}}"#);
    frame::frame(frame::TEXT, text.as_bytes(), None)
}

/// The close reason naming the first violated rule: over its limit, or not checked (its store
/// could not decide); with no rule (a decision that was lost), not checked.
fn close_reason(rule: Option<(&str, bool)>) -> String {
    match rule {
        Some((rule, false)) => format!("rate limit \"{rule}\" exceeded"),
        Some((rule, true)) => format!("rate limit \"{rule}\" could not be checked"),
        None => "rate limit could not be checked".to_string(),
    }
}

/// Whether an `Upgrade` header value asks for a WebSocket (a token of a comma-separated list,
/// any case, as RFC 6455 §4.2.1 and RFC 9110 §7.8 allow).
pub fn is_upgrade(value: &[u8]) -> bool {
    names_protocol(value, b"websocket")
}

/// The request headers that name the protocol a request upgrades to (`:protocol` is HTTP/2's
/// and HTTP/3's extended CONNECT): a `match.headers` value is one of their tokens, in any case.
pub const PROTOCOL_HEADERS: &[&str] = &["upgrade", ":protocol"];

/// Whether an `Upgrade` (or `:protocol`, or `Connection`) value names `protocol`: one of its
/// comma-separated tokens is it, in any case. Envoy reads them this way when it decides to upgrade; a rule that
/// matched them byte for byte would let `WebSocket` upgrade unlimited.
pub fn names_protocol(value: &[u8], protocol: &[u8]) -> bool {
    value.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(protocol))
}

/// Whether `req` opens a WebSocket: its `Upgrade` asks for one, and it is a GET (RFC 6455 §4.1;
/// Envoy's codecs present an HTTP/2 or HTTP/3 extended CONNECT to filters as this same HTTP/1.1
/// form) or its `Connection` names `upgrade`. Envoy upgrades on those two headers whatever the
/// method, so a backend that accepts a handshake made with POST would otherwise carry messages
/// no rule counts. Another method without `Connection: upgrade` is an ordinary request to Envoy
/// too: its body is never read as frames. The method and `Connection` are read only when the
/// `Upgrade` header asks, so other requests pay no host call for them.
pub fn is_upgrade_request(req: &impl crate::identity::RequestInfo) -> bool {
    req.header("upgrade").is_some_and(|v| is_upgrade(&v))
        && (req.header(":method").is_some_and(|m| m.eq_ignore_ascii_case(b"GET"))
            || req.header("connection").is_some_and(|c| names_protocol(&c, b"upgrade")))
}

impl Connection {
    /// `ask_continuations`: a rule costs payload bytes, so every data frame is judged.
    pub fn new(policies: Vec<Policy>, ask_continuations: bool, drop_compressed: bool, mask_seed: u32) -> Self {
        let may_drop = if drop_compressed { MayDrop::All } else { MayDrop::Uncompressed };
        Connection {
            client: ClientStream::new(ask_continuations),
            server: ServerStream::default(),
            reader: Reader::default(),
            policies,
            may_drop,
            hold_until_us: 0,
            ping_seq: 0,
            ping_sent_us: 0,
            mask_seed,
        }
    }

    /// Narrows what may be dropped (from what the server's 101 accepted).
    pub fn set_may_drop(&mut self, may_drop: MayDrop) {
        self.may_drop = may_drop;
    }

    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// Whether a close has gone out (either way).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed() || self.server.is_closed()
    }

    /// Whether a client frame waits for judgement.
    pub fn is_asking(&self) -> bool {
        self.client.is_asking()
    }

    /// Starts on a client body callback's buffer, then walks it to the first frame to judge.
    /// Call [`Connection::judge`] on an ask, and again until [`Advance::End`].
    pub fn client_advance(&mut self, body: &mut impl Body) -> Result<Advance, HostError> {
        self.client.begin(body)?;
        loop {
            match self.client.advance(body, &mut self.reader)? {
                Walk::Ask(ask) => return Ok(Advance::Ask(ask)),
                Walk::End => return Ok(Advance::End),
                // Once closed, the walk drops the rest and ends.
                Walk::Invalid => self.close(frame::PROTOCOL_ERROR, "invalid frame length"),
            }
        }
    }

    /// Ends a client body callback: `Ok(true)` when the stream must stay held (the host
    /// answers Pause), `Ok(false)` when the buffer, rewritten, may go on.
    pub fn client_finish(&mut self, body: &mut impl Body, end_of_stream: bool, now_us: u64) -> Result<bool, HostError> {
        self.reader.reset();
        self.client.finish(body, end_of_stream, now_us < self.hold_until_us)
    }

    /// When a held stream may be let go (0: not held for time).
    pub fn hold_until_us(&self) -> u64 {
        self.hold_until_us
    }

    fn mask(&self) -> [u8; 4] {
        (self.mask_seed.rotate_left(13) ^ self.ping_seq.wrapping_mul(0x9e37_79b9)).to_be_bytes()
    }

    /// A ping for the server whose pong will carry the notice, unless one is still awaited.
    fn ping(&mut self, now_us: u64) -> Option<Vec<u8>> {
        if self.server.pong.is_some() && now_us < self.ping_sent_us.saturating_add(PING_PATIENCE_US) {
            return None;
        }
        self.ping_seq = self.ping_seq.wrapping_add(1);
        self.ping_sent_us = now_us;
        let token = format!("sluice:{:08x}", self.ping_seq).into_bytes();
        let ping = frame::frame(frame::PING, &token, Some(self.mask()));
        // The ping before this one may still be answered: its pong is taken out too.
        self.server.stale_pong = self.server.pong.replace(token);
        Some(ping)
    }

    /// Carries out the limiter's judgement of the asked frame.
    pub fn judge(&mut self, ask: Ask, judgement: Judgement, now_us: u64) -> Fate {
        let (violated, unchecked, retry_after_ms) = match judgement {
            Judgement::Admit { delay_ms } => {
                self.hold_until_us = self.hold_until_us.max(now_us.saturating_add(delay_ms.saturating_mul(1000)));
                self.client.admit();
                return Fate::Admitted;
            }
            Judgement::Deny { violated, unchecked, retry_after_ms } => (violated, unchecked, retry_after_ms),
        };
        // A frame of a message already under way cannot be taken out without cutting the
        // message, and a compressed message may be needed to read later ones.
        let mut close =
            ask.continuation || self.may_drop == MayDrop::Nothing || (ask.compressed && self.may_drop == MayDrop::Uncompressed);
        let (mut notify, mut first) = (false, None);
        for (i, p) in self.policies.iter_mut().enumerate().filter(|(_, p)| violated.contains(&p.rule)) {
            p.violations = p.violations.saturating_add(1);
            close |= p.close_after.is_some_and(|n| p.violations >= n);
            notify |= p.notify;
            first.get_or_insert(i);
        }
        // The policy the texts name.
        let first = first.and_then(|i| self.policies.get(i));
        if close {
            let reason = close_reason(first.map(|p| (p.name.as_str(), unchecked.contains(&p.rule))));
            self.close(frame::POLICY_VIOLATION, &reason);
            return Fate::Closed;
        }
        let ping = if notify {
            self.server.notice = Some(notice(first.map_or("", |p| &p.name), retry_after_ms));
            self.ping(now_us)
        } else {
            None
        };
        self.client.drop_message(ping);
        Fate::Dropped
    }

    /// Closes both ways in place of the asked frame: the server gets a close now, the client
    /// gets one in place of the server's answer.
    fn close(&mut self, code: u16, reason: &str) {
        self.client.close(frame::close_frame(code, reason, Some(self.mask())));
        self.server.close = Some(frame::close_frame(code, reason, None));
    }

    /// Deals with a chunk of the server's bytes (never held).
    pub fn server_chunk(&mut self, body: &mut impl Body, end_of_stream: bool) -> Result<(), HostError> {
        self.server.chunk(body, end_of_stream)
    }

    /// Bytes one connection holds: its own size and what it keeps on the heap between callbacks.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Connection>()
            + self.client.heap_bytes()
            + self.server.heap_bytes()
            + self.policies.capacity() * std::mem::size_of::<Policy>()
            + self.policies.iter().map(|p| p.name.capacity()).sum::<usize>()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
