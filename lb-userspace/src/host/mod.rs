//! What the host's kernel knows that the balancer needs: the addresses assigned to its
//! interfaces ([`addresses`]), routes, neighbours and XDP attachments through rtnetlink
//! ([`rtnl`]), a tun device for routes to point at ([`tun`]), which interfaces take
//! redirected frames ([`netdev`]), interface offloads ([`ethtool`]), and the daemon's own
//! open-file limit ([`files`]).

pub mod addresses;
pub mod ethtool;
pub mod files;
pub mod netdev;
pub mod rtnl;
pub mod tun;
