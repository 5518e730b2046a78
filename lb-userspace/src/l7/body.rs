//! The body of a response to a client: the backend's, streamed, or a short one of the
//! balancer's own (an error, a redirect). It carries what must last as long as the response
//! does: the request's place in its client connection's clock, its count on the backend (least
//! outstanding requests), and the HTTP/1.1 connection it came on, which goes back to the pool
//! once the body has been read to its end (and is closed otherwise).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::{
    Response, StatusCode,
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::http1,
    header::{self, HeaderValue},
};

use super::{
    balance::{Outstanding, Upstream},
    conn::InFlight,
    upstream::UpBody,
};

/// What a response holds on to until its body ends.
#[derive(Debug, Default)]
pub struct Held {
    pub in_flight: Option<InFlight>,
    pub outstanding: Option<Outstanding>,
    /// The HTTP/1.1 connection to give back once the body ended.
    pub connection: Option<(Arc<Upstream>, http1::SendRequest<UpBody>)>,
}

impl Held {
    /// The body ended: the request was answered whole, and the connection can take the next
    /// request.
    fn release(&mut self) {
        if let Some(in_flight) = &mut self.in_flight {
            in_flight.answered();
        }
        if let Some((upstream, mut send)) = self.connection.take() {
            if send.is_ready() {
                upstream.conns.check_in(send);
            } else {
                // The connection's task may not have seen the end of the response yet.
                tokio::spawn(async move {
                    if send.ready().await.is_ok() {
                        upstream.conns.check_in(send);
                    }
                });
            }
        }
    }
}

/// A response body to a client.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Either<Incoming, Full<Bytes>>,
    held: Held,
}

impl ProxyBody {
    pub fn streamed(body: Incoming, held: Held) -> Self {
        Self::new(Either::Left(body), held)
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::new(Either::Right(Full::new(bytes.into())), Held::default())
    }

    /// Keeps the request counted on its client connection until this body ends; dropped
    /// before its end, it counts as cancelled.
    pub fn hold_in_flight(&mut self, mut in_flight: InFlight) {
        if self.inner.is_end_stream() {
            in_flight.answered();
        }
        self.held.in_flight = Some(in_flight);
    }

    fn new(inner: Either<Incoming, Full<Bytes>>, mut held: Held) -> Self {
        if inner.is_end_stream() {
            held.release();
        }
        Self { inner, held }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Either::Left(body) => Pin::new(body).poll_frame(cx),
            Either::Right(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        };
        // hyper stops polling a body that says it has ended (its Content-Length is met, or
        // HTTP/2's END_STREAM came) rather than waiting for `None`: release on either.
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => false,
        };
        if ended {
            this.held.release();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The balancer's own short answer: the status and its reason as plain text. It names no
/// backend.
pub fn error_response(status: StatusCode) -> Response<ProxyBody> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(ProxyBody::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
