//! Which VIP a packet is for, and which backend serves its flow.
//!
//! Backend choice, in order:
//!
//! 1. A packet that is not a SYN looks its 5-tuple up in the connection table. A hit whose
//!    backend still serves (same generation, `BACKEND_F_SERVING` set) goes there: established
//!    flows never move when the table changes.
//! 2. Otherwise the flow is placed by the VIP's live Maglev ring, indexed by the flow hash, and
//!    the placement is written to the connection table.
//!
//! A SYN always takes step 2: it starts a new connection, which follows the current table even
//! if an old connection with the same 5-tuple is still remembered. A flow whose backend was
//! removed is placed afresh the same way (counted as `conn_stale`).

use aya_ebpf::{
    bindings::BPF_ANY, helpers::generated::bpf_ktime_get_coarse_ns, programs::XdpContext,
};
use aya_log_ebpf::error;
use lb_common::{
    abi::{
        BACKEND_F_SERVING, Backend, ConnValue, DatapathConfig, FAMILY_V4, FlowKey, RING_EMPTY,
        VIP_CACHE_SIZE, VipCacheEntry, VipKey, VipValue,
    },
    counters::Counter,
    hash::{flow_hash, ring_slot, vip_cache_slot},
};
use lb_ebpf::{Exit, parse::Packet};

use crate::{
    Result,
    maps::{BACKENDS, CONNS_V4, CONNS_V6, INSERT_WINDOWS, RINGS, VIP_CACHE, VIPS_V4, VIPS_V6},
    stats::count,
};

/// The VIP a TCP or UDP packet is addressed to. Asks this CPU's VIP cache first: an answer
/// (found or not) from the current VIP epoch spares the hash-map lookup.
#[inline(always)]
pub fn lookup_vip(flow: &FlowKey, config: &DatapathConfig) -> Result<VipValue> {
    let key = VipKey {
        addr_be: flow.dst_be,
        port_be: flow.dst_port_be,
        proto: flow.proto,
        family: flow.family,
    };
    let not_vip = Exit::Pass(Counter::PassNotVip);
    let slot = VIP_CACHE.get_ptr_mut(vip_cache_slot(&key, VIP_CACHE_SIZE));
    if let Some(entry) = slot {
        // SAFETY: this CPU's slot of a per-CPU array; XDP programs do not preempt each other.
        let entry = unsafe { &*entry };
        if entry.epoch == config.vip_epoch && entry.key == key {
            return if entry.found != 0 {
                Ok(entry.value)
            } else {
                Err(not_vip)
            };
        }
    }
    let found = find_vip(&key);
    if let Some(entry) = slot {
        // SAFETY: as above.
        unsafe {
            entry.write(VipCacheEntry {
                key,
                epoch: config.vip_epoch,
                value: found.unwrap_or_default(),
                found: u32::from(found.is_some()),
                _pad: 0,
            });
        }
    }
    found.ok_or(not_vip)
}

/// The VIP map entry of `key`, from the map of its family.
#[inline(always)]
fn find_vip(key: &VipKey) -> Option<VipValue> {
    // SAFETY: the value is copied out at once; userspace replaces VIP values whole.
    unsafe {
        if key.family == FAMILY_V4 {
            VIPS_V4.get(key.v4()).copied()
        } else {
            VIPS_V6.get(key.v6()).copied()
        }
    }
}

/// The fragment policy: a fragment addressed to a VIP address is dropped (its ports, which
/// choose the backend, are only in the first fragment); any other fragment is the kernel's.
#[inline(always)]
pub fn fragment_verdict(flow: &FlowKey) -> Exit<Counter> {
    if find_vip(&VipKey::address_marker(flow.dst_be, flow.family)).is_some() {
        Exit::Drop(Counter::DropFragment)
    } else {
        Exit::Pass(Counter::PassNotVip)
    }
}

/// The backend chosen for a packet's flow.
pub struct Selected {
    pub backend_id: u32,
    pub backend: Backend,
    /// Placed by the Maglev ring (not found in the connection table).
    pub is_new_flow: bool,
}

