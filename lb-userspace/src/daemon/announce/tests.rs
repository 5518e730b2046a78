//! The announcement verdicts and the `[announce]` settings.

use std::time::Instant;

use super::*;
use crate::{daemon::runtime::BackendKey, health::state::Outcome};

const CONFIG: &str = r#"
[datapath]
interfaces = ["eth0"]
ring_size = 1009
encap_source_v4 = "198.18.255.0/24"

[announce]

[pools.web]
backends = [{ address = "198.18.1.1" }, { address = "198.18.1.2" }]

[pools.web.health_check]
interval = "1s"
timeout = "500ms"
healthy_threshold = 2
unhealthy_threshold = 2

[pools.spare]
backends = [{ address = "198.18.1.3" }]
health_check = false

[listeners.https]
address = "198.18.100.1"
port = 443
mode = "passthrough"
pool = "web"

[listeners.dns]
address = "198.18.100.1"
port = 53
protocol = "udp"
mode = "passthrough"
pool = "spare"

[listeners.other]
address = "198.18.100.2"
port = 443
mode = "passthrough"
pool = "web"
"#;

fn setup(text: &str) -> (Config, Runtime, Instant) {
    let config = Config::parse(text, "test.toml").unwrap();
    let now = Instant::now();
    let mut runtime = Runtime::default();
    runtime.sync(&config, now, false);
    (config, runtime, now)
}

/// `times` outcomes of one backend of pool `web` (thresholds of 2).
fn observe(runtime: &mut Runtime, config: &Config, address: &str, outcome: &Outcome, times: usize) {
    let key = BackendKey {
        pool: "web".to_owned(),
        address: address.parse().unwrap(),
        port: None,
    };
    for _ in 0..times {
        runtime.observe(&key, outcome, Instant::now(), &config.pools["web"]);
    }
}

fn announced(verdicts: &BTreeMap<IpAddr, Verdict>) -> Vec<String> {
    verdicts
        .iter()
        .filter(|(_, v)| v.announce)
        .map(|(a, _)| a.to_string())
        .collect()
}

#[test]
fn the_settings_have_defaults_and_bad_ones_are_refused() {
    let (config, _, _) = setup(CONFIG);
    let settings = config.announce.unwrap();
    assert_eq!(
        (settings.table, settings.protocol, settings.device.as_str()),
        (200, 200, "lbvip0")
    );
    assert_eq!(settings.drain_wait, Duration::from_secs(5));
    for (line, expected) in [
        ("table = 254", "kernel's own tables"),
        ("table = 0", "out of range"),
        ("protocol = 3", "kernel's own protocol numbers"),
        ("protocol = 256", "out of range"),
        ("protocol = 12", "BIRD's own"),
        ("device = \"lb%d\"", "not an interface name"),
        ("device = \"..\"", "not an interface name"),
        ("device = \"a/b\"", "not an interface name"),
        ("drain_wait = \"11m\"", "out of range"),
        ("bird_socket = \"bird.ctl\"", "not an absolute path"),
        ("speaker = \"bgp\"", "unknown field"),
    ] {
        let text = CONFIG.replace("[announce]", &format!("[announce]\n{line}"));
        let error = Config::parse(&text, "test.toml").unwrap_err().to_string();
        assert!(error.contains(expected), "{line}: {error}");
    }
}

/// Nothing announced yet.
fn none() -> BTreeSet<IpAddr> {
    BTreeSet::new()
}

/// Both addresses announced already (their health checks do not hold them back).
fn both() -> BTreeSet<IpAddr> {
    BTreeSet::from([
        "198.18.100.1".parse().unwrap(),
        "198.18.100.2".parse().unwrap(),
    ])
}

#[test]
fn an_address_not_announced_waits_for_the_health_checks() {
    let (config, mut runtime, _) = setup(CONFIG);
    let other: IpAddr = "198.18.100.2".parse().unwrap();
    let waiting = verdicts(&config, &runtime, true, &none());
    // 198.18.100.1 also has the unchecked pool `spare`: it can serve at once.
    assert_eq!(announced(&waiting), ["198.18.100.1"]);
    assert!(
        waiting[&other]
            .reason
            .contains("waiting for the health checks of 2 backend(s)")
    );
    // Already announced (by this daemon, or a predecessor that handed it over): it stays.
    let held = BTreeSet::from([other]);
    assert_eq!(
        announced(&verdicts(&config, &runtime, true, &held)).len(),
        2
    );
    observe(&mut runtime, &config, "198.18.1.1", &Outcome::Pass, 1);
    let refused = Outcome::Unreachable("refused".to_owned());
    observe(&mut runtime, &config, "198.18.1.2", &refused, 1);
    assert!(
        verdicts(&config, &runtime, true, &none())[&other]
            .reason
            .contains("of 1 backend(s)"),
        "one passed; one failure of two is not known yet"
    );
    observe(&mut runtime, &config, "198.18.1.2", &refused, 1);
    let all = verdicts(&config, &runtime, true, &none());
    assert_eq!(
        announced(&all),
        ["198.18.100.1", "198.18.100.2"],
        "unhealthy is known too"
    );
}

#[test]
fn an_address_needs_a_healthy_backend_and_a_running_interface() {
    let (config, mut runtime, _) = setup(CONFIG);
    let dead = Outcome::Unreachable("refused".to_owned());
    observe(&mut runtime, &config, "198.18.1.1", &dead, 2);
    assert_eq!(
        announced(&verdicts(&config, &runtime, true, &both())).len(),
        2,
        "one healthy backend is enough"
    );
    // Both failed: the pool fails open (its table keeps them), yet the node stops announcing.
    observe(&mut runtime, &config, "198.18.1.2", &dead, 2);
    let failed = verdicts(&config, &runtime, true, &both());
    assert_eq!(
        announced(&failed),
        ["198.18.100.1"],
        "the UDP listener still serves it"
    );
    assert!(
        failed[&"198.18.100.2".parse().unwrap()]
            .reason
            .contains("no healthy backend in pool \"web\"")
    );
    let down = verdicts(&config, &runtime, false, &both());
    assert!(announced(&down).is_empty());
    assert!(
        down[&"198.18.100.1".parse().unwrap()]
            .reason
            .contains("no XDP interface is running (eth0)")
    );
}

#[test]
fn draining_backends_do_not_count() {
    let (config, mut runtime, now) = setup(CONFIG);
    let before = verdicts(&config, &runtime, true, &both());
    assert_eq!(announced(&before).len(), 2);
    // The first listener on the address that can serve decides.
    assert_eq!(
        before[&"198.18.100.1".parse().unwrap()].reason,
        "listener \"dns\" can serve"
    );
    for address in ["198.18.1.1", "198.18.1.2"] {
        let key = BackendKey {
            pool: "web".to_owned(),
            address: address.parse().unwrap(),
            port: None,
        };
        runtime.drain(&key, now + Duration::from_secs(60), "test".to_owned());
    }
    assert_eq!(
        announced(&verdicts(&config, &runtime, true, &both())),
        ["198.18.100.1"],
        "only the UDP listener's pool takes new flows"
    );
}
