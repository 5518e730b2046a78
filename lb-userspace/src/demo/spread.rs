//! Step 2: many short TLS connections to the VIP, spread over the backends by the XDP program.
//!
//! [`connect_many`] runs client threads in the client namespace; each opens connections one
//! after another with [`tls_exchange`] (handshake with SNI [`VIP_NAME`], one line, one reply).
//! [`Tally`] attributes every connection to the backend named by the certificate the client
//! verified, and checks that the reply line names the same backend. The table puts the
//! clients' view next to the datapath's (`lb stats`: new flows per backend), then the counters.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::{DemoError, LISTENER_V4, PORT, backend_of, interrupt, reply_backend, stats};
use crate::cli::render::Table;
use crate::lab::daemon::DaemonProcess;
use crate::lab::passthrough::{PassthroughLab, VIP_NAME, VIP_V4, VIP_V6};
use crate::lab::{Exchange, LabError, tls_exchange};

/// Connections to the IPv4 VIP, and client threads opening them.
const CONNECTIONS: usize = 1000;
const THREADS: usize = 8;

/// Connections to the IPv6 VIP.
const CONNECTIONS_V6: usize = 12;

/// What step 2 established.
#[derive(Debug)]
pub struct Spread {
    /// Connections that completed, over both address families.
    pub connections: usize,
}

/// Runs step 2 and prints its tables.
pub fn run(lab: &PassthroughLab, daemon: &DaemonProcess) -> Result<Spread, DemoError> {
    let vip4 = SocketAddr::new(IpAddr::V4(VIP_V4), PORT);
    let vip6 = SocketAddr::new(IpAddr::V6(VIP_V6), PORT);
    println!(
        "\n[2/6] {CONNECTIONS} TLS connections to {vip4} (SNI {VIP_NAME}), {THREADS} clients in parallel"
    );
    let started = Instant::now();
    let v4 = Tally::of(lab, connect_many(lab, vip4, CONNECTIONS)?);
    let elapsed = started.elapsed();
    let v6 = Tally::of(lab, connect_many(lab, vip6, CONNECTIONS_V6)?);
    interrupt::check()?;
    let stats = stats::fetch(daemon)?;

    println!(
        "{} handshakes and exchanges completed in {:.1} s, {} failed",
        v4.served(),
        elapsed.as_secs_f64(),
        v4.failed + v4.mismatched
    );
    print!("{}", backend_table(lab, &v4, &stats));
    v4.check_served(&vip4.to_string(), CONNECTIONS)?;
    v4.check_every_backend(lab, &vip4.to_string())?;
    // A dozen connections show dual stack; they may well miss a backend.
    v6.check_served(&vip6.to_string(), CONNECTIONS_V6)?;
    println!(
        "(XDP NEW FLOWS: SYNs the XDP program placed; a backend's first ones may go through the kernel while its MAC is resolved)"
    );
    println!(
        "each connection's backend is read from the certificate the client verified (backend-N.lb.test); the reply named the same backend {0} times of {0}",
        v4.served() + v6.served()
    );
    println!(
        "IPv6: {} connections to {vip6}, all served: {}",
        v6.served(),
        v6.spread_line()
    );
    print!("{}", stats::render_counters(&stats));
    Ok(Spread {
        connections: v4.served() + v6.served(),
    })
}

/// Opens `count` connections to `vip` from [`THREADS`] threads in the client namespace.
/// Stops early (returning what it has) when interrupted.
fn connect_many(
    lab: &PassthroughLab,
    vip: SocketAddr,
    count: usize,
) -> Result<Vec<Result<Exchange, LabError>>, DemoError> {
    let roots = lab.pki.roots()?;
    let threads = THREADS.min(count);
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        // Thread t opens every `threads`-th connection.
        let share = (count + threads - 1 - t) / threads;
        let roots = roots.clone();
        let name = format!("demo-client-{t}");
        let handle = lab.client.spawn(&name, move || {
            let mut results = Vec::with_capacity(share);
            for i in 0..share {
                if interrupt::is_interrupted() {
                    break;
                }
                let line = format!("hello {t}.{i}");
                results.push(tls_exchange(VIP_NAME, vip, &roots, &line));
            }
            results
        })?;
        handles.push((name, handle));
    }
    Ok(interrupt::join_all(handles)?
        .into_iter()
        .flatten()
        .collect())
}

