//! The PROXY protocol on loopback, in-process, against real HAProxy processes (issue 13 §2):
//!
//! - accepting: HAProxy in TCP mode in front of the listener (`send-proxy-v2` and
//!   `send-proxy`, from a trusted source address) hands on a client whose address the backend
//!   then sees in `X-Forwarded-For`; a header from an untrusted source, a trusted source without
//!   a header, and a malformed header are refused and counted; a direct client is served as
//!   before;
//! - sending: an HAProxy backend with `accept-proxy` answers with the source it was told
//!   (`%[src]:%[src_port]`), offload and bridging; two clients never share a backend
//!   connection (each sees its own address, on every request of its keep-alive connection).
//!
//! Each client binds its own loopback address (127.0.0.7, 127.0.0.8, ...) so that the
//! addresses tell them apart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    http::values,
    l7::{HOST, Mode, Setup, Site, free_port, loopback},
};
use lb::lab::l7::LabDir;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// The address HAProxy connects to the listener from: the only trusted one.
const TRUSTED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// An HAProxy process of a configuration, stopped on drop.
struct Haproxy {
    child: Child,
    log: std::path::PathBuf,
}

impl Haproxy {
    /// Starts `haproxy -db -f` on `config` (written in `dir`) and waits for `ports`.
    fn start(dir: &LabDir, name: &str, config: &str, ports: &[u16]) -> Self {
        let file = dir
            .write(&format!("{name}.cfg"), config.as_bytes())
            .unwrap();
        let log = dir.path.join(format!("{name}.log"));
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("haproxy (cargo xtask setup installs it)");
        let haproxy = Self { child, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in ports {
            while std::net::TcpStream::connect(loopback(*port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "haproxy did not listen on {port}:\n{}",
                    std::fs::read_to_string(&haproxy.log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        haproxy
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

/// A TCP connection to `to` from `from` (a port of its own).
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// `GET path` over HTTP/1.1 on `tcp` (TLS with the listener); the answers to `n` of them.
async fn get_n(
    site: &Site,
    tcp: TcpStream,
    path: &str,
    n: usize,
) -> Vec<common::http::RawResponse> {
    let mut conn = site.h1_over(tcp).await;
    let mut answers = Vec::new();
    for _ in 0..n {
        conn.write(format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        answers.push(conn.response().await);
    }
    answers
}

/// Whether the listener closes `tcp` (after `sent`) without answering.
async fn is_closed_after(mut tcp: TcpStream, sent: &[u8]) -> bool {
    drop(tcp.write_all(sent).await);
    let mut buf = [0_u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_balancer_in_front_names_the_client_and_no_one_else_may() {
    let mut setup = Setup::new("lb-pp-accept", Mode::Offload);
    setup.plain_backend("backend-0").await;
    setup.listener(&format!(
        "proxy_protocol_from = [\"{TRUSTED}/32\", \"2001:db8::/32\"]"
    ));
    let site = setup.start();
    let dir = LabDir::new("lb-pp-haproxy").unwrap();
    let (v2, v1) = (free_port(), free_port());
    let lb = site.address;
    let config = format!(
        "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  \
         timeout server 30s\n\
         listen v2\n  bind 127.0.0.1:{v2}\n  server lb {lb} send-proxy-v2 source {TRUSTED}\n\
         listen v1\n  bind 127.0.0.1:{v1}\n  server lb {lb} send-proxy source {TRUSTED}\n"
    );
    let _haproxy = Haproxy::start(&dir, "front", &config, &[v2, v1]);

    // Through HAProxy, both versions: the backend sees the client's address, not HAProxy's.
    for (port, client) in [
        (v2, Ipv4Addr::new(127, 0, 0, 7)),
        (v1, Ipv4Addr::new(127, 0, 0, 8)),
    ] {
        let tcp = connect_from(client, loopback(port)).await;
        let answers = get_n(&site, tcp, "/headers", 2).await;
        for answer in &answers {
            assert_eq!(answer.status, 200, "{}", answer.text());
            let (_, headers) = common::http::echoed(&answer.body);
            assert_eq!(
                values(&headers, "x-forwarded-for"),
                [client.to_string()],
                "{}",
                answer.text()
            );
        }
    }

    // A direct client (not a trusted source, no header): served, its own address forwarded.
    let tcp = connect_from(Ipv4Addr::new(127, 0, 0, 9), lb).await;
    let answer = get_n(&site, tcp, "/headers", 1).await.remove(0);
    let (_, headers) = common::http::echoed(&answer.body);
    assert_eq!(values(&headers, "x-forwarded-for"), ["127.0.0.9"]);

    // A header from an untrusted source: refused, counted; nothing reached the backend.
    let requests = site.requests();
    let forged = b"PROXY TCP4 198.18.0.1 127.0.0.1 1234 443\r\n";
    let untrusted = connect_from(Ipv4Addr::new(127, 0, 0, 9), lb).await;
    assert!(is_closed_after(untrusted, forged).await);
    let mut v2_forged = lb::l7::proxy_protocol::encode_v2("198.18.0.1:1234".parse().unwrap(), lb);
    v2_forged.extend_from_slice(b"\x16\x03\x01");
    let untrusted = connect_from(Ipv4Addr::new(127, 0, 0, 9), lb).await;
    assert!(is_closed_after(untrusted, &v2_forged).await);
    assert_eq!(site.counter(|c| &c.proxy_header_untrusted), 2);

    // The trusted source without a header (a TLS hello), and with a malformed one: refused.
    let trusted = connect_from(TRUSTED, lb).await;
    assert!(is_closed_after(trusted, b"\x16\x03\x01\x02\x00\x01\x00").await);
    let trusted = connect_from(TRUSTED, lb).await;
    assert!(is_closed_after(trusted, b"PROXY TCP4 1.2.3.4\r\n").await);
    assert_eq!(site.counter(|c| &c.proxy_header_errors), 2);
    assert_eq!(
        site.requests(),
        requests,
        "a refused connection reached a backend"
    );
}

/// An HAProxy backend that answers every request with the source its PROXY header named;
/// `tls`: the certificate and key (one PEM file) it serves HTTPS with.
fn echo_source_config(port: u16, tls: Option<&Path>) -> String {
    let ssl = tls.map_or_else(String::new, |pem| format!(" ssl crt {}", pem.display()));
    format!(
        "global\n  maxconn 100\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  \
         timeout server 30s\n  timeout http-keep-alive 30s\n\
         frontend echo\n  bind 127.0.0.1:{port} accept-proxy{ssl}\n  \
         http-request return status 200 content-type text/plain lf-string \"%[src]:%[src_port]\"\n"
    )
}

async fn sent_to_an_accept_proxy_backend(mode: Mode) {
    let port = free_port();
    let mut setup = Setup::new("lb-pp-send", mode);
    setup.other_port(port);
    setup.backend_setting("proxy_protocol = \"v2\"");
    let pem = (mode == Mode::Bridging).then(|| {
        let issued = setup.backend_pki.issue(&["127.0.0.1"]).unwrap();
        setup
            .dir
            .write(
                "haproxy.pem",
                format!("{}{}", issued.chain_pem(), issued.key_pem()).as_bytes(),
            )
            .unwrap()
    });
    let dir = LabDir::new("lb-pp-echo").unwrap();
    let _haproxy = Haproxy::start(
        &dir,
        "echo",
        &echo_source_config(port, pem.as_deref()),
        &[port],
    );
    let site = setup.start();

    // Two clients, each on a keep-alive connection, interleaved: each sees its own address and
    // port on every request (a backend connection of one is never the other's).
    let a = connect_from(Ipv4Addr::new(127, 0, 0, 7), site.address).await;
    let b = connect_from(Ipv4Addr::new(127, 0, 0, 8), site.address).await;
    let (a_port, b_port) = (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    );
    let mut a = site.h1_over(a).await;
    let mut b = site.h1_over(b).await;
    for _ in 0..3 {
        for (conn, expected) in [
            (&mut a, format!("127.0.0.7:{a_port}")),
            (&mut b, format!("127.0.0.8:{b_port}")),
        ] {
            conn.write(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let answer = conn.response().await;
            assert_eq!(answer.status, 200, "{mode:?}: {}", answer.text());
            assert_eq!(
                String::from_utf8_lossy(&answer.body),
                expected,
                "{mode:?}: the backend was told another client"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accept_proxy_backend_is_told_each_client_offload() {
    sent_to_an_accept_proxy_backend(Mode::Offload).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accept_proxy_backend_is_told_each_client_bridging() {
    sent_to_an_accept_proxy_backend(Mode::Bridging).await;
}
