//! Output of the CLI: aligned tables for people, JSON (`--json`) for scripts.

use crate::{
    config::describe,
    control::{
        AnnounceView, Body, ChangeView, NodeChange, RoutingProtocol, SimulationView, StatsView,
        StatusView, Traffic,
    },
};

/// A table with a header row; columns are as wide as their widest cell.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders the table, cells left-aligned, two spaces between columns.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r.get(c).map_or(0, |cell| cell.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let line: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

/// The text the CLI prints for a response body.
pub fn render(body: &Body, json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(body)
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
            + "\n";
    }
    match body {
        Body::Capture(started) => format!("capturing {}\n", started.filter),
        Body::Rules(rules) => {
            let mut table = Table::new(&["#", "RULE", "CONDITIONS", "ACTION", "HEADERS"]);
            for rule in &rules.rules {
                table.row(vec![
                    rule.position.to_string(),
                    rule.name.clone(),
                    rule.conditions.clone(),
                    rule.action.clone(),
                    if rule.headers.is_empty() {
                        "-".to_owned()
                    } else {
                        rule.headers.clone()
                    },
                ]);
            }
            table.row(vec![
                "-".to_owned(),
                "(default)".to_owned(),
                "every other request".to_owned(),
                format!("forward to pool {}", rules.default_pool),
                "-".to_owned(),
            ]);
            table.render()
        }
        Body::HttpSimulation(s) => {
            let mut out = format!(
                "listener: {}\nrule:     {}\naction:   {}\n",
                s.listener,
                s.rule.as_deref().unwrap_or("(none: the listener's pool)"),
                s.action
            );
            if let Some(pool) = &s.pool {
                let backend = s.backend.map_or_else(
                    || "none takes requests now (503)".to_owned(),
                    |b| format!("{b} (a new user's next request)"),
                );
                out.push_str(&format!("pool:     {pool}\nbackend:  {backend}\n"));
            }
            out
        }
        Body::Listeners(listeners) => {
            let mut table = Table::new(&[
                "LISTENER",
                "VIP",
                "MODE",
                "POOL",
                "BACKENDS",
                "BALANCING",
                "TABLE",
            ]);
            for l in listeners {
                table.row(vec![
                    l.name.clone(),
                    format!(
                        "{}/{}",
                        std::net::SocketAddr::new(l.address, l.port),
                        l.protocol.name()
                    ),
                    l.mode.clone(),
                    l.pool.clone(),
                    l.active_backends.to_string(),
                    if l.balancing.is_empty() {
                        format!("Maglev, {} slots", l.ring_size)
                    } else {
                        l.balancing.clone()
                    },
                    if l.table_digest.is_empty() {
                        "-".to_owned()
                    } else {
                        l.table_digest.clone()
                    },
                ]);
            }
            table.render()
        }
        Body::Backends(backends) => {
            let mut table = Table::new(&[
                "POOL",
                "BACKEND",
                "WEIGHT",
                "STATE",
                "TABLE SHARE",
                "LISTENERS",
            ]);
            for b in backends {
                table.row(vec![
                    b.pool.clone(),
                    describe(b.address, b.port),
                    b.weight.to_string(),
                    match b.ejected_for_s {
                        Some(left) => format!("{} ({left} s left)", b.state),
                        None => b.state.clone(),
                    },
                    if b.ring_size == 0 {
                        "-".to_owned()
                    } else {
                        percent(u64::from(b.table_slots), u64::from(b.ring_size))
                    },
                    b.listeners.join(","),
                ]);
            }
            table.render()
        }
        Body::Changed(change) => render_change(change),
        Body::Stats(stats) => render_stats(stats),
        Body::Simulation(simulation) => render_simulation(simulation),
        Body::Status(status) => render_status(status),
        Body::Node(change) => render_node(change),
    }
}

