//! The scale-out lab ([`ScaleOutLab`]) with a daemon on every node, and what its tests ask of
//! it: TLS connections from the client, which node carried each one and which backend every
//! node's `lb simulate` names for it.
//!
//! [`ScaleOut::start`] builds the lab (TLS on port 443 of every backend), starts `lb run` on
//! every node, announces the VIPs from the nodes it is told to and waits until the router's
//! routes have those next hops. [`ScaleOut::simulations`] asks every node's daemon where a
//! flow goes; the node whose answer comes from its connection table is the one the flow
//! crossed ([`Placement::carrier`]). [`plain_rebuild_moves`] counts the flows a plain Maglev
//! rebuild would have moved when a backend failed, the figure the stable table keeps at 0.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    sync::Arc,
    time::Duration,
};

use lb::{
    config::Config,
    control::{Body, SimulationView},
    lab::{
        client_config,
        daemon::{DaemonPaths, lb_binary},
        passthrough::{VIP_V4, VIP_V6},
        scale_out::{CLIENT_V4, ScaleOutLab, backend_v4, node_daemon_config},
        side_by_side::{BACKEND_PORTS, L7Files, L7Listeners},
    },
    maglev::{self, Entry},
    model::flow_key,
    state::{Protocol, Target},
};
use lb_common::hash::{flow_hash, ring_slot};
use rustls::ClientConfig;

use crate::{
    clients::{Held, open, run_parallel},
    daemon_lab::{TLS_PORT, raise_fd_limit},
};

/// How long the router may take to learn or drop a node's announcement in the tests' waits
/// (BGP sessions come up within about a second with the lab's timers).
pub const ROUTE_WAIT: Duration = Duration::from_secs(20);

/// A scale-out lab with a daemon on every node.
pub struct ScaleOut {
    /// Declared first: the daemons stop before their files go.
    pub lab: ScaleOutLab,
    pub config: Arc<ClientConfig>,
    /// The L7 listeners' files, when the nodes serve one ([`ScaleOut::start_l7`]).
    pub l7: Option<L7Files>,
}

/// Who announces the VIPs: the test by hand, from these nodes, or every node's daemon, with
/// its configuration edited per node.
#[derive(Clone, Copy)]
enum Announcer<'a> {
    Hand(&'a [usize]),
    Daemon(&'a NodeEdit<'a>),
}

/// An edit of node `i`'s daemon configuration text (see [`ScaleOut::start_announcing_with`]).
pub type NodeEdit<'a> = dyn Fn(usize, String) -> String + 'a;

/// What every node's daemon says about one flow.
#[derive(Debug)]
pub struct Placement {
    /// Per node, in order.
    pub per_node: Vec<SimulationView>,
}

impl Placement {
    /// The node whose connection table holds the flow: the one it crossed (`None` if no node
    /// or several do).
    pub fn carrier(&self) -> Option<usize> {
        let holders: Vec<usize> = self
            .per_node
            .iter()
            .enumerate()
            .filter(|(_, s)| s.reason == "connection table")
            .map(|(i, _)| i)
            .collect();
        match holders.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }
}

/// Both VIPs at the TLS port.
pub fn vips() -> [SocketAddr; 2] {
    [
        SocketAddr::new(IpAddr::V4(VIP_V4), TLS_PORT),
        SocketAddr::new(IpAddr::V6(VIP_V6), TLS_PORT),
    ]
}

impl ScaleOut {
    /// Builds a lab of `nodes` nodes and `backends` backends named after `prefix`, starts a
    /// daemon on every node, announces the VIPs from the nodes in `announced` and waits until
    /// the router routes each VIP over exactly those nodes.
    pub fn start(prefix: &str, nodes: usize, backends: usize, announced: &[usize]) -> Self {
        Self::start_with(prefix, nodes, backends, Announcer::Hand(announced), false)
    }

    /// Builds a lab of `nodes` nodes whose daemons announce the VIPs themselves
    /// (`[announce]`), and waits until the router routes each VIP over every node.
    pub fn start_announcing(prefix: &str, nodes: usize, backends: usize) -> Self {
        Self::start_announcing_with(prefix, nodes, backends, &|_, config| config)
    }

