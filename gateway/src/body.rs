//! Request bodies: read whole within `--max-body-bytes`, and held, with their requests'
//! headers and the answers not yet sent, across every connection within
//! `--max-body-bytes-in-flight`.
//!
//! The per-body cap alone bounds one request, not the gateway: each h2c stream of each
//! connection may hold a body of the largest size, so a token holder (a proxy's config is
//! enough) could make the gateway hold connections × streams × the cap. The budget is a byte
//! semaphore every request draws from before it keeps a byte: its headers' size, then each
//! piece of its body (a gathered body's buffer before it grows). A request that finds it spent
//! is answered 503 at once (a proxy then follows its rule's `on_error`), and what it held goes
//! back. Requests of the size the filter sends (a few hundred bytes a call, some 20 KB for a
//! gathered callout) never come near it.
//!
//! A body is charged for what it was sent, at most twice over as its buffer doubles (never past
//! its declared length): nothing is reserved ahead of its bytes, so a client cannot hold the
//! budget with bodies it promises but does not send. A piece of a body still arriving is
//! copied out of the transport's buffer rather than kept in it, so a stalled stream's one-byte
//! piece keeps no frame buffer alive; a body complete in one piece, and the headers, may keep
//! theirs until the request is answered, which the transport's own bounds cover.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody as _};
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, Response};
use hyper::body::{Frame, SizeHint};
use tokio::sync::{Semaphore, SemaphorePermit};

/// What a header field costs beside its name and value, as HTTP/2 counts a header list
/// (RFC 9113, section 6.5.2).
const FIELD_OVERHEAD: usize = 32;

#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    TooLarge,
    /// The request would pass `--max-body-bytes-in-flight`, with what the others hold.
    Busy,
    Read(String),
}

/// The bytes of requests' headers and bodies the gateway may hold at once.
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

    /// Bytes held by requests (headers and bodies) being read or whose calls are running.
    pub fn held(&self) -> usize {
        self.total.saturating_sub(self.free.available_permits())
    }

    /// Takes `bytes` until [`Budget::give_back`]; never waits.
    fn take(&self, bytes: usize) -> bool {
        let Ok(n) = u32::try_from(bytes) else { return false };
        self.free.try_acquire_many(n).map(SemaphorePermit::forget).is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.free.add_permits(bytes);
    }
}

/// An answer, holding its bytes of the budget until it is gone (sent whole, or dropped with
/// its stream or connection). On h2c a client can take no answer at all: it grants its streams
/// no flow-control window and leaves each answer in the gateway until the connection's idle
/// timeout, a hundred streams a connection (a token holder's /metrics, some 13 KB each, came
/// to 1.8 MB a connection). Held within the budget, they stop at `--max-body-bytes-in-flight`
/// with the requests' bodies. A connection's one answer out is not charged: HTTP/1.1 has no
/// more, and an operator's scrape of /metrics is answered even when the budget is spent.
pub struct HeldAnswer {
    owner: Arc<crate::Gateway>,
    bytes: usize,
    /// The connection's answers out.
    out: Arc<AtomicU32>,
    body: Body,
    /// What is left of a piece of the body given out a frame at a time.
    rest: Bytes,
}

/// The most an answer gives its transport at once. hyper hands h2 a whole piece of the body
/// once a stream has a byte of window, and h2 keeps it all until it is sent: given whole, an
/// answer left the budget as soon as its client granted one byte. In frames of this size, at
/// most one leaves it early per stream; a call's answer (some 100 bytes, a gathered callout's
/// some 600) is one frame.
const FRAME: usize = 1024;

impl HeldAnswer {
    /// `response` holding its size of `owner`'s budget (but for the connection's one answer
    /// out, counted in `out`), or `None` when the budget has no room for it.
    pub fn hold(owner: &Arc<crate::Gateway>, out: &Arc<AtomicU32>, response: Response<Body>) -> Option<Response<Body>> {
        let bytes = match out.fetch_add(1, Ordering::Relaxed) {
            0 => 0,
            _ => {
                let body = response.body().size_hint();
                let head: usize =
                    response.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + FIELD_OVERHEAD).sum();
                usize::try_from(body.exact().unwrap_or(body.lower())).unwrap_or(usize::MAX).saturating_add(head)
            }
        };
        if bytes > 0 && !owner.budget().take(bytes) {
            out.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let (owner, out) = (Arc::clone(owner), Arc::clone(out));
        Some(response.map(|body| Body::new(HeldAnswer { owner, bytes, out, body, rest: Bytes::new() })))
    }
}

impl Drop for HeldAnswer {
    fn drop(&mut self) {
        self.owner.budget().give_back(self.bytes);
        self.out.fetch_sub(1, Ordering::Relaxed);
    }
}

