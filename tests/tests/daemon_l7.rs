//! The L7 listeners end to end, beside the passthrough ones: one daemon, one configuration, one
//! VIP (198.18.100.1) with a passthrough listener on 443, an offload listener on 8443 (sticky)
//! and a bridging listener on 9443, over three backends that serve TLS on the VIP (passthrough)
//! and HTTP and HTTPS on their own addresses (the L7 pools, each with a TCP health check every
//! 200 ms, thresholds 2).
//!
//! - side by side: passthrough connections complete with the backends' certificates, HTTPS
//!   requests (HTTP/1.1 and HTTP/2) to both L7 ports reach every backend with the client's
//!   address in `X-Forwarded-For`, `lb listener list` shows the three modes, and the counters
//!   show the L7 ports handed to the kernel (`pass_not_vip`) while passthrough forwards;
//! - stickiness: a user pinned to a backend whose HTTP server dies is re-pinned, with a new
//!   cookie, within interval × threshold + interval + [`ALLOWANCE`]; users pinned elsewhere
//!   stay where they are;
//! - `lb cert reload`: a new certificate serves new handshakes; a key its group or others may
//!   read is refused with the fix, and the old certificate keeps serving;
//! - `lb reload`: a new L7 listener starts; one whose certificate is missing is refused with
//!   the path, and nothing changes.
//!
//! The clients run in threads inside the client namespace, each with its own tokio runtime.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{
    collections::{BTreeMap, BTreeSet},
    net::TcpStream,
    os::unix::fs::PermissionsExt as _,
    thread,
    time::{Duration, Instant},
};

use lb::{
    control::Body,
    daemon::scheduler::Scheduler,
    lab::{
        daemon::lb_binary,
        passthrough::{CLIENT_V4, VIP_NAME, backend_v4},
        side_by_side::{
            BACKEND_PORTS, BRIDGING_LISTENER, BRIDGING_PORT, OFFLOAD_LISTENER, OFFLOAD_POOL,
            OFFLOAD_PORT, TcpCheck,
        },
    },
};
use lb_tests::{
    backend_state::{backend, wait_for_state},
    clients::{assert_consistent, connect_parallel, count_per_backend},
    daemon_lab::TLS_PORT,
    side_by_side::{
        L7Env, Reply, connect, counter, fetch, handshake_names, in_client, l7_only,
        spawn_in_client, vip,
    },
};

/// Scheduling allowance on top of the health checks' bound: the probe task's timer, the
/// controller thread publishing the pool to the listeners, and one client round trip.
const ALLOWANCE: Duration = Duration::from_millis(300);
/// The lab's backends.
const BACKENDS: usize = 3;
/// Time between two requests of a client waiting for a change.
const POLL: Duration = Duration::from_millis(20);

/// Starts `n` GETs of `/headers` on each of `conns` connections to `port` (HTTP/2 if `h2`), in
/// a thread in the client namespace.
fn start_requests(
    env: &L7Env,
    port: u16,
    h2: bool,
    conns: usize,
    n: usize,
) -> thread::JoinHandle<Vec<Reply>> {
    let roots = env.roots();
    let name = format!("{port}-{}", if h2 { "h2" } else { "h1" });
    spawn_in_client(&env.lab().client, &name, move || async move {
        let mut replies = Vec::with_capacity(conns * n);
        for c in 0..conns {
            let mut conn = connect(&roots, port, VIP_NAME, h2)
                .await
                .unwrap_or_else(|e| panic!("connection {c} to port {port}: {e}"));
            for i in 0..n {
                let reply = fetch(&mut conn, VIP_NAME, "/headers", None)
                    .await
                    .unwrap_or_else(|e| panic!("request {i} on connection {c} to {port}: {e}"));
                replies.push(reply);
            }
        }
        replies
    })
}

