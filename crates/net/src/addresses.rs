//! The node's pool of VM addresses: a /30 per VM out of the node's VM subnet.
//!
//! In slot `i`'s /30 the host end of the VM's link is `.1`, the guest `.2`. Released slots go
//! to the back of the queue, so an address is reused as late as possible: connection-tracking
//! state the kernel still holds for a VM that is gone never meets a new VM with its address.

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use crate::policy::Ipv4Net;

/// Addresses of one VM's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotAddrs {
    /// The slot's index in the pool.
    pub index: u32,
    /// The /30 network.
    pub net: Ipv4Net,
    /// The host end (the guest's gateway).
    pub host: Ipv4Addr,
    /// The guest.
    pub guest: Ipv4Addr,
}

/// Free /30s of the VM subnet.
#[derive(Debug)]
pub(crate) struct AddressPool {
    subnet: Ipv4Net,
    free: VecDeque<u32>,
    total: u32,
}

impl AddressPool {
    /// The pool of `subnet`, which must hold at least one /30.
    pub(crate) fn new(subnet: Ipv4Net) -> Option<Self> {
        if subnet.prefix() > 30 {
            return None;
        }
        let total = u32::try_from(subnet.size() / 4).unwrap_or(u32::MAX);
        Some(Self {
            subnet,
            free: (0..total).collect(),
            total,
        })
    }

    pub(crate) fn slot(&self, index: u32) -> SlotAddrs {
        let base = u32::from(self.subnet.addr()) + index * 4;
        SlotAddrs {
            index,
            net: Ipv4Net::new(Ipv4Addr::from(base), 30).unwrap_or(self.subnet),
            host: Ipv4Addr::from(base + 1),
            guest: Ipv4Addr::from(base + 2),
        }
    }

    /// Takes the free slot released longest ago.
    pub(crate) fn take(&mut self) -> Option<SlotAddrs> {
        let index = self.free.pop_front()?;
        Some(self.slot(index))
    }

    /// Gives a slot back.
    pub(crate) fn give_back(&mut self, index: u32) {
        debug_assert!(index < self.total && !self.free.contains(&index));
        self.free.push_back(index);
    }

    /// Slots handed out and not given back.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> u32 {
        self.total - u32::try_from(self.free.len()).unwrap_or(self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_slash_30s_reused_last() {
        let mut p = AddressPool::new("10.200.0.0/29".parse().unwrap()).unwrap();
        let a = p.take().unwrap();
        assert_eq!(a.host, Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(a.guest, Ipv4Addr::new(10, 200, 0, 2));
        assert_eq!(a.net.to_string(), "10.200.0.0/30");
        let b = p.take().unwrap();
        assert_eq!(b.guest, Ipv4Addr::new(10, 200, 0, 6));
        assert!(p.take().is_none(), "a /29 holds two VMs");
        assert_eq!(p.in_use(), 2);
        p.give_back(a.index);
        p.give_back(b.index);
        assert_eq!(p.take().unwrap().index, a.index);
        assert_eq!(p.in_use(), 1);
        assert!(AddressPool::new("10.0.0.0/31".parse().unwrap()).is_none());
    }
}
