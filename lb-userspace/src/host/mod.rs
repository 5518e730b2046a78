//! What the host's kernel knows that the balancer needs: the addresses assigned to its
//! interfaces ([`addresses`]), and routes, neighbours and XDP attachments through rtnetlink
//! ([`rtnl`]).

pub mod addresses;
pub mod rtnl;
