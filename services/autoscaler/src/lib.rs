//! The autoscaler (issue 7, in progress): resizes running containers' cores and memory from
//! measured load. Built: the pure decision (`decide`), the sample windows (`window`) and the
//! tick (`tick`: one `/cluster/resources` read, a Postgres advisory lock so one replica acts,
//! persisted cooldowns, digest-guarded config writes read back, `autoscale_actions`). Still to
//! come: per-tag and per-container policies, `container.scaled`, alerts, the watchdog, the CLI,
//! the lxc-autoscaler import, the service binary and its benchmark.

pub mod alerts;
pub mod decide;
pub mod import;
pub mod policies;
pub mod tick;
pub mod window;

use tokio_util::sync::CancellationToken;

/// Runs the autoscaler until `shutdown`: a tick every `autoscaler.interval`, and the outbox
/// relay that publishes its `container.scaled` events.
pub async fn run(
    settings: &pvefleet_core::Settings,
    pool: deadpool_postgres::Pool,
    ready: Option<pvefleet_core::http::ReadyFlag>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pve = pvefleet_core::pve::client(&settings.pve)?;
    let topology = pvefleet_core::bus::topology::Topology::fleet(&settings.bus);
    let publisher = pvefleet_core::bus::Publisher::new(&settings.bus, "autoscaler", Some(topology));
    let relay = pvefleet_core::db::outbox::OutboxRelay::new(pool.clone(), publisher, settings.outbox.clone());
    let poke = relay.poker();
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    if let Some(r) = &ready {
        r.set(true);
    }
    let mut scaler = tick::Scaler::default();
    let s = &settings.autoscaler;
    loop {
        let started = std::time::Instant::now();
        match scaler.tick(&pve, &pool, s).await {
            Ok(report) if report.leader => {
                if !report.actions.is_empty() {
                    poke.notify_one();
                }
                tracing::debug!(
                    containers = report.containers,
                    actions = report.actions.len(),
                    waiting = report.waiting.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "Autoscaler tick."
                );
            }
            Ok(_) => tracing::debug!("Another autoscaler holds the lock; this one waits."),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "The autoscaler tick failed; trying again next tick."),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(s.interval) => {}
        }
    }
    let _ = relay_task.await;
    Ok(())
}
