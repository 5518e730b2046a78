//! A small DER reader, just enough to read what the crate needs from an X.509 certificate
//! without an X.509 parser: its validity dates ([`read_validity`]) and the DNS names and IP
//! addresses of its subjectAltName ([`read_san`]).
//!
//! Both walk Certificate -> tbsCertificate -> validity, or `[3]` extensions -> subjectAltName
//! -> GeneralNames, with [`der_next`], [`der_expect`] and [`der_elements`]. Anything malformed
//! gives `None`, never a panic.
//!
//! Users: the L7 listeners' certificate loader checks a leaf's dates and indexes its DNS names
//! (`pair.rs`); the lab's TLS clients name the certificate a server showed (`lab::tls`); the
//! `certificate` fuzz target reads whatever bytes it is given.

use std::{fmt, net::IpAddr};

pub(crate) const TAG_SEQUENCE: u8 = 0x30;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;
/// `[0]` version, `[3]` extensions of a tbsCertificate.
const TAG_VERSION: u8 = 0xa0;
const TAG_EXTENSIONS: u8 = 0xa3;
/// `[2]` dNSName and `[7]` iPAddress of a GeneralName.
const TAG_DNS_NAME: u8 = 0x82;
const TAG_IP_ADDRESS: u8 = 0x87;
/// The subjectAltName extension's OID, 2.5.29.17.
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];

/// A certificate's validity, each date as RFC 3339 in UTC (`2001-02-03T04:05:06Z`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validity {
    pub not_before: String,
    pub not_after: String,
}

/// A subjectAltName entry this reader understands: a dNSName as written (valid UTF-8 only) or
/// an iPAddress (4 or 16 bytes). Displays as the name or the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanName<'a> {
    Dns(&'a str),
    Ip(IpAddr),
}

impl fmt::Display for SanName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(name) => f.write_str(name),
            Self::Ip(address) => address.fmt(f),
        }
    }
}

/// The validity of a DER certificate; `None` if it cannot be read.
pub fn read_validity(cert: &[u8]) -> Option<Validity> {
    let mut times = der_elements(read_tbs(cert)?.validity);
    let not_before = der_time(times.next()?)?;
    let not_after = der_time(times.next()?)?;
    Some(Validity {
        not_before,
        not_after,
    })
}

/// The DNS names and IP addresses of a DER certificate's subjectAltName, in their order (other
/// kinds of names left out); empty if it has none, `None` if it cannot be read.
pub fn read_san(cert: &[u8]) -> Option<Vec<SanName<'_>>> {
    match read_tbs(cert)?.extensions {
        Some(extensions) => san_names(extensions),
        None => Some(Vec::new()),
    }
}

/// The fields of a tbsCertificate this reader looks into, still DER.
struct Tbs<'a> {
    /// The contents of the validity SEQUENCE.
    validity: &'a [u8],
    /// The contents of `[3]`, if the certificate has extensions.
    extensions: Option<&'a [u8]>,
}

fn read_tbs(cert: &[u8]) -> Option<Tbs<'_>> {
    let certificate = der_expect(cert, TAG_SEQUENCE)?;
    let tbs = der_expect(certificate, TAG_SEQUENCE)?;
    let mut fields = der_elements(tbs).skip_while(|(tag, _)| *tag == TAG_VERSION);
    // serialNumber, signature, issuer, then validity.
    let (tag, validity) = fields.nth(3)?;
    if tag != TAG_SEQUENCE {
        return None;
    }
    let extensions = fields
        .find(|(tag, _)| *tag == TAG_EXTENSIONS)
        .map(|(_, extensions)| extensions);
    Some(Tbs {
        validity,
        extensions,
    })
}

/// The names of the subjectAltName among `extensions` (the contents of `[3]`).
fn san_names(extensions: &[u8]) -> Option<Vec<SanName<'_>>> {
    for (_, extension) in der_elements(der_expect(extensions, TAG_SEQUENCE)?) {
        let mut parts = der_elements(extension);
        if parts.next()?.1 != SAN_OID {
            continue;
        }
        // Past the optional `critical` BOOLEAN, the OCTET STRING holding GeneralNames.
        let (_, value) = parts.find(|(tag, _)| *tag == TAG_OCTET_STRING)?;
        let names = der_elements(der_expect(value, TAG_SEQUENCE)?)
            .filter_map(|(tag, body)| san_name(tag, body))
            .collect();
        return Some(names);
    }
    Some(Vec::new())
}

