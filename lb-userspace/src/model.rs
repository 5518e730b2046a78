//! The datapath's choice, predicted in userspace: the same flow key, the same hash, the same
//! slot arithmetic as the XDP program (all from `lb_common`), applied to the table the
//! reconciler wrote. Used by `lb simulate` and by the agreement tests.

use std::net::SocketAddr;

use lb_common::{
    abi::{DatapathConfig, FlowKey},
    hash::{flow_hash, ring_slot},
};

use crate::state::{Protocol, addr_be};

/// The connection-table key of a client's flow to a VIP.
pub fn flow_key(client: SocketAddr, vip: SocketAddr, protocol: Protocol) -> FlowKey {
    let (src_be, family) = addr_be(client.ip());
    let (dst_be, _) = addr_be(vip.ip());
    FlowKey {
        src_be,
        dst_be,
        src_port_be: client.port().to_be(),
        dst_port_be: vip.port().to_be(),
        proto: protocol.number(),
        family,
        _pad: [0; 2],
    }
}

/// The Maglev slot the datapath indexes for `flow`.
pub fn maglev_slot(flow: &FlowKey, config: &DatapathConfig) -> u32 {
    ring_slot(flow_hash(flow, config.hash_seed), config.ring_size)
}

/// The backend id a new flow gets from `table` (the listener's live table).
pub fn maglev_pick(flow: &FlowKey, config: &DatapathConfig, table: &[u32]) -> Option<u32> {
    table.get(maglev_slot(flow, config) as usize).copied()
}
