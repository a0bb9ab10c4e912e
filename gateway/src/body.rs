//! Request bodies: read whole within `--max-body-bytes`, and held, across every connection,
//! within `--max-body-bytes-in-flight`.
//!
//! The per-body cap alone bounds one request, not the gateway: each h2c stream of each
//! connection may hold a body of the largest size, so a token holder (a proxy's config is
//! enough) could make the gateway hold connections × streams × the cap. The budget is a byte
//! semaphore every body draws from before it keeps a byte; a body that finds it spent is
//! answered 503 at once (a proxy then follows its rule's `on_error`), and what it held goes
//! back. Bodies of the size the filter sends (a few hundred bytes a call) never come near it.

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_LENGTH;
use axum::http::HeaderMap;
use futures_util::StreamExt as _;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Most bytes reserved for a body before they arrive.
const PREALLOCATE_MAX: usize = 16 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    TooLarge,
    /// The gateway already holds `--max-body-bytes-in-flight` bytes of bodies.
    Busy,
    Read(String),
}

/// The bytes of bodies the gateway may hold at once.
pub struct Budget {
    free: Semaphore,
    total: usize,
}

impl Budget {
    pub fn new(total: usize) -> Self {
        let total = total.min(Semaphore::MAX_PERMITS);
        Budget { free: Semaphore::new(total), total }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes held by bodies being read or whose calls are running.
    pub fn held(&self) -> usize {
        self.total.saturating_sub(self.free.available_permits())
    }
}

/// What one body holds of the budget; given back when dropped (its request answered).
pub struct Claim<'a> {
    budget: &'a Budget,
    permit: Option<SemaphorePermit<'a>>,
    bytes: usize,
}

impl<'a> Claim<'a> {
    fn new(budget: &'a Budget) -> Self {
        Claim { budget, permit: None, bytes: 0 }
    }

    /// Makes the claim cover `bytes` in all, before they are kept; never waits.
    fn cover(&mut self, bytes: usize) -> Result<(), BodyError> {
        let Some(more) = bytes.checked_sub(self.bytes).filter(|&m| m > 0) else {
            return Ok(());
        };
        let more32 = u32::try_from(more).map_err(|_| BodyError::TooLarge)?;
        let permit = self.budget.free.try_acquire_many(more32).map_err(|_| BodyError::Busy)?;
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
        self.bytes = bytes;
        Ok(())
    }
}

/// Reads at most `max` bytes, each covered by `budget` before it is kept. A declared
/// Content-Length over the limit is refused before any byte is read; a chunked body is cut off
/// as soon as it passes the limit.
pub async fn read<'a>(body: Body, headers: &HeaderMap, max: usize, budget: &'a Budget) -> Result<(Bytes, Claim<'a>), BodyError> {
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut claim = Claim::new(budget);
    let mut stream = body.into_data_stream();
    // A body that arrives in one piece (the usual case: a call is some 200 bytes) is kept as
    // it came, without a copy; only a body in several pieces is gathered into one buffer.
    let mut whole = Bytes::new();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        let held = whole.len() + buf.len();
        if held + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        if held == 0 {
            claim.cover(chunk.len())?;
            whole = chunk;
            continue;
        }
        if buf.is_empty() {
            // A declared length is a promise, not bytes: reserving all of it up front would let
            // clients that never send their bodies make the gateway hold memory for them.
            let reserve = declared.map_or(0, |l| usize::try_from(l).unwrap_or(usize::MAX));
            let capacity = reserve.min(max).min(PREALLOCATE_MAX).max(held + chunk.len());
            claim.cover(capacity)?;
            buf.reserve_exact(capacity);
            buf.extend_from_slice(&whole);
            whole = Bytes::new();
        } else if buf.len() + chunk.len() > buf.capacity() {
            // Grown as a Vec would grow itself, but covered first.
            let capacity = buf.capacity().saturating_mul(2).max(buf.len() + chunk.len()).min(max);
            claim.cover(capacity)?;
            buf.reserve_exact(capacity - buf.len());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((if buf.is_empty() { whole } else { Bytes::from(buf) }, claim))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn pieces(parts: &[&'static str]) -> Body {
        let parts: Vec<Result<Bytes, std::io::Error>> = parts.iter().map(|p| Ok(Bytes::from_static(p.as_bytes()))).collect();
        Body::from_stream(futures_util::stream::iter(parts))
    }

    async fn bytes(body: Body, headers: &HeaderMap, max: usize) -> Result<Bytes, BodyError> {
        let budget = Budget::new(1 << 20);
        read(body, headers, max, &budget).await.map(|(b, _)| b)
    }

    #[tokio::test]
    async fn body_limits_declared_and_chunked() {
        assert_eq!(bytes(Body::from("1234"), &HeaderMap::new(), 4).await, Ok(Bytes::from_static(b"1234")));
        let declared = bytes(Body::empty(), &headers(&[("content-length", "5")]), 4).await;
        assert_eq!(declared, Err(BodyError::TooLarge));
        // No Content-Length: the stream itself is cut at the limit.
        assert_eq!(bytes(pieces(&["123", "45"]), &HeaderMap::new(), 4).await, Err(BodyError::TooLarge));
        // Several pieces within the limit are gathered in order, empty ones included.
        assert_eq!(bytes(pieces(&["", "12", "", "3", "45"]), &HeaderMap::new(), 5).await, Ok(Bytes::from_static(b"12345")));
    }

    #[tokio::test]
    async fn bodies_hold_the_budget_until_their_claims_are_dropped() {
        let budget = Budget::new(10);
        let (first, claim) = read(Body::from("123456"), &HeaderMap::new(), 10, &budget).await.unwrap();
        assert_eq!((first.len(), budget.held()), (6, 6));
        // Five more bytes would pass the budget: refused, and the refused body holds nothing.
        assert_eq!(read(Body::from("12345"), &HeaderMap::new(), 10, &budget).await.err(), Some(BodyError::Busy));
        assert_eq!(budget.held(), 6);
        let (_, small) = read(Body::from("1234"), &HeaderMap::new(), 10, &budget).await.unwrap();
        assert_eq!(budget.held(), 10);
        drop((claim, small));
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_gathered_body_covers_its_buffer_before_it_grows() {
        let budget = Budget::new(64);
        // Pieces gathered into one buffer: it holds what the declared length reserved.
        let declared = headers(&[("content-length", "40")]);
        let (body, claim) = read(pieces(&["12", "34"]), &declared, 64, &budget).await.unwrap();
        assert_eq!((&body[..], budget.held()), (&b"1234"[..], 40));
        drop(claim);
        // Without a declared length the buffer doubles, each growth covered first.
        let (body, claim) = read(pieces(&["1234", "5678", "9", "0123456789"]), &HeaderMap::new(), 64, &budget).await.unwrap();
        assert_eq!((body.len(), budget.held()), (19, 32));
        // A growth the budget cannot cover refuses the body, whatever fits the per-body cap.
        let eights = ["12345678"; 5];
        let refused = read(pieces(&eights), &HeaderMap::new(), 64, &budget).await;
        assert_eq!(refused.err(), Some(BodyError::Busy));
        drop(claim);
        assert_eq!(budget.held(), 0);
    }
}
