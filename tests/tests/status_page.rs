//! The status page (`[metrics] status_page = true`) in a real headless Chromium, driven over
//! WebDriver by ChromeDriver (Debian's `chromium` and `chromium-driver`), both run in the
//! balancer's namespace beside the daemon: the page loads from the metrics listener, its DOM
//! shows every backend with its state, the listeners and the XDP counters; a backend disabled
//! with the CLI shows as disabled, and at the top of the last changes, within 2 s, without the
//! page being reloaded. A screenshot is kept as `target/test-artifacts/status-page.png`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use base64::Engine as _;
use lb::lab::{
    daemon::DaemonPaths,
    l7::LabDir,
    netns::NetNs,
    passthrough::{backend_v4, lab_config},
};
use lb_tests::daemon_lab::DaemonLab;
use serde_json::{Value, json};

const BACKENDS: usize = 3;
/// Where the daemon serves its metrics and the page, inside the balancer's namespace.
const METRICS: &str = "127.0.0.1:9100";
const DRIVER_PORT: u16 = 9515;

fn config(paths: &DaemonPaths) -> String {
    format!(
        "{}\n[metrics]\nlisten = \"{METRICS}\"\nstatus_page = true\n",
        lab_config(paths, BACKENDS)
    )
}

/// ChromeDriver in a namespace, in a process group of its own: dropped, the group (the
/// driver and every Chromium it started) is killed.
struct Driver {
    child: Child,
    profile: LabDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = i32::try_from(self.child.id()).unwrap_or(0);
        if group > 0 {
            // SAFETY: kill(2) with a negative pid signals the group this test made; no memory
            // is involved.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        drop(self.child.wait());
    }
}

impl Driver {
    fn start(ns: &NetNs) -> Self {
        let profile = LabDir::new("lbtstatus-chrome").unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "chromedriver"])
            .arg(format!("--port={DRIVER_PORT}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver (cargo xtask setup installs chromium-driver)");
        let driver = Self { child, profile };
        let deadline = Instant::now() + Duration::from_secs(20);
        while driver.call(ns, "GET", "/status", None).is_none() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            thread::sleep(Duration::from_millis(100));
        }
        driver
    }

    /// One WebDriver request, from a thread in the driver's namespace: its JSON answer's
    /// `value`, or `None` if the driver could not be reached.
    fn call(&self, ns: &NetNs, method: &str, path: &str, body: Option<&Value>) -> Option<Value> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{DRIVER_PORT}\r\nContent-Type: \
             application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = ns
            .spawn("webdriver", move || -> Option<String> {
                let mut stream = TcpStream::connect(("127.0.0.1", DRIVER_PORT)).ok()?;
                stream
                    .set_read_timeout(Some(Duration::from_secs(60)))
                    .ok()?;
                stream.write_all(request.as_bytes()).ok()?;
                read_response(&mut stream)
            })
            .unwrap()
            .join()
            .unwrap()?;
        let json = answer.as_str();
        let value: Value = serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {answer}"));
        Some(value["value"].clone())
    }
}

/// An HTTP/1.1 response's body, as long as its `Content-Length` says (the driver keeps the
/// connection open).
fn read_response(stream: &mut TcpStream) -> Option<String> {
    let mut received = Vec::new();
    let mut chunk = [0_u8; 16 * 1024];
    let head_end = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        received.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))?
        .trim()
        .parse()
        .ok()?;
    while received.len() < head_end + length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        received.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(received[head_end..head_end + length].to_vec()).ok()
}

/// A Chromium session of a driver.
struct Session<'a> {
    driver: &'a Driver,
    ns: &'a NetNs,
    id: String,
}

