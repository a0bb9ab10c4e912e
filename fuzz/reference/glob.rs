//! A reference for path globs, written from the rules in `src/config/glob.rs`'s docs without
//! looking at its algorithm: plain recursion over segments and bytes, memoized. Slow and
//! obviously right is the point. Shared by the `glob` fuzz target and `tests/glob_props.rs`.
//! The glob is decoded as the rules say; the path is taken as given (the filter decodes a
//! request's path before it asks `Glob::matches`).

use std::collections::HashMap;

/// Whether `text` is a glob the rules accept.
pub fn valid(text: &str) -> bool {
    if text.is_empty() || text.chars().any(|c| c.is_control() || c == '?' || c == '#') || !text.starts_with('/') {
        return false;
    }
    // Every `%` begins an escape, and the escapes make UTF-8 text.
    let b = text.as_bytes();
    if (0..b.len()).any(|i| b[i] == b'%' && !(i + 3 <= b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit())) {
        return false;
    }
    let Some(text) = decoded(text) else { return false };
    let rest = &text[1..];
    segments_of_glob(rest).iter().all(|s| !s.is_empty() && (s == "**" || !s.contains("**")))
}

/// The glob as it is compared: every `%XX` decoded, but those of `/`, `?`, `#` and `*`, which
/// stay escaped with upper-case hex; `None` when that is not UTF-8.
fn decoded(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let escape = if b[i] == b'%' && i + 3 <= b.len() { hex(b[i + 1]).zip(hex(b[i + 2])) } else { None };
        match escape {
            Some((hi, lo)) => {
                let v = (hi * 16 + lo) as u8;
                if b"/?#*".contains(&v) {
                    out.extend(format!("%{v:02X}").bytes());
                } else {
                    out.push(v);
                }
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The segments of a glob without its leading `/`: one trailing `/` is dropped, except that
/// the glob `//` keeps it (and so has an empty segment).
fn segments_of_glob(rest: &str) -> Vec<String> {
    if rest.is_empty() {
        return Vec::new();
    }
    let rest = if rest.len() > 1 { rest.strip_suffix('/').unwrap_or(rest) } else { rest };
    rest.split('/').map(str::to_string).collect()
}

/// Whether the valid glob `glob` matches `path`.
pub fn matches(glob: &str, path: &str) -> bool {
    let path = match path.find(['?', '#']) {
        Some(i) => &path[..i],
        None => path,
    };
    let Some(path) = path.strip_prefix('/') else { return false };
    let path = path.strip_suffix('/').unwrap_or(path);
    let path: Vec<&[u8]> = if path.is_empty() { Vec::new() } else { path.split('/').map(str::as_bytes).collect() };
    let glob = decoded(glob).unwrap_or_default();
    let glob = segments_of_glob(glob.strip_prefix('/').unwrap_or(&glob));
    let glob: Vec<&[u8]> = glob.iter().map(|s| s.as_bytes()).collect();
    segments(&glob, &path, 0, 0, &mut HashMap::new())
}

fn segments(glob: &[&[u8]], path: &[&[u8]], g: usize, p: usize, memo: &mut HashMap<(usize, usize), bool>) -> bool {
    if let Some(&known) = memo.get(&(g, p)) {
        return known;
    }
    let result = match glob.get(g) {
        None => p == path.len(),
        // `**`: swallow nothing, or one more whole segment.
        Some(&b"**") => segments(glob, path, g + 1, p, memo) || (p < path.len() && segments(glob, path, g, p + 1, memo)),
        Some(pattern) => p < path.len() && segment(pattern, path[p]) && segments(glob, path, g + 1, p + 1, memo),
    };
    memo.insert((g, p), result);
    result
}

/// One segment: `*` is any run of bytes; nothing matches an empty segment.
fn segment(pattern: &[u8], text: &[u8]) -> bool {
    fn go(p: &[u8], t: &[u8], memo: &mut HashMap<(usize, usize), bool>) -> bool {
        let key = (p.len(), t.len());
        if let Some(&known) = memo.get(&key) {
            return known;
        }
        let result = match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => go(rest, t, memo) || (!t.is_empty() && go(p, &t[1..], memo)),
            Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..], memo),
        };
        memo.insert(key, result);
        result
    }
    !text.is_empty() && go(pattern, text, &mut HashMap::new())
}
