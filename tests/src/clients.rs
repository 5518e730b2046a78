//! TLS clients of the lab's VIPs, run from the lab's client namespace, and the checks the
//! end-to-end tests make on what they saw.
//!
//! [`run_parallel`] runs a job `count` times over a few threads in a namespace.
//! [`connect_parallel`] uses it for one-shot connections (connect, one line, close) and
//! [`open_parallel`] for connections kept open ([`Held`]). Each connection is recorded as a
//! [`Served`]: the client's address, the backend named by the certificate the client verified
//! and the backend named in the reply. [`assert_consistent`] checks that these agree with the
//! backend whose TLS server accepted that client address; [`count_per_backend`] and
//! [`assert_shares`] check how the connections were balanced.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
};

use lb::lab::{
    LabError, NetNs, TlsClientConn, client_config,
    passthrough::{PassthroughLab, VIP_NAME},
};
use rustls::ClientConfig;

/// One connection as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// The client's address and port: the flow's source.
    pub local: SocketAddr,
    /// The backend (`backend-N`) named by the certificate the client verified.
    pub cert_backend: String,
    /// The backend named in the reply (`"{identity} {line}"`).
    pub reply_backend: String,
}

/// A connection kept open, and what its first exchange showed.
#[derive(Debug)]
pub struct Held {
    pub conn: TlsClientConn,
    pub served: Served,
}

/// Runs `job(i)` for `i` in `0..count`, spread over `threads` threads inside `ns`; returns the
/// results in the order of `i`. A panic in a job fails the caller.
pub fn run_parallel<T, F>(ns: &NetNs, count: usize, threads: usize, job: F) -> Vec<T>
where
    F: Fn(usize) -> T + Send + Sync + 'static,
    T: Send + 'static,
{
    let job = Arc::new(job);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let job = Arc::clone(&job);
            ns.spawn(&format!("client-{t}"), move || {
                (t..count)
                    .step_by(threads)
                    .map(|i| (i, job(i)))
                    .collect::<Vec<_>>()
            })
            .expect("starting a client thread")
        })
        .collect();
    let mut results: Vec<(usize, T)> = handles
        .into_iter()
        .flat_map(|h| {
            h.join()
                .expect("a client thread panicked (see its message above)")
        })
        .collect();
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, result)| result).collect()
}

/// The client configuration that trusts the lab's CA.
pub fn lab_client_config(lab: &PassthroughLab) -> Arc<ClientConfig> {
    let roots = lab.pki.roots().expect("the lab's trust store");
    client_config(&roots).expect("a client configuration")
}

/// Connects to `vip` with the lab's SNI, exchanges `line`, and keeps the connection open.
pub fn open(config: &Arc<ClientConfig>, vip: SocketAddr, line: &str) -> Result<Held, LabError> {
    let mut conn = TlsClientConn::connect_with(Arc::clone(config), VIP_NAME, vip)?;
    let reply = conn.exchange(line)?;
    let (reply_backend, echoed) = reply.split_once(' ').unwrap_or((&reply, ""));
    assert_eq!(echoed, line, "the reply {reply:?} does not echo {line:?}");
    let served = Served {
        local: conn.local_addr(),
        cert_backend: cert_backend(&conn.peer_names()),
        reply_backend: reply_backend.to_owned(),
    };
    Ok(Held { conn, served })
}

/// The backend a certificate belongs to: its name other than [`VIP_NAME`], without
/// `.lb.test`, or the names themselves if there is no such name.
pub fn cert_backend(names: &[String]) -> String {
    names
        .iter()
        .filter(|name| *name != VIP_NAME)
        .find_map(|name| name.strip_suffix(".lb.test"))
        .map_or_else(|| format!("(unknown certificate {names:?})"), str::to_owned)
}

/// Opens `count` connections to `vip` from the lab's client over `threads` threads, each
/// closed after one exchange. Any failure fails the test.
pub fn connect_parallel(
    lab: &PassthroughLab,
    vip: SocketAddr,
    count: usize,
    threads: usize,
) -> Vec<Served> {
    let config = lab_client_config(lab);
    run_parallel(&lab.client, count, threads, move |i| {
        open(&config, vip, &format!("hello {i}"))
            .unwrap_or_else(|e| panic!("connection {i} to {vip}: {e}"))
            .served
    })
}

/// Opens `count` connections to `vip` over `threads` threads and keeps them open.
pub fn open_parallel(
    lab: &PassthroughLab,
    vip: SocketAddr,
    count: usize,
    threads: usize,
) -> Vec<Held> {
    let config = lab_client_config(lab);
    run_parallel(&lab.client, count, threads, move |i| {
        open(&config, vip, &format!("hello {i}"))
            .unwrap_or_else(|e| panic!("connection {i} to {vip}: {e}"))
    })
}

/// Checks every connection: the backend its certificate and its reply name accepted its client
/// address. (Another backend may have accepted the same address for an earlier connection: the
/// kernel reuses a client port once its connection is closed, e.g. a connection reset when its
/// backend was removed. Within one connection, a second backend would have reset it.)
pub fn assert_consistent(lab: &PassthroughLab, served: &[Served]) {
    let mut accepted_by: HashMap<SocketAddr, Vec<&str>> = HashMap::new();
    for backend in &lab.backends {
        for peer in backend.servers.iter().flat_map(|s| s.accepted()) {
            accepted_by.entry(peer).or_default().push(&backend.name);
        }
    }
    for s in served {
        let holders = accepted_by.get(&s.local).map_or(&[][..], Vec::as_slice);
        assert!(
            holders.contains(&s.cert_backend.as_str()),
            "{}: accepted by {holders:?}, certificate of {}",
            s.local,
            s.cert_backend
        );
        assert_eq!(
            s.reply_backend, s.cert_backend,
            "{}: the reply and the certificate name different backends",
            s.local
        );
    }
}

/// Connections per backend (by certificate).
pub fn count_per_backend(served: &[Served]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for s in served {
        *counts.entry(s.cert_backend.clone()).or_insert(0) += 1;
    }
    counts
}

/// Checks that the backends' shares of `counts` are `expected` (backend, percent), each within
/// `tolerance` percentage points, and that no other backend served anything.
pub fn assert_shares(counts: &BTreeMap<String, usize>, expected: &[(&str, f64)], tolerance: f64) {
    let total: usize = counts.values().sum();
    assert!(total > 0, "no connections counted");
    for backend in counts.keys() {
        assert!(
            expected.iter().any(|(name, _)| name == backend),
            "{backend} served connections but was not expected to: {counts:?}"
        );
    }
    for (backend, percent) in expected {
        let count = counts.get(*backend).copied().unwrap_or(0);
        let share = count as f64 * 100.0 / total as f64;
        assert!(
            (share - percent).abs() <= tolerance,
            "{backend} served {share:.1}% ({count} of {total}), expected {percent:.1}% \
             ± {tolerance} points; all: {counts:?}"
        );
    }
}
