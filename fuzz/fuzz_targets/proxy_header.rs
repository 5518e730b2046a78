//! The PROXY protocol header reader (`l7::proxy_protocol::read`), versions 1 and 2: any bytes
//! at the start of a connection from a trusted source.
//!
//! Passes when nothing panics, the read never waits on bytes it has (the input is all there
//! is), and:
//! - a header read is recognised as one (`looks_like_header`), and took no byte past its end: a
//!   version 1 header ends with its CRLF within 107 bytes, a version 2 one is its 16 bytes and
//!   the length they give;
//! - the addresses a header gives, sent again as a version 2 header, read back the same.

#![no_main]

use std::{
    future::Future as _,
    net::SocketAddr,
    pin::pin,
    task::{Context, Poll, Waker},
};

use lb::l7::proxy_protocol::{Header, HeaderError, encode_v2, looks_like_header, read};
use libfuzzer_sys::fuzz_target;

/// Reads a header from `data`; the result and the bytes it took.
fn read_from(data: &[u8]) -> (Result<Header, HeaderError>, usize) {
    let mut io = data;
    let result = {
        let mut reading = pin!(read(&mut io));
        match reading
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(result) => result,
            Poll::Pending => panic!("a read from memory waited"),
        }
    };
    (result, data.len() - io.len())
}

fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

fuzz_target!(|data: &[u8]| {
    let (result, taken) = read_from(data);
    let Ok(header) = result else {
        return;
    };
    assert!(looks_like_header(data), "read a header from {data:02x?}");
    if data[0] == b'P' {
        assert!(
            taken <= 107 && data[..taken].ends_with(b"\r\n"),
            "took {taken}"
        );
    } else {
        let length = usize::from(u16::from_be_bytes([data[14], data[15]]));
        assert_eq!(taken, 16 + length);
    }
    if let Some((source, destination)) = header.addresses {
        let again = encode_v2(source, destination);
        let (read_again, taken_again) = read_from(&again);
        let (s, d) = read_again
            .expect("our own header reads back")
            .addresses
            .expect("with its addresses");
        assert_eq!(taken_again, again.len());
        // Both of one family go as they were; a mixed pair goes as IPv6 (IPv4 mapped).
        if source.is_ipv4() == destination.is_ipv4() {
            assert_eq!(
                (canonical(s), canonical(d)),
                (canonical(source), canonical(destination))
            );
        } else {
            assert_eq!((s.port(), d.port()), (source.port(), destination.port()));
        }
    }
});
