//! Where a request goes, by its listener's rules ([`crate::config::rules`]): the first rule whose
//! conditions hold, else the listener's pool. A rule forwards (to one pool, or one of several
//! by weight), redirects, or answers itself; it may change request and response headers.
//!
//! Stickiness belongs to the forward action: the listener's own action uses the listener's
//! cookie, a rule's uses a cookie of its own (`{cookie}-{rule}`), so a user keeps a backend per
//! rule, and within a rule's weighted pools keeps the pool as well (as ALB's group stickiness).

use std::sync::atomic::AtomicUsize;

use bytes::Bytes;
use hyper::{
    HeaderMap, Request, Response, StatusCode,
    header::{self, HeaderName, HeaderValue},
};

use super::body::ProxyBody;
use crate::config::{
    l7::{L7Settings, StickySettings},
    rules::{Action, FixedResponse, HeaderEdits, Redirect, RequestView, Rule, WeightedPool},
};

/// A listener's routing, as its settings were last loaded.
#[derive(Debug)]
pub struct Routes {
    /// The default action: the listener's pool.
    default: Vec<WeightedPool>,
    /// The listener's sticky settings and each rule's (its cookies renamed), by rule index.
    sticky: Option<StickySettings>,
    rule_sticky: Vec<Option<StickySettings>>,
    /// An empty set of header edits, for the default action.
    no_edits: HeaderEdits,
    /// The sticky cookie names of the listener (its own and its CORS twin): a rule's are
    /// these followed by `-` and the rule's name.
    cookies: Vec<String>,
    /// Each rule's turn among its weighted pools (and one for the listener's own, unused).
    pool_turns: Vec<AtomicUsize>,
}

/// What a request's route is.
#[derive(Debug)]
pub enum Route<'a> {
    Forward(Forward<'a>),
    Redirect(&'a Redirect, &'a Rule),
    Fixed(&'a FixedResponse, &'a Rule),
}

impl Route<'_> {
    /// The rule that took the request (none: the listener's own pool).
    pub fn rule(&self) -> Option<&Rule> {
        match self {
            Self::Forward(forward) => forward.rule,
            Self::Redirect(_, rule) | Self::Fixed(_, rule) => Some(rule),
        }
    }
}

/// A forward action: its pools, its stickiness and the header edits of its rule.
#[derive(Clone, Copy, Debug)]
pub struct Forward<'a> {
    pub pools: &'a [WeightedPool],
    /// The action's turn among its pools (new users by weight).
    pub pool_turn: &'a AtomicUsize,
    pub sticky: Option<&'a StickySettings>,
    /// The rule, or none for the listener's own pool.
    pub rule: Option<&'a Rule>,
    pub request_headers: &'a HeaderEdits,
    pub response_headers: &'a HeaderEdits,
}

impl Routes {
    /// The routing of a listener forwarding to `pool` by default.
    pub fn new(pool: &str, settings: &L7Settings) -> Self {
        let rule_sticky = settings
            .rules
            .iter()
            .map(|rule| {
                settings.sticky.as_ref().map(|sticky| StickySettings {
                    cookie: format!("{}-{}", sticky.cookie, rule.name),
                    cors_cookie: sticky
                        .cors_cookie
                        .as_ref()
                        .map(|twin| format!("{twin}-{}", rule.name)),
                    ..sticky.clone()
                })
            })
            .collect();
        let cookies = settings
            .sticky
            .iter()
            .flat_map(|s| std::iter::once(&s.cookie).chain(&s.cors_cookie))
            .cloned()
            .collect();
        Self {
            cookies,
            pool_turns: (0..=settings.rules.len())
                .map(|_| AtomicUsize::new(0))
                .collect(),
            default: vec![WeightedPool {
                pool: pool.to_owned(),
                weight: 1,
            }],
            sticky: settings.sticky.clone(),
            rule_sticky,
            no_edits: HeaderEdits::default(),
        }
    }

