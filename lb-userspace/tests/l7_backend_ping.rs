//! HTTP/2 connections to backends are kept honest by PING: a backend that goes silent without
//! closing (black-holed: its packets, or its process, stop answering) is found within
//! `h2_ping_interval` + `h2_ping_timeout`, its connection closed and the requests on it
//! failed over, not left waiting for `response_timeout` or the kernel's TCP timeout.
//!
//! The black hole is a TCP relay between the balancer and the backend that, once told to,
//! keeps both connections open and passes nothing on: the balancer's segments are still
//! acknowledged (by the relay's kernel), as a process that hangs would leave them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

mod common;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::l7::{HOST, Settings, Site, http_backends};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

/// A relay to `target` that can be made a black hole.
struct Relay {
    port: u16,
    hole: Arc<AtomicBool>,
    /// Connections the balancer closed.
    closed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hole = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicU64::new(0));
        let (h, c) = (Arc::clone(&hole), Arc::clone(&closed));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let backend = TcpStream::connect(target).await.unwrap();
                tokio::spawn(relay(client, backend, Arc::clone(&h), Arc::clone(&c)));
            }
        });
        Self {
            port,
            hole,
            closed,
            task,
        }
    }
}

async fn relay(
    mut client: TcpStream,
    mut backend: TcpStream,
    hole: Arc<AtomicBool>,
    closed: Arc<AtomicU64>,
) {
    let mut up = [0u8; 16 * 1024];
    let mut down = [0u8; 16 * 1024];
    loop {
        let holed = hole.load(Ordering::Relaxed);
        tokio::select! {
            read = client.read(&mut up) => match read {
                Ok(0) | Err(_) => {
                    closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                // A black hole swallows what it is sent.
                Ok(n) if !holed && !hole.load(Ordering::Relaxed) => {
                    if backend.write_all(&up[..n]).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
            },
            read = backend.read(&mut down), if !holed => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if hole.load(Ordering::Relaxed) {
                        continue;
                    }
                    if client.write_all(&down[..n]).await.is_err() {
                        return;
                    }
                }
            },
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_http2_backend_is_found_within_the_ping_timeout() {
    let backends = http_backends(1).await;
    let relay = Relay::start(backends[0].address).await;
    let settings = Settings {
        backend: "protocol = \"http2\"\nh2_ping_interval = \"500ms\"\nh2_ping_timeout = \"500ms\"\nresponse_timeout = \"60s\"",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-ping", Vec::new(), &[relay.port], settings);
    let _backends = backends;
    let get = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");

    let mut conn = site.h1().await;
    conn.write(get.as_bytes()).await.unwrap();
    assert_eq!(conn.response().await.status, 200, "through the relay");
    // Idle pings are answered: the connection stays.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        relay.closed.load(Ordering::Relaxed),
        0,
        "a live backend's connection stays"
    );
    conn.write(get.as_bytes()).await.unwrap();
    assert_eq!(
        conn.response().await.status,
        200,
        "on the same HTTP/2 connection"
    );

    relay.hole.store(true, Ordering::Relaxed);
    let start = Instant::now();
    // A request sent into the hole fails when the PING goes unanswered, not after the
    // response timeout.
    conn.write(get.as_bytes()).await.unwrap();
    let answer = conn.response().await;
    let took = start.elapsed();
    assert_eq!(answer.status, 502, "{answer:?}");
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    println!("black hole found after {took:?}");
    // The relay notices the balancer's close a moment after the answer went out.
    let deadline = Instant::now() + Duration::from_secs(2);
    while relay.closed.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the balancer did not close its connection to the silent backend"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
