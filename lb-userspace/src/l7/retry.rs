//! The tries of one request: when a try fails, whether the proxy tries again, where, and
//! whether the failure counts against the backend's passive health.
//!
//! [`super::proxy`] sends the request on a backend and reports each failure to [`Attempts`],
//! which answers with a [`Verdict`]: try the same backend on a new connection, try another
//! backend (the request as it is, or rebuilt from its [`ReplayHead`]), or give up with a
//! status. The proxy does the I/O, the counting and the choice of the other backend (which
//! re-pins a sticky session); the decisions are here, without I/O:
//!
//! | failure | next |
//! | --- | --- |
//! | no connection (or TLS handshake) | another backend, once; then 502 |
//! | a pooled connection the backend had closed, nothing sent | the same backend on a new connection; if that fails too, another backend, once; then 502 |
//! | the request was sent and the connection failed | another backend, once, if the request is idempotent and bodiless (replayed from its head); else 502 |
//! | no response head within `response_timeout` | 504 |
//!
//! Every failure but the first closed pooled connection (the backend closed an idle
//! connection, as it may) counts against the backend.

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::{HeaderMap, Method, Request, StatusCode, Uri, Version, http::request::Parts};

use super::upstream::UpBody;

/// How one try of a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// No connection to the backend (or its TLS handshake failed).
    Connect,
    /// A pooled connection the backend had closed, before any of the request was written: the
    /// request is intact.
    NotSent,
    /// The request was sent, at least in part, and the connection failed.
    Sent,
    /// No response head in time.
    Timeout,
}

/// Where the next try goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// The same backend, on a new connection.
    SameBackend,
    /// Another backend, if one is left (else 502), with the request as it is.
    Another,
    /// Another backend, if one is left (else 502), with the request rebuilt from its head.
    Replay,
    /// No more tries: the client gets this status.
    GiveUp(StatusCode),
}

/// What the proxy does after a failed try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Verdict {
    /// Whether passive health counts the failure against the backend.
    pub backend_failed: bool,
    pub next: Next,
}

/// The state of one request's tries.
#[derive(Debug)]
pub(super) struct Attempts {
    /// Whether the request may be sent again once it reached a backend.
    replayable: bool,
    /// A request gets one try on another backend.
    tried_another: bool,
    /// The next try takes a new connection, not a pooled one.
    fresh: bool,
}

impl Attempts {
    /// The first try of a request, which may be replayed if `replayable` (idempotent and
    /// without a body).
    pub(super) fn new(replayable: bool) -> Self {
        Self {
            replayable,
            tried_another: false,
            fresh: false,
        }
    }

    /// Whether the next try takes a new connection rather than a pooled one.
    pub(super) fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// What follows `failure` of the current try.
    pub(super) fn after(&mut self, failure: Failure) -> Verdict {
        let (backend_failed, next) = match failure {
            Failure::Connect => (true, self.elsewhere(Next::Another)),
            Failure::Timeout => (true, Next::GiveUp(StatusCode::GATEWAY_TIMEOUT)),
            Failure::NotSent if !self.fresh => {
                self.fresh = true;
                (false, Next::SameBackend)
            }
            Failure::NotSent => (true, self.elsewhere(Next::Another)),
            Failure::Sent if !self.replayable => (true, Next::GiveUp(StatusCode::BAD_GATEWAY)),
            Failure::Sent => {
                let next = self.elsewhere(Next::Replay);
                if next == Next::Replay {
                    self.fresh = false;
                }
                (true, next)
            }
        };
        Verdict {
            backend_failed,
            next,
        }
    }

    /// `next` if the request has not been on another backend yet, else 502.
    fn elsewhere(&mut self, next: Next) -> Next {
        if self.tried_another {
            return Next::GiveUp(StatusCode::BAD_GATEWAY);
        }
        self.tried_another = true;
        next
    }
}

/// The head of a request without a body whose method allows sending it twice: enough to send
/// it again after its body-less original was consumed.
#[derive(Debug)]
pub(super) struct ReplayHead {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl ReplayHead {
    /// The head of `parts` if the request may be replayed: an idempotent method and no body.
    pub(super) fn of(parts: &Parts, is_bodiless: bool) -> Option<Self> {
        (is_idempotent(&parts.method) && is_bodiless).then(|| Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        })
    }

