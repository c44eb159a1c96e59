//! The chaos suite: the fleet run as separate processes on its own vhost and database, against
//! pvesim, and hurt while it provisions: a random service killed with SIGKILL every few
//! seconds, the broker's connections cut, every Postgres backend killed, 30 % of PVE calls
//! failing transiently, and a permanent PVE failure at each step. Each run must end with every
//! saga terminal, no duplicate container, no orphan, no leaked lease, and (with the watchdog
//! on throughout) no watchdog start of a container whose saga was in flight.
//!
//! `scripts/test` runs these alone, one at a time, after everything else (nextest filter
//! `binary(chaos)`): they are bounded in sites and time, but they load the machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fleet;

use std::time::{Duration, Instant};

use fleet::{Chaos, Fleet, PER_STEP};
use pvefleet_pvesim::Fault;
use tokio_util::sync::CancellationToken;

/// The longest a run may take to end every saga once the chaos stops.
const SETTLE: Duration = Duration::from_secs(240);

/// Runs `chaos` over `sites` sites and returns the report, asserting what must hold whatever
/// the chaos: every saga terminal, nothing duplicated, orphaned or leaked, the watchdog never
/// starting a container a saga was working on (and alive: it restarts containers stopped
/// behind the fleet's back at the end).
async fn run(chaos: Chaos, sites: usize, over: Duration) -> fleet::Report {
    let began = Instant::now();
    let mut f = Fleet::start(sites).await;
    match chaos {
        Chaos::TransientFaults => f.sim.fail_transiently(0.3),
        Chaos::PermanentFaults => {
            for kind in ["vzcreate", "vzstart", "vzsnapshot"] {
                for _ in 0..PER_STEP {
                    f.sim.lock_task_error(kind, "chaos: a permanent failure");
                }
            }
            f.sim.inject(
                serde_json::from_value::<Fault>(serde_json::json!({
                    "method": "POST", "path": "/cluster/ha/resources", "status": 400,
                    "message": "chaos: a permanent failure", "count": PER_STEP,
                }))
                .unwrap(),
            );
        }
        _ => {}
    }
    let stop = CancellationToken::new();
    let hurting = f.hurt(chaos, stop.clone());
    // The requests come over a while, so every stage of a saga meets the chaos; it goes on
    // while the sagas run, then stops, and the fleet must finish.
    f.request(sites, over).await;
    let _ = f.settle(Duration::from_secs(60)).await;
    stop.cancel();
    let strikes = hurting.await.unwrap();
    if chaos == Chaos::TransientFaults {
        f.sim.clear_faults();
    }
    let settled = f.settle(SETTLE).await;
    let alive = f.watchdog_restarts_stopped_sites(3).await;
    let report = f.report(strikes, began).await;
    println!("chaos {chaos:?}: {report}");
    let logs = if settled && alive { String::new() } else { f.logs_tail() };
    assert!(settled, "every saga ends: {report}\n{logs}");
    assert_eq!(report.terminal, sites as i64, "{report}");
    assert_eq!(report.duplicates, 0, "{report}");
    assert_eq!(report.orphans, 0, "{report}");
    assert_eq!(report.missing, 0, "{report}");
    assert_eq!(report.leaked_leases, 0, "{report}");
    assert!(
        alive,
        "the watchdog restarts containers stopped behind the fleet's back: {report}\n{logs}"
    );
    assert!(report.watchdog_starts >= 3, "{report}");
    assert_eq!(report.watchdog_starts_during_a_saga, 0, "{report}");
    f.stop().await;
    report
}

/// The runs, in a module of their own so `cargo test` can skip them by name (`chaos::`).
mod chaos {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn three_hundred_sites_hold_through_a_random_service_killed_every_few_seconds() {
        let r = run(Chaos::Kill9, 300, Duration::from_secs(40)).await;
        assert!(r.strikes >= 8, "the chaos ran: {r}");
        assert_eq!(r.completed, 300, "{r}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_hundred_sites_hold_through_the_brokers_connections_cut_every_five_seconds() {
        let r = run(Chaos::CutConnections, 100, Duration::from_secs(30)).await;
        assert!(r.strikes >= 4, "the chaos ran: {r}");
        assert_eq!(r.completed, 100, "{r}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_hundred_sites_hold_through_every_postgres_backend_killed_every_five_seconds() {
        let r = run(Chaos::KillBackends, 100, Duration::from_secs(30)).await;
        assert!(r.strikes >= 4, "the chaos ran: {r}");
        assert_eq!(r.completed, 100, "{r}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_hundred_sites_hold_through_thirty_percent_of_pve_calls_failing_transiently() {
        let r = run(Chaos::TransientFaults, 100, Duration::from_secs(10)).await;
        assert_eq!(r.completed, 100, "{r}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_permanent_failure_at_each_step_fails_and_fully_compensates_those_sites_only() {
        let r = run(Chaos::PermanentFaults, 100, Duration::from_secs(10)).await;
        // Five sites at each of create, start, snapshot and HA enable.
        assert_eq!(r.failed, 4 * PER_STEP as i64, "{r}");
        assert_eq!(r.completed, 100 - 4 * PER_STEP as i64, "{r}");
    }
}
