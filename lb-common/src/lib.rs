//! The contract between the XDP programs (`lb-ebpf`) and userspace (`lb-userspace`).
//!
//! Everything that crosses the kernel boundary lives here, once:
//!
//! - [`abi`]: the `#[repr(C)]` keys and values of every map, with explicit padding and
//!   compile-time size checks, so both sides agree on every byte;
//! - [`maps`]: the versioned map names and their default sizes;
//! - [`counters`]: the per-CPU counters, one per pass or drop reason;
//! - [`hash`]: the one flow-hash function that the datapath uses to index the Maglev table and
//!   that userspace uses to predict it (`lb simulate`, agreement tests).
//!
//! The crate is `no_std` and allocation-free so that the eBPF crate can use it as is.

#![no_std]

pub mod abi;
pub mod conn;
pub mod counters;
pub mod hash;
pub mod maps;
