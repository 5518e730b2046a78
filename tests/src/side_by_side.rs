//! A daemon serving passthrough and L7 listeners side by side on the lab's VIP
//! ([`L7Env::start`]), and HTTPS clients of its L7 listeners, run from the lab's client
//! namespace.
//!
//! [`L7Env`] is a [`DaemonLab`] whose lab also has the VIP on the balancer's `lo`, HTTP servers
//! in every backend ([`BACKEND_PORTS`]) and the listeners' files ([`L7Files`]), and whose
//! daemon runs [`L7Listeners::config`]. The clients are async ([`HttpsConn`]): [`in_client`]
//! runs a job on a tokio runtime in a thread inside the client namespace and waits for it,
//! [`spawn_in_client`] starts one and returns its handle. Inside a job, [`connect`] opens an
//! HTTPS connection to a VIP port and [`fetch`] sends one GET and returns a [`Reply`].
//! [`handshake_names`] is a blocking handshake that returns the names of the certificate the
//! listener presented.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    thread::JoinHandle,
};

use lb::{
    control::{Body, CounterView, StatsView},
    lab::{
        LabError, NetNs, TlsClientConn, client_config,
        daemon::Launch,
        l7::{HttpsConn, get},
        netns::run_async,
        passthrough::{PassthroughLab, VIP_V4},
        side_by_side::{BACKEND_PORTS, L7Files, L7Listeners},
    },
};
use rustls::RootCertStore;

use crate::daemon_lab::DaemonLab;

/// A lab and its daemon with passthrough and L7 listeners on one VIP.
pub struct L7Env {
    /// Declared first: the daemon and the lab go before the files they use.
    pub env: DaemonLab,
    pub files: L7Files,
}

impl L7Env {
    /// Builds a lab of `backends` backends (TLS on the VIP, HTTP on their own addresses, the
    /// VIP on the balancer's `lo`), writes the L7 files, and starts the daemon with
    /// [`L7Listeners::config`] as `edit` changes it.
    pub fn start(prefix: &str, backends: usize, edit: impl FnOnce(String) -> String) -> Self {
        Self::start_listeners(prefix, backends, |_| (), edit)
    }

    /// [`L7Env::start`], with `listeners` changing the builder first (e.g. no health check).
    pub fn start_listeners(
        prefix: &str,
        backends: usize,
        listeners: impl FnOnce(&mut L7Listeners),
        edit: impl FnOnce(String) -> String,
    ) -> Self {
        Self::start_launched(prefix, backends, Launch::default(), listeners, edit)
    }

    /// [`L7Env::start_listeners`], the daemon started as `launch` says; with an owner, the L7
    /// files are made that user's (a key must be owned by root or the daemon's user).
    pub fn start_launched(
        prefix: &str,
        backends: usize,
        launch: Launch,
        listeners: impl FnOnce(&mut L7Listeners),
        edit: impl FnOnce(String) -> String,
    ) -> Self {
        let owner = launch.owner;
        let (env, files) = DaemonLab::start_launched(
            prefix,
            backends,
            launch,
            |lab| {
                lab.serve_vip_locally()
                    .expect("the VIP on the balancer's lo");
                lab.start_http(BACKEND_PORTS)
                    .expect("starting the backends' HTTP servers");
                let files = L7Files::write(&lab.pki).expect("writing the L7 listeners' files");
                if let Some((uid, gid)) = owner {
                    files
                        .dir
                        .give_to(uid, gid)
                        .expect("giving the L7 files to the daemon's user");
                }
                files
            },
            |paths, files| {
                let mut builder = L7Listeners::new(files);
                listeners(&mut builder);
                edit(builder.config(paths, backends))
            },
        );
        Self { env, files }
    }

    pub fn lab(&self) -> &PassthroughLab {
        &self.env.lab
    }

    /// The configuration builder of this lab (to write the file again for `lb reload`).
    pub fn listeners(&self) -> L7Listeners {
        L7Listeners::new(&self.files)
    }

    /// The lab CA's trust store, for the clients.
    pub fn roots(&self) -> RootCertStore {
        self.env.lab.pki.roots().expect("the lab's trust store")
    }

