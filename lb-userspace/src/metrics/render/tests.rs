//! Tests of [`render`](super::render()): the families, their labels and values, and the
//! well-formedness of the exposition.

use std::collections::BTreeSet;

use super::*;
use crate::metrics::fixtures::sample_input;
use crate::metrics::input::{BackendHealthSample, CounterSample};

/// Checks `text` is a well-formed OpenMetrics exposition: descriptors before their samples,
/// each family described once, sample names of their family, numeric values, `# EOF` last.
/// Returns the sample lines.
fn check_exposition(text: &str) -> Vec<String> {
    let body = text
        .strip_suffix("# EOF\n")
        .expect("the exposition ends with # EOF");
    let mut families = BTreeSet::new();
    let mut family: Option<(String, String)> = None;
    let mut samples = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let (keyword, name) = (words.next().unwrap(), words.next().unwrap());
            let value = words.next().expect("a descriptor has a value");
            assert!(name.starts_with("lb_"), "unprefixed family in {line:?}");
            match keyword {
                "HELP" => assert!(value.ends_with('.'), "help without a full stop: {line:?}"),
                "TYPE" => {
                    assert!(families.insert(name.to_owned()), "{name} described twice");
                    assert!(["counter", "gauge"].contains(&value), "type in {line:?}");
                    family = Some((name.to_owned(), value.to_owned()));
                }
                "UNIT" => assert!(name.ends_with(&format!("_{value}")), "unit in {line:?}"),
                _ => panic!("unknown descriptor {line:?}"),
            }
            continue;
        }
        let (name, kind) = family.as_ref().expect("a sample after its descriptor");
        let expected = if kind == "counter" {
            format!("{name}_total")
        } else {
            name.clone()
        };
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let sample_name = series.split('{').next().unwrap();
        assert_eq!(sample_name, expected, "sample of another family: {line:?}");
        assert!(value.parse::<f64>().is_ok(), "value in {line:?}");
        samples.push(line.to_owned());
    }
    samples
}

fn rendered(input: &MetricsInput) -> String {
    render(input).expect("a snapshot renders")
}

fn assert_has(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "missing line {line:?} in:\n{text}"
    );
}

#[test]
fn sample_input_renders_every_family_with_descriptors() {
    let text = rendered(&sample_input());
    check_exposition(&text);
    for (name, kind) in [
        ("lb_datapath_packets", "counter"),
        ("lb_conn_table_events", "counter"),
        ("lb_listener_packets", "counter"),
        ("lb_listener_bytes", "counter"),
        ("lb_listener_new_flows", "counter"),
        ("lb_backend_packets", "counter"),
        ("lb_backend_bytes", "counter"),
        ("lb_backend_new_flows", "counter"),
        ("lb_backend_health", "gauge"),
        ("lb_backend_health_transitions", "counter"),
        ("lb_control_operations", "counter"),
        ("lb_l7_open_connections", "gauge"),
        ("lb_l7_events", "counter"),
        ("lb_l7_responses", "counter"),
        ("lb_announced", "gauge"),
        ("lb_node_drained", "gauge"),
        ("lb_announce_errors", "counter"),
        ("lb_routing_daemon_up", "gauge"),
        ("lb_bgp_session_up", "gauge"),
        ("lb_table_info", "gauge"),
        ("lb_uptime_seconds", "gauge"),
    ] {
        assert_has(&text, &format!("# TYPE {name} {kind}"));
        let help = format!("# HELP {name} ");
        assert!(text.contains(&help), "no help for {name}");
    }
    assert_has(&text, "# UNIT lb_listener_bytes bytes");
    assert_has(&text, "# UNIT lb_uptime_seconds seconds");
}