/// `lb node drain` (once its wait is over) and `lb node undrain`.
fn render_node(change: &NodeChange) -> String {
    let list = |addresses: &[std::net::IpAddr]| {
        if addresses.is_empty() {
            "none".to_owned()
        } else {
            addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let mut out = if change.view.drained {
        format!(
            "withdrawn: {}\nwaited {} ms for the routers: this node may stop; it announces \
             nothing until `lb node undrain` or a restart\n",
            list(&change.changed),
            change.wait_ms
        )
    } else {
        format!("announced: {}\n", list(&change.changed))
    };
    out.push_str(&render_announce(&change.view));
    out
}

/// The announcement lines of `lb status` and `lb node`.
fn render_announce(a: &AnnounceView) -> String {
    let mut out = format!(
        "announce:    {} (table {}, protocol {}, device {}){}\n",
        if a.drained { "drained" } else { "serving" },
        a.table,
        a.protocol,
        a.device,
        if a.errors == 0 {
            String::new()
        } else {
            format!(
                "; {} failed writes, the last: {}",
                a.errors,
                a.last_error.as_deref().unwrap_or("?")
            )
        }
    );
    for address in &a.addresses {
        out.push_str(&format!(
            "  {:<24} {:<13} {}\n",
            address.address,
            if address.announced {
                "announced"
            } else {
                "not announced"
            },
            address.reason
        ));
    }
    match &a.bird {
        None => {}
        Some(bird) => match &bird.error {
            Some(error) => out.push_str(&format!(
                "routing:     BIRD at {} unreachable: {error}\n",
                bird.socket
            )),
            None => {
                let sessions: Vec<String> = bird.sessions().map(describe_session).collect();
                out.push_str(&format!(
                    "routing:     BIRD at {}: BGP {}\n",
                    bird.socket,
                    if sessions.is_empty() {
                        "none configured".to_owned()
                    } else {
                        sessions.join(", ")
                    }
                ));
            }
        },
    }
    out
}

/// A BGP session as `lb status` shows it: `tor established`, `tor start (Active  Socket:
/// Connection refused)`, or `tor down` (a disabled protocol, of which BIRD says no more).
fn describe_session(s: &RoutingProtocol) -> String {
    if s.is_up() {
        format!("{} established", s.name)
    } else if s.info.trim().is_empty() {
        format!("{} {}", s.name, s.state)
    } else {
        format!("{} {} ({})", s.name, s.state, s.info)
    }
}

fn render_change(change: &ChangeView) -> String {
    format!(
        "{}; listeners updated: {} (applied in {:.1} ms)\n",
        change.summary,
        if change.listeners.is_empty() {
            "none".to_owned()
        } else {
            change.listeners.join(", ")
        },
        change.applied_us as f64 / 1000.0
    )
}

fn render_stats(stats: &StatsView) -> String {
    let mut out = String::new();
    let mut traffic = Table::new(&["LISTENER", "BACKEND", "PACKETS", "BYTES", "NEW FLOWS"]);
    for l in &stats.listeners {
        traffic.row(traffic_row(&l.name, "(all)", &l.traffic));
        for (address, t) in &l.backends {
            traffic.row(traffic_row("", &address.to_string(), t));
        }
    }
    if stats.removed_listeners != Traffic::default() {
        traffic.row(traffic_row(
            "(removed listeners)",
            "",
            &stats.removed_listeners,
        ));
    }
    out.push_str(&traffic.render());
    out.push('\n');
    let mut counters = Table::new(&["COUNTER", "KIND", "VALUE"]);
    for c in &stats.counters {
        counters.row(vec![c.name.clone(), c.kind.clone(), c.value.to_string()]);
    }
    out.push_str(&counters.render());
    for l in &stats.l7 {
        out.push('\n');
        let mut table = Table::new(&["L7 LISTENER", "COUNTER", "VALUE"]);
        table.row(vec![
            format!("{} ({})", l.name, l.mode),
            "open_connections".to_owned(),
            l.open_connections.to_string(),
        ]);
        for (name, value) in l.events.iter().chain(&l.responses) {
            let label = if name.ends_with("xx") {
                format!("responses_{name}")
            } else {
                name.clone()
            };
            table.row(vec![String::new(), label, value.to_string()]);
        }
        out.push_str(&table.render());
    }
    out
}

fn traffic_row(listener: &str, backend: &str, t: &Traffic) -> Vec<String> {
    vec![
        listener.to_owned(),
        backend.to_owned(),
        t.packets.to_string(),
        t.bytes.to_string(),
        t.new_flows.to_string(),
    ]
}

fn render_simulation(s: &SimulationView) -> String {
    let mut out = format!(
        "listener: {}\nbackend:  {} ({})\n",
        s.listener, s.backend, s.reason
    );
    if s.new_connection_backend != s.backend {
        out.push_str(&format!(
            "a new connection (SYN) with this 5-tuple would go to {} (Maglev slot {})\n",
            s.new_connection_backend, s.maglev_slot
        ));
    }
    out
}

fn render_status(s: &StatusView) -> String {
    let join = |pairs: &[(String, u64)]| {
        pairs
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let backends: Vec<(String, u64)> = s
        .backends
        .iter()
        .map(|(state, n)| (state.clone(), u64::try_from(*n).unwrap_or(u64::MAX)))
        .collect();
    let mut out = format!(
        "lb {} up {}s, configuration {}\n",
        s.version,
        s.uptime_secs,
        s.config.as_deref().unwrap_or("(none)")
    );
    out.push_str(&format!(
        "interfaces:  {}\n",
        if s.interfaces.is_empty() {
            "none".to_owned()
        } else {
            s.interfaces.join(", ")
        }
    ));
    out.push_str(&format!("listeners:   {}\n", s.listeners));
    out.push_str(&format!("backends:    {}\n", join(&backends)));
    if s.datapath.is_some() {
        out.push_str(&format!("packets:     {}\n", join(&s.packets)));
    } else {
        out.push_str("packets:     none (no XDP program loaded: L7 listeners only)\n");
    }
    if !s.l7.is_empty() {
        out.push_str(&format!("L7:          {}\n", join(&s.l7)));
    }
    out.push_str(&format!("changes:     {}\n", join(&s.operations)));
    if let Some(d) = &s.datapath {
        out.push_str(&render_datapath(d));
    }
    match &s.announce {
        Some(a) => out.push_str(&render_announce(a)),
        None => out.push_str("announce:    off ([announce] in the configuration)\n"),
    }
    out.push_str(&format!(
        "metrics:     {}\n",
        s.metrics
            .as_deref()
            .unwrap_or("off ([metrics] listen in the configuration)")
    ));
    out
}

/// The datapath lines of `lb status`.
fn render_datapath(d: &crate::control::DatapathView) -> String {
    let interfaces: Vec<String> = d
        .interfaces
        .iter()
        .map(|i| format!("{} ({})", i.name, i.attach_mode))
        .collect();
    let mut out = format!("xdp:         {}\n", interfaces.join(", "));
    out.push_str(&format!(
        "redirects:   {}\n",
        d.redirect_interfaces.join(", ")
    ));
    out.push_str(&format!(
        "conn table:  {} flows per family ({} buckets of {}); inserts {} per CPU a second\n",
        d.conn_table_entries,
        d.conn_table_entries / lb_common::conn::WAYS,
        lb_common::conn::CONN_WAYS,
        if d.conn_inserts_per_sec == 0 {
            "unlimited".to_owned()
        } else {
            format!("at most {}", d.conn_inserts_per_sec)
        }
    ));
    out.push_str(&format!(
        "udp idle:    {}\n",
        if d.udp_idle_timeout_secs == 0 {
            "never expires".to_owned()
        } else {
            format!("{} s", d.udp_idle_timeout_secs)
        }
    ));
    out.push_str(&format!(
        "icmp:        errors to backends {}; too-big answers {}\n",
        if d.icmp_to_backends { "on" } else { "off" },
        if d.icmp_too_big_per_sec == 0 {
            "off".to_owned()
        } else {
            format!("at most {} per CPU a second", d.icmp_too_big_per_sec)
        }
    ));
    out.push_str(&format!("encap from:  {}\n", d.encap_sources.join(", ")));
    if !d.multipath_backends.is_empty() {
        let backends: Vec<String> = d
            .multipath_backends
            .iter()
            .map(ToString::to_string)
            .collect();
        out.push_str(&format!("multipath:   {}\n", backends.join(", ")));
    }
    out
}

/// `lb decap status`: the VIPs it accepts, then every counter.
pub fn decap_status(s: &crate::cli::decap::DecapStatus) -> String {
    let vips: Vec<String> = s.vips.iter().map(ToString::to_string).collect();
    let mut out = format!(
        "lb_decap on {}: accepts {}
",
        s.interface,
        vips.join(", ")
    );
    let mut table = Table::new(&["COUNTER", "PACKETS"]);
    for (name, value) in &s.counters {
        table.row(vec![name.clone(), value.to_string()]);
    }
    out.push_str(&table.render());
    out
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".to_owned();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["wide cell".to_owned(), "x".to_owned()]);
        assert_eq!(t.render(), "A          LONGER\nwide cell  x\n");
    }

    #[test]
    fn sessions_show_bird_s_detail_only_when_it_has_one() {
        let session = |state: &str, info: &str| RoutingProtocol {
            name: "tor".to_owned(),
            kind: "BGP".to_owned(),
            state: state.to_owned(),
            info: info.to_owned(),
        };
        assert_eq!(
            describe_session(&session("up", "Established")),
            "tor established"
        );
        assert_eq!(
            describe_session(&session("start", "Active  Socket: Connection refused")),
            "tor start (Active  Socket: Connection refused)"
        );
        assert_eq!(describe_session(&session("down", "")), "tor down");
    }
}
