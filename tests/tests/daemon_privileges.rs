//! Least privilege (issue 11 §4): the daemon run as `packaging/lb.service` runs it, and as root.
//!
//! - as the unit runs it: a user of its own (a numeric uid with no passwd entry, standing in for
//!   `User=lb`) with the unit's `AmbientCapabilities=`, `CapabilityBoundingSet=` and
//!   `NoNewPrivileges=`, read from the unit file itself and given by `setpriv`; its socket
//!   directory, pin directory and L7 files its own, as the unit's `RuntimeDirectory=` and
//!   `ExecStartPre=` (and the README) make them. Every thread of the daemon ends with exactly
//!   the kept capabilities (effective, permitted and bounding; none inheritable or ambient) and
//!   `no_new_privs`; passthrough and L7 traffic flows; every CLI operation works: lists,
//!   status, stats, simulate, backend add / set-weight / drain / remove (a new next hop made a
//!   managed neighbour after the drop), `lb reload` as root and as the daemon's user (the
//!   unit's `ExecReload=`) adding an L7 listener below port 1024, SIGHUP, `lb cert reload`;
//!   `accept_local` turned off is set again after the drop;
//! - started as root (as every other test runs it): it keeps only what it needs too, and a
//!   reload that would bind a port below 1024, which it no longer may, is refused saying why;
//! - started without a capability its configuration needs: refused before anything changes,
//!   naming the capability and why;
//! - the unit itself: `systemd-analyze verify` passes and `systemd-analyze security
//!   --offline=true` finds only the exposures listed here, each with its reason.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{
    collections::BTreeSet,
    ffi::OsString,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lb::{
    control::Body,
    daemon::privileges::{
        bpf_checks_every_call,
        caps::{Cap, CapSet, TaskState},
    },
    lab::{
        daemon::{Launch, lb_binary},
        l7::LabDir,
        passthrough::{CLIENT_V4, IFACE, VIP_NAME, backend_v4, backend_v6},
        side_by_side::{BRIDGING_PORT, OFFLOAD_POOL},
    },
};
use lb_tests::{
    clients::{assert_consistent, connect_parallel},
    daemon_lab::TLS_PORT,
    side_by_side::{L7Env, connect, fetch, handshake_names, in_client, vip},
};

/// The user and group the daemon runs as: no passwd entry needed.
const UID: u32 = 4_271;
const GID: u32 = 4_271;
/// The offload listener's port: below 1024, so that `cap_net_bind_service` is kept.
const LOW_PORT: u16 = 843;
/// The port of the listener `lb reload` adds: below 1024 too.
const ADDED_PORT: u16 = 844;
const BACKENDS: usize = 2;
const RENEWED: &str = "renewed.lb.test";

/// The shipped unit.
fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/lb.service")
}

/// What the unit gives the daemon.
#[derive(Debug)]
struct Unit {
    user: String,
    ambient: CapSet,
    bounding: CapSet,
    no_new_privileges: bool,
}

fn caps_of(value: &str) -> CapSet {
    CapSet::of(value.split_whitespace().map(|name| {
        Cap::from_name(name)
            .unwrap_or_else(|| panic!("the unit names an unknown capability {name}"))
    }))
}

fn read_unit() -> Unit {
    let text = std::fs::read_to_string(unit_path()).expect("reading packaging/lb.service");
    let value = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("packaging/lb.service has no {key}="))
            .trim()
            .to_owned()
    };
    Unit {
        user: value("User"),
        ambient: caps_of(&value("AmbientCapabilities")),
        bounding: caps_of(&value("CapabilityBoundingSet")),
        no_new_privileges: value("NoNewPrivileges") == "yes",
    }
}

/// `-all,+a,+b` for setpriv.
fn setpriv_caps(set: CapSet) -> String {
    let mut arg = "-all".to_owned();
    for cap in set.iter() {
        arg.push_str(",+");
        arg.push_str(cap.name().trim_start_matches("cap_"));
    }
    arg
}

