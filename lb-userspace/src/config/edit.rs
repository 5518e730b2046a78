//! Changes to a validated [`Config`] made at run time (the control API's backend commands).
//! A change yields a new `Config` that obeys the same rules as a file (the same checks decide),
//! or an error that says why; the old `Config` is untouched either way.

use std::net::IpAddr;

use super::{
    BackendConfig, Config, ConfigError, Problem,
    validate::{WEIGHT_RANGE, duplicate_of, pool_conflicts},
};

/// A change to one pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolEdit {
    Add(BackendConfig),
    Remove {
        address: IpAddr,
        port: Option<u16>,
    },
    SetWeight {
        address: IpAddr,
        port: Option<u16>,
        weight: u32,
    },
}

impl Config {
    /// The configuration with `edit` applied to pool `pool`, if it is valid.
    pub fn edit_pool(&self, pool: &str, edit: &PoolEdit) -> Result<Config, ConfigError> {
        let mut next = self.clone();
        let Some(backends) = next.pools.get_mut(pool).map(|p| &mut p.backends) else {
            return Err(rejected(format!(
                "no pool is named {pool:?}; `lb listener list` shows the pools"
            )));
        };
        match edit {
            PoolEdit::Add(backend) => {
                check_weight(backend.weight)?;
                if let Some(name) = &backend.server_name
                    && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
                {
                    return Err(rejected(format!(
                        "{name:?} is not a DNS name or an IP address"
                    )));
                }
                if duplicate_of(backends, backend).is_some() {
                    return Err(rejected(format!(
                        "{} is already in pool {pool:?}",
                        describe(backend.address, backend.port)
                    )));
                }
                backends.push(backend.clone());
            }
            PoolEdit::Remove { address, port } => {
                let i = position(backends, pool, *address, *port)?;
                backends.remove(i);
            }
            PoolEdit::SetWeight {
                address,
                port,
                weight,
            } => {
                // 0 is allowed here, not in a file or on add: it drains a backend in the pool.
                if *weight != 0 {
                    check_weight(*weight)?;
                }
                let i = position(backends, pool, *address, *port)?;
                backends[i].weight = *weight;
            }
        }
        let problems: Vec<String> = next
            .listeners
            .iter()
            .filter(|(_, l)| l.uses_pool(pool))
            .flat_map(|(name, l)| {
                pool_conflicts(l, &next.pools[pool])
                    .into_iter()
                    .map(move |reason| format!("listener {name:?}: {reason}"))
            })
            .collect();
        if !problems.is_empty() {
            return Err(ConfigError {
                problems: problems.into_iter().map(problem).collect(),
            });
        }
        Ok(next)
    }
}

fn check_weight(weight: u32) -> Result<(), ConfigError> {
    let (min, max) = WEIGHT_RANGE;
    if i64::from(weight) < min || i64::from(weight) > max {
        return Err(rejected(format!(
            "weight {weight} is out of range ({min} to {max})"
        )));
    }
    Ok(())
}

fn position(
    backends: &[BackendConfig],
    pool: &str,
    address: IpAddr,
    port: Option<u16>,
) -> Result<usize, ConfigError> {
    backends
        .iter()
        .position(|b| b.address == address && b.port == port)
        .ok_or_else(|| {
            rejected(format!(
                "{} is not in pool {pool:?}; `lb backend list` shows its backends",
                describe(address, port)
            ))
        })
}

/// `address` or `address:port`, as the CLI writes backends.
pub fn describe(address: IpAddr, port: Option<u16>) -> String {
    match port {
        Some(port) => std::net::SocketAddr::new(address, port).to_string(),
        None => address.to_string(),
    }
}

fn problem(reason: String) -> Problem {
    Problem {
        location: "change".to_owned(),
        field: String::new(),
        reason,
    }
}

fn rejected(reason: String) -> ConfigError {
    ConfigError {
        problems: vec![problem(reason)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = include_str!("../../tests/configs/good/full.toml");

    fn config() -> Config {
        Config::parse(FULL, "full.toml").unwrap()
    }

    fn backend(address: &str, port: Option<u16>, weight: u32) -> BackendConfig {
        BackendConfig {
            address: address.parse().unwrap(),
            port,
            weight,
            server_name: None,
        }
    }

    #[test]
    fn a_valid_edit_yields_a_new_config_and_leaves_the_old_one() {
        let old = config();
        let new = old
            .edit_pool("web", &PoolEdit::Add(backend("198.18.1.13", None, 4)))
            .unwrap();
        assert_eq!(
            new.pools["web"].backends.len(),
            old.pools["web"].backends.len() + 1
        );
        let removed = new
            .edit_pool(
                "web",
                &PoolEdit::Remove {
                    address: "198.18.1.10".parse().unwrap(),
                    port: None,
                },
            )
            .unwrap();
        assert!(
            removed.pools["web"]
                .backends
                .iter()
                .all(|b| b.address.to_string() != "198.18.1.10")
        );
        let weighted = removed
            .edit_pool(
                "web",
                &PoolEdit::SetWeight {
                    address: "198.18.1.13".parse().unwrap(),
                    port: None,
                    weight: 9,
                },
            )
            .unwrap();
        assert_eq!(weighted.pools["web"].backends.last().unwrap().weight, 9);
        let drained = weighted
            .edit_pool(
                "web",
                &PoolEdit::SetWeight {
                    address: "198.18.1.13".parse().unwrap(),
                    port: None,
                    weight: 0,
                },
            )
            .unwrap();
        assert_eq!(drained.pools["web"].backends.last().unwrap().weight, 0);
    }

    #[test]
    fn invalid_edits_say_why() {
        let c = config();
        let cases = [
            (
                "nope",
                PoolEdit::Add(backend("198.18.1.13", None, 1)),
                "no pool is named \"nope\"",
            ),
            (
                "web",
                PoolEdit::Add(backend("198.18.1.10", None, 1)),
                "198.18.1.10 is already in pool \"web\"",
            ),
            (
                "web",
                PoolEdit::Add(backend("198.18.1.13", None, 0)),
                "weight 0 is out of range",
            ),
            (
                "web",
                PoolEdit::Add(backend("2001:db8::9", None, 1)),
                "not of the listener's address family",
            ),
            (
                "web",
                PoolEdit::Add(backend("198.18.1.13", Some(8443), 1)),
                "passthrough forwards packets unchanged",
            ),
            (
                "web",
                PoolEdit::Remove {
                    address: "198.18.1.99".parse().unwrap(),
                    port: None,
                },
                "198.18.1.99 is not in pool \"web\"",
            ),
            (
                "web",
                PoolEdit::SetWeight {
                    address: "198.18.1.10".parse().unwrap(),
                    port: None,
                    weight: 10_001,
                },
                "weight 10001 is out of range",
            ),
        ];
        for (pool, edit, expected) in cases {
            let error = c.edit_pool(pool, &edit).unwrap_err().to_string();
            assert!(error.contains(expected), "{edit:?}: {error}");
        }
    }
}
