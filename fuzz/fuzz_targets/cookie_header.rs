//! Taking the balancer's cookie out of a request's `Cookie` headers (`take_cookie`): any
//! bytes a header value may hold, one header (HTTP/1.1) or several (HTTP/2), any name.
//!
//! Input: lines (`\n`, a trailing `\r` dropped). The first is the cookie's name (UTF-8, lossy),
//! each further one a `Cookie` header value (the bytes `http` accepts; others are skipped). A
//! first name starting with `!` marks every value sensitive (the `!` is not part of the name).
//!
//! Passes when nothing panics and:
//! - once taken, the cookie is gone: a second `take_cookie` finds nothing;
//! - a request without the cookie is left exactly as it was;
//! - no other header is touched, and the `Cookie` headers left keep their sensitive flag.

#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, header::COOKIE};
use lb::l7::sticky::take_cookie;
use libfuzzer_sys::fuzz_target;

struct Input {
    name: String,
    cookies: Vec<Vec<u8>>,
    sensitive: bool,
}

impl Input {
    fn parse(data: &[u8]) -> Self {
        let mut lines = data
            .split(|b| *b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
        let first = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
        let (name, sensitive) = match first.strip_prefix('!') {
            Some(name) => (name.to_owned(), true),
            None => (first, false),
        };
        Self {
            name,
            cookies: lines.map(<[u8]>::to_vec).collect(),
            sensitive,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let input = Input::parse(data);
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::from_static("x-other"),
        HeaderValue::from_static("kept"),
    );
    for bytes in &input.cookies {
        if let Ok(mut value) = HeaderValue::from_bytes(bytes) {
            value.set_sensitive(input.sensitive);
            headers.append(COOKIE, value);
        }
    }
    let before = headers.clone();
    let taken = take_cookie(&mut headers, &input.name);
    match taken {
        None => assert_eq!(headers, before, "nothing taken, yet the headers changed"),
        Some(_) => {
            assert_eq!(
                take_cookie(&mut headers.clone(), &input.name),
                None,
                "the cookie is still there: {headers:?}"
            );
            for value in headers.get_all(COOKIE) {
                assert_eq!(value.is_sensitive(), input.sensitive, "sensitivity lost");
            }
        }
    }
    assert_eq!(headers.get("x-other"), before.get("x-other"));
});
