//! A WebSocket connection's frames through the filter: the message rules its upgrade met, the
//! [`Connection`] that follows the client's frames from the first byte and the server's once
//! its 101 is in, each client message judged by the limiter (in shared data at once, or held
//! while Redis answers), and the counts.
//!
//! Envoy hands an upgraded stream's bytes to the body callbacks, and a body held with
//! StopIterationAndBuffer grows with every later chunk until the filter lets it go; it can be
//! read and rewritten from any callback of the stream's context meanwhile (docs/architecture.md,
//! "Host facts: WebSocket frames"). A message waiting for Redis, or queued by
//! `leaky_bucket_queue`, holds the client's direction; the server's is never held.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use super::abi::{self, BufferType, Headers};

use crate::config::{Cost, Rule};
use crate::engine::{Applied, Pending, Resumed, Step, Verdict};
use crate::headers;
use crate::websocket::extensions;
use crate::websocket::{Advance, Ask, Body, Connection, Fate, HostError, Judgement, MayDrop, Policy};

use super::shared::EnvoyShared;
use super::state::Shared;
use super::time::now_us;
use super::transport::{self, Sent};

/// One upgrade's message limiting, shared by its context and the tick that releases it.
pub(super) struct Ws {
    /// The config the upgrade was decided under: its rule numbers are what `rules` holds, so
    /// the connection is judged by it to the end, whichever config a root that ticks or
    /// answers for it has (a config update, or two filter configs in one VM).
    shared: Rc<Shared>,
    /// The message rules the upgrade met, with the identity each counts against.
    rules: Vec<Applied>,
    /// Follows the frames: the client's from its first byte (a client may send frames before
    /// the 101 has reached it, and they must not pass unjudged), the server's once its 101 is in.
    conn: Option<Connection>,
    /// The server answered 101.
    upgraded: bool,
    /// A message waiting for Redis: the call, its deadline, and the frame asked about.
    waiting: Option<(Pending, u64, Ask)>,
    /// The client finished sending.
    end_of_stream: bool,
    /// The hold the tick knows about (epoch µs), so it is registered once.
    registered_until: u64,
    /// The client's stream is stopped here: the last body callback answered Pause and nothing
    /// has continued it since. Only then may the tick or a callout's answer carry it on: a
    /// stream its own next bytes let go meanwhile holds no buffer to rewrite.
    held: bool,
    /// The host would not lend or rewrite a body buffer: the frames can no longer be followed.
    failed: Option<Failed>,
}

/// What became of a connection whose frames can no longer be followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failed {
    /// An enforced rule applies: the stream is reset, so no byte goes on unjudged.
    Reset,
    /// Only shadow rules apply: the bytes go on, as they would without the filter.
    PassedThrough,
}

pub(super) type WsRef = Rc<RefCell<Ws>>;

/// A client stream held for a queued message: release time (µs), context, connection.
type Hold = (u64, u32, Weak<RefCell<Ws>>);

/// A message's Redis call out: its token, the connection's context, the connection.
type Call = (u32, u32, Weak<RefCell<Ws>>);

thread_local! {
    /// The held client streams; the tick arrives at the root, so this is the worker's table.
    static HOLDS: RefCell<Vec<Hold>> = const { RefCell::new(Vec::new()) };
    /// Every message call out, by token. Each is sent as its connection's own context (its own
    /// callbacks, or the tick's release run as it: [`release_due`]) and answered there; only
    /// [`answer_at_root`] looks a call up here, and no path sends one from a root.
    static CALLS: RefCell<Vec<Call>> = const { RefCell::new(Vec::new()) };
}

/// Remembers where the answer to call `token` goes.
fn call_out(token: u32, ctx: u32, ws: &WsRef) {
    CALLS.with(|c| c.borrow_mut().push((token, ctx, Rc::downgrade(ws))));
}

/// Forgets call `token` (answered); returns its connection's context and the connection.
fn call_in(token: u32) -> Option<(u32, Weak<RefCell<Ws>>)> {
    CALLS.with(|c| {
        let mut c = c.borrow_mut();
        let i = c.iter().position(|(t, _, _)| *t == token)?;
        let (_, ctx, ws) = c.swap_remove(i);
        Some((ctx, ws))
    })
}

