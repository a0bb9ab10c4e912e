//! The proxy-wasm ABI's numbers (v0.2.1, plus Higress' Redis extension) and its one wire
//! format, the serialized header map.

/// `proxy_status_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    BrokenConnection = 11,
    Unimplemented = 12,
}

impl Status {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// `proxy_log_level_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }
}

/// `proxy_map_type_t`.
pub mod map {
    pub const REQUEST_HEADERS: i32 = 0;
    pub const REQUEST_TRAILERS: i32 = 1;
    pub const RESPONSE_HEADERS: i32 = 2;
    pub const RESPONSE_TRAILERS: i32 = 3;
    pub const GRPC_INITIAL_METADATA: i32 = 4;
    pub const GRPC_TRAILING_METADATA: i32 = 5;
    pub const HTTP_CALL_RESPONSE_HEADERS: i32 = 6;
    pub const HTTP_CALL_RESPONSE_TRAILERS: i32 = 7;
}

/// `proxy_buffer_type_t`; 9 is Higress' Redis call response.
pub mod buffer {
    pub const REQUEST_BODY: i32 = 0;
    pub const RESPONSE_BODY: i32 = 1;
    pub const DOWNSTREAM_DATA: i32 = 2;
    pub const UPSTREAM_DATA: i32 = 3;
    pub const HTTP_CALL_RESPONSE_BODY: i32 = 4;
    pub const GRPC_RECEIVE: i32 = 5;
    pub const VM_CONFIGURATION: i32 = 6;
    pub const PLUGIN_CONFIGURATION: i32 = 7;
    pub const FOREIGN_FUNCTION_ARGUMENTS: i32 = 8;
    pub const REDIS_CALL_RESPONSE: i32 = 9;
}

/// `proxy_stream_type_t`.
pub mod stream {
    pub const HTTP_REQUEST: i32 = 0;
    pub const HTTP_RESPONSE: i32 = 1;
    pub const DOWNSTREAM: i32 = 2;
    pub const UPSTREAM: i32 = 3;
}

/// `proxy_action_t`.
pub mod action {
    pub const CONTINUE: i32 = 0;
    pub const PAUSE: i32 = 1;
}

/// `proxy_metric_type_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl MetricType {
    pub fn from_code(code: i32) -> Option<Self> {
        match code {
            0 => Some(MetricType::Counter),
            1 => Some(MetricType::Gauge),
            2 => Some(MetricType::Histogram),
            _ => None,
        }
    }
}

/// Header pairs as the host keeps them: names as given (the host lowercases what it receives
/// from clients, like Envoy's codecs do), values as strings.
pub type Pairs = Vec<(String, String)>;

/// Serializes pairs: count, then (key length, value length) per pair, then each key and value
/// followed by a NUL. All integers u32 little-endian.
pub fn serialize_pairs(pairs: &[(String, String)]) -> Vec<u8> {
    let mut size = 4;
    for (k, v) in pairs {
        size += 8 + k.len() + v.len() + 2;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Parses a serialized map. An empty input (or a lone count of 0) is the empty map, as the spec
/// allows. `None` means the bytes are not a well-formed map.
pub fn deserialize_pairs(bytes: &[u8]) -> Option<Pairs> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |i: usize| -> Option<usize> {
        let b = bytes.get(i..i + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if bytes.len() < 4 {
        // A single 0x00 byte also means "empty".
        return if bytes.iter().all(|b| *b == 0) { Some(Vec::new()) } else { None };
    }
    let count = u32_at(0)?;
    let mut sizes = Vec::with_capacity(count.min(1024));
    let mut pos = 4;
    for _ in 0..count {
        let k = u32_at(pos)?;
        let v = u32_at(pos + 4)?;
        sizes.push((k, v));
        pos += 8;
    }
    let mut out = Vec::with_capacity(sizes.len());
    for (k, v) in sizes {
        let key = bytes.get(pos..pos + k)?;
        if *bytes.get(pos + k)? != 0 {
            return None;
        }
        pos += k + 1;
        let value = bytes.get(pos..pos + v)?;
        if *bytes.get(pos + v)? != 0 {
            return None;
        }
        pos += v + 1;
        out.push((String::from_utf8_lossy(key).into_owned(), String::from_utf8_lossy(value).into_owned()));
    }
    Some(out)
}

/// Splits a `proxy_get_property` path: NUL-separated segments (a trailing NUL is tolerated).
pub fn property_path(bytes: &[u8]) -> Vec<String> {
    let mut parts: Vec<String> = bytes.split(|b| *b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect();
    if parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_in_the_spec_layout() {
        let pairs = vec![("a".to_string(), "1".to_string()), ("b".to_string(), "22".to_string())];
        let bytes = serialize_pairs(&pairs);
        let mut expected = vec![2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0];
        expected.extend_from_slice(b"a\x001\x00b\x0022\x00");
        assert_eq!(bytes, expected);
        assert_eq!(deserialize_pairs(&bytes), Some(pairs));
    }

    #[test]
    fn empty_maps_in_both_spellings() {
        assert_eq!(deserialize_pairs(&[]), Some(vec![]));
        assert_eq!(deserialize_pairs(&[0]), Some(vec![]));
        assert_eq!(deserialize_pairs(&[0, 0, 0, 0]), Some(vec![]));
    }

    #[test]
    fn truncated_maps_are_rejected() {
        let bytes = serialize_pairs(&[("key".into(), "value".into())]);
        assert_eq!(deserialize_pairs(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn property_paths_split_on_nul() {
        assert_eq!(property_path(b"source\0address"), vec!["source", "address"]);
        assert_eq!(property_path(b"plugin_root_id\0"), vec!["plugin_root_id"]);
    }
}
