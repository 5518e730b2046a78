//! The systems the L7 benchmark measures, started as pinned child processes on loopback, and
//! their files.
//!
//! - [`Files`]: a private directory (removed on drop) with the listeners' certificate (ECDSA
//!   P-256 from the lab's [`Pki`], for `lb.test` and 127.0.0.1), the same chain and key in one
//!   PEM for HAProxy, the backend's certificate (`backend.lb.test`) and the CA that verifies
//!   it, and a cookie key file.
//! - [`Backend`]: `lb bench l7-backend`, the lab's HTTP backend, plain or TLS.
//! - [`Daemon`]: `lb run` with three listeners (offload, offload with stickiness, bridging),
//!   `TOKIO_WORKER_THREADS=1`; on drop it is stopped and `lb uninstall` removes its pins. With
//!   a base build (`lb bench l7 --base PATH`), a second one runs that binary, alike.
//! - HAProxy, one thread, two frontends (offload and bridging) doing what lb's do: TLS with
//!   the same certificate and ALPN, `mode http`, keep-alive on both sides, `X-Forwarded-For`,
//!   `-Proto` and `-Port`, and for bridging TLS to the backend verified against the CA and the
//!   name.
//!
//! [`Systems::start`] starts them all (each idle until measured) on the given CPU, every port
//! a free one on 127.0.0.1; dropping [`Systems`] stops HAProxy, the daemon (and removes its
//! pins), the backends, then the files, in that order.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ring::rand::{SecureRandom as _, SystemRandom};

use super::process::{Child, check_interrupt, free_port, pinned};
use crate::{
    bench::BenchError,
    lab::{
        Issued, Pki,
        l7::{LabDir, ListenerToml, pool_toml, quoted_path, write_cert, write_sticky_keys},
    },
};

/// The name the listeners' certificate holds (the clients' SNI).
pub const SERVER_NAME: &str = "lb.test";
/// The name the backend's certificate holds (what bridging verifies).
const BACKEND_NAME: &str = "backend.lb.test";
/// HAProxy's `maxconn` in the throughput rounds.
const MAXCONN: usize = 4096;
/// How long a system may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Where the daemon's pins go: `/sys/fs/bpf/lb-bench-PID`.
const BPFFS: &str = "/sys/fs/bpf";
const PIN_PREFIX: &str = "lb-bench-";

/// The benchmark's files.
#[derive(Debug)]
pub struct Files {
    pub dir: LabDir,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Chain and key in one file, as HAProxy's `crt` wants them.
    pub haproxy_pem: PathBuf,
    pub backend_cert: PathBuf,
    pub backend_key: PathBuf,
    pub ca: PathBuf,
    pub sticky_keys: PathBuf,
    pub pki: Pki,
}

impl Files {
    pub fn write() -> Result<Self, BenchError> {
        let dir = LabDir::new("lb-bench-l7")?;
        let pki = Pki::new("lb bench CA")?;
        let issued = pki.issue(&[SERVER_NAME, "127.0.0.1"])?;
        let cert = dir.write("listener.pem", issued.chain_pem().as_bytes())?;
        let key = dir.write("listener.key", issued.key_pem().as_bytes())?;
        let haproxy_pem = dir.write("haproxy.pem", haproxy_pem(&issued).as_bytes())?;
        let (backend_cert, backend_key) = write_cert(&dir, &pki, "backend", &[BACKEND_NAME])?;
        let ca = dir.write("ca.pem", pki.ca_pem().as_bytes())?;
        let mut sticky = [0_u8; 32];
        SystemRandom::new()
            .fill(&mut sticky)
            .map_err(|_| BenchError::Unexpected("no random bytes for a cookie key".to_owned()))?;
        let sticky_keys = write_sticky_keys(&dir, "sticky.keys", &[sticky])?;
        Ok(Self {
            dir,
            cert,
            key,
            haproxy_pem,
            backend_cert,
            backend_key,
            ca,
            sticky_keys,
            pki,
        })
    }
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> BenchError {
    move |source| BenchError::Io {
        what: what.to_owned(),
        source,
    }
}

/// A running `lb bench l7-backend`.
#[derive(Debug)]
pub struct Backend {
    pub child: Child,
    pub address: SocketAddr,
}

impl Backend {
    fn start(lb: &Path, cpu: usize, tls: Option<(&Path, &Path)>) -> Result<Self, BenchError> {
        let mut command = pinned(cpu, lb);
        command.args(["bench", "l7-backend", "--listen", "127.0.0.1:0"]);
        if let Some((cert, key)) = tls {
            command.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        command.stdout(Stdio::piped());
        let name = if tls.is_some() {
            "the TLS backend"
        } else {
            "the backend"
        };
        let mut child = Child::spawn(name, &mut command)?;
        let line = child.first_line()?;
        let address = line
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| BenchError::Unexpected(format!("{name} said {line:?}")))?;
        Ok(Self { child, address })
    }
}

/// A running `lb run`; stopped, and its pins removed, on drop.
#[derive(Debug)]
pub struct Daemon {
    pub child: Child,
    binary: PathBuf,
    config: PathBuf,
    pin_dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.child.stop();
        let uninstall = Command::new(&self.binary)
            .arg("uninstall")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .output();
        match uninstall {
            Ok(output) if output.status.success() => {}
            Ok(output) => tracing::warn!(
                stderr = %String::from_utf8_lossy(&output.stderr).trim(),
                "`lb uninstall` failed"
            ),
            Err(error) => tracing::warn!(%error, "could not run `lb uninstall`"),
        }
        if self.pin_dir.exists()
            && let Err(error) = fs::remove_dir_all(&self.pin_dir)
        {
            tracing::warn!(%error, "could not remove {}", self.pin_dir.display());
        }
    }
}