impl axum::body::HttpBody for HeldAnswer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                other => return other,
            }
        }
        let piece = this.rest.split_to(this.rest.len().min(FRAME));
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let (inner, rest) = (self.body.size_hint(), self.rest.len() as u64);
        match inner.exact() {
            Some(n) => SizeHint::with_exact(n.saturating_add(rest)),
            None => {
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(rest));
                hint
            }
        }
    }
}

/// What one request holds of the budget; given back when dropped (its request answered).
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

/// Reads at most `max` bytes, each covered by `budget` before it is kept, after the request's
/// headers. A declared Content-Length over the limit is refused before any byte is read; a
/// chunked body is cut off as soon as it passes the limit.
pub async fn read<'a>(
    mut body: Body,
    headers: &HeaderMap,
    max: usize,
    budget: &'a Budget,
) -> Result<(Bytes, Claim<'a>), BodyError> {
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut claim = Claim::new(budget);
    let head: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len() + FIELD_OVERHEAD).sum();
    claim.cover(head)?;
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        // Trailers carry nothing a call needs.
        let Ok(chunk) = frame.map_err(|e| BodyError::Read(e.to_string()))?.into_data() else {
            continue;
        };
        let need = buf.len() + chunk.len();
        if need > max {
            return Err(BodyError::TooLarge);
        }
        if buf.is_empty() && body.is_end_stream() {
            // The whole body in one piece (a call as the filter sends it): kept as it came.
            claim.cover(head + chunk.len())?;
            complete(chunk.len(), declared)?;
            return Ok((chunk, claim));
        }
        if need > buf.capacity() {
            // Grown as a Vec would grow itself, never past the declared length, covered first.
            let most = declared.map_or(max, |d| usize::try_from(d).unwrap_or(max).min(max));
            let capacity = buf.capacity().saturating_mul(2).min(most).max(need);
            claim.cover(head + capacity)?;
            buf.reserve_exact(capacity - buf.len());
        }
        buf.extend_from_slice(&chunk);
    }
    complete(buf.len(), declared)?;
    Ok((Bytes::from(buf), claim))
}

/// A body that ended short of its declared length (an h2 stream its client reset without an
/// error code reads as ended) is no request at all, not a shorter one.
fn complete(len: usize, declared: Option<u64>) -> Result<(), BodyError> {
    match declared {
        Some(n) if n != len as u64 => Err(BodyError::Read(format!("the body ended after {len} of its declared {n} bytes"))),
        _ => Ok(()),
    }
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
        let budget = Budget::new(128);
        // A declared length reserves nothing: pieces are charged as they come, with the headers.
        let head = "content-length".len() + 1 + FIELD_OVERHEAD;
        let (body, claim) = read(pieces(&["12", "34", "5"]), &headers(&[("content-length", "5")]), 64, &budget).await.unwrap();
        // Doubling would make 8; the declared length is all the buffer ever needs.
        assert_eq!((&body[..], budget.held()), (&b"12345"[..], head + 5));
        drop(claim);
        // The buffer doubles, each growth covered first.
        let (body, claim) = read(pieces(&["1234", "5678", "9", "0123456789"]), &HeaderMap::new(), 64, &budget).await.unwrap();
        assert_eq!((body.len(), budget.held()), (19, 32));
        // A growth the budget cannot cover refuses the body, whatever fits the per-body cap.
        let eights = ["12345678"; 9];
        let refused = read(pieces(&eights), &HeaderMap::new(), 128, &budget).await;
        assert_eq!(refused.err(), Some(BodyError::Busy));
        assert_eq!(budget.held(), 32);
        drop(claim);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_body_short_of_its_declared_length_is_unreadable() {
        let five = headers(&[("content-length", "5")]);
        for body in [Body::from("123"), pieces(&["1", "23"])] {
            let short = bytes(body, &five, 10).await;
            assert_eq!(short, Err(BodyError::Read("the body ended after 3 of its declared 5 bytes".into())));
        }
        assert_eq!(bytes(pieces(&["12", "345"]), &five, 10).await, Ok(Bytes::from_static(b"12345")));
    }

    #[tokio::test]
    async fn headers_are_charged_before_the_body() {
        let budget = Budget::new(40);
        let one = headers(&[("x-a", "bb")]);
        let (_, claim) = read(Body::from("1"), &one, 10, &budget).await.unwrap();
        assert_eq!(budget.held(), 3 + 2 + FIELD_OVERHEAD + 1);
        // Headers alone past what is left: refused before the body is read.
        assert_eq!(read(Body::from(""), &one, 10, &budget).await.err(), Some(BodyError::Busy));
        drop(claim);
        assert_eq!(budget.held(), 0);
    }
}
