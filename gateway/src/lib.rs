//! sluice-gateway: a stateless HTTP service that runs sluice's decision script, and nothing
//! else, on a standalone Redis or a Redis Cluster, for requests in the Upstash REST dialect.
//!
//! Stock Envoy lets a Wasm filter make HTTP callouts but not Redis calls, so the sluice filter
//! posts its script calls here. The gateway holds no limiter state and makes no decisions: it
//! checks each call, runs it on Redis and maps the reply to JSON. It knows the script from the
//! source the filter is built from (the `sluice` crate), loads it into Redis itself and accepts
//! only that script's calls, exactly as the filter makes them.
//!
//! # Endpoints
//!
//! | request | answer |
//! |---|---|
//! | `POST /` body `["EVALSHA", sha, "1", key, strategy, limit, period_ms, cost, p1, p2]` | `{"result": …}` (200) or `{"error": "…"}` |
//! | `POST /pipeline` body `[[…], […]]`, one call each | `[{"result": …}, {"error": "…"}]`, one per call, in order |
//! | `GET /healthz` | 200 `{"status":"ok",…,"script":sha,"function":name,"calls":"FCALL"\|"EVALSHA","age_ms":…}` when Redis answered PING within `--timeout-ms`, else 503 `{"status":"unavailable","error":…}`; one probe answers for `--health-cache-ms` |
//! | `GET /metrics` | Prometheus text: requests by endpoint and status, calls by command (as sent, and as run on Redis), refusals by reason, script and library loads by trigger and outcome, Redis errors by kind, in-flight gauge, latency histogram, connections (open, refused at the cap, by protocol), clients too slow by phase, health probes |
//!
//! ```text
//! $ curl -s -H 'Authorization: Bearer s3cret' http://127.0.0.1:7379/pipeline -d \
//!     '[["EVALSHA","<sha>","1","shop:{api:00000000000000ab}:0.0000dead","fixed_window","5","60000","1","0","0"]]'
//! [{"result":[1,[1,4,41520,0,0,41520]]}]
//! $ curl -s -H 'Authorization: Bearer s3cret' http://127.0.0.1:7379/ -d '["EVAL","redis.call(\"FLUSHALL\")","0"]'
//! {"error":"ERR sluice-gateway: not sluice's decision script (expected SHA <sha>)"}
//! ```
//!
//! # What runs
//!
//! * **Only sluice's decision script** ([`sluice::redis::script::SCRIPT`], SHA in `/healthz`,
//!   `/metrics` and the start-up log). A command is accepted when
//!   [`sluice::redis::script::check`] finds it to be that script's call as the filter makes it:
//!   `EVALSHA <sha>` (or `EVAL` with the script's exact text), 1 to 8 keys of the shape
//!   `<namespace>:{<rule>:<16 hex>}:<i>.<8 hex>`, all of one rule, identity and fingerprint,
//!   six arguments per key (a strategy of the catalogue, limit, period, cost ≥ 1, two
//!   parameters; decimal integers within the config compiler's bounds that a Lua number holds
//!   exactly; one strategy, cost and pair of parameters for all of a call's limits), optionally
//!   `dry`. Every other
//!   script text or SHA, command (`PING`, `SCRIPT …`, `FLUSHALL`, …), key or argument layout,
//!   and the trailing clock override only the test build of the script knows, is refused with
//!   400 naming what is wrong; in a pipeline the whole request is refused (naming the command's
//!   index) and nothing runs. Refusals are counted in `sluice_gateway_refused_total{reason}`
//!   (`command`, `script`, `keys`, `arguments`, and `json`, `shape`, `pipeline` for bodies
//!   that are not a command or pipeline at all).
//! * **Always the gateway's own code**: an accepted call runs as the command of sluice's Redis
//!   module where every primary has it, else as `FCALL` of the gateway's function library
//!   ([`sluice::redis::script::library`], the same script registered as a Redis 7 function, so
//!   Redis defines the strategies once instead of on every call) where Redis has functions,
//!   else as `EVALSHA` of the gateway's own SHA, whichever form it came in
//!   (`--redis-calls auto|module|fcall|evalsha`; `auto` asks for the module, then tries the
//!   library with the first load that reaches Redis, on a Cluster on every primary). No script text a client sends reaches
//!   Redis. Counted in `sluice_gateway_redis_calls_total{command}`.
//! * **One batch per round trip**: with `FCALL`, the calls of one pipeline (on a Cluster,
//!   those of one slot), cut into runs of bounded work ([`command::work_runs`]: most pipelines
//!   are one run), run as one `FCALL` of the library's batch function per run, which decides them
//!   in order exactly as if each were its own call, and answers each in place (an error raised
//!   in one is that call's alone). Redis pays dispatch, the Lua entry and `TIME` once per
//!   batch (`--batch-calls false`: one `FCALL` per call). Counted in
//!   `sluice_gateway_redis_batches_total` and `sluice_gateway_batched_calls_total`.
//!   During a Cluster slot migration, calls of that slot sent at once (from one pipeline or
//!   from several callouts) were seen to come back with the ASK redirect itself as their
//!   answer: the client lost it. Such a call ran nowhere, so it is sent again, up to three
//!   times within the request's timeout (counted in `sluice_gateway_redirect_retries_total`).
//!   A call answered `CLUSTERDOWN` (a node holding no owner for its slot, as during a
//!   failover) ran nowhere either: it is sent again up to three times, after growing pauses
//!   and within half the timeout (`sluice_gateway_cluster_down_retries_total`).
//!   A primary that hangs gives the Cluster client no error to learn a failover from: after 8
//!   requests within 5 s ran out of `--timeout-ms` (at most once every 2 s), a connection is
//!   made afresh in the background from the nodes that answer, and replaces the old one once
//!   up (`sluice_gateway_cluster_reconnects_total`).
//! * **The gateway loads what it calls** (`FUNCTION LOAD REPLACE`, or `SCRIPT LOAD`): at
//!   start, best effort (Redis may be down; with `auto`, a health probe that finds Redis up, or
//!   the first call that meets NOSCRIPT, then tries again), on a Cluster on every primary; and
//!   when a call finds it missing (`ERR Function not found` or `NOSCRIPT`: a restarted Redis, a
//!   `FUNCTION FLUSH` or `SCRIPT FLUSH`, a failover to a replica that never had the script;
//!   Redis passes functions on to replicas, scripts not), on the node that answered, then runs
//!   that call once more, within the request's `--timeout-ms`. A call that found it missing did
//!   not run, so it is never counted twice; in a standalone pipeline only those calls run
//!   again, after the others. Concurrent calls that find it missing on one target (the server,
//!   or a Cluster slot) share one load. Neither error reaches the client, so a filter never
//!   has to send the script's text. Loads are counted in
//!   `sluice_gateway_library_loads_total` and `sluice_gateway_script_loads_total`
//!   `{trigger,outcome}`.
//! * **What the token still allows**: a token holder can run the script on any key of
//!   sluice's shape with any strategy and rate, that is, spend any identity's limits in any
//!   namespace (push an identity into 429s), start its counts over (a call with another
//!   strategy or period overwrites the state the rule's own calls then read as fresh), read
//!   them (a `dry` call), and make Redis hold such keys for as long as a strategy's state
//!   lasts. For the window and log strategies that is at most two of the periods it names
//!   (each at most 366 days); for the bucket strategies it is their level (in requests) over
//!   the limit, times the period. [`sluice::redis::script::check`] bounds level × period by
//!   2^53, not the lifetime: a call with a limit of 1 and a large `burst` or `max_debt` makes a
//!   key live up to 2^53 ms, some 285,000 years.
//!   It cannot touch a key of any other shape, run other code, or change the script. Keep the
//!   token as secret as the limits matter. Reset and introspection, when they come, will be
//!   narrow operations of their own, never a general `EVAL`.
//! * **Pointing the filter at Upstash instead** (the dialect is Upstash's, so the filter can
//!   use Upstash or a compatible service directly): that service holds the token and runs
//!   whatever its holder sends; the protection is only that the filter sends nothing but its
//!   own script (`EVALSHA`, and the script's text after a NOSCRIPT).
//!
//! # Dialect decisions
//!
//! * **Arguments**: JSON strings are sent as their UTF-8 bytes, JSON numbers as their JSON text;
//!   any other JSON type is a 400.
//! * **Replies**: integer → number; bulk string → string; nil → `null`; array → array; status
//!   → string; RESP3 types (not used: the gateway speaks RESP2) map to the nearest JSON. An
//!   error reply (the script refusing its arguments, `WRONGTYPE` on a key holding something
//!   else) keeps Redis' text exactly, code first; an error nested in an array becomes
//!   `{"error": "…"}` in place.
//! * **Bytes that are not UTF-8**: never lossy. With the request header
//!   `Upstash-Encoding: base64` (as Upstash has it) every string in the result is standard
//!   base64, except the status `"OK"`; error texts stay plain. Without that header, a reply
//!   holding non-UTF-8 bytes becomes an error telling the client to send it. (The script
//!   answers integers only; the header is kept for clients written against Upstash.)
//! * **Errors the gateway makes** start with `ERR sluice-gateway:`, so they cannot be mistaken
//!   for Redis' own. Status codes on `POST /`: 400 for a refused request or a command that
//!   failed in Redis (as Upstash), 401 without the right token, 413 for a body over
//!   `--max-body-bytes`, 503 past `--max-body-bytes-in-flight`, 502 when
//!   Redis cannot be reached, 504 past `--timeout-ms`. On
//!   `POST /pipeline` per-command failures are entries in a 200 answer; 502 only when no
//!   command reached Redis; 504 when the pipeline did not finish within the timeout (some
//!   commands may have run).
//! * **Pipelines on a standalone Redis** go as one batch per run on the shared multiplexed
//!   connection: one round trip per run, run in order. **On a Cluster** calls may live on different nodes, so they
//!   are run per call through the cluster client: calls on the same slot one after another, in
//!   order, calls on different slots concurrently. Replies are always returned in request
//!   order. The gateway's own `PING` (for `/healthz`) reaches every primary, so /healthz is 200
//!   only when the whole cluster answers.
//! * **Auth**: with `--token`/`SLUICE_GATEWAY_TOKEN`, `POST /` and `POST /pipeline` need
//!   `Authorization: Bearer <token>` (compared in constant time); `/healthz` and `/metrics`
//!   stay open for probes and scrapers. Upstash's `_token` query parameter is not supported.
//!   Without a token the gateway listens on loopback only: any other `--listen` address makes
//!   it refuse to start.
//! * **Transport**: HTTP/1.1 with keep-alive (Envoy's default protocol for a cluster) and h2c
//!   (HTTP/2 with prior knowledge, no TLS: Envoy with `http2_protocol_options` on the
//!   cluster) on the same port, told apart by the connection's first bytes. On h2c each
//!   stream is one request with the same limits; many requests share a connection.
//!
//! # Limits
//!
//! `--max-body-bytes` (413, checked on Content-Length and while a chunked body streams),
//! `--max-body-bytes-in-flight` (64 MiB held by all requests' headers and bodies at once,
//! and by answers not yet sent beyond each connection's first, whatever the connections and
//! streams; 503 at once past it: module [`body`]),
//! `--max-pipeline` (400), `--timeout-ms` (504; also bounds connecting to Redis), and on
//! SIGTERM/SIGINT a drain of requests in flight bounded by `--shutdown-grace-ms`.
//!
//! Against slow or greedy clients (module [`conn`]): `--max-connections` (10,000; past it a
//! connection is closed as soon as it is accepted, after a best-effort 503, and the open-file
//! limit is raised to fit), `--header-read-timeout-ms` (5 s for the request line and headers,
//! counted from the connection's opening, or from the first byte of a later request; closed
//! without an answer), `--body-read-timeout-ms` (10 s for the whole body; 408 and closed),
//! `--idle-timeout-ms` (90 s without a request, or without the client taking a byte of its
//! answer; closed: keep it above the client pool's own idle timeout; a connection none of
//! whose requests showed the token is closed after its answers instead, and idle after the
//! header deadline, and on h2c has only its first stream routed), `--max-header-bytes`
//! (16 KiB; 431). A declared body length reserves nothing before bytes arrive, and a body
//! short of it is refused (400); an HTTP/1.1 connection reads at most 64 KiB at once (or the
//! largest head and 8 KiB). On h2c:
//! `--max-concurrent-streams` (100; more are refused with `REFUSED_STREAM`), a header list of
//! at most `--max-header-bytes` (431 on the stream; far over it, h2 ends the connection), the
//! body limit and deadline per stream (408 ends the stream, not the connection), the head
//! deadline until the first request, the idle deadline while no stream is in progress.
//! `/healthz` costs Redis at most one PING per `--health-cache-ms` (module [`health`]). In
//! Redis, a pipeline runs as scripts that each read and rewrite at most
//! [`sluice::redis::script::MAX_LOG_WORK`] sliding-log entries and read at most
//! [`sluice::redis::script::MAX_RUN_KEYS`] keys ([`command::work_runs`]): however long the logs
//! the keys hold, a script's work is bounded, with other clients served between scripts, where
//! before one request could hold Redis for the seconds after which it answers everyone BUSY.
//!
//! # Load
//!
//! `gateway/bench/pipeline-evalsha.lua` drives `POST /pipeline` with one sluice call per
//! request under `wrk` (usage in the file).
//!
//! # Embedding
//!
//! ```no_run
//! # async fn demo() -> Result<(), sluice_gateway::GatewayError> {
//! use clap::Parser as _;
//! let config = sluice_gateway::Config::parse_from([
//!     "sluice-gateway", "--listen", "127.0.0.1:7379", "--redis-url", "redis://127.0.0.1:6379",
//! ]);
//! let stop = async { let _ = tokio::signal::ctrl_c().await; };
//! sluice_gateway::Gateway::run(&config, stop).await
//! # }
//! ```

pub mod backend;
pub mod body;
pub mod command;
pub mod config;
pub mod conn;
pub mod health;
pub mod metrics;
pub mod reply;
pub mod server;

pub use config::Config;
pub use server::{Gateway, GatewayError};

/// Takes `m` even when a thread panicked holding it: what the gateway keeps behind a lock
/// (counters, the health cache, a connection's handle) is whole after any panic, and a gateway
/// that stopped answering over one would send every proxy to `on_error`.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