/// The ports of one `lb run`'s listeners, on 127.0.0.1.
#[derive(Clone, Copy, Debug)]
pub struct LbPorts {
    pub offload: u16,
    pub sticky: u16,
    pub bridging: u16,
}

impl LbPorts {
    fn free() -> Result<Self, BenchError> {
        Ok(Self {
            offload: free_port()?,
            sticky: free_port()?,
            bridging: free_port()?,
        })
    }
}

/// The ports of the systems under test, on 127.0.0.1.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub lb: LbPorts,
    /// The daemon with an access log.
    pub logged: LbPorts,
    pub base: LbPorts,
    pub haproxy_offload: u16,
    pub haproxy_bridging: u16,
}

impl Ports {
    /// A free port on 127.0.0.1 for every listener.
    fn free() -> Result<Self, BenchError> {
        Ok(Self {
            lb: LbPorts::free()?,
            logged: LbPorts::free()?,
            base: LbPorts::free()?,
            haproxy_offload: free_port()?,
            haproxy_bridging: free_port()?,
        })
    }
}

/// Everything running, in drop order.
#[derive(Debug)]
pub struct Systems {
    pub haproxy: Child,
    pub lb: Daemon,
    /// The same daemon with an access log.
    pub logged: Daemon,
    pub access_log: PathBuf,
    /// The base build's daemon, if one was given.
    pub base: Option<Daemon>,
    pub backend: Backend,
    pub tls_backend: Backend,
    pub ports: Ports,
    pub files: Files,
}

impl Systems {
    /// Writes the files and starts the backends, the daemon (and `base`'s, if given) and
    /// HAProxy on `cpu`.
    pub fn start(lb: &Path, base: Option<&Path>, cpu: usize) -> Result<Self, BenchError> {
        sweep_stale_pins();
        let files = Files::write()?;
        let backend = Backend::start(lb, cpu, None)?;
        let tls_backend = Backend::start(lb, cpu, Some((&files.backend_cert, &files.backend_key)))?;
        let ports = Ports::free()?;
        let backends = (&backend, &tls_backend);
        let daemon = start_daemon(lb, "lb", cpu, &files, ports.lb, backends, "")?;
        let access_log = files.dir.path.join("access.log");
        let section = format!(
            "\n[access_log]\npath = {}\nformat = \"json\"\n",
            quoted_path(&access_log)
        );
        let logged = start_daemon(lb, "logged", cpu, &files, ports.logged, backends, &section)?;
        let base = base
            .map(|base| start_daemon(base, "base", cpu, &files, ports.base, backends, ""))
            .transpose()?;
        let haproxy = start_haproxy(
            "haproxy",
            cpu,
            &files,
            &ports,
            (&backend, &tls_backend),
            MAXCONN,
        )?;
        Ok(Self {
            haproxy,
            lb: daemon,
            logged,
            access_log,
            base,
            backend,
            tls_backend,
            ports,
            files,
        })
    }
}

/// A fresh lb daemon and a fresh HAProxy, alike the measured ones, for a measurement that
/// must start from a process that has served nothing (see `idle`); stopped when dropped.
#[derive(Debug)]
pub struct FreshOffload {
    pub haproxy: Child,
    pub lb: Daemon,
    pub lb_port: u16,
    pub haproxy_port: u16,
}

