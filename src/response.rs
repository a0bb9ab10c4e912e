//! What the client sees: `RateLimit`/`RateLimit-Policy` (IETF draft -10) or legacy
//! `X-RateLimit-*` fields, `Retry-After`, and the RFC 9457 problem body of a limited response.

use std::borrow::Cow;

use crate::config::{HeaderMode, ResponseSpec};
use crate::rate::Rate;
use crate::strategy::Decision;

/// A response header field: its name (static for the fields sluice writes itself) and value.
pub type Field = (Cow<'static, str>, String);

/// What every response naming one limit of a rule repeats, written once when the config loads:
/// the limit's quoted policy name (`"api"`, or `"api.1"` when a rule has several limits) and
/// its `RateLimit-Policy` item. Rule names are `[A-Za-z0-9_.-]`, so quoting needs no escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitText {
    pub label: String,
    pub policy: String,
}

impl LimitText {
    pub fn new(rule: &str, index: usize, of: usize, rate: &Rate) -> Self {
        let label = if of > 1 { format!("\"{rule}.{index}\"") } else { format!("\"{rule}\"") };
        let (q, w) = policy_quota(rate);
        let policy = format!("{label};q={q};w={w}");
        LimitText { label, policy }
    }
}

/// A rule a limited response names: denied by its limits, or `unchecked`, denied because its
/// store did not decide (Redis' `on_error: deny`, a local write that kept losing its race).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violated<'a> {
    pub name: &'a str,
    pub unchecked: bool,
}

/// One limit of one rule, as decided for this request: only the limits of rules whose
/// `advertise` shows them are reported (a rule kept out has no texts to report them with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported<'a> {
    pub text: &'a LimitText,
    pub rate: Rate,
    pub decision: Decision,
    /// The limit's rule may deny (it is not a shadow rule, which only reports).
    pub enforced: bool,
}

fn ceil_div(a: u64, b: u64) -> u64 {
    if b == 0 {
        0
    } else {
        a.div_ceil(b)
    }
}

/// Seconds for a header from milliseconds: ceil, so a client that waits that long is not early.
pub fn ceil_secs(ms: u64) -> u64 {
    ceil_div(ms, 1000)
}

/// `(q, w)` for `RateLimit-Policy`: `w` must be whole seconds, so a period that is not a whole
/// number of seconds is advertised over the next whole second with the quota scaled down
/// (floor: never promise more than the rule allows). `1000/500ms` → `q=2000;w=1`. A structured
/// field's integer has at most 15 digits, so a quota scaled past that is shown as the most one
/// holds (`10^12/1ms` would be 10^15 a second).
pub fn policy_quota(rate: &Rate) -> (u64, u64) {
    const MOST: u128 = 999_999_999_999_999;
    if rate.period_ms.is_multiple_of(1000) {
        return (rate.limit, rate.period_ms / 1000);
    }
    let w = ceil_secs(rate.period_ms).max(1);
    let q = u128::from(rate.limit) * u128::from(w) * 1000 / u128::from(rate.period_ms.max(1));
    (u64::try_from(q.min(MOST)).unwrap_or(u64::MAX), w)
}

/// The remaining units a response shows: at most the quota it advertises (`q`, or
/// `X-RateLimit-Limit`), which a bucket's `burst` or a debt can exceed. Fewer than are left is
/// a promise kept; more than the quota would read as more than the policy gives.
pub fn shown_remaining(d: &Decision) -> u64 {
    d.remaining.min(d.limit)
}

/// Seconds until the client may rely on quota again: the retry-after of a denial, else until
/// more than the remaining shown is free, which is now when more than the quota is left (a
/// burst above it: [`shown_remaining`]).
pub fn reset_secs(d: &Decision) -> u64 {
    match (d.allowed, d.remaining > d.limit) {
        (true, true) => 0,
        (true, false) => ceil_secs(d.reset_ms),
        (false, _) => ceil_secs(d.retry_after_ms).max(1),
    }
}