/// `setpriv` arguments that run a program as [`UID`] with `unit`'s capabilities, less `except`.
fn setpriv(unit: &Unit, except: CapSet) -> Vec<OsString> {
    let ambient = unit.ambient.without(except);
    let mut args: Vec<OsString> = [
        "setpriv".to_owned(),
        format!("--reuid={UID}"),
        format!("--regid={GID}"),
        "--clear-groups".to_owned(),
        format!("--inh-caps={}", setpriv_caps(ambient)),
        format!("--ambient-caps={}", setpriv_caps(ambient)),
        format!("--bounding-set={}", setpriv_caps(unit.bounding)),
    ]
    .map(OsString::from)
    .into();
    if unit.no_new_privileges {
        args.push("--no-new-privs".into());
    }
    args
}

/// A copy of the `lb` binary that [`UID`] may execute (the build's may sit in a private
/// checkout), in a directory removed on drop.
fn public_binary() -> (LabDir, PathBuf) {
    let dir = LabDir::new("lb-privileges-bin").expect("a directory for the binary");
    std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = dir.path.join("lb");
    // By `cp`: a descriptor open for writing in this process would be inherited by a test
    // thread's fork meanwhile, and running the copy would fail (ETXTBSY).
    let copied = Command::new("cp")
        .arg(lb_binary().expect("the lb binary"))
        .arg(&binary)
        .status()
        .expect("running cp");
    assert!(copied.success(), "copying lb");
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, binary)
}

/// Every thread of process `pid`: its name and its credentials.
fn threads(pid: u32) -> Vec<(String, TaskState)> {
    let tasks = PathBuf::from(format!("/proc/{pid}/task"));
    std::fs::read_dir(&tasks)
        .unwrap_or_else(|e| panic!("listing {}: {e}", tasks.display()))
        .flatten()
        .filter_map(|task| {
            let name = std::fs::read_to_string(task.path().join("comm")).ok()?;
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            Some((name.trim().to_owned(), TaskState::parse(&status)))
        })
        .collect()
}

/// Checks that every thread of `pid` holds exactly `kept` (effective, permitted, bounding),
/// nothing inheritable or ambient, and `no_new_privs`.
fn assert_only(pid: u32, kept: CapSet) {
    let threads = threads(pid);
    assert!(threads.len() > 2, "the daemon's threads: {threads:?}");
    for (name, state) in &threads {
        let expected = TaskState {
            inheritable: CapSet::EMPTY,
            permitted: kept,
            effective: kept,
            bounding: kept,
            ambient: CapSet::EMPTY,
            no_new_privs: true,
        };
        assert_eq!(
            *state, expected,
            "thread {name} of the daemon: has {} effective, {} bounding; kept should be {kept}",
            state.effective, state.bounding
        );
    }
    println!(
        "{} threads, each with {kept} only, no_new_privs",
        threads.len()
    );
}

/// The capabilities the daemon keeps on this kernel for a packet path, plus `more`.
fn kept_with(more: &[Cap]) -> CapSet {
    let mut kept = CapSet::of(more.iter().copied()).with(Cap::NET_ADMIN);
    if bpf_checks_every_call() {
        kept = kept.with(Cap::BPF);
    }
    kept
}

