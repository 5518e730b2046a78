//! The command line: what `lb` accepts ([`Cli`]) and how its answers are printed ([`render`]).
//! `main.rs` parses and dispatches; the daemon's commands go through the control socket.

#[cfg(feature = "lab")]
mod bench;
pub mod capture;
pub mod decap;
pub mod render;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use clap::{Args, Parser, Subcommand};

#[cfg(feature = "lab")]
pub use bench::BenchCommand;

use crate::{control::Request, state::Protocol};

#[derive(Debug, Parser)]
#[command(
    name = "lb",
    version,
    about = "An XDP and TLS load balancer",
    max_term_width = 100
)]
pub struct Cli {
    /// The daemon's control socket (default: LB_SOCKET, else the `[control] socket` of
    /// --config, else /run/lb/lb.sock).
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// The configuration file: what `run`, `check` and `uninstall` act on; for the daemon's
    /// commands, where its control socket is.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: attach the balancer, program the maps, serve the control socket.
    Run {
        /// Take over from the daemon running on the same control socket without closing any
        /// port: it hands over its listening sockets, then drains and exits once this one
        /// serves (a restart or an upgrade). With none running, start as usual.
        #[arg(long)]
        take_over: bool,
    },
    /// Validate a configuration file and the files it names (certificates, keys, CA bundles,
    /// cookie and ticket keys) without touching the system.
    Check,
    /// Re-read the daemon's configuration file and apply what changed (also on SIGHUP).
    Reload,
    /// The L7 listeners' certificates and keys.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Print a new cookie key: a line for a sticky key file (put new keys first; keep old
    /// ones after it until their cookies expire).
    StickyKey,
    /// Print a new session-ticket key: a line for a ticket key file (add it second on every
    /// balancer, then move it first; keep the old one after it for 12 hours).
    TicketKey,
    /// Detach the balancer and remove its pinned maps (the daemon must be stopped first; it
    /// leaves the balancer forwarding when it stops, so that restarts are hitless).
    Uninstall,
    /// Listeners (VIPs).
    #[command(subcommand)]
    Listener(ListenerCommand),
    /// Backends of the pools.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Traffic per listener and backend, and every datapath counter.
    Stats,
    /// A one-screen summary of the daemon.
    Status,
    /// Where a flow's packets go, and why.
    Simulate(SimulateArgs),
    /// Record packets as the XDP balancer handles them, with their verdict, reason, listener
    /// and backend (as each packet's comment), to a pcapng file for Wireshark or tcpdump.
    Capture(CaptureArgs),
    /// This node's announcements to its routers (`[announce]`): drain before stopping it.
    #[command(subcommand)]
    Node(NodeCommand),
    /// The backends' decapsulation program.
    #[command(subcommand)]
    Decap(DecapCommand),
    /// Benchmarks.
    #[cfg(feature = "lab")]
    #[command(subcommand)]
    Bench(BenchCommand),
    /// A lab in network namespaces that shows the balancer at work (needs root).
    #[cfg(feature = "lab")]
    Demo,
    /// Print the shell completion script for SHELL (bash: put it in
    /// /usr/share/bash-completion/completions/lb).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (lb.1, and lb-COMMAND.1 for each command) into DIR.
    Man {
        #[arg(long)]
        dir: PathBuf,
    },
}

/// The manual pages of `command` and of its subcommands, each `(file name, roff)`: `lb.1`,
/// `lb-backend.1`, `lb-backend-add.1`, ...
pub fn man_pages(command: &clap::Command) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut pages = Vec::new();
    let mut render = |command: &clap::Command, name: &str| -> std::io::Result<()> {
        let mut page = Vec::new();
        clap_mangen::Man::new(command.clone().name(name.to_owned())).render(&mut page)?;
        pages.push((format!("{name}.1"), page));
        Ok(())
    };
    fn walk(
        command: &clap::Command,
        name: &str,
        render: &mut dyn FnMut(&clap::Command, &str) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        render(command, name)?;
        for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(sub, &format!("{name}-{}", sub.get_name()), render)?;
        }
        Ok(())
    }
    let mut command = command.clone();
    command.build();
    walk(&command, "lb", &mut render)?;
    Ok(pages)
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Re-read every certificate, key, CA bundle and cookie key file of the L7 listeners and
    /// swap them in without dropping a connection; if any is bad, nothing changes.
    Reload,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Withdraw every announcement at once, wait for the routers to move new flows to the
    /// other nodes, then say that this node may stop. It stays drained until `undrain` (or a
    /// restart).
    Drain {
        /// How long to wait after withdrawing ("5s"; default: `[announce] drain_wait`).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// Announce again every address this node can serve.
    Undrain,
}

