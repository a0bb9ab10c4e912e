//! sluice: rate limiting for Envoy and Istio as one proxy-wasm filter.
//!
//! Everything outside [`host`] is the pure core: it never calls the proxy, takes time as a
//! parameter, and runs natively in unit tests as well as inside the `.wasm`.
//!
//! ```
//! use sluice::rate::Rate;
//! let r: Rate = "100/min".parse().unwrap();
//! assert_eq!((r.limit, r.period_ms), (100, 60_000));
//! ```

pub mod breaker;
pub mod clock;
pub mod config;
pub mod engine;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod headers;
pub mod identity;
pub mod rate;
pub mod redis;
pub mod response;
pub mod store;
pub mod strategy;
pub mod websocket;

#[cfg(target_arch = "wasm32")]
pub mod host;