#[test]
fn counters_split_into_verdicts_and_events() {
    let text = rendered(&sample_input());
    assert_has(
        &text,
        r#"lb_datapath_packets_total{reason="drop_too_big",kind="drop"} 3"#,
    );
    assert_has(
        &text,
        r#"lb_datapath_packets_total{reason="tx_local",kind="forward"} 1000"#,
    );
    assert_has(
        &text,
        r#"lb_datapath_packets_total{reason="pass_not_vip",kind="pass"} 42"#,
    );
    assert_has(&text, r#"lb_conn_table_events_total{event="conn_miss"} 17"#);
    assert!(
        !text.contains(r#"reason="conn_miss""#),
        "an event counted as a verdict"
    );
}

#[test]
fn traffic_per_listener_and_backend() {
    let text = rendered(&sample_input());
    assert_has(&text, r#"lb_listener_packets_total{listener="https"} 1000"#);
    assert_has(&text, r#"lb_listener_bytes_total{listener="https"} 64000"#);
    assert_has(&text, r#"lb_listener_new_flows_total{listener="dns"} 0"#);
    assert_has(
        &text,
        r#"lb_backend_packets_total{listener="https",backend="198.18.1.10"} 600"#,
    );
    assert_has(
        &text,
        r#"lb_backend_bytes_total{listener="https",backend="198.18.1.11:8443"} 25600"#,
    );
    assert_has(
        &text,
        r#"lb_backend_new_flows_total{listener="dns",backend="2001:db8::10"} 0"#,
    );
}

#[test]
fn health_is_one_for_the_current_state_and_zero_for_the_others() {
    let text = rendered(&sample_input());
    let backend = r#"pool="web",backend="198.18.1.11:8443""#;
    assert_has(
        &text,
        &format!(r#"lb_backend_health{{{backend},state="unhealthy"}} 1"#),
    );
    for other in ["healthy", "draining", "disabled"] {
        assert_has(
            &text,
            &format!(r#"lb_backend_health{{{backend},state="{other}"}} 0"#),
        );
    }
    let transitions = "lb_backend_health_transitions_total";
    assert_has(
        &text,
        &format!(r#"{transitions}{{{backend},to="unhealthy"}} 2"#),
    );
    assert_has(
        &text,
        &format!(r#"{transitions}{{{backend},to="healthy"}} 1"#),
    );
    assert_has(
        &text,
        &format!(r#"{transitions}{{{backend},to="disabled"}} 0"#),
    );
    let health_samples = text.lines().filter(|l| l.starts_with("lb_backend_health{"));
    assert_eq!(health_samples.count(), 3 * HealthState::ALL.len());
}

#[test]
fn operations_and_uptime() {
    let text = rendered(&sample_input());
    assert_has(
        &text,
        r#"lb_control_operations_total{operation="backend-add",result="refused"} 1"#,
    );
    assert_has(
        &text,
        r#"lb_control_operations_total{operation="backend-set-weight",result="failed"} 1"#,
    );
    assert_has(&text, "lb_uptime_seconds 12.5");
}

#[test]
fn l7_listeners_connections_events_and_responses() {
    let text = rendered(&sample_input());
    assert_has(&text, r#"lb_l7_open_connections{listener="web"} 7"#);
    assert_has(
        &text,
        r#"lb_l7_events_total{listener="web",event="retries"} 2"#,
    );
    assert_has(
        &text,
        r#"lb_l7_responses_total{listener="web",class="5xx"} 2"#,
    );
}

#[test]
fn announcements_and_bgp_sessions() {
    let text = rendered(&sample_input());
    assert_has(&text, r#"lb_announced{address="198.18.100.1"} 1"#);
    assert_has(&text, r#"lb_announced{address="2001:db8:100::1"} 0"#);
    assert_has(&text, "lb_node_drained 0");
    assert_has(&text, "lb_announce_errors_total 1");
    assert_has(&text, "lb_routing_daemon_up 1");
    assert_has(&text, r#"lb_bgp_session_up{protocol="tor2"} 0"#);
    assert_has(
        &text,
        r#"lb_table_info{listener="https",digest="0123456789abcdef"} 1"#,
    );
}

#[test]
fn samples_are_sorted_and_repeated_label_sets_merged() {
    let mut input = sample_input();
    input.counters.push(CounterSample {
        name: "drop_too_big".to_owned(),
        kind: "drop".to_owned(),
        value: 4,
    });
    let text = rendered(&input);
    let samples = check_exposition(&text);
    assert_has(
        &text,
        r#"lb_datapath_packets_total{reason="drop_too_big",kind="drop"} 7"#,
    );
    let verdicts: Vec<_> = samples
        .iter()
        .filter(|l| l.starts_with("lb_datapath_packets_total"))
        .collect();
    let mut sorted = verdicts.clone();
    sorted.sort();
    assert_eq!(verdicts, sorted, "samples in label order");
    assert_eq!(
        text,
        rendered(&input),
        "the same snapshot renders the same text"
    );
}

#[test]
fn label_values_are_escaped() {
    let mut input = MetricsInput::default();
    input.backends.push(BackendHealthSample {
        pool: "we\"b\\".to_owned(),
        backend: "198.18.1.10".to_owned(),
        state: HealthState::Disabled,
        transitions: vec![(HealthState::Disabled, 1)],
    });
    let text = rendered(&input);
    check_exposition(&text);
    assert_has(
        &text,
        r#"lb_backend_health{pool="we\"b\\",backend="198.18.1.10",state="disabled"} 1"#,
    );
}

#[test]
fn an_empty_snapshot_is_a_valid_exposition() {
    let text = rendered(&MetricsInput::default());
    let samples = check_exposition(&text);
    assert_eq!(samples, ["lb_uptime_seconds 0.0"]);
}