    /// [`ScaleOut::start_announcing`] with node `i`'s configuration text passed through
    /// `edit(i, text)` (health checks, a metrics endpoint, a node that differs).
    pub fn start_announcing_with(
        prefix: &str,
        nodes: usize,
        backends: usize,
        edit: &NodeEdit<'_>,
    ) -> Self {
        Self::start_with(prefix, nodes, backends, Announcer::Daemon(edit), false)
    }

    /// [`ScaleOut::start_announcing`] with an L7 listener on every node too: the VIPs on the
    /// nodes' `lo`, HTTP servers on the backends ([`BACKEND_PORTS`]), and on every node the
    /// same offload listener ([`L7Listeners::offload_tables`]: port [`OFFLOAD_PORT`](lb::lab::side_by_side::OFFLOAD_PORT) of the
    /// IPv4 VIP, sticky, health-checked) with one cookie key file and one ticket key file
    /// (a line of `lb ticket-key`) that every node reads.
    pub fn start_l7(prefix: &str, nodes: usize, backends: usize) -> Self {
        Self::start_with(
            prefix,
            nodes,
            backends,
            Announcer::Daemon(&|_, config| config),
            true,
        )
    }

    fn start_with(
        prefix: &str,
        nodes: usize,
        backends: usize,
        announcer: Announcer<'_>,
        with_l7: bool,
    ) -> Self {
        crate::require_root();
        raise_fd_limit();
        let mut lab = ScaleOutLab::build(prefix, nodes, backends).expect("building the lab");
        lab.start_tls(TLS_PORT).expect("starting the TLS backends");
        let binary = lb_binary().expect("the lb binary");
        let l7 = with_l7.then(|| prepare_l7(&mut lab, &binary));
        let l7_tables = l7.as_ref().map_or_else(String::new, |(_, listeners)| {
            listeners.offload_tables(backends, backend_v4)
        });
        let announced: Vec<usize> = match announcer {
            Announcer::Hand(announced) => announced.to_vec(),
            Announcer::Daemon(_) => (0..nodes).collect(),
        };
        for i in 0..nodes {
            let started = match announcer {
                Announcer::Hand(_) => lab.start_daemon(i, &binary),
                Announcer::Daemon(edit) => {
                    lab.start_announcing_daemon_edited(i, &binary, &|config| {
                        edit(i, format!("{config}{l7_tables}"))
                    })
                }
            };
            started.unwrap_or_else(|e| panic!("starting node {i}'s daemon: {e}"));
        }
        if let Announcer::Hand(hand) = announcer {
            for &i in hand {
                lab.announce(i)
                    .unwrap_or_else(|e| panic!("announcing from node {i}: {e}"));
            }
        }
        for vip in vips() {
            let took = lab
                .wait_next_hops(vip.ip(), announced.len(), ROUTE_WAIT)
                .unwrap_or_else(|e| panic!("{e}"));
            println!(
                "the router routes {} over {announced:?} after {took:?}",
                vip.ip()
            );
        }
        let roots = lab.pki.roots().expect("the lab's trust store");
        let config = client_config(&roots).expect("a client configuration");
        Self {
            lab,
            config,
            l7: l7.map(|(files, _)| files),
        }
    }

    /// Opens `count` connections to `vip` from the client over a few threads and keeps them
    /// open. Any failure fails the test.
    pub fn open(&self, vip: SocketAddr, count: usize) -> Vec<Held> {
        let config = Arc::clone(&self.config);
        run_parallel(&self.lab.client, count, 4, move |i| {
            open(&config, vip, &format!("hello {i}"))
                .unwrap_or_else(|e| panic!("connection {i} to {vip}: {e}"))
        })
    }