/// The rate limit header fields for the given limits; none without any.
pub fn rate_limit_headers(mode: HeaderMode, reported: &[Reported<'_>]) -> Vec<Field> {
    let mut out = Vec::new();
    write_rate_limit_headers(mode, reported, &mut out);
    out
}

fn write_rate_limit_headers(mode: HeaderMode, reported: &[Reported<'_>], out: &mut Vec<Field>) {
    if reported.is_empty() {
        return;
    }
    if matches!(mode, HeaderMode::Draft10 | HeaderMode::Both) {
        // Both fields are written straight into their strings: this runs on every request.
        let mut policy = String::with_capacity(reported.len() * 32);
        let mut current = String::with_capacity(reported.len() * 32);
        for (i, r) in reported.iter().enumerate() {
            if i > 0 {
                policy.push_str(", ");
                current.push_str(", ");
            }
            policy.push_str(&r.text.policy);
            current.push_str(&r.text.label);
            current.push_str(";r=");
            push_number(&mut current, shown_remaining(&r.decision));
            current.push_str(";t=");
            push_number(&mut current, reset_secs(&r.decision));
        }
        out.push((Cow::Borrowed("ratelimit-policy"), policy));
        out.push((Cow::Borrowed("ratelimit"), current));
    }
    if matches!(mode, HeaderMode::Legacy | HeaderMode::Both) {
        // Legacy fields carry one limit: an enforced one before a shadow rule's, a denial
        // first (the one that blocks longest), else the one closest to running out. Compared
        // in the whole seconds the fields show, so the pick follows from what they show (a
        // worker sends its last limited response again when it would show the same).
        let tightest = reported.iter().min_by_key(|r| {
            let (d, secs) = (&r.decision, reset_secs(&r.decision));
            let blocks = if d.allowed { 0 } else { secs };
            (!r.enforced, d.allowed, std::cmp::Reverse(blocks), shown_remaining(d), std::cmp::Reverse(secs))
        });
        if let Some(r) = tightest {
            out.push((Cow::Borrowed("x-ratelimit-limit"), number(r.rate.limit)));
            out.push((Cow::Borrowed("x-ratelimit-remaining"), number(shown_remaining(&r.decision))));
            out.push((Cow::Borrowed("x-ratelimit-reset"), number(reset_secs(&r.decision))));
        }
    }
}

/// A response the filter sends itself instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    /// For a gRPC request, which Envoy answers with a gRPC error instead.
    pub grpc_status: u8,
    pub headers: Vec<Field>,
    pub body: Vec<u8>,
}

/// The limited response: `Retry-After` (whole seconds, ceil, ≥ 1), rate limit fields, the
/// configured extra headers, and the configured body or an RFC 9457 problem document naming
/// the `violated` rules. `hidden_wait_ms` is the longest wait of the violated rules kept out of
/// the fields (`advertise: false`), which `reported` leaves out: a client must still learn when
/// to come back. A flood is made of these, so each is written in one pass into buffers sized
/// up front.
pub fn limited(
    spec: &ResponseSpec,
    mode: HeaderMode,
    reported: &[Reported<'_>],
    violated: &[Violated<'_>],
    hidden_wait_ms: u64,
) -> LocalResponse {
    // A shadow rule's denial blocks nothing, so its wait is not the client's.
    let retry_ms = reported
        .iter()
        .filter(|r| r.enforced && !r.decision.allowed)
        .map(|r| r.decision.retry_after_ms)
        .fold(hidden_wait_ms, u64::max);
    let retry_after = ceil_secs(retry_ms).max(1);
    let mut headers = Vec::with_capacity(5 + spec.headers.len());
    headers.push((Cow::Borrowed("retry-after"), number(retry_after)));
    // Envoy's router retries no response that carries it: without it, a mesh that retries 5xx
    // (Istio retries 503 twice, on other pods) or 429 asks again where another proxy may admit.
    headers.push((Cow::Borrowed("x-envoy-ratelimited"), "true".to_string()));
    write_rate_limit_headers(mode, reported, &mut headers);
    let body = match &spec.body {
        Some(body) => {
            let ct = spec.content_type.clone().unwrap_or_else(|| "text/plain".to_string());
            headers.push((Cow::Borrowed("content-type"), ct));
            body.clone().into_bytes()
        }
        None => {
            headers.push((Cow::Borrowed("content-type"), "application/problem+json".to_string()));
            problem(spec.status, violated, retry_after).into_bytes()
        }
    };
    headers.extend(spec.headers.iter().map(|(k, v)| (Cow::Owned(k.clone()), v.clone())));
    LocalResponse { status: spec.status, grpc_status: spec.grpc_status, headers, body }
}

/// The RFC 9457 problem document. Rule names are `[A-Za-z0-9_.-]` (the config compiler's
/// rule), so they are written between quotes as they are. With `about:blank` as its type, its
/// title is the status' reason phrase (RFC 9457 4.2.1); a status without one has no title.
fn problem(status: u16, violated: &[Violated<'_>], retry_after: u64) -> String {
    let names: usize = violated.iter().map(|v| v.name.len() + 8).sum();
    let mut out = String::with_capacity(180 + 2 * names);
    out.push_str("{\"type\":\"about:blank\",");
    if let Some(title) = http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()) {
        out.push_str("\"title\":\"");
        out.push_str(title);
        out.push_str("\",");
    }
    out.push_str("\"status\":");
    push_number(&mut out, u64::from(status));
    out.push_str(",\"detail\":\"");
    // A client (and whoever reads its logs) told a limit was exceeded while Redis was down would
    // look for traffic that never was.
    push_rules(&mut out, violated, false, " exceeded");
    if violated.iter().any(|v| !v.unchecked) && violated.iter().any(|v| v.unchecked) {
        out.push_str("; ");
    }
    push_rules(&mut out, violated, true, " could not be checked");
    if violated.is_empty() {
        out.push_str("rate limited");
    }
    out.push_str("; retry in ");
    push_number(&mut out, retry_after);
    out.push_str(" s\",\"violated_rules\":[");
    for (i, v) in violated.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(v.name);
        out.push('"');
    }
    out.push_str("],\"retry_after\":");
    push_number(&mut out, retry_after);
    out.push('}');
    out
}

/// Writes the `violated` rules whose `unchecked` is `which`, as `rate limit "a"` or `rate limits
/// a, b`, then `what`; nothing when there are none.
fn push_rules(out: &mut String, violated: &[Violated<'_>], which: bool, what: &str) {
    let mut names = violated.iter().filter(|v| v.unchecked == which).map(|v| v.name);
    let Some(first) = names.next() else { return };
    match names.next() {
        None => {
            out.push_str("rate limit \\\"");
            out.push_str(first);
            out.push_str("\\\"");
        }
        Some(second) => {
            out.push_str("rate limits ");
            out.push_str(first);
            for n in std::iter::once(second).chain(names) {
                out.push_str(", ");
                out.push_str(n);
            }
        }
    }
    out.push_str(what);
}

/// Writes `n` in decimal. Numbers go into every response; `itoa` writes them without the
/// formatting machinery, which costs several times as much in the VM.
fn push_number(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

fn number(n: u64) -> String {
    itoa::Buffer::new().format(n).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rules denied by their limits.
    fn named<'a>(names: &[&'a str]) -> Vec<Violated<'a>> {
        names.iter().map(|&name| Violated { name, unchecked: false }).collect()
    }

    fn text(rule: &str, limit: u64, period_ms: u64) -> LimitText {
        LimitText::new(rule, 0, 1, &Rate { limit, period_ms })
    }

    fn rep(text: &LimitText, limit: u64, period_ms: u64, allowed: bool, remaining: u64, ms: u64) -> Reported<'_> {
        let decision = if allowed {
            Decision { allowed, limit, remaining, reset_ms: ms, ..Default::default() }
        } else {
            Decision { allowed, limit, remaining, reset_ms: ms, retry_after_ms: ms, ..Default::default() }
        };
        Reported { text, rate: Rate { limit, period_ms }, decision, enforced: true }
    }

    #[test]
    fn remaining_never_shows_more_than_the_quota() {
        // A bucket of 150 on 100/min has 149 left after one request: shown as the 100 it
        // advertises, in both kinds of fields.
        let api = text("api", 100, 60_000);
        let h = rate_limit_headers(HeaderMode::Both, &[rep(&api, 100, 60_000, true, 149, 600)]);
        let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("ratelimit").as_deref(), Some("\"api\";r=100;t=0"), "more than r is free now");
        assert_eq!(get("x-ratelimit-remaining").as_deref(), Some("100"));
    }

    #[test]
    fn a_shadow_rules_denial_neither_lengthens_retry_after_nor_fills_legacy_fields() {
        let spec = ResponseSpec { status: 429, headers: Vec::new(), body: None, content_type: None, grpc_status: 8 };
        let (burst, trial) = (text("burst", 5, 1000), text("trial", 100, 3_600_000));
        let shadow = Reported { enforced: false, ..rep(&trial, 100, 3_600_000, false, 0, 3_000_000) };
        let r = [rep(&burst, 5, 1000, false, 0, 800), shadow.clone()];
        let resp = limited(&spec, HeaderMode::Both, &r, &named(&["burst"]), 0);
        let get = |k: &str| resp.headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("retry-after").as_deref(), Some("1"), "the enforced denial's wait");
        assert_eq!(get("x-ratelimit-limit").as_deref(), Some("5"));
        // Admitted, with a shadow rule spent: the legacy fields show the enforced limit.
        let api = text("api", 100, 60_000);
        let admitted = [rep(&api, 100, 60_000, true, 99, 60_000), shadow.clone()];
        let h = rate_limit_headers(HeaderMode::Legacy, &admitted);
        assert!(h.contains(&(Cow::Borrowed("x-ratelimit-remaining"), "99".to_string())), "{h:?}");
        // Two limits of one rule denying: the one that blocks longest.
        let (second, hour) = (text("api", 10, 1000), text("api", 1000, 3_600_000));
        let both = [rep(&second, 10, 1000, false, 0, 1000), rep(&hour, 1000, 3_600_000, false, 0, 3_000_000)];
        let h = rate_limit_headers(HeaderMode::Legacy, &both);
        assert!(h.contains(&(Cow::Borrowed("x-ratelimit-reset"), "3000".to_string())), "{h:?}");
    }

    #[test]
    fn a_denial_by_a_rule_kept_out_of_the_fields_sets_retry_after_and_names_it() {
        // tenant (10/hour) denied for 900 s and is not advertised: only api is reported.
        let spec = ResponseSpec { status: 429, headers: Vec::new(), body: None, content_type: None, grpc_status: 8 };
        let api = text("api", 100, 60_000);
        let get = |h: &[Field], k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        for mode in [HeaderMode::Draft10, HeaderMode::Legacy] {
            let resp = limited(&spec, mode, &[rep(&api, 100, 60_000, true, 42, 29_001)], &named(&["tenant"]), 900_000);
            let h = &resp.headers;
            assert_eq!(get(h, "retry-after").as_deref(), Some("900"), "{mode:?}: the hidden rule's wait");
            match mode {
                HeaderMode::Draft10 => assert_eq!(get(h, "ratelimit").as_deref(), Some("\"api\";r=42;t=30")),
                _ => assert_eq!(get(h, "x-ratelimit-reset").as_deref(), Some("30")),
            }
            let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
            assert_eq!((body["violated_rules"][0].as_str(), body["retry_after"].as_u64()), (Some("tenant"), Some(900)));
        }
        // No advertised limit: no rate limit field at all.
        let resp = limited(&spec, HeaderMode::Both, &[], &named(&["tenant"]), 900_000);
        let names: Vec<&str> = resp.headers.iter().map(|(n, _)| n.as_ref()).collect();
        assert_eq!(names, ["retry-after", "x-envoy-ratelimited", "content-type"]);
        assert_eq!(get(&resp.headers, "retry-after").as_deref(), Some("900"));
        // The longer of the waits shown and hidden.
        let burst = text("burst", 5, 1000);
        let resp =
            limited(&spec, HeaderMode::Draft10, &[rep(&burst, 5, 1000, false, 0, 3_500)], &named(&["burst", "tenant"]), 2_000);
        assert_eq!(get(&resp.headers, "retry-after").as_deref(), Some("4"));
    }

    #[test]
    fn the_legacy_pick_follows_from_the_seconds_shown() {
        // Two denials that both wait 2 s show the same whatever their milliseconds, so they pick
        // the same limit (a worker's repeated 429 relies on it): the first in order.
        let (a, b) = (text("a", 10, 60_000), text("b", 100, 60_000));
        for (ms_a, ms_b) in [(1_200, 1_500), (1_600, 1_500)] {
            let r = [rep(&a, 10, 60_000, false, 0, ms_a), rep(&b, 100, 60_000, false, 0, ms_b)];
            let h = rate_limit_headers(HeaderMode::Legacy, &r);
            assert!(h.contains(&(Cow::Borrowed("x-ratelimit-limit"), "10".to_string())), "{ms_a} / {ms_b}: {h:?}");
        }
    }

    #[test]
    fn sub_second_periods_are_advertised_per_whole_second() {
        assert_eq!(policy_quota(&Rate { limit: 1000, period_ms: 500 }), (2000, 1));
        assert_eq!(policy_quota(&Rate { limit: 100, period_ms: 60_000 }), (100, 60));
        assert_eq!(policy_quota(&Rate { limit: 10, period_ms: 1500 }), (13, 2));
        assert_eq!(policy_quota(&Rate { limit: 1_000_000_000_000, period_ms: 1 }), (999_999_999_999_999, 1), "15 digits at most");
    }

    #[test]
    fn draft10_and_legacy_fields() {
        let (api, burst) = (text("api", 100, 60_000), text("burst", 10, 1000));
        let r = [rep(&api, 100, 60_000, true, 42, 29_001), rep(&burst, 10, 1000, true, 3, 200)];
        let h = rate_limit_headers(HeaderMode::Both, &r);
        let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("ratelimit-policy"), Some("\"api\";q=100;w=60, \"burst\";q=10;w=1"));
        assert_eq!(get("ratelimit"), Some("\"api\";r=42;t=30, \"burst\";r=3;t=1"));
        assert_eq!(get("x-ratelimit-remaining"), Some("3"));
        assert_eq!(get("x-ratelimit-limit"), Some("10"));
        assert!(rate_limit_headers(HeaderMode::None, &r).is_empty());
    }

    #[test]
    fn limited_response_has_retry_after_and_problem_body() {
        let spec = ResponseSpec {
            status: 429,
            headers: vec![("x-reason".into(), "throttled".into())],
            body: None,
            content_type: None,
            grpc_status: 8,
        };
        let api = text("api", 50, 60_000);
        let r = [rep(&api, 50, 60_000, false, 0, 1_200)];
        let resp = limited(&spec, HeaderMode::Draft10, &r, &named(&["api"]), 0);
        assert_eq!(resp.status, 429);
        let get = |k: &str| resp.headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("retry-after").as_deref(), Some("2"));
        assert_eq!(get("ratelimit").as_deref(), Some("\"api\";r=0;t=2"));
        assert_eq!(get("x-reason").as_deref(), Some("throttled"));
        assert_eq!(get("content-type").as_deref(), Some("application/problem+json"));
        let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(body["status"], 429);
        assert_eq!(body["violated_rules"][0], "api");
        assert_eq!(body["retry_after"], 2);
    }

    #[test]
    fn the_problem_document_is_json_for_one_rule_and_several() {
        for (violated, detail) in [
            (&["api"][..], "rate limit \"api\" exceeded; retry in 7 s"),
            (&["a.b", "c-d_9"][..], "rate limits a.b, c-d_9 exceeded; retry in 7 s"),
        ] {
            let body: serde_json::Value = serde_json::from_str(&problem(429, &named(violated), 7)).unwrap();
            assert_eq!(body["detail"], detail);
            assert_eq!(body["violated_rules"], serde_json::json!(violated));
            assert_eq!((body["status"].as_u64(), body["retry_after"].as_u64()), (Some(429), Some(7)));
            assert_eq!(body["title"], "Too Many Requests");
        }
        // Another status: its own phrase as the title, or none where it has no phrase.
        let body: serde_json::Value = serde_json::from_str(&problem(503, &named(&["api"]), 7)).unwrap();
        assert_eq!((body["title"].as_str(), body["status"].as_u64()), (Some("Service Unavailable"), Some(503)));
        let body: serde_json::Value = serde_json::from_str(&problem(499, &named(&["api"]), 7)).unwrap();
        assert_eq!((body.get("title"), body["status"].as_u64()), (None, Some(499)));
    }

    /// A rule its store could not decide (`on_error: deny`) is named as not checked, never as
    /// exceeded, alone or beside rules that were; `violated_rules` keeps every one in order.
    #[test]
    fn rules_denied_unchecked_are_not_said_to_be_exceeded() {
        let v = |name, unchecked| Violated { name, unchecked };
        for (violated, detail) in [
            (vec![v("api", true)], "rate limit \"api\" could not be checked; retry in 3 s"),
            (vec![v("a", true), v("b", true)], "rate limits a, b could not be checked; retry in 3 s"),
            (
                vec![v("a", true), v("b", false), v("c", true)],
                "rate limit \"b\" exceeded; rate limits a, c could not be checked; retry in 3 s",
            ),
        ] {
            let body: serde_json::Value = serde_json::from_str(&problem(429, &violated, 3)).unwrap();
            assert_eq!(body["detail"], detail);
            let names: Vec<&str> = violated.iter().map(|v| v.name).collect();
            assert_eq!(body["violated_rules"], serde_json::json!(names));
        }
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let spec =
            ResponseSpec { status: 503, headers: vec![], body: Some("slow down".into()), content_type: None, grpc_status: 8 };
        let a = text("a", 5, 1000);
        let resp = limited(&spec, HeaderMode::None, &[rep(&a, 5, 1000, false, 0, 1)], &named(&["a"]), 0);
        assert_eq!(resp.status, 503);
        assert_eq!(resp.body, b"slow down");
        assert!(resp.headers.contains(&("retry-after".into(), "1".to_string())));
        assert!(resp.headers.contains(&("content-type".into(), "text/plain".to_string())));
    }
}
