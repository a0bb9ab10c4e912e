//! Calling into the guest: the proxy-wasm exports a module may have, and running one callback,
//! with the answer the SDKs assume for an export the module lacks.

use wasmtime::{Instance, Store, TypedFunc};

use crate::vm::{Callback, VmState};
use crate::HarnessError;

type CallResponseFn = TypedFunc<(i32, i32, i32, i32, i32), ()>;

#[derive(Clone)]
pub(super) struct Exports {
    context_create: Option<TypedFunc<(i32, i32), ()>>,
    vm_start: Option<TypedFunc<(i32, i32), i32>>,
    configure: Option<TypedFunc<(i32, i32), i32>>,
    tick: Option<TypedFunc<i32, ()>>,
    request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    http_call_response: Option<CallResponseFn>,
    redis_call_response: Option<TypedFunc<(i32, i32, i32, i32), ()>>,
    queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    done: Option<TypedFunc<i32, i32>>,
    log: Option<TypedFunc<i32, ()>>,
    delete: Option<TypedFunc<i32, ()>>,
}

pub(super) fn typed<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
    store: &mut Store<VmState>,
    instance: &Instance,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>, HarnessError> {
    match instance.get_func(&mut *store, name) {
        None => Ok(None),
        Some(f) => f
            .typed::<P, R>(&*store)
            .map(Some)
            .map_err(|e| HarnessError::BadExport { name: name.to_string(), message: e.to_string() }),
    }
}

impl Exports {
    pub(super) fn resolve(store: &mut Store<VmState>, i: &Instance) -> Result<Self, HarnessError> {
        Ok(Exports {
            context_create: typed(store, i, "proxy_on_context_create")?,
            vm_start: typed(store, i, "proxy_on_vm_start")?,
            configure: typed(store, i, "proxy_on_configure")?,
            tick: typed(store, i, "proxy_on_tick")?,
            request_headers: typed(store, i, "proxy_on_request_headers")?,
            request_body: typed(store, i, "proxy_on_request_body")?,
            response_headers: typed(store, i, "proxy_on_response_headers")?,
            response_body: typed(store, i, "proxy_on_response_body")?,
            http_call_response: typed(store, i, "proxy_on_http_call_response")?,
            redis_call_response: typed(store, i, "proxy_on_redis_call_response")?,
            queue_ready: typed(store, i, "proxy_on_queue_ready")?,
            done: typed(store, i, "proxy_on_done")?,
            log: typed(store, i, "proxy_on_log")?,
            delete: typed(store, i, "proxy_on_delete")?,
        })
    }
}

/// One callback into the guest.
#[derive(Debug, Clone, Copy)]
pub(super) enum GuestCall {
    ContextCreate { ctx: u32, parent: u32 },
    VmStart { root: u32, size: u32 },
    Configure { root: u32, size: u32 },
    Tick { root: u32 },
    RequestHeaders { ctx: u32, n: u32, eos: bool },
    RequestBody { ctx: u32, size: u32, eos: bool },
    ResponseHeaders { ctx: u32, n: u32, eos: bool },
    ResponseBody { ctx: u32, size: u32, eos: bool },
    HttpCallResponse { root: u32, token: u32, headers: u32, body: u32, trailers: u32 },
    RedisCallResponse { root: u32, token: u32, status: i32, size: u32 },
    QueueReady { root: u32, queue: u32 },
    Done { ctx: u32 },
    Log { ctx: u32 },
    Delete { ctx: u32 },
}

impl GuestCall {
    fn context(&self) -> u32 {
        match *self {
            GuestCall::ContextCreate { ctx, .. }
            | GuestCall::RequestHeaders { ctx, .. }
            | GuestCall::RequestBody { ctx, .. }
            | GuestCall::ResponseHeaders { ctx, .. }
            | GuestCall::ResponseBody { ctx, .. }
            | GuestCall::Done { ctx }
            | GuestCall::Log { ctx }
            | GuestCall::Delete { ctx } => ctx,
            GuestCall::VmStart { root, .. }
            | GuestCall::Configure { root, .. }
            | GuestCall::Tick { root }
            | GuestCall::HttpCallResponse { root, .. }
            | GuestCall::RedisCallResponse { root, .. }
            | GuestCall::QueueReady { root, .. } => root,
        }
    }
}