#[derive(Debug, Subcommand)]
pub enum ListenerCommand {
    /// List the listeners.
    List,
    /// An L7 listener's routing rules, in the order they are tried.
    Rules { listener: String },
}

#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    /// List the backends (of one pool, or all).
    List { pool: Option<String> },
    /// Add a backend to a pool.
    Add {
        pool: String,
        /// ADDRESS or ADDRESS:PORT ([V6]:PORT), as `lb backend list` prints it.
        #[arg(value_parser = parse_backend)]
        address: BackendAddress,
        /// The backend's port (passthrough forwards to the listener's port; leave it out).
        #[arg(long)]
        port: Option<u16>,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Bridging: the name the backend's certificate holds (default: the listener's
        /// `server_name`, or the address).
        #[arg(long)]
        server_name: Option<String>,
    },
    /// Remove a backend from a pool: its flows are placed afresh.
    Remove {
        pool: String,
        /// ADDRESS or ADDRESS:PORT ([V6]:PORT), as `lb backend list` prints it.
        #[arg(value_parser = parse_backend)]
        address: BackendAddress,
        #[arg(long)]
        port: Option<u16>,
    },
    /// Drain a backend: no new flows at once; established ones keep working until they end or
    /// the timeout passes; then it is removed from the pool.
    Drain {
        pool: String,
        /// ADDRESS or ADDRESS:PORT ([V6]:PORT), as `lb backend list` prints it.
        #[arg(value_parser = parse_backend)]
        address: BackendAddress,
        /// How long established flows may last ("30s", "5m").
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        #[arg(long)]
        port: Option<u16>,
    },
    /// Change a backend's weight (0 disables it: no new flows, established ones stay).
    SetWeight {
        pool: String,
        /// ADDRESS or ADDRESS:PORT ([V6]:PORT), as `lb backend list` prints it.
        #[arg(value_parser = parse_backend)]
        address: BackendAddress,
        weight: u32,
        #[arg(long)]
        port: Option<u16>,
    },
}

/// A backend on the command line: its address, and the port if given with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendAddress {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

fn parse_backend(text: &str) -> Result<BackendAddress, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(BackendAddress { ip, port: None });
    }
    match text.parse::<SocketAddr>() {
        Ok(address) => Ok(BackendAddress {
            ip: address.ip(),
            port: Some(address.port()),
        }),
        Err(_) => Err(format!(
            "{text:?} is not ADDRESS or ADDRESS:PORT (an IPv6 address with a port: [ADDRESS]:PORT)"
        )),
    }
}

impl BackendAddress {
    /// The port given with the address or with `--port` (not both, unless they agree).
    pub fn with(self, port: Option<u16>) -> Result<(IpAddr, Option<u16>), OptionError> {
        match (self.port, port) {
            (Some(a), Some(b)) if a != b => Err(OptionError::TwoPorts(a, b)),
            (a, b) => Ok((self.ip, a.or(b))),
        }
    }
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The client's address and port (a passthrough flow).
    #[arg(required_unless_present = "url")]
    pub client: Option<SocketAddr>,
    /// The VIP's address and port (a passthrough flow).
    #[arg(required_unless_present = "url")]
    pub vip: Option<SocketAddr>,
    #[arg(long, value_enum, default_value_t = ProtocolArg::Tcp, conflicts_with = "url")]
    pub protocol: ProtocolArg,
    /// An HTTP request to an L7 listener instead: its URL (https://HOST/PATH?QUERY); shows the
    /// rule that takes it, the pool and the backend a new user's request would go to now.
    #[arg(long, requires = "listener", conflicts_with_all = ["client", "vip"])]
    pub url: Option<String>,
    /// The L7 listener the request is for (with --url).
    #[arg(long, requires = "url")]
    pub listener: Option<String>,
    /// The request's method (with --url).
    #[arg(long, default_value = "GET", requires = "url")]
    pub method: String,
    /// A request header, `NAME: VALUE` (with --url; repeat for more).
    #[arg(long = "header", short = 'H', requires = "url", value_parser = header_arg)]
    pub headers: Vec<(String, String)>,
}

