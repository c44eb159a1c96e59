//! `pvefleet bench autoscaler`: one autoscaler tick over many containers in pvesim, against
//! the per-container reads of the reference tool (at least 3 API calls per container).

use std::process::ExitCode;
use std::time::Instant;

use pvefleet_pvesim::{Load, Sim, SimConfig};

pub async fn run(settings: &pvefleet_core::Settings, containers: u32) -> anyhow::Result<ExitCode> {
    let mut s = settings.clone();
    let bench_db = format!("pvefleet_bench_{}", uuid::Uuid::new_v4().simple());
    let base = s.db.url.expose().to_string();
    let (prefix, _) = base
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("db.url has no database"))?;
    s.db.url = pvefleet_core::Secret::new(format!("{prefix}/{bench_db}"));
    let pool = pvefleet_core::db::connect(&s.db).await?;
    pvefleet_core::db::migrate(&pool).await?;
    let (sim, addr) = Sim::spawn(SimConfig {
        nodes: vec!["pve1".into(), "pve2".into(), "pve3".into()],
        token: Some(("bench@pve!a".into(), "x".into())),
        record_requests: true,
        node_memory: 4 << 40,
        ..SimConfig::default()
    })
    .await?;
    sim.populate(
        100_000,
        containers,
        Load {
            cpu: 0.5,
            mem: 900 << 20,
            ..Load::default()
        },
    );
    s.pve.url = format!("http://{addr}");
    s.pve.token_id = Some("bench@pve!a".into());
    s.pve.token_secret = Some(pvefleet_core::Secret::new("x"));
    let pve = pvefleet_core::pve::client(&s.pve)?;
    let mut a = s.autoscaler.clone();
    a.policy.evaluation_periods = 1;
    let mut scaler = pvefleet_autoscaler::tick::Scaler::default();
    // A warm-up tick fills the windows; the measured one decides for every container.
    scaler.tick(&pve, &pool, &a).await?;
    let before = sim.requests().len();
    let cpu_before = cpu_time();
    let started = Instant::now();
    let report = scaler.tick(&pve, &pool, &a).await?;
    let wall = started.elapsed();
    let cpu = cpu_time() - cpu_before;
    let calls = sim.requests().len() - before;
    let window_bytes = pvefleet_autoscaler::window::Window::bytes(a.policy.evaluation_periods) * containers as usize;
    let window_bytes_10 = pvefleet_autoscaler::window::Window::bytes(10) * containers as usize;
    println!("| measure | value | target |");
    println!("|---|---:|---:|");
    println!("| containers | {} | |", report.containers);
    println!("| API calls in the tick | {calls} | 1 |");
    println!(
        "| per-container tool, same cluster (3 per container) | {} | |",
        3 * containers
    );
    println!("| tick wall time | {:.0} ms | |", wall.as_secs_f64() * 1000.0);
    println!(
        "| decision time (windows and decisions, after the read) | {:.1} ms | ≤ 20 ms |",
        report.decide_time.as_secs_f64() * 1000.0
    );
    println!(
        "| process CPU time in the tick (pvesim's answer, the read, parsing, deciding) | {:.0} ms | |",
        cpu * 1000.0
    );
    println!(
        "| sample windows held ({} periods; 10 periods) | {:.2} MiB; {:.2} MiB | ≤ 50 MiB |",
        a.policy.evaluation_periods,
        window_bytes as f64 / (1 << 20) as f64,
        window_bytes_10 as f64 / (1 << 20) as f64
    );
    drop(pool);
    if let Ok((admin, conn)) = tokio_postgres::connect(&format!("{prefix}/postgres"), tokio_postgres::NoTls).await {
        tokio::spawn(conn);
        let _ = admin
            .execute(&format!("DROP DATABASE IF EXISTS {bench_db} WITH (FORCE)"), &[])
            .await;
    }
    Ok(ExitCode::SUCCESS)
}

/// This process's user + system CPU seconds, from /proc.
fn cpu_time() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
