//! A small lab network for tests, `lb demo` and benchmarks: network namespaces joined by veth
//! pairs, with real TLS servers and clients in them.
//!
//! - [`netns`]: [`NetNs`], a guard for a named network namespace (deleted on drop), running
//!   commands and threads inside it, [`veth`] pairs between two namespaces, and [`sweep_stale`]
//!   for namespaces left behind by a killed run;
//! - [`passthrough`]: [`PassthroughLab`](passthrough::PassthroughLab), the namespaces of a
//!   passthrough deployment (client, balancer, backends on one switched segment), with the
//!   backends' decapsulation programs attached and TLS servers on the VIP;
//! - [`routed`]: [`RoutedLab`](routed::RoutedLab), the client behind a router and the balancer
//!   between a client-facing and a backend-facing segment (two interfaces, real path MTUs),
//!   optionally with the VIPs on the balancer's `lo` and the backends' replies routed back
//!   through it;
//! - [`scale_out`]: [`ScaleOutLab`](scale_out::ScaleOutLab), several balancer nodes behind a
//!   router that spreads flows over them by ECMP, each node announcing the VIPs by BGP with
//!   its own BIRD, the backends behind the router;
//! - [`bird`]: [`Bird`](bird::Bird), a BIRD 2 child process inside a lab namespace with its
//!   own configuration, control socket and logs, stopped on drop; the shipped node fragment;
//! - [`daemon`]: [`DaemonProcess`](daemon::DaemonProcess), an `lb run` child process inside a
//!   lab namespace, with its own socket and pins, stopped (SIGTERM) on drop;
//! - [`http`]: [`HttpBackend`](http::HttpBackend), an HTTP/1.1 and HTTP/2 backend (plain or
//!   TLS) that names itself, echoes, streams, delays and upgrades, for the L7 listeners;
//! - [`l7`]: L7 listeners served in-process on loopback ([`L7Lab`](l7::L7Lab)), their files in
//!   a private directory ([`LabDir`](l7::LabDir)), and an HTTPS client
//!   ([`HttpsConn`](l7::HttpsConn));
//! - [`http_host`]: [`HttpHost`](http_host::HttpHost), a lab host's plain and TLS
//!   [`HttpBackend`](http::HttpBackend)s on a runtime in a thread inside its namespace, stopped
//!   on drop;
//! - [`side_by_side`]: passthrough and L7 listeners on one VIP of a
//!   [`PassthroughLab`](passthrough::PassthroughLab): the VIP on the balancer's `lo`, HTTP
//!   servers in the backends, the listeners' files ([`L7Files`](side_by_side::L7Files)) and
//!   configuration ([`L7Listeners`](side_by_side::L7Listeners));
//! - [`tls`]: [`Pki`], a throw-away certificate authority issuing leaf certificates (valid,
//!   expired, or from another CA); [`TlsServer`], a line-echo TLS backend that records who
//!   connected; [`tls_exchange`] and [`TlsClientConn`], blocking TLS clients.
//!
//! Data flow: a test creates namespaces, links them with veths and addresses, issues a
//! certificate from a [`Pki`], starts [`TlsServer`]s inside the backend namespaces and connects
//! to them with a client from a thread spawned in the client namespace ([`NetNs::spawn`]).
//!
//! Traffic goes only to loopback or to addresses inside namespaces the lab creates: give lab
//! hosts addresses from 198.18.0.0/15 and 2001:db8::/32, nothing else.

pub mod bird;
pub mod daemon;
pub mod http;
pub mod http_host;
pub mod l7;
pub mod netns;
pub mod passthrough;
pub mod routed;
pub mod scale_out;
pub mod side_by_side;
pub mod tls;

use std::io;
use std::net::SocketAddr;

pub use netns::{NetNs, sweep_stale, veth};
pub use tls::{
    ClientTls, Exchange, Issued, Pki, TlsClientConn, TlsServer, Versions, client_config,
    tls_exchange,
};

