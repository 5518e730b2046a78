//! A small DER reader, just enough to list the DNS names and IP addresses in a certificate's
//! subjectAltName: [`san_names`] walks Certificate -> tbsCertificate -> extensions ->
//! subjectAltName -> GeneralNames with [`der_next`] and [`der_elements`], and gives up
//! (returning nothing) on anything malformed instead of panicking.

use std::net::IpAddr;

/// DER encoding of the subjectAltName extension's OID, 2.5.29.17.
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];

/// DNS names and IP addresses in a DER certificate's subjectAltName; empty if it has none
/// or cannot be read.
pub(super) fn san_names(cert: &[u8]) -> Vec<String> {
    parse_san(cert).unwrap_or_default()
}

/// Walks Certificate -> tbsCertificate -> `[3]` extensions -> subjectAltName -> GeneralNames.
fn parse_san(cert: &[u8]) -> Option<Vec<String>> {
    let (_, certificate, _) = der_next(cert)?;
    let (_, tbs, _) = der_next(certificate)?;
    let (_, extensions) = der_elements(tbs).find(|(tag, _)| *tag == 0xa3)?;
    let (_, extensions, _) = der_next(extensions)?;
    for (_, extension) in der_elements(extensions) {
        let mut fields = der_elements(extension);
        if fields.next()?.1 != SAN_OID {
            continue;
        }
        // Skips the optional `critical` BOOLEAN to the OCTET STRING holding GeneralNames.
        let (_, value) = fields.find(|(tag, _)| *tag == 0x04)?;
        let (_, names, _) = der_next(value)?;
        let names = der_elements(names).filter_map(|(tag, body)| general_name(tag, body));
        return Some(names.collect());
    }
    Some(Vec::new())
}

/// A dNSName (`[2]`) or iPAddress (`[7]`) GeneralName as text; `None` for other kinds.
fn general_name(tag: u8, body: &[u8]) -> Option<String> {
    match tag {
        0x82 => std::str::from_utf8(body).ok().map(str::to_owned),
        0x87 => {
            let ip = match body.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(body).ok()?),
                16 => IpAddr::from(<[u8; 16]>::try_from(body).ok()?),
                _ => return None,
            };
            Some(ip.to_string())
        }
        _ => None,
    }
}

/// Splits the first DER element off `input`: tag, contents, rest.
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
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
fn der_elements(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, contents, rest) = der_next(input)?;
        input = rest;
        Some((tag, contents))
    })
}
