//! The balancer on a routed network, as an operator deploys it: the client behind a router,
//! the XDP program on the client-facing interface only, the backends behind another interface,
//! no outer source configured, real path MTUs (see `lb::lab::routed`).
//!
//! - TLS through the balancer: the daemon finds that the route to the backends leaves through
//!   the other interface and puts it into the redirect map; nothing goes through the kernel;
//!   when that interface takes no redirected frames, the daemon leaves it out and the kernel
//!   forwards the packets;
//! - without that entry, encapsulated packets still reach the backends, through the kernel,
//!   counted (`pass_no_tx_port`);
//! - path MTU discovery through the balancer: a download through a link with a smaller MTU
//!   completes because the router's "fragmentation needed" reaches the backend; an upload too
//!   big to encapsulate completes because the balancer answers it; with either off, it stalls;
//! - generic mode: a bulk upload completes (the kernel skips GRO on the interface; what a
//!   virtual peer aggregates is dropped as `drop_oversized`, not answered).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{net::IpAddr, time::Duration};

use lb::{
    config::{Config, HostDefaults},
    control::Body,
    lab::{
        daemon::DaemonPaths,
        passthrough::{VIP_NAME, VIP_V4, VIP_V6},
        routed::{BACK, FRONT, RoutedOptions, routed_config},
        tls_exchange,
    },
    loader::{AttachMode, Balancer, BalancerSpec},
    reconcile::Reconciler,
};
use lb_common::counters::Counter;
use lb_tests::routed::RoutedDaemon;

const MIB: u64 = 1 << 20;
/// A transfer that makes no progress for this long has stalled.
const STALL: Duration = Duration::from_secs(3);

fn vips() -> [IpAddr; 2] {
    [IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)]
}

fn start(prefix: &str, options: RoutedOptions, extra: &'static str) -> RoutedDaemon {
    RoutedDaemon::start(
        prefix,
        options,
        |_| (),
        move |paths| routed_config(paths, options.backends, extra),
    )
}

