//! Address markers: one VIP-map entry per VIP address (port 0, protocol 0) while any listener
//! uses the address, so that the datapath can apply the fragment policy to packets whose ports
//! it cannot read. A marker says whether the address is also assigned to this host
//! (`VIP_F_LOCAL`: the kernel serves it too, so fragments and unreadable frames go there). A
//! marker that cannot be removed is retried after the next change.

use std::{collections::BTreeSet, net::IpAddr};

use lb_common::abi::{AddrBe, VIP_F_ADDRESS_MARKER, VIP_F_LOCAL, VipKey, VipValue};
use tracing::{info, warn};

use super::Reconciler;
use crate::datapath::{Datapath, DatapathError};

impl<D: Datapath> Reconciler<D> {
    pub(super) fn marker(&mut self, key: &VipKey) -> &mut Marker {
        self.markers.entry((key.addr_be, key.family)).or_default()
    }

    /// Makes sure the address marker of `key`'s address is in the VIP map, saying whether the
    /// address is local.
    pub(super) fn write_marker(&mut self, key: &VipKey) -> Result<(), DatapathError> {
        let local = self.local_addresses.contains(&(key.addr_be, key.family));
        let current = *self.marker(key);
        if current.written && current.local == local {
            return Ok(());
        }
        let marker = VipKey::address_marker(key.addr_be, key.family);
        let value = VipValue {
            flags: VIP_F_ADDRESS_MARKER | if local { VIP_F_LOCAL } else { 0 },
            ..VipValue::default()
        };
        self.datapath.set_vip(&marker, &value)?;
        let written = self.marker(key);
        written.written = true;
        written.local = local;
        Ok(())
    }

    /// The addresses assigned to this host. VIP addresses among them get `VIP_F_LOCAL` on their
    /// markers (written now for the existing ones, and for new ones as they come).
    pub fn set_local_addresses(
        &mut self,
        addresses: impl IntoIterator<Item = IpAddr>,
    ) -> Result<(), DatapathError> {
        self.local_addresses = addresses
            .into_iter()
            .map(crate::state::addr_be)
            .collect::<BTreeSet<_>>();
        let used: Vec<(AddrBe, u8)> = self
            .markers
            .iter()
            .filter(|(_, m)| m.listeners > 0 || m.written)
            .map(|(address, _)| *address)
            .collect();
        for (addr_be, family) in used {
            let key = VipKey::address_marker(addr_be, family);
            let was = self.marker(&key).local;
            self.write_marker(&key)?;
            let now = self.marker(&key).local;
            if was != now {
                let address = crate::state::addr_from_be(&addr_be, family);
                info!(
                    %address,
                    local = now,
                    "VIP address {}: fragments and unreadable frames to it go to {}",
                    if now { "is local" } else { "is not local" },
                    if now { "the kernel" } else { "nowhere (dropped)" }
                );
            }
        }
        Ok(())
    }

    /// Removes the markers of addresses no listener uses. One that cannot be removed now is
    /// tried again after the next change (meanwhile fragments to it are dropped, not passed).
    pub(super) fn remove_unused_markers(&mut self) {
        let unused: Vec<(AddrBe, u8)> = self
            .markers
            .iter()
            .filter(|(_, m)| m.listeners == 0)
            .map(|(address, _)| *address)
            .collect();
        for (addr_be, family) in unused {
            let written = self
                .markers
                .get(&(addr_be, family))
                .is_some_and(|m| m.written);
            if written {
                let marker = VipKey::address_marker(addr_be, family);
                if let Err(error) = self.datapath.remove_vip(&marker) {
                    warn!(%error, "could not remove a VIP address marker; will retry");
                    continue;
                }
            }
            self.markers.remove(&(addr_be, family));
        }
    }
}

/// The address marker of one VIP address.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Marker {
    /// Published listeners on the address.
    pub(super) listeners: usize,
    /// Whether the marker entry is in the VIP map.
    pub(super) written: bool,
    /// Whether the written entry says the address is local (`VIP_F_LOCAL`).
    pub(super) local: bool,
}
