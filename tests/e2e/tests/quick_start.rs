//! The README's quick start in a real Envoy: envoy/demo.yaml as shipped (only its ports moved)
//! answers the six requests of the quick start as the README says, and the limited response
//! carries the fields of the README's problem+json example.

use std::collections::BTreeSet;

use serde_json::Value;
use sluice_e2e::{adapt, bootstrap, get, repo, Envoy};

/// The README's example problem+json body.
fn readme_problem_body() -> Value {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let mut bodies = Vec::new();
    let mut block: Option<String> = None;
    for line in readme.lines() {
        match (&mut block, line.trim_start()) {
            (None, "```json") => block = Some(String::new()),
            (Some(b), "```") => {
                if let Ok(v) = serde_json::from_str::<Value>(b) {
                    if v.get("violated_rules").is_some() {
                        bodies.push(v);
                    }
                }
                block = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    assert_eq!(bodies.len(), 1, "one problem+json example in the README");
    bodies.remove(0)
}

#[test]
fn the_quick_start_answers_as_the_readme_says() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    assert!(readme.contains("The sixth request gets `429` with `Retry-After`, `RateLimit-Policy: \"api\";q=5;w=10`"));

    let mut boot = bootstrap("demo.yaml");
    adapt(&mut boot, None);
    let envoy = Envoy::running(&boot, 2);
    // for i in 1 2 3 4 5 6; do curl ... localhost:10000/api/x; done
    let responses: Vec<_> = (0..6).map(|_| get(&envoy.url("/api/x"), &[]).expect("GET /api/x")).collect();
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 429]);
    let limited = &responses[5];
    assert_eq!(limited.header("ratelimit-policy"), Some("\"api\";q=5;w=10"));
    // sliding_window_counter, 5 per 10 s: the sixth request waits for the next window, then
    // until the five counted in this one weigh no more than four (a fifth of that window), so
    // at most 10 s + 2 s. A burst in the window's first 2 s gets 11 or 12 (seen in CI).
    let retry = limited.header("retry-after").and_then(|v| v.parse::<u64>().ok());
    assert!(retry.is_some_and(|s| (1..=12).contains(&s)), "{:?}", limited.headers);
    // The same wait in the RateLimit field.
    assert_eq!(
        limited.header("ratelimit"),
        Some(format!("\"api\";r=0;t={}", retry.unwrap_or(0)).as_str()),
        "{:?}",
        limited.headers
    );
    assert_eq!(limited.header("content-type"), Some("application/problem+json"));
    let body: Value = serde_json::from_str(&limited.body).expect("problem+json");
    assert_eq!(body["violated_rules"], serde_json::json!(["api"]));

    // The README's example has exactly the fields of a real limited response, of the same types.
    let example = readme_problem_body();
    let keys = |v: &Value| v.as_object().map(|m| m.keys().cloned().collect::<BTreeSet<_>>()).unwrap_or_default();
    assert_eq!(keys(&example), keys(&body), "README example vs real body {body}");
    for (k, v) in example.as_object().expect("object") {
        assert_eq!(std::mem::discriminant(v), std::mem::discriminant(&body[k]), "{k}: {v} vs {}", body[k]);
    }
    assert_eq!(example["title"], body["title"]);
    assert_eq!(example["type"], body["type"]);
    let detail = body["detail"].as_str().expect("detail");
    assert!(detail.starts_with("rate limit \"api\" exceeded; retry in "), "{detail}");
}
