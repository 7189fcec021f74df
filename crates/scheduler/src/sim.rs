//! A discrete-event simulation of a cluster: arrivals, service times, network delay, probes.
//!
//! Three policies run on the same arrival stream:
//! - `central`: one ideal global queue; an arrival starts at once on any free slot anywhere, with
//!   no network cost. No real system can do better; it is the yardstick.
//! - `random`: each arrival goes to a node chosen at random and waits in its queue; no stealing.
//! - `steal`: arrivals go to a random node as in `random`; a node with a free slot and an empty
//!   queue probes `d` random peers and steals from the most loaded ([`crate::policy`]). A probe
//!   round is `d` probes and `d` replies (one network delay each way), then a steal request and a
//!   transfer (one more delay each way); all of them are counted as messages. With
//!   `share_on_arrival`, an arrival at a node with no free slot first probes `d` peers and goes
//!   to the freest (a probe round and a transfer), and queues where it arrived only when none
//!   has room.
//!
//! Time is in milliseconds. Service times are exponential with the given mean; arrivals are a
//! Poisson process at `load x nodes x slots / service` per millisecond.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::policy::{NodeId, PeerLoad, StealPolicy};

/// Which placement policy to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// One global queue, no costs.
    Central,
    /// Random placement, no stealing.
    Random,
    /// Random placement plus work stealing.
    Steal(StealPolicy),
}

/// The simulated cluster and workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Nodes.
    pub nodes: usize,
    /// Concurrent executions per node.
    pub slots: usize,
    /// Offered load, 0..1 of the cluster's capacity.
    pub load: f64,
    /// Mean service time, ms.
    pub service_ms: f64,
    /// One-way network delay, ms.
    pub net_ms: f64,
    /// Invocations to simulate.
    pub tasks: usize,
    /// After a fruitless probe round, an idle node waits this long (doubling as the policy's
    /// `pause_factor` says) before probing again.
    pub retry_ms: f64,
    /// RNG seed (the same seed gives the same arrivals to every policy).
    pub seed: u64,
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Median latency (arrival to completion), ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Mean latency, ms.
    pub mean_ms: f64,
    /// Scheduling messages per invocation (probes, replies, steal requests, transfers).
    pub messages_per_task: f64,
    /// Invocations that completed.
    pub completed: usize,
    /// Invocations that ran on another node than the one they arrived at.
    pub stolen: usize,
    /// Most executions seen running at once on one node (never above `slots`).
    pub max_running: usize,
    /// Invocations completed more than once (must be zero).
    pub duplicates: usize,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Arrival,
    Finish {
        node: NodeId,
        task: usize,
    },
    Replies {
        thief: NodeId,
        round: u32,
    },
    StealAtVictim {
        thief: NodeId,
        victim: NodeId,
        asked: usize,
    },
    Transfer {
        thief: NodeId,
        count_from: usize,
    },
    Retry {
        node: NodeId,
    },
    PlaceReplies {
        origin: NodeId,
        task: usize,
        probe: usize,
        round: u32,
    },
    Forwarded {
        node: NodeId,
        task: usize,
    },
}