fn per_backend(replies: &[Reply]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in replies {
        let name = r.backend.clone().unwrap_or_else(|| "(none)".to_owned());
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}

#[test]
fn passthrough_offload_and_bridging_share_one_vip() {
    let started = Instant::now();
    let mut l7 = L7Env::start("lbl7side", BACKENDS, |config| config);
    let before = l7.stats();

    // Started with a soft limit of 1024 open files, the daemon raised its own to its hard
    // limit, if that is at least what its two L7 listeners' max_connections (10 000 each, by
    // default) need, a client connection and its backend's each; else as far as the hard limit
    // allows (raising that takes CAP_SYS_RESOURCE), saying so.
    let pid = l7.env.daemon.pid().expect("the daemon runs");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let (soft, hard): (u64, u64) = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| {
            let mut fields = line.split_whitespace().skip(3);
            Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
        })
        .unwrap_or_else(|| panic!("no open-file limit in {limits}"));
    let needed = 1024 + 2 * 2 * 10_000;
    let log = l7.env.daemon.log();
    if hard >= needed {
        assert_eq!(soft, hard, "raised to the hard limit");
        assert!(log.contains("raised the open-file limit"), "{log}");
    } else {
        assert_eq!(soft, hard, "raised as far as the hard limit allows");
        assert!(
            log.contains("the open-file limit is below what the L7 listeners"),
            "the daemon says its hard limit is too low: {log}"
        );
    }
    println!("the daemon's open-file limit: {soft} (hard {hard}, needed {needed})");

    // Passthrough: the backends' own TLS servers answer, with their certificates.
    let served = connect_parallel(l7.lab(), vip(TLS_PORT), 30, 3);
    assert_consistent(l7.lab(), &served);
    let counts = count_per_backend(&served);
    println!("passthrough connections per backend: {counts:?}");
    assert_eq!(counts.len(), BACKENDS, "every backend served: {counts:?}");

    // Offload and bridging, HTTP/1.1 and HTTP/2, at once: 100 requests each.
    let mut total = 0;
    let running: Vec<_> = [
        (OFFLOAD_PORT, false),
        (OFFLOAD_PORT, true),
        (BRIDGING_PORT, false),
        (BRIDGING_PORT, true),
    ]
    .into_iter()
    .map(|(port, h2)| (port, h2, start_requests(&l7, port, h2, 4, 25)))
    .collect();
    for (port, h2, handle) in running {
        let replies = handle.join().expect("a client thread panicked");
        total += replies.len();
        let counts = per_backend(&replies);
        println!("port {port}, h2 {h2}: {counts:?}");
        for r in &replies {
            assert_eq!(r.status, 200, "port {port}, h2 {h2}: {r:?}");
            assert_eq!(
                r.seen_header("x-forwarded-for"),
                Some(CLIENT_V4.to_string().as_str()),
                "port {port}: the backend sees the client's address: {r:?}"
            );
            assert_eq!(r.seen_header("x-forwarded-proto"), Some("https"), "{r:?}");
        }
        assert_eq!(
            counts.len(),
            BACKENDS,
            "port {port}, h2 {h2}: every backend answered: {counts:?}"
        );
    }
    // Offload went to the plain-HTTP servers, bridging to the TLS ones (health checks are
    // TCP connects, not requests).
    let (plain, tls): (u64, u64) = l7.lab().backends.iter().fold((0, 0), |(p, t), b| {
        let http = b.http.as_ref().expect("HTTP servers running");
        (p + http.plain_requests(), t + http.tls_requests())
    });
    assert_eq!((plain, tls), (200, 200), "requests seen by the backends");

    // The modes, side by side.
    let Body::Listeners(listeners) = l7.env.cli_json(&["listener", "list"]) else {
        panic!("lb listener list answered something else");
    };
    let modes: BTreeMap<&str, (&str, u16)> = listeners
        .iter()
        .map(|l| (l.name.as_str(), (l.mode.as_str(), l.port)))
        .collect();
    println!("listeners: {modes:?}");
    assert_eq!(modes.get("tls4"), Some(&("passthrough", TLS_PORT)));
    assert_eq!(
        modes.get(OFFLOAD_LISTENER),
        Some(&("offload", OFFLOAD_PORT))
    );
    assert_eq!(
        modes.get(BRIDGING_LISTENER),
        Some(&("bridging", BRIDGING_PORT))
    );
    let text = l7.env.cli_ok(&["listener", "list"]);
    println!("{text}");
    for mode in ["passthrough", "offload", "bridging"] {
        assert!(text.contains(mode), "{mode} not in:\n{text}");
    }

    // The datapath handed the L7 ports to the kernel and forwarded the passthrough flows.
    let after = l7.stats();
    let passed = counter(&after, "pass_not_vip") - counter(&before, "pass_not_vip");
    assert!(
        passed >= total as u64,
        "pass_not_vip grew by {passed}, fewer than the {total} L7 requests' packets"
    );
    let forwarded = after
        .listeners
        .iter()
        .find(|l| l.name == "tls4")
        .expect("listener tls4 in lb stats");
    println!("pass_not_vip +{passed}; tls4: {:?}", forwarded.traffic);
    assert!(
        forwarded.traffic.new_flows >= 30 && forwarded.traffic.packets > 30,
        "passthrough forwarded the 30 connections: {:?}",
        forwarded.traffic
    );
    assert!(counter(&after, "tx_local") > 0, "{:?}", after.counters);

    // What `lb backend list` prints (ADDRESS:PORT for an L7 pool) is what its other commands
    // take; an L7 backend has no share of a Maglev table to show.
    let listed = l7.env.cli_ok(&["backend", "list", OFFLOAD_POOL]);
    println!("{listed}");
    let first = listed
        .lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().find(|w| w.contains(':')))
        .unwrap_or_else(|| panic!("an ADDRESS:PORT in:\n{listed}"));
    l7.env
        .cli_ok(&["backend", "set-weight", OFFLOAD_POOL, first, "1"]);
    assert!(!listed.contains("0.0%"), "{listed}");
    l7.env.stop_cleanly();
    println!("took {:?}", started.elapsed());
}

