//! Address markers: one VIP-map entry per VIP address (port 0, protocol 0) while any listener
//! uses the address, so that the datapath can apply the fragment policy to packets whose ports
//! it cannot read. A marker that cannot be removed is retried after the next change.

use lb_common::abi::{AddrBe, VIP_F_ADDRESS_MARKER, VipKey, VipValue};
use tracing::warn;

use super::Reconciler;
use crate::datapath::{Datapath, DatapathError};

impl<D: Datapath> Reconciler<D> {
    pub(super) fn marker(&mut self, key: &VipKey) -> &mut Marker {
        self.markers.entry((key.addr_be, key.family)).or_default()
    }

    /// Makes sure the address marker of `key`'s address is in the VIP map.
    pub(super) fn write_marker(&mut self, key: &VipKey) -> Result<(), DatapathError> {
        if self.marker(key).written {
            return Ok(());
        }
        let marker = VipKey::address_marker(key.addr_be, key.family);
        let value = VipValue {
            flags: VIP_F_ADDRESS_MARKER,
            ..VipValue::default()
        };
        self.datapath.set_vip(&marker, &value)?;
        self.marker(key).written = true;
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
}
