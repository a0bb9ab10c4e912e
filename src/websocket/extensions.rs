//! `Sec-WebSocket-Extensions` as the server accepted it in its 101: whether messages may be
//! compressed (permessage-deflate, RFC 7692), whether the client keeps its compression context
//! from message to message, and how to tell the client not to.
//!
//! With context takeover a compressed message may refer back to bytes of earlier messages, so
//! the server cannot read a message sent after one sluice removed. A server's
//! `client_no_context_takeover` in its response obliges the client to compress every message on
//! its own (RFC 7692 §7.1.1.2); the server still inflates them as before, since they refer to
//! nothing earlier. Messages the server sends are not affected.

use super::MayDrop;

/// What the accepted extensions mean for dropping messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Accepted {
    pub deflate: bool,
    pub client_no_context_takeover: bool,
    /// An extension other than permessage-deflate: its use of the frame bits is unknown.
    pub other: bool,
}

/// Splits on `sep` outside double quotes.
fn split(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn is_deflate(element: &str) -> bool {
    split(element, ';').first().is_some_and(|name| name.trim().eq_ignore_ascii_case("permessage-deflate"))
}

fn has_param(element: &str, param: &str) -> bool {
    split(element, ';').iter().skip(1).any(|p| p.split('=').next().is_some_and(|n| n.trim().eq_ignore_ascii_case(param)))
}

/// Reads the response's extensions (all `Sec-WebSocket-Extensions` values joined by commas).
pub fn accepted(value: &str) -> Accepted {
    let mut a = Accepted::default();
    for element in split(value, ',').into_iter().filter(|e| !e.trim().is_empty()) {
        if is_deflate(element) {
            a.deflate = true;
            a.client_no_context_takeover |= has_param(element, "client_no_context_takeover");
        } else {
            a.other = true;
        }
    }
    a
}

/// `value` with `client_no_context_takeover` added to its permessage-deflate, or `None` when
/// there is no permessage-deflate or it already has the parameter.
pub fn without_client_context_takeover(value: &str) -> Option<String> {
    let elements = split(value, ',');
    let mut changed = false;
    let out: Vec<String> = elements
        .iter()
        .map(|e| {
            if is_deflate(e) && !has_param(e, "client_no_context_takeover") && !changed {
                changed = true;
                format!("{}; client_no_context_takeover", e.trim())
            } else {
                e.trim().to_string()
            }
        })
        .collect();
    changed.then(|| out.join(", "))
}

/// What a connection may drop once the server's 101 is in, from its `Sec-WebSocket-Extensions`
/// fields (`None` when Envoy would not hand the headers over), and the value to give the one
/// field so the client compresses each message on its own, when a rule is `enforced` and that
/// is what allows dropping. A client reads every field as one list (RFC 9110 §5.3); a value
/// can be put in place of one field only, so with more than one nothing is rewritten.
pub fn after_upgrade(fields: Option<&[&[u8]]>, enforced: bool) -> (MayDrop, Option<String>) {
    // What the client will decode is unknown: a message over the limit closes, never drops.
    let Some(fields) = fields else { return (MayDrop::Nothing, None) };
    if fields.is_empty() {
        return (MayDrop::All, None);
    }
    let value = String::from_utf8_lossy(&fields.join(&b", "[..])).into_owned();
    let a = accepted(&value);
    if a.other {
        (MayDrop::Nothing, None)
    } else if !a.deflate || a.client_no_context_takeover {
        (MayDrop::All, None)
    } else if enforced && fields.len() == 1 {
        match without_client_context_takeover(&value) {
            Some(v) => (MayDrop::All, Some(v)),
            None => (MayDrop::Uncompressed, None),
        }
    } else {
        (MayDrop::Uncompressed, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_of_the_101_counts() {
        let deflate: &[u8] = b"permessage-deflate";
        assert_eq!(after_upgrade(None, true), (MayDrop::Nothing, None), "headers unknown");
        assert_eq!(after_upgrade(Some(&[]), true), (MayDrop::All, None));
        assert_eq!(
            after_upgrade(Some(&[deflate]), true),
            (MayDrop::All, Some("permessage-deflate; client_no_context_takeover".to_string()))
        );
        assert_eq!(after_upgrade(Some(&[deflate]), false), (MayDrop::Uncompressed, None), "shadow rules change nothing");
        // A second field is read by the client too.
        assert_eq!(after_upgrade(Some(&[deflate, b"x-foo"]), true), (MayDrop::Nothing, None));
        assert_eq!(after_upgrade(Some(&[b"x-foo", deflate]), true), (MayDrop::Nothing, None));
        assert_eq!(
            after_upgrade(Some(&[deflate, b"permessage-deflate; server_max_window_bits=10"]), true),
            (MayDrop::Uncompressed, None),
            "only one field can be rewritten"
        );
        assert_eq!(after_upgrade(Some(&[b"permessage-deflate; client_no_context_takeover"]), true), (MayDrop::All, None));
    }

    #[test]
    fn reads_what_servers_answer() {
        assert_eq!(accepted(""), Accepted::default());
        let a = accepted("permessage-deflate; server_max_window_bits=12");
        assert!(a.deflate && !a.client_no_context_takeover && !a.other);
        assert!(accepted("Permessage-Deflate;Client_No_Context_Takeover").client_no_context_takeover);
        let a = accepted("x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=\"10\"");
        assert!(a.deflate && a.other);
    }

    #[test]
    fn adds_the_parameter_once_and_keeps_the_rest() {
        assert_eq!(
            without_client_context_takeover("permessage-deflate; server_max_window_bits=12").as_deref(),
            Some("permessage-deflate; server_max_window_bits=12; client_no_context_takeover")
        );
        assert_eq!(without_client_context_takeover("permessage-deflate; client_no_context_takeover"), None);
        assert_eq!(without_client_context_takeover("x-foo"), None);
        assert_eq!(
            without_client_context_takeover("x-foo; a=\"b,c\", permessage-deflate").as_deref(),
            Some("x-foo; a=\"b,c\", permessage-deflate; client_no_context_takeover")
        );
    }
}