    /// Node `node`'s `lb simulate CLIENT VIP`.
    pub fn simulate(&self, node: usize, client: SocketAddr, vip: SocketAddr) -> SimulationView {
        let daemon = self.lab.daemon(node).expect("a node with a daemon");
        let args = ["--json", "simulate", &client.to_string(), &vip.to_string()];
        let output = daemon.cli(&args).expect("running the lb CLI");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "node {node}: lb {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        match serde_json::from_str(&stdout) {
            Ok(Body::Simulation(view)) => view,
            other => panic!("node {node}: lb {args:?} answered {other:?}"),
        }
    }

    /// Node `node`'s listeners and the digests of their Maglev tables (`lb listener list`).
    pub fn table_digests(&self, node: usize) -> Vec<(String, String)> {
        let daemon = self.lab.daemon(node).expect("a node with a daemon");
        let output = daemon
            .cli(&["--json", "listener", "list"])
            .expect("running the lb CLI");
        let stdout = String::from_utf8_lossy(&output.stdout);
        match serde_json::from_str(&stdout) {
            Ok(Body::Listeners(listeners)) => listeners
                .into_iter()
                .map(|l| (l.name, l.table_digest))
                .collect(),
            other => panic!("node {node}: lb listener list answered {other:?}"),
        }
    }

    /// Every node's simulation of each flow `clients[k]` → `vip`, one thread per node.
    pub fn simulations(&self, clients: &[SocketAddr], vip: SocketAddr) -> Vec<Placement> {
        let per_node: Vec<Vec<SimulationView>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..self.lab.nodes.len())
                .map(|node| {
                    scope.spawn(move || {
                        clients
                            .iter()
                            .map(|c| self.simulate(node, *c, vip))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a simulation thread panicked"))
                .collect()
        });
        (0..clients.len())
            .map(|k| Placement {
                per_node: per_node.iter().map(|views| views[k].clone()).collect(),
            })
            .collect()
    }

    /// The name (`backend-N`) of the backend at `address`.
    pub fn backend_name(&self, address: IpAddr) -> String {
        self.lab
            .backends
            .iter()
            .find(|b| IpAddr::V4(b.v4) == address || IpAddr::V6(b.v6) == address)
            .map_or_else(
                || format!("(unknown backend {address})"),
                |b| b.name.clone(),
            )
    }

    /// The address of the backend named `name` (`backend-N`), of one family.
    pub fn backend_address(&self, name: &str, v4: bool) -> IpAddr {
        let backend = self
            .lab
            .backends
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name}"));
        if v4 {
            IpAddr::V4(backend.v4)
        } else {
            IpAddr::V6(backend.v6)
        }
    }

    /// A free client source port from `from` on whose flows to `vip` the router sends to node
    /// `node` (IPv4; by its kernel), skipping those in `taken`.
    pub fn port_to_node(&self, node: usize, vip: SocketAddr, from: u16, taken: &[u16]) -> u16 {
        let IpAddr::V4(vip_v4) = vip.ip() else {
            panic!("only IPv4 placement can be predicted");
        };
        (from..u16::MAX)
            .filter(|port| !taken.contains(port))
            .find(|port| {
                self.lab
                    .predicted_node(CLIENT_V4, *port, vip_v4, vip.port())
                    .expect("ip route get in the router")
                    == Some(node)
            })
            .unwrap_or_else(|| panic!("no port from {from} goes to node {node}"))
    }

    /// The node the router sends each IPv4 flow from `clients` to `vip` to, by its kernel.
    pub fn predicted_nodes(&self, clients: &[SocketAddr], vip: SocketAddr) -> Vec<Option<usize>> {
        let IpAddr::V4(vip_v4) = vip.ip() else {
            panic!("only IPv4 placement can be predicted");
        };
        clients
            .iter()
            .map(|c| {
                let IpAddr::V4(client) = c.ip() else {
                    panic!("an IPv4 client for an IPv4 VIP");
                };
                self.lab
                    .predicted_node(client, c.port(), vip_v4, vip.port())
                    .expect("ip route get in the router")
            })
            .collect()
    }
}

