//! A node's announcements (`[announce]`) through everything a daemon goes through, read from
//! the kernel table a routing daemon learns: the routes appear (IPv4 and IPv6, in a table
//! above 255 under a protocol number of the configuration's), `lb node drain` withdraws them
//! and the drain outlives a take-over, a take-over withdraws nothing (the table is watched
//! throughout, also after the device was deleted by hand and made again), a take-over onto
//! another table moves them, SIGTERM withdraws them and removes
//! the device, and so does SIGKILL, by the kernel. A device of the same name made by hand
//! refuses the start, saying so.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lb::lab::{
    daemon::{DaemonPaths, lb_binary},
    passthrough::{VIP_V4, VIP_V6, lab_config},
};
use lb_tests::daemon_lab::DaemonLab;

/// A table above 255 (the route messages carry it as an attribute) and a protocol of our own.
const TABLE: u32 = 300;
const OTHER_TABLE: u32 = 301;
const PROTOCOL: u8 = 201;
const DEVICE: &str = "lbvip0";

fn config(paths: &DaemonPaths) -> String {
    format!(
        "{}\n[announce]\ntable = {TABLE}\nprotocol = {PROTOCOL}\ndrain_wait = \"0s\"\n",
        lab_config(paths, 2)
    )
}

/// The destinations of the routes in `table` of the balancer's namespace, IPv4 then IPv6;
/// each must go through the daemon's device with its protocol.
fn routes(env: &DaemonLab, table: u32) -> Vec<String> {
    let mut found = Vec::new();
    for family in ["-4", "-6"] {
        let out = env
            .lab
            .lb
            .ip(&[family, "route", "show", "table", &table.to_string()])
            .unwrap_or_default();
        for line in out.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                line.contains(&format!("dev {DEVICE}"))
                    && line.contains(&format!("proto {PROTOCOL}")),
                "a route of another kind in table {table}: {line}"
            );
            found.push(
                line.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
    }
    found
}

fn both_vips() -> Vec<String> {
    vec![VIP_V4.to_string(), VIP_V6.to_string()]
}

/// Waits (up to 10 s) until `table` holds exactly `expected`.
fn wait_for(env: &DaemonLab, table: u32, expected: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = routes(env, table);
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "table {table} holds {now:?}, not {expected:?}:\n{}",
            env.daemon.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Takes over with this build and waits until the old daemon has exited.
fn take_over(env: &mut DaemonLab) {
    let mut old = env
        .daemon
        .take_over(&lb_binary().unwrap())
        .unwrap_or_else(|e| panic!("take-over: {e}\n{}", env.daemon.log()));
    assert!(
        old.exited_within(Duration::from_secs(20)).is_some(),
        "the old daemon did not exit"
    );
}

/// Takes over while reading the table every few milliseconds: the IPv4 VIP is never missing.
fn take_over_withdrawing_nothing(env: &mut DaemonLab) {
    let watching = Arc::new(AtomicBool::new(true));
    let missing = {
        let watching = Arc::clone(&watching);
        let ns = env.lab.lb.name().to_owned();
        thread::spawn(move || {
            let mut missing = Vec::new();
            while watching.load(Ordering::SeqCst) {
                let out = std::process::Command::new("ip")
                    .args([
                        "-n",
                        &ns,
                        "-4",
                        "route",
                        "show",
                        "table",
                        &TABLE.to_string(),
                    ])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if !text.contains(&VIP_V4.to_string()) {
                    missing.push(text);
                }
                thread::sleep(Duration::from_millis(2));
            }
            missing
        })
    };
    take_over(env);
    thread::sleep(Duration::from_millis(500));
    watching.store(false, Ordering::SeqCst);
    let missing = missing.join().unwrap();
    assert!(
        missing.is_empty(),
        "withdrawn during a take-over: {missing:?}\n{}",
        env.daemon.log()
    );
}

#[test]
fn announcements_follow_the_node_through_drains_take_overs_and_stops() {
    let mut env = DaemonLab::start("lbtann", 2, config);
    wait_for(&env, TABLE, &both_vips());
    let status = env.cli_ok(&["status"]);
    assert!(
        status.contains(&format!(
            "announce:    serving (table {TABLE}, protocol {PROTOCOL}, device {DEVICE})"
        )),
        "{status}"
    );

    // Drained: nothing announced, through a take-over too (the successor stays drained).
    let drained = env.cli_ok(&["node", "drain", "--timeout", "0s"]);
    assert!(drained.contains("withdrawn: "), "{drained}");
    assert_eq!(routes(&env, TABLE), Vec::<String>::new());
    take_over(&mut env);
    // Longer than the successor's table check (1 s): it does not announce on its own.
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        routes(&env, TABLE),
        Vec::<String>::new(),
        "announced again after a take-over"
    );
    assert!(env.cli_ok(&["status"]).contains("announce:    drained"));
    env.cli_ok(&["node", "undrain"]);
    wait_for(&env, TABLE, &both_vips());

    // A take-over withdraws nothing: the table is read every few milliseconds meanwhile.
    take_over_withdrawing_nothing(&mut env);

    // A device deleted by hand is made again, and the new one is what a take-over hands on.
    env.lab.lb.ip(&["link", "del", DEVICE]).unwrap();
    wait_for(&env, TABLE, &both_vips());
    take_over_withdrawing_nothing(&mut env);

    // A take-over onto another table: the predecessor's table is emptied, the new one filled.
    let path = env.daemon.config_path().to_owned();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            &format!("table = {TABLE}"),
            &format!("table = {OTHER_TABLE}"),
        ),
    )
    .unwrap();
    take_over(&mut env);
    wait_for(&env, OTHER_TABLE, &both_vips());
    assert_eq!(
        routes(&env, TABLE),
        Vec::<String>::new(),
        "left in the old table"
    );

    // SIGTERM: withdrawn, the device gone.
    env.daemon.stop().unwrap();
    assert_eq!(
        routes(&env, OTHER_TABLE),
        Vec::<String>::new(),
        "announced after a stop"
    );
    assert!(
        env.lab.lb.ip(&["link", "show", DEVICE]).is_err(),
        "the device outlived the daemon"
    );

    // SIGKILL: the kernel removes the device, and its routes with it.
    env.daemon.restart().unwrap();
    wait_for(&env, OTHER_TABLE, &both_vips());
    env.daemon.kill().unwrap();
    wait_for(&env, OTHER_TABLE, &[]);
    assert!(env.lab.lb.ip(&["link", "show", DEVICE]).is_err());

    // A device of that name made by hand (persistent: it would outlive the daemon) is not
    // taken: the start is refused, naming it.
    env.lab
        .lb
        .ip(&["tuntap", "add", "dev", DEVICE, "mode", "tun"])
        .unwrap();
    let refused = env
        .daemon
        .restart()
        .expect_err("started beside a device of its name");
    assert!(
        refused.to_string().contains("a device of that name exists"),
        "{refused}"
    );
    env.lab.lb.ip(&["link", "del", DEVICE]).unwrap();
}