/// A user of the offload listener: its cookie and the backend it is pinned to.
#[derive(Clone, Debug)]
struct User {
    cookie: String,
    backend: String,
}

/// `n` new users of the offload listener: a first request each, without a cookie.
fn pin_users(l7: &L7Env, n: usize) -> Vec<User> {
    let roots = l7.roots();
    in_client(&l7.lab().client, "pin-users", move || async move {
        let mut conn = connect(&roots, OFFLOAD_PORT, VIP_NAME, false)
            .await
            .expect("connecting to the offload listener");
        let mut users = Vec::with_capacity(n);
        for u in 0..n {
            let reply = fetch(&mut conn, VIP_NAME, "/", None)
                .await
                .unwrap_or_else(|e| panic!("user {u}'s first request: {e}"));
            assert_eq!(reply.status, 200, "user {u}: {reply:?}");
            users.push(User {
                cookie: reply.set_cookie.clone().expect("a cookie for a new user"),
                backend: reply.backend.clone().expect("x-backend"),
            });
        }
        users
    })
}

/// One request of each user, with its cookie.
fn visit(l7: &L7Env, users: &[User]) -> Vec<Reply> {
    let roots = l7.roots();
    let cookies: Vec<String> = users.iter().map(|u| u.cookie.clone()).collect();
    in_client(&l7.lab().client, "visit", move || async move {
        let mut conn = connect(&roots, OFFLOAD_PORT, VIP_NAME, false)
            .await
            .expect("connecting to the offload listener");
        let mut replies = Vec::with_capacity(cookies.len());
        for (u, cookie) in cookies.iter().enumerate() {
            let reply = fetch(&mut conn, VIP_NAME, "/", Some(cookie))
                .await
                .unwrap_or_else(|e| panic!("user {u}'s request: {e}"));
            replies.push(reply);
        }
        replies
    })
}

/// Checks that user `u`'s request went to its backend, keeping its cookie.
fn assert_stays(u: usize, user: &User, reply: &Reply) {
    assert_eq!(reply.status, 200, "user {u}: {reply:?}");
    assert_eq!(
        reply.backend.as_deref(),
        Some(user.backend.as_str()),
        "user {u} stays on its backend: {reply:?}"
    );
    assert_eq!(
        reply.set_cookie, None,
        "user {u} keeps its cookie: {reply:?}"
    );
}

