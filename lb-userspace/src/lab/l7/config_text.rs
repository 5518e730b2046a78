//! L7 configurations written as TOML text, for the lab's tests and the benchmarks: one writer
//! of the tables they serve, so that a test or a benchmark says only what differs.
//!
//! - [`pool_toml`]: `[pools.NAME]` with its members (address, port, `server_name`);
//! - [`ListenerToml`]: `[listeners.NAME]` (on 127.0.0.1 unless told otherwise) in `offload` or
//!   `bridging` mode, its certificates, cookie key file, and the caller's own lines for each of
//!   its tables.
//!
//! Data flow: pool members and a [`ListenerToml`] -> text -> `Config::parse` (by the lab's
//! `L7Lab::start`, or the daemon the benchmark starts).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

/// `[pools.NAME]` with `members`: each an address and port, and its `server_name` if any.
pub fn pool_toml(name: &str, members: &[(SocketAddr, Option<String>)]) -> String {
    let members: Vec<String> = members
        .iter()
        .map(|(address, server_name)| {
            let server_name = server_name
                .as_ref()
                .map_or_else(String::new, |n| format!(", server_name = {}", quoted(n)));
            format!(
                "{{ address = \"{}\", port = {}{server_name} }}",
                address.ip(),
                address.port()
            )
        })
        .collect();
    format!("[pools.{name}]\nbackends = [{}]\n", members.join(", "))
}

/// An L7 listener: its address, mode, pool, certificates and cookie keys, and further TOML lines
/// for each of its tables.
#[derive(Clone, Debug)]
pub struct ListenerToml {
    /// 127.0.0.1 unless set.
    pub address: IpAddr,
    /// `offload` or `bridging`.
    pub mode: &'static str,
    pub pool: String,
    /// (cert, key) files, the first the default.
    pub certificates: Vec<(PathBuf, PathBuf)>,
    /// `[listeners.NAME.sticky] key_file`: cookie stickiness with these keys.
    pub sticky_keys: Option<PathBuf>,
    /// Lines of `[listeners.NAME]`, `.tls`, `.http`, `.backend` and `.sticky`; the last three
    /// tables are written only if they have lines (`.sticky` also if it has a key file).
    pub listener: Vec<String>,
    pub tls: Vec<String>,
    pub http: Vec<String>,
    pub backend: Vec<String>,
    pub sticky: Vec<String>,
}

impl ListenerToml {
    /// A listener on 127.0.0.1 in `mode` (`offload` or `bridging`) in front of `pool`, with
    /// nothing else yet.
    pub fn new(mode: &'static str, pool: &str) -> Self {
        Self {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            mode,
            pool: pool.to_owned(),
            certificates: Vec::new(),
            sticky_keys: None,
            listener: Vec::new(),
            tls: Vec::new(),
            http: Vec::new(),
            backend: Vec::new(),
            sticky: Vec::new(),
        }
    }

    /// `[listeners.{name}]` and its tables, the listener on `port` of its address.
    pub fn text(&self, name: &str, port: u16) -> String {
        let certificates: Vec<String> = self
            .certificates
            .iter()
            .map(|(cert, key)| {
                format!(
                    "{{ cert = {}, key = {} }}",
                    quoted_path(cert),
                    quoted_path(key)
                )
            })
            .collect();
        let mut text = format!(
            "\n[listeners.{name}]\naddress = \"{}\"\nport = {port}\nmode = \"{}\"\n\
             pool = {}\n",
            self.address,
            self.mode,
            quoted(&self.pool)
        );
        push_lines(&mut text, &self.listener);
        text.push_str(&format!(
            "\n[listeners.{name}.tls]\ncertificates = [{}]\n",
            certificates.join(", ")
        ));
        push_lines(&mut text, &self.tls);
        let mut sticky = self.sticky.clone();
        if let Some(keys) = &self.sticky_keys {
            sticky.insert(0, format!("key_file = {}", quoted_path(keys)));
        }
        for (table, lines) in [
            ("http", &self.http),
            ("backend", &self.backend),
            ("sticky", &sticky),
        ] {
            if !lines.is_empty() {
                text.push_str(&format!("\n[listeners.{name}.{table}]\n"));
                push_lines(&mut text, lines);
            }
        }
        text
    }
}

fn push_lines(text: &mut String, lines: &[String]) {
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
}

/// `text` as a TOML basic string.
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// `path` as a TOML basic string.
pub fn quoted_path(path: &Path) -> String {
    quoted(&path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_listener_and_its_pool_parse_as_written() {
        let mut listener = ListenerToml::new("bridging", "app");
        listener
            .certificates
            .push(("/a b/c.pem".into(), "k.key".into()));
        listener.sticky_keys = Some("sticky \"keys\"".into());
        listener.sticky.push("duration = \"1h\"".to_owned());
        listener.backend.push("ca_file = \"ca.pem\"".to_owned());
        let members = [
            ("127.0.0.1:8080".parse().expect("an address"), None),
            (
                "127.0.0.1:8443".parse().expect("an address"),
                Some("b.example".to_owned()),
            ),
        ];
        let text = pool_toml("app", &members) + &listener.text("web", 9443);
        let config = Config::parse(&text, "lab.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        let web = &config.listeners["web"];
        assert_eq!(web.port, 9443, "{text}");
        let l7 = web.l7.as_ref().expect("an L7 listener");
        let sticky = l7.sticky.as_ref().expect("stickiness");
        assert_eq!(sticky.key_file, Path::new("sticky \"keys\""));
        assert_eq!(config.pools["app"].backends.len(), 2, "{text}");
    }
}
