//! Spare built-in VM networks, made ahead of need.
//!
//! Making a VM's links costs ~30 ms here, most of it the kernel creating a network namespace,
//! and a VM restored from a snapshot would otherwise wait for it. So the node keeps a few
//! networks made in the background: namespace, tap, veth pair, addresses, route and the
//! namespace's address translation, but no policy (nftables rules) and no VM. A spare is taken by exactly one VM and
//! released with it like any other network; nothing has ever run in it, so a VM that gets one
//! is as sterile as one whose network was made on its path.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::addresses::SlotAddrs;

/// A built-in network no VM has used yet.
#[derive(Debug)]
pub(crate) struct Spare {
    pub(crate) slot: SlotAddrs,
    pub(crate) host_if: String,
    pub(crate) netns: Arc<OwnedFd>,
}

/// The spares on hand and how many are being made.
#[derive(Debug, Default)]
pub(crate) struct Spares {
    ready: Vec<Spare>,
    making: usize,
    closed: bool,
}

impl Spares {
    /// Takes a spare if there is one.
    pub(crate) fn take(&mut self) -> Option<Spare> {
        self.ready.pop()
    }

    /// How many more to start making to reach `target`; counts them as being made.
    pub(crate) fn start_making(&mut self, target: usize) -> usize {
        if self.closed {
            return 0;
        }
        let missing = target.saturating_sub(self.ready.len() + self.making);
        self.making += missing;
        missing
    }

    /// A spare finished (or failed: `None`). Returns it back when the node is shutting down,
    /// for the caller to remove.
    pub(crate) fn made(&mut self, spare: Option<Spare>) -> Option<Spare> {
        self.making = self.making.saturating_sub(1);
        match spare {
            Some(s) if self.closed => Some(s),
            Some(s) => {
                self.ready.push(s);
                None
            }
            None => None,
        }
    }

    /// Spares being made now.
    pub(crate) fn making(&self) -> usize {
        self.making
    }

    /// Spares ready now.
    pub(crate) fn ready(&self) -> usize {
        self.ready.len()
    }

    /// Stops making spares and hands over those on hand, for removal.
    pub(crate) fn close(&mut self) -> Vec<Spare> {
        self.closed = true;
        std::mem::take(&mut self.ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn spare(index: u32) -> Spare {
        let fd = std::fs::File::open("/dev/null").unwrap();
        Spare {
            slot: SlotAddrs {
                index,
                net: "10.0.0.0/30".parse().unwrap(),
                host: Ipv4Addr::new(10, 0, 0, 1),
                guest: Ipv4Addr::new(10, 0, 0, 2),
            },
            host_if: format!("x{index}"),
            netns: Arc::new(OwnedFd::from(fd)),
        }
    }

    #[test]
    fn making_stops_at_the_target_and_after_close() {
        let mut s = Spares::default();
        assert_eq!(s.start_making(2), 2);
        assert_eq!(s.start_making(2), 0, "two are already being made");
        assert!(s.made(Some(spare(0))).is_none());
        assert!(s.made(None).is_none(), "a failed one frees its place");
        assert_eq!(s.ready(), 1);
        assert_eq!(s.start_making(2), 1);
        assert_eq!(s.take().map(|x| x.slot.index), Some(0));
        assert!(s.take().is_none());
        let left = s.close();
        assert!(left.is_empty());
        assert_eq!(s.start_making(2), 0, "a closed node makes none");
        let late = s.made(Some(spare(1)));
        assert_eq!(
            late.map(|x| x.slot.index),
            Some(1),
            "one finished after close is handed back for removal"
        );
        assert_eq!(s.ready(), 0);
    }
}
