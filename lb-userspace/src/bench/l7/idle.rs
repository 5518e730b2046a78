//! Memory per idle TLS connection: N connections opened to an offload listener, each with one
//! request answered (HTTP/1.1, or HTTP/2 by ALPN), then left open; the server's resident
//! memory (`VmRSS`) after, less before, over N.
//!
//! Each protocol gets a fresh lb daemon and a fresh HAProxy (one thread each, on the servers'
//! CPU, configured as the throughput rounds' are): in a process that has already served and
//! closed N connections, the allocator would hand the next N the memory the first freed, and
//! the growth would hide most of what a connection holds. The client runs on the generators'
//! CPU, 64 connections being opened at a time, and verifies the certificate as a browser does.

use std::{net::SocketAddr, path::Path, time::Duration};

use tokio::task::JoinSet;

use super::systems::{Systems, fresh_offload};
use crate::{
    bench::{BenchError, rss_kib},
    lab::l7::{HttpsConn, get},
};

/// Connections being opened at once.
const OPENING: usize = 64;
/// How long the servers get to settle after the last connection's request, before their
/// memory is read.
const SETTLE: Duration = Duration::from_millis(500);

/// Which server an idle sample is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Server {
    Lb,
    Haproxy,
}

/// One server's memory for one protocol.
#[derive(Clone, Debug, serde::Serialize)]
pub struct IdleRow {
    pub server: Server,
    pub http2: bool,
    pub connections: usize,
    /// Resident memory before the connections were opened, KiB.
    pub rss_before_kib: u64,
    /// And with them open, each after a request.
    pub rss_after_kib: u64,
}

impl IdleRow {
    /// Bytes of resident memory per connection.
    pub fn bytes_per_connection(&self) -> f64 {
        (self.rss_after_kib.saturating_sub(self.rss_before_kib) * 1024) as f64
            / self.connections.max(1) as f64
    }

    pub fn name(&self) -> &'static str {
        match (self.server, self.http2) {
            (Server::Lb, false) => "lb offload, HTTP/1.1",
            (Server::Lb, true) => "lb offload, HTTP/2",
            (Server::Haproxy, false) => "HAProxy offload, HTTP/1.1",
            (Server::Haproxy, true) => "HAProxy offload, HTTP/2",
        }
    }
}

/// Measures `connections` idle connections per server and protocol.
pub fn measure(
    runtime: &tokio::runtime::Runtime,
    systems: &Systems,
    lb: &Path,
    cpu: usize,
    connections: usize,
) -> Result<Vec<IdleRow>, BenchError> {
    let roots = systems.files.pki.roots()?;
    let mut rows = Vec::new();
    for http2 in [false, true] {
        let name = if http2 { "idle2" } else { "idle1" };
        let fresh = fresh_offload(systems, lb, cpu, name, connections)?;
        for (server, port, pid) in [
            (Server::Lb, fresh.lb_port, fresh.lb.child.pid()),
            (Server::Haproxy, fresh.haproxy_port, fresh.haproxy.pid()),
        ] {
            super::process::check_interrupt()?;
            let address = SocketAddr::from(([127, 0, 0, 1], port));
            // One connection first, so that what a process sets up once is not counted.
            drop(runtime.block_on(open(address, 1, http2, &roots))?);
            std::thread::sleep(SETTLE);
            let rss_before_kib = rss_kib(pid)?;
            let open = runtime.block_on(open(address, connections, http2, &roots))?;
            std::thread::sleep(SETTLE);
            let rss_after_kib = rss_kib(pid)?;
            drop(open);
            rows.push(IdleRow {
                server,
                http2,
                connections,
                rss_before_kib,
                rss_after_kib,
            });
        }
    }
    Ok(rows)
}

/// Opens `n` connections to `address`, each with one request answered 200, and returns them
/// open.
async fn open(
    address: SocketAddr,
    n: usize,
    http2: bool,
    roots: &rustls::RootCertStore,
) -> Result<Vec<HttpsConn>, BenchError> {
    let mut opened = Vec::with_capacity(n);
    let mut opening = JoinSet::new();
    let mut started = 0;
    while opened.len() < n {
        while started < n && opening.len() < OPENING {
            let roots = roots.clone();
            opening.spawn(async move {
                let mut conn =
                    HttpsConn::connect(address, Some(super::SERVER_NAME), &roots, http2).await?;
                let answer = conn.send(get(super::SERVER_NAME, "/", None)).await?;
                if answer.status != hyper::StatusCode::OK {
                    return Err(BenchError::Unexpected(format!(
                        "an idle connection's request was answered {}",
                        answer.status
                    )));
                }
                Ok::<_, BenchError>(conn)
            });
            started += 1;
        }
        match opening.join_next().await {
            Some(Ok(conn)) => opened.push(conn?),
            Some(Err(error)) => {
                return Err(BenchError::Unexpected(format!(
                    "a connection's task failed: {error}"
                )));
            }
            None => break,
        }
    }
    Ok(opened)
}
