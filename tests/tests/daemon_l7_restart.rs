//! Hitless L7 restarts and upgrades (`lb run --take-over`), under load.
//!
//! A client load runs against the offload and the bridging listener of one daemon, from the
//! lab's client namespace: on each listener, a worker that keeps one HTTP/1.1 connection
//! alive, one that opens a new connection for every request, and one on HTTP/2. A client
//! reconnects when its connection closes or refuses new requests (`Connection: close`,
//! GOAWAY), as every HTTP client does; a request that was sent and got no response, or a
//! connection that could not be made, is a failure.
//!
//! - [`restarts_and_an_upgrade_lose_no_request`]: an upgrade (the daemon, a debug build, is
//!   taken over by another build: the release build of the same source, or `LB_OTHER_BIN`),
//!   then three restarts (takeovers by that same build),
//!   each with slow requests in flight on the daemon being replaced: 0 failed requests, 0
//!   connection errors, the slow requests complete on the old daemon, which then exits 0.
//!   Prints the figures (requests, rate, longest gap between two completions).
//! - [`a_killed_predecessor_fails_only_its_requests_in_flight`]: the old daemon is killed
//!   (SIGKILL) while it drains slow requests: exactly those fail; the load sees none.
//! - [`a_failed_takeover_leaves_the_old_daemon_serving`]: a successor that fails after the
//!   sockets were handed over (its new listener's address is not the host's): the old
//!   daemon resumes, serves, and reloads.
//! - [`sigterm_lets_requests_in_flight_finish`]: SIGTERM with requests in flight on HTTP/1.1
//!   and HTTP/2: both complete (the HTTP/1.1 response says `Connection: close`), then the
//!   daemon exits 0; the port is closed meanwhile, and a new daemon started then (with
//!   metrics on, as every daemon here) serves beside the draining one.
//! - [`a_second_sigterm_closes_what_is_left`]: a second SIGTERM during the drain closes the
//!   connections still open and the daemon exits 0 at once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lb::lab::{
    daemon::lb_binary,
    l7::{HttpsConn, SendError, get},
    passthrough::VIP_NAME,
    side_by_side::{BRIDGING_PORT, OFFLOAD_PORT},
};
use lb_tests::side_by_side::{L7Env, connect, in_client, spawn_in_client, vip};
use rustls::RootCertStore;

/// How long a slow request takes at the backend.
/// Where the daemons serve metrics, on the balancer namespace's loopback.
const METRICS: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);
const SLOW: Duration = Duration::from_millis(1500);
/// The old daemon drains its slow requests, then exits: within this.
const EXIT_WITHIN: Duration = Duration::from_secs(15);
/// Workers of each kind on each listener (each has one request at a time).
const WORKERS_PER_KIND: usize = 3;
/// The least load the test must carry, in requests a second.
const MIN_RATE: f64 = 500.0;

#[derive(Clone, Copy, Debug)]
enum Kind {
    KeepAlive,
    NewConnections,
    H2,
}

/// What one worker saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    /// Failed requests and connections, with when they started.
    failures: Vec<(Instant, String)>,
    /// Requests sent again on a new connection because the old one had closed.
    resent: u64,
    completions: Vec<Instant>,
}

/// Requests `/delay?ms=0` on `port` until `stop`, as `kind` says.
async fn worker(roots: RootCertStore, port: u16, kind: Kind, stop: Arc<AtomicBool>) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<HttpsConn> = None;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let mut current = match conn.take() {
            Some(conn) => conn,
            None => match connect(&roots, port, VIP_NAME, matches!(kind, Kind::H2)).await {
                Ok(conn) => conn,
                Err(error) => {
                    tally
                        .failures
                        .push((started, format!("{kind:?} {port}: connecting: {error}")));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        match current
            .send_or_return(get(VIP_NAME, "/delay?ms=0", None))
            .await
        {
            Ok(answer) if answer.status == 200 => {
                tally.ok += 1;
                tally.completions.push(Instant::now());
                let closing = answer
                    .headers
                    .get(hyper::header::CONNECTION)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                if !closing && !matches!(kind, Kind::NewConnections) {
                    conn = Some(current);
                }
            }
            Ok(answer) => tally.failures.push((
                started,
                format!("{kind:?} {port}: status {}", answer.status),
            )),
            Err(SendError::NotSent(_)) => tally.resent += 1,
            Err(SendError::Failed(error)) => tally
                .failures
                .push((started, format!("{kind:?} {port}: {error}"))),
        }
    }
    tally
}

/// The load: every kind of worker on both listeners, until the returned flag is set.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<Vec<Tally>>>,
    started: Instant,
}

