//! `pvefleet dev`: the whole fleet in one process for a laptop or a homelab trial. pvesim
//! (3 nodes) stands in for Proxmox; migrations and topology are applied; intake, the saga
//! coordinator, the provisioner, the ha service, edge, the installer (through pvesim's
//! simulated `pct exec`), the autoscaler, nethotplug, the notifier and the backup service run against the local RabbitMQ and
//! Postgres (the database is created when missing). The profile it writes
//! (`~/.pvefleet/dev.toml`, mode 0600) tells every other command where intake and pvesim are.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use pvefleet_core::Settings;

use crate::profile::{self, Profile};

/// A fresh 32-byte key for sites' credentials, base64 (two v4 UUIDs: 244 random bits).
fn new_secrets_key() -> String {
    use base64::Engine as _;
    let mut key = Vec::with_capacity(32);
    key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    base64::engine::general_purpose::STANDARD.encode(key)
}

pub async fn run(
    settings: &Settings,
    listen: SocketAddr,
    pvesim: SocketAddr,
    task_ms: u64,
    without: &[String],
) -> anyhow::Result<ExitCode> {
    let mut s = settings.clone();
    let shutdown = pvefleet_core::shutdown::on_signal();
    // Before anything starts: where the profile goes, and the key of sites' credentials an
    // earlier dev kept there (a profile that does not read is not overwritten, key and all).
    let previous = profile::read()
        .map_err(|e| e.context("pvefleet dev keeps the key of sites' credentials there: fix or remove the file"))?
        .unwrap_or_default();
    if profile::path().is_none() {
        anyhow::bail!(
            "neither HOME nor {} is set: nowhere to write the dev profile",
            profile::PROFILE_ENV
        );
    }
    // Proxmox: pvesim, 3 nodes, tasks that take a moment like real ones.
    let secret = uuid::Uuid::new_v4().to_string();
    let (_sim, sim_addr) = pvefleet_pvesim::Sim::spawn_on(
        pvefleet_pvesim::SimConfig {
            nodes: vec!["pve1".into(), "pve2".into(), "pve3".into()],
            token: Some(("pvefleet@pve!dev".into(), secret.clone())),
            task_duration: Duration::from_millis(task_ms),
            ..Default::default()
        },
        pvesim,
    )
    .await
    .map_err(|e| anyhow::anyhow!("pvesim cannot listen on {pvesim}: {e} (choose another with --pvesim-listen)"))?;
    s.pve.url = format!("http://{sim_addr}");
    s.pve.token_id = Some("pvefleet@pve!dev".into());
    s.pve.token_secret = Some(pvefleet_core::Secret::new(secret.clone()));
    s.pve.templates = vec![
        "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst".into(),
        "local:vztmpl/ubuntu-24.04-standard_24.04-2_amd64.tar.zst".into(),
    ];
    // The installer: pvesim's simulated `pct exec`, and a key kept across dev runs.
    s.installer.transport = "pvesim".into();
    let secrets_key = match &s.installer.secrets_key {
        Some(k) => k.expose().to_string(),
        None => previous.installer_secrets_key.clone().unwrap_or_else(new_secrets_key),
    };
    s.installer.secrets_key = Some(pvefleet_core::Secret::new(secrets_key.clone()));
    if s.nethotplug.pools.is_empty() {
        // An address pool on the second bridge, for `pvefleet net attach --ip pool`.
        s.nethotplug.pools.insert(
            "vmbr1".into(),
            pvefleet_core::config::IpPool {
                cidr: "10.10.1.0/24".into(),
                gateway: Some("10.10.1.1".into()),
                first: None,
                last: None,
            },
        );
    }
    let pool = pvefleet_core::db::connect(&s.db).await?;
    pvefleet_core::db::migrate(&pool).await?;
    let topology = pvefleet_core::bus::topology::Topology::fleet(&s.bus);
    let probe = pvefleet_core::bus::probe::Probe::connect_with(&s.bus).await?;
    probe.declare(&topology).await?;
    probe.close();
    let client = pool.get().await?;
    let token = pvefleet_intake::create_token(&client, "dev", &["admin".into()]).await?;
    drop(client);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("intake cannot listen on {listen}: {e} (choose another with --listen)"))?;
    let api = format!("http://{}", listener.local_addr()?);
    let written = profile::save(&Profile {
        intake: Some(profile::Intake {
            url: api.clone(),
            token: token.clone(),
        }),
        pvesim: Some(profile::Pvesim {
            url: s.pve.url.clone(),
            token_id: "pvefleet@pve!dev".into(),
            token_secret: secret,
        }),
        installer_secrets_key: Some(secrets_key),
        bus_url: Some(s.bus.url.expose().to_string()),
        db_url: Some(s.db.url.expose().to_string()),
    })?;
    println!("pvefleet dev is running:");
    println!("  intake     {api}  (OpenAPI at {api}/openapi.json)");
    println!("  pvesim     http://{sim_addr}  (3 nodes, simulated Proxmox and pct exec)");
    println!("  token      {token}");
    println!("  profile    {}  (read by every pvefleet command)", written.display());
    let run = |name: &str| !without.iter().any(|w| w == name);
    let services: Vec<&str> = [
        "intake",
        "saga",
        "provisioner",
        "ha",
        "edge",
        "installer",
        "autoscaler",
        "nethotplug",
        "notifier",
        "backup",
    ]
    .into_iter()
    .filter(|n| run(n))
    .collect();
    println!("  services   {}", services.join(" "));
    if !without.is_empty() {
        println!("  not run    {}  (--without)", without.join(" "));
    }
    println!();
    println!("Try:  pvefleet site create blog --wait");
    println!("Stop with ctrl-c.");
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn({
        let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
        async move { pvefleet_intake::run(&s, pool, listener, Default::default(), sd).await }
    });
    if run("saga") {
        tasks.spawn({
            let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
            async move { pvefleet_saga::run(&s, pool, None, sd).await }
        });
    }
    if run("provisioner") {
        tasks.spawn({
            let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
            async move { pvefleet_provisioner::run(&s, Some(pool), None, sd).await }
        });
    }
    if run("ha") {
        tasks.spawn({
            let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
            async move { pvefleet_ha::run(&s, Some(pool), None, sd).await }
        });
    }
    if run("edge") {
        tasks.spawn({
            let (s, sd) = (s.clone(), shutdown.clone());
            async move { pvefleet_edge::run(&s, None, sd).await }
        });
    }
    if run("installer") {
        tasks.spawn({
            let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
            async move { pvefleet_installer::run(&s, pool, None, sd).await }
        });
    }
    if run("autoscaler") {
        tasks.spawn({
            let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
            async move { pvefleet_autoscaler::run(&s, pool, None, sd).await }
        });
    }
    if run("nethotplug") {
        tasks.spawn({
            let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
            async move { pvefleet_nethotplug::run(&s, pool, None, sd).await }
        });
    }
    if run("notifier") {
        tasks.spawn({
            let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
            async move { pvefleet_notifier::run(&s, pool, None, sd).await }
        });
    }
    if run("backup") {
        tasks.spawn({
            let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
            async move { pvefleet_backup::run(&s, pool, None, sd).await }
        });
    }
    let mut failed = false;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("error: a service stopped: {e:#}");
                failed = true;
                shutdown.cancel();
            }
            Err(e) => {
                eprintln!("error: a service panicked: {e}");
                failed = true;
                shutdown.cancel();
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
