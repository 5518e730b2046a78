//! Table changes are atomic for the datapath: while new connections open continuously and
//! long-lived ones exchange data, the CLI changes weights and adds a backend again and again;
//! every connection's packets reach one backend (its handshake completes with the backend
//! that accepted it, and none is reset).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use lb::lab::passthrough::{VIP_V4, backend_v4, lab_config};
use lb_tests::{
    clients::{assert_consistent, lab_client_config, open},
    daemon_lab::DaemonLab,
    long_lived::LongLived,
};

fn vip() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP_V4), 443)
}

#[test]
fn connections_see_one_backend_while_tables_change() {
    let env = DaemonLab::start("lbtat", 4, |paths| lab_config(paths, 3));
    let long_lived = LongLived::start(&env.lab, vip(), 100, Duration::from_millis(50));

    // New connections, opened and closed over and over until the changes are done.
    let done = Arc::new(AtomicBool::new(false));
    let config = lab_client_config(&env.lab);
    let churn = {
        let done = Arc::clone(&done);
        let ns = env
            .lab
            .client
            .spawn("churn", move || run_parallel_until(&done, config));
        ns.expect("starting the churn")
    };

    let backend = |i: usize| backend_v4(i).to_string();
    env.cli_ok(&["backend", "add", "web4", &backend(3)]);
    for round in 0..40u32 {
        let target = backend((round % 4) as usize);
        let weight = (1 + round % 5).to_string();
        env.cli_ok(&["backend", "set-weight", "web4", &target, &weight]);
        thread::sleep(Duration::from_millis(50));
    }
    done.store(true, Ordering::Relaxed);
    let churned = churn.join().expect("the churn thread");
    assert!(
        churned.len() > 200,
        "only {} connections churned",
        churned.len()
    );
    assert_consistent(&env.lab, &churned);

    let histories = long_lived.finish();
    let broken = histories.iter().filter(|h| h.failure.is_some()).count();
    assert_eq!(
        broken, 0,
        "long-lived connections broke while the tables changed"
    );
}

/// Opens connections from 6 threads until `done`, each with one exchange; every one must
/// succeed.
fn run_parallel_until(
    done: &Arc<AtomicBool>,
    config: Arc<rustls::ClientConfig>,
) -> Vec<lb_tests::clients::Served> {
    let mut served = Vec::new();
    while !done.load(Ordering::Relaxed) {
        let config = Arc::clone(&config);
        served.extend(run_parallel_here(6, move |i| {
            open(&config, vip(), &format!("churn {i}"))
                .unwrap_or_else(|e| panic!("a connection opened during the changes failed: {e}"))
                .served
        }));
    }
    served
}

/// Runs `job` 24 times over `threads` threads of the calling thread's namespace.
fn run_parallel_here<T: Send + 'static>(
    threads: usize,
    job: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let job = Arc::new(job);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let job = Arc::clone(&job);
            // Threads spawned here inherit this thread's network namespace.
            thread::spawn(move || (0..4).map(|k| job(t * 4 + k)).collect::<Vec<T>>())
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("a churn worker"))
        .collect()
}
