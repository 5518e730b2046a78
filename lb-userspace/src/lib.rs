//! The `lb` library: everything the `lb` binary does, as modules that tests can drive.
//!
//! Dependency direction: `config` -> `state` -> `reconcile` -> `datapath`. The datapath is
//! reached only through the [`datapath::Datapath`] trait (aya maps, or an in-memory fake), so
//! everything above it is tested without root.
//!
//! - [`maglev`]: the consistent-hashing table, pure;
//! - [`state`]: listeners and backends as plain values;
//! - [`reconcile`]: writes the maps to match a state, table flips and all;
//! - [`datapath`]: the maps behind a trait;
//! - [`loader`]: loads the eBPF objects, pins the maps, attaches XDP;
//! - [`objects`]: the eBPF objects embedded at build time;
//! - [`pin_dir`]: `lb uninstall`'s removal of the pin directory, only if it is lb's;
//! - [`model`]: the datapath's choice predicted in userspace (`lb simulate`);
//! - [`config`]: the configuration file, validated, and changes to it;
//! - [`daemon`]: `lb run`, which owns the datapath; its controller answers the [`control`] API;
//! - [`cli`]: the command line and its output;
//! - [`health`]: backend health probes and the health state machine;
//! - [`metrics`]: the Prometheus endpoint;
//! - [`capture`]: `lb capture`, packets as the balancer handles them, to a pcapng file.
//!
//! Behind the `lab` feature (on by default; the Debian package is built without it, so the
//! daemon it ships links none of this):
//!
//! - `lab`: network namespaces, veths, a test PKI and real TLS and HTTP servers and clients
//!   for tests, demo and benchmarks;
//! - `demo`: `lb demo`, the balancer at work in a lab, for a newcomer;
//! - `bench`: `lb bench xdp` and `lb bench l7`, with their SVG charts.

#[cfg(feature = "lab")]
pub mod bench;
pub mod capture;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
#[cfg(feature = "lab")]
pub mod demo;
pub mod health;
pub mod host;
pub mod interrupt;
pub mod l7;
#[cfg(feature = "lab")]
pub mod lab;
pub mod loader;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod objects;
pub mod pin_dir;
pub mod reconcile;
pub mod state;
pub mod version;
