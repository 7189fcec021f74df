//! The work-stealing policy, pure.

use rand::Rng;

/// A node's index in its cluster.
pub type NodeId = usize;

/// What a probe learns about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLoad {
    /// The peer.
    pub node: NodeId,
    /// Invocations queued there, not started.
    pub queued: usize,
    /// Its free slots.
    pub free: usize,
}

/// The stealing policy's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StealPolicy {
    /// Peers probed per attempt (`d`).
    pub probes: usize,
    /// An invocation that arrives at a node with no free slot is offered to the freest of `d`
    /// probed peers before it queues (power of d choices at arrival); stealing then only has
    /// the rest to balance. Measured in the simulator against stealing alone (`steal-only`).
    pub share_on_arrival: bool,
    /// Probe rounds an arrival at a saturated node gets before it queues there.
    pub placement_rounds: u32,
    /// An idle node's pause between fruitless steal attempts doubles this many times at most.
    pub max_backoff_doublings: u32,
}

impl Default for StealPolicy {
    fn default() -> Self {
        Self {
            probes: 2,
            share_on_arrival: true,
            placement_rounds: 4,
            max_backoff_doublings: 5,
        }
    }
}

impl StealPolicy {
    /// How many times the base pause an idle node waits after `fruitless` steal attempts in a
    /// row that found nothing: 1, 2, 4, ... up to `2^max_backoff_doublings`.
    pub fn pause_factor(&self, fruitless: u32) -> u32 {
        1u32 << fruitless.min(self.max_backoff_doublings).min(16)
    }

    /// Where an invocation that arrived at a node with no free slot goes, given probes of
    /// peers: the peer with the most free slots beyond its own queue, if any has one.
    /// `None`: it queues where it arrived.
    pub fn place(&self, loads: &[PeerLoad]) -> Option<NodeId> {
        if !self.share_on_arrival {
            return None;
        }
        loads
            .iter()
            .filter(|l| l.free > l.queued)
            .max_by_key(|l| l.free - l.queued)
            .map(|l| l.node)
    }

    /// A node steals only when it could start work now and has none of its own.
    pub fn wants_work(&self, free_slots: usize, queued: usize) -> bool {
        free_slots > 0 && queued == 0
    }

    /// Up to `probes` distinct peers of `me` among `nodes`, chosen uniformly at random.
    pub fn pick_peers(&self, me: NodeId, nodes: usize, rng: &mut impl Rng) -> Vec<NodeId> {
        let want = self.probes.min(nodes.saturating_sub(1));
        let mut picked: Vec<NodeId> = Vec::with_capacity(want);
        // Rejection sampling: `want` is tiny next to `nodes` in every real cluster; for small
        // clusters the loop is bounded by `nodes` draws per pick on average.
        while picked.len() < want {
            let n = rng.gen_range(0..nodes);
            if n != me && !picked.contains(&n) {
                picked.push(n);
            }
        }
        picked
    }

    /// The peer to steal from and how many invocations to take: the most loaded peer that has
    /// queued work, up to half of its queue (at least one), and no more than `free_slots`.
    pub fn choose_victim(&self, loads: &[PeerLoad], free_slots: usize) -> Option<(NodeId, usize)> {
        if free_slots == 0 {
            return None;
        }
        let best = loads
            .iter()
            .filter(|l| l.queued > 0)
            .max_by_key(|l| l.queued)?;
        Some((best.node, best.queued.div_ceil(2).min(free_slots)))
    }

    /// How many of `queued` a victim hands over when asked for `asked` (its queue may have
    /// changed since the probe): never more than half, rounded up, of what it has now.
    pub fn grant(&self, queued: usize, asked: usize) -> usize {
        asked.min(queued.div_ceil(2))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn victim_is_the_most_loaded_and_gives_at_most_half() {
        let p = StealPolicy::default();
        let loads = [
            PeerLoad {
                node: 3,
                queued: 4,
                free: 0,
            },
            PeerLoad {
                node: 7,
                queued: 9,
                free: 0,
            },
            PeerLoad {
                node: 1,
                queued: 0,
                free: 0,
            },
        ];
        assert_eq!(p.choose_victim(&loads, 8), Some((7, 5)));
        assert_eq!(
            p.choose_victim(&loads, 2),
            Some((7, 2)),
            "bounded by free slots"
        );
        assert_eq!(p.choose_victim(&loads, 0), None);
        assert_eq!(
            p.choose_victim(
                &[PeerLoad {
                    node: 1,
                    queued: 0,
                    free: 0
                }],
                2
            ),
            None
        );
        assert_eq!(
            p.choose_victim(
                &[PeerLoad {
                    node: 1,
                    queued: 1,
                    free: 0
                }],
                2
            ),
            Some((1, 1))
        );
        assert_eq!(p.grant(1, 5), 1);
        assert_eq!(p.grant(0, 5), 0);
        assert!(p.wants_work(1, 0) && !p.wants_work(0, 0) && !p.wants_work(1, 1));
    }

    #[test]
    fn arrivals_go_to_the_freest_peer_that_has_room_beyond_its_queue() {
        let p = StealPolicy::default();
        let l = |node, queued, free| PeerLoad { node, queued, free };
        assert_eq!(p.place(&[l(1, 0, 1), l(2, 0, 2)]), Some(2));
        assert_eq!(
            p.place(&[l(1, 2, 2), l(2, 0, 0)]),
            None,
            "no room beyond queues"
        );
        assert_eq!(p.place(&[l(1, 1, 2)]), Some(1));
        assert_eq!(p.place(&[]), None);
        let stealing_only = StealPolicy {
            share_on_arrival: false,
            ..p
        };
        assert_eq!(stealing_only.place(&[l(1, 0, 2)]), None);
        assert_eq!(
            (0..8).map(|r| p.pause_factor(r)).collect::<Vec<_>>(),
            [1, 2, 4, 8, 16, 32, 32, 32]
        );
    }

    #[test]
    fn peers_are_distinct_and_never_self() {
        let p = StealPolicy {
            probes: 3,
            ..StealPolicy::default()
        };
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for _ in 0..1000 {
            let peers = p.pick_peers(2, 5, &mut rng);
            assert_eq!(peers.len(), 3);
            assert!(!peers.contains(&2));
            let mut s = peers.clone();
            s.sort_unstable();
            s.dedup();
            assert_eq!(s.len(), 3);
        }
        assert!(
            p.pick_peers(0, 1, &mut rng).is_empty(),
            "a lone node has no peers"
        );
        assert_eq!(p.pick_peers(0, 2, &mut rng), vec![1]);
    }
}
