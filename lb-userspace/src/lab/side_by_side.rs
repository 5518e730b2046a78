//! Passthrough and L7 listeners side by side on the [`PassthroughLab`]'s VIP, served by one
//! daemon from one configuration.
//!
//! ```text
//!   VIP 198.18.100.1:443   passthrough (XDP) ──► backends' TLS servers on the VIP (DSR)
//!   VIP 198.18.100.1:8443  offload   (XDP passes it to the kernel) ──► backends' :8080, HTTP
//!   VIP 198.18.100.1:9443  bridging  (XDP passes it to the kernel) ──► backends' :8443, TLS
//! ```
//!
//! The pieces, each small and usable alone:
//!
//! - [`PassthroughLab::serve_vip_locally`] assigns the VIPs to the balancer namespace's `lo`, so
//!   that its kernel accepts the ports the XDP program passes (counter `pass_not_vip`) and the
//!   L7 listeners can bind them;
//! - [`PassthroughLab::start_http`] runs an [`HttpHost`] in every backend namespace (plain HTTP
//!   and TLS on the backend's own address); [`PassthroughLab::stop_http_backend`] and
//!   [`PassthroughLab::start_http_backend`] stop and start one, as if its process died and came
//!   back;
//! - [`L7Files`] writes what the listeners read into a private directory: the VIP's certificate
//!   and key for [`VIP_NAME`], the backends' CA (the lab's [`Pki`]) and a cookie key file;
//! - [`L7Listeners`] writes the configuration: [`lab_config`]'s passthrough listeners, plus an
//!   offload listener (sticky) over a pool of the backends' plain-HTTP port and a bridging
//!   listener over a pool of their TLS port, each pool with a TCP health check.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use ring::rand::{SecureRandom as _, SystemRandom};

use super::{
    LabError, Pki,
    daemon::DaemonPaths,
    http_host::{HttpHost, HttpPorts},
    l7::{self, LabDir, ListenerToml, quoted_path, write_cert, write_sticky_keys},
    passthrough::{
        LabBackend, PassthroughLab, VIP_NAME, VIP_V4, assign_vip_to_lo, backend_mut, backend_v4,
        lab_config,
    },
};

/// The VIP port of the offload listener.
pub const OFFLOAD_PORT: u16 = 8443;
/// The VIP port of the bridging listener.
pub const BRIDGING_PORT: u16 = 9443;
/// The ports of the backends' HTTP servers, on their own addresses.
pub const BACKEND_PORTS: HttpPorts = HttpPorts {
    plain: 8080,
    tls: 8443,
};
/// The names [`L7Listeners::config`] gives its listeners and pools.
pub const OFFLOAD_LISTENER: &str = "offload4";
pub const BRIDGING_LISTENER: &str = "bridging4";
pub const OFFLOAD_POOL: &str = "http4";
pub const BRIDGING_POOL: &str = "https4";

impl PassthroughLab {
    /// Assigns the VIPs (IPv4 and IPv6) to the balancer namespace's `lo`: the kernel then
    /// accepts what the XDP program passes for ports that are not passthrough listeners, and
    /// the daemon's L7 listeners can bind the VIP. Call it before starting such a daemon.
    pub fn serve_vip_locally(&self) -> Result<(), LabError> {
        assign_vip_to_lo(&self.lb)
    }

    /// Starts an [`HttpHost`] on every backend's own IPv4 address, with `ports`.
    pub fn start_http(&mut self, ports: HttpPorts) -> Result<(), LabError> {
        for i in 0..self.backends.len() {
            self.start_http_backend(i, ports)?;
        }
        Ok(())
    }

    /// Starts backend `i`'s HTTP servers (replacing running ones), with a certificate from the
    /// lab's [`Pki`] for `<backend name>.lb.test` and its address.
    pub fn start_http_backend(&mut self, i: usize, ports: HttpPorts) -> Result<(), LabError> {
        start_http_servers(backend_mut(&mut self.backends, i)?, &self.pki, ports)
    }

    /// Stops backend `i`'s HTTP servers, as if its process died: connections are refused and
    /// open ones closed.
    pub fn stop_http_backend(&mut self, i: usize) {
        if let Some(backend) = self.backends.get_mut(i) {
            backend.http = None;
        }
    }

    /// Requests backend `i`'s HTTP servers received since they last started (0 if stopped).
    pub fn http_requests(&self, i: usize) -> u64 {
        self.backends
            .get(i)
            .and_then(|b| b.http.as_ref())
            .map_or(0, HttpHost::requests)
    }
}

