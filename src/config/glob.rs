//! Path globs (`/api/**`, `/users/*/orders`, `/static/*.json`): parsing and matching.
//!
//! Rules, all decided here:
//! - A glob starts with `/`; segments are separated by `/`.
//! - `**` as a whole segment matches zero or more segments; `**` anywhere else (`***`, `**x`,
//!   `a**`) is rejected. Consecutive `**` segments are merged (they mean the same).
//! - `*` inside a segment matches any run of characters other than `/`; a segment pattern never
//!   matches an empty segment, so `/a/*` does not match `/a//b`-style empty parts.
//! - One trailing `/` is insignificant on both sides: `/api/` is the glob `/api`, and the path
//!   `/api/` is matched as `/api`. Empty segments elsewhere (`/a//b`, `//`) are rejected in globs.
//! - `?` and `#` are rejected in globs: query strings are never matched. `matches` ignores
//!   anything from the first `?` or `#` of the path as a safety net (callers strip it already).
//! - Globs and paths are compared decoded ([`decode_path`]): applications route on the decoded
//!   path, and Envoy's `normalize_path` decodes only unreserved characters, so `/users%3Asearch`
//!   reaches the handler of `/users:search` and must meet its rule; `/`, `?`, `#` and `*` stay
//!   escaped on both sides (they give a path, or a glob, its structure). Otherwise matching is
//!   case-sensitive and byte-exact; a path that does not start with `/` (such as `*` in
//!   `OPTIONS *`) matches no glob.
//!
//! Matching never backtracks more than one `**` at a time (the classic "last star" method,
//! applied once to segments and once to characters within a segment), so it is
//! O(pattern × path) in the worst case and allocation-free.
//!
//! ```
//! use sluice::config::Glob;
//! let g = Glob::parse("/api/**/edit").unwrap();
//! assert!(g.matches("/api/edit") && g.matches("/api/a/b/edit") && !g.matches("/api/a/b"));
//! ```

use std::borrow::Cow;

use super::{Glob, GlobSegment, Literal};
use crate::identity::hex_escape;
use crate::rate::quote;

/// `path` with its percent-escapes decoded, but for those of `/`, `?`, `#` and `*`, which stay
/// escaped with upper-case hex (`%2f` is `%2F`): decoded, they would change where a path's
/// segments end (Envoy's `path_with_escaped_slashes_action` decides about `%2F`), or make a
/// glob's literal a wildcard. Borrowed when there is nothing to change.
pub fn decode_path(path: &[u8]) -> Cow<'_, [u8]> {
    if !path.contains(&b'%') {
        return Cow::Borrowed(path);
    }
    let mut out = Vec::with_capacity(path.len());
    let mut rest = path;
    while let Some((&b, tail)) = rest.split_first() {
        match (b == b'%').then(|| hex_escape(tail)).flatten() {
            Some((byte @ (b'/' | b'?' | b'#' | b'*'), after)) => {
                out.push(b'%');
                out.extend_from_slice(format!("{byte:02X}").as_bytes());
                rest = after;
            }
            Some((byte, after)) => {
                out.push(byte);
                rest = after;
            }
            None => {
                out.push(b);
                rest = tail;
            }
        }
    }
    Cow::Owned(out)
}

