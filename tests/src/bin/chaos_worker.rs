//! A worker process for chaos tests, killed or crashing on purpose by the test that starts it.
//!
//! Modes: `hang MARKER` (signals it started, then never finishes), `abort` (the handler kills
//! the process on every delivery), `slow MARKER` (signals it started, takes two seconds, and
//! stops on SIGTERM as a service does), `relay-abort` (the outbox relay publishes one batch and
//! the process dies before marking it sent). Config comes from `PVEFLEET_*` as in production.

use std::time::Duration;

use pvefleet_contracts::messages::ContainerCreate;
use pvefleet_core::Settings;
use pvefleet_core::bus::publisher::Publisher;
use pvefleet_core::bus::runner::{WorkerDeps, WorkerSpec, run_worker};
use pvefleet_core::bus::{Context, Handled, Handler, Router};
use pvefleet_core::db::outbox::OutboxRelay;
use pvefleet_tests::{Scripted, TEST_QUEUE, test_topology};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load(None)?;
    pvefleet_core::telemetry::init(&settings.telemetry);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or_default();
    let topology = test_topology(&settings.bus);
    let publisher = Publisher::new(&settings.bus, "chaos", Some(topology.clone()));
    match mode {
        "hang" | "abort" => {
            let marker = args.get(1).cloned().unwrap_or_default();
            let abort = mode == "abort";
            let handler = Scripted::new(move |msg, _ctx| {
                if abort {
                    std::process::abort();
                }
                let _ = std::fs::write(&marker, msg.hostname.as_bytes());
                // Never return: the test kills the process while the handler is in flight.
                std::thread::sleep(Duration::from_secs(3600));
                Ok(())
            });
            let mut spec = WorkerSpec::from_settings("chaos", TEST_QUEUE, &settings);
            spec.concurrency = 1;
            let deps = WorkerDeps {
                bus: settings.bus.clone(),
                topology,
                publisher,
                db: None,
                ready: None,
            };
            run_worker(deps, Router::new().command(handler), spec, CancellationToken::new()).await
        }
        "slow" => {
            let marker = args.get(1).cloned().unwrap_or_default();
            let handler = Slow { marker };
            let spec = WorkerSpec::from_settings("chaos", TEST_QUEUE, &settings);
            let deps = WorkerDeps {
                bus: settings.bus.clone(),
                topology,
                publisher,
                db: None,
                ready: None,
            };
            run_worker(
                deps,
                Router::new().command(handler),
                spec,
                pvefleet_core::shutdown::on_signal(),
            )
            .await
        }
        "relay-abort" => {
            let pool = pvefleet_core::db::connect(&settings.db).await?;
            let relay = OutboxRelay::new(pool, publisher, settings.outbox.clone())
                .with_after_publish_hook(|| std::process::abort());
            relay.relay_once().await?;
            anyhow::bail!("the relay hook should have ended the process")
        }
        other => anyhow::bail!("unknown mode '{other}'; expected hang, abort, slow or relay-abort"),
    }
}

/// Takes two seconds per message, announcing the start in a marker file.
struct Slow {
    marker: String,
}

#[async_trait::async_trait]
impl Handler<ContainerCreate> for Slow {
    async fn handle(&self, msg: ContainerCreate, _ctx: &Context<'_>) -> Handled {
        let _ = std::fs::write(&self.marker, msg.hostname.as_bytes());
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(())
    }
}
