//! A backend's health endpoint for HTTP health checks: a plain-HTTP server in a backend's
//! namespace that answers every request with `200 OK`, until the test switches it to answering
//! like a TLS server does to plain text (a TLS alert record, then close): the backend still
//! accepts TCP connections, but its answers are not HTTP.
//!
//! [`HealthEndpoint::start`] binds the address inside the namespace and serves from a thread
//! until dropped; [`HealthEndpoint::set_answer`] switches what it answers, from the next
//! connection on.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use lb::lab::NetNs;

/// What the endpoint answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Answer {
    /// `HTTP/1.1 200 OK`.
    Ok = 0,
    /// A TLS alert record (fatal, unexpected message), as a TLS server answers plain text.
    NotHttp = 1,
}

/// A fatal `unexpected_message` alert in a TLS 1.2 record.
const TLS_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0a];

/// How often the accept loop looks at the stop flag when no connection comes.
const IDLE: Duration = Duration::from_millis(10);

/// How long the endpoint waits for a request's head.
const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// A running endpoint; stops when dropped.
pub struct HealthEndpoint {
    answer: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub address: SocketAddr,
}

impl HealthEndpoint {
    /// Listens on `address` inside `ns`, answering [`Answer::Ok`].
    pub fn start(ns: &NetNs, address: SocketAddr) -> Self {
        let listener = ns
            .run_here(|| TcpListener::bind(address))
            .expect("entering the backend's namespace")
            .unwrap_or_else(|e| panic!("binding the health endpoint {address}: {e}"));
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let answer = Arc::new(AtomicU8::new(Answer::Ok as u8));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (Arc::clone(&answer), Arc::clone(&stop));
        let thread = thread::Builder::new()
            .name(format!("health-{address}"))
            .spawn(move || serve(&listener, &a, &s))
            .expect("starting the health endpoint's thread");
        Self {
            answer,
            stop,
            thread: Some(thread),
            address,
        }
    }

    /// Answers `answer` from the next connection on.
    pub fn set_answer(&self, answer: Answer) {
        self.answer.store(answer as u8, Ordering::SeqCst);
    }
}

impl Drop for HealthEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            eprintln!("the health endpoint {} panicked", self.address);
        }
    }
}

/// Accepts and answers connections one at a time until `stop`.
fn serve(listener: &TcpListener, answer: &AtomicU8, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let now = if answer.load(Ordering::SeqCst) == Answer::NotHttp as u8 {
                    Answer::NotHttp
                } else {
                    Answer::Ok
                };
                // A check that gave up early is its own business.
                drop(respond(stream, now));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => thread::sleep(IDLE),
            Err(e) => panic!("the health endpoint's accept failed: {e}"),
        }
    }
}

/// Reads the request's head, then answers it and closes.
fn respond(mut stream: TcpStream, answer: Answer) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    match answer {
        Answer::Ok => stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"),
        Answer::NotHttp => stream.write_all(&TLS_ALERT),
    }
}