#[inline(always)]
pub fn select_backend(
    ctx: &XdpContext,
    packet: &Packet,
    vip: &VipValue,
    config: &DatapathConfig,
) -> Result<Selected> {
    // `vip_id` is below MAX_VIPS (userspace allocates it), so it fits the key's 16 bits.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "VIP ids are below MAX_VIPS"
    )]
    let vip_id = vip.vip_id as u16;
    if !packet.is_syn
        && let Some(selected) = lookup_conn(&packet.flow, vip_id)
    {
        return Ok(selected);
    }
    count(Counter::ConnMiss);
    let selected = place_flow(ctx, &packet.flow, vip, config)?;
    let conn = ConnValue {
        backend_id: selected.backend_id,
        generation: selected.backend.generation,
    };
    if !may_remember(config) {
        count(Counter::ConnInsertSkipped);
        return Ok(selected);
    }
    let inserted = if packet.flow.family == FAMILY_V4 {
        CONNS_V4.insert(packet.flow.conn_v4(vip_id), conn, u64::from(BPF_ANY))
    } else {
        CONNS_V6.insert(packet.flow.conn_v6(vip_id), conn, u64::from(BPF_ANY))
    };
    if inserted.is_err() {
        count(Counter::ConnInsertFailed);
    }
    Ok(selected)
}

/// Connection-table protection: whether this CPU may insert one more entry this second.
/// Past `conn_inserts_per_sec` (a SYN flood) new flows are not remembered, so they cannot
/// evict the established flows the table exists for.
#[inline(always)]
fn may_remember(config: &DatapathConfig) -> bool {
    let limit = u64::from(config.conn_inserts_per_sec);
    if limit == 0 {
        return true;
    }
    let Some(window) = INSERT_WINDOWS.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: this CPU's slot of a per-CPU array; XDP programs do not preempt each other.
    let window = unsafe { &mut *window };
    if now.wrapping_sub(window.start_ns) >= 1_000_000_000 {
        window.start_ns = now;
        window.inserts = 0;
    }
    window.inserts += 1;
    window.inserts <= limit
}

/// The connection table's backend for `flow` to VIP `vip_id`, if it still serves.
#[inline(always)]
fn lookup_conn(flow: &FlowKey, vip_id: u16) -> Option<Selected> {
    // SAFETY: the value is copied out at once.
    let conn = unsafe {
        if flow.family == FAMILY_V4 {
            *CONNS_V4.get(flow.conn_v4(vip_id))?
        } else {
            *CONNS_V6.get(flow.conn_v6(vip_id))?
        }
    };
    let backend = *BACKENDS.get(conn.backend_id)?;
    if backend.generation != conn.generation || backend.flags & BACKEND_F_SERVING == 0 {
        count(Counter::ConnStale);
        return None;
    }
    Some(Selected {
        backend_id: conn.backend_id,
        backend,
        is_new_flow: false,
    })
}

/// Places `flow` by the VIP's live Maglev ring.
#[inline(always)]
fn place_flow(
    ctx: &XdpContext,
    flow: &FlowKey,
    vip: &VipValue,
    config: &DatapathConfig,
) -> Result<Selected> {
    let slot = ring_slot(flow_hash(flow, config.hash_seed), config.ring_size);
    let index = vip.ring_id * config.ring_size + slot;
    let backend_id = *RINGS.get(index).ok_or(Exit::Drop(Counter::DropMapMiss))?;
    if backend_id == RING_EMPTY {
        return Err(Exit::Drop(Counter::DropNoBackend));
    }
    let Some(backend) = BACKENDS.get(backend_id) else {
        error!(
            ctx,
            "ring {} slot {} names backend {}, which is out of range",
            vip.ring_id,
            slot,
            backend_id
        );
        return Err(Exit::Drop(Counter::DropMapMiss));
    };
    Ok(Selected {
        backend_id,
        backend: *backend,
        is_new_flow: true,
    })
}