/// Starts `backend`'s HTTP servers on its own IPv4 address (replacing running ones), with a
/// certificate from `pki` for `<backend name>.lb.test` and its address.
pub(super) fn start_http_servers(
    backend: &mut LabBackend,
    pki: &Pki,
    ports: HttpPorts,
) -> Result<(), LabError> {
    // The old servers first: the new ones bind the same ports.
    backend.http = None;
    let host = HttpHost::start(
        &backend.ns,
        &backend.name,
        IpAddr::V4(backend.v4),
        ports,
        pki,
    )?;
    backend.http = Some(host);
    Ok(())
}

/// The files of the lab's L7 listeners, in a private directory removed on drop.
#[derive(Debug)]
pub struct L7Files {
    /// The certificate chain and key the listeners present, for [`VIP_NAME`] and the VIP.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA bundle a bridging listener verifies the backends with: the lab's [`Pki`].
    pub backend_ca: PathBuf,
    /// The cookie key file (one key).
    pub sticky_keys: PathBuf,
    pub dir: LabDir,
}

impl L7Files {
    /// Writes the files, issued by `pki`, into a new directory `/tmp/lb-lab-l7-*`.
    pub fn write(pki: &Pki) -> Result<Self, LabError> {
        let dir = LabDir::new("lb-lab-l7")?;
        let (cert, key) = write_cert(&dir, pki, "vip", &[VIP_NAME, &VIP_V4.to_string()])?;
        let backend_ca = dir.write("backend-ca.pem", pki.ca_pem().as_bytes())?;
        let mut sticky_key = [0_u8; 32];
        SystemRandom::new()
            .fill(&mut sticky_key)
            .map_err(|_| LabError::Daemon("no randomness for a cookie key".to_owned()))?;
        let sticky_keys = write_sticky_keys(&dir, "sticky.keys", &[sticky_key])?;
        Ok(Self {
            cert,
            key,
            backend_ca,
            sticky_keys,
            dir,
        })
    }

    /// Replaces the listeners' certificate and key (same paths, key mode 0600) with ones from
    /// `pki` for `names`, as an operator renewing them would; `lb cert reload` reads them.
    pub fn replace_certificate(&self, pki: &Pki, names: &[&str]) -> Result<(), LabError> {
        let issued = pki.issue(names)?;
        self.dir
            .write(file_name(&self.cert)?, issued.chain_pem().as_bytes())?;
        self.dir
            .write(file_name(&self.key)?, issued.key_pem().as_bytes())?;
        Ok(())
    }
}

/// The name of a file of the lab directory.
fn file_name(path: &Path) -> Result<&str, LabError> {
    path.file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| LabError::Daemon(format!("{} names no file", path.display())))
}

/// Where a bridging listener finds the name each backend's certificate must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendNames {
    /// `server_name = "<backend name>.lb.test"` on each backend of the pool.
    PerBackend,
    /// `server_name` on the listener, for every backend (their certificates must hold it).
    Listener(String),
}

/// A pool's TCP health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpCheck {
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl TcpCheck {
    /// Every 200 ms (timeout 100 ms), thresholds 2 and 2: a dead backend is found within a
    /// few hundred milliseconds.
    pub const LAB: Self = Self {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(100),
        healthy_threshold: 2,
        unhealthy_threshold: 2,
    };

    fn to_toml(self, pool: &str) -> String {
        format!(
            "[pools.{pool}.health_check]\nprotocol = \"tcp\"\ninterval = \"{}ms\"\n\
             timeout = \"{}ms\"\nhealthy_threshold = {}\nunhealthy_threshold = {}\n",
            self.interval.as_millis(),
            self.timeout.as_millis(),
            self.healthy_threshold,
            self.unhealthy_threshold,
        )
    }
}

/// The lab's configuration with L7 listeners beside the passthrough ones, on [`VIP_V4`].
#[derive(Clone, Debug)]
pub struct L7Listeners {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub backend_ca: PathBuf,
    pub sticky_keys: PathBuf,
    /// Both listeners' `ticket_key_file`; none: session tickets under keys of the daemon's own.
    pub ticket_keys: Option<PathBuf>,
    pub offload_port: u16,
    pub bridging_port: u16,
    /// The ports the backends' HTTP servers listen on.
    pub backend_ports: HttpPorts,
    /// The health check of both L7 pools; none if `None`.
    pub check: Option<TcpCheck>,
    pub names: BackendNames,
}

