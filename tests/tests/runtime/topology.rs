//! Topology declaration: idempotent, quorum queues with explicit arguments.

use pvefleet_core::bus::Topology;
use pvefleet_testkit::{TestVhost, init_tracing, settings};

#[tokio::test]
async fn declaring_the_fleet_topology_twice_succeeds_and_work_queues_are_quorum_with_explicit_arguments()
-> anyhow::Result<()> {
    init_tracing();
    let vhost = TestVhost::new()?;
    let s = settings(&vhost, None);
    let topology = Topology::fleet(&s.bus);
    let ch = vhost.probe().await?;
    ch.declare(&topology).await?;
    ch.declare(&topology).await?;

    let queues = vhost.list_queues()?;
    for wq in &topology.work_queues {
        let (_, kind, args) = queues
            .iter()
            .find(|(n, _, _)| n == &wq.name)
            .unwrap_or_else(|| panic!("{} missing", wq.name));
        assert_eq!(kind, "quorum", "{}", wq.name);
        for expected in [
            "x-delivery-limit\",3",
            "x-dead-letter-exchange\",\"pvefleet.parked\"",
            "x-dead-letter-strategy\",\"at-least-once\"",
            "x-overflow\",\"reject-publish\"",
            "x-queue-type\",\"quorum\"",
        ] {
            assert!(
                args.replace(' ', "").contains(expected),
                "{}: {expected} not in {args}",
                wq.name
            );
        }
    }
    for tier in ["pvefleet.wait.300ms", "pvefleet.wait.600ms", "pvefleet.wait.900ms"] {
        let (_, kind, args) = queues
            .iter()
            .find(|(n, _, _)| n == tier)
            .unwrap_or_else(|| panic!("{tier} missing"));
        assert_eq!(kind, "quorum");
        assert!(args.contains("x-message-ttl"), "{args}");
    }
    assert!(queues.iter().any(|(n, k, _)| n == "pvefleet.parked" && k == "quorum"));

    // A conflicting redeclare is refused loudly, not ignored.
    let mut other = s.bus.clone();
    other.delivery_limit = 7;
    let ch2 = vhost.probe().await?;
    let err = ch2
        .declare(&Topology::fleet(&other))
        .await
        .expect_err("inequivalent arguments");
    let chain = format!("{err:?}");
    assert!(
        chain.contains("inequivalent") || chain.contains("PRECONDITION"),
        "{chain}"
    );
    Ok(())
}