impl<'a> Session<'a> {
    fn new(driver: &'a Driver, ns: &'a NetNs) -> Self {
        let profile = driver.profile.path.display().to_string();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,960",
                         format!("--user-data-dir={profile}")]
            }
        }}});
        let value = driver
            .call(ns, "POST", "/session", Some(&capabilities))
            .expect("a session");
        let id = value["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {value}"))
            .to_owned();
        Self { driver, ns, id }
    }

    fn call(&self, method: &str, what: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}{what}", self.id);
        self.driver
            .call(self.ns, method, &path, body)
            .unwrap_or_else(|| panic!("{method} {path}: no answer"))
    }

    fn open(&self, url: &str) {
        self.call("POST", "/url", Some(&json!({ "url": url })));
    }

    /// Runs `script` (a function body) in the page; its return value.
    fn run(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    /// The page's backend rows: (data-backend, data-state).
    fn backends(&self) -> Vec<(String, String)> {
        let rows = self.run(
            "return Array.from(document.querySelectorAll('#backends tbody tr'))\
             .map(r => [r.dataset.backend, r.dataset.state]);",
        );
        rows.as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        (
                            r[0].as_str().unwrap_or_default().to_owned(),
                            r[1].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn screenshot(&self) -> Vec<u8> {
        let value = self.call("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD
            .decode(value.as_str().expect("a base64 screenshot"))
            .expect("a base64 screenshot")
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.id);
        drop(self.driver.call(self.ns, "DELETE", &path, None));
    }
}

/// Waits (up to `limit`) until `done` holds of the page's backends; how long it took.
fn until(
    session: &Session<'_>,
    limit: Duration,
    done: impl Fn(&[(String, String)]) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if done(&session.backends()) {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn artifact(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn the_status_page_shows_the_backends_and_follows_a_change_within_two_seconds() {
    let env = DaemonLab::start("lbtstatus", BACKENDS, config);
    let ns = &env.lab.lb;
    let driver = Driver::start(ns);
    let session = Session::new(&driver, ns);
    session.open(&format!("http://{METRICS}/status"));

    // Every backend, healthy once its checks passed.
    let keys: Vec<String> = (0..BACKENDS)
        .map(|i| format!("web4/{}", backend_v4(i)))
        .collect();
    let healthy = until(&session, Duration::from_secs(15), |rows| {
        keys.iter().all(|k| {
            rows.iter()
                .any(|(key, state)| key == k && state == "healthy")
        })
    });
    assert!(
        healthy.is_some(),
        "the page shows {:?}, not {keys:?} healthy\n{}",
        session.backends(),
        env.daemon.log()
    );
    let listeners = session.run(
        "return Array.from(document.querySelectorAll('#listeners tbody tr')).map(r => r.dataset.listener);",
    );
    assert!(
        listeners
            .as_array()
            .is_some_and(|l| l.iter().any(|n| n == "tls4")),
        "{listeners}"
    );
    let counters = session.run("return document.querySelectorAll('#counters tbody tr').length;");
    assert!(counters.as_u64().unwrap_or(0) > 0, "no XDP counter shown");
    let error = session.run("return document.getElementById('error').textContent;");
    assert_eq!(error, "", "the page says it is not updated");

    // A change through the CLI: the page follows, without a reload, within 2 s.
    let marker = session.run("window.lbMarker = 1; return 1;");
    assert_eq!(marker, 1);
    let disabled = format!("web4/{}", backend_v4(1));
    env.cli_ok(&[
        "backend",
        "set-weight",
        "web4",
        &backend_v4(1).to_string(),
        "0",
    ]);
    let took = until(&session, Duration::from_secs(10), |rows| {
        rows.iter()
            .any(|(key, state)| *key == disabled && state == "disabled")
    });
    println!("the page showed the change after {took:?}");
    let took = took.unwrap_or_else(|| panic!("the page still shows {:?}", session.backends()));
    assert!(
        took <= Duration::from_secs(2),
        "the page followed after {took:?}"
    );
    assert_eq!(
        session.run("return window.lbMarker;"),
        1,
        "the page was reloaded"
    );
    let change =
        session.run("return document.querySelector('#changes tbody tr').children[1].textContent;");
    assert_eq!(
        change, disabled,
        "the last change is not the disabled backend"
    );

    let png = session.screenshot();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let path = artifact("status-page.png");
    std::fs::write(&path, &png).unwrap();
    println!("screenshot: {}", path.display());
    drop(session);
    drop(driver);
}