impl L7Listeners {
    /// The lab's defaults: [`OFFLOAD_PORT`], [`BRIDGING_PORT`], [`BACKEND_PORTS`],
    /// [`TcpCheck::LAB`], a server name per backend, and `files`.
    pub fn new(files: &L7Files) -> Self {
        Self {
            cert: files.cert.clone(),
            key: files.key.clone(),
            backend_ca: files.backend_ca.clone(),
            sticky_keys: files.sticky_keys.clone(),
            ticket_keys: None,
            offload_port: OFFLOAD_PORT,
            bridging_port: BRIDGING_PORT,
            backend_ports: BACKEND_PORTS,
            check: Some(TcpCheck::LAB),
            names: BackendNames::PerBackend,
        }
    }

    /// [`lab_config`] for `backends` backends, plus pool [`OFFLOAD_POOL`] (the backends' plain
    /// HTTP port) with listener [`OFFLOAD_LISTENER`] (offload, sticky), and pool
    /// [`BRIDGING_POOL`] (their TLS port) with listener [`BRIDGING_LISTENER`] (bridging,
    /// verifying them against the lab's CA).
    pub fn config(&self, paths: &DaemonPaths, backends: usize) -> String {
        let names = |i: usize| match self.names {
            BackendNames::PerBackend => Some(format!("backend-{i}.lb.test")),
            BackendNames::Listener(_) => None,
        };
        let mut out = lab_config(paths, backends);
        out.push_str(&self.offload_tables(backends, backend_v4));
        out.push_str(&self.pool(
            BRIDGING_POOL,
            backends,
            backend_v4,
            self.backend_ports.tls,
            &names,
        ));
        let mut bridging = self.listener("bridging", BRIDGING_POOL);
        bridging
            .backend
            .push(format!("ca_file = {}", quoted_path(&self.backend_ca)));
        if let BackendNames::Listener(name) = &self.names {
            bridging.backend.push(format!("server_name = \"{name}\""));
        }
        out.push_str(&bridging.text(BRIDGING_LISTENER, self.bridging_port));
        out
    }

    /// Pool [`OFFLOAD_POOL`] (the plain-HTTP port of `backends` backends at `address(i)`) and
    /// listener [`OFFLOAD_LISTENER`] (offload, sticky) over it, on this builder's offload port
    /// of [`VIP_V4`].
    pub fn offload_tables(&self, backends: usize, address: fn(usize) -> Ipv4Addr) -> String {
        let mut out =
            "\n# L7 listeners on the same VIP: the XDP program passes their ports.\n".to_owned();
        let port = self.backend_ports.plain;
        out.push_str(&self.pool(OFFLOAD_POOL, backends, address, port, &|_| None));
        let mut offload = self.listener("offload", OFFLOAD_POOL);
        offload.sticky_keys = Some(self.sticky_keys.clone());
        out.push_str(&offload.text(OFFLOAD_LISTENER, self.offload_port));
        out
    }

    /// Pool `name` (see [`pool_toml`]) with this builder's health check, if it has one.
    fn pool(
        &self,
        name: &str,
        backends: usize,
        address: fn(usize) -> Ipv4Addr,
        port: u16,
        name_of: &dyn Fn(usize) -> Option<String>,
    ) -> String {
        let checked = self.check.is_some();
        let mut out = pool_toml(name, backends, address, port, name_of, checked);
        // Without one, `pool_toml` turned the pool's default check off.
        if let Some(check) = self.check {
            out.push_str(&format!("\n{}", check.to_toml(name)));
        }
        out
    }

    /// An offload listener `name` on `port` of [`VIP_V4`] over `pool`, presenting this
    /// builder's certificate (no stickiness): for a test to add one.
    pub fn offload_toml(&self, name: &str, port: u16, pool: &str) -> String {
        self.listener("offload", pool).text(name, port)
    }

    /// A listener on [`VIP_V4`] in `mode` over `pool`, presenting this builder's certificate
    /// (and sealing its session tickets with its ticket keys, if it has some).
    fn listener(&self, mode: &'static str, pool: &str) -> ListenerToml {
        let mut listener = ListenerToml::new(mode, pool);
        listener.address = IpAddr::V4(VIP_V4);
        listener
            .certificates
            .push((self.cert.clone(), self.key.clone()));
        if let Some(keys) = &self.ticket_keys {
            listener
                .tls
                .push(format!("ticket_key_file = {}", quoted_path(keys)));
        }
        listener
    }
}