/// A dNSName or iPAddress GeneralName; `None` for other kinds and unreadable ones.
fn san_name(tag: u8, body: &[u8]) -> Option<SanName<'_>> {
    match tag {
        TAG_DNS_NAME => std::str::from_utf8(body).ok().map(SanName::Dns),
        TAG_IP_ADDRESS => {
            let address = match body.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(body).ok()?),
                16 => IpAddr::from(<[u8; 16]>::try_from(body).ok()?),
                _ => return None,
            };
            Some(SanName::Ip(address))
        }
        _ => None,
    }
}

/// A UTCTime or GeneralizedTime (DER: seconds, `Z`) as `2001-02-03T04:05:06Z`.
fn der_time((tag, body): (u8, &[u8])) -> Option<String> {
    let digits = std::str::from_utf8(body).ok()?.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let full = match (tag, digits.len()) {
        // RFC 5280: two-digit years 50 to 99 are 19xx, 00 to 49 are 20xx.
        (TAG_UTC_TIME, 12) => {
            let century = if digits.get(..2)? >= "50" { "19" } else { "20" };
            format!("{century}{digits}")
        }
        (TAG_GENERALIZED_TIME, 14) => digits.to_owned(),
        _ => return None,
    };
    let part = |range: std::ops::Range<usize>| full.get(range);
    Some(format!(
        "{}-{}-{}T{}:{}:{}Z",
        part(0..4)?,
        part(4..6)?,
        part(6..8)?,
        part(8..10)?,
        part(10..12)?,
        part(12..14)?
    ))
}

/// The contents of the DER element at the start of `input` if it has `tag`.
pub(crate) fn der_expect(input: &[u8], tag: u8) -> Option<&[u8]> {
    let (found, contents, _) = der_next(input)?;
    (found == tag).then_some(contents)
}

/// Splits the first DER element off `input`: tag, contents, rest.
pub(crate) fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(count)?;
        let len = bytes
            .iter()
            .fold(0usize, |len, &byte| (len << 8) | usize::from(byte));
        (len, rest)
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

/// The (tag, contents) of consecutive DER elements, stopping at the first malformed one.
pub(crate) fn der_elements(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, contents, rest) = der_next(input)?;
        input = rest;
        Some((tag, contents))
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::Ca;
    use super::*;

    #[test]
    fn reads_validity_and_san_from_der() {
        let leaf = Ca::new("test CA").issue_between(
            &["Mixed.Example", "*.w.example", "192.0.2.7", "2001:db8::7"],
            Some((1999, 2060)),
        );
        let cert = leaf.der.as_ref();
        let validity = read_validity(cert).expect("validity");
        assert_eq!(validity.not_before, "1999-01-01T00:00:00Z");
        assert_eq!(validity.not_after, "2060-01-01T00:00:00Z");
        let names = read_san(cert).expect("subjectAltName");
        let ip = |s: &str| SanName::Ip(s.parse().expect("an address"));
        assert_eq!(
            names,
            [
                SanName::Dns("Mixed.Example"),
                SanName::Dns("*.w.example"),
                ip("192.0.2.7"),
                ip("2001:db8::7"),
            ]
        );
        let shown: Vec<String> = names.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["Mixed.Example", "*.w.example", "192.0.2.7", "2001:db8::7"]
        );
        for malformed in [&cert[..40], b""] {
            assert!(read_validity(malformed).is_none());
            assert!(read_san(malformed).is_none());
        }
    }

    #[test]
    fn reads_utc_and_generalized_times() {
        assert_eq!(
            der_time((TAG_UTC_TIME, b"491231235959Z")).as_deref(),
            Some("2049-12-31T23:59:59Z")
        );
        assert_eq!(
            der_time((TAG_UTC_TIME, b"500101000000Z")).as_deref(),
            Some("1950-01-01T00:00:00Z")
        );
        assert_eq!(
            der_time((TAG_GENERALIZED_TIME, b"20491231235959Z")).as_deref(),
            Some("2049-12-31T23:59:59Z")
        );
        assert_eq!(der_time((TAG_UTC_TIME, b"5001010000Z")), None);
        assert_eq!(der_time((TAG_GENERALIZED_TIME, b"2049123123595Z")), None);
    }
}