/// Runs one callback; a missing export behaves as the SDKs' defaults (continue, done).
pub(super) async fn run_call(store: &mut Store<VmState>, ex: &Exports, call: GuestCall) -> wasmtime::Result<i32> {
    {
        let vm = store.data_mut();
        vm.current = call.context();
        vm.effective = 0;
        vm.callback = match call {
            GuestCall::VmStart { .. } => Callback::VmStart,
            GuestCall::Configure { .. } => Callback::Configure,
            _ => Callback::Other,
        };
    }
    let b = |v: bool| v as i32;
    let r = match call {
        GuestCall::ContextCreate { ctx, parent } => match &ex.context_create {
            Some(f) => f.call_async(&mut *store, (ctx as i32, parent as i32)).await.map(|_| 0),
            None => Ok(0),
        },
        GuestCall::VmStart { root, size } => match &ex.vm_start {
            Some(f) => f.call_async(&mut *store, (root as i32, size as i32)).await,
            None => Ok(1),
        },
        GuestCall::Configure { root, size } => match &ex.configure {
            Some(f) => f.call_async(&mut *store, (root as i32, size as i32)).await,
            None => Ok(1),
        },
        GuestCall::Tick { root } => match &ex.tick {
            Some(f) => f.call_async(&mut *store, root as i32).await.map(|_| 0),
            None => Ok(0),
        },
        GuestCall::RequestHeaders { ctx, n, eos } => match &ex.request_headers {
            Some(f) => f.call_async(&mut *store, (ctx as i32, n as i32, b(eos))).await,
            None => Ok(0),
        },
        GuestCall::RequestBody { ctx, size, eos } => match &ex.request_body {
            Some(f) => f.call_async(&mut *store, (ctx as i32, size as i32, b(eos))).await,
            None => Ok(0),
        },
        GuestCall::ResponseHeaders { ctx, n, eos } => match &ex.response_headers {
            Some(f) => f.call_async(&mut *store, (ctx as i32, n as i32, b(eos))).await,
            None => Ok(0),
        },
        GuestCall::ResponseBody { ctx, size, eos } => match &ex.response_body {
            Some(f) => f.call_async(&mut *store, (ctx as i32, size as i32, b(eos))).await,
            None => Ok(0),
        },
        GuestCall::HttpCallResponse { root, token, headers, body, trailers } => match &ex.http_call_response {
            Some(f) => f
                .call_async(&mut *store, (root as i32, token as i32, headers as i32, body as i32, trailers as i32))
                .await
                .map(|_| 0),
            None => Ok(0),
        },
        GuestCall::RedisCallResponse { root, token, status, size } => match &ex.redis_call_response {
            Some(f) => f.call_async(&mut *store, (root as i32, token as i32, status, size as i32)).await.map(|_| 0),
            None => Ok(0),
        },
        GuestCall::QueueReady { root, queue } => match &ex.queue_ready {
            Some(f) => f.call_async(&mut *store, (root as i32, queue as i32)).await.map(|_| 0),
            None => Ok(0),
        },
        GuestCall::Done { ctx } => match &ex.done {
            Some(f) => f.call_async(&mut *store, ctx as i32).await,
            None => Ok(1),
        },
        GuestCall::Log { ctx } => match &ex.log {
            Some(f) => f.call_async(&mut *store, ctx as i32).await.map(|_| 0),
            None => Ok(0),
        },
        GuestCall::Delete { ctx } => match &ex.delete {
            Some(f) => f.call_async(&mut *store, ctx as i32).await.map(|_| 0),
            None => Ok(0),
        },
    };
    let vm = store.data_mut();
    vm.current = 0;
    vm.effective = 0;
    vm.callback = Callback::None;
    r
}
