//! What the host's kernel knows that the balancer needs: the addresses assigned to its
//! interfaces ([`addresses`]).

pub mod addresses;