impl Load {
    fn start(env: &L7Env) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = [OFFLOAD_PORT, BRIDGING_PORT]
            .into_iter()
            .map(|port| {
                let roots = env.roots();
                let stop = Arc::clone(&stop);
                spawn_in_client(
                    &env.lab().client,
                    &format!("load-{port}"),
                    move || async move {
                        let kinds = [Kind::KeepAlive, Kind::NewConnections, Kind::H2];
                        let tasks: Vec<_> = kinds
                            .into_iter()
                            .cycle()
                            .take(WORKERS_PER_KIND * kinds.len())
                            .map(|kind| {
                                tokio::spawn(worker(roots.clone(), port, kind, Arc::clone(&stop)))
                            })
                            .collect();
                        let mut tallies = Vec::new();
                        for task in tasks {
                            tallies.push(task.await.expect("a load worker panicked"));
                        }
                        tallies
                    },
                )
            })
            .collect();
        Self {
            stop,
            threads,
            started: Instant::now(),
        }
    }

    fn finish(self) -> Figures {
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        let mut figures = Figures {
            elapsed,
            ..Figures::default()
        };
        let mut completions = Vec::new();
        for thread in self.threads {
            for tally in thread.join().expect("a load thread panicked") {
                figures.ok += tally.ok;
                figures.resent += tally.resent;
                figures.failures.extend(tally.failures);
                completions.extend(tally.completions);
            }
        }
        completions.sort_unstable();
        figures.longest_gap = completions
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        figures
    }
}

#[derive(Debug, Default)]
struct Figures {
    elapsed: Duration,
    ok: u64,
    resent: u64,
    failures: Vec<(Instant, String)>,
    longest_gap: Duration,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self, what: &str) {
        println!(
            "{what}: {} requests in {:.1} s ({:.0}/s), {} failed, {} sent again on a new \
             connection, longest gap between two completions {} ms",
            self.ok,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.failures.len(),
            self.resent,
            self.longest_gap.as_millis()
        );
    }
}

/// Starts `n` slow requests on their own connections (alternately HTTP/1.1 and HTTP/2, on
/// both listeners); each thread returns its request's outcome.
fn slow_requests(
    env: &L7Env,
    n: usize,
    slow: Duration,
) -> Vec<thread::JoinHandle<Result<u16, String>>> {
    (0..n)
        .map(|i| {
            let roots = env.roots();
            let port = if i % 2 == 0 {
                OFFLOAD_PORT
            } else {
                BRIDGING_PORT
            };
            let h2 = (i / 2) % 2 == 1;
            spawn_in_client(
                &env.lab().client,
                &format!("slow-{i}"),
                move || async move {
                    let mut conn = connect(&roots, port, VIP_NAME, h2)
                        .await
                        .map_err(|e| e.to_string())?;
                    let path = format!("/delay?ms={}", slow.as_millis());
                    conn.send(get(VIP_NAME, &path, None))
                        .await
                        .map(|answer| answer.status.as_u16())
                        .map_err(|e| e.to_string())
                },
            )
        })
        .collect()
}

/// The other build of `lb`: `$LB_OTHER_BIN`, else the release build beside the debug one
/// (`cargo xtask test` builds it).
fn other_build() -> PathBuf {
    if let Some(path) = std::env::var_os("LB_OTHER_BIN") {
        return PathBuf::from(path);
    }
    let debug = lb_binary().expect("the lb binary");
    let release = debug
        .parent()
        .and_then(|dir| dir.parent())
        .map(|target| target.join("release").join("lb"))
        .expect("a target directory");
    assert!(
        release.is_file(),
        "no second build of lb at {}: build it with `cargo build --release -p lb-userspace --bin lb` or set LB_OTHER_BIN",
        release.display()
    );
    release
}

/// With metrics on: their socket is handed over, and freed by a draining daemon, too.
fn start_env(prefix: &str) -> L7Env {
    L7Env::start(prefix, 2, |config| {
        let config = config.replacen("[control]\n", "[control]\nshutdown_timeout = \"10s\"\n", 1);
        lb_tests::pool_config::with_metrics(&config, METRICS)
    })
}

