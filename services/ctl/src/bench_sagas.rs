//! `pvefleet bench sagas`: provisioning sagas end to end against pvesim with zero task
//! durations. The saga coordinator, the provisioner and the ha service run in this process
//! (or, with `--separate`, as their own binaries beside this one). Requests are published
//! straight to the bus, the upstream path. It reports:
//! - sagas per second, closed loop with `--concurrency` in flight;
//! - end-to-end latency p50/p99 at an offered open-loop rate (`--rate` per second);
//! - broker messages per second moved by the fleet, beside the raw lapin ceiling measured in
//!   the same run;
//! - peak RSS of the fleet.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pvefleet_contracts::messages::{App, SiteProvision};
use pvefleet_core::Settings;
use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::bus::{Outgoing, Publisher};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

const TEMPLATE: &str = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";
/// Messages one saga moves: site.provision, 3 commands, 3 events, site.provisioned.
const MESSAGES_PER_SAGA: f64 = 8.0;

fn peak_rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Waiters {
    sent: Mutex<HashMap<String, (Instant, tokio::sync::oneshot::Sender<Duration>)>>,
}

pub async fn run(
    settings: &Settings,
    count: usize,
    concurrency: usize,
    rate: u32,
    rate_secs: u64,
    separate: bool,
) -> anyhow::Result<ExitCode> {
    let mut s = settings.clone();
    // A database of its own, dropped at the end, so leases and sites start empty.
    let bench_db = format!("pvefleet_bench_{}", uuid::Uuid::new_v4().simple());
    let base_url = s.db.url.expose().to_string();
    let (prefix, _) = base_url
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("db.url has no database"))?;
    s.db.url = pvefleet_core::Secret::new(format!("{prefix}/{bench_db}"));
    s.db.pool_size = 16;
    s.worker.concurrency = 64;
    s.saga.vmid_first = 100_000;
    s.saga.vmid_last = 100_000 + count as u32 + 10 * (rate * rate_secs as u32) + 100;
    s.saga.ip_cidr = "10.64.0.0/16".into();
    s.saga.gateway = "10.64.0.1".into();
    s.saga.ip_first = 2;
    s.saga.ip_last = 65_000;
    s.saga.max_sites_per_owner = u32::MAX;
    s.outbox.poll_interval = Duration::from_millis(20);
    let (_sim, sim_addr) = pvefleet_pvesim::Sim::spawn(pvefleet_pvesim::SimConfig {
        nodes: vec!["pve1".into(), "pve2".into(), "pve3".into()],
        task_duration: Duration::ZERO,
        ..Default::default()
    })
    .await?;
    s.pve.url = format!("http://{sim_addr}");
    s.pve.token_id = Some("bench@pve!bench".into());
    s.pve.token_secret = Some(pvefleet_core::Secret::new("bench"));
    s.pve.templates = vec![TEMPLATE.into()];
    let pool = pvefleet_core::db::connect(&s.db).await?;
    pvefleet_core::db::migrate(&pool).await?;
    let topology = pvefleet_core::bus::topology::Topology::fleet(&s.bus);
    let probe = pvefleet_core::bus::probe::Probe::connect_with(&s.bus).await?;
    probe.declare(&topology).await?;
    // Start from empty queues: an earlier fleet on this vhost may have left work behind.
    for q in ["saga", "provisioner", "ha"] {
        let _ = probe.purge(&pvefleet_contracts::routing::work_queue(q)).await;
    }
    let shutdown = CancellationToken::new();
    let mut children = Vec::new();
    let mut tasks = Vec::new();
    if separate {
        let dir = std::env::current_exe()?
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        for bin in ["pvefleet-saga", "pvefleet-provisioner", "pvefleet-ha"] {
            let child = tokio::process::Command::new(dir.join(bin))
                .env("PVEFLEET_BUS__URL", s.bus.url.expose())
                .env("PVEFLEET_DB__URL", s.db.url.expose())
                .env("PVEFLEET_DB__POOL_SIZE", "16")
                .env("PVEFLEET_WORKER__CONCURRENCY", "64")
                .env("PVEFLEET_OUTBOX__POLL_INTERVAL", "20ms")
                .env("PVEFLEET_PVE__URL", &s.pve.url)
                .env("PVEFLEET_PVE__TOKEN_ID", "bench@pve!bench")
                .env("PVEFLEET_PVE__TOKEN_SECRET", "bench")
                .env("PVEFLEET_PVE__TEMPLATES", format!("[\"{TEMPLATE}\"]"))
                .env("PVEFLEET_SAGA__VMID_FIRST", s.saga.vmid_first.to_string())
                .env("PVEFLEET_SAGA__VMID_LAST", s.saga.vmid_last.to_string())
                .env("PVEFLEET_SAGA__IP_CIDR", &s.saga.ip_cidr)
                .env("PVEFLEET_SAGA__GATEWAY", &s.saga.gateway)
                .env("PVEFLEET_SAGA__IP_FIRST", "2")
                .env("PVEFLEET_SAGA__IP_LAST", "65000")
                .env("PVEFLEET_HTTP__LISTEN", "127.0.0.1:0")
                .env("PVEFLEET_TELEMETRY__FILTER", "warn")
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot start {bin} from {}: {e} (build it with cargo build --release)",
                        dir.display()
                    )
                })?;
            children.push(child);
        }
    } else {
        tasks.push(tokio::spawn({
            let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
            async move { pvefleet_saga::run(&s, pool, None, sd).await }
        }));
        tasks.push(tokio::spawn({
            let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
            async move { pvefleet_provisioner::run(&s, Some(pool), None, sd).await }
        }));
        tasks.push(tokio::spawn({
            let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
            async move { pvefleet_ha::run(&s, Some(pool), None, sd).await }
        }));
    }
    // Completion events, matched to their request by site id.
    let q = probe
        .event_queue(&["site.provisioned", "site.provision_failed"])
        .await?;
    let waiters = Arc::new(Waiters {
        sent: Mutex::new(HashMap::new()),
    });
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut consumer = probe.consume(&q, 1000).await?;
    let listener = tokio::spawn({
        let waiters = waiters.clone();
        let failed = failed.clone();
        async move {
            while let Ok(Some(d)) = consumer.next(Duration::from_secs(3600)).await {
                let _ = d.ack().await;
                let body: serde_json::Value = serde_json::from_slice(&d.received.body).unwrap_or_default();
                if d.received.routing_key == "site.provision_failed" {
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let id = body["site_id"].as_str().unwrap_or_default().to_string();
                if let Some((at, tx)) = waiters.sent.lock().await.remove(&id) {
                    let _ = tx.send(at.elapsed());
                }
            }
        }
    });
    let publisher = Publisher::new(&s.bus, "bench-sagas", Some(topology));
    publisher.connect().await?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..6].to_string();
    let one = {
        let publisher = publisher.clone();
        let waiters = waiters.clone();
        let run_id = run_id.clone();
        move |i: usize| {
            let publisher = publisher.clone();
            let waiters = waiters.clone();
            let run_id = run_id.clone();
            async move {
                let req = SiteProvision {
                    site_id: pvefleet_contracts::SiteId::new(),
                    subdomain: format!("b{run_id}-{i}"),
                    owner: "bench".into(),
                    plan: Some("small".into()),
                    cores: None,
                    memory_mb: None,
                    disk_gb: None,
                    template: TEMPLATE.into(),
                    node: None,
                    ha: false,
                    app: App::none(),
                };
                let (tx, rx) = tokio::sync::oneshot::channel();
                waiters
                    .sent
                    .lock()
                    .await
                    .insert(req.site_id.to_string(), (Instant::now(), tx));
                let origin = Origin {
                    correlation_id: Some(uuid::Uuid::now_v7()),
                    ..Origin::default()
                };
                let out = Outgoing::message(&req, &origin).ok()?;
                if publisher.publish(&out).await.is_err() {
                    return None;
                }
                tokio::time::timeout(Duration::from_secs(120), rx)
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
        }
    };
    eprintln!("warming up…");
    futures::stream::iter(0..50)
        .map(&one)
        .buffer_unordered(50)
        .collect::<Vec<_>>()
        .await;

    // 1. Throughput, closed loop.
    eprintln!("{count} sagas, {concurrency} in flight…");
    let started = Instant::now();
    let done: Vec<Option<Duration>> = futures::stream::iter(1_000..1_000 + count)
        .map(&one)
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed();
    let completed = done.iter().filter(|d| d.is_some()).count();
    let sagas_per_sec = completed as f64 / elapsed.as_secs_f64();

    // 2. Latency at an offered rate, open loop.
    let n = (rate as u64 * rate_secs) as usize;
    eprintln!("{n} sagas offered at {rate}/s…");
    let mut handles = Vec::with_capacity(n);
    let gap = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let t0 = tokio::time::Instant::now();
    for i in 0..n {
        tokio::time::sleep_until(t0 + gap * i as u32).await;
        handles.push(tokio::spawn(one(1_000_000 + i)));
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(n);
    for h in handles {
        if let Ok(Some(d)) = h.await {
            latencies.push(d);
        }
    }
    latencies.sort();

    // 3. The raw broker ceiling, in the same run.
    eprintln!("raw broker ceiling…");
    let raw = crate::bench::raw(&s.bus, 20_000, 256).await?;
    let raw_rate = raw.publish.min(raw.consume);
    let fleet_msgs = sagas_per_sec * MESSAGES_PER_SAGA;
    let rss = if separate {
        children
            .iter()
            .filter_map(|c| c.id())
            .map(|pid| peak_rss_kib(&pid.to_string()))
            .sum::<u64>()
    } else {
        peak_rss_kib("self")
    };
    let mode = if separate {
        "separate processes (saga, provisioner, ha)"
    } else {
        "one process"
    };
    println!("Fleet in {mode}; pvesim 3 nodes, zero task durations; app none, no HA.");
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| provisioning sagas/s ({count}, {concurrency} in flight) | {sagas_per_sec:.0} |");
    println!(
        "| sagas completed / failed | {completed} / {} |",
        failed.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!(
        "| end-to-end p50 at {rate}/s offered ({} sagas) | {:.0} ms |",
        latencies.len(),
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0
    );
    println!(
        "| end-to-end p99 at {rate}/s offered | {:.0} ms |",
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0
    );
    println!("| fleet broker msgs/s ({MESSAGES_PER_SAGA} per saga) | {fleet_msgs:.0} |");
    println!(
        "| raw lapin msgs/s (min of publish {:.0}, consume {:.0}) | {raw_rate:.0} |",
        raw.publish, raw.consume
    );
    println!("| fleet / raw | {:.2} |", fleet_msgs / raw_rate.max(1.0));
    println!("| peak RSS of the fleet | {:.0} MiB |", rss as f64 / 1024.0);
    shutdown.cancel();
    for t in tasks {
        let _ = t.await;
    }
    for mut c in children {
        let _ = c.kill().await;
    }
    listener.abort();
    probe.close();
    drop(pool);
    // Drop the bench database.
    if let Ok((client, connection)) =
        tokio_postgres::connect(&format!("{prefix}/postgres"), tokio_postgres::NoTls).await
    {
        tokio::spawn(connection);
        let _ = client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {bench_db} WITH (FORCE)"))
            .await;
    }
    Ok(ExitCode::SUCCESS)
}
