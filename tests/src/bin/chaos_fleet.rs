//! `pvefleet-chaos-fleet SERVICE`: one fleet service (`saga`, `provisioner` or `ha`) as a process
//! of its own, started the way its binary starts it, with config from `PVEFLEET_*`. The chaos
//! suite runs the fleet as separate processes with this, as docker-compose does with the
//! service binaries, so it can kill one with SIGKILL and start it again.

use pvefleet_core::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let service = std::env::args().nth(1).unwrap_or_default();
    let settings = Settings::load(None)?;
    pvefleet_core::telemetry::init(&settings.telemetry);
    let shutdown = pvefleet_core::shutdown::on_signal();
    let pool = pvefleet_core::db::connect(&settings.db).await?;
    let result = match service.as_str() {
        "saga" => {
            pvefleet_core::db::migrate(&pool).await?;
            pvefleet_saga::run(&settings, pool, None, shutdown.clone()).await
        }
        "provisioner" => pvefleet_provisioner::run(&settings, Some(pool), None, shutdown.clone()).await,
        "ha" => pvefleet_ha::run(&settings, Some(pool), None, shutdown.clone()).await,
        other => anyhow::bail!("no service '{other}': give saga, provisioner or ha"),
    };
    shutdown.cancel();
    result
}