#[test]
fn restarts_and_an_upgrade_lose_no_request() {
    let mut l7 = start_env("lbl7up");
    let other = other_build();
    let load = Load::start(&l7);
    thread::sleep(Duration::from_secs(1));
    for (round, binary) in [&other, &other, &other, &other].into_iter().enumerate() {
        let slow = slow_requests(&l7, 4, SLOW);
        // The slow requests reach the daemon about to be replaced.
        thread::sleep(Duration::from_millis(300));
        let taken = Instant::now();
        let mut old = l7
            .env
            .daemon
            .take_over(binary)
            .unwrap_or_else(|e| panic!("takeover {round}: {e}"));
        println!(
            "takeover {round} ({}): the new daemon served after {} ms",
            binary.display(),
            taken.elapsed().as_millis()
        );
        for (i, request) in slow.into_iter().enumerate() {
            let outcome = request.join().expect("a slow request's thread panicked");
            assert_eq!(
                outcome,
                Ok(200),
                "takeover {round}: slow request {i} in flight on the old daemon\n{}",
                l7.env.daemon.log()
            );
        }
        let status = old.exited_within(EXIT_WITHIN).unwrap_or_else(|| {
            panic!(
                "takeover {round}: the old daemon did not exit after draining\n{}",
                l7.env.daemon.log()
            )
        });
        assert!(
            status.success(),
            "takeover {round}: the old daemon exited with {status}"
        );
    }
    thread::sleep(Duration::from_secs(1));
    let figures = load.finish();
    figures.print("three restarts and an upgrade");
    assert!(
        figures.failures.is_empty(),
        "failed requests: {:#?}\n{}",
        figures.failures,
        l7.env.daemon.log()
    );
    assert!(
        figures.rate() >= MIN_RATE,
        "the load was {:.0} requests/s, under the {MIN_RATE} the test must carry",
        figures.rate()
    );
    let log = l7.env.daemon.log();
    for build in ["debug", "release"] {
        assert!(
            log.contains(&format!("build=\"{build}\"")) || log.contains(&format!("build={build}")),
            "the {build} build ran: the upgrade went from one build to the other\n{log}"
        );
    }
    assert_eq!(
        log.matches("took over: the previous daemon stops accepting")
            .count(),
        4,
        "{log}"
    );
    // The last daemon serves the control socket.
    l7.env.cli_ok(&["status"]);
}

#[test]
fn a_killed_predecessor_fails_only_its_requests_in_flight() {
    let mut l7 = start_env("lbl7kill");
    let this_build = lb_binary().expect("the lb binary");
    let load = Load::start(&l7);
    thread::sleep(Duration::from_millis(500));
    // Slower than a takeover takes: still in flight when the old daemon is killed.
    let slow = slow_requests(&l7, 4, EXIT_WITHIN);
    thread::sleep(Duration::from_millis(300));
    let mut old = l7.env.daemon.take_over(&this_build).expect("takeover");
    // The load's connections move to the new daemon at their next response (HTTP/1.1) or
    // at once (HTTP/2 GOAWAY); the slow requests stay in flight on the old one.
    thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    old.kill().expect("killing the old daemon");
    let failed = slow
        .into_iter()
        .map(|r| r.join().expect("a slow request's thread panicked"))
        .filter(Result::is_err)
        .count();
    thread::sleep(Duration::from_millis(500));
    let figures = load.finish();
    figures.print("SIGKILL of a draining daemon");
    println!("requests in flight on the killed daemon that failed: {failed} of 4");
    assert_eq!(
        failed, 4,
        "every slow request was in flight on the killed daemon"
    );
    assert!(
        figures.failures.is_empty(),
        "the load lost requests (killed at {killed:?}): {:#?}",
        figures.failures
    );
    l7.env.cli_ok(&["status"]);
}

