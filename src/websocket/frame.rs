//! RFC 6455 frame headers: reading one from the bytes at hand (or learning that more are needed),
//! and writing the frames sluice injects. Payloads are never read here: a frame's length is a
//! number to count down, never a size to allocate, so a header announcing 2^63 - 1 bytes costs
//! nothing until the bytes arrive.

/// Continuation of a fragmented data message.
pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// The longest header: 2 bytes, a 64-bit length, a masking key.
pub const MAX_HEADER: usize = 14;
/// RFC 6455 §5.5: a control frame carries at most 125 payload bytes.
pub const MAX_CONTROL_PAYLOAD: u64 = 125;
/// RFC 6455 §5.2: the most significant bit of a 64-bit payload length must be 0.
pub const MAX_PAYLOAD: u64 = u64::MAX >> 1;
/// RSV1: set on the first frame of a message compressed by permessage-deflate (RFC 7692).
pub const RSV1: u8 = 0b100;

/// Status code of a close for a policy violation (RFC 6455 §7.4.1).
pub const POLICY_VIOLATION: u16 = 1008;
/// Status code of a close for a protocol error (RFC 6455 §7.4.1).
pub const PROTOCOL_ERROR: u16 = 1002;

/// One frame's header, as it was on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    /// RSV1..RSV3 as the three low bits (RSV1 = 0b100).
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    /// Announced payload length: a claim, not something received.
    pub payload_len: u64,
    /// Bytes of the header itself (2 to 14).
    pub len: u8,
}

/// What the bytes at hand say about the header that starts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    Header(Header),
    /// The header is longer than the bytes at hand: at least this many bytes are needed.
    Need(usize),
}

impl Header {
    /// Reads the header at the start of `bytes`. Any bytes form some header: validity is the
    /// endpoints' business; what the proxy needs is where each frame ends. A length over
    /// [`MAX_PAYLOAD`] is read as the number it spells; the caller decides ([`Header::has_valid_length`]).
    pub fn parse(bytes: &[u8]) -> Parsed {
        let (Some(&b0), Some(&b1)) = (bytes.first(), bytes.get(1)) else { return Parsed::Need(2) };
        let masked = b1 & 0x80 != 0;
        let (len_bytes, short) = match b1 & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        let total = 2 + len_bytes + if masked { 4 } else { 0 };
        if bytes.len() < total {
            return Parsed::Need(total);
        }
        let payload_len = short.unwrap_or_else(|| bytes[2..2 + len_bytes].iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)));
        let mask = masked.then(|| {
            let at = 2 + len_bytes;
            [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]
        });
        Parsed::Header(Header {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0b111,
            opcode: b0 & 0x0f,
            mask,
            payload_len,
            len: total as u8,
        })
    }

    /// Ping, pong, close and the reserved control opcodes (0xB-0xF).
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }

    /// A control frame as RFC 6455 §5.5 allows one: known opcode, unfragmented, at most 125
    /// bytes. Anything else that claims to be control is not let past uncounted.
    pub fn is_valid_control(&self) -> bool {
        matches!(self.opcode, CLOSE | PING | PONG) && self.fin && self.payload_len <= MAX_CONTROL_PAYLOAD
    }

    /// Whether endpoints agree on where the frame ends: a length with its top bit set may be
    /// read as negative or as 63 bits, so a server could see a short frame and then frames the
    /// proxy never counts.
    pub fn has_valid_length(&self) -> bool {
        self.payload_len <= MAX_PAYLOAD
    }

    /// Header and payload: the frame's whole length on the wire (saturating).
    pub fn frame_len(&self) -> u64 {
        u64::from(self.len).saturating_add(self.payload_len)
    }

    /// The header's bytes, in the shortest length form.
    pub fn encode(&self) -> ([u8; MAX_HEADER], usize) {
        let mut out = [0u8; MAX_HEADER];
        out[0] = (u8::from(self.fin) << 7) | ((self.rsv & 0b111) << 4) | (self.opcode & 0x0f);
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut n = 2;
        match self.payload_len {
            len @ 0..=125 => out[1] = mask_bit | len as u8,
            len @ 126..=0xffff => {
                out[1] = mask_bit | 126;
                out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                n = 4;
            }
            len => {
                out[1] = mask_bit | 127;
                out[2..10].copy_from_slice(&len.to_be_bytes());
                n = 10;
            }
        }
        if let Some(key) = self.mask {
            out[n..n + 4].copy_from_slice(&key);
            n += 4;
        }
        (out, n)
    }
}

