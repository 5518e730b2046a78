//! What the host's kernel knows that the balancer needs: the addresses assigned to its
//! interfaces ([`addresses`]), routes, neighbours and XDP attachments through rtnetlink
//! ([`rtnl`]), which interfaces take redirected frames ([`netdev`]), and interface offloads
//! ([`ethtool`]).

pub mod addresses;
pub mod ethtool;
pub mod netdev;
pub mod rtnl;