    /// Removes from `headers` the listener's sticky cookies other than `keep`'s (the route's,
    /// which placing the request takes): the listener's own, and any rule's, present or past
    /// (`{cookie}-NAME`), so that no backend sees one of the balancer's cookies.
    pub fn strip_cookies(&self, headers: &mut HeaderMap, keep: Option<&StickySettings>) {
        if self.cookies.is_empty() {
            return;
        }
        let ours = |name: &str| {
            let kept =
                keep.is_some_and(|k| k.cookie == name || k.cors_cookie.as_deref() == Some(name));
            !kept
                && self.cookies.iter().any(|base| {
                    name == base
                        || name
                            .strip_prefix(base.as_str())
                            .is_some_and(|rest| rest.starts_with('-'))
                })
        };
        super::sticky::take_cookies(headers, ours);
    }

    /// The listener's own action: its pool, its cookie.
    pub fn default_route(&self) -> Route<'_> {
        Route::Forward(Forward {
            pools: &self.default,
            pool_turn: &self.pool_turns[self.pool_turns.len() - 1],
            sticky: self.sticky.as_ref(),
            rule: None,
            request_headers: &self.no_edits,
            response_headers: &self.no_edits,
        })
    }

    /// The route of `request` through `rules` (the settings these routes were made from).
    pub fn route<'a>(&'a self, rules: &'a [Rule], request: &RequestView<'_>) -> Route<'a> {
        let Some((index, rule)) = rules
            .iter()
            .enumerate()
            .find(|(_, rule)| rule.conditions.matches(request))
        else {
            return self.default_route();
        };
        match &rule.action {
            Action::Forward(pools) => Route::Forward(Forward {
                pools,
                pool_turn: &self.pool_turns[index],
                sticky: self.rule_sticky.get(index).and_then(Option::as_ref),
                rule: Some(rule),
                request_headers: &rule.request_headers,
                response_headers: &rule.response_headers,
            }),
            Action::Redirect(redirect) => Route::Redirect(redirect, rule),
            Action::Fixed(fixed) => Route::Fixed(fixed, rule),
        }
    }
}

/// The parts of a request its route depends on, owned (the request is changed afterwards).
#[derive(Clone, Debug)]
pub struct Facts {
    pub method: String,
    /// The `Host` (or `:authority`) without its port, and the port if it had one.
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
    pub query: String,
}

impl Facts {
    pub fn of<B>(request: &Request<B>) -> Self {
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                request
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let (host, port) = split_port(&authority);
        // A name with its root's dot (`example.com.`) is the same name.
        let host = host.strip_suffix('.').unwrap_or(host);
        Self {
            method: request.method().as_str().to_owned(),
            host: host.to_owned(),
            port,
            path: crate::config::rules::normalize_path(request.uri().path()),
            query: request.uri().query().unwrap_or("").to_owned(),
        }
    }

    pub fn view<'a>(&'a self, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView {
            method: &self.method,
            host: &self.host,
            path: &self.path,
            query: &self.query,
            headers,
        }
    }
}

/// `host[:port]` or `[v6][:port]`: the host and the port.
fn split_port(authority: &str) -> (&str, Option<u16>) {
    let (host, port) = match authority.rfind(':') {
        Some(colon) if !authority[colon..].contains(']') => {
            (&authority[..colon], authority[colon + 1..].parse().ok())
        }
        _ => (authority, None),
    };
    (host, port)
}

/// A redirect's answer to the request `facts` describe.
pub fn redirect(redirect: &Redirect, facts: &Facts, edits: &HeaderEdits) -> Response<ProxyBody> {
    let scheme = redirect.scheme.as_deref().unwrap_or("https");
    let host = match &redirect.host {
        Some(host) => host.as_str(),
        // The request's own host goes into the answer only if it is a host: a name, an IPv4
        // address or a bracketed IPv6 one (nothing a client could smuggle into `Location`).
        None if is_host(&facts.host) => &facts.host,
        None => return super::body::error_response(StatusCode::BAD_REQUEST),
    };
    // The request's port stays only with its host and scheme (a new one has its own).
    let port = redirect.port.or_else(|| {
        (redirect.host.is_none() && scheme == "https")
            .then_some(facts.port)
            .flatten()
    });
    let path = redirect.path.as_deref().unwrap_or(&facts.path);
    let query = redirect.query.as_deref().unwrap_or(&facts.query);
    let mut location = format!("{scheme}://{host}");
    let default_port = if scheme == "https" { 443 } else { 80 };
    if let Some(port) = port.filter(|&p| p != default_port) {
        location.push_str(&format!(":{port}"));
    }
    location.push_str(path);
    if !query.is_empty() {
        location.push('?');
        location.push_str(query);
    }
    let mut response = Response::new(ProxyBody::full(Bytes::new()));
    *response.status_mut() =
        StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            response.headers_mut().insert(header::LOCATION, value);
        }
        // Only a request's own path or query could make it invalid, and those were valid in
        // its request line.
        Err(_) => *response.status_mut() = StatusCode::BAD_REQUEST,
    }
    edit(response.headers_mut(), edits);
    response
}

