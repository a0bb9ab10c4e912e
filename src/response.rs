//! What the client sees: `RateLimit`/`RateLimit-Policy` (IETF draft -10) or legacy
//! `X-RateLimit-*` fields, `Retry-After`, and the RFC 9457 problem body of a limited response.

use std::fmt::Write as _;

use crate::config::{HeaderMode, ResponseSpec};
use crate::rate::Rate;
use crate::strategy::Decision;

/// One limit of one rule, as decided for this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported<'a> {
    pub rule: &'a str,
    /// Position of the limit within its rule, and how many limits the rule has.
    pub index: usize,
    pub of: usize,
    pub rate: Rate,
    pub decision: Decision,
}

impl Reported<'_> {
    /// Writes the policy name: the rule's name, or `name.i` when a rule has several limits.
    fn write_policy(&self, out: &mut String) {
        out.push_str(self.rule);
        if self.of > 1 {
            let _ = write!(out, ".{}", self.index);
        }
    }
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
/// (floor: never promise more than the rule allows). `1000/500ms` → `q=2000;w=1`.
pub fn policy_quota(rate: &Rate) -> (u64, u64) {
    if rate.period_ms.is_multiple_of(1000) {
        return (rate.limit, rate.period_ms / 1000);
    }
    let w = ceil_secs(rate.period_ms).max(1);
    let q = (u128::from(rate.limit) * u128::from(w) * 1000 / u128::from(rate.period_ms.max(1))) as u64;
    (q, w)
}

/// Seconds until the client may rely on quota again: the retry-after of a denial, else the reset.
fn reset_secs(d: &Decision) -> u64 {
    if d.allowed {
        ceil_secs(d.reset_ms)
    } else {
        ceil_secs(d.retry_after_ms).max(1)
    }
}

/// The rate limit header fields for the given limits.
pub fn rate_limit_headers(mode: HeaderMode, reported: &[Reported<'_>]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if reported.is_empty() {
        return out;
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
            let (q, w) = policy_quota(&r.rate);
            policy.push('"');
            r.write_policy(&mut policy);
            let _ = write!(policy, "\";q={q};w={w}");
            current.push('"');
            r.write_policy(&mut current);
            let _ = write!(current, "\";r={};t={}", r.decision.remaining, reset_secs(&r.decision));
        }
        out.push(("ratelimit-policy".to_string(), policy));
        out.push(("ratelimit".to_string(), current));
    }
    if matches!(mode, HeaderMode::Legacy | HeaderMode::Both) {
        // Legacy fields carry one limit: the one closest to running out (a denial first).
        let tightest = reported.iter().min_by_key(|r| (r.decision.allowed, r.decision.remaining));
        if let Some(r) = tightest {
            out.push(("x-ratelimit-limit".to_string(), r.rate.limit.to_string()));
            out.push(("x-ratelimit-remaining".to_string(), r.decision.remaining.to_string()));
            out.push(("x-ratelimit-reset".to_string(), reset_secs(&r.decision).to_string()));
        }
    }
    out
}

/// A response the filter sends itself instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The limited response: `Retry-After` (whole seconds, ceil, ≥ 1), rate limit fields, the
/// configured extra headers, and the configured body or an RFC 9457 problem document.
pub fn limited(spec: &ResponseSpec, mode: HeaderMode, reported: &[Reported<'_>], violated: &[&str]) -> LocalResponse {
    let retry_ms = reported.iter().filter(|r| !r.decision.allowed).map(|r| r.decision.retry_after_ms).max().unwrap_or(0);
    let retry_after = ceil_secs(retry_ms).max(1);
    let mut headers = vec![("retry-after".to_string(), retry_after.to_string())];
    headers.extend(rate_limit_headers(mode, reported));
    let body = match &spec.body {
        Some(body) => {
            let ct = spec.content_type.clone().unwrap_or_else(|| "text/plain".to_string());
            headers.push(("content-type".to_string(), ct));
            body.clone().into_bytes()
        }
        None => {
            headers.push(("content-type".to_string(), "application/problem+json".to_string()));
            let names: Vec<String> = violated.iter().map(|n| json_string(n)).collect();
            let detail = match violated {
                [one] => format!("rate limit \"{one}\" exceeded; retry in {retry_after} s"),
                _ => format!("rate limits {} exceeded; retry in {retry_after} s", violated.join(", ")),
            };
            format!(
                "{{\"type\":\"about:blank\",\"title\":\"Too Many Requests\",\"status\":{},\"detail\":{},\"violated_rules\":[{}],\"retry_after\":{}}}",
                spec.status,
                json_string(&detail),
                names.join(","),
                retry_after
            )
            .into_bytes()
        }
    };
    headers.extend(spec.headers.iter().cloned());
    LocalResponse { status: spec.status, headers, body }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(rule: &str, limit: u64, period_ms: u64, allowed: bool, remaining: u64, ms: u64) -> Reported<'_> {
        let decision = if allowed {
            Decision { allowed, limit, remaining, reset_ms: ms, ..Default::default() }
        } else {
            Decision { allowed, limit, remaining, reset_ms: ms, retry_after_ms: ms, ..Default::default() }
        };
        Reported { rule, index: 0, of: 1, rate: Rate { limit, period_ms }, decision }
    }

    #[test]
    fn sub_second_periods_are_advertised_per_whole_second() {
        assert_eq!(policy_quota(&Rate { limit: 1000, period_ms: 500 }), (2000, 1));
        assert_eq!(policy_quota(&Rate { limit: 100, period_ms: 60_000 }), (100, 60));
        assert_eq!(policy_quota(&Rate { limit: 10, period_ms: 1500 }), (13, 2));
    }

    #[test]
    fn draft10_and_legacy_fields() {
        let r = [rep("api", 100, 60_000, true, 42, 29_001), rep("burst", 10, 1000, true, 3, 200)];
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
        let spec =
            ResponseSpec { status: 429, headers: vec![("x-reason".into(), "throttled".into())], body: None, content_type: None };
        let r = [rep("api", 50, 60_000, false, 0, 1_200)];
        let resp = limited(&spec, HeaderMode::Draft10, &r, &["api"]);
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
    fn retry_after_is_at_least_one_second() {
        let spec = ResponseSpec { status: 503, headers: vec![], body: Some("slow down".into()), content_type: None };
        let resp = limited(&spec, HeaderMode::None, &[rep("a", 5, 1000, false, 0, 1)], &["a"]);
        assert_eq!(resp.status, 503);
        assert_eq!(resp.body, b"slow down");
        assert!(resp.headers.contains(&("retry-after".to_string(), "1".to_string())));
        assert!(resp.headers.contains(&("content-type".to_string(), "text/plain".to_string())));
    }
}
