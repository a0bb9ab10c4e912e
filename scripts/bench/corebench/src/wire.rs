//! `--wire FORM N K`: encodes K decision calls and parses their K replies, N times, in one of the
//! filter's two wire forms (`upstash`: the JSON `/pipeline` body sent to sluice-gateway; `resp`:
//! what Higress' Redis callout carries), or `none` (setup only). Built for wasm32-wasip1 and run
//! under sluice-wasm-runner with `SLUICE_RUNNER_FUEL=1`, the fuel of N = 1000 less that of
//! N = 0 is the guest's work per 1000 round trips (`scripts/bench/wire_cost.sh`).

use std::hint::black_box;

use sluice::rate::Rate;
use sluice::redis::command::Command;
use sluice::redis::script::{self, Form, RuleCall};
use sluice::redis::wire;
use sluice::strategy::Strategy;

/// One call's reply as sluice's script gives it: verdict, then per limit allowed, remaining,
/// reset_ms, retry_after_ms, delay_ms, ttl_ms.
const UPSTASH_REPLY: &str = r#"{"result":[1,[1,999123,41234,0,0,60000]]}"#;
const RESP_REPLY: &str = "*2\r\n:1\r\n*6\r\n:1\r\n:999123\r\n:41234\r\n:0\r\n:0\r\n:60000\r\n";

pub fn run(form: &str, n: usize, k: usize) -> Result<String, String> {
    let rate = Rate::parse("1000000/minute").map_err(|e| e.to_string())?;
    let rates = [rate];
    let sha = script::sha();
    let commands: Vec<Command> = (0..k as u64)
        .map(|i| {
            let call = RuleCall {
                namespace: "sluice",
                rule: "api",
                identity: 0x1234_5678_9abc_def0 ^ i,
                fingerprint: 0xdead_beef,
                strategy: &Strategy::FixedWindow,
                rates: &rates,
                cost: 1,
            };
            script::command(&call, Form::Sha(&sha), false)
        })
        .collect();
    let upstash_reply = format!("[{}]", vec![UPSTASH_REPLY; k].join(","));
    let resp_reply = RESP_REPLY.repeat(k);
    let mut bytes = 0;
    for _ in 0..n {
        let (sent, replies) = match form {
            "upstash" => {
                (wire::upstash_pipeline(black_box(&commands)), wire::upstash_replies(black_box(upstash_reply.as_bytes()), k))
            }
            "resp" => (wire::resp_commands(black_box(&commands)), wire::resp_replies(black_box(resp_reply.as_bytes()), k)),
            "none" => (Vec::new(), Ok(Vec::new())),
            other => return Err(format!("unknown wire form {other:?}: upstash, resp or none")),
        };
        let replies = replies.map_err(|e| e.to_string())?;
        bytes += sent.len() + black_box(replies).len();
    }
    let upstash = wire::upstash_pipeline(&commands).len() + upstash_reply.len();
    let resp = wire::resp_commands(&commands).len() + resp_reply.len();
    Ok(format!("{form}: {n} round trips of {k} calls, {bytes} bytes sent; bytes per round trip: upstash {upstash}, resp {resp}"))
}
