//! The datapath's counters as the demo shows them: read with `lb stats --json` (the CLI the
//! operator uses), parsed into [`StatsView`], and summed into the few that tell the story:
//! packets forwarded, new flows (connection-table misses), connection-table hits, packets left
//! to the kernel, drops.

use std::net::IpAddr;

use lb_common::counters::{Counter, CounterKind};

use super::{DemoError, run_cli};
use crate::cli::render::Table;
use crate::control::{Body, StatsView, Traffic};
use crate::lab::daemon::DaemonProcess;

/// `lb stats --json`, parsed.
pub fn fetch(daemon: &DaemonProcess) -> Result<StatsView, DemoError> {
    let args = ["stats", "--json"];
    let json = run_cli(daemon, &args)?;
    let answer = |reason: String| DemoError::CliAnswer {
        command: args.join(" "),
        reason,
    };
    match serde_json::from_str::<Body>(&json) {
        Ok(Body::Stats(stats)) => Ok(stats),
        Ok(other) => Err(answer(format!("not statistics: {other:?}"))),
        Err(error) => Err(answer(error.to_string())),
    }
}

/// The value of the counter labelled `counter`, 0 if the daemon did not report it.
pub fn counter(stats: &StatsView, counter: Counter) -> u64 {
    stats
        .counters
        .iter()
        .find(|c| c.name == counter.label())
        .map_or(0, |c| c.value)
}

/// The traffic listener `listener` sent to `backend`.
pub fn backend_traffic(stats: &StatsView, listener: &str, backend: IpAddr) -> Traffic {
    stats
        .listeners
        .iter()
        .filter(|l| l.name == listener)
        .flat_map(|l| l.backends.iter())
        .find(|(address, _)| *address == backend)
        .map(|(_, traffic)| *traffic)
        .unwrap_or_default()
}

/// The counters that matter, with what they mean.
pub fn render_counters(stats: &StatsView) -> String {
    let sum = |kind: CounterKind| -> u64 {
        Counter::ALL
            .iter()
            .filter(|c| c.kind() == kind)
            .map(|&c| counter(stats, c))
            .sum()
    };
    let mut table = Table::new(&["XDP COUNTER (lb stats)", "VALUE", "WHAT IT COUNTS"]);
    let rows = [
        (
            "forwarded",
            sum(CounterKind::Forward),
            "packets encapsulated and sent to a backend (tx_local + tx_redirect)".to_owned(),
        ),
        (
            "conn_miss",
            counter(stats, Counter::ConnMiss),
            "new flows (SYNs), placed by the Maglev table".to_owned(),
        ),
        (
            "conn_hit",
            counter(stats, Counter::ConnHit),
            "packets of established flows, found in the connection table".to_owned(),
        ),
        (
            "passed",
            sum(CounterKind::Pass),
            format!("left to the kernel: {}", nonzero(stats, CounterKind::Pass)),
        ),
        (
            "dropped",
            sum(CounterKind::Drop),
            format!(
                "malformed, no backend, too big...: {}",
                nonzero(stats, CounterKind::Drop)
            ),
        ),
    ];
    for (name, value, meaning) in rows {
        table.row(vec![name.to_owned(), value.to_string(), meaning]);
    }
    table.render()
}

/// The non-zero counters of one kind (`pass_not_vip 32, ...`), or "none".
fn nonzero(stats: &StatsView, kind: CounterKind) -> String {
    let reasons: Vec<String> = Counter::ALL
        .iter()
        .filter(|c| c.kind() == kind)
        .map(|&c| (c.label(), counter(stats, c)))
        .filter(|&(_, value)| value > 0)
        .map(|(label, value)| format!("{label} {value}"))
        .collect();
    if reasons.is_empty() {
        return "none".to_owned();
    }
    reasons.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::CounterView;

    fn stats(values: &[(Counter, u64)]) -> StatsView {
        StatsView {
            counters: values
                .iter()
                .map(|&(c, value)| CounterView {
                    name: c.label().to_owned(),
                    kind: "any".to_owned(),
                    value,
                })
                .collect(),
            listeners: Vec::new(),
            removed_listeners: Default::default(),
            l7: Vec::new(),
        }
    }

    #[test]
    fn counters_are_summed_by_kind_and_nonzero_reasons_named() {
        let view = stats(&[
            (Counter::TxLocal, 90),
            (Counter::TxRedirect, 10),
            (Counter::ConnMiss, 7),
            (Counter::DropTooBig, 2),
            (Counter::DropFragment, 1),
        ]);
        let text = render_counters(&view);
        let rows: Vec<String> = text
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        for expected in [
            "forwarded 100 packets encapsulated and sent to a backend (tx_local + tx_redirect)",
            "conn_miss 7 new flows (SYNs), placed by the Maglev table",
            "passed 0 left to the kernel: none",
            "dropped 3 malformed, no backend, too big...: drop_fragment 1, drop_too_big 2",
        ] {
            assert!(
                rows.iter().any(|row| row == expected),
                "{expected:?} in\n{text}"
            );
        }
    }
}
