//! The cookie's header surgery: [`set_cookie`] renders the `Set-Cookie` value of a sealed
//! ticket with the attributes the listener's settings ask for, and [`set_cors_cookie`] that
//! of its CORS twin if they ask for one; [`take_cookie`] removes the
//! balancer's pairs from a request's `Cookie` headers (so the backend never sees them) and
//! returns the first one's value for [`Sealer::open`](super::Sealer::open).

use std::time::{Duration, UNIX_EPOCH};

use hyper::header::{COOKIE, HeaderMap, HeaderValue};

use crate::config::l7::{SameSite, StickySettings};

/// 9999-12-31T23:59:59Z, the last instant an IMF-fixdate (and `httpdate`) can write.
const LAST_HTTP_DATE: u64 = 253_402_300_799;

/// The `Set-Cookie` value for `value` (a [`Sealer::seal`](super::Sealer::seal) output): `Path`,
/// `Max-Age` (the seconds from `now_ms` to `expires_ms`, rounded up, at least 1), `Expires`
/// (IMF-fixdate, at the latest in year 9999), then `HttpOnly`, `Secure` and `SameSite` as
/// `settings` say. Bytes a header cannot hold are dropped (validated settings and sealed
/// values have none).
pub fn set_cookie(
    settings: &StickySettings,
    value: &str,
    expires_ms: u64,
    now_ms: u64,
) -> HeaderValue {
    let attributes = Attributes {
        name: &settings.cookie,
        secure: settings.secure,
        same_site: settings.same_site,
    };
    render(settings, attributes, value, expires_ms, now_ms)
}

/// The `Set-Cookie` value of the CORS twin, if `settings` ask for one: as [`set_cookie`]'s,
/// under the twin's name, `Secure` and `SameSite=None` (so that browsers send it on
/// credentialed cross-site requests, which a `Lax` or `Strict` cookie misses).
pub fn set_cors_cookie(
    settings: &StickySettings,
    value: &str,
    expires_ms: u64,
    now_ms: u64,
) -> Option<HeaderValue> {
    let attributes = Attributes {
        name: settings.cors_cookie.as_deref()?,
        secure: true,
        same_site: Some(SameSite::None),
    };
    Some(render(settings, attributes, value, expires_ms, now_ms))
}

/// What differs between a cookie and its CORS twin.
struct Attributes<'a> {
    name: &'a str,
    secure: bool,
    same_site: Option<SameSite>,
}

