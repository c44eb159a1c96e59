//! The fleet as separate processes (the saga coordinator, two provisioners, ha with its
//! watchdog), each started with `pvefleet-chaos-fleet SERVICE` on its own vhost and database,
//! against an in-process pvesim; the chaos that hurts it; and the report that says whether it
//! held: terminal sagas, duplicate containers, orphans, leaked leases, and the watchdog's starts
//! of containers a saga was working on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pvefleet_contracts::messages::{App, SiteProvision};
use pvefleet_contracts::{Message, SiteId};
use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::bus::{Outgoing, Publisher};
use pvefleet_proxmox::client::PveClient;
use pvefleet_pvesim::{Sim, SimConfig};
use pvefleet_testkit::{TestDb, TestVhost, eventually, init_tracing};
use rand::Rng as _;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const TEMPLATE: &str = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";
const TOKEN: (&str, &str) = ("chaos@pve!fleet", "chaos");

/// What hurts the fleet during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chaos {
    /// SIGKILL of a random service every 3 to 5 s, started again at once.
    Kill9,
    /// Every connection of the fleet's vhost closed by the broker every 5 s.
    CutConnections,
    /// Every Postgres backend of the fleet's database terminated every 5 s.
    KillBackends,
    /// 30 % of PVE calls fail transiently, the whole run.
    TransientFaults,
    /// A permanent PVE failure at each step (create, start, snapshot, HA) for five sites each.
    PermanentFaults,
}

/// Sites failed on purpose at each step by [`Chaos::PermanentFaults`].
pub const PER_STEP: usize = 5;

/// One service process, and how to start it again.
struct Proc {
    service: &'static str,
    child: tokio::process::Child,
}

/// The fleet under test.
pub struct Fleet {
    vhost: TestVhost,
    db: TestDb,
    pub sim: Sim,
    pub pve: PveClient,
    env: Vec<(String, String)>,
    procs: Arc<Mutex<Vec<Proc>>>,
    publisher: Publisher,
    dir: PathBuf,
    pub sites: Vec<SiteId>,
}

/// What a run came to.
#[derive(Debug, Default)]
pub struct Report {
    pub sites: usize,
    pub by_state: BTreeMap<String, i64>,
    pub terminal: i64,
    pub completed: i64,
    pub failed: i64,
    pub duplicates: usize,
    pub orphans: usize,
    pub missing: usize,
    pub leaked_leases: i64,
    pub dead_letters: i64,
    pub watchdog_starts: usize,
    pub watchdog_starts_during_a_saga: usize,
    /// How many times the chaos struck.
    pub strikes: usize,
    pub elapsed: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sites in {:.1}s: {} sagas terminal ({} completed, {} failed; by state {:?}), {} duplicate containers, \
             {} orphans, {} active sites without a running container, {} leaked leases, {} dead letters, \
             {} watchdog starts ({} of a container whose saga was in flight), the chaos struck {} times",
            self.sites,
            self.elapsed.as_secs_f64(),
            self.terminal,
            self.completed,
            self.failed,
            self.by_state,
            self.duplicates,
            self.orphans,
            self.missing,
            self.leaked_leases,
            self.dead_letters,
            self.watchdog_starts,
            self.watchdog_starts_during_a_saga,
            self.strikes,
        )
    }
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pvefleet-chaos-fleet")
}

