//! The PROXY protocol (HAProxy's, versions 1 and 2): the header another L4 balancer puts before
//! a connection's first byte to say whose it is, which an L7 listener reads from the sources it
//! trusts ([`read`]), and the version 2 header a listener sends to its backends ([`encode_v2`]).
//!
//! - Version 1: `PROXY TCP4 SRC DST SPORT DPORT\r\n` (or `TCP6`, or `UNKNOWN ...`), 107 bytes at
//!   most.
//! - Version 2: a 12-byte signature, the version and command (`0x21` PROXY, `0x20` LOCAL), the
//!   family and transport (`0x11` TCP over IPv4, `0x21` TCP over IPv6, `0x00` unspecified), the
//!   length of what follows (addresses, then TLVs, which are skipped), big-endian.
//!
//! A LOCAL command (the balancer's own health check), `UNKNOWN` and the unspecified family carry
//! no client: the connection's own peer stands. Exactly the header is read, nothing of the TLS
//! handshake after it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The version 2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, CRLF included.
const V1_MAX: usize = 107;
/// The longest version 2 header accepted (addresses and TLVs): larger ones are refused rather
/// than buffered.
const V2_MAX_BODY: usize = 1024;

/// What a header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The client and the address it connected to, or none (LOCAL, UNKNOWN, unspecified).
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

/// Why a header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// Not a header: the front balancer's TCP health check (connect, close) looks like this.
    #[error("the connection closed before its first byte")]
    Closed,
    #[error("no PROXY header (the connection starts with {0:02x?})")]
    Missing(Vec<u8>),
    #[error("a version 1 header without its CRLF within 107 bytes")]
    V1TooLong,
    #[error("a malformed version 1 header: {0}")]
    V1Malformed(&'static str),
    #[error("version 2: unknown version or command {0:#04x}")]
    V2Command(u8),
    #[error("version 2: unknown family or transport {0:#04x}")]
    V2Family(u8),
    #[error("version 2: {0} bytes of addresses and TLVs, over the {V2_MAX_BODY} accepted")]
    V2TooLong(usize),
    #[error("version 2: {length} bytes of addresses and TLVs, too few for family {family:#04x}")]
    V2Short { family: u8, length: usize },
    #[error("the connection ended within the header")]
    Truncated,
}

/// Whether `start` (a connection's first bytes, all of them if fewer than 12 came) begins
/// with a PROXY header's signature: `PROXY ` (version 1) or the 12 bytes of version 2.
pub fn looks_like_header(start: &[u8]) -> bool {
    start.starts_with(b"PROXY ") || start.starts_with(&V2_SIGNATURE)
}

/// Reads a header of either version from `io`, exactly its bytes.
pub async fn read<R: AsyncRead + Unpin>(io: &mut R) -> Result<Header, HeaderError> {
    let mut first = [0_u8; 1];
    if read_exact(io, &mut first).await.is_err() {
        return Err(HeaderError::Closed);
    }
    match first[0] {
        b'P' => read_v1(io).await,
        b'\r' => read_v2(io).await,
        other => Err(HeaderError::Missing(vec![other])),
    }
}

async fn read_exact<R: AsyncRead + Unpin>(io: &mut R, buf: &mut [u8]) -> Result<(), HeaderError> {
    io.read_exact(buf)
        .await
        .map(drop)
        .map_err(|_| HeaderError::Truncated)
}

/// Version 1, its `P` read: byte by byte up to its LF (a header is read once per connection, and
/// no byte past it may be taken).
async fn read_v1<R: AsyncRead + Unpin>(io: &mut R) -> Result<Header, HeaderError> {
    let mut line = vec![b'P'];
    loop {
        let mut byte = [0_u8; 1];
        read_exact(io, &mut byte).await?;
        line.push(byte[0]);
        if byte[0] == b'\n' {
            return parse_v1(&line);
        }
        if line.len() >= V1_MAX {
            return Err(HeaderError::V1TooLong);
        }
    }
}