#[test]
fn sigterm_lets_requests_in_flight_finish() {
    let mut l7 = start_env("lbl7term");
    let roots = l7.roots();
    let requests: Vec<_> = [false, true]
        .into_iter()
        .map(|h2| {
            let roots = roots.clone();
            spawn_in_client(&l7.lab().client, "slow", move || async move {
                let mut conn = connect(&roots, OFFLOAD_PORT, VIP_NAME, h2).await.unwrap();
                // Long enough that the new daemon below starts while it runs.
                let path = format!("/delay?ms={}", 4 * SLOW.as_millis());
                conn.send(get(VIP_NAME, &path, None)).await
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    let stopping = Instant::now();
    let mut old = l7.env.daemon.terminate().expect("SIGTERM");
    thread::sleep(Duration::from_millis(200));
    let refused = in_client(&l7.lab().client, "after", move || async move {
        tokio::net::TcpStream::connect(vip(OFFLOAD_PORT)).await
    });
    assert!(refused.is_err(), "a stopping daemon accepts nothing new");
    assert!(
        old.exited_within(Duration::ZERO).is_none(),
        "the old daemon drains its slow requests"
    );
    // A new daemon starts beside the draining one: the control socket, the pin directory,
    // the metrics port and the listeners' ports are free. It serves while the old one
    // finishes its requests.
    assert!(
        !l7.env.daemon.socket().exists(),
        "the draining daemon removed its control socket"
    );
    l7.env
        .daemon
        .restart()
        .expect("a new daemon starts while the old one drains");
    let answer = in_client(&l7.lab().client, "new", {
        let roots = roots.clone();
        move || async move {
            let mut conn = connect(&roots, OFFLOAD_PORT, VIP_NAME, false).await?;
            conn.send(get(VIP_NAME, "/headers", None)).await
        }
    })
    .expect("the new daemon serves");
    assert_eq!(answer.status, 200);
    for (request, h2) in requests.into_iter().zip([false, true]) {
        let answer = request
            .join()
            .expect("a client thread panicked")
            .unwrap_or_else(|e| panic!("the request in flight (h2: {h2}) failed: {e}"));
        assert_eq!(answer.status, 200);
        if !h2 {
            assert_eq!(
                answer
                    .headers
                    .get(hyper::header::CONNECTION)
                    .map(|v| v.as_bytes()),
                Some(&b"close"[..]),
                "the last HTTP/1.1 response closes its connection"
            );
        }
    }
    let status = old
        .exited_within(EXIT_WITHIN)
        .expect("the daemon exits once its requests are done");
    println!(
        "SIGTERM: the requests in flight finished; the daemon exited after {} ms",
        stopping.elapsed().as_millis()
    );
    assert!(status.success(), "exited with {status}");
    l7.env.cli_ok(&["status"]);
}

#[test]
fn a_second_sigterm_closes_what_is_left() {
    let mut l7 = start_env("lbl7term2");
    // Longer than the drain's 10 s: only the second signal ends them.
    let slow = slow_requests(&l7, 2, Duration::from_secs(30));
    thread::sleep(Duration::from_millis(300));
    let mut old = l7.env.daemon.terminate().expect("SIGTERM");
    thread::sleep(Duration::from_millis(500));
    assert!(
        old.exited_within(Duration::ZERO).is_none(),
        "the daemon drains its slow requests"
    );
    let again = Instant::now();
    old.terminate().expect("the second SIGTERM");
    let status = old
        .exited_within(Duration::from_secs(5))
        .expect("a second SIGTERM stops the daemon at once");
    println!(
        "a second SIGTERM: the daemon exited after {} ms",
        again.elapsed().as_millis()
    );
    assert!(status.success(), "exited with {status}");
    for request in slow {
        let outcome = request.join().expect("a client thread panicked");
        assert!(
            outcome.is_err(),
            "a request in flight is cut by the second SIGTERM: {outcome:?}"
        );
    }
    let log = l7.env.daemon.log();
    assert!(
        log.contains("a second stop signal: closing the L7 connections still open"),
        "{log}"
    );
}

#[test]
fn a_failed_takeover_leaves_the_old_daemon_serving() {
    let mut l7 = start_env("lbl7fail");
    let this_build = lb_binary().expect("the lb binary");
    let config = l7.env.daemon.config_path().to_owned();
    let good = std::fs::read_to_string(&config).unwrap();
    // Its files are fine (checked before the handover is asked for), but its new listener's
    // address is not this host's: the new daemon fails after the sockets were handed over.
    let bad = format!(
        "{good}{}",
        l7.listeners()
            .offload_toml("elsewhere", 7443, lb::lab::side_by_side::OFFLOAD_POOL)
            .replace(&lb::lab::passthrough::VIP_V4.to_string(), "192.0.2.99")
    );
    std::fs::write(&config, bad).unwrap();
    let error = l7
        .env
        .daemon
        .take_over(&this_build)
        .expect_err("the new daemon cannot bind 192.0.2.99");
    assert!(error.to_string().contains("192.0.2.99"), "{error}");
    std::fs::write(&config, good).unwrap();
    let log = l7.env.daemon.log();
    assert!(
        log.contains("the new daemon did not take over: this daemon carries on"),
        "{log}"
    );
    // It serves, its controller runs again (a reload goes through it), and it holds the
    // pins again (a second daemon is refused).
    let answer = in_client(&l7.lab().client, "after", {
        let roots = l7.roots();
        move || async move {
            let mut conn = connect(&roots, OFFLOAD_PORT, VIP_NAME, false).await?;
            conn.send(get(VIP_NAME, "/headers", None)).await
        }
    })
    .expect("the old daemon serves");
    assert_eq!(answer.status, 200);
    l7.env.cli_ok(&["reload"]);
    assert!(l7.env.daemon.pid().is_some(), "the old daemon runs");
}