impl Fleet {
    /// The fleet for `sites` sites, started: a saga coordinator, two provisioners and ha.
    pub async fn start(sites: usize) -> Self {
        init_tracing();
        let vhost = TestVhost::new().unwrap();
        let db = TestDb::create().await.unwrap();
        let (sim, addr) = Sim::spawn(SimConfig {
            nodes: vec!["pve1".into(), "pve2".into(), "pve3".into()],
            token: Some((TOKEN.0.into(), TOKEN.1.into())),
            // Tasks take a while, as on a real node, so the sagas are in flight when it hurts.
            task_duration: Duration::from_millis(200),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let mut s = pvefleet_testkit::settings(&vhost, Some(&db));
        pvefleet_testkit::use_pvesim(&mut s, addr, TOKEN.0, TOKEN.1);
        // The crash-loop fuse: a message in flight in several killed consumers is not parked.
        s.bus.delivery_limit = 20;
        let pve = pvefleet_core::pve::client(&s.pve).unwrap();
        let pool = pvefleet_core::db::connect(&s.db).await.unwrap();
        pvefleet_core::db::migrate(&pool).await.unwrap();
        drop(pool);
        let env: Vec<(String, String)> = [
            ("PVEFLEET_BUS__URL", vhost.url()),
            ("PVEFLEET_BUS__MAX_ATTEMPTS", "60".into()),
            ("PVEFLEET_BUS__DELIVERY_LIMIT", s.bus.delivery_limit.to_string()),
            ("PVEFLEET_BUS__RETRY_TIERS", r#"["200ms", "500ms", "1s", "2s"]"#.into()),
            ("PVEFLEET_BUS__CONNECT_TIMEOUT", "5s".into()),
            ("PVEFLEET_BUS__PUBLISH_TIMEOUT", "5s".into()),
            ("PVEFLEET_DB__URL", db.url()),
            ("PVEFLEET_DB__POOL_SIZE", "8".into()),
            ("PVEFLEET_WORKER__CONCURRENCY", "16".into()),
            ("PVEFLEET_WORKER__DRAIN_TIMEOUT", "2s".into()),
            ("PVEFLEET_OUTBOX__POLL_INTERVAL", "100ms".into()),
            ("PVEFLEET_PVE__URL", format!("http://{addr}")),
            ("PVEFLEET_PVE__TOKEN_ID", TOKEN.0.into()),
            ("PVEFLEET_PVE__TOKEN_SECRET", TOKEN.1.into()),
            ("PVEFLEET_PVE__TEMPLATES", format!(r#"["{TEMPLATE}"]"#)),
            ("PVEFLEET_SAGA__IP_CIDR", "10.64.0.0/16".into()),
            ("PVEFLEET_SAGA__GATEWAY", "10.64.0.1".into()),
            ("PVEFLEET_SAGA__IP_FIRST", "2".into()),
            ("PVEFLEET_SAGA__IP_LAST", "60000".into()),
            ("PVEFLEET_SAGA__MAX_SITES_PER_OWNER", "100000".into()),
            ("PVEFLEET_SAGA__STEP_TIMEOUT", "60s".into()),
            ("PVEFLEET_SAGA__STEP_RESENDS", "5".into()),
            ("PVEFLEET_SAGA__DEADLINE_SCAN_INTERVAL", "1s".into()),
            ("PVEFLEET_SAGA__COMPENSATION_ATTEMPTS", "10".into()),
            ("PVEFLEET_HA__RECONCILE_INTERVAL", "1s".into()),
            ("PVEFLEET_HA__WATCHDOG", "true".into()),
            ("PVEFLEET_HA__WATCHDOG_MAX_RESTARTS", "100".into()),
            ("PVEFLEET_HTTP__LISTEN", "127.0.0.1:0".into()),
            ("PVEFLEET_TELEMETRY__FORMAT", "json".into()),
            ("PVEFLEET_TELEMETRY__FILTER", "warn".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let dir = std::env::temp_dir().join(format!("pvefleet-chaos-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let fleet = Self {
            publisher: pvefleet_testkit::broker::fleet_publisher(&s).await.unwrap(),
            vhost,
            db,
            sim,
            pve,
            env,
            procs: Arc::new(Mutex::new(Vec::new())),
            dir,
            sites: Vec::with_capacity(sites),
        };
        for service in ["saga", "provisioner", "provisioner", "ha"] {
            let p = fleet.spawn(service, fleet.procs.lock().await.len());
            fleet.procs.lock().await.push(p);
        }
        fleet
    }

    fn spawn(&self, service: &'static str, index: usize) -> Proc {
        spawn(&self.env, &self.dir, service, index)
    }

    /// Publishes `n` site requests straight to the bus, the upstream path, spread evenly over
    /// `over`; every fourth asks for HA, so every step of the plan is run.
    pub async fn request(&mut self, n: usize, over: Duration) {
        let gap = over / (n.max(1) as u32);
        let t0 = tokio::time::Instant::now();
        for i in 0..n {
            tokio::time::sleep_until(t0 + gap * i as u32).await;
            let req = SiteProvision {
                site_id: SiteId::new(),
                subdomain: format!("chaos{i}"),
                owner: "chaos".into(),
                plan: Some("small".into()),
                cores: None,
                memory_mb: None,
                disk_gb: None,
                template: TEMPLATE.into(),
                node: None,
                ha: i % 4 == 0,
                app: App::none(),
            };
            let origin = Origin {
                correlation_id: Some(Uuid::now_v7()),
                ..Origin::default()
            };
            let out = Outgoing::message(&req, &origin).unwrap();
            // The broker may be cutting connections: a publish is retried until confirmed.
            self.publisher
                .publish_reliably(&out, Duration::from_secs(60))
                .await
                .unwrap_or_else(|e| panic!("cannot publish {}: {e}", SiteProvision::TYPE));
            self.sites.push(req.site_id);
        }
    }

    /// Hurts the fleet with `chaos` until `stop`. Returns how many times it struck (processes
    /// killed, connection cuts, backend kills).
    pub fn hurt(&self, chaos: Chaos, stop: CancellationToken) -> tokio::task::JoinHandle<usize> {
        let (procs, env, dir) = (self.procs.clone(), self.env.clone(), self.dir.clone());
        let vhost = self.vhost.name().to_string();
        let db_url = self.db.url();
        let db_name = self.db.name().to_string();
        tokio::spawn(async move {
            let mut kills = 0;
            loop {
                let wait = match chaos {
                    Chaos::Kill9 => Duration::from_millis(rand::rng().random_range(3000..5000)),
                    Chaos::CutConnections | Chaos::KillBackends => Duration::from_secs(5),
                    Chaos::TransientFaults | Chaos::PermanentFaults => return 0,
                };
                tokio::select! {
                    _ = stop.cancelled() => return kills,
                    _ = tokio::time::sleep(wait) => {}
                }
                match chaos {
                    Chaos::Kill9 => {
                        let mut all = procs.lock().await;
                        let i = rand::rng().random_range(0..all.len());
                        let p = &mut all[i];
                        // SIGKILL: no drain, no ack, no clean close.
                        let _ = p.child.kill().await;
                        let service = p.service;
                        all[i] = spawn(&env, &dir, service, i);
                        kills += 1;
                    }
                    Chaos::CutConnections => {
                        let cut = tokio::process::Command::new("rabbitmqctl")
                            .args(["-q", "close_all_connections", "-p", &vhost, "chaos: connections cut"])
                            .output()
                            .await;
                        if cut.is_ok_and(|o| o.status.success()) {
                            kills += 1;
                        }
                    }
                    Chaos::KillBackends => {
                        if let Ok((client, conn)) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls).await {
                            tokio::spawn(conn);
                            let killed = client
                                .execute(
                                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                                    &[&db_name],
                                )
                                .await;
                            if killed.is_ok_and(|n| n > 0) {
                                kills += 1;
                            }
                        }
                    }
                    Chaos::TransientFaults | Chaos::PermanentFaults => {}
                }
            }
        })
    }

    /// Waits until every site's provisioning saga has ended, at most `timeout`.
    pub async fn settle(&self, timeout: Duration) -> bool {
        let client = self.db.client().await.unwrap();
        let n = self.sites.len() as i64;
        let began = Instant::now();
        let mut said = Instant::now();
        eventually(timeout, || {
            let client = &client;
            let progress = said.elapsed() >= Duration::from_secs(10);
            if progress {
                said = Instant::now();
            }
            async move {
                let rows = client
                    .query(
                        "SELECT state, count(*) FROM sagas WHERE kind = 'provision' GROUP BY state",
                        &[],
                    )
                    .await
                    .ok()?;
                let states: BTreeMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                let done = states.get("completed").copied().unwrap_or(0) + states.get("failed").copied().unwrap_or(0);
                if progress {
                    eprintln!(
                        "  after {:.0}s: {done} of {n} sagas ended; {states:?}",
                        began.elapsed().as_secs_f64()
                    );
                }
                (done >= n).then_some(())
            }
        })
        .await
        .is_some()
    }

    /// The watchdog's starts, from the ha processes' JSON logs: (vmid, when).
    fn watchdog_starts(&self) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for e in entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("ha"))
        {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if v["message"] == "The watchdog started a stopped fleet container."
                    && let (Some(vmid), Some(at)) = (v["vmid"].as_i64(), v["timestamp"].as_str())
                {
                    out.push((vmid, at.to_string()));
                }
            }
        }
        out
    }

    /// Stops `n` active sites' containers behind the fleet's back, and waits until the
    /// watchdog has started each again: the watchdog was alive through the run, and what it
    /// logs is what the report reads.
    pub async fn watchdog_restarts_stopped_sites(&self, n: usize) -> bool {
        let client = self.db.client().await.unwrap();
        let rows = client
            .query(
                "SELECT vmid, node FROM sites WHERE state = 'active' AND spec->>'ha' = 'false' ORDER BY vmid LIMIT $1",
                &[&(n as i64)],
            )
            .await
            .unwrap();
        let mut stopped = Vec::new();
        for r in &rows {
            let (vmid, node): (i32, String) = (r.get(0), r.get(1));
            self.pve.lxc_stop(&node, vmid as u32).await.unwrap();
            stopped.push(i64::from(vmid));
        }
        eventually(Duration::from_secs(30), || async {
            let started: HashSet<i64> = self.watchdog_starts().into_iter().map(|(v, _)| v).collect();
            stopped.iter().all(|v| started.contains(v)).then_some(())
        })
        .await
        .is_some()
    }

    /// The report: every count the run is judged by.
    pub async fn report(&self, strikes: usize, began: Instant) -> Report {
        let client = self.db.client().await.unwrap();
        let mut r = Report {
            sites: self.sites.len(),
            strikes,
            elapsed: began.elapsed(),
            ..Report::default()
        };
        for row in client
            .query(
                "SELECT state, count(*) FROM sagas WHERE kind = 'provision' GROUP BY state",
                &[],
            )
            .await
            .unwrap()
        {
            r.by_state.insert(row.get(0), row.get(1));
        }
        r.completed = r.by_state.get("completed").copied().unwrap_or(0);
        r.failed = r.by_state.get("failed").copied().unwrap_or(0);
        r.terminal = r.completed + r.failed;
        let active: HashMap<Uuid, i32> = client
            .query("SELECT id, vmid FROM sites WHERE state = 'active'", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        // Containers in PVE, by the site their description names.
        let containers = self
            .pve
            .resources(Some(pvefleet_proxmox::client::api::ResourceType::Vm))
            .await
            .unwrap();
        let mut per_site: HashMap<Option<Uuid>, Vec<(u64, bool)>> = HashMap::new();
        for c in &containers {
            let vmid = c.vmid.unwrap_or(0);
            let text = self.sim.config_text(vmid as u32).unwrap_or_default();
            let site = text
                .lines()
                .find_map(|l| l.trim_start_matches('#').trim().strip_prefix("pvefleet-site:"))
                .and_then(|s| s.trim().parse::<Uuid>().ok());
            per_site
                .entry(site)
                .or_default()
                .push((vmid, c.status.as_deref() == Some("running")));
        }
        for (site, cts) in &per_site {
            match site.and_then(|s| active.get(&s).map(|v| (s, *v))) {
                Some((_, vmid)) => {
                    r.duplicates += cts.len() - 1;
                    if !cts.iter().any(|(v, running)| *v == vmid as u64 && *running) {
                        r.missing += 1;
                    }
                }
                None => r.orphans += cts.len(),
            }
        }
        r.missing += active.keys().filter(|s| !per_site.contains_key(&Some(**s))).count();
        r.leaked_leases = client
            .query_one(
                "SELECT count(*) FROM leases l WHERE l.site_id IS NOT NULL
                 AND NOT EXISTS (SELECT 1 FROM sites s WHERE s.id = l.site_id AND s.state = 'active')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        r.dead_letters = client
            .query_one("SELECT count(*) FROM dead_letters", &[])
            .await
            .unwrap()
            .get(0);
        let starts = self.watchdog_starts();
        r.watchdog_starts = starts.len();
        for (vmid, at) in &starts {
            // A saga of the container's site that had begun and not yet ended at that moment.
            let during: i64 = client
                .query_one(
                    "SELECT count(*) FROM sagas g JOIN sites s ON s.id = g.site_id
                     WHERE s.vmid = $1::int AND g.created_at <= $2::text::timestamptz
                       AND (g.state NOT IN ('completed', 'failed', 'superseded') OR g.updated_at >= $2::text::timestamptz)",
                    &[&(*vmid as i32), at],
                )
                .await
                .unwrap()
                .get(0);
            if during > 0 {
                r.watchdog_starts_during_a_saga += 1;
            }
        }
        r
    }

    /// Stops every process, politely (SIGTERM) and then for sure.
    pub async fn stop(self) {
        let mut all = self.procs.lock().await;
        for p in all.iter_mut() {
            if let Some(pid) = p.child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
        }
        for p in all.iter_mut() {
            if tokio::time::timeout(Duration::from_secs(10), p.child.wait())
                .await
                .is_err()
            {
                let _ = p.child.kill().await;
            }
        }
        drop(all);
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// The logs of the processes, for a failure message.
    pub fn logs_tail(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out.push_str(&format!("--- {}\n", e.file_name().to_string_lossy()));
                for l in tail.into_iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }
}

fn spawn(env: &[(String, String)], dir: &std::path::Path, service: &'static str, index: usize) -> Proc {
    let log = dir.join(format!("{service}-{index}.log"));
    let file = OpenOptions::new().create(true).append(true).open(&log).unwrap();
    let child = tokio::process::Command::new(bin())
        .arg(service)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Proc { service, child }
}