fn render(
    settings: &StickySettings,
    attributes: Attributes<'_>,
    value: &str,
    expires_ms: u64,
    now_ms: u64,
) -> HeaderValue {
    let max_age = expires_ms.saturating_sub(now_ms).div_ceil(1000).max(1);
    let expires_unix = expires_ms.div_ceil(1000);
    let expires = UNIX_EPOCH
        .checked_add(Duration::from_secs(expires_unix.min(LAST_HTTP_DATE)))
        .unwrap_or(UNIX_EPOCH);
    let mut text = format!(
        "{}={value}; Path={}; Max-Age={max_age}; Expires={}",
        attributes.name,
        settings.path,
        httpdate::fmt_http_date(expires)
    );
    if settings.http_only {
        text.push_str("; HttpOnly");
    }
    if attributes.secure {
        text.push_str("; Secure");
    }
    if let Some(same_site) = attributes.same_site {
        text.push_str("; SameSite=");
        text.push_str(same_site.as_str());
    }
    text.retain(|ch| ch == '\t' || (' '..='~').contains(&ch));
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Removes every `name=...` pair from the `Cookie` headers of `headers` (HTTP/2 clients may
/// send several) and returns the value of the first one (surrounding double quotes removed).
///
/// Headers are read as bytes, so one with non-UTF-8 bytes is handled like any other: pieces
/// are separated by ';' and trimmed of whitespace, and a piece is the balancer's when the text
/// before its first '=' is `name` (case-sensitive; `name2=` is another cookie). A header
/// without such a piece is kept untouched; in one with such a piece, the other pieces are kept
/// byte-for-byte and in order, joined by "; " (empty pieces go), and a header left with none
/// is removed. A piece without '=' is never the balancer's. Rebuilt headers keep their
/// sensitive flag.
pub fn take_cookie(headers: &mut HeaderMap, name: &str) -> Option<String> {
    let name = name.as_bytes();
    if name.is_empty() {
        return None;
    }
    let mut all = headers.get_all(COOKIE).iter();
    if let (Some(only), None) = (all.next(), all.next()) {
        // One header, as every HTTP/1.1 client sends: changed in place, nothing else copied.
        let (ours, kept) = split_cookie(only, name)?;
        match kept {
            Some(kept) => headers.insert(COOKIE, kept),
            None => headers.remove(COOKIE),
        };
        return Some(ours);
    }
    let values: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
    let mut found = None;
    let mut rebuilt = Vec::with_capacity(values.len());
    for value in values {
        match split_cookie(&value, name) {
            Some((ours, kept)) => {
                found.get_or_insert(ours);
                rebuilt.extend(kept);
            }
            None => rebuilt.push(value),
        }
    }
    if found.is_some() {
        headers.remove(COOKIE);
        for value in rebuilt {
            headers.append(COOKIE, value);
        }
    }
    found
}

/// Removes from the `Cookie` headers every pair whose name `ours` says is the balancer's; the
/// other pieces are kept as [`take_cookie`] keeps them, and a header without such a pair is
/// left untouched.
pub fn take_cookies(headers: &mut HeaderMap, ours: impl Fn(&str) -> bool) {
    let is_ours = |piece: &[u8]| {
        piece
            .iter()
            .position(|b| *b == b'=')
            .and_then(|equals| std::str::from_utf8(&piece[..equals]).ok())
            .is_some_and(&ours)
    };
    let has_ours = |value: &HeaderValue| pieces(value.as_bytes()).any(is_ours);
    if !headers.get_all(COOKIE).iter().any(has_ours) {
        return;
    }
    let values: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
    headers.remove(COOKIE);
    for value in values {
        if !has_ours(&value) {
            headers.append(COOKIE, value);
            continue;
        }
        let mut kept = Vec::new();
        for piece in pieces(value.as_bytes()).filter(|piece| !is_ours(piece)) {
            if !kept.is_empty() {
                kept.extend_from_slice(b"; ");
            }
            kept.extend_from_slice(piece);
        }
        if kept.is_empty() {
            continue;
        }
        // Every byte comes from a valid header value, so this holds; keep the header otherwise.
        let rebuilt = HeaderValue::from_bytes(&kept).map_or_else(
            |_| value.clone(),
            |mut rebuilt| {
                rebuilt.set_sensitive(value.is_sensitive());
                rebuilt
            },
        );
        headers.append(COOKIE, rebuilt);
    }
}

/// The value of the first `name` pair in one `Cookie` header, and the header without its
/// `name` pairs (none if nothing is left); `None` if it holds no such pair.
fn split_cookie(header: &HeaderValue, name: &[u8]) -> Option<(String, Option<HeaderValue>)> {
    let mut found = None;
    let mut kept = Vec::new();
    for piece in pieces(header.as_bytes()) {
        match pair_value(piece, name) {
            Some(ours) => {
                found.get_or_insert(ours);
            }
            None => {
                if !kept.is_empty() {
                    kept.extend_from_slice(b"; ");
                }
                kept.extend_from_slice(piece);
            }
        }
    }
    let found = found?;
    let ours = std::str::from_utf8(found).map_or_else(
        |_| String::from_utf8_lossy(found).into_owned(),
        str::to_owned,
    );
    if kept.is_empty() {
        return Some((ours, None));
    }
    // Every byte comes from a valid header value, so this holds; keep the header otherwise.
    let rebuilt = HeaderValue::from_bytes(&kept).map_or_else(
        |_| header.clone(),
        |mut rebuilt| {
            rebuilt.set_sensitive(header.is_sensitive());
            rebuilt
        },
    );
    Some((ours, Some(rebuilt)))
}

/// The non-empty pieces of a `Cookie` header, trimmed.
fn pieces(header: &[u8]) -> impl Iterator<Item = &[u8]> {
    header
        .split(|b| *b == b';')
        .map(<[u8]>::trim_ascii)
        .filter(|piece| !piece.is_empty())
}

/// The value of `piece` if it is a `name=value` pair.
fn pair_value<'a>(piece: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let equals = piece.iter().position(|b| *b == b'=')?;
    let (piece_name, rest) = piece.split_at(equals);
    if piece_name.trim_ascii() != name {
        return None;
    }
    let value = rest.get(1..)?.trim_ascii();
    Some(
        value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value),
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn settings() -> StickySettings {
        StickySettings {
            cookie: "lb_sticky".to_owned(),
            duration: Duration::from_secs(3600),
            key_file: PathBuf::from("/etc/lb/sticky.keys"),
            path: "/".to_owned(),
            http_only: true,
            secure: true,
            same_site: Some(SameSite::Lax),
            sliding: true,
            cors_cookie: None,
        }
    }

    #[test]
    fn set_cookie_renders_the_attributes_the_settings_ask_for() {
        // 1_700_003_600 is Tue, 14 Nov 2023 23:13:20 GMT.
        let header = set_cookie(&settings(), "VALUE", 1_700_003_600_000, 1_700_000_000_000);
        assert_eq!(
            header.to_str().unwrap(),
            "lb_sticky=VALUE; Path=/; Max-Age=3600; Expires=Tue, 14 Nov 2023 23:13:20 GMT; \
             HttpOnly; Secure; SameSite=Lax"
        );
        let strict = StickySettings {
            cookie: "srv".to_owned(),
            path: "/app".to_owned(),
            http_only: false,
            same_site: Some(SameSite::Strict),
            ..settings()
        };
        assert_eq!(
            set_cookie(&strict, "V", 1_700_003_600_000, 1_700_002_999_500)
                .to_str()
                .unwrap(),
            "srv=V; Path=/app; Max-Age=601; Expires=Tue, 14 Nov 2023 23:13:20 GMT; Secure; \
             SameSite=Strict"
        );
        let none = StickySettings {
            same_site: Some(SameSite::None),
            ..settings()
        };
        assert!(
            set_cookie(&none, "V", 10_000, 0)
                .to_str()
                .unwrap()
                .ends_with("; HttpOnly; Secure; SameSite=None")
        );
        let unset = StickySettings {
            same_site: None,
            secure: false,
            ..settings()
        };
        let text = set_cookie(&unset, "V", 10_000, 0);
        assert!(
            text.to_str().unwrap().ends_with("GMT; HttpOnly"),
            "{text:?}"
        );
    }

    #[test]
    fn set_cookie_max_age_is_at_least_one_and_expires_stays_writable() {
        let past = set_cookie(&settings(), "V", 100_000, 200_000);
        assert!(past.to_str().unwrap().contains("; Max-Age=1; "), "{past:?}");
        let far = set_cookie(&settings(), "V", u64::MAX, 0);
        let far = far.to_str().unwrap();
        let max_age = u64::MAX.div_ceil(1000);
        assert!(far.contains(&format!("; Max-Age={max_age}; ")), "{far}");
        assert!(
            far.contains("Expires=Fri, 31 Dec 9999 23:59:59 GMT"),
            "{far}"
        );
        let dirty = set_cookie(&settings(), "V\r\nX: y", 10_000, 0);
        assert!(dirty.to_str().unwrap().starts_with("lb_sticky=VX: y; "));
    }

    #[test]
    fn the_cors_twin_is_secure_and_same_site_none_whatever_the_cookie_is() {
        assert_eq!(set_cors_cookie(&settings(), "V", 10_000, 0), None);
        let lax = StickySettings {
            cors_cookie: Some("lb_stickyCORS".to_owned()),
            http_only: false,
            ..settings()
        };
        let twin = set_cors_cookie(&lax, "VALUE", 1_700_003_600_000, 1_700_000_000_000);
        assert_eq!(
            twin.unwrap().to_str().unwrap(),
            "lb_stickyCORS=VALUE; Path=/; Max-Age=3600; Expires=Tue, 14 Nov 2023 23:13:20 GMT; \
             Secure; SameSite=None"
        );
        assert!(
            set_cookie(&lax, "VALUE", 1_700_003_600_000, 1_700_000_000_000)
                .to_str()
                .unwrap()
                .starts_with("lb_sticky=VALUE; ")
        );
    }

    fn cookies(headers: &HeaderMap) -> Vec<&str> {
        headers
            .get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn take_cookies_removes_every_pair_named_so_and_leaves_other_headers_alone() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1;lb=X; lb-old=Y ;b=2"));
        headers.append(COOKIE, HeaderValue::from_static("c=3;d=4"));
        headers.append(COOKIE, HeaderValue::from_static("lb-api=Z"));
        take_cookies(&mut headers, |name| name == "lb" || name.starts_with("lb-"));
        assert_eq!(cookies(&headers), ["a=1; b=2", "c=3;d=4"]);
        let before = headers.clone();
        take_cookies(&mut headers, |name| name == "none");
        assert_eq!(headers, before, "nothing ours: untouched");
    }

    #[test]
    fn take_cookie_removes_the_pair_and_keeps_the_rest() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1; lb_sticky=XYZ; b=2"));
        assert_eq!(
            take_cookie(&mut headers, "lb_sticky").as_deref(),
            Some("XYZ")
        );
        assert_eq!(cookies(&headers), ["a=1; b=2"]);
        assert_eq!(take_cookie(&mut headers, "lb_sticky"), None);
        assert_eq!(cookies(&headers), ["a=1; b=2"]);
    }

    #[test]
    fn take_cookie_leaves_longer_names_alone() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_static("lb_sticky2=keep;x_lb_sticky=k"),
        );
        assert_eq!(take_cookie(&mut headers, "lb_sticky"), None);
        assert_eq!(cookies(&headers), ["lb_sticky2=keep;x_lb_sticky=k"]);
        headers.append(
            COOKIE,
            HeaderValue::from_static("lb_sticky2=keep; lb_sticky=V"),
        );
        assert_eq!(take_cookie(&mut headers, "lb_sticky").as_deref(), Some("V"));
        assert_eq!(
            cookies(&headers),
            ["lb_sticky2=keep;x_lb_sticky=k", "lb_sticky2=keep"]
        );
    }

    #[test]
    fn take_cookie_handles_several_headers_duplicates_and_empties() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1"));
        headers.append(COOKIE, HeaderValue::from_static("lb_sticky=FIRST"));
        headers.append(
            COOKIE,
            HeaderValue::from_static("b=2;  lb_sticky=\"SECOND\" ;c=3"),
        );
        headers.append(
            COOKIE,
            HeaderValue::from_static("lb_sticky=THIRD; lb_sticky=X"),
        );
        headers.append(COOKIE, HeaderValue::from_static("d=4"));
        let mut sensitive = HeaderValue::from_static("lb_sticky=Y; e=5");
        sensitive.set_sensitive(true);
        headers.append(COOKIE, sensitive);
        headers.append("x-other", HeaderValue::from_static("lb_sticky=untouched"));
        assert_eq!(
            take_cookie(&mut headers, "lb_sticky").as_deref(),
            Some("FIRST")
        );
        assert_eq!(cookies(&headers), ["a=1", "b=2; c=3", "d=4", "e=5"]);
        assert!(
            headers
                .get_all(COOKIE)
                .iter()
                .next_back()
                .unwrap()
                .is_sensitive()
        );
        assert_eq!(headers["x-other"], "lb_sticky=untouched");

        let mut quoted = HeaderMap::new();
        quoted.append(
            COOKIE,
            HeaderValue::from_static("b=2;  lb_sticky=\"Q\" ;c=3"),
        );
        assert_eq!(take_cookie(&mut quoted, "lb_sticky").as_deref(), Some("Q"));
        assert_eq!(cookies(&quoted), ["b=2; c=3"]);
    }

    #[test]
    fn take_cookie_survives_odd_headers() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_bytes(b"\xff\xfe=\x80; lb_sticky=V").unwrap(),
        );
        headers.append(
            COOKIE,
            HeaderValue::from_static(";;; =; lb_sticky; ==; lb_sticky="),
        );
        headers.append(COOKIE, HeaderValue::from_static(""));
        assert_eq!(take_cookie(&mut headers, "lb_sticky").as_deref(), Some("V"));
        let left: Vec<&[u8]> = headers
            .get_all(COOKIE)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(left, [&b"\xff\xfe=\x80"[..], b"=; lb_sticky; ==", b""]);
        assert_eq!(take_cookie(&mut headers, ""), None);
        assert_eq!(take_cookie(&mut HeaderMap::new(), "lb_sticky"), None);
    }
}
