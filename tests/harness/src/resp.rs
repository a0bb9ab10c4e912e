//! Just enough RESP (Redis' wire format) to read a guest's command, build replies, and find where
//! a real server's reply ends.

/// Encodes a command as a RESP array of bulk strings.
pub fn encode_command(words: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        out.extend_from_slice(format!("${}\r\n", w.len()).as_bytes());
        out.extend_from_slice(w.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

pub fn simple(s: &str) -> Vec<u8> {
    format!("+{s}\r\n").into_bytes()
}

pub fn error(s: &str) -> Vec<u8> {
    format!("-{s}\r\n").into_bytes()
}

pub fn integer(i: i64) -> Vec<u8> {
    format!(":{i}\r\n").into_bytes()
}

pub fn bulk(b: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", b.len()).into_bytes();
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
    out
}

pub fn nil() -> Vec<u8> {
    b"$-1\r\n".to_vec()
}

pub fn array(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", items.len()).into_bytes();
    for i in items {
        out.extend_from_slice(i);
    }
    out
}

fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], at + end + 2))
}

fn number(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Length of the first complete RESP value in `buf`, or `None` if it is incomplete.
pub fn complete_len(buf: &[u8]) -> Option<usize> {
    value_end(buf, 0)
}

fn value_end(buf: &[u8], at: usize) -> Option<usize> {
    let kind = *buf.get(at)?;
    let (head, next) = line(buf, at + 1)?;
    match kind {
        b'+' | b'-' | b':' | b',' | b'#' | b'_' => Some(next),
        b'$' | b'=' | b'!' => {
            let n = number(head)?;
            if n < 0 {
                return Some(next);
            }
            let end = next + n as usize + 2;
            (buf.len() >= end).then_some(end)
        }
        b'*' | b'~' | b'>' | b'%' => {
            let n = number(head)?;
            let items = if kind == b'%' { n * 2 } else { n };
            let mut pos = next;
            for _ in 0..items.max(0) {
                pos = value_end(buf, pos)?;
            }
            Some(pos)
        }
        _ => None,
    }
}

/// The words of a command sent as a RESP array of bulk strings.
pub fn parse_command(buf: &[u8]) -> Option<Vec<String>> {
    if buf.first() != Some(&b'*') {
        return None;
    }
    let (head, mut pos) = line(buf, 1)?;
    let n = number(head)?;
    let mut words = Vec::new();
    for _ in 0..n {
        if buf.get(pos) != Some(&b'$') {
            return None;
        }
        let (len, next) = line(buf, pos + 1)?;
        let len = number(len)? as usize;
        let word = buf.get(next..next + len)?;
        words.push(String::from_utf8_lossy(word).into_owned());
        pos = next + len + 2;
    }
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        let q = encode_command(&["EVALSHA", "abc", "1", "k"]);
        assert_eq!(parse_command(&q).unwrap(), vec!["EVALSHA", "abc", "1", "k"]);
        assert_eq!(complete_len(&q), Some(q.len()));
        assert_eq!(complete_len(&q[..q.len() - 1]), None);
    }

    #[test]
    fn nested_replies_are_measured() {
        let r = array(&[integer(1), bulk(b"x"), nil(), array(&[simple("OK")])]);
        assert_eq!(complete_len(&r), Some(r.len()));
        let mut two = r.clone();
        two.extend_from_slice(&error("ERR x"));
        assert_eq!(complete_len(&two), Some(r.len()));
    }
}
