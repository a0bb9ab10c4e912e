//! Request headers as the host hands them over all at once, in the proxy-wasm pairs encoding.
//! Values stay bytes: HTTP lets a value carry any byte above 0x7f and Envoy passes them on.

/// Decodes the proxy-wasm encoding of a header map: the pair count (u32, little-endian), the
/// name and value length of every pair (u32 each), then every name and value, each followed by
/// a NUL byte. `None` if the bytes do not follow it. Names are tokens (Envoy refuses others);
/// one that is not UTF-8 anyway is read lossily and then equals no configured name.
pub fn parse_pairs(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let u32_at = |i: usize| bytes.get(i..i + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = u32_at(0)? as usize;
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    let mut pairs = Vec::with_capacity(count.min(bytes.len() / 10));
    for i in 0..count {
        let name_len = u32_at(4 + i * 8)? as usize;
        let value_len = u32_at(8 + i * 8)? as usize;
        let name = bytes.get(data..data.checked_add(name_len)?)?;
        data += name_len + 1;
        let value = bytes.get(data..data.checked_add(value_len)?)?;
        data += value_len + 1;
        pairs.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    (data <= bytes.len()).then_some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            for part in [k, v] {
                out.extend_from_slice(part);
                out.push(0);
            }
        }
        out
    }

    #[test]
    fn pairs_decode_in_order_and_malformed_input_is_refused() {
        let bytes = encode(&[(b":path", b"/a?b"), (b"x-key", b""), (b"x-bin", b"\xff"), (b"x-key", b"second")]);
        let pairs = parse_pairs(&bytes).unwrap_or_default();
        let want: [(&str, &[u8]); 4] = [(":path", b"/a?b"), ("x-key", b""), ("x-bin", b"\xff"), ("x-key", b"second")];
        assert_eq!(pairs, want.map(|(k, v)| (k.to_string(), v.to_vec())));
        assert_eq!(parse_pairs(&[]), Some(Vec::new()));
        for cut in 1..bytes.len() {
            assert_eq!(parse_pairs(&bytes[..cut]), None, "truncated at {cut}");
        }
        // A count far beyond the bytes given is refused without allocating for it.
        assert_eq!(parse_pairs(&u32::MAX.to_le_bytes()), None);
    }
}
