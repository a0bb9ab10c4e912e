//! The client-to-server direction: every frame's header is read as it passes, each data message
//! is stopped at its first frame until the limiter has judged it, and a message judged over the
//! limit is removed whole, frame by frame, at frame boundaries. Control frames (ping, pong,
//! close) pass uncounted; anything else that is not the next part of an admitted message is
//! judged as a message of its own, so no byte reaches the server unjudged. A frame whose length
//! RFC 6455 forbids is reported, never passed: the server may not agree where it ends.
//!
//! State across chunks is a few numbers and at most 13 bytes: a chunk that ends inside a frame
//! header has that partial header cut off and carried to the next chunk (the header decides
//! what happens to its frame, and a forwarded byte cannot be taken back).

use super::body::{edits_before_rewrite, moved_before_rewrite, Body, Edits, Reader};
use super::frame::{Header, Parsed, CONTINUATION, MAX_HEADER, RSV1};
use super::Carry;

/// What the stream needs to go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advance {
    /// A frame the limiter must judge first (see [`ClientStream::admit`] and the others).
    Ask(Ask),
    /// Every complete header of the buffer has been dealt with.
    End,
}

/// Where [`ClientStream::advance`] stopped: an [`Advance`], or a frame that fails the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    Ask(Ask),
    End,
    /// The frame at hand claims a length over [`super::frame::MAX_PAYLOAD`]: it is held as if
    /// asked, for [`ClientStream::close`] to take its place.
    Invalid,
}

/// A frame waiting for judgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// Its announced payload length.
    pub payload: u64,
    /// A later frame of an admitted message (asked only when a rule costs payload bytes): it
    /// can no longer be dropped without cutting the message.
    pub continuation: bool,
    /// The first frame of a permessage-deflate message (RSV1).
    pub compressed: bool,
}

/// The host refused to hand over or rewrite the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError;

#[derive(Debug, Default)]
pub struct ClientStream {
    /// Bytes of the held buffer dealt with (kept or dropped).
    pos: usize,
    /// The buffer is being held (the host answered Pause): it grows, and `pos` stays valid.
    held: bool,
    /// This callback's buffer has been started on.
    begun: bool,
    /// Payload bytes still to come of the frame at hand, and whether they are dropped.
    frame_left: u64,
    frame_drop: bool,
    /// A fragmented data message is open: `Some(dropped)`.
    open: Option<bool>,
    /// A close went to the server: nothing of the client's reaches it any more.
    closed: bool,
    /// Judge each continuation frame too (a rule costs payload bytes).
    ask_continuations: bool,
    /// The header awaiting judgement, at `pos`.
    asked: Option<Header>,
    carry: Carry<{ MAX_HEADER - 1 }>,
    edits: Edits,
}

