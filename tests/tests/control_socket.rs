//! The control socket as a local attacker meets it (runs as root: it starts `lb run` and runs
//! the CLI as another user):
//!
//! - the socket is mode 0600 from the start;
//! - a socket directory its group or others may write is refused before anything is made;
//! - a peer that is neither root nor the daemon's user is refused by its credentials, even
//!   where the file's mode would let it connect;
//! - the CLI refuses a socket that another user (neither root, itself, nor the owner of the
//!   socket's directory) answers on, sending it nothing;
//! - a configured read-only group may look (status, stats, lists) but not change anything,
//!   whether it is the peer's primary or a supplementary group; a group that does not exist
//!   refuses the start;
//! - a connection that sends no whole request is answered with an error and closed after the
//!   read timeout; a request over the size limit is refused, naming it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{
    io::{BufRead as _, BufReader},
    os::unix::{
        fs::{MetadataExt as _, PermissionsExt as _},
        net::UnixStream,
        process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The user the CLI runs as in the refusal test: nobody.
const NOBODY: u32 = 65_534;
/// The read-only group of the group tests (a number: no entry in the group database needed).
const VIEWERS: u32 = 65_533;

/// A daemon with a configuration of its control socket only, killed (and its directory
/// removed) on every exit path.
struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
        drop(std::fs::remove_dir_all(&self.dir));
    }
}

impl Daemon {
    fn socket(&self) -> PathBuf {
        self.dir.join("run").join("lb.sock")
    }
}

/// Writes the configuration in a fresh directory whose `run/` (the socket's directory) has
/// `mode`, and starts `lb run` with it.
fn start(name: &str, mode: u32) -> Daemon {
    start_with(name, Some(mode), "")
}

