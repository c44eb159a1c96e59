//! `pvefleet dev`: the whole fleet in one process for a laptop or a homelab trial. pvesim
//! (3 nodes) stands in for Proxmox; migrations and topology are applied; intake, the saga
//! coordinator, the provisioner, the ha service, edge and nethotplug run against the local RabbitMQ and
//! Postgres (the database is created when missing). A dev token is printed and saved.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use pvefleet_core::Settings;

/// Where the dev token is saved for `pvefleet site ...`.
pub fn token_file() -> Option<std::path::PathBuf> {
    std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".pvefleet").join("dev-token"))
}

pub async fn run(settings: &Settings, listen: SocketAddr, task_ms: u64) -> anyhow::Result<ExitCode> {
    let mut s = settings.clone();
    let shutdown = pvefleet_core::shutdown::on_signal();
    // Proxmox: pvesim, 3 nodes, tasks that take a moment like real ones.
    let secret = uuid::Uuid::new_v4().to_string();
    let (_sim, sim_addr) = pvefleet_pvesim::Sim::spawn(pvefleet_pvesim::SimConfig {
        nodes: vec!["pve1".into(), "pve2".into(), "pve3".into()],
        token: Some(("pvefleet@pve!dev".into(), secret.clone())),
        task_duration: Duration::from_millis(task_ms),
        ..Default::default()
    })
    .await?;
    s.pve.url = format!("http://{sim_addr}");
    s.pve.token_id = Some("pvefleet@pve!dev".into());
    s.pve.token_secret = Some(pvefleet_core::Secret::new(secret));
    s.pve.templates = vec![
        "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst".into(),
        "local:vztmpl/ubuntu-24.04-standard_24.04-2_amd64.tar.zst".into(),
    ];
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
    if let Some(path) = token_file() {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(&path, &token);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let api = format!("http://{}", listener.local_addr()?);
    println!("pvefleet dev is running:");
    println!("  intake     {api}  (OpenAPI at {api}/openapi.json)");
    println!("  pvesim     http://{sim_addr}  (3 nodes, simulated Proxmox)");
    println!("  token      {token}");
    println!();
    println!("Try:  pvefleet site create blog --app none --wait --api {api}");
    println!("Stop with ctrl-c.");
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn({
        let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
        async move { pvefleet_intake::run(&s, pool, listener, Default::default(), sd).await }
    });
    tasks.spawn({
        let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
        async move { pvefleet_saga::run(&s, pool, None, sd).await }
    });
    tasks.spawn({
        let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
        async move { pvefleet_provisioner::run(&s, Some(pool), None, sd).await }
    });
    tasks.spawn({
        let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
        async move { pvefleet_ha::run(&s, Some(pool), None, sd).await }
    });
    tasks.spawn({
        let (s, sd) = (s.clone(), shutdown.clone());
        async move { pvefleet_edge::run(&s, None, sd).await }
    });
    tasks.spawn({
        let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
        async move { pvefleet_nethotplug::run(&s, pool, None, sd).await }
    });
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
