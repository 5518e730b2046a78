//! The access log (`[access_log]`) of a running daemon, read back from its file: a line per
//! request on both L7 listeners (HTTP/1.1 and HTTP/2), with the client, the TLS session, the
//! request, the backend that answered (the one the response names), the bytes, the durations and
//! the sticky outcome; a line for a failed TLS handshake and one for a connection closed before
//! any request; `SIGUSR1` after the file was moved (as logrotate does) writes a new file; `lb
//! reload` to the text format writes text lines; the counters count the lines.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{
    io::Write as _,
    net::TcpStream,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use lb::lab::{
    l7::LabDir,
    passthrough::{CLIENT_V4, VIP_NAME, backend_v4},
    side_by_side::{BRIDGING_LISTENER, BRIDGING_PORT, OFFLOAD_LISTENER, OFFLOAD_PORT},
};
use lb_tests::side_by_side::{L7Env, Reply, connect, fetch, handshake_names, in_client, vip};
use serde_json::Value;

const BACKENDS: usize = 3;

fn access_log_section(path: &Path, format: &str) -> String {
    format!(
        "\n[access_log]\npath = \"{}\"\nformat = \"{format}\"\n",
        path.display()
    )
}

/// The file's lines, once it holds at least `n` (waits up to 5 s).
fn lines(path: &Path, n: usize, env: &L7Env) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} holds {} lines, not {n}:\n{text}\n{}",
            path.display(),
            lines.len(),
            env.env.daemon.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// `n` GETs of `/headers` on one connection to `port` (HTTP/2 if `h2`), the second and later
/// with the first's cookie, if it set one.
fn requests(env: &L7Env, port: u16, h2: bool, n: usize) -> Vec<Reply> {
    let roots = env.roots();
    in_client(&env.lab().client, "requests", move || async move {
        let mut conn = connect(&roots, port, VIP_NAME, h2).await.unwrap();
        let mut replies: Vec<Reply> = Vec::new();
        for _ in 0..n {
            let cookie = replies.first().and_then(|r| r.set_cookie.clone());
            replies.push(
                fetch(&mut conn, VIP_NAME, "/headers", cookie.as_deref())
                    .await
                    .unwrap(),
            );
        }
        replies
    })
}

fn field<'a>(line: &'a Value, name: &str) -> &'a Value {
    line.get(name)
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

fn str_of<'a>(line: &'a Value, name: &str) -> &'a str {
    field(line, name)
        .as_str()
        .unwrap_or_else(|| panic!("{name} is not a string in {line}"))
}