/// XORs `bytes` with `key`, the first byte being byte `offset` of the payload (its own inverse).
pub fn apply_mask(bytes: &mut [u8], key: [u8; 4], offset: u64) {
    for (i, b) in bytes.iter_mut().enumerate() {
        *b ^= key[((offset as usize).wrapping_add(i)) & 3];
    }
}

/// A whole unfragmented frame: masked with `mask` (client to server) or not (server to client).
pub fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let header = Header { fin: true, rsv: 0, opcode, mask, payload_len: payload.len() as u64, len: 0 };
    let (head, n) = header.encode();
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&head[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key, 0);
    }
    out
}

/// A close frame: the status code and a reason (cut to fit the 125-byte control payload, at a
/// character boundary so it stays UTF-8 as RFC 6455 requires).
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD as usize - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(CLOSE, &payload, mask)
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    fn parsed(bytes: &[u8]) -> Header {
        match Header::parse(bytes) {
            Parsed::Header(h) => h,
            Parsed::Need(n) => panic!("needs {n} bytes: {bytes:?}"),
        }
    }

    #[test]
    fn the_rfc_examples_parse() {
        // RFC 6455 §5.7: an unmasked "Hello", a masked "Hello", a 256-byte and a 64 KiB binary frame.
        let h = parsed(&[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!((h.fin, h.opcode, h.mask, h.payload_len, h.len), (true, TEXT, None, 5, 2));
        let h = parsed(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
        assert_eq!((h.mask, h.payload_len, h.len), (Some([0x37, 0xfa, 0x21, 0x3d]), 5, 6));
        let mut hello = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut hello, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&hello, b"Hello");
        assert_eq!(parsed(&[0x82, 0x7e, 0x01, 0x00]).payload_len, 256);
        assert_eq!(parsed(&[0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]).payload_len, 65536);
        // A fragmented text: first frame without FIN, then a continuation with it.
        let (a, b) = (parsed(&[0x01, 0x03]), parsed(&[0x80, 0x02]));
        assert_eq!((a.fin, a.opcode, b.fin, b.opcode), (false, TEXT, true, CONTINUATION));
    }

    #[test]
    fn short_input_says_how_much_it_needs() {
        assert_eq!(Header::parse(&[]), Parsed::Need(2));
        assert_eq!(Header::parse(&[0x81]), Parsed::Need(2));
        assert_eq!(Header::parse(&[0x81, 0xfe, 0x01]), Parsed::Need(8));
        assert_eq!(Header::parse(&[0x82, 0x7f, 0, 0]), Parsed::Need(10));
        assert_eq!(Header::parse(&[0x82, 0xff, 0, 0, 0, 0, 0, 0, 0, 9, 1, 2]), Parsed::Need(14));
    }

    #[test]
    fn a_huge_claimed_length_is_only_a_number() {
        let h = parsed(&[0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4]);
        assert_eq!(h.payload_len, MAX_PAYLOAD);
        assert_eq!(h.frame_len(), MAX_PAYLOAD + 14);
        assert!(h.has_valid_length());
    }

    #[test]
    fn a_length_with_its_top_bit_set_is_parsed_and_invalid() {
        for (b1, lead) in [(0x7f, 0x80), (0xff, 0x80), (0x7f, 0xff)] {
            let mut bytes = vec![0x82, b1, lead, 0, 0, 0, 0, 0, 0, 0];
            bytes.extend_from_slice(&[1, 2, 3, 4][..usize::from(b1 >> 7) * 4]);
            let h = parsed(&bytes);
            assert_eq!(h.payload_len >> 56, u64::from(lead));
            assert!(!h.has_valid_length(), "{bytes:?}");
        }
        // The shorter forms cannot reach the top bit.
        assert!(parsed(&[0x82, 0x7e, 0xff, 0xff]).has_valid_length());
    }

    #[test]
    fn control_frames_are_valid_only_small_and_whole() {
        assert!(parsed(&[0x89, 0x00]).is_valid_control());
        assert!(parsed(&[0x8a, 0x7d]).is_valid_control());
        assert!(!parsed(&[0x89, 0x7e, 0x00, 0x7e]).is_valid_control(), "126 bytes");
        assert!(!parsed(&[0x09, 0x00]).is_valid_control(), "fragmented");
        let reserved = parsed(&[0x8b, 0x00]);
        assert!(reserved.is_control() && !reserved.is_valid_control());
    }

    #[test]
    fn close_reasons_are_cut_to_fit_at_a_character() {
        let f = close_frame(POLICY_VIOLATION, &"é".repeat(100), None);
        let h = parsed(&f);
        assert_eq!((h.opcode, h.payload_len), (CLOSE, 124));
        assert_eq!(&f[2..4], &1008u16.to_be_bytes());
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }
}
