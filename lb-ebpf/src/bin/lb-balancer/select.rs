//! Which VIP a packet is for, and which backend serves its flow.
//!
//! Backend choice, in order:
//!
//! 1. A packet that is not a SYN looks its 5-tuple up in the connection table. A hit whose
//!    backend still serves (same generation, `BACKEND_F_SERVING` set) goes there: established
//!    flows never move when the table changes. A UDP entry idle for longer than the UDP idle
//!    timeout is a miss (`conn_expired`), so that long-lived UDP flows rebalance.
//! 2. Otherwise the flow is placed by the VIP's live Maglev ring, indexed by the flow hash, and
//!    the placement is written to the connection table, unless the packet is a TCP reset or an
//!    ICMP error (neither may start an entry) or new flows arrive faster than the insert limit.
//!    A full bucket gives up the slot of the flow it saw longest ago (`conn_evicted`; see
//!    `lb_common::conn`).
//!
//! A SYN always takes step 2: it starts a new connection, which follows the current table even
//! if an old connection with the same 5-tuple is still remembered. A flow whose backend was
//! removed is placed afresh the same way (counted as `conn_stale`).

use core::ptr::write_volatile;

use aya_ebpf::{helpers::generated::bpf_ktime_get_coarse_ns, maps::Array};
use lb_common::{
    abi::{
        BACKEND_F_SERVING, Backend, ConnValue, DatapathConfig, FAMILY_V4, FlowKey, PROTO_UDP,
        RATE_WINDOW_INSERTS, RING_EMPTY, VIP_CACHE_SIZE, VipCacheEntry, VipKey, VipValue,
        coarse_seconds,
    },
    conn::{self, CONN_WAYS, Place, Slots},
    counters::Counter,
    hash::{flow_hash, ring_slot, vip_cache_slot},
};
use lb_ebpf::Exit;

use crate::{
    Result,
    maps::{BACKENDS, CONNS_V4, CONNS_V6, RINGS, VIP_CACHE, VIPS_V4, VIPS_V6},
    rate,
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
    // The epoch is read once: the value compared is the value stored, so an entry cached while
    // userspace bumps the epoch is stored under the epoch it was read in, never the new one.
    // SAFETY: `config` points into the configuration map's value, valid for the program's run.
    let epoch = unsafe { core::ptr::read_volatile(&raw const config.vip_epoch) };
    let slot = VIP_CACHE.get_ptr_mut(vip_cache_slot(&key, VIP_CACHE_SIZE));
    if let Some(entry) = slot {
        // SAFETY: this CPU's slot of a per-CPU array; XDP programs do not preempt each other.
        let entry = unsafe { &*entry };
        if entry.epoch == epoch && entry.key == key {
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
                epoch,
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
pub fn find_vip(key: &VipKey) -> Option<VipValue> {
    // SAFETY: the value is copied out at once; userspace replaces VIP values whole.
    unsafe {
        if key.family == FAMILY_V4 {
            VIPS_V4.get(key.v4()).copied()
        } else {
            VIPS_V6.get(key.v6()).copied()
        }
    }
}

/// The backend chosen for a packet's flow.
pub struct Selected {
    pub backend_id: u32,
    pub backend: Backend,
    /// Placed by the Maglev ring (not found in the connection table).
    pub is_new_flow: bool,
}

/// How the connection table treats a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// A TCP SYN: placed by the table, remembered.
    Open,
    /// Any other TCP or UDP packet: looked up, else placed and remembered.
    Continue,
    /// A TCP reset: looked up, else placed but not remembered.
    Reset,
    /// An ICMP error about the flow: looked up, else placed but not remembered.
    Icmp,
}

#[inline(always)]
pub fn select_backend(
    flow: &FlowKey,
    vip: &VipValue,
    config: &DatapathConfig,
    intent: Intent,
) -> Result<Selected> {
    // `vip_id` is below MAX_VIPS (userspace allocates it), so it fits the key's 16 bits.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "VIP ids are below MAX_VIPS"
    )]
    let vip_id = vip.vip_id as u16;
    if intent != Intent::Open
        && let Some(selected) = lookup_conn(flow, vip_id, config, intent)
    {
        return Ok(selected);
    }
    count(Counter::ConnMiss);
    let selected = place_flow(flow, vip, config)?;
    // An ICMP error and a reset are placed but start no flow (`new_flows` counts flows).
    match intent {
        Intent::Icmp => {
            return Ok(Selected {
                is_new_flow: false,
                ..selected
            });
        }
        Intent::Reset => {
            count(Counter::ConnRstNotRemembered);
            return Ok(Selected {
                is_new_flow: false,
                ..selected
            });
        }
        Intent::Open | Intent::Continue => {}
    }
    if !rate::allow(RATE_WINDOW_INSERTS, config.conn_inserts_per_sec) {
        count(Counter::ConnInsertSkipped);
        return Ok(selected);
    }
    #[expect(
        clippy::cast_possible_truncation,
        reason = "backend ids are below MAX_BACKENDS, generations below MAX_GENERATION"
    )]
    let conn = ConnValue {
        backend_id: selected.backend_id as u16,
        generation: selected.backend.generation as u16,
        seen_s: now_seconds(),
    };
    let placed = if flow.family == FAMILY_V4 {
        insert(&CONNS_V4, flow.conn_v4(vip_id).bits(), conn, config)
    } else {
        insert(&CONNS_V6, flow.conn_v6(vip_id), conn, config)
    };
    match placed {
        None => count(Counter::ConnInsertFailed),
        Some(Place::Evict(_)) => count(Counter::ConnEvicted),
        Some(Place::Same(_) | Place::Empty(_)) => {}
    }
    Ok(selected)
}