/// Checks a request's line against the reply it got.
fn assert_request_line(line: &Value, listener: &str, protocol: &str, reply: &Reply) {
    assert_eq!(str_of(line, "listener"), listener, "{line}");
    assert_eq!(str_of(line, "client"), CLIENT_V4.to_string(), "{line}");
    assert!(field(line, "client_port").as_u64().unwrap() > 0, "{line}");
    assert_eq!(str_of(line, "sni"), VIP_NAME, "{line}");
    assert!(str_of(line, "tls_version").starts_with("TLSv1."), "{line}");
    assert!(str_of(line, "tls_cipher").starts_with("TLS"), "{line}");
    assert_eq!(str_of(line, "method"), "GET", "{line}");
    assert_eq!(str_of(line, "path"), "/headers", "{line}");
    assert!(str_of(line, "authority").starts_with(VIP_NAME), "{line}");
    assert_eq!(str_of(line, "protocol"), protocol, "{line}");
    assert_eq!(
        field(line, "status").as_u64(),
        Some(u64::from(reply.status))
    );
    // The backend the line names is the one that answered.
    let answered: usize = reply
        .backend
        .as_deref()
        .and_then(|name| name.strip_prefix("backend-"))
        .and_then(|i| i.parse().ok())
        .expect("an x-backend");
    let backend = str_of(line, "backend");
    assert!(
        backend.starts_with(&format!("{}:", backend_v4(answered))),
        "{backend} did not answer ({:?}): {line}",
        reply.backend
    );
    assert_eq!(
        field(line, "bytes_out").as_u64(),
        Some(reply.body.len() as u64),
        "{line}"
    );
    assert_eq!(field(line, "bytes_in").as_u64(), Some(0), "{line}");
    let request_ms = field(line, "request_ms").as_f64().unwrap();
    let backend_ms = field(line, "backend_ms").as_f64().unwrap();
    let total_ms = field(line, "total_ms").as_f64().unwrap();
    assert!(
        request_ms >= 0.0 && backend_ms > 0.0 && total_ms >= request_ms + backend_ms - 0.002,
        "{line}"
    );
    assert_eq!(field(line, "retries").as_u64(), Some(0), "{line}");
    assert!(field(line, "error").is_null(), "{line}");
    // RFC 3339, UTC, milliseconds: 2026-12-07T02:16:50.947Z.
    let time = str_of(line, "time");
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{line}"
    );
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[test]
fn every_request_and_every_connection_without_one_gets_a_line() {
    let dir = LabDir::new("lbtalog").unwrap();
    let path = dir.path.join("access.log");
    let section = access_log_section(&path, "json");
    let env = L7Env::start("lbtalog", BACKENDS, |config| config + &section);

    // Requests: three on the sticky offload listener (HTTP/1.1), two on bridging (HTTP/2).
    let offload = requests(&env, OFFLOAD_PORT, false, 3);
    let bridging = requests(&env, BRIDGING_PORT, true, 2);
    let logged: Vec<Value> = lines(&path, 5, &env).iter().map(|l| parse(l)).collect();
    let of = |listener: &str| -> Vec<&Value> {
        logged
            .iter()
            .filter(|l| str_of(l, "listener") == listener)
            .collect()
    };
    let offload_lines = of(OFFLOAD_LISTENER);
    assert_eq!(offload_lines.len(), 3, "{logged:?}");
    for (line, reply) in offload_lines.iter().zip(&offload) {
        assert_request_line(line, OFFLOAD_LISTENER, "HTTP/1.1", reply);
    }
    let sticky: Vec<&str> = offload_lines.iter().map(|l| str_of(l, "sticky")).collect();
    assert_eq!(sticky, ["new", "pinned", "pinned"], "{offload_lines:?}");
    let bridging_lines = of(BRIDGING_LISTENER);
    assert_eq!(bridging_lines.len(), 2, "{logged:?}");
    for (line, reply) in bridging_lines.iter().zip(&bridging) {
        assert_request_line(line, BRIDGING_LISTENER, "HTTP/2", reply);
        assert!(field(line, "sticky").is_null(), "{line}");
    }

    // A client that speaks plain HTTP to the TLS port: a failed handshake, no SNI.
    in_client(&env.lab().client, "plain", || async {
        let mut tcp = TcpStream::connect(vip(OFFLOAD_PORT)).unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0_u8; 64];
        drop(std::io::Read::read(&mut tcp, &mut buf));
    });
    // A TLS handshake, then nothing.
    handshake_names(&env.lab().client, &env.roots(), OFFLOAD_PORT, VIP_NAME).unwrap();
    let logged: Vec<Value> = lines(&path, 7, &env).iter().map(|l| parse(l)).collect();
    let failed = logged
        .iter()
        .find(|l| {
            field(l, "error")
                .as_str()
                .is_some_and(|e| e.starts_with("tls_handshake_failed"))
        })
        .unwrap_or_else(|| panic!("no failed handshake in {logged:?}"));
    assert_eq!(str_of(failed, "client"), CLIENT_V4.to_string());
    assert!(field(failed, "method").is_null() && field(failed, "status").is_null());
    let quiet = logged
        .iter()
        .find(|l| field(l, "error").as_str() == Some("closed_before_request"))
        .unwrap_or_else(|| panic!("no connection closed before a request in {logged:?}"));
    assert_eq!(str_of(quiet, "sni"), VIP_NAME);
    assert_eq!(str_of(quiet, "listener"), OFFLOAD_LISTENER);

    // logrotate: the file is moved, SIGUSR1 has the daemon open it again by its name.
    let rotated = dir.path.join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    let pid = env.env.daemon.pid().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-USR1", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_for_log(&env, "access log reopened");
    let after = requests(&env, OFFLOAD_PORT, true, 1);
    let new_lines = lines(&path, 1, &env);
    assert_eq!(new_lines.len(), 1, "{new_lines:?}");
    assert_request_line(&parse(&new_lines[0]), OFFLOAD_LISTENER, "HTTP/2", &after[0]);
    assert_eq!(
        std::fs::read_to_string(&rotated).unwrap().lines().count(),
        7,
        "the moved file grew after the reopen"
    );

    // `lb reload` to the text format: the next lines are text, fields in the documented order.
    let config_path = PathBuf::from(env.env.daemon.config_path());
    let text = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        text.replace("format = \"json\"", "format = \"text\""),
    )
    .unwrap();
    env.env.cli_ok(&["reload"]);
    let reply = requests(&env, BRIDGING_PORT, false, 1).remove(0);
    let all = lines(&path, 2, &env);
    let fields: Vec<&str> = all[1].split(' ').collect();
    assert_eq!(fields[1], BRIDGING_LISTENER, "{}", all[1]);
    assert!(
        fields[2].starts_with(&format!("{CLIENT_V4}:")),
        "{}",
        all[1]
    );
    assert_eq!(fields[3], "\"GET", "{}", all[1]);
    assert!(fields[4].starts_with(VIP_NAME), "{}", all[1]);
    assert_eq!(&fields[5..7], ["/headers", "HTTP/1.1\""], "{}", all[1]);
    assert_eq!(fields[7], reply.status.to_string(), "{}", all[1]);
    assert_eq!(fields[10], reply.body.len().to_string(), "{}", all[1]);
    // The error, then the rule (none: the listener's own pool).
    assert_eq!(fields[fields.len() - 2], "\"-\"", "{}", all[1]);
    assert_eq!(fields[fields.len() - 1], "-", "{}", all[1]);
    assert_eq!(fields.len(), 21, "{}", all[1]);

    // Counted: every line written, none dropped.
    let stats = env.env.cli_ok(&["stats"]);
    let sum = |name: &str| -> u64 {
        stats
            .lines()
            .filter_map(|l| l.trim().strip_prefix(name))
            .map(|value| value.trim().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(sum("access_log_lines"), 7 + 1 + 1, "{stats}");
    assert_eq!(sum("access_log_dropped"), 0, "{stats}");
}

/// Waits (up to 5 s) until the daemon's log contains `text`.
fn wait_for_log(env: &L7Env, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !env.env.daemon.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in the log:\n{}",
            env.env.daemon.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
}