#[derive(Debug)]
struct Event {
    at: f64,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Event {
    fn cmp(&self, o: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and the earliest event must come first.
        o.at.total_cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}

#[derive(Debug, Default, Clone)]
struct Node {
    queue: VecDeque<usize>,
    running: usize,
    probing: bool,
    backoff: u32,
    /// A retry is scheduled: one chain of retries per node, however many slots free up.
    retry_pending: bool,
    round: u32,
    peers: Vec<NodeId>,
}

struct Sim {
    cfg: Config,
    policy: Policy,
    rng: SmallRng,
    events: BinaryHeap<Event>,
    seq: u64,
    now: f64,
    nodes: Vec<Node>,
    central: VecDeque<usize>,
    free_nodes: Vec<NodeId>,
    arrived_at: Vec<f64>,
    origin: Vec<NodeId>,
    done: Vec<bool>,
    latencies: Vec<f64>,
    messages: u64,
    stolen: usize,
    max_running: usize,
    duplicates: usize,
    arrivals: usize,
    completed: usize,
    transfers: Vec<Vec<usize>>,
    /// Peers probed for each arrival being placed, by probe index.
    placements: Vec<Vec<NodeId>>,
}

fn exp(rng: &mut SmallRng, mean: f64) -> f64 {
    let u: f64 = rng.gen_range(0.0..1.0);
    -mean * (1.0 - u).ln()
}

impl Sim {
    fn push(&mut self, delay: f64, kind: Kind) {
        self.seq += 1;
        self.events.push(Event {
            at: self.now + delay,
            seq: self.seq,
            kind,
        });
    }

    fn start(&mut self, node: NodeId, task: usize) {
        let n = &mut self.nodes[node];
        n.running += 1;
        self.max_running = self.max_running.max(n.running);
        if node != self.origin[task] {
            self.stolen += 1;
        }
        let service = exp(&mut self.rng, self.cfg.service_ms);
        self.push(service, Kind::Finish { node, task });
    }

    /// Starts queued work while there are free slots; then, if idle and stealing, probes.
    fn pump(&mut self, node: NodeId) {
        while self.nodes[node].running < self.cfg.slots {
            let Some(task) = self.nodes[node].queue.pop_front() else {
                break;
            };
            self.start(node, task);
        }
        self.maybe_probe(node);
    }

    fn schedule_retry(&mut self, node: NodeId, wait: f64) {
        if !std::mem::replace(&mut self.nodes[node].retry_pending, true) {
            self.push(wait, Kind::Retry { node });
        }
    }

    fn maybe_probe(&mut self, node: NodeId) {
        let Policy::Steal(p) = self.policy else {
            return;
        };
        let free = self.cfg.slots - self.nodes[node].running;
        if self.nodes[node].probing || !p.wants_work(free, self.nodes[node].queue.len()) {
            return;
        }
        let peers = p.pick_peers(node, self.cfg.nodes, &mut self.rng);
        if peers.is_empty() {
            return;
        }
        self.messages += 2 * peers.len() as u64;
        let n = &mut self.nodes[node];
        n.probing = true;
        n.round += 1;
        n.peers = peers;
        let round = n.round;
        // The peers' queues are read when the replies are in (two delays later): a slightly
        // stale view, as a real thief has.
        self.push(2.0 * self.cfg.net_ms, Kind::Replies { thief: node, round });
    }

    fn on_replies(&mut self, thief: NodeId, round: u32) {
        let Policy::Steal(p) = self.policy else {
            return;
        };
        if self.nodes[thief].round != round {
            return;
        }
        let loads: Vec<PeerLoad> = self.nodes[thief]
            .peers
            .iter()
            .map(|&node| PeerLoad {
                node,
                queued: self.nodes[node].queue.len(),
                free: self.cfg.slots - self.nodes[node].running,
            })
            .collect();
        let free = self.cfg.slots - self.nodes[thief].running;
        match p.choose_victim(&loads, free) {
            Some((victim, asked)) if self.nodes[thief].queue.is_empty() => {
                self.messages += 1;
                self.push(
                    self.cfg.net_ms,
                    Kind::StealAtVictim {
                        thief,
                        victim,
                        asked,
                    },
                );
            }
            Some(_) => {
                // Work arrived locally meanwhile: no need to steal.
                self.nodes[thief].probing = false;
                self.nodes[thief].backoff = 0;
            }
            None => {
                let n = &mut self.nodes[thief];
                n.probing = false;
                n.backoff = n.backoff.saturating_add(1);
                let wait = self.cfg.retry_ms * f64::from(p.pause_factor(n.backoff));
                self.schedule_retry(thief, wait);
            }
        }
    }

    fn on_steal(&mut self, thief: NodeId, victim: NodeId, asked: usize) {
        let Policy::Steal(p) = self.policy else {
            return;
        };
        let v = &mut self.nodes[victim];
        // Take the oldest: they have waited longest, and the thief starts them at once.
        let n = p.grant(v.queue.len(), asked);
        let moved: Vec<usize> = v.queue.drain(..n).collect();
        self.messages += 1;
        self.transfers.push(moved);
        let idx = self.transfers.len() - 1;
        self.push(
            self.cfg.net_ms,
            Kind::Transfer {
                thief,
                count_from: idx,
            },
        );
    }

    fn on_transfer(&mut self, thief: NodeId, idx: usize) {
        let Policy::Steal(p) = self.policy else {
            return;
        };
        let moved = std::mem::take(&mut self.transfers[idx]);
        let got = !moved.is_empty();
        let n = &mut self.nodes[thief];
        n.queue.extend(moved);
        n.probing = false;
        if got {
            n.backoff = 0;
            self.pump(thief);
        } else {
            n.backoff = n.backoff.saturating_add(1);
            let wait = self.cfg.retry_ms * f64::from(p.pause_factor(n.backoff));
            self.schedule_retry(thief, wait);
        }
    }

    fn on_arrival(&mut self) {
        let task = self.arrivals;
        self.arrivals += 1;
        let node = self.rng.gen_range(0..self.cfg.nodes);
        self.arrived_at.push(self.now);
        self.origin.push(node);
        self.done.push(false);
        match self.policy {
            Policy::Central => match self.free_nodes.pop() {
                Some(n) => self.start(n, task),
                None => self.central.push_back(task),
            },
            Policy::Steal(p)
                if p.share_on_arrival && self.nodes[node].running >= self.cfg.slots =>
            {
                self.probe_placement(p, node, task, 1);
            }
            Policy::Random | Policy::Steal(_) => {
                self.nodes[node].queue.push_back(task);
                self.pump(node);
            }
        }
        if self.arrivals < self.cfg.tasks {
            let rate =
                self.cfg.load * (self.cfg.nodes * self.cfg.slots) as f64 / self.cfg.service_ms;
            let gap = exp(&mut self.rng, 1.0 / rate);
            self.push(gap, Kind::Arrival);
        }
    }

    /// Probes `d` peers for a place for `task`, which arrived at the saturated `node`.
    fn probe_placement(&mut self, p: StealPolicy, node: NodeId, task: usize, round: u32) {
        let peers = p.pick_peers(node, self.cfg.nodes, &mut self.rng);
        if peers.is_empty() {
            self.nodes[node].queue.push_back(task);
            self.pump(node);
            return;
        }
        self.messages += 2 * peers.len() as u64;
        self.placements.push(peers);
        let probe = self.placements.len() - 1;
        self.push(
            2.0 * self.cfg.net_ms,
            Kind::PlaceReplies {
                origin: node,
                task,
                probe,
                round,
            },
        );
    }

    /// The probes for placing an arrival are back: hand it to the freest peer, probe again,
    /// or queue it.
    fn on_place(&mut self, origin: NodeId, task: usize, probe: usize, round: u32) {
        let Policy::Steal(p) = self.policy else {
            return;
        };
        let peers = std::mem::take(&mut self.placements[probe]);
        let loads: Vec<PeerLoad> = peers
            .iter()
            .map(|&node| PeerLoad {
                node,
                queued: self.nodes[node].queue.len(),
                free: self.cfg.slots - self.nodes[node].running,
            })
            .collect();
        // Room may have opened at home meanwhile.
        let home_free = self.nodes[origin].running < self.cfg.slots;
        match p.place(&loads) {
            Some(target) if !home_free => {
                self.messages += 1;
                self.push(self.cfg.net_ms, Kind::Forwarded { node: target, task });
            }
            None if !home_free && round < p.placement_rounds => {
                self.probe_placement(p, origin, task, round + 1);
            }
            _ => {
                self.nodes[origin].queue.push_back(task);
                self.pump(origin);
            }
        }
    }

    fn on_forwarded(&mut self, node: NodeId, task: usize) {
        self.nodes[node].queue.push_back(task);
        self.pump(node);
    }

    fn on_finish(&mut self, node: NodeId, task: usize) {
        self.nodes[node].running -= 1;
        if std::mem::replace(&mut self.done[task], true) {
            self.duplicates += 1;
        } else {
            self.completed += 1;
            self.latencies.push(self.now - self.arrived_at[task]);
        }
        match self.policy {
            Policy::Central => match self.central.pop_front() {
                Some(next) => self.start(node, next),
                None => self.free_nodes.push(node),
            },
            Policy::Random | Policy::Steal(_) => self.pump(node),
        }
    }

    fn run(mut self) -> Report {
        self.push(0.0, Kind::Arrival);
        while self.completed < self.cfg.tasks {
            let Some(ev) = self.events.pop() else { break };
            self.now = ev.at;
            match ev.kind {
                Kind::Arrival => self.on_arrival(),
                Kind::Finish { node, task } => self.on_finish(node, task),
                Kind::Replies { thief, round } => self.on_replies(thief, round),
                Kind::StealAtVictim {
                    thief,
                    victim,
                    asked,
                } => self.on_steal(thief, victim, asked),
                Kind::Transfer { thief, count_from } => self.on_transfer(thief, count_from),
                Kind::Retry { node } => {
                    self.nodes[node].retry_pending = false;
                    self.maybe_probe(node);
                }
                Kind::PlaceReplies {
                    origin,
                    task,
                    probe,
                    round,
                } => self.on_place(origin, task, probe, round),
                Kind::Forwarded { node, task } => self.on_forwarded(node, task),
            }
        }
        let mut l = self.latencies;
        l.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            if l.is_empty() {
                return f64::NAN;
            }
            let rank = (p * l.len() as f64).ceil().max(1.0);
            // rank is within 1..=len.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let i = (rank as usize).min(l.len()) - 1;
            l[i]
        };
        let mean = if l.is_empty() {
            f64::NAN
        } else {
            l.iter().sum::<f64>() / l.len() as f64
        };
        Report {
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            mean_ms: mean,
            messages_per_task: self.messages as f64 / self.cfg.tasks.max(1) as f64,
            completed: self.completed,
            stolen: self.stolen,
            max_running: self.max_running,
            duplicates: self.duplicates,
        }
    }
}

/// Simulates `policy` on the workload `cfg` describes.
pub fn simulate(cfg: &Config, policy: Policy) -> Report {
    let mut free_nodes = Vec::new();
    if policy == Policy::Central {
        for n in 0..cfg.nodes {
            for _ in 0..cfg.slots {
                free_nodes.push(n);
            }
        }
    }
    Sim {
        cfg: *cfg,
        policy,
        rng: SmallRng::seed_from_u64(cfg.seed),
        events: BinaryHeap::new(),
        seq: 0,
        now: 0.0,
        nodes: vec![Node::default(); cfg.nodes.max(1)],
        central: VecDeque::new(),
        free_nodes,
        arrived_at: Vec::with_capacity(cfg.tasks),
        origin: Vec::with_capacity(cfg.tasks),
        done: Vec::with_capacity(cfg.tasks),
        latencies: Vec::with_capacity(cfg.tasks),
        messages: 0,
        stolen: 0,
        max_running: 0,
        duplicates: 0,
        arrivals: 0,
        completed: 0,
        transfers: Vec::new(),
        placements: Vec::new(),
    }
    .run()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(nodes: usize, load: f64) -> Config {
        Config {
            nodes,
            slots: 2,
            load,
            service_ms: 100.0,
            net_ms: 0.5,
            tasks: nodes * 200,
            retry_ms: 1.0,
            seed: 1,
        }
    }

    #[test]
    fn stealing_beats_random_and_approaches_central() {
        let c = cfg(200, 0.9);
        let central = simulate(&c, Policy::Central);
        let random = simulate(&c, Policy::Random);
        let steal = simulate(&c, Policy::Steal(StealPolicy::default()));
        let steal_only = simulate(
            &c,
            Policy::Steal(StealPolicy {
                share_on_arrival: false,
                ..StealPolicy::default()
            }),
        );
        assert!(
            steal.p50_ms < steal_only.p50_ms,
            "offering arrivals to a free peer shortens waits: {steal:?} vs {steal_only:?}"
        );
        for r in [&central, &random, &steal] {
            assert_eq!((r.completed, r.duplicates), (c.tasks, 0));
            assert!(r.max_running <= c.slots);
        }
        assert!(
            steal.p99_ms < random.p99_ms,
            "steal {steal:?} random {random:?}"
        );
        assert!(
            steal.p50_ms < random.p50_ms * 0.6,
            "steal {steal:?} random {random:?}"
        );
        assert!(
            steal.p99_ms <= central.p99_ms * 1.25,
            "steal {steal:?} central {central:?}"
        );
        assert!(steal.stolen > 0);
        assert_eq!(random.messages_per_task, 0.0);
    }
}
