//! The daemon and its CLI end to end: `lb run` in the lab's balancer namespace, real TLS
//! clients in the client namespace, changes made with the `lb` CLI.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::net::{IpAddr, SocketAddr};

use lb::lab::{
    daemon::{DaemonProcess, lb_binary},
    passthrough::{PassthroughLab, VIP_NAME, VIP_V4, lab_config},
    tls_exchange,
};

#[test]
fn the_daemon_serves_tls_through_the_vip_and_answers_the_cli() {
    lb_tests::require_root();
    let mut lab = PassthroughLab::build("lbtd", 3).expect("building the lab");
    lab.start_tls(443).expect("starting the TLS backends");
    let daemon = DaemonProcess::start(&lb_binary().unwrap(), &lab.lb, |paths| lab_config(paths, 3))
        .expect("starting the daemon");

    let roots = lab.pki.roots().unwrap();
    let replies = lab
        .client
        .spawn("clients", move || {
            (0..30)
                .map(|_| {
                    tls_exchange(
                        VIP_NAME,
                        SocketAddr::new(IpAddr::V4(VIP_V4), 443),
                        &roots,
                        "hi",
                    )
                    .expect("a TLS exchange through the VIP")
                    .reply
                })
                .collect::<Vec<_>>()
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(replies.len(), 30);

    let out = daemon.cli(&["listener", "list"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("tls4") && text.contains("198.18.100.1:443/tcp"),
        "{text}"
    );
    let out = daemon.cli(&["stats"]).unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    println!("{}", daemon.log());
}