/// As [`start`], with `control` added to the `[control]` table; without `mode`, `run/` is
/// left for the daemon to make.
fn start_with(name: &str, mode: Option<u32>, control: &str) -> Daemon {
    let dir = std::env::temp_dir().join(format!("lb-control-{name}-{}", std::process::id()));
    let run = dir.join("run");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    if let Some(mode) = mode {
        std::fs::create_dir_all(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let config = dir.join("lb.toml");
    std::fs::write(
        &config,
        format!("[control]\nsocket = {:?}\n{control}\n", run.join("lb.sock")),
    )
    .unwrap();
    let child = Command::new(lb_bin())
        .args(["run", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    Daemon { child, dir }
}

fn log(daemon: &Daemon) -> String {
    std::fs::read_to_string(daemon.dir.join("daemon.log")).unwrap_or_default()
}

/// Waits until the daemon answers on its socket (panics if it exits or takes 20 s).
fn wait_ready(daemon: &mut Daemon) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(daemon.socket()).is_err() {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            panic!("the daemon exited ({status}):\n{}", log(daemon));
        }
        assert!(Instant::now() < deadline, "not ready:\n{}", log(daemon));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_socket_is_private_and_other_users_are_refused_by_their_credentials() {
    let mut daemon = start("peer", 0o755);
    wait_ready(&mut daemon);
    let socket = daemon.socket();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket's mode");

    // Opened up by mistake: the credentials still decide.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let output = Command::new(public_cli(&daemon))
        .arg("--socket")
        .arg(&socket)
        .arg("status")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "refused");
    assert!(
        stderr.contains("permission denied") && stderr.contains(&format!("not uid {NOBODY}")),
        "{stderr}"
    );
    assert!(
        log(&daemon).contains("neither root nor the daemon's, nor in its read-only group"),
        "{}",
        log(&daemon)
    );
    // Root is answered.
    let output = Command::new(lb_bin())
        .arg("--socket")
        .arg(&socket)
        .arg("status")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
}

/// A copy of the CLI others may run (the build's own may sit in a private checkout).
fn public_cli(daemon: &Daemon) -> PathBuf {
    let cli = daemon.dir.join("lb");
    if !cli.exists() {
        std::fs::copy(lb_bin(), &cli).unwrap();
        std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    cli
}

/// `lb ARGS` against the daemon as uid [`NOBODY`] with primary group `gid` and the
/// supplementary `groups` (through `setpriv`, as an operator's login would have them).
fn cli_as(daemon: &Daemon, gid: u32, groups: &[u32], args: &[&str]) -> std::process::Output {
    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        command.arg("--clear-groups");
    } else {
        command.arg(format!("--groups={}", groups.join(",")));
    }
    command
        .arg(public_cli(daemon))
        .arg("--socket")
        .arg(daemon.socket())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_read_only_group_may_look_but_not_change_and_others_are_still_refused() {
    let mut daemon = start_with("group", None, &format!("read_only_group = \"{VIEWERS}\""));
    wait_ready(&mut daemon);
    // The directory it made, and the socket: the group's, the group may reach and connect.
    let run = std::fs::metadata(daemon.socket().parent().unwrap()).unwrap();
    assert_eq!((run.mode() & 0o7777, run.gid()), (0o750, VIEWERS));
    let socket = std::fs::metadata(daemon.socket()).unwrap();
    assert_eq!((socket.mode() & 0o777, socket.gid()), (0o660, VIEWERS));

    // A member by its primary group, and one by a supplementary group, may look.
    for (gid, groups) in [(VIEWERS, &[][..]), (NOBODY, &[VIEWERS][..])] {
        for args in [
            &["status"][..],
            &["stats"],
            &["listener", "list"],
            &["backend", "list"],
        ] {
            let output = cli_as(&daemon, gid, groups, args);
            assert!(
                output.status.success(),
                "{args:?} as {gid} {groups:?}: {output:?}"
            );
        }
        // ... but not change anything.
        for args in [&["reload"][..], &["cert", "reload"]] {
            let output = cli_as(&daemon, gid, groups, args);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{args:?} refused");
            assert!(stderr.contains("may only look"), "{args:?}: {stderr}");
        }
    }
    // Not in the group: the socket's mode keeps it out; opened up by mistake, the
    // credentials still do, and the answer says who may.
    let output = cli_as(&daemon, NOBODY, &[], &["status"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "refused");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    std::fs::set_permissions(daemon.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(
        daemon.socket().parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let output = cli_as(&daemon, NOBODY, &[], &["status"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "refused");
    assert!(
        stderr.contains(&format!("and group {VIEWERS} to look, not uid {NOBODY}")),
        "{stderr}"
    );
    let log = log(&daemon);
    assert!(log.contains("from the read-only group: refused"), "{log}");
    assert!(log.contains("nor in its read-only group: refused"), "{log}");
}

#[test]
fn a_read_only_group_that_does_not_exist_is_refused_before_anything_is_made() {
    let mut daemon = start_with("nogroup", None, "read_only_group = \"lb-no-such-group\"");
    let status = daemon.child.wait().unwrap();
    assert!(!status.success(), "refused");
    let log = log(&daemon);
    assert!(
        log.contains("read_only_group: group \"lb-no-such-group\" does not exist"),
        "{log}"
    );
    assert!(!daemon.socket().parent().unwrap().exists(), "nothing made");
}

#[test]
fn a_request_over_the_size_limit_is_refused_with_the_limit() {
    let mut daemon = start("large", 0o700);
    wait_ready(&mut daemon);
    let mut stream = UnixStream::connect(daemon.socket()).unwrap();
    let huge = format!(
        "{{\"request\":\"status\",\"pad\":\"{}\"}}\n",
        "x".repeat(100_000)
    );
    // The daemon stops reading at the limit: the rest may not be taken.
    drop(std::io::Write::write_all(&mut stream, huge.as_bytes()));
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).unwrap();
    assert!(
        answer.contains("a request over 64 KiB: refused"),
        "{answer:?}"
    );
}

#[test]
fn a_connection_without_a_whole_request_is_closed_after_the_read_timeout() {
    let mut daemon = start("slow", 0o700);
    wait_ready(&mut daemon);
    let mut stream = UnixStream::connect(daemon.socket()).unwrap();
    std::io::Write::write_all(&mut stream, b"{\"partial\":").unwrap();
    stream
        .set_read_timeout(Some(
            lb::control::server::READ_TIMEOUT + Duration::from_secs(5),
        ))
        .unwrap();
    let started = Instant::now();
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).unwrap();
    let waited = started.elapsed();
    assert!(answer.contains("no whole request"), "{answer:?}");
    println!("answered after {waited:?}: {}", answer.trim());
}

#[test]
fn a_socket_directory_others_may_write_is_refused_before_anything_is_made() {
    let mut daemon = start("open", 0o777);
    let status = daemon.child.wait().unwrap();
    assert!(!status.success(), "refused");
    let log = log(&daemon);
    assert!(
        log.contains("may be written by its group or others (mode 777)"),
        "{log}"
    );
    assert!(!Path::new(&daemon.socket()).exists(), "no socket made");
}

#[test]
fn the_cli_talks_to_no_socket_another_user_made_in_a_directory_anyone_may_write() {
    // A directory as /tmp is: root's, sticky, anyone may write; another user's "daemon" in it.
    let dir = std::env::temp_dir().join(format!("lb-control-impostor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = Cleanup(dir.clone());
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let socket = dir.join("lb.sock");
    let server = format!(
        "import socket\n\
         s = socket.socket(socket.AF_UNIX)\n\
         s.bind({socket:?})\n\
         s.listen(1)\n\
         print('ready', flush=True)\n\
         c, _ = s.accept()\n\
         got = c.recv(65536)\n\
         c.sendall(b'{{\"outcome\":\"ok\",\"body\":{{}}}}\\n')\n\
         print('got', len(got), flush=True)\n"
    );
    let mut impostor = Command::new("python3")
        .args(["-c", &server])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(impostor.stdout.as_mut().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    let output = Command::new(lb_bin())
        .arg("--socket")
        .arg(&socket)
        .arg("status")
        .output()
        .unwrap();
    drop(impostor.kill());
    let said = String::from_utf8_lossy(&impostor.wait_with_output().unwrap().stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "refused");
    assert!(
        stderr.contains(&format!(
            "runs as uid {NOBODY}: neither root, you, nor the owner"
        )),
        "{stderr}"
    );
    assert!(!said.contains("got"), "the request was sent: {said}");
}

/// Removes a directory when dropped.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        drop(std::fs::remove_dir_all(&self.0));
    }
}

/// The `lb` binary under test (`cargo build -p lb-userspace --bin lb`), checked to run as root.
fn lb_bin() -> PathBuf {
    lb_tests::require_root();
    lb::lab::daemon::lb_binary().expect("the lb binary")
}
