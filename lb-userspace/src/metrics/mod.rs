//! The daemon's Prometheus metrics, as a self-contained module: the daemon gathers a
//! [`MetricsInput`] snapshot from its controller at scrape time, this module renders and serves
//! it. Nothing here reads the daemon's state; the daemon fills in the snapshot.
//!
//! - [`input`]: [`MetricsInput`] and its sample types, plain data;
//! - [`render`](mod@render): [`render()`], the snapshot as an OpenMetrics text exposition
//!   (`prometheus-client`), the families and their labels;
//! - `family`: the constant, label-ordered metric family `render` builds them from;
//! - [`serve`](mod@serve): [`serve()`], the HTTP endpoint (`GET /metrics`, hyper), which asks
//!   for a snapshot through a [`Snapshot`] closure per scrape.
//!
//! Data flow: Prometheus -> `serve` -> `Snapshot` closure -> daemon controller ->
//! `MetricsInput` -> `render` -> response.

mod family;
pub mod input;
pub mod render;
pub mod serve;

#[cfg(test)]
mod fixtures;

pub use input::{
    AnnounceSample, BackendHealthSample, BackendTraffic, CounterSample, DatapathSample,
    HealthState, L7Sample, ListenerTraffic, MetricsInput, OperationSample, Traffic,
};
pub use render::{CONTENT_TYPE, RenderError, render};
pub use serve::{METRICS_PATH, Snapshot, SnapshotFuture, StatusFuture, StatusSource, serve};