/// Writes `conn` for `key` to its bucket of `table` (see `lb_common::conn::place`); `None` if
/// the bucket is out of the table.
#[inline(always)]
fn insert<B: Slots>(
    table: &Array<B>,
    key: B::Key,
    conn: ConnValue,
    config: &DatapathConfig,
) -> Option<Place> {
    let hash = B::hash(&key, config.conn_seed);
    let bucket = table.get_ptr_mut(conn::bucket_of(hash, config.conn_bucket_mask))?;
    // SAFETY: a bucket of the table, valid for the program's run, and one of its slots; other
    // CPUs may write it meanwhile, which the tags catch (see `lb_common::conn`).
    unsafe {
        let place = conn::place(&*bucket, &key, conn.seen_s);
        B::store(
            bucket,
            slot_index(place),
            key,
            conn::pack(conn, conn::tag_of(hash)),
        );
        Some(place)
    }
}

/// The value word of `key`'s slot in `table`, and the value it held.
#[inline(always)]
fn find<B: Slots>(
    table: &Array<B>,
    key: &B::Key,
    config: &DatapathConfig,
) -> Option<(*mut u64, u64)> {
    let hash = B::hash(key, config.conn_seed);
    let bucket = table.get_ptr_mut(conn::bucket_of(hash, config.conn_bucket_mask))?;
    // SAFETY: a bucket of the table, valid for the program's run; a slot that another CPU
    // rewrites meanwhile fails its tag (see `lb_common::conn`). The index is below CONN_WAYS.
    unsafe {
        let (i, bits) = conn::find(&*bucket, key, conn::tag_of(hash))?;
        Some((B::value_of(bucket, i & (CONN_WAYS - 1)), bits))
    }
}

#[inline(always)]
const fn slot_index(place: Place) -> usize {
    let (Place::Same(i) | Place::Empty(i) | Place::Evict(i)) = place;
    i & (CONN_WAYS - 1)
}

#[inline(always)]
fn now_seconds() -> u32 {
    // SAFETY: the helper has no preconditions.
    coarse_seconds(unsafe { bpf_ktime_get_coarse_ns() })
}

/// The connection table's backend for `flow` to VIP `vip_id`, if it still serves. A hit
/// records the second it was seen (once a second), which keeps the flow's slot from being the
/// one its bucket gives up.
#[inline(always)]
fn lookup_conn(
    flow: &FlowKey,
    vip_id: u16,
    config: &DatapathConfig,
    intent: Intent,
) -> Option<Selected> {
    let (value, bits) = if flow.family == FAMILY_V4 {
        find(&CONNS_V4, &flow.conn_v4(vip_id).bits(), config)?
    } else {
        find(&CONNS_V6, &flow.conn_v6(vip_id), config)?
    };
    let (conn, _) = conn::unpack(bits);
    let now = now_seconds();
    if flow.proto == PROTO_UDP {
        let timeout = config.udp_idle_timeout_s;
        if timeout != 0 && conn::age(now, conn.seen_s) > timeout {
            count(Counter::ConnExpired);
            return None;
        }
    }
    // An ICMP error is not the client's traffic: it does not keep the entry alive.
    if intent == Intent::Continue && !conn::seen_now(bits, now) {
        // SAFETY: the high half of the slot's value word (time seen and 12 bits of tag, no
        // backend). A CPU that gave the slot to another flow since it was read gets those 12
        // bits of this key's tag: a miss for its flow (placed afresh) but once in 4 096; one
        // that placed this same flow again keeps its backend.
        unsafe {
            let high = value.cast::<u32>().add(conn::HIGH_HALF);
            write_volatile(high, conn::seen_word(bits, now));
        }
    }
    let backend = *BACKENDS.get(u32::from(conn.backend_id))?;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "generations stay below MAX_GENERATION"
    )]
    let generation = backend.generation as u16;
    if generation != conn.generation || backend.flags & BACKEND_F_SERVING == 0 {
        count(Counter::ConnStale);
        return None;
    }
    Some(Selected {
        backend_id: u32::from(conn.backend_id),
        backend,
        is_new_flow: false,
    })
}

/// Places `flow` by the VIP's live Maglev ring.
#[inline(always)]
fn place_flow(flow: &FlowKey, vip: &VipValue, config: &DatapathConfig) -> Result<Selected> {
    let slot = ring_slot(flow_hash(flow, config.hash_seed), config.ring_size);
    let index = vip.ring_id * config.ring_size + slot;
    let backend_id = *RINGS.get(index).ok_or(Exit::Drop(Counter::DropMapMiss))?;
    if backend_id == RING_EMPTY {
        return Err(Exit::Drop(Counter::DropNoBackend));
    }
    let backend = BACKENDS
        .get(backend_id)
        .ok_or(Exit::Drop(Counter::DropMapMiss))?;
    Ok(Selected {
        backend_id,
        backend: *backend,
        is_new_flow: true,
    })
}