/// A glob that does not parse: the text as given and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {kind}", quote(text))]
pub struct GlobError {
    pub text: String,
    pub kind: GlobErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobErrorKind {
    #[error("empty path glob; expected a glob starting with \"/\" such as \"/api/**\"")]
    Empty,
    #[error("path glob must start with \"/\"; expected e.g. \"/{0}\"")]
    NoLeadingSlash(String),
    #[error("empty segment (\"//\") in path glob; expected segments separated by single \"/\"")]
    EmptySegment,
    #[error("{} in segment {}: \"**\" must be a whole segment (as in \"/a/**/b\"); use \"*\" within a segment", quote(.0), quote(.0))]
    DoubleStarInSegment(String),
    #[error("path globs never see the query string or fragment; remove everything from {0:?}")]
    QueryOrFragment(char),
    #[error("path glob has a control character; expected printable characters")]
    ControlCharacter,
    #[error("a \"%\" in a path glob begins an escape; expected two hex digits after it (%25 for a percent sign)")]
    StrayPercent,
    #[error("the path glob's escapes decode to bytes that are not UTF-8 text; expected whole characters (%C3%A9 for é)")]
    NotUtf8,
}

impl Glob {
    /// Parses a path glob; see the module docs for the rules.
    pub fn parse(text: &str) -> Result<Glob, GlobError> {
        let err = |kind| GlobError { text: text.to_string(), kind };
        if text.is_empty() {
            return Err(err(GlobErrorKind::Empty));
        }
        if text.chars().any(char::is_control) {
            return Err(err(GlobErrorKind::ControlCharacter));
        }
        if let Some(c) = text.chars().find(|c| matches!(c, '?' | '#')) {
            return Err(err(GlobErrorKind::QueryOrFragment(c)));
        }
        let Some(_) = text.strip_prefix('/') else {
            return Err(err(GlobErrorKind::NoLeadingSlash(text.to_string())));
        };
        // Compared decoded, as paths are: so every `%` must begin an escape (a stray one would
        // match a path that spells it only until the path is decoded), and the escapes must
        // make whole characters.
        let escapes_ok = text.match_indices('%').all(|(i, _)| text.as_bytes().get(i + 1..).and_then(hex_escape).is_some());
        if !escapes_ok {
            return Err(err(GlobErrorKind::StrayPercent));
        }
        let Ok(decoded) = String::from_utf8(decode_path(text.as_bytes()).into_owned()) else {
            return Err(err(GlobErrorKind::NotUtf8));
        };
        let rest = decoded.strip_prefix('/').unwrap_or(&decoded);
        let mut segments = Vec::new();
        if !rest.is_empty() {
            let rest = if rest.len() > 1 { rest.strip_suffix('/').unwrap_or(rest) } else { rest };
            for seg in rest.split('/') {
                if seg.is_empty() {
                    return Err(err(GlobErrorKind::EmptySegment));
                }
                if seg == "**" {
                    if segments.last() != Some(&GlobSegment::AnySegments) {
                        segments.push(GlobSegment::AnySegments);
                    }
                } else if seg.contains("**") {
                    return Err(err(GlobErrorKind::DoubleStarInSegment(seg.to_string())));
                } else {
                    segments.push(GlobSegment::Pattern(seg.to_string()));
                }
            }
        }
        let literal = literal(&segments);
        Ok(Glob { source: text.to_string(), segments, literal })
    }

