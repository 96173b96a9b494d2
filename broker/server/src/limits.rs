//! Limits against abuse that need bookkeeping of their own: long-lived
//! streams per connection, the publish rate per principal, and the name
//! of the message size limit in tonic's refusals. (Sizes, batch lengths,
//! credit and buffers are checked where they are used; the HTTP/2 limits
//! are set on the server in `server.rs`.)

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    num::NonZeroU32,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tonic::Status;

use crate::error::{BrokerError, Result};

/// Open Publish and Subscribe streams per client connection
/// (`limits.max_streams_per_connection`). A connection is its remote
/// address: one TCP connection has one.
#[derive(Debug)]
pub struct StreamsPerConnection {
    max: usize,
    open: Arc<Mutex<HashMap<SocketAddr, usize>>>,
}

/// One stream's place in its connection's count; released on drop.
#[derive(Debug)]
pub struct StreamSlot {
    peer: Option<SocketAddr>,
    open: Arc<Mutex<HashMap<SocketAddr, usize>>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let Some(peer) = self.peer else { return };
        let mut open = self.open.lock().expect("stream count lock");
        if let Some(n) = open.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                open.remove(&peer);
            }
        }
    }
}

impl StreamsPerConnection {
    pub fn new(max: usize) -> Self {
        StreamsPerConnection {
            max,
            open: Arc::default(),
        }
    }

    /// Takes a slot for a new stream from `peer`, or RESOURCE_EXHAUSTED
    /// naming the limit. Without a peer address (not a TCP connection)
    /// nothing is counted.
    pub fn open(&self, peer: Option<SocketAddr>) -> Result<StreamSlot> {
        let slot = StreamSlot {
            peer,
            open: self.open.clone(),
        };
        let Some(p) = peer else { return Ok(slot) };
        let mut open = self.open.lock().expect("stream count lock");
        let n = open.entry(p).or_insert(0);
        if *n >= self.max {
            drop(open);
            // Not counted: dropping this slot must not release one.
            let mut slot = slot;
            slot.peer = None;
            drop(slot);
            return Err(BrokerError::ResourceExhausted(format!(
                "limits.max_streams_per_connection = {} Publish and Subscribe streams are already open on this connection; open another connection or close a stream",
                self.max
            )));
        }
        *n += 1;
        Ok(slot)
    }
}

/// Events per second each principal may publish
/// (`limits.publish_rate_per_principal`, with bursts of
/// `limits.publish_burst`); `None` when unlimited.
pub struct PublishRate {
    limiter: Option<DefaultKeyedRateLimiter<Arc<str>>>,
    rate: u32,
}

impl std::fmt::Debug for PublishRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublishRate({}/s)", self.rate)
    }
}

impl PublishRate {
    /// `rate` events/s (0: unlimited), `burst` events at once (0: `rate`).
    pub fn new(rate: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(rate).map(|r| {
            let b = NonZeroU32::new(burst).unwrap_or(r);
            RateLimiter::keyed(Quota::per_second(r).allow_burst(b))
        });
        PublishRate { limiter, rate }
    }

    /// Takes `events` from `principal`'s allowance, or RESOURCE_EXHAUSTED
    /// naming the limit (nothing is written then).
    pub fn take(&self, principal: &Arc<str>, events: usize) -> Result<()> {
        let Some(l) = &self.limiter else {
            return Ok(());
        };
        let n = NonZeroU32::new(events.min(u32::MAX as usize) as u32).unwrap_or(NonZeroU32::MIN);
        match l.check_key_n(principal, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(BrokerError::ResourceExhausted(format!(
                "limits.publish_rate_per_principal = {} events/s exceeded by principal {principal:?}; retry after a pause",
                self.rate
            ))),
            Err(_) => Err(BrokerError::ResourceExhausted(format!(
                "a request of {events} events is larger than limits.publish_burst allows at once"
            ))),
        }
    }
}

/// tonic refuses a request message larger than the service's decoding
/// limit with OUT_OF_RANGE "decoded message length too large", which
/// names no setting. gRPC's own servers answer RESOURCE_EXHAUSTED; this
/// does too, naming `limits.max_message_bytes`. Anything else passes as
/// it is.
pub fn name_message_limit(s: Status, max_message_bytes: usize) -> Status {
    if s.code() == tonic::Code::OutOfRange && s.message().contains("message length too large") {
        let found = s
            .message()
            .split("found ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or("?");
        return Status::resource_exhausted(format!(
            "a request message of {found} bytes exceeds limits.max_message_bytes = {max_message_bytes}"
        ));
    }
    s
}

/// The broker service with unary refusals of oversized messages renamed
/// by [`name_message_limit`] (streams map their inbound errors
/// themselves). tonic answers those before any handler runs, as a
/// trailers-only response, so this is the one place to see them.
#[derive(Clone)]
pub struct NamedMessageLimit<S> {
    inner: S,
    max_message_bytes: usize,
}

impl<S> NamedMessageLimit<S> {
    pub fn new(inner: S, max_message_bytes: usize) -> Self {
        NamedMessageLimit {
            inner,
            max_message_bytes,
        }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for NamedMessageLimit<S> {
    const NAME: &'static str = S::NAME;
}

type Http<B> = tonic::codegen::http::Request<B>;
type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

impl<S, B> tonic::codegen::Service<Http<B>> for NamedMessageLimit<S>
where
    S: tonic::codegen::Service<Http<B>, Response = HttpResponse, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Http<B>) -> Self::Future {
        let (fut, max) = (self.inner.call(req), self.max_message_bytes);
        Box::pin(async move {
            let mut resp = fut.await?;
            if let Some(s) = Status::from_header_map(resp.headers())
                && s.code() == tonic::Code::OutOfRange
            {
                let named = name_message_limit(s, max);
                let headers = resp.headers_mut();
                headers.remove("grpc-message");
                let _ = named.add_header(headers);
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_counted_per_connection_and_released_on_drop() {
        let s = StreamsPerConnection::new(2);
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let a1 = s.open(Some(a)).unwrap();
        let _a2 = s.open(Some(a)).unwrap();
        let e = s.open(Some(a)).unwrap_err().to_string();
        assert!(e.contains("limits.max_streams_per_connection = 2"), "{e}");
        let _b1 = s.open(Some(b)).unwrap();
        drop(a1);
        let _a3 = s.open(Some(a)).unwrap();
        assert!(s.open(Some(a)).is_err());
        assert!(s.open(None).is_ok());
    }

    #[test]
    fn the_rate_is_per_principal_and_names_the_limit() {
        let r = PublishRate::new(10, 10);
        let (x, y): (Arc<str>, Arc<str>) = ("x".into(), "y".into());
        r.take(&x, 10).unwrap();
        let e = r.take(&x, 1).unwrap_err().to_string();
        assert!(e.contains("limits.publish_rate_per_principal = 10"), "{e}");
        r.take(&y, 5).unwrap();
        assert!(
            r.take(&y, 11)
                .unwrap_err()
                .to_string()
                .contains("publish_burst")
        );
        let open = PublishRate::new(0, 0);
        open.take(&x, 1_000_000).unwrap();
    }
}
