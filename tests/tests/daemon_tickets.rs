//! Session resumption by ticket across reloads, restarts and balancers, with real rustls
//! clients (TLS 1.3 and TLS 1.2, each with its own session store) against real daemons.
//!
//! The lab's L7 listeners alone (no packet path, so that a second daemon can serve beside the
//! first in the balancer's namespace), with a `ticket_key_file` made of `lb ticket-key` lines:
//!
//! - [`sessions_resume_across_reloads_restarts_and_daemons_sharing_a_key_file`]: a client
//!   resumes after `lb reload` (one that rebuilds the listener, and one that only rotates the
//!   file: the new key seals, the old one still opens), after a restart, and on a second daemon
//!   reading the same file; a key file with a bad line, too many keys, a mode others may read,
//!   or behind a symbolic link refuses `lb reload` and `lb cert reload` with the file and the
//!   fix, and the keys in use stay;
//! - without a key file, a reload keeps the daemon's own keys but a restart forgets them: the
//!   next handshake is a full one.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Instant,
};

use lb::lab::{
    ClientTls, TlsClientConn, Versions,
    daemon::{DaemonProcess, lb_binary},
    l7::LabDir,
    passthrough::VIP_NAME,
    side_by_side::{L7Listeners, OFFLOAD_LISTENER, OFFLOAD_PORT},
};
use lb_tests::side_by_side::{L7Env, l7_only, vip};
use rustls::{ClientConfig, HandshakeKind};

/// The second daemon's listeners, beside the first's on the same VIP.
const SECOND_OFFLOAD_PORT: u16 = 10443;
const SECOND_BRIDGING_PORT: u16 = 10444;

/// A new key line, from `lb ticket-key`.
fn ticket_key() -> String {
    let output = Command::new(lb_binary().unwrap())
        .arg("ticket-key")
        .output()
        .unwrap();
    assert!(output.status.success(), "lb ticket-key: {output:?}");
    let line = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert_eq!(line.len(), 64, "64 hex digits: {line}");
    line
}

