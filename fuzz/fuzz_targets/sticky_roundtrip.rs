//! Sealing and opening sticky tickets with fuzzed fields, and the cookie's trip through
//! `Set-Cookie` and back through `Cookie`.
//!
//! For any ring (1 to 16 distinct keys), listener and cookie name and ticket:
//! - what the ring seals, it opens to the same ticket, and so does a ring that holds the
//!   sealing key later in its list (rotation);
//! - it does not open for another listener or another cookie name, nor under a ring without
//!   the sealing key;
//! - `set_cookie` with any settings and times gives a header value without a panic, and for a
//!   cookie name that is a token, the `name=value` it starts with, sent back in a `Cookie`
//!   header among other cookies, is taken out by `take_cookie` and opens to the ticket.

#![no_main]

use std::{sync::Arc, time::Duration};

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderValue, header::COOKIE};
use lb::{
    config::l7::{SameSite, StickySettings},
    l7::sticky::{KeyRing, Sealer, SessionId, Ticket, set_cookie, set_cors_cookie, take_cookie},
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    keys: Vec<[u8; 32]>,
    listener: String,
    cookie: String,
    backend: u64,
    session: [u8; 16],
    expires: u64,
    now_ms: u64,
    path: String,
    http_only: bool,
    secure: bool,
    same_site: Option<u8>,
    other_cookies: String,
}

fuzz_target!(|input: Input| {
    let Ok(ring) = KeyRing::from_keys(&input.keys) else {
        let repeats = (1..input.keys.len()).any(|i| input.keys[..i].contains(&input.keys[i]));
        assert!(
            input.keys.is_empty() || input.keys.len() > 16 || repeats,
            "ring refused"
        );
        return;
    };
    let sealer = Sealer::new(Arc::new(ring), &input.listener, &input.cookie);
    let ticket = Ticket {
        backend: input.backend,
        session: SessionId(input.session),
        expires: input.expires,
    };
    let Ok(value) = sealer.seal(&ticket) else {
        return;
    };
    assert_eq!(
        sealer.open(&value),
        Some(ticket),
        "sealed {ticket:?} as {value:?}"
    );
    check_rotation(&input, &value, ticket);
    check_bindings(&input, &value);
    check_set_cookie(&input, &sealer, &value, ticket);
});

/// A ring with the sealing key last still opens the value.
fn check_rotation(input: &Input, value: &str, ticket: Ticket) {
    let mut rotated = input.keys.clone();
    rotated.rotate_left(1);
    let Ok(ring) = KeyRing::from_keys(&rotated) else {
        return;
    };
    let sealer = Sealer::new(Arc::new(ring), &input.listener, &input.cookie);
    assert_eq!(sealer.open(value), Some(ticket), "rotated ring");
}

/// The value opens for no other listener or cookie name, and not without the sealing key.
fn check_bindings(input: &Input, value: &str) {
    let ring =
        |keys: &[[u8; 32]]| Arc::new(KeyRing::from_keys(keys).unwrap_or_else(|e| panic!("{e}")));
    let keys = &input.keys;
    let other_listener = format!("{}-", input.listener);
    let wrong = Sealer::new(ring(keys), &other_listener, &input.cookie);
    assert_eq!(wrong.open(value), None, "opened for another listener");
    let other_cookie = format!("{}-", input.cookie);
    let wrong = Sealer::new(ring(keys), &input.listener, &other_cookie);
    assert_eq!(wrong.open(value), None, "opened under another cookie name");
    let mut foreign = keys[0];
    foreign[0] ^= 1;
    if !keys.contains(&foreign) {
        let wrong = Sealer::new(ring(&[foreign]), &input.listener, &input.cookie);
        assert_eq!(wrong.open(value), None, "opened under a foreign key");
    }
}

/// `Set-Cookie` never panics; a token-named cookie comes back through `Cookie`.
fn check_set_cookie(input: &Input, sealer: &Sealer, value: &str, ticket: Ticket) {
    let settings = StickySettings {
        cookie: input.cookie.clone(),
        duration: Duration::from_secs(3600),
        key_file: "/nonexistent".into(),
        path: input.path.clone(),
        http_only: input.http_only,
        secure: input.secure,
        same_site: input.same_site.map(|n| match n % 3 {
            0 => SameSite::Strict,
            1 => SameSite::Lax,
            _ => SameSite::None,
        }),
        sliding: true,
        cors_cookie: input.http_only.then(|| format!("{}CORS", input.cookie)),
    };
    let header = set_cookie(&settings, value, input.expires, input.now_ms);
    let twin = set_cors_cookie(&settings, value, input.expires, input.now_ms);
    assert_eq!(twin.is_some(), settings.cors_cookie.is_some());
    if !is_token(&input.cookie) {
        return;
    }
    let text = header
        .to_str()
        .unwrap_or_else(|e| panic!("Set-Cookie is not text: {e}"));
    let (pair, _) = text.split_once(';').unwrap_or((text, ""));
    let expected = format!("{}={value}", input.cookie);
    assert_eq!(pair, expected, "Set-Cookie: {text}");
    let mut headers = HeaderMap::new();
    let cookie = format!("{}; {pair}", input.other_cookies);
    let Ok(cookie) = HeaderValue::from_str(&cookie) else {
        return;
    };
    headers.insert(COOKIE, cookie);
    // Another cookie of the same name earlier in the header would be taken first.
    if input.other_cookies.contains(&input.cookie) {
        return;
    }
    let taken = take_cookie(&mut headers, &input.cookie);
    assert_eq!(taken.as_deref(), Some(value), "Cookie: {pair}");
    assert_eq!(sealer.open(value), Some(ticket));
}

/// A cookie name (RFC 6265: an HTTP token).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