impl ClientStream {
    pub fn new(ask_continuations: bool) -> Self {
        ClientStream { ask_continuations, ..ClientStream::default() }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether a frame waits for judgement.
    pub fn is_asking(&self) -> bool {
        self.asked.is_some()
    }

    /// Starts on the buffer of a body callback: a new chunk (after the last was let through)
    /// gets the carried partial header put back in front.
    pub fn begin(&mut self, body: &mut impl Body) -> Result<(), HostError> {
        if self.held || self.begun {
            return Ok(());
        }
        self.begun = true;
        self.pos = 0;
        if !self.carry.is_empty() {
            if !body.replace_prefix(0, self.carry.bytes()) {
                return Err(HostError);
            }
            self.carry.clear();
        }
        Ok(())
    }

    /// Walks the buffer from where it stopped to the next frame needing judgement, or to its end.
    pub fn advance(&mut self, body: &mut impl Body, reader: &mut Reader) -> Result<Walk, HostError> {
        if let Some(h) = self.asked {
            return Ok(if h.has_valid_length() { Walk::Ask(self.ask_of(&h)) } else { Walk::Invalid });
        }
        loop {
            let len = body.len();
            if len < self.pos {
                // A buffer never shrinks under the walk: the host failed to report its size.
                return Err(HostError);
            }
            if self.closed {
                self.edits.drop_range(self.pos, len);
                self.pos = len;
                return Ok(Walk::End);
            }
            if self.frame_left > 0 {
                let n = self.frame_left.min((len - self.pos) as u64) as usize;
                if n == 0 {
                    return Ok(Walk::End);
                }
                if self.frame_drop {
                    self.edits.drop_range(self.pos, self.pos + n);
                }
                self.pos += n;
                self.frame_left -= n as u64;
                continue;
            }
            if self.pos >= len {
                return Ok(Walk::End);
            }
            if self.edits.len() >= edits_before_rewrite(self.pos) || self.edits.moved() >= moved_before_rewrite(self.pos) {
                self.pos = self.edits.apply(body, self.pos).ok_or(HostError)?;
                reader.reset();
                continue;
            }
            let Parsed::Header(h) = Header::parse(reader.at(body, self.pos, MAX_HEADER).ok_or(HostError)?) else {
                return Ok(Walk::End);
            };
            if !h.has_valid_length() {
                self.asked = Some(h);
                return Ok(Walk::Invalid);
            }
            match (self.open, h.opcode) {
                _ if h.is_valid_control() => {
                    // At most 139 bytes (RFC 6455 §5.5): whole in the buffer, it moves over a
                    // drop just before it rather than splitting it.
                    let whole = usize::from(h.len) + h.payload_len as usize;
                    if self.edits.drops_up_to(self.pos) && whole <= len - self.pos {
                        let frame = reader.at(body, self.pos, whole).filter(|f| f.len() == whole).ok_or(HostError)?;
                        if self.edits.move_over_drop(self.pos, frame) {
                            self.pos += whole;
                            continue;
                        }
                    }
                    self.pass(&h, false)
                }
                (Some(true), CONTINUATION) => {
                    self.edits.drop_range(self.pos, self.pos + usize::from(h.len));
                    self.pass(&h, true);
                    if h.fin {
                        self.open = None;
                    }
                }
                (Some(false), CONTINUATION) if !self.ask_continuations => {
                    self.pass(&h, false);
                    if h.fin {
                        self.open = None;
                    }
                }
                _ => {
                    self.asked = Some(h);
                    return Ok(Walk::Ask(self.ask_of(&h)));
                }
            }
        }
    }

    fn ask_of(&self, h: &Header) -> Ask {
        let continuation = h.opcode == CONTINUATION && self.open == Some(false);
        Ask { payload: h.payload_len, continuation, compressed: !continuation && h.rsv & RSV1 != 0 }
    }

    /// Steps over a frame's header; its payload follows, dropped or not.
    fn pass(&mut self, h: &Header, drop: bool) {
        self.pos += usize::from(h.len);
        self.frame_left = h.payload_len;
        self.frame_drop = drop;
    }

    /// After a message's first frame: whether a fragmented message is now open.
    fn opened(&mut self, h: &Header, dropped: bool) {
        if h.opcode == CONTINUATION {
            if h.fin {
                self.open = None;
            }
        } else if !h.is_control() {
            self.open = (!h.fin).then_some(dropped);
        }
    }

    /// The asked frame goes on to the server.
    pub fn admit(&mut self) {
        if let Some(h) = self.asked.take() {
            self.pass(&h, false);
            self.opened(&h, false);
        }
    }

    /// The asked frame's message is removed, this frame and its continuations; `instead` (a
    /// ping) takes its place.
    pub fn drop_message(&mut self, instead: Option<Vec<u8>>) {
        if let Some(h) = self.asked.take() {
            if let Some(bytes) = instead {
                self.edits.insert(self.pos, bytes);
            }
            self.edits.drop_range(self.pos, self.pos + usize::from(h.len));
            self.pass(&h, true);
            self.opened(&h, true);
        }
    }

    /// `close` (a close frame) replaces the asked (or invalid) frame, and nothing after it
    /// reaches the server.
    pub fn close(&mut self, close: Vec<u8>) {
        if self.asked.take().is_some() {
            self.edits.insert(self.pos, close);
            self.closed = true;
            self.frame_left = 0;
        }
    }

    /// Ends the look at this callback's buffer. With `hold`, it stays held (the host pauses the
    /// stream) and grows; otherwise the changes are written and a trailing partial header is
    /// carried, unless the stream ends here. Returns whether the buffer is held.
    pub fn finish(&mut self, body: &mut impl Body, end_of_stream: bool, hold: bool) -> Result<bool, HostError> {
        self.begun = false;
        if hold || self.asked.is_some() {
            self.held = true;
            return Ok(true);
        }
        let len = body.len();
        let tail = len - self.pos.min(len);
        if tail > 0 && !end_of_stream && !self.closed {
            // Shorter than a header, or advance would have gone on.
            let bytes = body.read(self.pos, tail).ok_or(HostError)?;
            if bytes.len() != tail || !self.carry.set(&bytes) {
                return Err(HostError);
            }
            self.edits.drop_range(self.pos, len);
        }
        if !self.edits.is_empty() {
            self.edits.apply(body, len).ok_or(HostError)?;
        }
        self.pos = 0;
        self.held = false;
        Ok(false)
    }

    /// Bytes this stream keeps between callbacks, beyond its own size: the pending changes.
    pub fn heap_bytes(&self) -> usize {
        self.edits.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::websocket::frame;

    /// A body reported shorter than the walk has read (a host that cannot tell a held buffer's
    /// size) is the host's failure: never a walk that ends as if all were judged.
    #[test]
    fn a_body_that_shrinks_under_the_walk_is_a_host_error() {
        let mut stream = ClientStream::new(false);
        let mut reader = Reader::default();
        let mut body = frame::frame(frame::TEXT, &[7u8; 100], Some([1, 2, 3, 4]));
        body.truncate(30);
        assert!(stream.begin(&mut body).is_ok());
        assert!(matches!(stream.advance(&mut body, &mut reader), Ok(Walk::Ask(_))));
        stream.admit();
        assert!(matches!(stream.advance(&mut body, &mut reader), Ok(Walk::End)));
        body.clear();
        assert_eq!(stream.advance(&mut body, &mut reader), Err(HostError));
    }
}
