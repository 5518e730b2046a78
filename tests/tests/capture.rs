//! `lb capture` against a running daemon in the passthrough lab: the pcapng file it writes
//! holds the packets the XDP program handled, each with its outcome as a comment, and tcpdump
//! reads it; filters choose what is recorded; bad requests change nothing; a capture ended any
//! way (count, Ctrl-C, the CLI killed) turns the datapath's capture off and frees the ring for
//! the next one.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{
    io::{BufRead as _, BufReader},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use lb::{
    capture::pcapng::{self, ReadPacket},
    lab::passthrough::{CLIENT_V4, LB_V4, VIP_V4, lab_config},
};
use lb_tests::{
    clients::connect_parallel,
    daemon_lab::{DaemonLab, TLS_PORT},
};

fn vip4() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP_V4), TLS_PORT)
}

/// A running `lb capture`, its stderr lines as they come.
struct Capture {
    child: Child,
    lines: mpsc::Receiver<String>,
    file: PathBuf,
}

impl Capture {
    /// Starts `lb capture ARGS -w FILE` and waits until it says it is capturing.
    fn start(env: &DaemonLab, file: &Path, args: &[&str]) -> Self {
        let mut command = Command::new(lb::lab::daemon::lb_binary().unwrap());
        command
            .arg("--socket")
            .arg(env.daemon.socket())
            .arg("capture")
            .args(args)
            .arg("-w")
            .arg(file);
        Self::spawn(env, command, file)
    }

    /// Starts `command` (an `lb capture` writing `file`) and waits until it says it is
    /// capturing.
    fn spawn(env: &DaemonLab, mut command: Command, file: &Path) -> Self {
        use std::os::unix::process::CommandExt as _;
        // A group of its own: dropping it kills a pipe's every process.
        let mut child = command
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting lb capture");
        let stderr = child.stderr.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        let mut capture = Self {
            child,
            lines,
            file: file.to_owned(),
        };
        let started = capture.wait_for("Ctrl-C to stop", Duration::from_secs(10));
        assert!(
            started.is_some(),
            "{command:?} did not start: {:?}\ndaemon log:\n{}",
            capture.rest(),
            env.daemon.log()
        );
        capture
    }

    /// The first stderr line containing `text`, within `limit`.
    fn wait_for(&mut self, text: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// The stderr lines so far.
    fn rest(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Waits for the CLI to exit by itself; its summary line.
    fn finish(mut self, limit: Duration) -> (String, Vec<ReadPacket>) {
        let summary = self
            .wait_for("packets written to", limit)
            .unwrap_or_else(|| panic!("lb capture did not end: {:?}", self.rest()));
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "lb capture exited with {status}: {summary}"
        );
        let bytes = std::fs::read(&self.file).unwrap();
        let packets = pcapng::read(&bytes).expect("the file reads back");
        (summary, packets)
    }

    /// Ctrl-C, then [`Capture::finish`].
    fn interrupt(self) -> (String, Vec<ReadPacket>) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
        self.finish(Duration::from_secs(10))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling the process group this test started.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        drop(self.child.wait());
    }
}

/// A temporary directory for the capture files.
fn scratch(name: &str) -> tempdir::Dir {
    tempdir::Dir::new(name)
}

mod tempdir {
    use std::path::{Path, PathBuf};

    /// A directory removed on drop.
    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("lb-{name}-{}", std::process::id()));
            drop(std::fs::remove_dir_all(&dir));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            drop(std::fs::remove_dir_all(&self.0));
        }
    }
}

