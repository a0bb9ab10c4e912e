mod common;

use sluice_harness::{LogLevel, Origin};

#[test]
fn a_request_goes_upstream_and_through_the_response_callbacks() {
    let mut host = common::probe().build().unwrap();
    let resp = host.request("GET", "/x").header("x-op", "echo").send();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.origin, Origin::Upstream);
    assert_eq!(resp.body_str(), "upstream");
    assert_eq!(resp.header("x-probe"), Some("seen"));
    assert!(host.traps().is_empty(), "{:?}", host.traps());
    assert!(host.logged(LogLevel::Info, "probe: configured"), "{:?}", host.logs());
}
