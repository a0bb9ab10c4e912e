//! Calls of sluice's decision script built by the filter's own code
//! (`sluice::redis::script::command`), so the tests send exactly what the filter sends.

use serde_json::{json, Value};
use sluice::rate::Rate;
use sluice::redis::script::{command, Form, RuleCall};
use sluice::strategy::Strategy;

pub const NAMESPACE: &str = "test";
pub const RULE: &str = "api";
pub const FINGERPRINT: u32 = 0x5e1c_e001;
/// The limit of [`call`]: 5 per window of [`WINDOW_MS`].
pub const LIMIT: u64 = 5;

pub fn sha() -> String {
    sluice::redis::script::sha()
}

/// A call as the filter makes it, in full.
pub struct Call<'a> {
    pub identity: u64,
    pub strategy: Strategy,
    pub rates: &'a [Rate],
    pub cost: u64,
    pub form: Form<'a>,
    pub dry: bool,
}

impl Call<'_> {
    pub fn words(&self) -> Vec<String> {
        let call = RuleCall {
            namespace: NAMESPACE,
            rule: RULE,
            identity: self.identity,
            fingerprint: FINGERPRINT,
            strategy: &self.strategy,
            rates: self.rates,
            cost: self.cost,
        };
        command(&call, self.form, self.dry).to_vec()
    }
}

/// 30 days. Fixed windows are aligned to the epoch, so a test that counts down one identity's
/// remaining requests must not cross a window's end while it runs: with a minute, a run that
/// crossed a minute boundary saw its counts start again.
pub const WINDOW_MS: u64 = 30 * 24 * 3600 * 1000;
const WINDOW: [Rate; 1] = [Rate { limit: LIMIT, period_ms: WINDOW_MS }];

/// `EVALSHA` deciding one request of `identity` against a fixed window of 5 per [`WINDOW_MS`].
pub fn words(identity: u64, sha: &str) -> Vec<String> {
    Call { identity, strategy: Strategy::FixedWindow, rates: &WINDOW, cost: 1, form: Form::Sha(sha), dry: false }.words()
}

/// [`words`] as a JSON command.
pub fn call(identity: u64) -> Value {
    json!(words(identity, &sha()))
}

/// The same decision, sent the way the filter does after a NOSCRIPT: `EVAL` with the text.
pub fn eval_call(identity: u64) -> Value {
    json!(Call { identity, strategy: Strategy::FixedWindow, rates: &WINDOW, cost: 1, form: Form::Eval, dry: false }.words())
}

/// The same decision, made without writing (the filter's first pass over several rules).
pub fn dry_call(identity: u64) -> Value {
    let sha = sha();
    json!(Call { identity, strategy: Strategy::FixedWindow, rates: &WINDOW, cost: 1, form: Form::Sha(&sha), dry: true }.words())
}

/// The key [`call`] writes for `identity`.
pub fn key(identity: u64) -> String {
    sluice::redis::key(NAMESPACE, RULE, identity, 0, FINGERPRINT)
}

/// The text that puts `identity`'s keys in their cluster slot: the hash tag.
pub fn hash_tag(identity: u64) -> String {
    format!("{RULE}:{identity:016x}")
}

/// `(all_allowed, remaining of the first limit)` from a call's `result`.
pub fn verdict(result: &Value) -> (bool, u64) {
    let all = result[0].as_i64().unwrap_or_else(|| panic!("not a decision: {result}"));
    let remaining = result[1][1].as_u64().unwrap_or_else(|| panic!("not a decision: {result}"));
    assert_eq!(result[1].as_array().map(Vec::len), Some(6), "{result}");
    (all == 1, remaining)
}

/// `verdict` of a `{"result": …}` entry.
pub fn entry_verdict(entry: &Value) -> (bool, u64) {
    assert!(entry.get("error").is_none(), "an error: {entry}");
    verdict(&entry["result"])
}