/// Waits up to `limit` for the daemon's log to contain `text`.
fn wait_for_log(l7: &L7Env, text: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !l7.env.daemon.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "the daemon's log has no {text:?} after {limit:?}:\n{}",
            l7.env.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks that `n` HTTPS requests to `port` of the VIP are answered 200 by backends.
fn assert_l7_serves(l7: &L7Env, port: u16, n: usize) {
    let roots = l7.roots();
    let statuses: Vec<u16> = in_client(&l7.lab().client, "requests", move || async move {
        let mut conn = connect(&roots, port, VIP_NAME, false)
            .await
            .unwrap_or_else(|e| panic!("connecting to port {port}: {e}"));
        let mut statuses = Vec::new();
        for _ in 0..n {
            let reply = fetch(&mut conn, VIP_NAME, "/", None)
                .await
                .unwrap_or_else(|e| panic!("a request to port {port}: {e}"));
            statuses.push(reply.status);
        }
        statuses
    });
    assert!(
        statuses.iter().all(|s| *s == 200),
        "port {port}: {statuses:?}"
    );
}

fn assert_passthrough_serves(l7: &L7Env) {
    let served = connect_parallel(l7.lab(), vip(TLS_PORT), 8, 2);
    assert_consistent(l7.lab(), &served);
}

/// Runs `lb --socket SOCKET args` as [`UID`], as the unit's `ExecReload=` does.
fn cli_as_user(l7: &L7Env, binary: &Path, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            format!("--reuid={UID}"),
            format!("--regid={GID}"),
            "--clear-groups".to_owned(),
        ])
        .arg(binary)
        .arg("--socket")
        .arg(l7.env.daemon.socket())
        .args(args)
        .output()
        .expect("running the CLI as the daemon's user")
}