    /// The request again, with an empty body.
    pub(super) fn request(&self) -> Request<UpBody> {
        let mut again = Request::new(Either::Right(Empty::<Bytes>::new()));
        *again.method_mut() = self.method.clone();
        *again.uri_mut() = self.uri.clone();
        *again.version_mut() = self.version;
        *again.headers_mut() = self.headers.clone();
        again
    }
}

/// The request methods that may be sent twice (RFC 9110 section 9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn verdict(backend_failed: bool, next: Next) -> Verdict {
        Verdict {
            backend_failed,
            next,
        }
    }

    const GIVE_UP: Next = Next::GiveUp(StatusCode::BAD_GATEWAY);

    #[test]
    fn a_connect_failure_tries_one_other_backend() {
        let mut attempts = Attempts::new(false);
        assert_eq!(
            attempts.after(Failure::Connect),
            verdict(true, Next::Another)
        );
        assert!(!attempts.is_fresh());
        assert_eq!(attempts.after(Failure::Connect), verdict(true, GIVE_UP));
    }

    #[test]
    fn a_closed_pooled_connection_is_retried_fresh_then_elsewhere() {
        let mut attempts = Attempts::new(false);
        assert_eq!(
            attempts.after(Failure::NotSent),
            verdict(false, Next::SameBackend)
        );
        assert!(attempts.is_fresh());
        assert_eq!(
            attempts.after(Failure::NotSent),
            verdict(true, Next::Another)
        );
        assert!(
            attempts.is_fresh(),
            "the other backend gets a new connection"
        );
        assert_eq!(attempts.after(Failure::NotSent), verdict(true, GIVE_UP));
    }

    #[test]
    fn a_sent_request_is_replayed_once_only_if_replayable() {
        let mut once = Attempts::new(false);
        assert_eq!(once.after(Failure::Sent), verdict(true, GIVE_UP));

        let mut replayable = Attempts::new(true);
        assert_eq!(replayable.after(Failure::NotSent).next, Next::SameBackend);
        assert_eq!(replayable.after(Failure::Sent), verdict(true, Next::Replay));
        assert!(
            !replayable.is_fresh(),
            "the replay may take a pooled connection"
        );
        assert_eq!(replayable.after(Failure::Sent), verdict(true, GIVE_UP));
    }

    #[test]
    fn one_other_backend_in_all() {
        let mut attempts = Attempts::new(true);
        assert_eq!(attempts.after(Failure::Connect).next, Next::Another);
        assert_eq!(attempts.after(Failure::Sent), verdict(true, GIVE_UP));
    }

    #[test]
    fn a_timeout_is_504_at_once() {
        let mut attempts = Attempts::new(true);
        assert_eq!(
            attempts.after(Failure::Timeout),
            verdict(true, Next::GiveUp(StatusCode::GATEWAY_TIMEOUT))
        );
    }

    #[test]
    fn only_bodiless_idempotent_requests_replay() {
        let head = |method: Method| Request::builder().method(method).body(()).unwrap();
        for method in [Method::GET, Method::HEAD, Method::PUT, Method::DELETE] {
            let (parts, ()) = head(method.clone()).into_parts();
            assert!(ReplayHead::of(&parts, true).is_some(), "{method}");
            assert!(ReplayHead::of(&parts, false).is_none(), "{method}");
        }
        for method in [Method::POST, Method::PATCH, Method::CONNECT] {
            let (parts, ()) = head(method.clone()).into_parts();
            assert!(ReplayHead::of(&parts, true).is_none(), "{method}");
        }
        let (mut parts, ()) = head(Method::GET).into_parts();
        parts.uri = "/x?y".parse().unwrap();
        parts.headers.insert("x-a", "1".parse().unwrap());
        let again = ReplayHead::of(&parts, true).unwrap().request();
        assert_eq!(again.uri(), "/x?y");
        assert_eq!(again.headers()["x-a"], "1");
    }
}