/// Whether a stream is to go on or stay held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    Continue,
    Hold,
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_buffer_bytes(kind: u32, start: usize, max: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_set_buffer_bytes(kind: u32, start: usize, size: usize, data: *const u8, len: usize) -> u32;
    fn proxy_get_buffer_status(kind: u32, len: *mut usize, flags: *mut u32) -> u32;
    fn proxy_continue_stream(kind: u32) -> u32;
    fn proxy_close_stream(kind: u32) -> u32;
    fn proxy_replace_header_map_value(map: u32, key: *const u8, key_len: usize, value: *const u8, value_len: usize) -> u32;
}

/// A body buffer of the current context, through the raw calls: the SDK's own trap on a status
/// it does not expect.
struct EnvoyBody {
    kind: BufferType,
    len: usize,
}

impl EnvoyBody {
    /// The callback's buffer, or the host's refusal to say how long it is.
    fn new(kind: BufferType) -> Result<Self, HostError> {
        let (mut len, mut flags) = (0usize, 0u32);
        // SAFETY: both pointers are to locals that outlive the call.
        let status = unsafe { proxy_get_buffer_status(kind as u32, &mut len, &mut flags) };
        if status == 0 {
            Ok(EnvoyBody { kind, len })
        } else {
            Err(HostError)
        }
    }
}

impl Body for EnvoyBody {
    fn len(&self) -> usize {
        self.len
    }

    fn read(&self, start: usize, max: usize) -> Option<Vec<u8>> {
        let max = max.min(self.len.saturating_sub(start));
        if max == 0 {
            return Some(Vec::new());
        }
        // SAFETY: both out-pointers are valid for the call.
        let bytes = abi::host_bytes(|data, size| unsafe { proxy_get_buffer_bytes(self.kind as u32, start, max, data, size) });
        bytes.ok().map(Option::unwrap_or_default)
    }

    fn replace_prefix(&mut self, n: usize, with: &[u8]) -> bool {
        let n = n.min(self.len);
        // SAFETY: `with` is a live slice for the duration of the call.
        let status = unsafe { proxy_set_buffer_bytes(self.kind as u32, 0, n, with.as_ptr(), with.len()) };
        if status == 0 {
            self.len = self.len - n + with.len();
        }
        status == 0
    }
}

/// Resumes the client's direction of the current context.
fn resume_request() {
    // SAFETY: a plain call with a constant.
    let _ = unsafe { proxy_continue_stream(0) };
}

/// Resets the current context's stream, both directions (Envoy does it once the call returns).
fn reset_stream() {
    // SAFETY: a plain call with a constant.
    let _ = unsafe { proxy_close_stream(0) };
}

/// The message rules upgrade request `req` meets, or none (not an upgrade, or no rule).
pub(super) fn at_upgrade(shared: &Rc<Shared>, ctx: u32, req: &impl crate::identity::RequestInfo) -> Option<WsRef> {
    if !shared.limiter.has_message_rules() || !crate::websocket::is_upgrade_request(req) {
        return None;
    }
    let rules = shared.limiter.message_rules(req);
    if rules.is_empty() {
        return None;
    }
    let mut policies = Vec::with_capacity(rules.len());
    let mut bytes = false;
    for a in &rules {
        let Some(r) = rule(shared, a.rule) else { continue };
        policies.push(Policy::new(a.rule, &r.name, r.over_limit.notify, r.over_limit.close_after));
        bytes |= r.cost == Cost::PayloadBytes;
    }
    // Until the 101 says which extensions hold, a compressed message is not dropped.
    let conn = Connection::new(policies, bytes, false, ctx);
    let ws = Ws {
        shared: shared.clone(),
        rules,
        conn: Some(conn),
        upgraded: false,
        waiting: None,
        end_of_stream: false,
        registered_until: 0,
        held: false,
        failed: None,
    };
    Some(Rc::new(RefCell::new(ws)))
}

fn rule(shared: &Shared, index: usize) -> Option<&Rule> {
    shared.limiter.rules().nth(index)
}

/// Whether a rule the upgrade met is enforced (not shadow).
fn enforced(w: &Ws) -> bool {
    w.rules.iter().any(|a| rule(&w.shared, a.rule).is_some_and(|r| !r.shadow))
}