/// Readies `lab` for L7 listeners (the VIPs on the nodes' `lo`, HTTP servers on the backends)
/// and writes their files, with a ticket key file of one `lb ticket-key` line (`binary`'s).
fn prepare_l7(lab: &mut ScaleOutLab, binary: &Path) -> (L7Files, L7Listeners) {
    lab.serve_vip_locally().expect("the VIPs on the nodes' lo");
    lab.start_http(BACKEND_PORTS)
        .expect("the backends' HTTP servers");
    let files = L7Files::write(&lab.pki).expect("the L7 listeners' files");
    let output = Command::new(binary)
        .arg("ticket-key")
        .output()
        .expect("running lb ticket-key");
    assert!(output.status.success(), "lb ticket-key: {output:?}");
    let ticket_keys = files
        .dir
        .write("tickets.keys", &output.stdout)
        .expect("the ticket key file");
    let mut listeners = L7Listeners::new(&files);
    listeners.ticket_keys = Some(ticket_keys);
    (files, listeners)
}

/// What a plain Maglev rebuild would have done to surviving flows when one backend failed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PlainRebuild {
    /// Surviving flows checked.
    pub flows: usize,
    /// How many of them a plain rebuild (the failed backend at weight 0) gives another backend.
    pub moved: usize,
    /// Ring slots of the other backends, and how many of them the plain rebuild moves.
    pub other_slots: usize,
    pub other_slots_moved: usize,
}

/// For the flows `flows` (client, the backend address that served it) to `vip`, served by
/// `pool` of the nodes' configuration, none of them on `failed`: how many would change
/// backend if the nodes rebuilt their tables with plain Maglev (`maglev::build` with `failed`
/// at weight 0) instead of the stable table. Panics unless the full table (every backend at
/// its weight, what served the flows) names each flow's backend: the computation is the
/// datapath's.
pub fn plain_rebuild_moves(
    backends: usize,
    pool: &str,
    vip: SocketAddr,
    flows: &[(SocketAddr, IpAddr)],
    failed: IpAddr,
) -> PlainRebuild {
    let paths = DaemonPaths {
        socket: "/lab/lb.sock".into(),
        pin_dir: "/sys/fs/bpf/lab".into(),
    };
    let text = node_daemon_config(&paths, backends);
    let config = Config::parse(&text, "node.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
    let members = &config.pools[pool].backends;
    let identities: Vec<Vec<u8>> = members
        .iter()
        .map(|b| Target::new(b.address, b.weight).identity())
        .collect();
    let table = |without: Option<IpAddr>| {
        let entries: Vec<Entry<'_>> = members
            .iter()
            .zip(&identities)
            .map(|(b, identity)| Entry {
                identity,
                weight: if Some(b.address) == without {
                    0
                } else {
                    b.weight
                },
            })
            .collect();
        maglev::build(
            &entries,
            config.datapath.ring_size,
            config.datapath.hash_seed,
        )
    };
    let (full, rebuilt) = (table(None), table(Some(failed)));
    let failed_index = members.iter().position(|b| b.address == failed);
    let others: Vec<(&u32, &u32)> = full
        .iter()
        .zip(&rebuilt)
        .filter(|(owner, _)| Some(**owner as usize) != failed_index)
        .collect();
    let mut outcome = PlainRebuild {
        other_slots: others.len(),
        other_slots_moved: others.iter().filter(|(a, b)| a != b).count(),
        ..PlainRebuild::default()
    };
    for (client, backend) in flows {
        assert_ne!(*backend, failed, "{client}: a flow of the failed backend");
        let flow = flow_key(*client, vip, Protocol::Tcp);
        let slot = ring_slot(
            flow_hash(&flow, config.datapath.hash_seed),
            config.datapath.ring_size,
        ) as usize;
        let owner = |table: &[u32]| members[table[slot] as usize].address;
        assert_eq!(
            owner(&full),
            *backend,
            "{client}: slot {slot} of the full table"
        );
        outcome.flows += 1;
        if owner(&rebuilt) != *backend {
            outcome.moved += 1;
        }
    }
    outcome
}
