//! Host glue: the only code that speaks the proxy-wasm ABI. It turns Envoy callbacks into calls
//! on the pure core ([`crate::engine::Limiter`]) and the core's verdicts into host calls, one
//! duty per module: the ABI's host calls ([`abi`]) and callbacks ([`dispatch`]), the logger
//! ([`logger`]), the root context (here), a request's context ([`http`]), the request view
//! ([`request`]), shared data ([`shared`]), the clock ([`time`]), metrics ([`metrics`]),
//! queued requests ([`queue`]), moving Redis commands ([`transport`]), gathering several
//! requests' commands into one call ([`batch`]), Higress' Redis callout ([`callout`]) and the
//! frames of upgraded WebSocket connections ([`websocket`]).
//!
//! Every host call answers a `Result`: a host error is handled where it happens, never a trap.

mod abi;
mod batch;
#[cfg(feature = "redis-callout")]
mod callout;
mod dispatch;
mod http;
mod logger;
mod metrics;
mod queue;
mod request;
mod shared;
mod state;
mod time;
mod transport;
mod websocket;

use std::rc::Rc;
use std::time::Duration;

use abi::BufferType;

use crate::config::Transport;
use crate::engine::Limiter;
use metrics::Metrics;
use state::Shared;

/// How often queued requests are looked at, when a rule queues. Releases are at most this late.
const QUEUE_TICK: Duration = Duration::from_millis(5);
/// How often counted metrics reach Envoy otherwise. Batching saves a host call per request;
/// Envoy's stats lag by at most this much.
const FLUSH_TICK: Duration = Duration::from_micros(crate::clock::WORKER_SKEW_US);

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
}

impl Root {
    /// Calls sent from the root: gathered ones. A WebSocket message's call is sent as its
    /// connection's own context, even when a root's tick released its stream
    /// (`websocket::release_due`), and is answered there, never here; one that came here
    /// anyway would still find its connection.
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        if !batch::answer(token_id, num_headers, body_size) {
            websocket::answer_at_root(token_id, num_headers, body_size);
        }
    }

    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = match abi::get_buffer(BufferType::PluginConfiguration, 0, size) {
            Ok(Some(b)) => b,
            Ok(None) => Vec::new(),
            Err(status) => {
                log::error!("sluice: cannot read the plugin configuration: {status:?}");
                return false;
            }
        };
        let config = match crate::config::compile_json(&bytes) {
            Ok(config) => config,
            Err(errors) => {
                // One log line per problem, then a summary Envoy shows when it rejects the config.
                for e in errors.iter() {
                    log::error!("sluice: invalid configuration: {e}");
                }
                log::error!("sluice: configuration rejected with {} error(s)", errors.len());
                return false;
            }
        };
        if !cfg!(feature = "redis-callout") && config.redis.as_ref().is_some_and(|r| r.transport == Transport::RedisCallout) {
            log::error!(
                "sluice: invalid configuration: redis.transport: \"redis_callout\": this build reaches Redis \
                 through HTTP callouts; expected \"http\" (Redis callouts need Higress and the \
                 sluice-redis-callout.wasm build)"
            );
            return false;
        }
        let limiter = Limiter::new(config);
        let tick = if limiter.queues() { QUEUE_TICK } else { FLUSH_TICK };
        if abi::set_tick_period(tick).is_err() {
            log::error!("sluice: cannot set the tick period (queued requests, metrics)");
            return false;
        }
        #[cfg(feature = "redis-callout")]
        if let Some(r) = limiter.redis().filter(|r| r.transport == Transport::RedisCallout) {
            if let Err(e) = callout::init(&r.cluster, r.token.as_deref(), r.timeout_ms) {
                log::error!("sluice: invalid configuration: redis.cluster: {:?}: {e}", r.cluster);
                return false;
            }
        }
        if limiter.redis().is_some_and(|r| r.transport == Transport::Http) {
            batch::register();
        }
        let metrics = Metrics::define(&limiter);
        log::info!("sluice: configured {} rule(s)", limiter.rules().len());
        let clock_key = format!("{}:clock", limiter.namespace());
        time::sync(&clock_key);
        let shared = Rc::new(Shared { limiter, metrics, clock_key });
        self.shared = Some(shared);
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        batch::on_queue_ready(queue_id);
    }

    fn on_tick(&mut self) {
        // The root the queue woke went away (its listener removed): this one takes it over.
        let gathers = self.shared.as_ref().and_then(|s| s.limiter.redis()).is_some_and(|r| r.transport == Transport::Http);
        if gathers && batch::take_orphaned() {
            batch::register();
        }
        // A gathered call whose wake-up the host lost goes now, at most one tick late.
        batch::on_tick();
        metrics::flush();
        if let Some(shared) = &self.shared {
            time::sync(&shared.clock_key);
        }
        let now = time::now_us();
        queue::release_due(now);
        websocket::release_due(now);
    }

    fn create_http_context(&self, context_id: u32) -> http::Http {
        http::Http::new(self.shared.clone(), context_id)
    }
}

/// Higress' Redis callout answers at the root: the request it completes is carried on here, as
/// its own context would after an HTTP callout.
#[cfg(feature = "redis-callout")]
#[no_mangle]
pub extern "C" fn proxy_on_redis_call_response(root_context_id: u32, token: u32, status: u32, size: usize) {
    let Some((shared, ctx, pending, deadline, replies)) = callout::file(token, status, size) else { return };
    let heard = &mut crate::engine::Heard::default();
    let now = time::now_us();
    dispatch::as_active(root_context_id, || {
        http::answered_at_root(&shared, ctx, (pending, deadline), http::Answer::Replies(replies), now, heard);
    });
    shared.limiter.tell(heard, &shared::EnvoyShared, now);
}