/// A whole version 1 line, CRLF included.
pub fn parse_v1(line: &[u8]) -> Result<Header, HeaderError> {
    let text = line
        .strip_suffix(b"\r\n")
        .ok_or(HeaderError::V1Malformed("no CRLF at its end"))?;
    let text = std::str::from_utf8(text).map_err(|_| HeaderError::V1Malformed("not ASCII"))?;
    let mut fields = text.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(HeaderError::Missing(line.iter().copied().take(8).collect()));
    }
    let family = fields.next().ok_or(HeaderError::V1Malformed("no family"))?;
    if family == "UNKNOWN" {
        // Whatever follows is ignored (the spec's words).
        return Ok(Header { addresses: None });
    }
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => {
            return Err(HeaderError::V1Malformed(
                "a family other than TCP4, TCP6, UNKNOWN",
            ));
        }
    };
    let address = |field: Option<&str>| -> Result<IpAddr, HeaderError> {
        let field = field.ok_or(HeaderError::V1Malformed("too few fields"))?;
        let ip = if v6 {
            field.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            field.parse::<Ipv4Addr>().map(IpAddr::V4)
        };
        ip.map_err(|_| HeaderError::V1Malformed("an address not of its family"))
    };
    let port = |field: Option<&str>| -> Result<u16, HeaderError> {
        let field = field.ok_or(HeaderError::V1Malformed("too few fields"))?;
        // Decimal digits only, no sign, no leading zero (the spec's form).
        if field.is_empty()
            || !field.bytes().all(|b| b.is_ascii_digit())
            || (field.len() > 1 && field.starts_with('0'))
        {
            return Err(HeaderError::V1Malformed("a port not in decimal"));
        }
        field
            .parse()
            .map_err(|_| HeaderError::V1Malformed("a port not in 0-65535"))
    };
    let (source, destination) = (address(fields.next())?, address(fields.next())?);
    let (source_port, destination_port) = (port(fields.next())?, port(fields.next())?);
    if fields.next().is_some() {
        return Err(HeaderError::V1Malformed("too many fields"));
    }
    Ok(Header {
        addresses: Some((
            SocketAddr::new(source, source_port),
            SocketAddr::new(destination, destination_port),
        )),
    })
}

/// Version 2, its first byte read.
async fn read_v2<R: AsyncRead + Unpin>(io: &mut R) -> Result<Header, HeaderError> {
    let mut head = [0_u8; 16];
    head[0] = b'\r';
    read_exact(io, &mut head[1..]).await?;
    if head[..12] != V2_SIGNATURE {
        return Err(HeaderError::Missing(head[..12].to_vec()));
    }
    let length = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if length > V2_MAX_BODY {
        return Err(HeaderError::V2TooLong(length));
    }
    let mut body = vec![0_u8; length];
    read_exact(io, &mut body).await?;
    parse_v2(head[12], head[13], &body)
}

/// A version 2 header's version and command, family and transport, and what follows them.
pub fn parse_v2(command: u8, family: u8, body: &[u8]) -> Result<Header, HeaderError> {
    let local = match command {
        0x20 => true,
        0x21 => false,
        other => return Err(HeaderError::V2Command(other)),
    };
    let short = || HeaderError::V2Short {
        family,
        length: body.len(),
    };
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    let addresses = match family {
        // TCP over IPv4: 4 + 4 + 2 + 2.
        0x11 => {
            if body.len() < 12 {
                return Err(short());
            }
            let ip = |at: usize| Ipv4Addr::new(body[at], body[at + 1], body[at + 2], body[at + 3]);
            Some((
                SocketAddr::new(IpAddr::V4(ip(0)), port(8)),
                SocketAddr::new(IpAddr::V4(ip(4)), port(10)),
            ))
        }
        // TCP over IPv6: 16 + 16 + 2 + 2.
        0x21 => {
            if body.len() < 36 {
                return Err(short());
            }
            let ip = |at: usize| {
                let mut octets = [0_u8; 16];
                octets.copy_from_slice(&body[at..at + 16]);
                Ipv6Addr::from(octets)
            };
            Some((
                SocketAddr::new(IpAddr::V6(ip(0)), port(32)),
                SocketAddr::new(IpAddr::V6(ip(16)), port(34)),
            ))
        }
        // Unspecified: no address (LOCAL, or a transport this listener does not take).
        0x00 => None,
        // UDP, or UNIX sockets: not a TCP client's.
        _ if local => None,
        other => return Err(HeaderError::V2Family(other)),
    };
    Ok(Header {
        addresses: if local { None } else { addresses },
    })
}

