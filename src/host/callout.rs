//! Higress' Redis callout (the `redis-callout` build): each Redis command of a request goes out
//! as its own `proxy_redis_call`, and the answers arrive at the root context with the call's
//! token, so what a request waits for is kept here, by context id. The root's callback, which
//! carries the request on, is in [`super`].

use std::cell::RefCell;
use std::rc::Rc;

use super::state::Shared;
use crate::engine::Pending;
use crate::redis::wire::{self, Reply};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_redis_init(
        cluster: *const u8,
        cluster_size: usize,
        username: *const u8,
        username_size: usize,
        password: *const u8,
        password_size: usize,
        timeout_ms: u32,
    ) -> u32;
    fn proxy_redis_call(cluster: *const u8, cluster_size: usize, query: *const u8, query_size: usize, token: *mut u32) -> u32;
    fn proxy_get_buffer_bytes(buffer_type: u32, start: usize, max_size: usize, data: *mut *mut u8, size: *mut usize) -> u32;
}

/// Buffer type of a Redis call's response (Higress).
const REDIS_CALL_RESPONSE: u32 = 9;

/// One request's Redis calls in flight: a reply slot per command, filled as answers arrive,
/// and the decision waiting for them (the answers arrive at the root, not at the request).
struct InFlight {
    /// The config that made the decision: its answer is carried on under it, whatever config
    /// the worker has taken since (its rule numbers are the decision's).
    shared: Rc<Shared>,
    ctx: u32,
    /// Call token per command, in command order.
    tokens: Vec<u32>,
    replies: Vec<Option<Reply>>,
    pending: Pending,
    deadline_us: u64,
}

thread_local! {
    static IN_FLIGHT: RefCell<Vec<InFlight>> = const { RefCell::new(Vec::new()) };
}

/// Connects the worker to the Redis cluster (`redis.token` is the password).
pub(super) fn init(cluster: &str, password: Option<&str>, timeout_ms: u64) -> Result<(), String> {
    let password = password.unwrap_or("");
    // SAFETY: every pointer and length describes a live byte slice for the call's duration.
    let status = unsafe {
        proxy_redis_init(
            cluster.as_ptr(),
            cluster.len(),
            "".as_ptr(),
            0,
            password.as_ptr(),
            password.len(),
            u32::try_from(timeout_ms).unwrap_or(u32::MAX),
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(format!("proxy_redis_init({cluster:?}) returned status {status}"))
    }
}

fn call(cluster: &str, query: &[u8]) -> Result<u32, String> {
    let mut token = 0u32;
    // SAFETY: as above; `token` outlives the call.
    let status = unsafe { proxy_redis_call(cluster.as_ptr(), cluster.len(), query.as_ptr(), query.len(), &mut token) };
    if status != 0 {
        return Err(format!("proxy_redis_call({cluster:?}) returned status {status}"));
    }
    Ok(token)
}

/// Sends each command as its own call: a Redis callout carries one command and is answered
/// with one reply, so a request's rules go out side by side and are resumed when the last
/// answer is in. Calls already sent when a later one cannot be are forgotten: their answers
/// find no request and are dropped.
pub(super) fn call_all(shared: &Rc<Shared>, pending: Pending, deadline_us: u64, ctx: u32) -> Result<(), (Pending, String)> {
    let Some(cluster) = shared.limiter.redis().map(|r| r.cluster.as_str()) else {
        return Err((pending, "no redis block".into()));
    };
    let _ = forget(ctx);
    let mut tokens = Vec::with_capacity(pending.commands.len());
    for c in &pending.commands {
        match call(cluster, &wire::resp_commands(std::slice::from_ref(c))) {
            Ok(token) => tokens.push(token),
            Err(why) => return Err((pending, why)),
        }
    }
    let replies = vec![None; tokens.len()];
    IN_FLIGHT.with(|f| f.borrow_mut().push(InFlight { shared: shared.clone(), ctx, tokens, replies, pending, deadline_us }));
    Ok(())
}

/// Drops what request `ctx` still waits for; returns the decision that was waiting, if any.
pub(super) fn forget(ctx: u32) -> Option<Pending> {
    IN_FLIGHT.with(|f| {
        let mut f = f.borrow_mut();
        let i = f.iter().position(|e| e.ctx == ctx)?;
        Some(f.swap_remove(i).pending)
    })
}

fn response(size: usize) -> Option<Vec<u8>> {
    if size == 0 {
        return None;
    }
    // SAFETY: both out-pointers are valid for the call.
    super::abi::host_bytes(|data, len| unsafe { proxy_get_buffer_bytes(REDIS_CALL_RESPONSE, 0, size, data, len) }).ok().flatten()
}

/// A request whose answers are all in (or one failed): its config, its context, the decision
/// that waited, its deadline, and the replies or the failure.
pub(super) type Answered = (Rc<Shared>, u32, Pending, u64, Result<Vec<Reply>, String>);

/// Files one answer. Returns the request once all its answers are in. A command the callout
/// could not carry (a timeout, a connection lost) is an error reply for its rule alone, as an
/// error from Redis is: the rules that were answered still decide.
pub(super) fn file(token: u32, status: u32, size: usize) -> Option<Answered> {
    IN_FLIGHT.with(|f| {
        let mut f = f.borrow_mut();
        // The request waiting for this token, and which of its commands it answers.
        let (i, k) = f.iter().enumerate().find_map(|(i, e)| e.tokens.iter().position(|t| *t == token).map(|k| (i, k)))?;
        let reply = if status != 0 {
            Err(format!("Redis callout failed with status {status}"))
        } else {
            match response(size) {
                Some(bytes) => match wire::resp_replies(&bytes, 1) {
                    Ok(mut r) => r.pop().ok_or_else(|| "no reply".to_string()),
                    Err(e) => Err(e.to_string()),
                },
                None => Err("empty Redis callout response".into()),
            }
        };
        f[i].replies[k] = Some(reply.unwrap_or_else(Reply::Error));
        if f[i].replies.iter().any(Option::is_none) {
            return None;
        }
        let done = f.swap_remove(i);
        Some((done.shared, done.ctx, done.pending, done.deadline_us, Ok(done.replies.into_iter().flatten().collect())))
    })
}
