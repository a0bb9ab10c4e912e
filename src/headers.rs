//! Header maps in the proxy-wasm pairs encoding: request headers as the host hands them over
//! all at once, and the headers of a response the filter sends. Values stay bytes: HTTP lets a
//! value carry any byte above 0x7f and Envoy passes them on.

/// A header map in the proxy-wasm encoding, checked once and then read in place: the pair
/// count (u32, little-endian), the name and value length of every pair (u32 each), then every
/// name and value, each followed by a NUL byte. Nothing is copied per header: a request asks
/// for a few of them, and Envoy hands over all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pairs {
    bytes: Vec<u8>,
    count: usize,
}

impl Pairs {
    /// `None` if the bytes do not follow the encoding (no bytes at all is an empty map).
    pub fn parse(bytes: Vec<u8>) -> Option<Pairs> {
        let count = if bytes.is_empty() { 0 } else { u32_at(&bytes, 0)? as usize };
        let pairs = Pairs { bytes, count };
        pairs.walk(|_, _| false)?;
        Some(pairs)
    }

    /// The first value of header `name` (names are tokens, which Envoy keeps to; one that is
    /// not UTF-8 anyway equals no configured name).
    pub fn first(&self, name: &str) -> Option<&[u8]> {
        let mut found = None;
        self.walk(|k, v| {
            let hit = k == name.as_bytes();
            if hit {
                found = Some(v);
            }
            hit
        })?;
        found
    }

    /// Every value of header `name`, in order, joined by `sep`; `None` when there is none.
    pub fn joined(&self, name: &str, sep: &[u8]) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        let _ = self.walk(|k, v| {
            if k == name.as_bytes() {
                match &mut out {
                    Some(o) => {
                        o.extend_from_slice(sep);
                        o.extend_from_slice(v);
                    }
                    None => out = Some(v.to_vec()),
                }
            }
            false
        });
        out
    }

    /// Every pair in order, as (name, value) bytes.
    pub fn to_vec(&self) -> Vec<(&[u8], &[u8])> {
        let mut out = Vec::with_capacity(self.count);
        // Checked when parsed: the walk completes.
        let _ = self.walk(|k, v| {
            out.push((k, v));
            false
        });
        out
    }

    /// Visits the pairs in order until `visit` says stop; `None` if they run past the bytes.
    fn walk<'a>(&'a self, mut visit: impl FnMut(&'a [u8], &'a [u8]) -> bool) -> Option<()> {
        let bytes = &self.bytes;
        if bytes.is_empty() {
            return Some(());
        }
        let mut data = 4usize.checked_add(self.count.checked_mul(8)?)?;
        if data > bytes.len() {
            return None;
        }
        for i in 0..self.count {
            let name_len = u32_at(bytes, 4 + i * 8)? as usize;
            let value_len = u32_at(bytes, 8 + i * 8)? as usize;
            let name = bytes.get(data..data.checked_add(name_len)?)?;
            data = data.checked_add(name_len + 1)?;
            let value = bytes.get(data..data.checked_add(value_len)?)?;
            data = data.checked_add(value_len + 1)?;
            if data > bytes.len() {
                return None;
            }
            if visit(name, value) {
                return Some(());
            }
        }
        Some(())
    }
}

/// `pairs` in the encoding [`Pairs`] reads, written into one buffer sized up front.
pub fn encode<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let (count, data) = pairs.clone().fold((0usize, 0usize), |(n, len), (k, v)| (n + 1, len + k.len() + v.len() + 2));
    let mut out = Vec::with_capacity(4 + count * 8 + data);
    // Lengths are of header names and values Envoy accepted, far below 4 GiB.
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

fn u32_at(bytes: &[u8], i: usize) -> Option<u32> {
    bytes.get(i..i.checked_add(4)?).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_decode_in_order_and_malformed_input_is_refused() {
        let written: [(&[u8], &[u8]); 4] = [(b":path", b"/a?b"), (b"x-key", b""), (b"x-bin", b"\xff"), (b"x-key", b"second")];
        let bytes = encode(written.iter().copied());
        assert_eq!(bytes.len(), 4 + 4 * 8 + written.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>());
        assert_eq!(encode(std::iter::empty()), 0u32.to_le_bytes(), "no pairs: a count of 0");
        let pairs = Pairs::parse(bytes.clone()).unwrap_or_else(|| panic!("well-formed"));
        assert_eq!(pairs.to_vec(), written);
        assert_eq!(pairs.first("x-key"), Some(&b""[..]), "the first of a repeated name");
        assert_eq!(pairs.first("x-bin"), Some(&b"\xff"[..]));
        assert_eq!(pairs.first("x-none"), None);
        assert_eq!(Pairs::parse(Vec::new()).map(|p| p.to_vec().len()), Some(0));
        for cut in 1..bytes.len() {
            assert_eq!(Pairs::parse(bytes[..cut].to_vec()), None, "truncated at {cut}");
        }
        // A count far beyond the bytes given is refused without allocating for it.
        assert_eq!(Pairs::parse(u32::MAX.to_le_bytes().to_vec()), None);
    }
}