#[test]
fn run_as_the_unit_runs_it_every_operation_works_with_only_the_kept_capabilities() {
    let started = Instant::now();
    let unit = read_unit();
    assert_ne!(
        unit.user, "root",
        "the unit runs the daemon as a user of its own"
    );
    assert!(
        unit.ambient.has(Cap::SETPCAP),
        "the unit gives cap_setpcap: the daemon shrinks its bounding set"
    );
    let (_bin_dir, binary) = public_binary();
    // Where /dev/net/tun is not 0666 (no udev, as on this lab's machines), [announce] needs
    // cap_dac_override at start, as the README says; the daemon drops it once the device is
    // open (assert_only below).
    let tun_mode = std::fs::metadata("/dev/net/tun")
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("/dev/net/tun");
    let mut unit = unit;
    if tun_mode & 0o006 != 0o006 {
        println!("/dev/net/tun is {tun_mode:o} here: the daemon also gets cap_dac_override");
        unit.ambient = unit.ambient.with(Cap::DAC_OVERRIDE);
        unit.bounding = unit.bounding.with(Cap::DAC_OVERRIDE);
    }
    let launch = Launch {
        wrapper: setpriv(&unit, CapSet::EMPTY),
        owner: Some((UID, GID)),
        binary: Some(binary.clone()),
    };
    let mut l7 = L7Env::start_launched(
        "lbpriv",
        BACKENDS,
        launch,
        |listeners| listeners.offload_port = LOW_PORT,
        |config| format!("{config}\n[announce]\ndrain_wait = \"0s\"\n"),
    );
    let pid = l7.env.daemon.pid().expect("the daemon runs");
    let log = l7.env.daemon.log();
    assert!(
        log.contains("dropped the capabilities the daemon no longer needs"),
        "{log}"
    );
    let kept = kept_with(&[Cap::NET_BIND_SERVICE]);
    assert_only(pid, kept);

    // Traffic: passthrough (XDP) and both L7 listeners.
    assert_passthrough_serves(&l7);
    assert_l7_serves(&l7, LOW_PORT, 6);
    assert_l7_serves(&l7, BRIDGING_PORT, 6);

    // Every read-only command.
    for args in [
        &["status"][..],
        &["stats"],
        &["listener", "list"],
        &["backend", "list"],
        &[
            "simulate",
            &format!("{CLIENT_V4}:40000"),
            &format!("{}", vip(TLS_PORT)),
        ],
    ] {
        let out = l7.env.cli_ok(args);
        println!("lb {}: {} lines", args.join(" "), out.lines().count());
    }

    // [announce]: its device made at start, its routes withdrawn and put back with the kept
    // capabilities alone.
    let announced = || {
        l7.lab()
            .lb
            .ip(&["route", "show", "table", "200"])
            .expect("reading table 200")
    };
    let vip4 = vip(TLS_PORT).ip().to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !announced().contains(&vip4) {
        assert!(
            Instant::now() < deadline,
            "{vip4} not announced: {}",
            l7.env.cli_ok(&["status"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    l7.env.cli_ok(&["node", "drain", "--timeout", "0s"]);
    assert_eq!(announced().trim(), "", "drained");
    l7.env.cli_ok(&["node", "undrain"]);
    assert!(announced().contains(&vip4), "undrained: {}", announced());

    // A packet capture: its maps written and its ring read with the kept capabilities.
    let file = std::env::temp_dir().join(format!("lb-priv-{}.pcapng", std::process::id()));
    let path = file.to_str().expect("a UTF-8 path");
    let args = ["capture", "--listener", "tls4", "--count", "5", "-w", path];
    let capture = std::thread::scope(|scope| {
        let capture = scope.spawn(|| l7.env.cli(&args));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !capture.is_finished() && Instant::now() < deadline {
            assert_passthrough_serves(&l7);
            std::thread::sleep(Duration::from_millis(100));
        }
        capture.join().expect("the capture's thread")
    });
    drop(std::fs::remove_file(&file));
    assert!(
        capture.success && capture.stderr.contains("5 packets written"),
        "{}\n{}",
        capture.stderr,
        l7.env.daemon.log()
    );

    // Backend changes: map updates, and a new next hop made a managed neighbour.
    let added = backend_v4(BACKENDS).to_string();
    l7.env.cli_ok(&["backend", "add", "web4", &added]);
    wait_for_log(
        &l7,
        &format!("next hop kept resolved by the kernel (managed neighbour) next_hop={added}"),
        Duration::from_secs(5),
    );
    l7.env
        .cli_ok(&["backend", "set-weight", "web4", &added, "2"]);
    l7.env
        .cli_ok(&["backend", "drain", "web4", &added, "--timeout", "1s"]);
    let added6 = backend_v6(BACKENDS).to_string();
    l7.env.cli_ok(&["backend", "add", "web6", &added6]);
    l7.env.cli_ok(&["backend", "remove", "web6", &added6]);

    // accept_local turned off: the daemon sets it again, without the capabilities it dropped.
    l7.lab()
        .lb
        .run(&[
            "sysctl",
            "-w",
            &format!("net.ipv4.conf.{IFACE}.accept_local=0"),
        ])
        .expect("turning accept_local off");
    wait_for_log(
        &l7,
        "accept_local was turned off on this interface while the daemon runs: set it again",
        Duration::from_secs(5),
    );

    // `lb reload` as the daemon's user (ExecReload=), adding a listener below port 1024.
    let path = l7.env.daemon.config_path().to_owned();
    let original = std::fs::read_to_string(&path).expect("reading the configuration");
    let added_listener = l7
        .listeners()
        .offload_toml("added4", ADDED_PORT, OFFLOAD_POOL);
    std::fs::write(&path, format!("{original}{added_listener}")).expect("writing the config");
    let reload = cli_as_user(&l7, &binary, &["reload"]);
    assert!(
        reload.status.success(),
        "lb reload as the daemon's user: {}\n{}",
        String::from_utf8_lossy(&reload.stderr),
        l7.env.daemon.log()
    );
    assert_l7_serves(&l7, ADDED_PORT, 4);
    // As root, and by SIGHUP.
    l7.env.cli_ok(&["reload"]);
    let hup = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    wait_for_log(
        &l7,
        "SIGHUP: configuration reloaded",
        Duration::from_secs(5),
    );

    // `lb cert reload`: a renewed certificate (the files stay the daemon's user's).
    l7.files
        .replace_certificate(&l7.lab().pki, &[RENEWED, VIP_NAME])
        .expect("writing the renewed certificate");
    let out = l7.env.cli_ok(&["cert", "reload"]);
    assert!(out.contains(RENEWED), "{out}");
    let names = handshake_names(&l7.lab().client, &l7.roots(), LOW_PORT, RENEWED)
        .expect("a handshake with the renewed certificate");
    assert!(names.iter().any(|n| n == RENEWED), "{names:?}");

    // Still serving, and no thread gained anything (threads started since inherit the drop).
    assert_passthrough_serves(&l7);
    assert_l7_serves(&l7, LOW_PORT, 4);
    let Body::Backends(backends) = l7.env.cli_json(&["backend", "list"]) else {
        panic!("lb backend list answered something else");
    };
    assert!(!backends.is_empty());
    assert_only(pid, kept);
    let log = l7.env.daemon.log();
    for refusal in [
        "Operation not permitted",
        "Permission denied",
        "could not set",
    ] {
        assert!(
            !log.contains(refusal),
            "the daemon was refused something:\n{log}"
        );
    }
    l7.env.stop_cleanly();
    println!("took {:?}", started.elapsed());
}

#[test]
fn started_as_root_it_keeps_only_what_it_needs_and_says_why_a_low_port_cannot_be_added() {
    let started = Instant::now();
    let mut l7 = L7Env::start("lbprivroot", BACKENDS, |config| config);
    let pid = l7.env.daemon.pid().expect("the daemon runs");
    // The L7 listeners are on 8443 and 9443: no cap_net_bind_service.
    assert_only(pid, kept_with(&[]));
    let added = backend_v4(BACKENDS).to_string();
    l7.env.cli_ok(&["backend", "add", "web4", &added]);
    l7.env.cli_ok(&["backend", "remove", "web4", &added]);
    assert_passthrough_serves(&l7);

    let path = l7.env.daemon.config_path().to_owned();
    let original = std::fs::read_to_string(&path).expect("reading the configuration");
    let low = l7.listeners().offload_toml("low4", 80, OFFLOAD_POOL);
    std::fs::write(&path, format!("{original}{low}")).expect("writing the configuration");
    let run = l7.env.cli(&["reload"]);
    println!("lb reload: {}", run.stderr.trim());
    assert!(!run.success, "a port it may not bind was accepted: {run:?}");
    assert!(
        run.stderr.contains("CAP_NET_BIND_SERVICE") && run.stderr.contains("nothing changed"),
        "the refusal says why and that nothing changed: {run:?}"
    );
    std::fs::write(&path, original).expect("writing the configuration back");
    l7.env.cli_ok(&["reload"]);
    l7.env.stop_cleanly();
    println!("took {:?}", started.elapsed());
}

/// A directory its user owns, removed on drop.
fn private_dir(prefix: &str) -> LabDir {
    let dir = LabDir::new(prefix).expect("a directory");
    dir.give_to(UID, GID).expect("giving the directory away");
    dir
}

#[test]
fn a_start_without_a_capability_its_configuration_needs_is_refused_naming_it() {
    lb_tests::require_root();
    let unit = read_unit();
    let (_bin_dir, binary) = public_binary();
    let dir = private_dir("lb-privileges-refused");
    let config = dir.path.join("lb.toml");
    std::fs::write(
        &config,
        format!(
            "[datapath]\ninterfaces = [\"lo\"]\npin_dir = \"/sys/fs/bpf/lb-privileges-never\"\n\
             [control]\nsocket = {:?}\n\
             [pools.p]\nbackends = [{{ address = \"198.18.1.10\" }}]\n\
             [listeners.l]\naddress = \"198.18.100.1\"\nport = 443\nmode = \"passthrough\"\npool = \"p\"\n",
            dir.path.join("lb.sock")
        ),
    )
    .expect("writing the configuration");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = Command::new("timeout")
        .arg("20")
        .args(setpriv(&unit, CapSet::of([Cap::PERFMON])))
        .arg(&binary)
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .expect("running lb run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{}", stderr.trim());
    assert!(!output.status.success(), "it started: {stderr}");
    assert!(
        stderr.contains("lacks cap_perfmon") && stderr.contains("AmbientCapabilities="),
        "the refusal names the capability and the fix: {stderr}"
    );
    assert!(
        !Path::new("/sys/fs/bpf/lb-privileges-never").exists(),
        "nothing was made before the refusal"
    );
}

/// The exposures `systemd-analyze security` finds in the unit, and why each stays.
const ACCEPTED_EXPOSURES: [(&str, &str); 17] = [
    (
        "SystemCallFilter=~@resources",
        "setrlimit: the daemon raises its open-file limit",
    ),
    (
        "SystemCallFilter=~@privileged",
        "bpf() and capset(): the packet path, the drop",
    ),
    (
        "RootDirectory=/RootImage=",
        "the host's root: the binary and /etc/lb are the host's",
    ),
    (
        "AmbientCapabilities=",
        "how a non-root user gets the start-up capabilities",
    ),
    ("CapabilityBoundingSet=~CAP_BPF", "loading the XDP program"),
    (
        "CapabilityBoundingSet=~CAP_SET(UID|GID|PCAP)",
        "cap_setpcap: shrinking its bounding set",
    ),
    (
        "ProtectKernelTunables=",
        "accept_local: a write to /proc/sys/net",
    ),
    (
        "RestrictAddressFamilies=~AF_NETLINK",
        "routes, neighbours, XDP (rtnetlink, genetlink)",
    ),
    ("RestrictAddressFamilies=~AF_UNIX", "the control socket"),
    (
        "RestrictAddressFamilies=~AF_(INET|INET6)",
        "the listeners and the backends",
    ),
    (
        "CapabilityBoundingSet=~CAP_NET_ADMIN",
        "attaching XDP, neighbours, accept_local",
    ),
    (
        "ProcSubset=",
        "/proc/sys: accept_local, ip_unprivileged_port_start, cap_last_cap",
    ),
    (
        "CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE|BROADCAST|RAW)",
        "L7 ports below 1024",
    ),
    (
        "PrivateNetwork=",
        "a load balancer serves the host's network",
    ),
    (
        "PrivateUsers=",
        "XDP and bpf() need the host's user namespace",
    ),
    (
        "DeviceAllow=",
        "char-rtc:r, which ProtectClock= itself allows; /dev/net/tun for [announce]",
    ),
    ("IPAddressDeny=", "clients and backends may be anywhere"),
];

#[test]
fn the_unit_verifies_and_systemd_finds_only_the_accepted_exposures() {
    lb_tests::require_root();
    let (bin_dir, binary) = public_binary();
    // The unit as installed, its lb the copy above.
    let text = std::fs::read_to_string(unit_path()).expect("reading packaging/lb.service");
    let unit = bin_dir.path.join("lb.service");
    std::fs::write(
        &unit,
        text.replace("/usr/local/bin/lb", &binary.display().to_string()),
    )
    .expect("writing the unit");
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("running systemd-analyze verify (Debian package systemd)");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );

    // The overall exposure, 0 to 10 (systemd says "OK" under 4); --threshold counts tenths.
    let text = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=30"])
        .arg(&unit)
        .output()
        .expect("running systemd-analyze security");
    let summary = String::from_utf8_lossy(&text.stdout);
    let overall = summary
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure in: {summary}"));
    println!("{}", overall.trim());
    assert!(text.status.success(), "the exposure is above 3: {overall}");

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--json=short"])
        .arg(&unit)
        .output()
        .expect("running systemd-analyze security");
    let findings: Vec<serde_json::Value> =
        serde_json::from_slice(&security.stdout).expect("the findings as JSON");
    let exposed: BTreeSet<String> = findings
        .iter()
        .filter(|f| f["exposure"].as_str().is_some_and(|e| e != "0.0"))
        .filter_map(|f| f["name"].as_str().map(str::to_owned))
        .collect();
    let accepted: BTreeSet<String> = ACCEPTED_EXPOSURES
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect();
    assert_eq!(
        exposed, accepted,
        "systemd-analyze security's findings differ from those accepted"
    );
}