    /// `lb stats --json`.
    pub fn stats(&self) -> StatsView {
        match self.env.cli_json(&["stats"]) {
            Body::Stats(stats) => stats,
            other => panic!("lb stats answered {other:?}"),
        }
    }
}

/// The lab's configuration without its passthrough listeners and interface: only the L7
/// listeners stay, and the daemon loads no packet path (so that two daemons can serve side by
/// side in the balancer's namespace).
pub fn l7_only(config: String) -> String {
    let start = config
        .find("[listeners.tls4]")
        .expect("the lab's passthrough listeners");
    let end = config.find("\n# L7 listeners").expect("the L7 part");
    let mut config = format!("{}{}", &config[..start], &config[end..]);
    let interfaces = config.find("interfaces = [").expect("the interfaces");
    let line_end = interfaces
        + config[interfaces..]
            .find('\n')
            .expect("the end of the interfaces line");
    config.replace_range(interfaces..line_end, "interfaces = []");
    config
}

/// A datapath counter's value in `stats` (0 if not listed).
pub fn counter(stats: &StatsView, name: &str) -> u64 {
    stats
        .counters
        .iter()
        .find(|c: &&CounterView| c.name == name)
        .map_or(0, |c| c.value)
}

/// Port `port` of the IPv4 VIP.
pub fn vip(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP_V4), port)
}

/// Starts `job` on a current-thread tokio runtime in a thread inside `ns`.
pub fn spawn_in_client<F, Fut, T>(ns: &NetNs, name: &str, job: F) -> JoinHandle<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    ns.spawn(name, move || {
        run_async(job()).expect("a tokio runtime for a client")
    })
    .expect("starting a client thread")
}

/// Runs `job` like [`spawn_in_client`] and waits for its result.
pub fn in_client<F, Fut, T>(ns: &NetNs, name: &str, job: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    ns.block_on(name, job)
        .expect("a client thread failed (its message is above)")
}

/// A response as the tests look at it.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    /// The backend that answered (`x-backend`).
    pub backend: Option<String>,
    /// The `name=value` of the first `Set-Cookie`.
    pub set_cookie: Option<String>,
    pub body: String,
}

impl Reply {
    /// The value of request header `name` as the backend saw it (`GET /headers` only).
    pub fn seen_header(&self, name: &str) -> Option<&str> {
        self.body.lines().find_map(|line| {
            let (key, value) = line.split_once(": ")?;
            key.eq_ignore_ascii_case(name).then_some(value)
        })
    }
}

/// Connects to port `port` of the VIP with SNI `name`, offering HTTP/2 if `h2`.
pub async fn connect(
    roots: &RootCertStore,
    port: u16,
    name: &str,
    h2: bool,
) -> Result<HttpsConn, LabError> {
    HttpsConn::connect(vip(port), Some(name), roots, h2).await
}

/// `GET path` with `cookie` (`name=value`) if given.
pub async fn fetch(
    conn: &mut HttpsConn,
    name: &str,
    path: &str,
    cookie: Option<&str>,
) -> Result<Reply, LabError> {
    let answer = conn.send(get(name, path, cookie)).await?;
    Ok(Reply {
        status: answer.status.as_u16(),
        backend: answer.backend().map(str::to_owned),
        set_cookie: answer.set_cookie(),
        body: String::from_utf8_lossy(&answer.body).into_owned(),
    })
}

/// Completes a TLS handshake with port `port` of the VIP from a thread in `ns`, verifying the
/// certificate for `name` against `roots`; returns the certificate's names.
pub fn handshake_names(
    ns: &NetNs,
    roots: &RootCertStore,
    port: u16,
    name: &str,
) -> Result<Vec<String>, LabError> {
    let config = client_config(roots).expect("a TLS client configuration");
    let name = name.to_owned();
    ns.spawn("handshake", move || {
        TlsClientConn::connect_with(config, &name, vip(port)).map(|conn| conn.peer_names())
    })
    .expect("starting a client thread")
    .join()
    .expect("a client thread panicked")
}
