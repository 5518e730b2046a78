use super::*;

fn config(text: &str) -> Config {
    Config::parse(text, "test.toml").expect("a valid configuration")
}

const PASSTHROUGH: &str = r#"
[datapath]
interfaces = ["eth0"]
[pools.p]
backends = [{ address = "198.18.1.10" }]
[listeners.l]
address = "198.18.100.1"
port = 443
mode = "passthrough"
pool = "p"
"#;

/// An offload listener on `port`, with `extra` lines in its table.
fn offload(port: u16, extra: &str) -> String {
    format!(
        r#"
[pools.app]
backends = [{{ address = "198.18.1.10", port = 8080 }}]
[listeners.web]
address = "198.18.100.1"
port = {port}
mode = "offload"
pool = "app"
{extra}
[listeners.web.tls]
certificates = [{{ cert = "/etc/lb/www.pem", key = "/etc/lb/www.key" }}]
"#
    )
}

fn caps(needs: &[Need]) -> Vec<Cap> {
    needs.iter().map(|n| n.cap).collect()
}

#[test]
fn a_packet_path_starts_with_bpf_net_admin_and_perfmon_and_keeps_net_admin() {
    let plan = Plan::new(&config(PASSTHROUGH), false, 1024);
    assert_eq!(caps(&plan.start), [Cap::BPF, Cap::NET_ADMIN, Cap::PERFMON]);
    assert_eq!(caps(&plan.keep), [Cap::NET_ADMIN]);
    // The passthrough port 443 is the XDP program's: nothing binds it.
    assert!(!plan.start_set().has(Cap::NET_BIND_SERVICE));

    let old_kernel = Plan::new(&config(PASSTHROUGH), true, 1024);
    assert_eq!(caps(&old_kernel.keep), [Cap::NET_ADMIN, Cap::BPF]);
}

#[test]
fn l7_listeners_below_the_unprivileged_ports_keep_net_bind_service() {
    let high = Plan::new(&config(&offload(8443, "")), false, 1024);
    assert_eq!(
        high,
        Plan::default(),
        "an L7 listener on 8443 needs nothing"
    );

    let low = Plan::new(&config(&offload(443, "")), false, 1024);
    assert_eq!(caps(&low.start), [Cap::NET_BIND_SERVICE]);
    assert_eq!(caps(&low.keep), [Cap::NET_BIND_SERVICE]);

    let redirect = Plan::new(
        &config(&offload(8443, "redirect_http_port = 80")),
        false,
        1024,
    );
    assert_eq!(caps(&redirect.keep), [Cap::NET_BIND_SERVICE]);
    assert!(redirect.start[0].why.contains("port 80"), "{redirect:?}");

    // Where the namespace lets anyone bind low ports, nothing is needed.
    assert_eq!(
        Plan::new(&config(&offload(443, "")), false, 0),
        Plan::default()
    );
}

#[test]
fn a_low_metrics_port_is_needed_to_start_only() {
    let text = format!(
        "[metrics]\nlisten = \"127.0.0.1:99\"\n{}",
        offload(8443, "")
    );
    let plan = Plan::new(&config(&text), false, 1024);
    assert_eq!(caps(&plan.start), [Cap::NET_BIND_SERVICE]);
    assert!(plan.keep.is_empty(), "{plan:?}");
}

#[test]
fn sys_admin_stands_in_for_bpf_and_perfmon_only() {
    let admin = CapSet::of([Cap::SYS_ADMIN]);
    assert!(satisfies(admin, Cap::BPF));
    assert!(satisfies(admin, Cap::PERFMON));
    assert!(!satisfies(admin, Cap::NET_ADMIN));
    assert!(satisfies(CapSet::of([Cap::NET_ADMIN]), Cap::NET_ADMIN));
}

#[test]
fn the_bpf_question_gets_an_answer_without_changing_this_thread() {
    let before = caps::get().expect("capget");
    // Kernel-dependent: true before Linux 6.5 with unprivileged BPF disabled.
    let _ = bpf_checks_every_call();
    assert_eq!(caps::get().expect("capget"), before);
}

#[test]
fn a_socket_group_the_daemon_is_not_in_takes_cap_chown_to_start() {
    let plan = Plan::default().with_socket_group(Some(4_294_000_000));
    assert_eq!(caps(&plan.start), [Cap::CHOWN]);
    assert!(plan.keep.is_empty());
    // SAFETY: getegid has no preconditions.
    let own = unsafe { libc::getegid() };
    assert_eq!(
        Plan::default().with_socket_group(Some(own)),
        Plan::default()
    );
    assert_eq!(Plan::default().with_socket_group(None), Plan::default());
}
