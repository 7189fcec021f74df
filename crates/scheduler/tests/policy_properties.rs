//! Properties of the scheduling policies, on many small random clusters and workloads: no
//! invocation is lost or run twice, and no node ever runs more than its slots.

use ignition_scheduler::policy::StealPolicy;
use ignition_scheduler::sim::{simulate, Config, Policy};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn nothing_lost_nothing_duplicated_slots_respected(
        nodes in 1usize..24,
        slots in 1usize..4,
        load in 0.05f64..0.97,
        tasks in 1usize..400,
        net_ms in 0.0f64..5.0,
        probes in 1usize..4,
        seed in any::<u64>(),
        share in any::<bool>(),
        rounds in 1u32..4,
    ) {
        let cfg = Config { nodes, slots, load, service_ms: 50.0, net_ms, tasks, retry_ms: 1.0, seed };
        let steal = StealPolicy { probes, share_on_arrival: share, placement_rounds: rounds, ..StealPolicy::default() };
        for policy in [Policy::Central, Policy::Random, Policy::Steal(steal)] {
            let r = simulate(&cfg, policy);
            prop_assert_eq!(r.completed, tasks, "{:?}", policy);
            prop_assert_eq!(r.duplicates, 0);
            prop_assert!(r.max_running <= slots, "{:?}: {} running on {} slots", policy, r.max_running, slots);
            prop_assert!(r.p50_ms.is_finite() && r.p50_ms >= 0.0);
            if policy == Policy::Random {
                prop_assert_eq!(r.stolen, 0);
            }
        }
    }

    #[test]
    fn victim_choice_never_takes_more_than_half_or_the_free_slots(
        queued in proptest::collection::vec(0usize..100, 0..6),
        free in 0usize..8,
    ) {
        let p = StealPolicy::default();
        let loads: Vec<_> = queued.iter().enumerate()
            .map(|(node, &q)| ignition_scheduler::policy::PeerLoad { node, queued: q, free: 0 })
            .collect();
        match p.choose_victim(&loads, free) {
            Some((node, n)) => {
                let q = queued[node];
                prop_assert!(n >= 1 && n <= q.div_ceil(2) && n <= free);
                prop_assert_eq!(q, *queued.iter().max().unwrap_or(&0));
            }
            None => prop_assert!(free == 0 || queued.iter().all(|&q| q == 0)),
        }
    }
}
