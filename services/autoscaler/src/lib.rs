//! The autoscaler: resizes running containers' cores and memory from measured load.
//!
//! - `decide`: the decision, a pure function, with the floors and ceilings it keeps to;
//! - `engine`: one tick's decision with every input explicit, shared by the tick and the
//!   simulator;
//! - `simulate`: `pvefleet autoscale simulate`, a replay of ticks from input lines;
//! - `window`: sample windows that count each PVE sample once;
//! - `tick`: one `/cluster/resources` read, a Postgres advisory lock so one replica acts,
//!   persisted cooldowns, digest-guarded config writes read back, `autoscale_actions` and
//!   `container.scaled`, and `resource.alert`s (`alerts`);
//! - `policies`: global, per-tag and per-container policies in Postgres;
//! - `import`: an lxc-autoscaler `config.yaml` as policies.

pub mod alerts;
pub mod decide;
pub mod engine;
pub mod import;
pub mod simulate;
pub mod tick;
pub mod window;

// The policy store lives in the shared policy crate, so intake reaches it without depending
// on this worker.
pub use pvefleet_policy::autoscale as policies;

use tokio_util::sync::CancellationToken;

/// `autoscale.policy.set`: stores (or deletes) a policy. A bad scope or key is refused and
/// parked with the reason.
#[derive(Clone)]
pub struct PolicyHandler {
    pool: deadpool_postgres::Pool,
    default: pvefleet_core::config::AutoscalePolicy,
}

#[async_trait::async_trait]
impl pvefleet_core::bus::Handler<pvefleet_contracts::messages::AutoscalePolicySet> for PolicyHandler {
    async fn handle(
        &self,
        msg: pvefleet_contracts::messages::AutoscalePolicySet,
        _ctx: &pvefleet_core::bus::Context<'_>,
    ) -> pvefleet_core::bus::Handled {
        use pvefleet_core::bus::HandlerError;
        let Some(scope) = policies::Scope::parse(&msg.scope) else {
            return Err(HandlerError::rejected(format!("'{}' is not a policy scope", msg.scope)));
        };
        let client = self.pool.get().await?;
        match msg.policy {
            // The message carries the whole policy of its scope.
            Some(keys) => {
                let stored = pvefleet_core::db::in_tx(&client, async {
                    policies::set(
                        &client,
                        &self.default,
                        &scope,
                        &serde_json::Value::Object(keys),
                        policies::Write::Replace,
                    )
                    .await
                })
                .await;
                match stored {
                    Ok(_) => Ok(()),
                    Err(policies::WriteError::Invalid(i)) => Err(HandlerError::rejected(i.to_string())),
                    Err(policies::WriteError::Db(e)) => Err(HandlerError::transient(format!("{e:#}"))),
                }
            }
            None => {
                policies::delete(&client, &scope).await?;
                Ok(())
            }
        }
    }
}

/// Runs the autoscaler until `shutdown`: a tick every `autoscaler.interval`, and the outbox
/// relay that publishes its `container.scaled` events.
pub async fn run(
    settings: &pvefleet_core::Settings,
    pool: deadpool_postgres::Pool,
    ready: Option<pvefleet_core::http::ReadyFlag>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pve = pvefleet_core::pve::client(&settings.pve)?;
    let worker = pvefleet_core::bus::Worker::fleet("autoscaler", settings).ready(ready.clone());
    let relay =
        pvefleet_core::db::outbox::OutboxRelay::new(pool.clone(), worker.publisher().clone(), settings.outbox.clone());
    let worker = {
        let handler = PolicyHandler {
            pool: pool.clone(),
            default: settings.autoscaler.policy.clone(),
        };
        let router =
            pvefleet_core::bus::Router::new().route::<pvefleet_contracts::messages::AutoscalePolicySet, _>(handler);
        tokio::spawn(worker.run(router, shutdown.clone()))
    };
    let poke = relay.poker();
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    let scaler = tokio::sync::Mutex::new(tick::Scaler::with_plans(settings.saga.plans.clone()));
    let s = &settings.autoscaler;
    let (pve, pool, poke) = (&pve, &pool, &poke);
    pvefleet_core::periodic::Periodic::new("autoscaler_tick", s.interval)
        .at_once()
        .run(shutdown.clone(), || async {
            let started = std::time::Instant::now();
            let report = scaler.lock().await.tick(pve, pool, s).await?;
            if !report.leader {
                tracing::debug!("Another autoscaler holds the lock; this one waits.");
                return anyhow::Ok(());
            }
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
            anyhow::Ok(())
        })
        .await;
    let _ = relay_task.await;
    worker.await??;
    Ok(())
}
