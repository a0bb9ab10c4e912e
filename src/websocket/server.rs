//! The server-to-client direction: frame boundaries are tracked so that what sluice tells the
//! client goes in between whole frames: the notice (a text frame, only between messages), and
//! the close, which takes the place of the close the server sends back when sluice closed the
//! connection on the client's behalf (what the server sent before it passes; nothing after it
//! does). The pong the server sends for sluice's own ping is taken out.
//!
//! Never held: a chunk that ends inside a frame header, or inside a pong that may be sluice's,
//! has that part carried to the next chunk (at most a header and a 125-byte control payload).

use super::body::{Body, Edits, Reader};
use super::client::HostError;
use super::frame::{self, Header, Parsed, CLOSE, CONTINUATION, MAX_CONTROL_PAYLOAD, MAX_HEADER, PONG};
use super::Carry;

/// The longest piece carried between chunks: a control frame's header and payload.
const MAX_CARRY: usize = MAX_HEADER + MAX_CONTROL_PAYLOAD as usize;

#[derive(Debug, Default)]
pub struct ServerStream {
    frame_left: u64,
    frame_drop: bool,
    /// The server is inside a fragmented data message: no text frame may go in here.
    in_message: bool,
    /// A close went to the client: nothing of the server's reaches it any more.
    closed: bool,
    /// The server sent its own close (or answered the client's): it passes, and no frame of
    /// sluice's may follow it (RFC 6455, 5.5.1).
    server_closed: bool,
    /// The notice frame waiting for a message boundary.
    pub(super) notice: Option<Vec<u8>>,
    /// The close frame that replaces the server's answer to sluice's close.
    pub(super) close: Option<Vec<u8>>,
    /// The payload of the pong sluice expects for its ping, if one is out.
    pub(super) pong: Option<Vec<u8>>,
    /// The pong of the ping before it, sent again when a second passed without an answer: a
    /// server that answers late answers both, and neither is the client's.
    pub(super) stale_pong: Option<Vec<u8>>,
    carry: Carry<MAX_CARRY>,
}

impl ServerStream {
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Deals with one chunk of the server's bytes, rewriting it when something goes in or out.
    pub fn chunk(&mut self, body: &mut impl Body, end_of_stream: bool) -> Result<(), HostError> {
        if !self.carry.is_empty() {
            if !body.replace_prefix(0, self.carry.bytes()) {
                return Err(HostError);
            }
            self.carry.clear();
        }
        let mut edits = Edits::default();
        let mut reader = Reader::default();
        let len = body.len();
        let mut pos = 0usize;
        loop {
            if self.closed {
                edits.drop_range(pos, len);
                pos = len;
                break;
            }
            if self.frame_left > 0 {
                let n = self.frame_left.min((len - pos) as u64) as usize;
                if n == 0 {
                    break;
                }
                if self.frame_drop {
                    edits.drop_range(pos, pos + n);
                }
                pos += n;
                self.frame_left -= n as u64;
                continue;
            }
            self.boundary(&mut edits, pos);
            if pos >= len {
                break;
            }
            let Parsed::Header(h) = Header::parse(reader.at(body, pos, MAX_HEADER).ok_or(HostError)?) else { break };
            if h.opcode == CLOSE && self.close.is_some() {
                if let Some(close) = self.close.take() {
                    edits.insert(pos, close);
                }
                self.closed = true;
                self.notice = None;
                continue;
            }
            if h.opcode == CLOSE {
                self.server_closed = true;
                self.notice = None;
            }
            if self.is_our_pong(&h) {
                let whole = h.frame_len() as usize;
                let Some(bytes) = reader.at(body, pos, whole).ok_or(HostError)?.get(..whole) else { break };
                let mut payload = bytes[usize::from(h.len)..].to_vec();
                if let Some(key) = h.mask {
                    frame::apply_mask(&mut payload, key, 0);
                }
                let awaited =
                    [&mut self.pong, &mut self.stale_pong].into_iter().find(|p| p.as_deref() == Some(payload.as_slice()));
                if let Some(token) = awaited {
                    *token = None;
                    edits.drop_range(pos, pos + whole);
                    pos += whole;
                    continue;
                }
            }
            if !h.is_control() {
                self.in_message = !h.fin && (h.opcode != CONTINUATION || self.in_message);
            }
            pos += usize::from(h.len);
            self.frame_left = h.payload_len;
            self.frame_drop = false;
        }
        let tail = len - pos.min(len);
        if tail > 0 && !end_of_stream {
            let bytes = body.read(pos, tail).ok_or(HostError)?;
            if bytes.len() != tail || !self.carry.set(&bytes) {
                return Err(HostError);
            }
            edits.drop_range(pos, len);
        }
        edits.apply(body, len).ok_or(HostError)?;
        Ok(())
    }

    /// At a frame boundary between messages, the notice goes in.
    fn boundary(&mut self, edits: &mut Edits, pos: usize) {
        if !self.in_message && !self.server_closed {
            if let Some(notice) = self.notice.take() {
                edits.insert(pos, notice);
            }
        }
    }

    fn is_our_pong(&self, h: &Header) -> bool {
        let ours = |p: &Option<Vec<u8>>| p.as_ref().is_some_and(|p| p.len() as u64 == h.payload_len);
        h.opcode == PONG && h.is_valid_control() && (ours(&self.pong) || ours(&self.stale_pong))
    }

    /// Bytes this stream keeps between callbacks, beyond its own size.
    pub fn heap_bytes(&self) -> usize {
        [&self.notice, &self.close, &self.pong, &self.stale_pong].iter().map(|b| b.as_ref().map_or(0, Vec::capacity)).sum()
    }
}