/// The version 2 header of a connection from `source` to `destination` (both of one family;
/// an IPv4 one mapped in IPv6 is sent as IPv4).
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (source, destination) = (canonical(source), canonical(destination));
    let mut out = Vec::with_capacity(52);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12_u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36_u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(bytes: &[u8]) -> (Result<Header, HeaderError>, Vec<u8>) {
        let mut io = bytes;
        let header = read(&mut io).await;
        (header, io.to_vec())
    }

    fn addresses(source: &str, destination: &str) -> Option<(SocketAddr, SocketAddr)> {
        Some((source.parse().unwrap(), destination.parse().unwrap()))
    }

    #[tokio::test]
    async fn the_specs_version_1_examples_read_exactly_their_bytes() {
        let (header, rest) =
            read_all(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n\x16\x03\x01").await;
        assert_eq!(
            header.unwrap().addresses,
            addresses("192.168.0.1:56324", "192.168.0.11:443")
        );
        assert_eq!(rest, b"\x16\x03\x01", "the TLS bytes after it stay");
        let (header, _) =
            read_all(b"PROXY TCP6 ffff:f...:ffff ffff:f...:ffff 65535 65535\r\n").await;
        assert!(header.is_err(), "the spec's placeholder is not an address");
        let (header, _) = read_all(b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 65535\r\n").await;
        assert_eq!(
            header.unwrap().addresses,
            addresses("[2001:db8::1]:65535", "[2001:db8::2]:65535")
        );
        let (header, rest) = read_all(b"PROXY UNKNOWN\r\nX").await;
        assert_eq!(header.unwrap().addresses, None);
        assert_eq!(rest, b"X");
        let (header, _) =
            read_all(b"PROXY UNKNOWN ffff:f...:ffff ffff:f...:ffff 65535 65535\r\n").await;
        assert_eq!(header.unwrap().addresses, None);
    }

    #[tokio::test]
    async fn malformed_version_1_headers_are_refused_with_the_reason() {
        for (bytes, error) in [
            (
                &b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n"[..],
                HeaderError::V1Malformed("no CRLF at its end"),
            ),
            (
                b"PROXY TCP4 2001:db8::1 192.168.0.11 1 2\r\n",
                HeaderError::V1Malformed("an address not of its family"),
            ),
            (
                b"PROXY TCP4 192.168.0.1 192.168.0.11 056324 443\r\n",
                HeaderError::V1Malformed("a port not in decimal"),
            ),
            (
                b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n",
                HeaderError::V1Malformed("a port not in 0-65535"),
            ),
            (
                b"PROXY TCP4 192.168.0.1 192.168.0.11 +1 443\r\n",
                HeaderError::V1Malformed("a port not in decimal"),
            ),
            (b"", HeaderError::Closed),
            (
                b"PROXY TCP4 192.168.0.1 192.168.0.11 1 2 3\r\n",
                HeaderError::V1Malformed("too many fields"),
            ),
            (
                b"PROXY UDP4 192.168.0.1 192.168.0.11 1 2\r\n",
                HeaderError::V1Malformed("a family other than TCP4, TCP6, UNKNOWN"),
            ),
            (b"PROXY TCP4 192.168.0.1", HeaderError::Truncated),
        ] {
            assert_eq!(read_all(bytes).await.0, Err(error), "{bytes:?}");
        }
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
        assert_eq!(
            read_all(long.as_bytes()).await.0,
            Err(HeaderError::V1TooLong)
        );
        assert_eq!(
            read_all(b"\x16\x03\x01\x02\x00").await.0,
            Err(HeaderError::Missing(vec![0x16]))
        );
    }

    #[tokio::test]
    async fn version_2_reads_addresses_skips_tlvs_and_honours_local() {
        let mut bytes = encode_v2(
            "198.18.0.1:40000".parse().unwrap(),
            "198.18.100.1:443".parse().unwrap(),
        );
        assert_eq!(bytes.len(), 28);
        bytes.extend_from_slice(b"\x16");
        let (header, rest) = read_all(&bytes).await;
        assert_eq!(
            header.unwrap().addresses,
            addresses("198.18.0.1:40000", "198.18.100.1:443")
        );
        assert_eq!(rest, b"\x16");

        // IPv6, with a TLV (type 0x04, NOOP) the length covers: skipped.
        let mut bytes = encode_v2(
            "[2001:db8::1]:1".parse().unwrap(),
            "[2001:db8::2]:2".parse().unwrap(),
        );
        bytes[15] += 3;
        bytes.extend_from_slice(&[0x04, 0x00, 0x00]);
        let (header, rest) = read_all(&bytes).await;
        assert_eq!(
            header.unwrap().addresses,
            addresses("[2001:db8::1]:1", "[2001:db8::2]:2")
        );
        assert!(rest.is_empty());

        // LOCAL (a health check of the balancer in front): no client, the addresses ignored.
        let mut local = bytes.clone();
        local[12] = 0x20;
        assert_eq!(read_all(&local).await.0.unwrap().addresses, None);
        // UNSPEC with no body.
        let unspec = [&V2_SIGNATURE[..], &[0x21, 0x00, 0x00, 0x00]].concat();
        assert_eq!(read_all(&unspec).await.0.unwrap().addresses, None);
    }

    #[tokio::test]
    async fn malformed_version_2_headers_are_refused_with_the_reason() {
        let good = encode_v2(
            "198.18.0.1:40000".parse().unwrap(),
            "198.18.100.1:443".parse().unwrap(),
        );
        let with = |at: usize, value: u8| {
            let mut bytes = good.clone();
            bytes[at] = value;
            bytes
        };
        assert_eq!(
            read_all(&with(12, 0x11)).await.0,
            Err(HeaderError::V2Command(0x11))
        );
        assert_eq!(
            read_all(&with(12, 0x22)).await.0,
            Err(HeaderError::V2Command(0x22))
        );
        // UDP over IPv4 from a PROXY command: not a TCP client's.
        assert_eq!(
            read_all(&with(13, 0x12)).await.0,
            Err(HeaderError::V2Family(0x12))
        );
        // A length too short for IPv6 addresses.
        assert_eq!(
            read_all(&with(13, 0x21)).await.0,
            Err(HeaderError::V2Short {
                family: 0x21,
                length: 12
            })
        );
        // A length past the bytes sent, a huge one, a broken signature.
        assert_eq!(read_all(&with(15, 40)).await.0, Err(HeaderError::Truncated));
        let mut huge = with(14, 0xff);
        huge[15] = 0xff;
        assert_eq!(read_all(&huge).await.0, Err(HeaderError::V2TooLong(65535)));
        assert!(matches!(
            read_all(&with(5, b'X')).await.0,
            Err(HeaderError::Missing(_))
        ));
    }

    #[test]
    fn a_connection_start_is_recognised_as_a_header_or_not() {
        assert!(looks_like_header(b"PROXY TCP4 "));
        assert!(
            !looks_like_header(b"PROX"),
            "a signature cut short is not one"
        );
        assert!(looks_like_header(&V2_SIGNATURE));
        assert!(!looks_like_header(&V2_SIGNATURE[..5]));
        assert!(!looks_like_header(b"\x16\x03\x01\x00"));
        assert!(!looks_like_header(b"GET / HTTP/1.1"));
        assert!(!looks_like_header(b""));
    }

    #[test]
    fn a_mapped_ipv4_client_of_an_ipv6_listener_is_sent_as_ipv4() {
        let header = encode_v2(
            "[::ffff:198.18.0.1]:5".parse().unwrap(),
            "[::ffff:198.18.100.1]:443".parse().unwrap(),
        );
        assert_eq!(header[13], 0x11);
        let mixed = encode_v2(
            "198.18.0.1:5".parse().unwrap(),
            "[2001:db8::1]:443".parse().unwrap(),
        );
        assert_eq!(mixed[13], 0x21);
        assert_eq!(
            parse_v2(mixed[12], mixed[13], &mixed[16..])
                .unwrap()
                .addresses,
            addresses("[::ffff:198.18.0.1]:5", "[2001:db8::1]:443")
        );
    }
}
