//! Backend health: [`probe`] checks a backend once (TCP connect, HTTP or HTTPS GET); [`state`]
//! turns the outcomes into a backend's health with the pool's thresholds. The daemon runs one
//! probe loop per backend and feeds the outcomes to its controller, which takes unhealthy
//! backends out of the tables.

pub mod probe;
pub mod state;