/// Checks that every user's request went to its backend, keeping its cookie.
fn assert_all_stay(users: &[User], replies: &[Reply]) {
    assert_eq!(users.len(), replies.len());
    for (u, (user, reply)) in users.iter().zip(replies).enumerate() {
        assert_stays(u, user, reply);
    }
}

/// The lab index of `backend-N`.
fn index_of(backend: &str) -> usize {
    backend
        .strip_prefix("backend-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{backend:?} is not a lab backend's name"))
}

/// Requests `user`'s session with its cookie every [`POLL`] until a backend other than
/// `dead` answers it with a new cookie; returns that reply and when it came (from `since`),
/// after printing what the user saw meanwhile. Panics after `bound` and 5 s more.
fn wait_for_repin(
    l7: &L7Env,
    user: &User,
    dead: &str,
    since: Instant,
    bound: Duration,
) -> (Reply, Duration) {
    let roots = l7.roots();
    let (cookie, dead) = (user.cookie.clone(), dead.to_owned());
    in_client(&l7.lab().client, "repin", move || async move {
        let mut conn = connect(&roots, OFFLOAD_PORT, VIP_NAME, false)
            .await
            .expect("connecting to the offload listener");
        let mut seen: BTreeMap<(u16, String, bool), usize> = BTreeMap::new();
        loop {
            let reply = fetch(&mut conn, VIP_NAME, "/", Some(&cookie))
                .await
                .expect("a request of the pinned user");
            let took = since.elapsed();
            let backend = reply.backend.clone().unwrap_or_default();
            let repinned = reply.set_cookie.is_some();
            *seen
                .entry((reply.status, backend.clone(), repinned))
                .or_insert(0) += 1;
            if reply.status == 200 && backend != dead && repinned {
                println!("until re-pinned, the user saw (status, backend, new cookie): {seen:?}");
                return (reply, took);
            }
            assert!(
                took < bound + Duration::from_secs(5),
                "not re-pinned after {took:?}; seen (status, backend, new cookie): {seen:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    })
}

#[test]
fn a_user_pinned_to_a_dead_backend_is_repinned_and_the_others_stay() {
    let started = Instant::now();
    let mut l7 = L7Env::start("lbl7sticky", BACKENDS, |config| config);
    let check = TcpCheck::LAB;
    thread::sleep(check.interval * (check.unhealthy_threshold + 1));
    for i in 0..BACKENDS {
        let view = backend(&l7.env, OFFLOAD_POOL, backend_v4(i).into());
        assert_eq!(view.state, "healthy", "{view:?}\n{}", l7.env.daemon.log());
    }

    let mut users = pin_users(&l7, 12);
    let spread: BTreeSet<&str> = users.iter().map(|u| u.backend.as_str()).collect();
    println!("12 users pinned over {spread:?}");
    assert_eq!(spread.len(), BACKENDS, "{users:?}");
    assert_all_stay(&users, &visit(&l7, &users));

    // User 0's backend dies.
    let dead = users[0].backend.clone();
    let dead_index = index_of(&dead);
    let stopped = Instant::now();
    l7.env.lab.stop_http_backend(dead_index);
    let bound = check.interval * check.unhealthy_threshold + check.interval + ALLOWANCE;
    let (reply, took) = wait_for_repin(&l7, &users[0], &dead, stopped, bound);
    println!(
        "user 0 re-pinned from {dead} to {:?} after {took:?} (bound {bound:?})",
        reply.backend
    );
    assert!(took <= bound, "re-pinned after {took:?}, bound {bound:?}");
    let (view, _) = wait_for_state(
        &l7.env,
        OFFLOAD_POOL,
        backend_v4(dead_index).into(),
        "unhealthy",
        stopped,
        bound,
    );
    assert!(
        view.reason
            .as_deref()
            .is_some_and(|r| r.contains("refused")),
        "{view:?}"
    );

    // The new cookie pins it to its new backend.
    users[0] = User {
        cookie: reply.set_cookie.clone().expect("the new cookie"),
        backend: reply.backend.clone().expect("x-backend"),
    };
    // The others: those pinned elsewhere stay, without a new cookie; those pinned to the dead
    // backend are re-pinned like user 0.
    let replies = visit(&l7, &users);
    let mut moved = 0;
    for (u, reply) in replies.iter().enumerate() {
        if u == 0 || users[u].backend != dead {
            assert_stays(u, &users[u], reply);
            continue;
        }
        assert_eq!(reply.status, 200, "user {u}: {reply:?}");
        assert_ne!(reply.backend, Some(dead.clone()), "user {u}: {reply:?}");
        users[u] = User {
            cookie: reply.set_cookie.clone().unwrap_or_else(|| {
                panic!("user {u}, pinned to {dead}, gets no new cookie: {reply:?}")
            }),
            backend: reply.backend.clone().expect("x-backend"),
        };
        moved += 1;
    }
    println!("{moved} more users re-pinned from {dead}, the others stayed");

    // The backend comes back: nobody moves (the re-pinned sessions hold their new cookies).
    l7.env
        .lab
        .start_http_backend(dead_index, BACKEND_PORTS)
        .expect("restarting the backend's HTTP servers");
    let restarted = Instant::now();
    let healthy_bound = check.interval * check.healthy_threshold + check.interval + ALLOWANCE;
    let (_, took) = wait_for_state(
        &l7.env,
        OFFLOAD_POOL,
        backend_v4(dead_index).into(),
        "healthy",
        restarted,
        healthy_bound,
    );
    println!("{dead} healthy again after {took:?}");
    assert_all_stay(&users, &visit(&l7, &users));
    l7.env.stop_cleanly();
    println!("took {:?}", started.elapsed());
}

/// The name of the renewed certificate.
const RENEWED: &str = "renewed.lb.test";

/// One GET of `/` on `port` with SNI `name`.
fn get_once(l7: &L7Env, port: u16, name: &'static str) -> Reply {
    let roots = l7.roots();
    in_client(&l7.lab().client, "get", move || async move {
        let mut conn = connect(&roots, port, name, false)
            .await
            .unwrap_or_else(|e| panic!("connecting to {port} as {name}: {e}"));
        fetch(&mut conn, name, "/", None)
            .await
            .unwrap_or_else(|e| panic!("GET / on {port}: {e}"))
    })
}

/// Checks that both L7 listeners present the certificate for `name` alone, and serve.
fn assert_presents(l7: &L7Env, name: &'static str) {
    for port in [OFFLOAD_PORT, BRIDGING_PORT] {
        let names = handshake_names(&l7.lab().client, &l7.roots(), port, name)
            .unwrap_or_else(|e| panic!("handshake with {port} as {name}: {e}"));
        assert!(names.iter().any(|n| n == name), "port {port}: {names:?}");
        let reply = get_once(l7, port, name);
        assert_eq!(reply.status, 200, "port {port}: {reply:?}");
    }
}

#[test]
fn cert_reload_serves_a_new_certificate_and_refuses_a_key_others_can_read() {
    let started = Instant::now();
    let mut l7 = L7Env::start("lbl7cert", BACKENDS, |config| config);
    assert_presents(&l7, VIP_NAME);

    // Renewed for another name: new handshakes see it.
    l7.files
        .replace_certificate(&l7.lab().pki, &[RENEWED])
        .expect("writing the renewed certificate");
    let stdout = l7.env.cli_ok(&["cert", "reload"]);
    println!("lb cert reload: {}", stdout.trim());
    assert!(stdout.contains(RENEWED), "{stdout}");
    assert_presents(&l7, RENEWED);
    for port in [OFFLOAD_PORT, BRIDGING_PORT] {
        let refused = handshake_names(&l7.lab().client, &l7.roots(), port, VIP_NAME);
        assert!(
            refused.is_err(),
            "port {port} still presents a certificate for {VIP_NAME}: {refused:?}"
        );
    }

    // A key its group and others may read: refused with the fix; the renewed one serves on.
    l7.files
        .replace_certificate(&l7.lab().pki, &["refused.lb.test"])
        .expect("writing the next certificate");
    std::fs::set_permissions(&l7.files.key, std::fs::Permissions::from_mode(0o644))
        .expect("chmod 644");
    let run = l7.env.cli(&["cert", "reload"]);
    println!("lb cert reload: {}", run.stderr.trim());
    assert!(!run.success, "a readable key was accepted: {run:?}");
    let key = l7.files.key.display().to_string();
    assert!(
        run.stderr.contains(&key) && run.stderr.contains("chmod 600"),
        "the error names {key} and the fix: {run:?}"
    );
    let log = l7.env.daemon.log();
    assert!(
        log.contains("a change was not applied") && log.contains("operation=\"cert-reload\""),
        "the daemon's log keeps the refusal: {log}"
    );
    assert_presents(&l7, RENEWED);
    l7.env.stop_cleanly();
    println!("took {:?}", started.elapsed());
}

/// The port of the listener `lb reload` adds, and of the one it refuses.
const ADDED_PORT: u16 = 10443;
const REFUSED_PORT: u16 = 11443;

/// Whether a TCP connection to `port` of the VIP from the client is refused.
fn is_refused(l7: &L7Env, port: u16) -> bool {
    l7.lab()
        .client
        .spawn("tcp", move || {
            TcpStream::connect_timeout(&vip(port), Duration::from_secs(2)).is_err()
        })
        .expect("starting a client thread")
        .join()
        .expect("a client thread panicked")
}

/// The listeners `lb listener list` shows: name -> (mode, port).
fn listeners(l7: &L7Env) -> BTreeMap<String, (String, u16)> {
    let Body::Listeners(listeners) = l7.env.cli_json(&["listener", "list"]) else {
        panic!("lb listener list answered something else");
    };
    listeners
        .into_iter()
        .map(|l| (l.name, (l.mode, l.port)))
        .collect()
}

/// Checks that every L7 port in `ports` answers 20 requests, and passthrough connections.
fn assert_serving(l7: &L7Env, ports: &[u16]) {
    for &port in ports {
        let replies = start_requests(l7, port, false, 2, 10)
            .join()
            .expect("a client thread panicked");
        assert!(
            replies.iter().all(|r| r.status == 200),
            "port {port}: {replies:?}"
        );
        let counts = per_backend(&replies);
        assert_eq!(counts.len(), BACKENDS, "port {port}: {counts:?}");
    }
    let served = connect_parallel(l7.lab(), vip(TLS_PORT), 12, 3);
    assert_consistent(l7.lab(), &served);
}

#[test]
fn reload_starts_a_new_l7_listener_and_refuses_one_with_a_missing_certificate() {
    let started = Instant::now();
    let mut l7 = L7Env::start("lbl7reload", BACKENDS, |config| config);
    let path = l7.env.daemon.config_path().to_owned();
    let write = |text: &str| {
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    };
    let original = std::fs::read_to_string(&path).expect("reading the configuration");
    let builder = l7.listeners();

    // A new offload listener on a new port of the VIP.
    assert!(
        is_refused(&l7, ADDED_PORT),
        "{ADDED_PORT} served before the reload"
    );
    let added = format!(
        "{original}{}",
        builder.offload_toml("added4", ADDED_PORT, OFFLOAD_POOL)
    );
    write(&added);
    let stdout = l7.env.cli_ok(&["reload"]);
    println!("lb reload: {}", stdout.trim());
    let before = listeners(&l7);
    assert_eq!(
        before.get("added4"),
        Some(&("offload".to_owned(), ADDED_PORT)),
        "{before:?}"
    );
    assert_serving(&l7, &[ADDED_PORT]);

    // One whose certificate file is missing: refused with the path, nothing changes.
    let missing = l7.files.dir.path.join("missing.pem");
    let broken = lb::lab::side_by_side::L7Listeners {
        cert: missing.clone(),
        ..builder.clone()
    };
    write(&format!(
        "{added}{}",
        broken.offload_toml("refused4", REFUSED_PORT, OFFLOAD_POOL)
    ));
    let run = l7.env.cli(&["reload"]);
    println!("lb reload: {}", run.stderr.trim());
    assert!(
        !run.success,
        "a listener without its certificate was accepted: {run:?}"
    );
    let shown = missing.display().to_string();
    assert!(
        run.stderr.contains(&shown) && run.stderr.contains("nothing changed"),
        "the error names {shown}: {run:?}"
    );
    let log = l7.env.daemon.log();
    assert!(
        log.contains("a change was not applied") && log.contains(&shown),
        "the daemon's log keeps the refusal: {log}"
    );
    assert_eq!(listeners(&l7), before, "the listeners did not change");
    assert!(is_refused(&l7, REFUSED_PORT), "{REFUSED_PORT} is served");
    assert_serving(&l7, &[OFFLOAD_PORT, BRIDGING_PORT, ADDED_PORT]);
    l7.env.stop_cleanly();
    println!("took {:?}", started.elapsed());
}

#[test]
fn a_backend_that_fails_requests_is_ejected_and_listed_without_a_health_check() {
    // No active check: only the requests can tell that a backend died.
    let metrics = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 9464));
    let mut l7 = L7Env::start_listeners(
        "lbl7eject",
        BACKENDS,
        |listeners| listeners.check = None,
        |config| lb_tests::pool_config::with_metrics(&config, metrics),
    );
    let dead = 1;
    l7.env.lab.stop_http_backend(dead);
    // Round robin over the pool: each request that tries the dead backend fails over (at most
    // one retry), and five failures in a row eject it.
    let replies = in_client(&l7.lab().client, "eject", {
        let roots = l7.roots();
        move || async move {
            let mut conn = connect(&roots, OFFLOAD_PORT, VIP_NAME, false)
                .await
                .unwrap();
            let mut replies = Vec::new();
            for _ in 0..30 {
                replies.push(fetch(&mut conn, VIP_NAME, "/headers", None).await.unwrap());
            }
            replies
        }
    });
    assert!(
        replies.iter().all(|r| r.status == 200),
        "every request succeeded on another backend: {:?}",
        per_backend(&replies)
    );
    let view = backend(&l7.env, OFFLOAD_POOL, backend_v4(dead).into());
    assert_eq!(view.state, "ejected", "{view:?}\n{}", l7.env.daemon.log());
    println!("lb backend list: {view:?}");
    assert!(
        view.ejected_for_s
            .is_some_and(|left| (1..=30).contains(&left)),
        "{view:?}"
    );
    let listed = l7.env.cli_ok(&["backend", "list", OFFLOAD_POOL]);
    assert!(
        listed.contains("ejected (") && listed.contains(" s left)"),
        "{listed}"
    );
    let status = l7.env.cli_ok(&["status"]);
    assert!(status.contains("ejected 1"), "{status}");
    let scraped = lb_tests::metrics_scrape::scrape(&l7.env.lab.lb, metrics);
    let health = |state: &str| {
        scraped.expect_value(&format!(
            r#"lb_backend_health{{pool="{OFFLOAD_POOL}",backend="{}",state="{state}"}}"#,
            lb::config::describe(view.address, view.port)
        ))
    };
    assert_eq!((health("ejected"), health("healthy")), (1.0, 0.0));
    let stats = l7.stats();
    let ejections: u64 = stats
        .l7
        .iter()
        .filter(|l| l.name == OFFLOAD_LISTENER)
        .flat_map(|l| &l.events)
        .filter(|(name, _)| name == "outlier_ejections")
        .map(|(_, value)| *value)
        .sum();
    assert_eq!(ejections, 1, "{stats:?}");
}

#[test]
fn a_configuration_of_l7_listeners_only_loads_and_pins_nothing() {
    let l7 = L7Env::start("lbl7only", 2, l7_only);
    let log = l7.env.daemon.log();
    assert!(log.contains("the packet path is not loaded"), "{log}");
    assert!(
        !l7.env.daemon.pin_dir().exists(),
        "nothing pinned under {}",
        l7.env.daemon.pin_dir().display()
    );
    let reply = in_client(&l7.lab().client, "l7only", {
        let roots = l7.roots();
        move || async move {
            let mut conn = connect(&roots, OFFLOAD_PORT, VIP_NAME, true).await.unwrap();
            fetch(&mut conn, VIP_NAME, "/headers", None).await.unwrap()
        }
    });
    assert_eq!(reply.status, 200, "{reply:?}");
    l7.env.cli_ok(&["status"]);
    // A passthrough listener needs the packet path: a restart, not a reload.
    let path = l7.env.daemon.config_path().to_owned();
    let text = std::fs::read_to_string(&path).unwrap();
    let with_passthrough = format!(
        "{}\n[listeners.tls4]\naddress = \"198.18.100.1\"\nport = 443\nmode = \"passthrough\"\npool = \"web4\"\n",
        text.replace("interfaces = []", "interfaces = [\"eth0\"]")
    );
    std::fs::write(&path, with_passthrough).unwrap();
    let refused = l7.env.cli(&["reload"]);
    assert!(!refused.success, "{refused:?}");
    assert!(refused.stderr.contains("packet path"), "{}", refused.stderr);
    std::fs::write(&path, text).unwrap();
    assert!(!l7.env.daemon.pin_dir().exists());
}

/// One request over HTTP/1.1 and one over HTTP/2 to the offload listener: their statuses.
fn get_both(l7: &L7Env, name: &'static str) -> [u16; 2] {
    [false, true].map(|h2| {
        in_client(&l7.lab().client, name, {
            let roots = l7.roots();
            move || async move {
                let mut conn = connect(&roots, OFFLOAD_PORT, VIP_NAME, h2).await.unwrap();
                fetch(&mut conn, VIP_NAME, "/headers", None).await.unwrap()
            }
        })
        .status
    })
}

#[test]
fn one_worker_thread_runs_the_current_thread_scheduler_through_reload_and_take_over() {
    let mut l7 = L7Env::start("lbl7one", 2, l7_only);
    // Started as the lab starts it, in this process's environment and on its CPUs.
    let first = Scheduler::of_this_process().unwrap();
    let log = l7.env.daemon.log();
    assert!(log.contains(&first.to_string()), "{first}: {log}");
    l7.env.daemon.stop().unwrap();
    l7.env.daemon.set_env(&[("TOKIO_WORKER_THREADS", "1")]);
    l7.env.daemon.restart().unwrap();
    let log = l7.env.daemon.log();
    assert!(
        log.contains("one thread (current-thread scheduler)"),
        "{log}"
    );
    assert_eq!(get_both(&l7, "one-first"), [200, 200]);
    l7.env.cli_ok(&["reload"]);
    assert_eq!(get_both(&l7, "one-reloaded"), [200, 200]);
    let mut old = l7
        .env
        .daemon
        .take_over(&lb_binary().unwrap())
        .unwrap_or_else(|e| panic!("take-over: {e}\n{}", l7.env.daemon.log()));
    let exited = old.exited_within(Duration::from_secs(20));
    assert!(
        exited.is_some_and(|status| status.success()),
        "the old daemon did not exit cleanly: {exited:?}\n{}",
        l7.env.daemon.log()
    );
    assert_eq!(get_both(&l7, "one-taken-over"), [200, 200]);
    let log = l7.env.daemon.log();
    let expected = 2 + usize::from(first == Scheduler::CurrentThread);
    assert_eq!(
        log.matches("current-thread scheduler").count(),
        expected,
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_worker_count_that_is_not_a_number_is_refused_by_name() {
    let mut l7 = L7Env::start("lbl7bad", 1, l7_only);
    l7.env.daemon.stop().unwrap();
    l7.env.daemon.set_env(&[("TOKIO_WORKER_THREADS", "two")]);
    assert!(l7.env.daemon.restart().is_err());
    let log = l7.env.daemon.log();
    assert!(
        log.contains("TOKIO_WORKER_THREADS=\"two\" is not a number of threads"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}
