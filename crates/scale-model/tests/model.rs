//! The model's own checks: small swarms, fixed seeds, a few seconds.

use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, seq::index};
use scale_model::dht::{Dht, DhtParams, lookup_alone};
use scale_model::params::{SECOND, WIDEN_MAX_PEERS};
use scale_model::sim::{Outcome, Via};
use scale_model::{Mode, Plan, calibrate, formed_swarm, random_specs, run_cell};

fn plan(fetches: usize) -> Plan {
    Plan {
        fetches,
        seed: 7,
        ..Plan::default()
    }
}

#[test]
fn a_dht_lookup_finds_the_single_holder() {
    for params in [DhtParams::MAINLINE, DhtParams::BEP5] {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let n = 2_000;
        let dht = Dht::build(n, params, &mut rng);
        for _ in 0..50 {
            let picked = index::sample(&mut rng, n, 2).into_vec();
            let [asker, holder] = [picked[0], picked[1]].map(|i| u32::try_from(i).unwrap());
            let key: u128 = rng.random();
            let storage = dht.storage_nodes(key, params.storage);
            let found = lookup_alone(&dht, asker, key, &storage, &[holder], &mut rng);
            assert_eq!(found.holders, vec![holder], "{params:?}");
            // Logarithmic: a handful of round trips, a few dozen nodes.
            assert!(found.rounds <= 8, "{} rounds", found.rounds);
            assert!(found.queried <= 120, "{} queried", found.queried);
        }
    }
}

#[test]
fn pex_alone_finds_the_one_holder_of_a_swarm_of_100() {
    // The real run: 99 of 99.
    let c = calibrate(100, 30 * SECOND, 2 * scale_model::params::MILLI, 7);
    assert!(c.succeeded >= 95, "{c:?}");
    assert!(c.formed_secs > 3.0 && c.formed_secs < 6.0, "{c:?}");
    let base = formed_swarm(100, &plan(50));
    let cell = run_cell(&base, 1, Mode::Pex, &plan(50));
    assert!(cell.success_rate >= 0.9, "{cell:?}");
    assert_eq!(cell.via[2], 0, "no DHT without the DHT");
    assert_eq!(cell.dht_median, 0);
}

#[test]
fn a_lookup_never_dials_more_than_its_cap() {
    let mut plan = plan(60);
    plan.dht.dial_cap = 3;
    plan.dht.at_start = true;
    let mut swarm = formed_swarm(1_000, &plan);
    let specs = random_specs(1_000, 100, plan.fetches, plan.timeout, 11);
    let records = swarm.run_fetches(specs, plan.concurrency);
    assert_eq!(records.len(), 60);
    assert!(records.iter().all(|r| r.dht_dials <= 3));
    assert!(records.iter().all(|r| r.widen_dials <= WIDEN_MAX_PEERS));
    assert!(
        records.iter().any(|r| r.dht_dials == 3),
        "some lookup reached its cap (100 holders, 10 per response)"
    );
}

#[test]
fn messages_are_counted() {
    let plan = plan(30);
    let mut swarm = formed_swarm(300, &plan);
    swarm.without_dht();
    let records = swarm.run_fetches(random_specs(300, 1, 30, plan.timeout, 5), 10);
    for r in &records {
        let m = r.msgs;
        assert!(m.want_have >= 2 && m.want_have % 2 == 0, "{r:?}");
        assert_eq!(m.dht, 0);
        assert_eq!(m.hello, m.peers, "both per connection made");
        assert!(m.hello <= 2 * m.dials, "{r:?}");
        assert_eq!(m.dials, r.widen_dials as u64);
        assert_eq!(m.total(), m.want_have + m.hello + m.peers);
        if let Outcome::Found {
            via: Via::Widen, ..
        } = r.outcome
        {
            assert!(m.dials > 0);
        }
    }
    // Widening happened somewhere, and cost HELLOs.
    assert!(records.iter().any(|r| r.msgs.hello > 0));

    let mut swarm = formed_swarm(300, &plan);
    let records = swarm.run_fetches(random_specs(300, 1, 30, plan.timeout, 5), 10);
    for r in &records {
        // Mainline: a query, a ping and their answers per node visited.
        assert_eq!(r.msgs.dht, 4 * r.dht_queried as u64, "{r:?}");
    }
    assert!(records.iter().any(|r| r.msgs.dht > 0));
}

#[test]
fn a_run_is_the_same_given_its_seed() {
    let plan = plan(20);
    let a = run_cell(&formed_swarm(300, &plan), 10, Mode::PexDht, &plan);
    let b = run_cell(&formed_swarm(300, &plan), 10, Mode::PexDht, &plan);
    assert_eq!(a, b);
    let other = Plan { seed: 8, ..plan };
    let c = run_cell(&formed_swarm(300, &other), 10, Mode::PexDht, &other);
    assert_ne!(a, c);
}

#[test]
fn lookups_grow_slowly_with_the_dht() {
    let small = scale_model::lookup_scaling(500, DhtParams::BEP5, 40, 1);
    let large = scale_model::lookup_scaling(8_000, DhtParams::BEP5, 40, 1);
    assert_eq!((small.found, large.found), (40, 40));
    // 16 times the nodes: a few more queries, not 16 times as many.
    assert!(large.queried.0 >= small.queried.0, "{small:?} {large:?}");
    assert!(
        large.queried.0 <= 2 * small.queried.0,
        "{small:?} {large:?}"
    );
}
