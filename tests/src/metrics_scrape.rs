//! Scraping the daemon's Prometheus endpoint the way Prometheus does: a plain TCP client that
//! writes `GET /metrics HTTP/1.1` and reads the answer, from a thread inside the namespace the
//! daemon runs in (its `127.0.0.1` is that namespace's loopback).
//!
//! [`scrape`] returns the [`Scrape`]: status line, headers and body. [`Scrape::value`] reads one
//! sample by its series (the metric name with its labels, exactly as exposed).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use lb::lab::NetNs;

/// Connect, read and write timeout of the scrape.
const TIMEOUT: Duration = Duration::from_secs(5);

/// One answer of the metrics endpoint.
#[derive(Debug)]
pub struct Scrape {
    pub status_line: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Scrape {
    /// The value of the sample `series` (e.g. `lb_uptime_seconds` or
    /// `lb_backend_health{pool="web4",backend="198.18.0.10",state="healthy"}`), if exposed.
    pub fn value(&self, series: &str) -> Option<f64> {
        self.body.lines().find_map(|line| {
            let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
            rest.split_whitespace().next()?.parse().ok()
        })
    }

    /// The value of `series`; panics with the body if it is not exposed.
    pub fn expect_value(&self, series: &str) -> f64 {
        self.value(series)
            .unwrap_or_else(|| panic!("no sample {series} in:\n{}", self.body))
    }

    /// The header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET /metrics` from `address`, from a thread inside `ns`.
pub fn scrape(ns: &NetNs, address: SocketAddr) -> Scrape {
    let thread = ns
        .spawn("scrape", move || get_metrics(address))
        .expect("starting the scraping thread");
    let raw = thread
        .join()
        .expect("the scraping thread panicked")
        .unwrap_or_else(|e| panic!("scraping http://{address}/metrics: {e}"));
    parse_answer(&raw)
}

/// Sends the request (`Connection: close`) and reads the whole answer.
fn get_metrics(address: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&address, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nUser-Agent: lb-tests\r\n\
         Accept: application/openmetrics-text\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    Ok(raw)
}

/// Splits an HTTP/1.1 answer into its head and its body (by `Content-Length`, else to the
/// end). A chunked body is not expected: the endpoint sends a complete body.
fn parse_answer(raw: &[u8]) -> Scrape {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of the answer's head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let scrape = Scrape {
        status_line,
        headers,
        body: body.to_owned(),
    };
    assert!(
        scrape
            .header("transfer-encoding")
            .is_none_or(|te| !te.contains("chunked")),
        "a chunked answer: {:?}",
        scrape.headers
    );
    if let Some(length) = scrape.header("content-length") {
        let length: usize = length
            .parse()
            .unwrap_or_else(|e| panic!("Content-Length {length:?}: {e}"));
        assert_eq!(
            scrape.body.len(),
            length,
            "the body is not as long as its Content-Length"
        );
    }
    scrape
}
