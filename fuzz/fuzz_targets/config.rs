//! The configuration file parser, as `lb check` and `lb run` use it: text -> TOML -> raw
//! structs -> a validated `Config`, or errors naming the line and the field.
//!
//! Passes when no text panics, and a `Config` that validates can be used: its passthrough
//! listeners, ring geometry, datapath entry and health targets are computed without a panic
//! (they index pools by name and subtract prefix lengths that validation is meant to bound).
//!
//! The parser reads one file by name, an https health check's `ca_file`; texts naming the
//! kernel's endless or special files (`/dev`, `/proc`, `/sys`) are skipped: reading them is
//! what an operator asked for, not a parser bug.

#![no_main]

use lb::config::{Config, HostDefaults};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if ["/dev", "/proc", "/sys"]
        .iter()
        .any(|dir| text.contains(dir))
    {
        return;
    }
    match Config::parse(text, "fuzz.toml") {
        Ok(config) => use_config(&config),
        Err(error) => {
            // Every error renders (Display walks the problems).
            let _ = error.to_string();
        }
    }
});

/// What the daemon computes from a validated configuration.
fn use_config(config: &Config) {
    let _ = config.passthrough_listeners();
    let _ = config.ring_geometry();
    let host = HostDefaults {
        mtu: 1500,
        ingress_mtu: 1500,
        encap_source_v4: Some(std::net::Ipv4Addr::new(198, 18, 0, 1)),
        encap_source_v6: Some(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    };
    let _ = config.datapath_config(&host);
    for listener in config.listeners.values() {
        let _ = listener.vip();
        let _ = listener.bound_vips();
    }
    for (name, pool) in &config.pools {
        for backend in &pool.backends {
            let _ = config.health_target(name, backend);
        }
    }
}