/// Whether `host` is a host name, an IPv4 address or a bracketed IPv6 address.
fn is_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
        })
}

/// A fixed response's answer.
pub fn fixed(fixed: &FixedResponse, edits: &HeaderEdits) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(Bytes::from(fixed.body.clone())));
    *response.status_mut() = StatusCode::from_u16(fixed.status).unwrap_or(StatusCode::OK);
    if let Ok(value) = HeaderValue::from_str(&fixed.content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    edit(response.headers_mut(), edits);
    response
}

/// Applies a rule's header edits: removals, then replacements, then additions.
pub fn edit(headers: &mut HeaderMap, edits: &HeaderEdits) {
    for name in &edits.remove {
        headers.remove(name.as_str());
    }
    let pair = |name: &str, value: &str| {
        Some((
            HeaderName::from_bytes(name.as_bytes()).ok()?,
            HeaderValue::from_str(value).ok()?,
        ))
    };
    for (name, value) in &edits.set {
        if let Some((name, value)) = pair(name, value) {
            headers.insert(name, value);
        }
    }
    for (name, value) in &edits.add {
        if let Some((name, value)) = pair(name, value) {
            headers.append(name, value);
        }
    }
}

/// A stable id of a pool's name, for the rendezvous that gives a session a pool.
pub fn pool_id(name: &str) -> u64 {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        &[b"lb-pool-v1:".as_slice(), name.as_bytes()].concat(),
    );
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(split_port("example.com"), ("example.com", None));
        assert_eq!(split_port("example.com:8443"), ("example.com", Some(8443)));
        assert_eq!(split_port("[2001:db8::1]"), ("[2001:db8::1]", None));
        assert_eq!(
            split_port("[2001:db8::1]:443"),
            ("[2001:db8::1]", Some(443))
        );
    }

    fn facts() -> Facts {
        Facts {
            method: "GET".to_owned(),
            host: "shop.example.com".to_owned(),
            port: Some(8443),
            path: "/a/b".to_owned(),
            query: "x=1".to_owned(),
        }
    }

    fn location(redirect: &Redirect) -> (u16, String) {
        let response = super::redirect(redirect, &facts(), &HeaderEdits::default());
        let location = response.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .to_owned();
        (response.status().as_u16(), location)
    }

    #[test]
    fn redirects_replace_only_the_parts_they_name() {
        let none = Redirect {
            status: 302,
            scheme: None,
            host: None,
            port: None,
            path: Some("/new".to_owned()),
            query: None,
        };
        assert_eq!(
            location(&none),
            (302, "https://shop.example.com:8443/new?x=1".to_owned())
        );
        let moved = Redirect {
            status: 301,
            host: Some("www.example.com".to_owned()),
            path: None,
            query: Some(String::new()),
            ..none.clone()
        };
        assert_eq!(
            location(&moved),
            (301, "https://www.example.com/a/b".to_owned())
        );
        let plain = Redirect {
            scheme: Some("http".to_owned()),
            port: Some(8080),
            query: Some("y=2".to_owned()),
            ..none
        };
        assert_eq!(
            location(&plain).1,
            "http://shop.example.com:8080/new?y=2".to_owned()
        );
    }

    #[test]
    fn header_edits_remove_then_set_then_add() {
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        headers.append("x-gone", HeaderValue::from_static("1"));
        let edits = HeaderEdits {
            add: vec![
                ("x-b".to_owned(), "3".to_owned()),
                ("x-a".to_owned(), "4".to_owned()),
            ],
            set: vec![("x-a".to_owned(), "5".to_owned())],
            remove: vec!["x-gone".to_owned()],
        };
        edit(&mut headers, &edits);
        let all = |name: &str| -> Vec<&str> {
            headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(all("x-a"), ["5", "4"]);
        assert_eq!(all("x-b"), ["3"]);
        assert!(all("x-gone").is_empty());
    }
}
