//! `pvefleet-intake`: the intake API on `http.listen` (with `/metrics`, `/healthz`, `/readyz`),
//! writing commands through the outbox.

use pvefleet_core::service::Service;

fn main() -> anyhow::Result<()> {
    Service::new(
        "intake",
        "The HTTP API: sites, sagas, dead letters, network and autoscaling, written to the outbox as commands.",
    )
    .migrations()
    .serves_http()
    .main(|s| async move {
        let listener = tokio::net::TcpListener::bind(s.settings.http.listen).await?;
        pvefleet_intake::run(
            &s.settings,
            s.pool()?,
            listener,
            s.readiness.clone(),
            s.shutdown.clone(),
        )
        .await
    })
}