/// `tcpdump -nr FILE`'s lines (and its success).
fn tcpdump(file: &Path) -> Vec<String> {
    let output = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(file)
        .output()
        .expect("running tcpdump (the tcpdump package)");
    assert!(
        output.status.success(),
        "tcpdump -r {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn forwarded_packets_are_recorded_with_their_outcome_and_tcpdump_reads_them() {
    let env = DaemonLab::start("lbtcap", 2, |paths| lab_config(paths, 2));
    let dir = scratch("capture");
    let file = dir.path().join("forward.pcapng");
    let capture = Capture::start(&env, &file, &["--listener", "tls4", "--count", "40"]);
    // Each TLS connection is a dozen packets or so from the client: 40 come from a few.
    let served = connect_parallel(&env.lab, vip4(), 10, 2);
    assert_eq!(served.len(), 10);
    let (summary, packets) = capture.finish(Duration::from_secs(20));
    println!("{summary}");
    assert!(summary.contains("40 packets written"), "{summary}");
    assert!(summary.contains("40 packets, as asked"), "{summary}");
    assert_eq!(packets.len(), 40);
    let vip = VIP_V4.to_string();
    for packet in &packets {
        let comment = packet.comments.join(" ");
        assert_eq!(packet.interface, "eth0", "{comment}");
        assert!(comment.contains("listener=tls4"), "{comment}");
        assert!(
            comment.contains("reason=tx_local") || comment.contains("reason=tx_redirect"),
            "{comment}"
        );
        assert!(comment.contains("backend=tls4/198.18."), "{comment}");
        // Encapsulated: outer IPv4 (protocol 4) around the client's packet to the VIP.
        assert_eq!(&packet.data[12..14], &[0x08, 0x00], "IPv4 frame");
        assert_eq!(packet.data[14 + 9], 4, "IP-in-IP: {comment}");
        assert_eq!(
            packet.len as usize,
            packet.data.len(),
            "whole frames: {comment}"
        );
        assert_eq!(packet.queue, Some(0), "{comment}");
        assert!(
            matches!(packet.xdp_action, Some(3 | 4)),
            "epb_verdict says XDP_TX or XDP_REDIRECT: {comment}"
        );
    }
    let first = packets.first().unwrap().time_ns;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    assert!(
        now.abs_diff(u128::from(first)) < 120_000_000_000,
        "timestamps are wall-clock time: {first} vs now {now}"
    );
    let lines = tcpdump(&file);
    assert_eq!(lines.len(), 40, "{lines:#?}");
    let inner = format!("{CLIENT_V4}.");
    for line in &lines {
        assert!(
            line.contains(&inner) && line.contains(&format!("{vip}.{TLS_PORT}")),
            "tcpdump shows the client's packet to the VIP inside: {line}"
        );
    }
    println!("{}", lines[0]);

    // The README's pipe: the file is standard output, read by tcpdump as it comes.
    let lb = lb::lab::daemon::lb_binary().unwrap();
    let mut pipe = Command::new("sh");
    pipe.arg("-c").arg(format!(
        "'{}' --socket '{}' capture --listener tls4 --count 5 -w - | tcpdump -nr -",
        lb.display(),
        env.daemon.socket().display()
    ));
    let mut capture = Capture::spawn(&env, pipe, Path::new("-"));
    connect_parallel(&env.lab, vip4(), 2, 1);
    let summary = capture
        .wait_for("packets written to", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("lb capture -w - did not end: {:?}", capture.rest()));
    assert!(summary.contains("5 packets written to -"), "{summary}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(capture.child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(capture.child.wait().unwrap().success());
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains(&format!("{vip}.{TLS_PORT}"))),
        "{stdout}"
    );

    let log = env.daemon.log();
    assert!(log.contains("packet capture on"), "{log}");
    assert!(log.contains("packet capture off"), "{log}");
}

