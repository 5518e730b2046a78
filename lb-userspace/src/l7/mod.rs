//! The L7 listeners: `offload` terminates TLS and proxies plain HTTP to the backends;
//! `bridging` terminates TLS and proxies HTTP over TLS, verifying each backend's certificate.
//! Both share the daemon's pools and health state (the controller publishes each pool's
//! members as [`balance::Member`]s) and can pin a user to a backend with a sealed cookie
//! ([`sticky`]).
//!
//! Changes are all or nothing: [`L7::prepare`] reads every file and binds every new address of
//! a configuration without touching what runs, and [`L7::commit`] then swaps it in. A running
//! listener keeps its socket and its connections across a reload; new connections and requests
//! use the new settings. It also keeps its session tickets ([`tls::SessionTickets`]): their
//! keys come from its `ticket_key_file`, read again by `lb reload` ([`L7::prepare_reload`]) and
//! `lb cert reload`, or are the process's own, kept until the file is named or the process
//! ends.

pub mod access_log;
pub mod balance;
pub mod body;
pub mod conn;
pub mod files;
pub mod headers;
pub mod key_file;
pub mod limit;
pub mod proxy;
pub mod proxy_protocol;
mod retry;
pub mod route;
pub mod server;
pub mod sticky;
pub mod tls;
pub mod tunnel;
pub mod upstream;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::fd::OwnedFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{net::TcpListener, runtime::Handle, task::JoinHandle};
use tracing::{info, warn};

use self::{
    access_log::AccessLog,
    balance::{BackendSet, Member, Pools},
    files::FileError,
    proxy::{Proxy, Site},
    tls::{CertResolver, Certificates, SessionTickets, TicketKeys, TicketSource},
    upstream::Connector,
};
use crate::config::{
    Config, ListenerConfig,
    l7::{BackendProtocol, BackendVerify, L7Settings},
};

/// Listening sockets a predecessor handed over, by address: a listener whose address is among
/// them accepts on that socket (its queue and all) instead of binding a new one.
pub type Inherited = BTreeMap<SocketAddr, OwnedFd>;

/// Each pool's members, by pool name.
pub type PoolMembers = BTreeMap<String, Vec<Member>>;

/// Why an L7 listener could not be (re)configured.
#[derive(Debug, thiserror::Error)]
pub enum L7Error {
    #[error("listener {listener:?}: {source}")]
    File {
        listener: String,
        #[source]
        source: FileError,
    },
    #[error("listener {listener:?}: {source}")]
    Bind {
        listener: String,
        #[source]
        source: std::io::Error,
    },
    #[error("listener {listener:?}: TLS: {reason}")]
    Tls { listener: String, reason: String },
    #[error("[access_log]: {0}")]
    AccessLog(#[source] std::io::Error),
}

/// A running L7 listener.
#[derive(Debug)]
struct Running {
    proxy: Arc<Proxy>,
    listener: ListenerConfig,
    /// Its session tickets, kept while it runs: every TLS configuration it gets uses them.
    tickets: Arc<SessionTickets>,
    /// The accept loops: the listener's and its redirect's.
    accepting: Vec<Accepting>,
}

/// One address a listener accepts on.
#[derive(Debug)]
struct Accepting {
    address: SocketAddr,
    task: JoinHandle<()>,
    /// The listening socket (the task holds another descriptor of it), to hand over.
    socket: OwnedFd,
}

impl Drop for Accepting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What [`L7::commit`] puts in place: every L7 listener of a configuration, its files read and
/// its new addresses bound.
#[derive(Debug, Default)]
pub struct Prepared {
    listeners: BTreeMap<String, Next>,
    /// The access log to use from now on (opened if its settings changed).
    access_log: Option<Arc<AccessLog>>,
}

#[derive(Debug)]
struct Next {
    listener: ListenerConfig,
    /// New settings, or none if the listener runs unchanged.
    site: Option<Site>,
    /// The listener's session tickets (a running listener's own), and the keys to put in them
    /// (none: they keep theirs).
    tickets: Arc<SessionTickets>,
    ticket_source: Option<TicketSource>,
    /// Sockets bound for addresses the listener does not listen on yet: (address, redirect?).
    bound: Vec<(SocketAddr, bool, TcpListener)>,
}

/// The daemon's L7 listeners.
#[derive(Debug)]
pub struct L7 {
    runtime: Handle,
    running: Mutex<BTreeMap<String, Running>>,
    /// Set by [`L7::stop_accepting`]: a commit after it (a reload prepared before the stop)
    /// applies its settings but accepts on nothing. Read and written under `running`'s lock.
    stopped: AtomicBool,
    access_log: Mutex<Option<Arc<AccessLog>>>,
}

impl L7 {
    /// No listener yet; tasks run on `runtime`.
    pub fn new(runtime: Handle) -> Self {
        Self {
            runtime,
            running: Mutex::new(BTreeMap::new()),
            stopped: AtomicBool::new(false),
            access_log: Mutex::new(None),
        }
    }