/// The host would not lend or rewrite a body buffer (`direction`'s): the frames can no longer
/// be followed, so no later message could be judged. With an enforced rule the connection is
/// reset, as a limiter that cannot count must not let messages through uncounted; with shadow
/// rules only it goes on untouched. Either way it is counted and logged.
fn fail(w: &mut Ws, direction: &str) -> Flow {
    w.shared.metrics.count_websocket_host_error();
    if enforced(w) {
        log::error!("sluice: Envoy would not lend or rewrite a WebSocket {direction} body; resetting the connection");
        reset_stream();
        w.failed = Some(Failed::Reset);
        Flow::Hold
    } else {
        log::warn!("sluice: Envoy would not lend or rewrite a WebSocket {direction} body; passing the connection through (shadow rules only)");
        w.failed = Some(Failed::PassedThrough);
        Flow::Continue
    }
}

/// The response's headers, every pair (Envoy's single-value read gives a name's first field
/// only, and a client reads them all); `None` when Envoy would not hand them over.
fn response_headers() -> Option<headers::Pairs> {
    headers::Pairs::parse(abi::get_header_map_pairs(Headers::Response).ok()?.unwrap_or_default())
}

fn replace_response_header(name: &str, value: &str) -> bool {
    // SAFETY: both slices are live for the duration of the call.
    let status = unsafe {
        proxy_replace_header_map_value(Headers::Response as u32, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    };
    status == 0
}

/// The server answered the upgrade: with 101 the connection's frames are followed from here.
/// When a message may be dropped, a client that would compress with context takeover is told
/// not to (see [`crate::websocket::extensions`]).
pub(super) fn at_response(ws: &WsRef) {
    let status = abi::get_map_value_bytes(Headers::Response, ":status").ok().flatten();
    if status.as_deref() != Some(b"101") {
        return;
    }
    let mut w = ws.borrow_mut();
    w.upgraded = true;
    let enforced = enforced(&w);
    let header = "sec-websocket-extensions";
    let pairs = response_headers();
    let fields = pairs
        .as_ref()
        .map(|p| p.to_vec().into_iter().filter(|(k, _)| *k == header.as_bytes()).map(|(_, v)| v).collect::<Vec<_>>());
    let may_drop = match extensions::after_upgrade(fields.as_deref(), enforced) {
        (_, Some(value)) if !replace_response_header(header, &value) => MayDrop::Uncompressed,
        (may_drop, _) => may_drop,
    };
    if let Some(conn) = w.conn.as_mut() {
        conn.set_may_drop(may_drop);
    }
}

/// What the limiter said, as a connection takes it.
fn judgement(shared: &Shared, verdict: &Verdict) -> Judgement {
    match verdict {
        Verdict::Admit { delay_ms, .. } => Judgement::Admit { delay_ms: *delay_ms },
        Verdict::Deny { outcomes, .. } => {
            let violated: Vec<_> =
                outcomes.iter().filter(|o| !o.allowed && !rule(shared, o.rule).is_some_and(|r| r.shadow)).collect();
            let retry = crate::websocket::denial_wait_ms(violated.iter().map(|o| o.retry_after_ms()));
            Judgement::Deny {
                violated: violated.iter().map(|o| o.rule).collect(),
                unchecked: violated.iter().filter(|o| o.unchecked()).map(|o| o.rule).collect(),
                retry_after_ms: retry,
            }
        }
    }
}

/// Carries out a verdict on the asked frame and counts it.
fn judge(shared: &Shared, conn: &mut Connection, ask: Ask, verdict: Verdict, now: u64) {
    let j = judgement(shared, &verdict);
    let violated = match &j {
        Judgement::Deny { violated, .. } => violated.clone(),
        Judgement::Admit { .. } => Vec::new(),
    };
    let fate = conn.judge(ask, j, now);
    shared.metrics.count_message(&verdict, fate == Fate::Admitted, ask.continuation);
    if fate == Fate::Closed {
        for r in violated {
            shared.metrics.count_closed(r);
        }
    }
}

/// Where a message's Redis decision stands.
enum Decided {
    Now(Verdict),
    /// A call is out: the decision, its deadline, the call's token.
    Waiting(Pending, u64, u32),
    /// The call went where its answer cannot come back here (see [`settle`]).
    Lost,
}

/// Sends `pending` (and retries) until there is a verdict or a call is out.
fn settle(shared: &Rc<Shared>, ctx: u32, mut pending: Pending, deadline: u64) -> Decided {
    loop {
        let step = match transport::send(shared, ctx, pending, deadline) {
            Ok(Sent::Here(p, d, token)) => return Decided::Waiting(p, d, token),
            // Redis callouts answer at the root, out of this connection's reach; the config
            // compiler refuses them for message rules, so only a bug gets here.
            Ok(Sent::Root) => return Decided::Lost,
            Err((p, why)) => shared.limiter.resume(p, Err(why), &EnvoyShared, now_us()),
        };
        match step {
            Resumed::Done(v) => return Decided::Now(v),
            Resumed::Retry(p) => pending = p,
        }
    }
}

/// A message whose decision was lost is not let through unjudged.
fn lost(conn: &mut Connection, ask: Ask, now: u64) {
    log::error!("sluice: a WebSocket message's Redis decision cannot come back to its connection; dropped");
    conn.judge(ask, Judgement::Deny { violated: Vec::new(), unchecked: Vec::new(), retry_after_ms: 1000 }, now);
}

/// Walks the client's buffer, judging every message it holds, until it may go on, must wait
/// for Redis, or is held for a queued message.
fn pump(ctx: u32, ws: &WsRef) -> Flow {
    let mut guard = ws.borrow_mut();
    let w = &mut *guard;
    let shared = &Rc::clone(&w.shared);
    let Some(conn) = w.conn.as_mut() else { return Flow::Continue };
    match w.failed {
        Some(Failed::Reset) => return Flow::Hold,
        Some(Failed::PassedThrough) => return Flow::Continue,
        None if w.waiting.is_some() => return Flow::Hold,
        None => {}
    }
    let Ok(mut body) = EnvoyBody::new(BufferType::HttpRequestBody) else { return fail(w, "request") };
    loop {
        let ask = match conn.client_advance(&mut body) {
            Ok(Advance::Ask(ask)) => ask,
            Ok(Advance::End) => break,
            Err(HostError) => return fail(w, "request"),
        };
        let now = now_us();
        match shared.limiter.start_message(&w.rules, ask.payload, ask.continuation, &EnvoyShared, now) {
            Step::Done(verdict) => judge(shared, conn, ask, verdict, now),
            Step::Redis(pending) => {
                let timeout_us = shared.limiter.redis().map_or(0, |r| r.timeout_ms.saturating_mul(1000));
                match settle(shared, ctx, pending, now.saturating_add(timeout_us)) {
                    Decided::Now(verdict) => judge(shared, conn, ask, verdict, now_us()),
                    Decided::Waiting(p, deadline, token) => {
                        call_out(token, ctx, ws);
                        w.waiting = Some((p, deadline, ask));
                        break;
                    }
                    Decided::Lost => lost(conn, ask, now),
                }
            }
        }
    }
    let now = now_us();
    match conn.client_finish(&mut body, w.end_of_stream, now) {
        Ok(false) => {
            w.registered_until = 0;
            Flow::Continue
        }
        Ok(true) => {
            let until = conn.hold_until_us();
            if w.waiting.is_none() && until > now && until != w.registered_until {
                w.registered_until = until;
                let weak = Rc::downgrade(ws);
                HOLDS.with(|h| h.borrow_mut().push((until, ctx, weak)));
            }
            Flow::Hold
        }
        Err(HostError) => fail(w, "request"),
    }
}

/// A client body chunk arrived.
pub(super) fn on_request_body(ctx: u32, ws: &WsRef, end_of_stream: bool) -> Flow {
    ws.borrow_mut().end_of_stream |= end_of_stream;
    let flow = pump(ctx, ws);
    ws.borrow_mut().held = flow == Flow::Hold;
    flow
}

/// Walks the held stream on after a callback that is not its body's (a callout's answer, the
/// tick), and continues it when nothing holds it any more.
fn carry_on(ctx: u32, ws: &WsRef) {
    if pump(ctx, ws) == Flow::Continue {
        ws.borrow_mut().held = false;
        resume_request();
    }
}

/// A server body chunk arrived: never held.
pub(super) fn on_response_body(ws: &WsRef, end_of_stream: bool) {
    let mut guard = ws.borrow_mut();
    let w = &mut *guard;
    if w.failed.is_some() || !w.upgraded {
        return;
    }
    let Some(conn) = w.conn.as_mut() else { return };
    let chunk = EnvoyBody::new(BufferType::HttpResponseBody).and_then(|mut body| conn.server_chunk(&mut body, end_of_stream));
    if chunk.is_err() {
        fail(w, "response");
    }
}

/// Whether a message of this connection waits for Redis.
pub(super) fn is_waiting(ws: &WsRef) -> bool {
    ws.borrow().waiting.is_some()
}

/// Redis answered (or failed) for the waiting message: it is judged, and the held buffer is
/// walked on; the stream resumes when nothing more holds it.
pub(super) fn on_call_response(ctx: u32, ws: &WsRef, token: u32, num_headers: usize, body_size: usize) {
    let _ = call_in(token);
    let shared = &Rc::clone(&ws.borrow().shared);
    let Some((pending, deadline, ask)) = ws.borrow_mut().waiting.take() else { return };
    let replies = transport::replies(num_headers, body_size, pending.commands.len());
    let decided = match shared.limiter.resume(pending, replies, &EnvoyShared, now_us()) {
        Resumed::Done(v) => Decided::Now(v),
        Resumed::Retry(p) => settle(shared, ctx, p, deadline),
    };
    match decided {
        Decided::Now(verdict) => {
            let mut w = ws.borrow_mut();
            if let Some(conn) = w.conn.as_mut() {
                judge(shared, conn, ask, verdict, now_us());
            }
        }
        Decided::Waiting(p, d, token) => {
            call_out(token, ctx, ws);
            ws.borrow_mut().waiting = Some((p, d, ask));
            return;
        }
        Decided::Lost => {
            if let Some(conn) = ws.borrow_mut().conn.as_mut() {
                lost(conn, ask, now_us());
            }
        }
    }
    if ws.borrow().held {
        carry_on(ctx, ws);
    }
}

/// The answer to a message's call that arrived at the root: carried on as on the connection's
/// own context, under its own config. False if the call is not one, which is always so today:
/// a tick releases a held stream as the connection's own context ([`release_due`]), so every
/// message's call is answered to the connection, never at a root.
pub(super) fn answer_at_root(token: u32, num_headers: usize, body_size: usize) -> bool {
    let Some((ctx, weak)) = call_in(token) else { return false };
    // The connection may be gone (client hung up): its drop has let go of the decision.
    if let Some(ws) = weak.upgrade() {
        if abi::set_effective_context(ctx).is_ok() {
            on_call_response(ctx, &ws, token, num_headers, body_size);
        }
    }
    true
}

/// The request waiting on Redis went away: a breaker probe gives its place back.
pub(super) fn abandon(ws: &WsRef) {
    CALLS.with(|c| c.borrow_mut().retain(|(_, _, w)| w.upgrade().is_some_and(|w| !Rc::ptr_eq(&w, ws))));
    let mut w = ws.borrow_mut();
    if let Some((p, _, _)) = w.waiting.take() {
        w.shared.limiter.abandon(&p, &EnvoyShared);
    }
}

/// Lets go of the client streams whose queued message is due (from a root's tick: each under
/// its own config).
pub(super) fn release_due(now: u64) {
    let due: Vec<(u32, Weak<RefCell<Ws>>)> = HOLDS.with(|h| {
        let mut h = h.borrow_mut();
        let (due, later): (Vec<_>, Vec<_>) = h.drain(..).partition(|(at, _, _)| *at <= now);
        *h = later;
        due.into_iter().map(|(_, ctx, w)| (ctx, w)).collect()
    });
    for (ctx, weak) in due {
        // The connection may be gone (client hung up), or its own bytes let it go since: then
        // there is nothing to release.
        let Some(ws) = weak.upgrade() else { continue };
        if !ws.borrow().held || abi::set_effective_context(ctx).is_err() {
            continue;
        }
        ws.borrow_mut().registered_until = 0;
        // As the connection's own context: a message call sent now is answered to it, whatever
        // becomes of the root whose tick this is (Envoy keeps the answer with the connection's
        // root, and a root of a config being replaced may be gone by then).
        super::dispatch::as_active(ctx, || carry_on(ctx, &ws));
    }
}