/// `NAME: VALUE`.
fn header_arg(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not NAME: VALUE"))?;
    Ok((name.trim().to_owned(), value.trim().to_owned()))
}

#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// Only this passthrough listener's packets.
    #[arg(long)]
    pub listener: Option<String>,
    /// Only packets of clients in this prefix (`10.0.0.0/8`, `2001:db8::1`).
    #[arg(long)]
    pub client: Option<crate::config::l7::Prefix>,
    /// Only packets with this verdict: forward, pass, drop, or a reason (`drop_no_backend`,
    /// `pass_not_vip`, ...: the counters of `lb stats`).
    #[arg(long)]
    pub verdict: Option<crate::capture::Verdict>,
    /// Stop after this many packets (default: at Ctrl-C).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Bytes of each frame to record (as it leaves the program: encapsulated when forwarded).
    #[arg(long, default_value_t = crate::capture::DEFAULT_SNAPLEN,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(lb_common::abi::CAPTURE_SNAPLEN_MAX)))]
    pub snaplen: u32,
    /// At most this many packets a second on each CPU (the capture's cost is bounded by it).
    #[arg(long, default_value_t = crate::capture::DEFAULT_PER_CPU_RATE,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::capture::MAX_PER_CPU_RATE)))]
    pub rate: u32,
    /// The pcapng file to write (`-`: standard output, e.g. `| tcpdump -r -`).
    #[arg(short = 'w', long = "write")]
    pub file: PathBuf,
}