/// Starts a [`FreshOffload`] on `cpu` for `connections` clients, its files named after
/// `name`.
pub fn fresh_offload(
    systems: &Systems,
    lb: &Path,
    cpu: usize,
    name: &str,
    connections: usize,
) -> Result<FreshOffload, BenchError> {
    let ports = Ports::free()?;
    let backends = (&systems.backend, &systems.tls_backend);
    let daemon = start_daemon(lb, name, cpu, &systems.files, ports.lb, backends, "")?;
    let haproxy = start_haproxy(
        &format!("{name}-haproxy"),
        cpu,
        &systems.files,
        &ports,
        backends,
        MAXCONN.max(connections + 100),
    )?;
    Ok(FreshOffload {
        haproxy,
        lb: daemon,
        lb_port: ports.lb.offload,
        haproxy_port: ports.haproxy_offload,
    })
}

impl Systems {
    /// Empties the access log (the logging daemon appends to it): the disk holds one run's
    /// lines at most. Fails if the daemon logged nothing, which would measure nothing.
    pub fn empty_access_log(&self) -> Result<(), BenchError> {
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&self.access_log)
            .map_err(io("opening the access log"))?;
        let written = file.metadata().map_err(io("reading the access log"))?.len();
        if written == 0 {
            return Err(BenchError::Unexpected(
                "the daemon with an access log wrote no line".to_owned(),
            ));
        }
        file.set_len(0).map_err(io("emptying the access log"))
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The daemon's configuration: no interface, no passthrough listener (nothing attached), three
/// L7 listeners (offload, offload with stickiness, bridging) with the same certificate.
fn lb_config(
    files: &Files,
    socket: &Path,
    ports: LbPorts,
    plain: SocketAddr,
    tls: SocketAddr,
    pin_dir: &Path,
) -> String {
    let listener = |mode, pool| {
        let mut listener = ListenerToml::new(mode, pool);
        listener
            .certificates
            .push((files.cert.clone(), files.key.clone()));
        listener
    };
    let mut sticky = listener("offload", "plain");
    sticky.sticky_keys = Some(files.sticky_keys.clone());
    let mut bridging = listener("bridging", "tls");
    bridging
        .backend
        .push(format!("ca_file = {}", quoted_path(&files.ca)));
    let head = format!(
        "[datapath]\npin_dir = {}\n\n[control]\nsocket = {}\n\n",
        quoted_path(pin_dir),
        quoted_path(socket),
    );
    [
        head,
        pool_toml("plain", &[(plain, None)]),
        pool_toml("tls", &[(tls, Some(BACKEND_NAME.to_owned()))]),
        listener("offload", "plain").text("offload", ports.offload),
        sticky.text("sticky", ports.sticky),
        bridging.text("bridging", ports.bridging),
    ]
    .concat()
}

/// Starts `lb run` of the binary `lb` with the files named `name` (`name.toml`, `name.sock`,
/// `name.log`) and its pins in `lb-bench-PID-name` (bpffs allows no dot in a name).
fn start_daemon(
    lb: &Path,
    name: &str,
    cpu: usize,
    files: &Files,
    ports: LbPorts,
    (backend, tls_backend): (&Backend, &Backend),
    extra: &str,
) -> Result<Daemon, BenchError> {
    let pin_dir = Path::new(BPFFS).join(format!("{PIN_PREFIX}{}-{name}", std::process::id()));
    let socket = files.dir.path.join(format!("{name}.sock"));
    let text = lb_config(
        files,
        &socket,
        ports,
        backend.address,
        tls_backend.address,
        &pin_dir,
    ) + extra;
    let config = files.dir.write(&format!("{name}.toml"), text.as_bytes())?;
    let log_path = files.dir.path.join(format!("{name}.log"));
    let log = fs::File::create(&log_path).map_err(io("creating the daemon's log"))?;
    let mut command = pinned(cpu, lb);
    command
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("TOKIO_WORKER_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(log);
    let child = Child::spawn("lb run", &mut command)?;
    let mut daemon = Daemon {
        child,
        binary: lb.to_owned(),
        config,
        pin_dir,
    };
    let deadline = Instant::now() + START_TIMEOUT;
    while UnixStream::connect(&socket).is_err() {
        check_interrupt()?;
        if let Some(status) = daemon.child.exited() {
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            return Err(BenchError::Unexpected(format!(
                "`{} run` exited ({status}) before it was ready:\n{log}",
                lb.display()
            )));
        }
        if Instant::now() > deadline {
            return Err(BenchError::Unexpected(format!(
                "`{} run` was not ready within {START_TIMEOUT:?}",
                lb.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for port in [ports.offload, ports.sticky, ports.bridging] {
        daemon.child.wait_for_port(loopback(port), START_TIMEOUT)?;
    }
    Ok(daemon)
}

/// The `global` and `defaults` sections of every benchmark's HAProxy: one thread, up to
/// `maxconn` connections, keep-alive both ways, `X-Forwarded-For` as lb adds it.
pub fn haproxy_head(maxconn: usize) -> String {
    format!(
        "global
    nbthread 1
    maxconn {maxconn}

defaults
    mode http
    option http-keep-alive
    option forwardfor
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s
"
    )
}

/// The forwarding headers lb's listeners add besides `X-Forwarded-For`, as a HAProxy
/// frontend's directives.
pub const HAPROXY_FORWARDING: &str = "    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-Port %[dst_port]";

/// A certificate's chain and key in one file, as HAProxy's `crt` wants them.
pub fn haproxy_pem(issued: &Issued) -> String {
    format!("{}{}", issued.chain_pem(), issued.key_pem())
}

/// HAProxy's configuration: one thread, TLS offload and bridging as lb does them.
fn haproxy_config(
    files: &Files,
    ports: &Ports,
    (plain, tls): (SocketAddr, SocketAddr),
    maxconn: usize,
) -> String {
    let pem = files.haproxy_pem.display();
    let ca = files.ca.display();
    let forwarding = HAPROXY_FORWARDING;
    let head = haproxy_head(maxconn);
    format!(
        "{head}
frontend offload
    bind 127.0.0.1:{offload} ssl crt {pem} alpn h2,http/1.1
{forwarding}
    default_backend plain

frontend bridging
    bind 127.0.0.1:{bridging} ssl crt {pem} alpn h2,http/1.1
{forwarding}
    default_backend tls

backend plain
    server backend {plain}

backend tls
    server backend {tls} ssl verify required ca-file {ca} sni str({BACKEND_NAME}) verifyhost {BACKEND_NAME} alpn http/1.1
",
        offload = ports.haproxy_offload,
        bridging = ports.haproxy_bridging,
    )
}

/// Starts HAProxy with the files named `name` (`name.cfg`, `name.log`), taking up to
/// `maxconn` connections.
fn start_haproxy(
    name: &str,
    cpu: usize,
    files: &Files,
    ports: &Ports,
    (backend, tls_backend): (&Backend, &Backend),
    maxconn: usize,
) -> Result<Child, BenchError> {
    let addresses = (backend.address, tls_backend.address);
    let config = files.dir.write(
        &format!("{name}.cfg"),
        haproxy_config(files, ports, addresses, maxconn).as_bytes(),
    )?;
    let log_path = files.dir.path.join(format!("{name}.log"));
    let log = fs::File::create(&log_path).map_err(io("creating HAProxy's log"))?;
    // `-db`: in the foreground, one process (no master): the worker whose CPU time is read.
    let mut command = pinned(cpu, "haproxy");
    command
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log);
    let mut child = Child::spawn("haproxy", &mut command)?;
    for port in [ports.haproxy_offload, ports.haproxy_bridging] {
        child
            .wait_for_port(loopback(port), START_TIMEOUT)
            .map_err(|e| {
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                BenchError::Unexpected(format!("{e}\n{log}"))
            })?;
    }
    Ok(child)
}

/// Removes the pins of benchmark daemons whose benchmark is gone (killed outright).
fn sweep_stale_pins() {
    let Ok(entries) = fs::read_dir(BPFFS) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PIN_PREFIX))
            .and_then(|p| p.split('-').next()?.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(
                "removing the pins of an earlier benchmark: {}",
                entry.path().display()
            );
            drop(fs::remove_dir_all(entry.path()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_daemons_configuration_has_its_three_listeners() {
        let files = Files::write().expect("the benchmark's files");
        let ports = LbPorts {
            offload: 8443,
            sticky: 8444,
            bridging: 8445,
        };
        let socket = files.dir.path.join("base.sock");
        let text = lb_config(
            &files,
            &socket,
            ports,
            loopback(8080),
            loopback(8081),
            Path::new("/sys/fs/bpf/lb-bench-test"),
        );
        let config = Config::parse(&text, "lb.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.control.socket, socket);
        let listeners: Vec<(&str, u16)> = config
            .listeners
            .iter()
            .map(|(name, listener)| (name.as_str(), listener.port))
            .collect();
        assert_eq!(
            listeners,
            [("bridging", 8445), ("offload", 8443), ("sticky", 8444)]
        );
        let sticky = config.listeners["sticky"].l7.as_ref().expect("L7");
        assert_eq!(
            sticky.sticky.as_ref().map(|s| s.key_file.as_path()),
            Some(files.sticky_keys.as_path())
        );
        let tls_pool = &config.pools["tls"].backends;
        assert_eq!(tls_pool[0].server_name.as_deref(), Some(BACKEND_NAME));
    }
}