#[test]
fn tls_reaches_backends_behind_the_other_interface() {
    let env = start("lbtrt", RoutedOptions::default(), "");
    let status = env.status();
    let datapath = status.datapath.expect("the datapath in lb status");
    assert!(
        datapath.redirect_interfaces.contains(&BACK.to_owned()),
        "{BACK} is in the redirect map: {:?}\ndaemon log:\n{}",
        datapath.redirect_interfaces,
        env.daemon.log()
    );
    assert!(
        datapath
            .encap_sources
            .iter()
            .any(|s| s.contains("host default")),
        "the outer sources default to the host's: {:?}",
        datapath.encap_sources
    );
    let roots = env.lab.pki.roots().unwrap();
    for vip in vips() {
        let roots = roots.clone();
        let replies = env
            .lab
            .client
            .spawn("tls", move || {
                (0..50)
                    .map(|i| {
                        tls_exchange(
                            VIP_NAME,
                            std::net::SocketAddr::new(vip, 443),
                            &roots,
                            &format!("hello {i}"),
                        )
                        .unwrap_or_else(|e| panic!("connection {i} to {vip}: {e}"))
                        .reply
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(replies.iter().all(|r| r.starts_with("backend-")));
    }
    assert!(env.counter("tx_redirect") > 0, "redirected out of {BACK}");
    assert_eq!(
        env.counter("pass_no_tx_port"),
        0,
        "nothing went through the kernel for want of a redirect entry"
    );
    assert!(
        env.daemon.log().contains("added to the redirect map"),
        "the daemon says so:\n{}",
        env.daemon.log()
    );
}

/// The same layout, but the backend-facing interface takes no redirected frames (a veth whose
/// peer runs no XDP program; a NIC whose driver needs one is the same): a redirect to it would
/// vanish in the kernel. The daemon leaves it out of the redirect map and says so; the kernel
/// forwards the encapsulated packets, and every connection completes.
#[test]
fn an_interface_that_takes_no_redirected_frames_is_left_to_the_kernel() {
    if let Err(error) = lb::host::netdev::Netdev::connect() {
        eprintln!("skipped: this kernel does not report XDP features (Linux 6.3+): {error}");
        return;
    }
    let options = RoutedOptions {
        back_port_xdp: false,
        ..RoutedOptions::default()
    };
    let env = start("lbtrn", options, "");
    let datapath = env.status().datapath.expect("the datapath in lb status");
    assert!(
        !datapath.redirect_interfaces.contains(&BACK.to_owned()),
        "{BACK} is not in the redirect map: {:?}\ndaemon log:\n{}",
        datapath.redirect_interfaces,
        env.daemon.log()
    );
    let roots = env.lab.pki.roots().unwrap();
    for vip in vips() {
        let roots = roots.clone();
        env.lab
            .client
            .spawn("tls", move || {
                for i in 0..20 {
                    tls_exchange(VIP_NAME, std::net::SocketAddr::new(vip, 443), &roots, "hi")
                        .unwrap_or_else(|e| panic!("connection {i} to {vip}: {e}"));
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }
    assert!(env.counter("pass_no_tx_port") > 0, "through the kernel");
    assert_eq!(env.counter("tx_redirect"), 0, "nothing redirected");
    assert!(
        env.daemon.log().contains("takes no redirected XDP frames"),
        "the daemon says why:\n{}",
        env.daemon.log()
    );
}

/// The balancer loaded without the daemon, so without the backend-facing interface in its
/// redirect map: the encapsulated packets go to the kernel still addressed to this host, and
/// the kernel forwards them. Slow, counted, but nothing vanishes.
#[test]
fn without_a_redirect_entry_packets_still_reach_the_backends_through_the_kernel() {
    let mut lab =
        lb::lab::routed::RoutedLab::build("lbtrk", RoutedOptions::default()).expect("the lab");
    lab.start_tls(443).unwrap();
    let paths = DaemonPaths {
        socket: "/nonexistent/lb.sock".into(),
        pin_dir: "/nonexistent/pins".into(),
    };
    let config = Config::parse(&routed_config(&paths, 2, ""), "routed.toml").unwrap();
    let spec = BalancerSpec {
        geometry: config.ring_geometry(),
        conn_table_size: config.datapath.conn_table_size,
        pin_dir: None,
    };
    let (mut balancer, datapath) = Balancer::load(&spec).unwrap();
    let host = HostDefaults {
        encap_source_v4: Some(lb::lab::routed::LB_BACK_V4),
        encap_source_v6: Some(lb::lab::routed::LB_BACK_V6),
        ..HostDefaults::default()
    };
    let mut reconciler = Reconciler::new(datapath, config.datapath_config(&host)).unwrap();
    reconciler.apply(&config.passthrough_listeners()).unwrap();
    // As the daemon does: the outer source is this host's address, which the kernel accepts
    // on the interface the encapsulated packets come back in by only with accept_local.
    lab.lb
        .sysctl(&format!("net.ipv4.conf.{FRONT}.accept_local"), "1")
        .unwrap();
    lab.lb
        .run_here(|| balancer.attach(FRONT, AttachMode::Driver))
        .unwrap()
        .unwrap();
    let roots = lab.pki.roots().unwrap();
    for vip in vips() {
        let roots = roots.clone();
        lab.client
            .spawn("tls", move || {
                for i in 0..10 {
                    tls_exchange(VIP_NAME, std::net::SocketAddr::new(vip, 443), &roots, "hi")
                        .unwrap_or_else(|e| panic!("connection {i} to {vip}: {e}"));
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }
    let snapshot = reconciler.snapshot().unwrap();
    assert!(snapshot.counter(Counter::PassNoTxPort) > 0);
    assert_eq!(snapshot.counter(Counter::TxRedirect), 0);
}

/// The router's link to the client carries 1400 bytes while the client (and so the backends)
/// use 1500-byte segments: the backends' replies need the router's "fragmentation needed",
/// which goes to the VIP, to reach them.
#[test]
fn path_mtu_discovery_works_through_the_balancer() {
    let options = RoutedOptions {
        router_client_mtu: 1400,
        ..RoutedOptions::default()
    };
    let env = start("lbtpm", options, "");
    for vip in vips() {
        let reply = env
            .transfer(vip, Duration::from_secs(20), |conn| conn.download(4 * MIB))
            .unwrap_or_else(|e| panic!("downloading 4 MiB from {vip}: {e}\n{}", env.daemon.log()));
        assert!(reply.starts_with("backend-"), "{reply}");
    }
    assert!(
        env.counter("icmp_to_backend") >= 2,
        "one error per family at least"
    );

    // Off: the errors go to the balancer's kernel, the backends never learn, downloads stall.
    let config = std::fs::read_to_string(env.daemon.config_path()).unwrap();
    std::fs::write(
        env.daemon.config_path(),
        config.replace(
            "max_listeners = 8",
            "max_listeners = 8\nicmp_to_backends = false",
        ),
    )
    .unwrap();
    let run = env.cli(&["reload"]);
    assert!(run.success, "{}", run.stderr);
    // The backends remember the path MTU they learned: forget it.
    for backend in &env.lab.backends {
        backend.ns.ip(&["route", "flush", "cache"]).unwrap();
        backend.ns.ip(&["-6", "route", "flush", "cache"]).unwrap();
    }
    for vip in vips() {
        let result = env.transfer(vip, STALL, |conn| conn.download(4 * MIB));
        assert!(
            result.is_err(),
            "a download from {vip} through the small link completed without path MTU discovery"
        );
    }
}

/// Every link carries 1500 bytes: a client's full-sized segment does not fit once
/// encapsulated, and the balancer's answer tells the client the MTU to use.
#[test]
fn an_upload_too_big_to_encapsulate_is_answered_and_completes() {
    let env = start("lbtup", RoutedOptions::default(), "");
    for vip in vips() {
        let reply = env
            .transfer(vip, Duration::from_secs(20), |conn| conn.upload(4 * MIB))
            .unwrap_or_else(|e| panic!("uploading 4 MiB to {vip}: {e}\n{}", env.daemon.log()));
        assert_eq!(reply.split_whitespace().nth(1), Some("upload"), "{reply}");
    }
    assert!(env.counter("tx_icmp_too_big") >= 2);

    // Off: too-big packets are dropped (and counted), and uploads stall.
    let config = std::fs::read_to_string(env.daemon.config_path()).unwrap();
    std::fs::write(
        env.daemon.config_path(),
        config.replace(
            "max_listeners = 8",
            "max_listeners = 8\nicmp_too_big_per_sec = 0",
        ),
    )
    .unwrap();
    let run = env.cli(&["reload"]);
    assert!(run.success, "{}", run.stderr);
    // The client remembers the path MTU the answers gave it: forget it.
    env.lab.client.ip(&["route", "flush", "cache"]).unwrap();
    env.lab
        .client
        .ip(&["-6", "route", "flush", "cache"])
        .unwrap();
    let dropped = env.counter("drop_too_big");
    let result = env.transfer(IpAddr::V4(VIP_V4), STALL, |conn| conn.upload(4 * MIB));
    assert!(result.is_err(), "an upload completed without ICMP answers");
    assert!(env.counter("drop_too_big") > dropped);
}

/// In generic mode XDP runs on socket buffers, and the kernel skips GRO on an interface with a
/// generic XDP program (GRO left on here to show it): what comes off a wire arrives segment by
/// segment, and a bulk upload completes. `lb status` says how the program runs.
#[test]
fn in_generic_mode_a_bulk_upload_completes() {
    let env = RoutedDaemon::start(
        "lbtgen",
        RoutedOptions::default(),
        |lab| {
            // Segments that reach the balancer as from a wire (a veth that could send them as
            // one large segment skips GRO), and GRO on, as on a NIC.
            lab.front
                .run(&["ethtool", "-K", "lb", "tso", "off", "gso", "off"])
                .expect("turning segmentation offloads off");
            lab.lb
                .run(&["ethtool", "-K", FRONT, "gro", "on"])
                .expect("turning GRO on");
        },
        |paths| routed_config(paths, 2, "attach_mode = \"generic\""),
    );
    let status = env.status();
    let datapath = status.datapath.unwrap();
    assert_eq!(datapath.interfaces.len(), 1);
    assert_eq!(datapath.interfaces[0].attach_mode, "generic");
    let Body::Listeners(listeners) = env.json(&["listener", "list"]) else {
        panic!("lb listener list answered something else");
    };
    assert!(
        listeners
            .iter()
            .all(|l| l.attach_modes == [(FRONT.to_owned(), "generic".to_owned())])
    );
    for vip in vips() {
        let reply = env
            .transfer(vip, Duration::from_secs(20), |conn| conn.upload(8 * MIB))
            .unwrap_or_else(|e| panic!("uploading 8 MiB to {vip}: {e}\n{}", env.daemon.log()));
        assert!(reply.starts_with("backend-"), "{reply}");
    }
    assert_eq!(
        env.counter("drop_oversized"),
        0,
        "no aggregate reached the program"
    );
}