    /// Whether `path` (the URL path; anything from `?` or `#` is ignored) matches.
    pub fn matches(&self, path: &str) -> bool {
        // By byte: `?` and `#` are ASCII, so the cut falls between characters.
        let end = path.bytes().position(|b| b == b'?' || b == b'#').unwrap_or(path.len());
        let path = path.get(..end).unwrap_or(path);
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        match &self.literal {
            // Most globs are a path or a path and everything under it: two comparisons.
            Some(Literal { text, prefix }) => match rest.strip_prefix(text.as_str()) {
                Some("") => true,
                Some(after) => *prefix && (text.is_empty() || after.starts_with('/')),
                None => false,
            },
            None => match_segments(&self.segments, rest),
        }
    }
}

/// The glob as text to compare, if it has no `*` and `**` only at its end.
fn literal(segments: &[GlobSegment]) -> Option<Literal> {
    let (prefix, fixed) = match segments.split_last() {
        Some((GlobSegment::AnySegments, fixed)) => (true, fixed),
        _ => (false, segments),
    };
    let mut text = String::new();
    for (i, segment) in fixed.iter().enumerate() {
        match segment {
            GlobSegment::Pattern(p) if !p.contains('*') => {
                if i > 0 {
                    text.push('/');
                }
                text.push_str(p);
            }
            _ => return None,
        }
    }
    Some(Literal { text, prefix })
}

impl std::fmt::Display for Glob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

/// The segment starting at byte `pos` of `rest` and where the next one starts (`None` = none).
fn segment_at(rest: &str, pos: usize) -> (&str, Option<usize>) {
    let tail = rest.get(pos..).unwrap_or("");
    match tail.find('/') {
        Some(i) => (&tail[..i], Some(pos + i + 1)),
        None => (tail, None),
    }
}

/// Matches the segment patterns against `rest` (the path without its leading and trailing `/`).
///
/// Each `Pattern` consumes exactly one path segment, so remembering only the most recent `**`
/// is enough: if a later mismatch can be fixed by any earlier `**` swallowing more, it can be
/// fixed by the latest one swallowing more, as everything between them matched fixed-width.
fn match_segments(pattern: &[GlobSegment], rest: &str) -> bool {
    let start = if rest.is_empty() { None } else { Some(0) };
    let mut pi = 0;
    let mut cur = start;
    // (pattern index after the `**`, path cursor where it resumes if it swallows one more)
    let mut star: Option<(usize, Option<usize>)> = None;
    loop {
        match pattern.get(pi) {
            Some(GlobSegment::AnySegments) => {
                star = Some((pi + 1, cur));
                pi += 1;
                continue;
            }
            Some(GlobSegment::Pattern(p)) => {
                if let Some(pos) = cur {
                    let (seg, next) = segment_at(rest, pos);
                    if match_segment(p.as_bytes(), seg.as_bytes()) {
                        pi += 1;
                        cur = next;
                        continue;
                    }
                }
            }
            None if cur.is_none() => return true,
            None => {}
        }
        match star {
            Some((after_star, Some(resume))) => {
                let (_, next) = segment_at(rest, resume);
                star = Some((after_star, next));
                pi = after_star;
                cur = next;
            }
            _ => return false,
        }
    }
}

/// Matches one segment against a pattern whose `*` matches any run of bytes (the segment has
/// no `/`). A pattern never matches an empty segment.
fn match_segment(p: &[u8], s: &[u8]) -> bool {
    if s.is_empty() {
        return false;
    }
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi + 1, si));
                pi += 1;
            }
            Some(&c) if c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((after, from)) => {
                    star = Some((after, from + 1));
                    pi = after;
                    si = from + 1;
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn g(text: &str) -> Glob {
        Glob::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[rustfmt::skip]
    const TABLE: &[(&str, &str, bool)] = &[
        ("/",                 "/",                 true),
        ("/",                 "/a",                false),
        ("/api",              "/api",              true),
        ("/api",              "/api/",             true),
        ("/api/",             "/api",              true),
        ("/api",              "/apix",             false),
        ("/api",              "/api/x",            false),
        ("/api/*",            "/api/x",            true),
        ("/api/*",            "/api",              false),
        ("/api/*",            "/api/",             false),
        ("/api/*",            "/api/x/y",          false),
        ("/api/**",           "/api",              true),
        ("/api/**",           "/api/",             true),
        ("/api/**",           "/api/x",            true),
        ("/api/**",           "/api/x/y",          true),
        ("/api/**",           "/apix",             false),
        ("/api/**",           "/",                 false),
        ("/**",               "/",                 true),
        ("/**",               "/a/b/c",            true),
        ("/**",               "",                  false),
        ("/**",               "*",                 false),
        ("/api/**/edit",      "/api/edit",         true),
        ("/api/**/edit",      "/api/a/edit",       true),
        ("/api/**/edit",      "/api/a/b/c/edit",   true),
        ("/api/**/edit",      "/api/a/b/c/edit/x", false),
        ("/api/**/edit",      "/api/a/b/c",        false),
        ("/**/edit",          "/edit",             true),
        ("/**/edit",          "/x/edit/edit",      true),
        ("/**/a/**/b",        "/a/b",              true),
        ("/**/a/**/b",        "/x/a/y/z/b",        true),
        ("/**/a/**/b",        "/x/b/y/a",          false),
        ("/users/*/orders",   "/users/42/orders",  true),
        ("/users/*/orders",   "/users/orders",     false),
        ("/users/*/orders",   "/users/4/2/orders", false),
        ("/static/*.json",    "/static/a.json",    true),
        ("/static/*.json",    "/static/.json",     true),
        ("/static/*.json",    "/static/a.jsonx",   false),
        ("/static/*.json",    "/static/a/b.json",  false),
        ("/v*/items",         "/v1/items",         true),
        ("/v*/items",         "/v/items",          true),
        ("/v*/items",         "/x1/items",         false),
        ("/a*b*c",            "/abc",              true),
        ("/a*b*c",            "/aXXbYYc",          true),
        ("/a*b*c",            "/aXXbYY",           false),
        ("/a*b*c",            "/acb",              false),
        ("/api/x",            "/api/x?y=1",        true),
        ("/api/x",            "/api/x#frag",       true),
        ("/api/*",            "/api/?q",           false),
        ("/API",              "/api",              false),
        ("/café/*",           "/café/x",           true),
        ("/a/**/**/b",        "/a/b",              true),
        ("/a/**",             "/a//",              true),
        ("/a/*/b",            "/a//b",             false),
        ("/a/**/b",           "/a//b",             true),
        ("/a",                "a",                 false),
    ];

    #[test]
    fn match_table() {
        for &(glob, path, want) in TABLE {
            assert_eq!(g(glob).matches(path), want, "{glob} vs {path}");
        }
    }

    /// Globs and request paths meet decoded: a client's escape of a character an application
    /// decodes does not pass the rule, and a glob may be written either way.
    #[test]
    fn globs_and_paths_are_compared_decoded() {
        let on = |glob: &str, raw_path: &str| g(glob).matches(&String::from_utf8_lossy(&decode_path(raw_path.as_bytes())));
        for path in ["/v1/users:search", "/v1/users%3Asearch", "/v1/users%3asearch"] {
            assert!(on("/v1/users:search", path) && on("/v1/users%3Asearch", path), "{path}");
        }
        for path in ["/caf%C3%A9/x", "/caf%c3%a9/x"] {
            assert!(on("/café/*", path) && on("/caf%C3%A9/*", path), "{path}");
        }
        assert!(on("/@me/**", "/%40me/x"));
        // `/`, `?`, `#` and `*` keep their escapes (in either case of hex) on both sides.
        assert!(on("/a%2Fb", "/a%2fb") && !on("/a%2Fb", "/a/b") && !on("/a/b", "/a%2Fb"));
        assert!(!on("/a/*", "/a%2Fb/c"));
        assert!(on("/a%3Fb", "/a%3fb") && !on("/a", "/a%3Fb"));
        assert!(on("/a%2Ab", "/a%2ab") && !on("/a%2Ab", "/axyzb"), "an escaped star is no wildcard");
        // One pass: an escaped `%` starts no escape.
        assert_eq!(decode_path(b"/a%2541"), Cow::<[u8]>::Owned(b"/a%41".to_vec()));
        assert_eq!(decode_path(b"/a%zz%4"), Cow::Borrowed(&b"/a%zz%4"[..]));
        assert!(matches!(decode_path(b"/plain"), Cow::Borrowed(_)));
        // A glob is compared decoded, so each `%` must begin an escape, and the escapes must
        // make whole characters; an escaped control character is a character like another.
        for (glob, kind) in [
            ("/a%4*", GlobErrorKind::StrayPercent),
            ("/**/*%*", GlobErrorKind::StrayPercent),
            ("/caf%C3*", GlobErrorKind::NotUtf8),
        ] {
            assert_eq!(Glob::parse(glob).expect_err(glob).kind, kind, "{glob}");
        }
        assert!(on("/x%0A", "/x%0a"));
    }

    #[test]
    fn consecutive_double_stars_are_merged() {
        assert_eq!(g("/a/**/**/**").segments, g("/a/**").segments);
        assert_eq!(g("/a/**/**/**").source, "/a/**/**/**");
    }

    #[test]
    fn bad_globs() {
        for (text, want) in [
            ("", GlobErrorKind::Empty),
            ("api/**", GlobErrorKind::NoLeadingSlash("api/**".into())),
            ("*", GlobErrorKind::NoLeadingSlash("*".into())),
            ("//", GlobErrorKind::EmptySegment),
            ("/a//b", GlobErrorKind::EmptySegment),
            ("/a//", GlobErrorKind::EmptySegment),
            ("/***", GlobErrorKind::DoubleStarInSegment("***".into())),
            ("/a/**x", GlobErrorKind::DoubleStarInSegment("**x".into())),
            ("/a/x**", GlobErrorKind::DoubleStarInSegment("x**".into())),
            ("/a?b=1", GlobErrorKind::QueryOrFragment('?')),
            ("/a#b", GlobErrorKind::QueryOrFragment('#')),
            ("/a\nb", GlobErrorKind::ControlCharacter),
        ] {
            let err = Glob::parse(text).expect_err(text);
            assert_eq!(err.kind, want, "{text}");
            assert!(err.to_string().starts_with(&quote(text)));
        }
    }

    /// Patterns that make naive recursive matchers exponential. Each must finish instantly;
    /// a regression would hang this test rather than pass.
    #[test]
    fn pathological_patterns_stay_polynomial() {
        let deep = format!("/{}", vec!["a"; 2000].join("/"));
        let many_stars = format!("/{}b", "**/a/".repeat(40));
        assert!(!g(&many_stars).matches(&deep));
        let many_stars_ok = format!("/{}a", "**/a/".repeat(40));
        assert!(g(&many_stars_ok).matches(&deep));
        assert!(!g("/**/**/**/**/**/**/**/**/z").matches(&deep));

        let long_segment = format!("/{}", "a".repeat(5000));
        let star_pattern = format!("/{}b", "*a".repeat(60));
        assert!(!g(&star_pattern).matches(&long_segment));
        let star_pattern_ok = format!("/{}", "*a".repeat(60));
        assert!(g(&star_pattern_ok).matches(&long_segment));
    }

    #[test]
    fn display_is_the_source() {
        assert_eq!(g("/api/").to_string(), "/api/");
    }

    #[test]
    fn plain_globs_are_compared_as_text() {
        for (glob, text, prefix) in [("/", "", false), ("/**", "", true), ("/api/v1/**", "api/v1", true), ("/a/b/", "a/b", false)]
        {
            assert_eq!(g(glob).literal, Some(Literal { text: text.into(), prefix }), "{glob}");
        }
        for glob in ["/api/*", "/a/**/b", "/**/a", "/x*/**"] {
            assert_eq!(g(glob).literal, None, "{glob}");
        }
    }

    proptest::proptest! {
        /// The text comparison of a plain glob answers as the segment matcher does.
        #[test]
        fn plain_globs_match_as_the_segment_matcher_does(
            glob in proptest::collection::vec(proptest::sample::select(vec!["a", "b", "ab", "**", "*"]), 0..4),
            path in proptest::collection::vec(proptest::sample::select(vec!["a", "b", "ab", "", "a?x"]), 0..5),
            trailing in proptest::bool::ANY,
        ) {
            let Ok(glob) = Glob::parse(&format!("/{}", glob.join("/"))) else { return Ok(()) };
            let path = format!("/{}{}", path.join("/"), if trailing { "/" } else { "" });
            let general = Glob { literal: None, ..glob.clone() };
            proptest::prop_assert_eq!(glob.matches(&path), general.matches(&path), "{} on {}", glob, path);
        }
    }
}
