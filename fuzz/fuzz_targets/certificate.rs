//! The certificate reader the L7 listeners' loader uses: PEM blocks (rustls-pki-types), then
//! the crate's own DER reader (`l7::tls::der`) for a leaf's validity dates and its
//! subjectAltName DNS names and IP addresses.
//!
//! The input is read both as a PEM file (each `CERTIFICATE` block through the DER reader) and
//! as one DER certificate. Passes when nothing panics and what is read is well formed: dates
//! are RFC 3339 (`2001-02-03T04:05:06Z`, ASCII digits in place) and names display.

#![no_main]

use lb::l7::tls::der::{read_san, read_validity};
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::{CertificateDer, pem::PemObject as _};

fuzz_target!(|data: &[u8]| {
    read_certificate(data);
    for cert in CertificateDer::pem_slice_iter(data).take(16) {
        match cert {
            Ok(cert) => read_certificate(&cert),
            Err(_) => break,
        }
    }
});

fn read_certificate(der: &[u8]) {
    if let Some(validity) = read_validity(der) {
        for date in [&validity.not_before, &validity.not_after] {
            assert!(is_rfc3339(date), "not an RFC 3339 date: {date:?}");
        }
    }
    if let Some(names) = read_san(der) {
        for name in names {
            let _ = name.to_string();
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` with digits where digits go.
fn is_rfc3339(date: &str) -> bool {
    let pattern = b"dddd-dd-ddTdd:dd:ddZ";
    date.len() == pattern.len()
        && date.bytes().zip(pattern).all(|(b, &p)| {
            if p == b'd' {
                b.is_ascii_digit()
            } else {
                b == p
            }
        })
}