/// Everything that can go wrong while building or using the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Loading or attaching an XDP program failed.
    #[error(transparent)]
    Xdp(#[from] crate::loader::LoadError),
    /// A file or process of the lab could not be handled.
    #[error("{what}: {source}")]
    File {
        /// What was being done.
        what: &'static str,
        /// The failure.
        source: io::Error,
    },
    /// A lab daemon did not start or stop as it should.
    #[error("lab daemon: {0}")]
    Daemon(String),
    /// A name (namespace prefix, interface) that the kernel or `ip` would reject.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected and what would be accepted.
        reason: &'static str,
    },
    /// A command could not be started at all.
    #[error(
        "could not run `{command}`: {source}; is iproute2 installed (`apt-get install iproute2`)?"
    )]
    Spawn {
        /// The command line.
        command: String,
        /// Why it could not start.
        source: io::Error,
    },
    /// A directory could not be listed.
    #[error("could not list {path}: {source}")]
    ReadDir {
        /// The directory.
        path: &'static str,
        /// The failed `read_dir`.
        source: io::Error,
    },
    /// A command ran and exited with a failure status.
    #[error(
        "`{command}` failed ({status}): {stderr}; the lab needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    )]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it wrote to stderr, trimmed.
        stderr: String,
    },
    /// The calling thread could not join a namespace.
    #[error(
        "could not enter network namespace {name}: {source}; `ip netns list` shows what exists"
    )]
    Enter {
        /// The namespace name.
        name: String,
        /// The failed `open` or `setns`.
        source: io::Error,
    },
    /// A thread could not be started, or ended before saying it was ready.
    #[error("thread {name}: {reason}")]
    Thread {
        /// The thread name.
        name: String,
        /// What happened to it.
        reason: String,
    },
    /// The certificate authority could not generate a key or certificate.
    #[error("could not generate {what}: {source}")]
    Certificate {
        /// What was being generated.
        what: String,
        /// The rcgen error.
        source: rcgen::Error,
    },
    /// A rustls configuration was rejected (bad key, unsupported protocol versions).
    #[error("TLS configuration rejected: {0}")]
    TlsConfig(#[source] rustls::Error),
    /// A client's certificate verifier could not be built from its roots.
    #[error("TLS verifier rejected: {0}; give it a trust store with the lab CA in it")]
    Verifier(#[source] rustls::client::VerifierBuilderError),
    /// A client was asked to connect to a name that is neither a DNS name nor an IP address.
    #[error("invalid TLS server name {0:?}: use a DNS name or an IP address")]
    ServerName(String),
    /// A socket operation failed.
    #[error("{what} {addr}: {source}")]
    Io {
        /// What was being done (`bind`, `connect to`, `exchange with`, ...).
        what: &'static str,
        /// The address involved.
        addr: SocketAddr,
        /// The socket error.
        source: io::Error,
    },
    /// The TLS handshake failed; `source` tells why (unknown issuer, wrong name, expired).
    #[error("TLS handshake with {server_name} at {addr} failed: {source}")]
    Handshake {
        /// The name the client asked for (SNI and verification).
        server_name: String,
        /// The server address.
        addr: SocketAddr,
        /// The rustls error, e.g. `InvalidCertificate(UnknownIssuer)`.
        source: rustls::Error,
    },
    /// The peer closed the connection before answering.
    #[error("{addr} closed the connection before replying")]
    Closed {
        /// The server address.
        addr: SocketAddr,
    },
    /// A line to send contained a newline; the line protocol has one line per message.
    #[error("line {0:?} contains a newline; send one line at a time")]
    Line(String),
}

/// A TCP port on 127.0.0.1 that was free a moment ago: the kernel's choice, bound and released
/// for the caller to bind (or, with nothing listening on it, for a backend that refuses).
pub fn free_port() -> io::Result<u16> {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?
        .local_addr()
        .map(|a| a.port())
}