impl CaptureArgs {
    /// The daemon's request.
    pub fn spec(&self) -> crate::capture::Spec {
        crate::capture::Spec {
            listener: self.listener.clone(),
            client: self.client,
            verdict: self.verdict,
            count: self.count,
            snaplen: self.snaplen,
            per_cpu_rate: self.rate,
        }
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ProtocolArg {
    Tcp,
    Udp,
}

impl From<ProtocolArg> for Protocol {
    fn from(p: ProtocolArg) -> Self {
        match p {
            ProtocolArg::Tcp => Protocol::Tcp,
            ProtocolArg::Udp => Protocol::Udp,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum DecapCommand {
    /// Attach it to a backend's interface (it stays attached after this command exits); run
    /// again to update the VIPs it accepts.
    Attach {
        #[command(flatten)]
        target: DecapTarget,
        /// A VIP to accept (repeat for several); default: the addresses on lo.
        #[arg(long = "vip")]
        vips: Vec<IpAddr>,
        /// driver, generic or auto (driver, else generic with a warning).
        #[arg(long, default_value = "auto", value_parser = attach_mode)]
        mode: crate::loader::AttachMode,
    },
    /// Detach it.
    Detach {
        #[command(flatten)]
        target: DecapTarget,
    },
    /// The VIPs it accepts and its counters.
    Status {
        #[command(flatten)]
        target: DecapTarget,
    },
}

/// Which attached decapsulation program: an interface, and where its pins are.
#[derive(Debug, Args)]
pub struct DecapTarget {
    #[arg(long)]
    pub iface: String,
    /// A directory on a bpffs for the program's pins (one per network namespace).
    #[arg(long, default_value = decap::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

fn attach_mode(text: &str) -> Result<crate::loader::AttachMode, String> {
    match text {
        "auto" => Ok(crate::loader::AttachMode::Auto),
        "driver" => Ok(crate::loader::AttachMode::Driver),
        "generic" => Ok(crate::loader::AttachMode::Generic),
        other => Err(format!("{other:?} is not driver, generic or auto")),
    }
}

/// The environment variable that names the daemon's control socket.
pub const SOCKET_ENV: &str = "LB_SOCKET";

/// Why the command line's options do not fit together.
#[derive(Debug, thiserror::Error)]
pub enum OptionError {
    #[error("lb {0} needs --config FILE")]
    NoConfig(&'static str),
    #[error(
        "--socket {given} does nothing here: the daemon listens where its configuration's [control] socket says ({configured})"
    )]
    SocketNotConfigured { given: String, configured: String },
    #[error("the backend's port is given twice, {0} and {1}: give one")]
    TwoPorts(u16, u16),
    #[error("--socket and --config do nothing for lb {0}")]
    Unused(&'static str),
    #[error(
        "--socket {given} and the [control] socket of --config ({configured}) differ: give one"
    )]
    SocketsDiffer { given: String, configured: String },
}

impl Cli {
    /// Refuses `--socket` and `--config` for a command that uses neither.
    pub fn refuse_daemon_options(&self, command: &'static str) -> Result<(), OptionError> {
        if self.socket.is_some() || self.config.is_some() {
            return Err(OptionError::Unused(command));
        }
        Ok(())
    }
}

impl Command {
    /// The control request a daemon command sends, if it is one.
    pub fn request(&self) -> Result<Option<Request>, OptionError> {
        Ok(Some(match self {
            Self::Listener(ListenerCommand::List) => Request::ListListeners,
            Self::Listener(ListenerCommand::Rules { listener }) => Request::ListRules {
                listener: listener.clone(),
            },
            Self::Backend(BackendCommand::List { pool }) => {
                Request::ListBackends { pool: pool.clone() }
            }
            Self::Backend(BackendCommand::Add {
                pool,
                address,
                port,
                weight,
                server_name,
            }) => Request::AddBackend {
                pool: pool.clone(),
                address: address.ip,
                port: address.with(*port)?.1,
                weight: *weight,
                server_name: server_name.clone(),
            },
            Self::Backend(BackendCommand::Remove {
                pool,
                address,
                port,
            }) => Request::RemoveBackend {
                pool: pool.clone(),
                address: address.ip,
                port: address.with(*port)?.1,
            },
            Self::Backend(BackendCommand::SetWeight {
                pool,
                address,
                weight,
                port,
            }) => Request::SetWeight {
                pool: pool.clone(),
                address: address.ip,
                port: address.with(*port)?.1,
                weight: *weight,
            },
            Self::Stats => Request::Stats,
            Self::Status => Request::Status,
            Self::Backend(BackendCommand::Drain {
                pool,
                address,
                timeout,
                port,
            }) => Request::DrainBackend {
                pool: pool.clone(),
                address: address.ip,
                port: address.with(*port)?.1,
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            },
            Self::Reload => Request::Reload,
            Self::Cert(CertCommand::Reload) => Request::ReloadFiles,
            Self::Node(NodeCommand::Drain { timeout }) => Request::NodeDrain {
                wait_ms: timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            },
            Self::Node(NodeCommand::Undrain) => Request::NodeUndrain,
            Self::Capture(args) => Request::Capture(args.spec()),
            Self::Simulate(args) => match (&args.url, &args.listener, args.client, args.vip) {
                (Some(url), Some(listener), ..) => Request::SimulateHttp {
                    listener: listener.clone(),
                    method: args.method.clone(),
                    url: url.clone(),
                    headers: args.headers.clone(),
                },
                (None, _, Some(client), Some(vip)) => Request::Simulate {
                    protocol: args.protocol.into(),
                    client,
                    vip,
                },
                // clap requires one form or the other.
                _ => return Ok(None),
            },
            Self::Run { .. }
            | Self::Check
            | Self::Uninstall
            | Self::Decap(_)
            | Self::StickyKey
            | Self::TicketKey
            | Self::Completions { .. }
            | Self::Man { .. } => return Ok(None),
            #[cfg(feature = "lab")]
            Self::Bench(_) | Self::Demo => return Ok(None),
        }))
    }
}