/// The two clients: TLS 1.3 and TLS 1.2, each keeping its sessions from one visit to the next.
struct Clients([(&'static str, Arc<ClientConfig>); 2]);

impl Clients {
    fn new(l7: &L7Env) -> Self {
        let client = |versions| {
            ClientTls::trusting(&l7.roots())
                .alpn(&[b"http/1.1"])
                .versions(versions)
                .config()
                .unwrap()
        };
        Self([
            ("TLS 1.3", client(Versions::Tls13Only)),
            ("TLS 1.2", client(Versions::Tls12Only)),
        ])
    }

    /// Each client makes one request to `port` of the VIP; each handshake must be `expected`.
    fn visit(&self, l7: &L7Env, port: u16, expected: HandshakeKind, when: &str) {
        for (version, config) in &self.0 {
            let config = Arc::clone(config);
            let (kind, status) = l7
                .lab()
                .client
                .spawn("visit", move || {
                    let mut conn = TlsClientConn::connect_with(config, VIP_NAME, vip(port))
                        .unwrap_or_else(|e| panic!("handshake with port {port}: {e}"));
                    let request = format!(
                        "GET /headers HTTP/1.1\r\nHost: {VIP_NAME}\r\nConnection: close\r\n\r\n"
                    );
                    // Reading the response, the client also reads the TLS 1.3 tickets.
                    let status = conn
                        .send_and_read_line(request.as_bytes())
                        .unwrap_or_else(|e| panic!("a response from port {port}: {e}"));
                    (conn.handshake_kind(), status)
                })
                .unwrap()
                .join()
                .expect("a client thread panicked");
            println!("{when}: {version} to port {port}: {kind:?}, {status}");
            assert!(status.starts_with("HTTP/1.1 200"), "{version}: {status}");
            assert_eq!(kind, Some(expected), "{version}, {when}");
        }
    }
}

/// Writes the key file (mode 0600) with `keys`, one a line.
fn write_keys(dir: &LabDir, path: &Path, keys: &[&str]) {
    let name = path.file_name().unwrap().to_str().unwrap();
    dir.write(
        name,
        format!("# ticket keys\n{}\n", keys.join("\n")).as_bytes(),
    )
    .unwrap();
}

/// `lb reload` and `lb cert reload` are both refused, naming the key file and saying `why`,
/// showing no key; the keys in use stay (the clients resume).
fn assert_refused(l7: &L7Env, clients: &Clients, keys: &Path, secrets: &[&str], why: &str) {
    for command in [&["reload"][..], &["cert", "reload"]] {
        let run = l7.env.cli(command);
        println!("lb {}: {}", command.join(" "), run.stderr.trim());
        assert!(!run.success, "lb {command:?} accepted {why}: {run:?}");
        assert!(
            run.stderr.contains(&keys.display().to_string())
                && run.stderr.contains(why)
                && run.stderr.contains("nothing changed"),
            "lb {command:?}: {}",
            run.stderr
        );
        for secret in secrets {
            assert!(
                !run.stderr.contains(&secret[..16]),
                "a key in {}",
                run.stderr
            );
        }
    }
    clients.visit(l7, OFFLOAD_PORT, HandshakeKind::Resumed, why);
}

#[test]
fn sessions_resume_across_reloads_restarts_and_daemons_sharing_a_key_file() {
    let started = Instant::now();
    // Declared first: the key file outlives the daemons.
    let dir = LabDir::new("lb-lab-tickets").unwrap();
    let keys = dir.path.join("tickets.keys");
    let (a, b) = (ticket_key(), ticket_key());
    write_keys(&dir, &keys, &[&a]);
    let with_keys = |builder: &mut L7Listeners| builder.ticket_keys = Some(keys.clone());
    let mut l7 = L7Env::start_listeners("lbtickets", 1, with_keys, l7_only);
    let config = l7.env.daemon.config_path().to_owned();
    let original = std::fs::read_to_string(&config).unwrap();
    let clients = Clients::new(&l7);
    clients.visit(&l7, OFFLOAD_PORT, HandshakeKind::Full, "first visit");
    clients.visit(&l7, OFFLOAD_PORT, HandshakeKind::Resumed, "second visit");

    // A reload that changes the listener builds its TLS configuration again: same keys.
    let changed =
        format!("{original}\n[listeners.{OFFLOAD_LISTENER}.http]\nidle_timeout = \"61s\"\n");
    std::fs::write(&config, &changed).unwrap();
    l7.env.cli_ok(&["reload"]);
    clients.visit(&l7, OFFLOAD_PORT, HandshakeKind::Resumed, "after a reload");
    // A reload that changes nothing but the key file: a new key first, the old one second.
    write_keys(&dir, &keys, &[&b, &a]);
    l7.env.cli_ok(&["reload"]);
    clients.visit(
        &l7,
        OFFLOAD_PORT,
        HandshakeKind::Resumed,
        "after a rotation",
    );
    // The last tickets were sealed under the new key: the old one may go.
    write_keys(&dir, &keys, &[&b]);
    l7.env.cli_ok(&["reload"]);
    clients.visit(&l7, OFFLOAD_PORT, HandshakeKind::Resumed, "old key retired");

    // Bad key files change nothing.
    let secrets = [a.as_str(), b.as_str()];
    write_keys(&dir, &keys, &[&b, &format!("{}zz", &a[..62])]);
    assert_refused(&l7, &clients, &keys, &secrets, "line 3: not a key");
    write_keys(&dir, &keys, &[b.as_str(); 17]);
    assert_refused(&l7, &clients, &keys, &secrets, "17 keys");
    write_keys(&dir, &keys, &[&b]);
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_refused(&l7, &clients, &keys, &secrets, "chmod 600");
    let target: PathBuf = dir.path.join("elsewhere.keys");
    std::fs::rename(&keys, &target).unwrap();
    std::os::unix::fs::symlink(&target, &keys).unwrap();
    assert_refused(&l7, &clients, &keys, &secrets, "symbolic link");
    std::fs::remove_file(&keys).unwrap();
    write_keys(&dir, &keys, &[&b]);
    l7.env.cli_ok(&["reload"]);

    // A restart: the same file, the same keys.
    let status = l7.env.daemon.stop().unwrap();
    assert!(status.success(), "{status}: {}", l7.env.daemon.log());
    l7.env.daemon.restart().unwrap();
    clients.visit(&l7, OFFLOAD_PORT, HandshakeKind::Resumed, "after a restart");

    // Another balancer reading the same file.
    let second_builder = L7Listeners {
        offload_port: SECOND_OFFLOAD_PORT,
        bridging_port: SECOND_BRIDGING_PORT,
        ticket_keys: Some(keys.clone()),
        ..l7.listeners()
    };
    let binary = lb_binary().unwrap();
    let second = DaemonProcess::start(&binary, &l7.lab().lb, |paths| {
        l7_only(second_builder.config(paths, 1))
    })
    .unwrap();
    clients.visit(
        &l7,
        SECOND_OFFLOAD_PORT,
        HandshakeKind::Resumed,
        "on a second daemon",
    );
    clients.visit(
        &l7,
        OFFLOAD_PORT,
        HandshakeKind::Resumed,
        "back on the first",
    );
    drop(second);

    // Without a key file: the daemon's own keys, which a reload keeps and a restart loses.
    let own: String = changed
        .lines()
        .filter(|line| !line.starts_with("ticket_key_file"))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&config, own).unwrap();
    l7.env.cli_ok(&["reload"]);
    clients.visit(
        &l7,
        OFFLOAD_PORT,
        HandshakeKind::Full,
        "own keys, file dropped",
    );
    clients.visit(&l7, OFFLOAD_PORT, HandshakeKind::Resumed, "own keys");
    let changed_again = std::fs::read_to_string(&config)
        .unwrap()
        .replace("idle_timeout = \"61s\"", "idle_timeout = \"62s\"");
    std::fs::write(&config, changed_again).unwrap();
    l7.env.cli_ok(&["reload"]);
    clients.visit(
        &l7,
        OFFLOAD_PORT,
        HandshakeKind::Resumed,
        "own keys, after a reload",
    );
    let status = l7.env.daemon.stop().unwrap();
    assert!(status.success(), "{status}: {}", l7.env.daemon.log());
    l7.env.daemon.restart().unwrap();
    clients.visit(
        &l7,
        OFFLOAD_PORT,
        HandshakeKind::Full,
        "own keys, after a restart",
    );
    println!("took {:?}", started.elapsed());
}