/// Pool `name`: every backend's own IPv4 address (`address(i)`) at `port`, with the server
/// name `name_of` gives it; without a health check unless `checked` (its table follows).
fn pool_toml(
    name: &str,
    backends: usize,
    address: fn(usize) -> Ipv4Addr,
    port: u16,
    name_of: &dyn Fn(usize) -> Option<String>,
    checked: bool,
) -> String {
    let members: Vec<(SocketAddr, Option<String>)> = (0..backends)
        .map(|i| (SocketAddr::from((address(i), port)), name_of(i)))
        .collect();
    let off = if checked {
        ""
    } else {
        "health_check = false\n"
    };
    format!("\n{}{off}", l7::pool_toml(name, &members))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Mode, l7::BackendVerify};

    fn builder() -> L7Listeners {
        L7Listeners {
            cert: PathBuf::from("/lab/vip.pem"),
            key: PathBuf::from("/lab/vip.key"),
            backend_ca: PathBuf::from("/lab/backend-ca.pem"),
            sticky_keys: PathBuf::from("/lab/sticky.keys"),
            ticket_keys: Some(PathBuf::from("/lab/tickets.keys")),
            offload_port: OFFLOAD_PORT,
            bridging_port: BRIDGING_PORT,
            backend_ports: BACKEND_PORTS,
            check: Some(TcpCheck::LAB),
            names: BackendNames::PerBackend,
        }
    }

    fn paths() -> DaemonPaths {
        DaemonPaths {
            socket: PathBuf::from("/lab/lb.sock"),
            pin_dir: PathBuf::from("/sys/fs/bpf/lab"),
        }
    }

    #[test]
    fn the_config_puts_three_modes_on_one_vip() {
        let text = builder().config(&paths(), 2);
        let config = Config::parse(&text, "lab.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        let mode = |name: &str| {
            config
                .listeners
                .get(name)
                .map(|l| (l.mode, l.address, l.port))
        };
        let vip = IpAddr::V4(VIP_V4);
        assert_eq!(mode("tls4"), Some((Mode::Passthrough, vip, 443)));
        assert_eq!(
            mode(OFFLOAD_LISTENER),
            Some((Mode::Offload, vip, OFFLOAD_PORT))
        );
        assert_eq!(
            mode(BRIDGING_LISTENER),
            Some((Mode::Bridging, vip, BRIDGING_PORT))
        );
        let offload = config.listeners[OFFLOAD_LISTENER].l7.as_ref().unwrap();
        assert_eq!(
            offload.sticky.as_ref().map(|s| s.key_file.clone()),
            Some(PathBuf::from("/lab/sticky.keys"))
        );
        let bridging = config.listeners[BRIDGING_LISTENER].l7.as_ref().unwrap();
        let tls = bridging.backend.tls.as_ref().unwrap();
        assert_eq!(
            tls.verify,
            BackendVerify::Ca(PathBuf::from("/lab/backend-ca.pem"))
        );
        assert_eq!(tls.server_name, None);
        for l7 in [offload, bridging] {
            assert_eq!(
                l7.tls.ticket_key_file,
                Some(PathBuf::from("/lab/tickets.keys"))
            );
        }
        let http = &config.pools[OFFLOAD_POOL];
        let https = &config.pools[BRIDGING_POOL];
        for (i, (plain, tls)) in http.backends.iter().zip(&https.backends).enumerate() {
            assert_eq!(plain.address, IpAddr::V4(backend_v4(i)));
            assert_eq!(plain.port, Some(BACKEND_PORTS.plain));
            assert_eq!(tls.port, Some(BACKEND_PORTS.tls));
            assert_eq!(tls.server_name, Some(format!("backend-{i}.lb.test")));
        }
        for pool in [http, https] {
            let check = pool.health_check.as_ref().unwrap();
            assert_eq!(check.interval, TcpCheck::LAB.interval);
        }
    }

    #[test]
    fn a_server_name_on_the_listener_replaces_the_backends_ones() {
        let named = L7Listeners {
            names: BackendNames::Listener("pool.lb.test".to_owned()),
            check: None,
            ..builder()
        };
        let text = named.config(&paths(), 2);
        let config = Config::parse(&text, "lab.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        let bridging = config.listeners[BRIDGING_LISTENER].l7.as_ref().unwrap();
        let tls = bridging.backend.tls.as_ref().unwrap();
        assert_eq!(tls.server_name.as_deref(), Some("pool.lb.test"));
        let https = &config.pools[BRIDGING_POOL];
        assert!(https.backends.iter().all(|b| b.server_name.is_none()));
        assert!(https.health_check.is_none());
        let extra = format!(
            "{text}{}",
            named.offload_toml("extra4", 10443, OFFLOAD_POOL)
        );
        let config = Config::parse(&extra, "lab.toml").unwrap_or_else(|e| panic!("{e}\n{extra}"));
        assert_eq!(config.listeners["extra4"].mode, Mode::Offload);
    }
}