    fn access_log(&self) -> Option<Arc<AccessLog>> {
        self.access_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// `SIGUSR1`: the access log file is opened again by its name (after logrotate).
    pub fn reopen_access_log(&self) -> bool {
        let log = self.access_log();
        if let Some(log) = &log {
            log.reopen();
        }
        log.is_some()
    }

    /// Waits (up to `timeout`) until the access log lines queued so far are written.
    pub fn flush_access_log(&self, timeout: Duration) {
        if let Some(log) = self.access_log()
            && !log.flush(timeout)
        {
            warn!(
                ?timeout,
                "the access log was not flushed in time: its last lines may be lost"
            );
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Running>> {
        // A panic while holding the lock leaves the map as it was: keep using it.
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the files of `config`'s L7 listeners that are new or changed and binds their new
    /// addresses; changes nothing that runs.
    pub fn prepare(&self, config: &Config) -> Result<Prepared, L7Error> {
        self.prepare_with(config, &mut Inherited::new(), Reread::ChangedListeners)
    }

    /// `lb reload`: [`L7::prepare`], also reading again the ticket key files of the listeners
    /// whose settings did not change (a rotated file takes effect; a bad one refuses it all).
    pub fn prepare_reload(&self, config: &Config) -> Result<Prepared, L7Error> {
        self.prepare_with(config, &mut Inherited::new(), Reread::AlsoTicketKeys)
    }

    /// [`L7::prepare`], taking the sockets of the addresses in `inherited` (a predecessor's)
    /// instead of binding them.
    pub fn prepare_inheriting(
        &self,
        config: &Config,
        inherited: &mut Inherited,
    ) -> Result<Prepared, L7Error> {
        self.prepare_with(config, inherited, Reread::ChangedListeners)
    }

    fn prepare_with(
        &self,
        config: &Config,
        inherited: &mut Inherited,
        reread: Reread,
    ) -> Result<Prepared, L7Error> {
        let files = open_files_needed(config);
        // Without L7 listeners the daemon's descriptors are few: its limit stays as it is.
        if files > crate::host::files::BASE {
            crate::host::files::ensure(files);
        }
        let _runtime = self.runtime.enter();
        let running = self.running();
        let current = self.access_log();
        let access_log = match (&config.access_log, current) {
            (Some(settings), Some(log)) if log.settings() == settings => Some(log),
            (Some(settings), _) => Some(Arc::new(
                AccessLog::open(settings).map_err(L7Error::AccessLog)?,
            )),
            (None, _) => None,
        };
        let mut prepared = Prepared {
            listeners: BTreeMap::new(),
            access_log,
        };
        for (name, listener) in &config.listeners {
            let Some(settings) = &listener.l7 else {
                continue;
            };
            let current = running.get(name);
            let unchanged = current.is_some_and(|r| r.listener == *listener);
            let reread_keys = !unchanged || reread == Reread::AlsoTicketKeys;
            let (tickets, ticket_source) = tickets_of(name, settings, current, reread_keys)?;
            let site = if unchanged {
                None
            } else {
                Some(build_site(name, listener, settings, Arc::clone(&tickets))?)
            };
            let listening: Vec<SocketAddr> = current
                .map(|r| r.accepting.iter().map(|a| a.address).collect())
                .unwrap_or_default();
            let mut bound = Vec::new();
            for (address, redirect) in addresses(listener, settings) {
                if listening.contains(&address) {
                    continue;
                }
                let socket = match inherited.remove(&address) {
                    Some(socket) => server::adopt(socket, address),
                    None => server::bind(address),
                }
                .map_err(|source| L7Error::Bind {
                    listener: name.clone(),
                    source,
                })?;
                bound.push((address, redirect, socket));
            }
            prepared.listeners.insert(
                name.clone(),
                Next {
                    listener: listener.clone(),
                    site,
                    tickets,
                    ticket_source,
                    bound,
                },
            );
        }
        Ok(prepared)
    }

    /// Puts `prepared` in place: new listeners start, changed ones take their new settings
    /// (and addresses), removed ones stop accepting (their connections finish). Pools are
    /// filled from `members` before any new address accepts: no request finds a listener
    /// without its backends. After [`L7::stop_accepting`] nothing starts accepting (new and
    /// changed listeners drain as the others do) and the access log is not changed.
    pub fn commit(&self, prepared: Prepared, members: &PoolMembers) {
        let _runtime = self.runtime.enter();
        let mut running = self.running();
        let stopped = self.stopped.load(Ordering::Relaxed);
        running.retain(|name, r| {
            let keep = prepared.listeners.contains_key(name);
            if !keep {
                info!(listener = %name, address = %r.listener.vip(), "L7 listener stopped");
            }
            keep
        });
        let mut to_accept = Vec::new();
        for (name, next) in prepared.listeners {
            if let Some(source) = next.ticket_source {
                next.tickets.replace(source);
            }
            let entry = match (running.remove(&name), next.site) {
                (Some(r), None) => r,
                (Some(r), Some(site)) => {
                    // Its pools as the new settings name them before the settings themselves:
                    // no request finds a rule's pool missing.
                    fill(&r.proxy, &next.listener, members);
                    r.proxy.set_site(site);
                    Running {
                        proxy: Arc::clone(&r.proxy),
                        listener: next.listener.clone(),
                        tickets: next.tickets,
                        accepting: take_tasks(r),
                    }
                }
                (None, Some(site)) => Running {
                    proxy: Arc::new(Proxy::new(name.clone(), site)),
                    listener: next.listener.clone(),
                    tickets: next.tickets,
                    accepting: Vec::new(),
                },
                (None, None) => continue,
            };
            let mut entry = entry;
            let wanted = next
                .listener
                .l7
                .as_ref()
                .map(|s| addresses(&next.listener, s))
                .unwrap_or_default();
            entry
                .accepting
                .retain(|a| wanted.iter().any(|(address, _)| *address == a.address));
            for (address, redirect, socket) in next.bound {
                to_accept.push((name.clone(), next.listener.mode, address, redirect, socket));
            }
            running.insert(name, entry);
        }
        fill_pools(&running, members);
        // After a stop the access log stays the one the daemon flushes last: lines queued in
        // it would be lost with a log swapped out now.
        let access_log = if stopped {
            self.access_log()
        } else {
            prepared.access_log
        };
        for r in running.values() {
            r.proxy.access_log.store(access_log.clone());
        }
        *self
            .access_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = access_log;
        if stopped {
            for r in running.values() {
                r.proxy.drain.send_replace(true);
            }
            for (name, _, address, _, _) in &to_accept {
                info!(listener = %name, %address,
                    "L7 listener not accepting: the daemon is stopping");
            }
            return;
        }
        for (name, mode, address, redirect, socket) in to_accept {
            let Some(entry) = running.get_mut(&name) else {
                continue;
            };
            let copy = match std::os::fd::AsFd::as_fd(&socket).try_clone_to_owned() {
                Ok(copy) => copy,
                Err(error) => {
                    warn!(listener = %name, %address, %error, "cannot keep the listening socket");
                    continue;
                }
            };
            let proxy = Arc::clone(&entry.proxy);
            let task = if redirect {
                self.runtime.spawn(server::redirect_loop(socket, proxy))
            } else {
                self.runtime.spawn(server::accept_loop(socket, proxy))
            };
            info!(listener = %name, %address, mode = mode.as_str(), redirect,
                "L7 listener accepting");
            entry.accepting.push(Accepting {
                address,
                task,
                socket: copy,
            });
        }
    }

    /// The pools' members changed (health, drains, weights, edits).
    pub fn update_pools(&self, members: &PoolMembers) {
        fill_pools(&self.running(), members);
    }

    /// `lb cert reload`: reads every file of every L7 listener again (certificates, keys, CA
    /// bundles, cookie and ticket keys) and swaps them in; if any fails, nothing changes.
    /// Established connections keep theirs.
    pub fn reload_files(&self) -> Result<Vec<String>, L7Error> {
        let running = self.running();
        let mut reloaded = Vec::new();
        for (name, r) in running.iter() {
            let Some(settings) = &r.listener.l7 else {
                continue;
            };
            let certs = load_certs(name, settings)?;
            let ticket_keys = load_ticket_keys(name, settings)?;
            let site = r.proxy.site();
            // The same ServerConfig and resolver: the resolver's certificates are replaced
            // below, once every file has been read, and new handshakes get them.
            let next = site_with(
                name,
                &site.listener,
                &site.settings,
                Arc::clone(&site.tls),
                Arc::clone(&site.resolver),
            )?;
            reloaded.push((r, certs, ticket_keys, next));
        }
        let mut summary = Vec::new();
        for (r, certs, ticket_keys, next) in reloaded {
            summary.push(format!("{}: {}", r.proxy.name, certs.names().join(", ")));
            next.resolver.replace(certs);
            if let Some(keys) = ticket_keys {
                r.tickets.replace(TicketSource::File(keys));
            }
            r.proxy.set_site(next);
        }
        Ok(summary)
    }

    /// Every listening socket (a copy of its descriptor), by address: what a successor
    /// takes over.
    pub fn listening(&self) -> Vec<(SocketAddr, OwnedFd)> {
        self.running()
            .values()
            .flat_map(|r| &r.accepting)
            .filter_map(|a| {
                let copy = std::os::fd::AsFd::as_fd(&a.socket).try_clone_to_owned();
                copy.ok().map(|fd| (a.address, fd))
            })
            .collect()
    }

    /// Stops accepting (closing this process's listening sockets: a successor that took them
    /// over keeps them open) and tells every connection to end: HTTP/2 gets GOAWAY, HTTP/1.1
    /// closes after its next response. [`L7::drained`] waits for them.
    pub fn stop_accepting(&self) {
        let mut running = self.running();
        self.stopped.store(true, Ordering::Relaxed);
        for r in running.values_mut() {
            r.accepting.clear();
            r.proxy.drain.send_replace(true);
        }
    }

    /// Returns once no connection is left, or after `timeout` with how many were still open.
    pub async fn drained(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let open = self.open_connections();
            if open == 0 || tokio::time::Instant::now() >= deadline {
                return open;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    /// Client connections open now, on every listener.
    pub fn open_connections(&self) -> usize {
        let open: u64 = self.proxies().iter().map(|p| p.open_connections()).sum();
        usize::try_from(open).unwrap_or(usize::MAX)
    }

    /// Each L7 listener's proxy (for counters).
    pub fn proxies(&self) -> Vec<Arc<Proxy>> {
        self.running()
            .values()
            .map(|r| Arc::clone(&r.proxy))
            .collect()
    }
}

/// Reads every file `config`'s L7 listeners name, as a start would (`lb check`); binds
/// nothing. Returns each listener's certificate names.
pub fn check_files(config: &Config) -> Result<Vec<String>, L7Error> {
    let mut names = Vec::new();
    for (name, listener) in &config.listeners {
        if let Some(settings) = &listener.l7 {
            let certs = load_certs(name, settings)?;
            load_ticket_keys(name, settings)?;
            sealer_and_connector(name, settings)?;
            names.push(format!("{name}: {}", certs.names().join(", ")));
        }
    }
    Ok(names)
}

/// Descriptors `config`'s L7 listeners may hold at once: each TLS connection and its
/// backend's, and each redirect connection.
pub fn open_files_needed(config: &Config) -> u64 {
    let connections: u64 = config
        .listeners
        .values()
        .filter_map(|l| l.l7.as_ref())
        .map(|s| {
            let max = u64::from(s.http.max_connections);
            let redirect = if s.redirect_http_port.is_some() {
                max
            } else {
                0
            };
            2 * max + redirect
        })
        .sum();
    crate::host::files::BASE + connections
}

/// How often a drain looks for connections still open.
const DRAIN_POLL: Duration = Duration::from_millis(20);

fn take_tasks(mut running: Running) -> Vec<Accepting> {
    std::mem::take(&mut running.accepting)
}

/// The addresses an L7 listener accepts on: its own (TLS) and its redirect's (plain HTTP).
fn addresses(listener: &ListenerConfig, settings: &L7Settings) -> Vec<(SocketAddr, bool)> {
    let own = (SocketAddr::new(listener.address, listener.port), false);
    let redirect = settings
        .redirect_http_port
        .map(|port| (SocketAddr::new(listener.address, port), true));
    std::iter::once(own).chain(redirect).collect()
}

fn fill_pools(running: &BTreeMap<String, Running>, members: &PoolMembers) {
    for r in running.values() {
        fill(&r.proxy, &r.listener, members);
    }
}

/// Gives `proxy` the pools `listener` forwards to, from `members`.
fn fill(proxy: &Proxy, listener: &ListenerConfig, members: &PoolMembers) {
    let Some(settings) = &listener.l7 else {
        return;
    };
    let server_name = settings
        .backend
        .tls
        .as_ref()
        .and_then(|tls| tls.server_name.as_deref());
    let previous = proxy.backends();
    let empty = BackendSet::default();
    let sets = listener
        .pools()
        .into_iter()
        .map(|pool| {
            let members = members.get(pool).map_or(&[][..], Vec::as_slice);
            let old = previous.get(pool).map_or(&empty, |set| set);
            let set = BackendSet::build(listener, server_name, members, old);
            (pool.to_owned(), Arc::new(set))
        })
        .collect();
    proxy.set_backends(Pools::new(sets));
}

fn load_certs(name: &str, settings: &L7Settings) -> Result<Certificates, L7Error> {
    Certificates::load(&settings.tls).map_err(|source| L7Error::File {
        listener: name.to_owned(),
        source,
    })
}

/// What [`L7::prepare`] reads of a listener whose settings did not change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reread {
    /// Nothing: it runs on as it is.
    ChangedListeners,
    /// Its ticket key file (`lb reload`).
    AlsoTicketKeys,
}

/// The keys of the listener's ticket key file, if it names one.
fn load_ticket_keys(name: &str, settings: &L7Settings) -> Result<Option<TicketKeys>, L7Error> {
    let Some(path) = &settings.tls.ticket_key_file else {
        return Ok(None);
    };
    TicketKeys::load(path)
        .map(Some)
        .map_err(|source| L7Error::File {
            listener: name.to_owned(),
            source,
        })
}

/// A listener's session tickets (a running listener's own, or new ones with the keys of its
/// file or of the process), and the keys to put in a running listener's if `reread_keys`.
fn tickets_of(
    name: &str,
    settings: &L7Settings,
    current: Option<&Running>,
    reread_keys: bool,
) -> Result<(Arc<SessionTickets>, Option<TicketSource>), L7Error> {
    Ok(match current {
        Some(r) if !reread_keys => (Arc::clone(&r.tickets), None),
        Some(r) => (
            Arc::clone(&r.tickets),
            next_ticket_source(name, settings, &r.tickets)?,
        ),
        None => (SessionTickets::new(ticket_source(name, settings)?), None),
    })
}

/// The ticket keys of a new listener: its key file's, or new ones of the process's own.
fn ticket_source(name: &str, settings: &L7Settings) -> Result<TicketSource, L7Error> {
    match load_ticket_keys(name, settings)? {
        Some(keys) => Ok(TicketSource::File(keys)),
        None => TicketSource::process().map_err(|e| L7Error::Tls {
            listener: name.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// The ticket keys a running listener with `tickets` takes for `settings`: its key file's, read
/// again; none (it keeps its own) if it has no file and had none.
fn next_ticket_source(
    name: &str,
    settings: &L7Settings,
    tickets: &SessionTickets,
) -> Result<Option<TicketSource>, L7Error> {
    if settings.tls.ticket_key_file.is_none() && !tickets.is_from_file() {
        return Ok(None);
    }
    ticket_source(name, settings).map(Some)
}

fn sealer_and_connector(
    name: &str,
    settings: &L7Settings,
) -> Result<(Option<sticky::Sealer>, Connector), L7Error> {
    let file_error = |source| L7Error::File {
        listener: name.to_owned(),
        source,
    };
    let sealer = match &settings.sticky {
        Some(sticky) => {
            let keys = sticky::KeyRing::load(&sticky.key_file).map_err(file_error)?;
            Some(sticky::Sealer::new(Arc::new(keys), name, &sticky.cookie))
        }
        None => None,
    };
    let backend = &settings.backend;
    let tls = match &backend.tls {
        Some(tls) => {
            if tls.verify == BackendVerify::Skip {
                warn!(listener = %name, "dangerously_skip_verification: the backends' \
                    certificates are NOT verified; anyone on the path can read and change the \
                    traffic to them");
            }
            let h1 = tls::backend_client_config(tls, BackendProtocol::Http1).map_err(file_error)?;
            let h2 = tls::backend_client_config(tls, BackendProtocol::Http2).map_err(file_error)?;
            Some((h1, h2))
        }
        None => None,
    };
    let ping = (backend.h2_ping_interval, backend.h2_ping_timeout);
    let connector = Connector::new(backend.protocol, backend.connect_timeout, ping, tls);
    Ok((sealer, connector))
}

fn build_site(
    name: &str,
    listener: &ListenerConfig,
    settings: &L7Settings,
    tickets: Arc<SessionTickets>,
) -> Result<Site, L7Error> {
    let certs = load_certs(name, settings)?;
    let resolver = CertResolver::new(certs, settings.tls.strict_sni);
    let tls = tls::server_config(Arc::clone(&resolver), settings.tls.min_version, tickets)
        .map_err(|e| L7Error::Tls {
            listener: name.to_owned(),
            reason: e.to_string(),
        })?;
    site_with(name, listener, settings, tls, resolver)
}

/// The site of `listener` with the TLS server side `tls` (whose certificates `resolver`
/// gives) and the backend side read from the files `settings` name: the cookie keys, the
/// backends' CA bundle and client certificate. Shared by [`build_site`] and
/// [`L7::reload_files`], which keeps a running listener's `tls` and `resolver`.
fn site_with(
    name: &str,
    listener: &ListenerConfig,
    settings: &L7Settings,
    tls: Arc<rustls::ServerConfig>,
    resolver: Arc<CertResolver>,
) -> Result<Site, L7Error> {
    let (sealer, connector) = sealer_and_connector(name, settings)?;
    Ok(Site {
        routes: route::Routes::new(&listener.pool, settings),
        listener: listener.clone(),
        settings: settings.clone(),
        tls,
        resolver,
        sealer,
        connector,
    })
}
