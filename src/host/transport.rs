//! Moving a request's Redis commands: an HTTP callout to sluice-gateway (or Upstash) in the
//! Upstash dialect (alone, or gathered with other requests' by [`super::batch`]), or, in the
//! Higress build, Redis callouts ([`super::callout`]). The bytes
//! come from [`crate::redis::wire`]; this module only hands them to the host within the time
//! the request has left (docs/architecture.md, "Host facts: callouts").

use std::rc::Rc;
use std::time::Duration;

use super::abi::{self, BufferType, Headers};

use serde::Serialize;

use crate::clock;
use crate::config::RedisSpec;
#[cfg(feature = "redis-callout")]
use crate::config::Transport;
use crate::engine::Pending;
use crate::redis::wire::{self, Reply};

use super::state::Shared;
use super::time::now_us;

/// Where a request's decision waits for its answer.
pub(super) enum Sent {
    /// Where it was dispatched (the request's own context, or the root's when a root callback
    /// sent it): an HTTP callout answers there. The decision, its deadline, the call's token.
    Here(Pending, u64, u32),
    /// At the root: a gathered call ([`super::batch`]) or a Redis callout
    /// ([`super::callout`]) answers there.
    Root,
}

/// Sends `pending`'s commands for request `ctx`, giving them only the time left before
/// `deadline_us`. On failure the caller decides without Redis.
pub(super) fn send(shared: &Rc<Shared>, ctx: u32, pending: Pending, deadline_us: u64) -> Result<Sent, (Pending, String)> {
    let Some(spec) = shared.limiter.redis() else {
        return Err((pending, "no redis block".into()));
    };
    let Some(timeout_ms) = clock::call_timeout_ms(now_us(), deadline_us) else {
        return Err((pending, format!("less than 1 ms left of redis.timeout_ms = {}", spec.timeout_ms)));
    };
    #[cfg(feature = "redis-callout")]
    if spec.transport == Transport::RedisCallout {
        return super::callout::call_all(shared, pending, deadline_us, ctx).map(|()| Sent::Root);
    }
    let _ = ctx;
    match dispatch(spec, &pending.commands, Duration::from_millis(timeout_ms)) {
        Ok(token) => Ok(Sent::Here(pending, deadline_us, token)),
        Err(why) => Err((pending, why)),
    }
}

/// Dispatches `commands` (one request's, or several gathered) as one `/pipeline` callout from
/// the context running now, which is where the answer comes back; returns the call's token.
pub(super) fn dispatch<C: Serialize>(spec: &RedisSpec, commands: &[C], timeout: Duration) -> Result<u32, String> {
    let request = wire::upstash_request(commands, spec.authority.as_deref().unwrap_or(&spec.cluster), spec.token.as_deref());
    let headers: Vec<(&str, &str)> = request.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    abi::dispatch_http_call(&spec.cluster, &headers, &request.body, timeout)
        .map_err(|status| format!("dispatch_http_call to cluster {:?}: {status:?}", spec.cluster))
}

/// Reads an HTTP callout's reply: the pipeline's replies, or why there are none.
pub(super) fn replies(num_headers: usize, body_size: usize, expected: usize) -> Result<Vec<Reply>, String> {
    if num_headers == 0 {
        // Envoy's way of saying the call failed: timeout, reset, or no healthy host.
        return Err("no response from the Redis endpoint (timeout or connection failure)".into());
    }
    let status = abi::get_map_value_bytes(Headers::CallResponse, ":status").ok().flatten().unwrap_or_default();
    // A body of size 0 must not be read: the SDK fails on that status.
    let body = if body_size == 0 {
        Vec::new()
    } else {
        abi::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default()
    };
    if status != b"200" {
        let status = String::from_utf8_lossy(&status);
        let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        return Err(format!("Redis endpoint answered HTTP {status}: {text}"));
    }
    wire::upstash_replies(&body, expected).map_err(|e| e.to_string())
}