#[test]
fn filters_choose_the_packets_and_bad_requests_change_nothing() {
    let env = DaemonLab::start("lbtcapf", 2, |paths| lab_config(paths, 2));
    let dir = scratch("capture-filters");

    // Refused before anything starts: nothing is written, no capture runs.
    let bad = dir.path().join("bad.pcapng");
    let bad_arg = bad.to_str().unwrap();
    let run = env.cli(&["capture", "--listener", "nosuch", "-w", bad_arg]);
    assert!(!run.success);
    assert!(
        run.stderr.contains("no passthrough listener \"nosuch\"") && run.stderr.contains("tls4"),
        "{}",
        run.stderr
    );
    assert!(!bad.exists(), "a refused capture writes no file");
    for args in [
        &["capture", "--snaplen", "0", "-w", bad_arg][..],
        &["capture", "--snaplen", "4096", "-w", bad_arg],
        &["capture", "--rate", "0", "-w", bad_arg],
        &["capture", "--count", "0", "-w", bad_arg],
        &["capture", "--client", "10.0.0.1/8", "-w", bad_arg],
        &["capture", "--verdict", "conn_hit", "-w", bad_arg],
        &["capture"],
    ] {
        let run = env.cli(args);
        assert_eq!(
            run.code,
            Some(2),
            "{args:?} is a usage error: {}",
            run.stderr
        );
    }
    assert!(!bad.exists());

    // Only what the kernel gets, from the client: a connection to the balancer's own address.
    let file = dir.path().join("pass.pcapng");
    let client = format!("{CLIENT_V4}/32");
    let capture = Capture::start(
        &env,
        &file,
        &["--verdict", "pass", "--client", &client, "--count", "2"],
    );
    // One at a time.
    let second = env.cli(&["capture", "-w", dir.path().join("second").to_str().unwrap()]);
    assert!(
        !second.success && second.stderr.contains("one at a time"),
        "{}",
        second.stderr
    );
    // Forwarded packets are not recorded; the kernel's are.
    connect_parallel(&env.lab, vip4(), 5, 1);
    let own = SocketAddr::new(IpAddr::V4(LB_V4), 9);
    env.lab
        .client
        .run_here(|| {
            for _ in 0..2 {
                drop(TcpStream::connect_timeout(&own, Duration::from_secs(1)));
            }
        })
        .unwrap();
    let (summary, packets) = capture.finish(Duration::from_secs(20));
    println!("{summary}");
    assert_eq!(packets.len(), 2, "{summary}");
    for packet in &packets {
        let comment = packet.comments.join(" ");
        assert!(comment.starts_with("action=pass reason=pass_"), "{comment}");
        assert!(!comment.contains("backend="), "{comment}");
    }
    let lines = tcpdump(&file);
    assert!(
        lines
            .iter()
            .all(|l| l.contains(&format!("{CLIENT_V4}.")) && l.contains(&format!("{LB_V4}.9"))),
        "{lines:#?}"
    );

    // A capture that matches nothing (another client) records nothing while traffic flows.
    let quiet = dir.path().join("quiet.pcapng");
    let capture = Capture::start(&env, &quiet, &["--client", "203.0.113.0/24"]);
    assert_eq!(connect_parallel(&env.lab, vip4(), 5, 1).len(), 5);
    let (summary, packets) = capture.interrupt();
    println!("{summary}");
    assert!(packets.is_empty(), "{packets:?}");
    assert!(summary.contains("the CLI closed the capture"), "{summary}");
    assert!(summary.contains("matched 0"), "{summary}");

    // Ctrl-C ends a capture while packets keep coming, with a whole file and a summary.
    let busy = dir.path().join("busy.pcapng");
    let capture = Capture::start(&env, &busy, &["--listener", "tls4"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = std::sync::Arc::clone(&stop);
        let lab = &env.lab;
        std::thread::scope(|scope| {
            let load = scope.spawn(|| {
                let mut rounds = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && rounds < 200 {
                    connect_parallel(lab, vip4(), 4, 2);
                    rounds += 1;
                }
                rounds
            });
            std::thread::sleep(Duration::from_millis(500));
            let (summary, packets) = capture.interrupt();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            (load.join().unwrap(), summary, packets)
        })
    };
    let (rounds, summary, packets) = traffic;
    println!("{summary} ({rounds} rounds of traffic)");
    assert!(!packets.is_empty(), "{summary}");
    assert!(summary.contains("the CLI closed the capture"), "{summary}");

    // The daemon's own checks of a request that did not come through the CLI: refused, and
    // no capture started.
    let starts = env.daemon.log().matches("packet capture on").count();
    let raw = |line: &str| -> String {
        use std::io::{BufRead as _, Write as _};
        let mut stream = std::os::unix::net::UnixStream::connect(env.daemon.socket()).unwrap();
        stream.write_all(line.as_bytes()).unwrap();
        let mut answer = String::new();
        BufReader::new(&stream).read_line(&mut answer).unwrap();
        answer
    };
    let answer =
        raw("{\"request\":\"capture\",\"listener\":null,\"snaplen\":0,\"per_cpu_rate\":10}\n");
    assert!(answer.contains("snaplen 0 is not 1 to 2048"), "{answer}");
    let answer = raw(
        "{\"request\":\"capture\",\"snaplen\":64,\"per_cpu_rate\":10,\"verdict\":\"conn_hit\"}\n",
    );
    assert!(answer.contains("error"), "{answer}");
    assert_eq!(
        env.daemon.log().matches("packet capture on").count(),
        starts
    );

    // A CLI killed outright: the daemon turns the capture off and the next one may start.
    let killed = dir.path().join("killed.pcapng");
    let mut capture = Capture::start(&env, &killed, &[]);
    capture.child.kill().unwrap();
    capture.child.wait().unwrap();
    drop(capture);
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.daemon.log().matches("packet capture off").count() < 4 {
        assert!(
            Instant::now() < deadline,
            "the capture stayed on:\n{}",
            env.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let again = dir.path().join("again.pcapng");
    let capture = Capture::start(&env, &again, &["--listener", "tls4", "--count", "1"]);
    connect_parallel(&env.lab, vip4(), 1, 1);
    let (_, packets) = capture.finish(Duration::from_secs(20));
    assert_eq!(packets.len(), 1);
}