/// Connections per backend, as the clients saw them.
#[derive(Debug, Default)]
struct Tally {
    /// Backend name -> connections it served (certificate and reply agreeing).
    per_backend: BTreeMap<String, usize>,
    failed: usize,
    /// Certificate of one backend, reply from another (or an unknown certificate).
    mismatched: usize,
    first_problem: Option<String>,
}

impl Tally {
    fn of(lab: &PassthroughLab, results: Vec<Result<Exchange, LabError>>) -> Self {
        let mut tally = Self::default();
        for result in results {
            match result {
                Ok(exchange) => tally.add(lab, &exchange),
                Err(error) => {
                    tally.failed += 1;
                    tally.first_problem.get_or_insert(error.to_string());
                }
            }
        }
        tally
    }

    fn add(&mut self, lab: &PassthroughLab, exchange: &Exchange) {
        let replied = reply_backend(&exchange.reply);
        match backend_of(lab, &exchange.peer_names) {
            Some(cert) if cert == replied => *self.per_backend.entry(cert).or_insert(0) += 1,
            cert => {
                self.mismatched += 1;
                self.first_problem.get_or_insert(format!(
                    "certificate of {cert:?} ({:?}) but the reply {:?}",
                    exchange.peer_names, exchange.reply
                ));
            }
        }
    }

    fn served(&self) -> usize {
        self.per_backend.values().sum()
    }

    /// Every connection completed, with agreeing certificate and reply.
    fn check_served(&self, vip: &str, expected: usize) -> Result<(), DemoError> {
        if self.failed > 0 || self.mismatched > 0 || self.served() != expected {
            return Err(DemoError::Claim(format!(
                "connections to {vip}: {} of {expected} served correctly, {} failed, {} answered by another backend than their certificate's; first problem: {}",
                self.served(),
                self.failed,
                self.mismatched,
                self.first_problem.as_deref().unwrap_or("none recorded"),
            )));
        }
        Ok(())
    }

    /// Every backend of the lab served some connections.
    fn check_every_backend(&self, lab: &PassthroughLab, vip: &str) -> Result<(), DemoError> {
        if let Some(idle) = lab
            .backends
            .iter()
            .find(|b| !self.per_backend.contains_key(&b.name))
        {
            return Err(DemoError::Claim(format!(
                "{} got none of the {} connections to {vip}: the Maglev table should give every backend a share",
                idle.name,
                self.served()
            )));
        }
        Ok(())
    }

    /// `backend-0 4, backend-1 5, ...`.
    fn spread_line(&self) -> String {
        self.per_backend
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Connections per backend, next to the new flows the datapath counted for it.
fn backend_table(lab: &PassthroughLab, tally: &Tally, stats: &crate::control::StatsView) -> String {
    let total = tally.served().max(1);
    let mut table = Table::new(&[
        "BACKEND",
        "ADDRESS",
        "CONNECTIONS",
        "SHARE",
        "XDP NEW FLOWS",
    ]);
    for backend in &lab.backends {
        let served = tally.per_backend.get(&backend.name).copied().unwrap_or(0);
        let traffic = stats::backend_traffic(stats, LISTENER_V4, IpAddr::V4(backend.v4));
        table.row(vec![
            backend.name.clone(),
            backend.v4.to_string(),
            served.to_string(),
            format!("{:.1}%", served as f64 * 100.0 / total as f64),
            traffic.new_flows.to_string(),
        ]);
    }
    table.render()
}
