//! The backup service against pvesim, the real Postgres (own database) and the real RabbitMQ
//! (own vhost): policies kept in step with PVE's backup jobs as sites come and go, a job an
//! operator made by hand left alone; the records kept in step with what the jobs write and
//! prune on the simulated clock; on-demand and final backups through `backup.create`, their
//! faults, and a final backup removed when its retention ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pvefleet_backup::ops;
use pvefleet_backup::policy::Policy;
use pvefleet_contracts::messages::BackupKind;
use pvefleet_core::audit::Actor;
use pvefleet_proxmox::client::{Params, PveClient};
use pvefleet_pvesim::{Sim, SimConfig};
use pvefleet_testkit::{TestDb, TestVhost};
use uuid::Uuid;

const TOKEN: (&str, &str) = ("fleet@pve!backup", "s3cret");
const DAY: u64 = 86_400;

struct Rig {
    sim: Sim,
    pve: PveClient,
    pool: deadpool_postgres::Pool,
    settings: pvefleet_core::Settings,
    _db: TestDb,
    vhost: TestVhost,
}

async fn rig() -> Rig {
    pvefleet_testkit::init_tracing();
    let (sim, addr) = Sim::spawn(SimConfig {
        token: Some((TOKEN.0.into(), TOKEN.1.into())),
        record_requests: true,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let db = TestDb::create().await.unwrap();
    let vhost = TestVhost::new().unwrap();
    let mut settings = pvefleet_testkit::settings(&vhost, Some(&db));
    pvefleet_testkit::use_pvesim(&mut settings, addr, TOKEN.0, TOKEN.1);
    settings.pve.task_timeout = Duration::from_secs(10);
    settings.backup.sync_interval = Duration::from_secs(3600);
    let pool = pvefleet_core::db::connect(&settings.db).await.unwrap();
    pvefleet_core::db::migrate(&pool).await.unwrap();
    let pve = pvefleet_backup::client(&settings).unwrap();
    Rig {
        sim,
        pve,
        pool,
        settings,
        _db: db,
        vhost,
    }
}

impl Rig {
    /// A container in pvesim and an active site holding it.
    async fn site(&self, vmid: u32, node: &str, name: &str) -> Uuid {
        let params = Params::new()
            .set("vmid", vmid)
            .set("ostemplate", "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst")
            .set("hostname", name)
            .set("rootfs", "local-lvm:8");
        self.pve.lxc_create(node, params).await.unwrap();
        let id = Uuid::now_v7();
        let db = self.pool.get().await.unwrap();
        db.execute(
            "INSERT INTO sites (id, subdomain, owner, state, spec, vmid, node) VALUES ($1, $2, 'alice', 'active', '{}', $3, $4)",
            &[&id, &name, &(vmid as i32), &node],
        )
        .await
        .unwrap();
        id
    }

    /// A connection of its own, as the CLI and intake hold one for an operation.
    async fn client(&self) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(self.settings.db.url.expose(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c
    }

    /// The backup service running on the rig's settings until `shutdown`, with the broker's
    /// topology declared.
    async fn serve(
        &self,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> (
        tokio::task::JoinHandle<anyhow::Result<()>>,
        pvefleet_core::bus::Publisher,
    ) {
        let settings: &'static pvefleet_core::Settings = Box::leak(Box::new(self.settings.clone()));
        let service = tokio::spawn(pvefleet_backup::run(
            settings,
            self.pool.clone(),
            None,
            shutdown.clone(),
        ));
        let publisher = pvefleet_testkit::broker::fleet_publisher(&self.settings).await.unwrap();
        (service, publisher)
    }

    async fn sync(&self) -> pvefleet_backup::SyncOutcome {
        pvefleet_backup::sync_once(&self.pve, &self.pool, &self.settings.backup, &self.settings.saga)
            .await
            .unwrap()
    }

    async fn jobs(&self) -> Vec<pvefleet_proxmox::client::backup::BackupJob> {
        self.pve.backup_jobs().await.unwrap()
    }

    async fn audit(&self, action: &str) -> i64 {
        let db = self.pool.get().await.unwrap();
        db.query_one("SELECT count(*) FROM audit_log WHERE action = $1", &[&action])
            .await
            .unwrap()
            .get(0)
    }

    /// Whether PVE has a guest `vmid`.
    async fn guest(&self, vmid: u32) -> bool {
        let guests = self
            .pve
            .resources(Some(pvefleet_proxmox::client::api::ResourceType::Vm))
            .await
            .unwrap();
        guests.iter().any(|g| g.vmid == Some(u64::from(vmid)))
    }

    async fn count(&self, sql: &str) -> i64 {
        let db = self.pool.get().await.unwrap();
        db.query_one(sql, &[]).await.unwrap().get(0)
    }
}

fn weekly() -> Policy {
    Policy {
        name: "weekly".into(),
        schedule: "sun 03:00".into(),
        storage: "backup".into(),
        mode: "snapshot".into(),
        compress: "zstd".into(),
        retention: "keep-weekly=4".into(),
        enabled: true,
    }
}

#[tokio::test]
async fn policies_become_pve_backup_jobs_that_follow_the_sites_and_leave_hand_made_jobs_alone() {
    let r = rig().await;
    // An operator's own job, made by hand in PVE.
    r.pve
        .backup_job_create(
            Params::new()
                .set("id", "backup-by-hand")
                .set("schedule", "sun 01:00")
                .set("all", 1)
                .set("storage", "local"),
        )
        .await
        .unwrap();
    let a = r.site(10001, "pve1", "alpha").await;
    r.site(10002, "pve2", "beta").await;
    let out = r.sync().await;
    assert!(out.leader);
    assert_eq!(out.jobs.created, vec!["pvefleet-daily"]);
    let jobs = r.jobs().await;
    let daily = jobs
        .iter()
        .find(|j| j.id == "pvefleet-daily")
        .expect("the default policy's job");
    assert_eq!(daily.vmids(), vec![10001, 10002]);
    assert_eq!(daily.schedule.as_deref(), Some("02:00"));
    assert_eq!(daily.storage.as_deref(), Some("local"));
    assert_eq!(daily.prune_backups.as_ref().and_then(|p| p.keep_daily), Some(7));
    // Nothing changes when nothing did: no writes to PVE's jobs.
    let writes = |sim: &Sim| {
        sim.requests()
            .iter()
            .filter(|q| q.path.starts_with("/cluster/backup") && q.method != "GET")
            .count()
    };
    let before = writes(&r.sim);
    let again = r.sync().await;
    assert!(!again.jobs.changed(), "{:?}", again.jobs);
    assert_eq!(writes(&r.sim), before);
    // An operator's hand in a managed job: it is put back as the policy says.
    r.pve
        .backup_job_update(
            "pvefleet-daily",
            Params::new().set("node", "pve1").set("schedule", "05:00"),
        )
        .await
        .unwrap();
    assert_eq!(r.sync().await.jobs.updated, vec!["pvefleet-daily"]);
    let daily = r.jobs().await.into_iter().find(|j| j.id == "pvefleet-daily").unwrap();
    assert_eq!(daily.schedule.as_deref(), Some("02:00"));
    assert!(!daily.other.contains_key("node"), "{daily:?}");
    // A new site joins the job; a deleted one leaves it.
    r.site(10003, "pve1", "gamma").await;
    assert_eq!(r.sync().await.jobs.updated, vec!["pvefleet-daily"]);
    let db = r.pool.get().await.unwrap();
    db.execute("UPDATE sites SET state = 'deleted' WHERE id = $1", &[&a])
        .await
        .unwrap();
    r.sync().await;
    let daily = r.jobs().await.into_iter().find(|j| j.id == "pvefleet-daily").unwrap();
    assert_eq!(daily.vmids(), vec![10002, 10003]);
    // A second policy, followed by one site: its own job; deleting the policy removes it and
    // the site goes back to the default's job.
    let actor = Actor::cli();
    let mut client = r.client().await;
    assert!(ops::set_policy(&mut client, &actor, &weekly()).await.unwrap());
    let beta: Uuid = db
        .query_one("SELECT id FROM sites WHERE vmid = 10002", &[])
        .await
        .unwrap()
        .get(0);
    ops::set_site_policy(&mut client, &actor, beta, Some("weekly"))
        .await
        .unwrap();
    let out = r.sync().await;
    assert_eq!(out.jobs.created, vec!["pvefleet-weekly"]);
    let jobs = r.jobs().await;
    let weekly_job = jobs.iter().find(|j| j.id == "pvefleet-weekly").unwrap();
    assert_eq!(weekly_job.vmids(), vec![10002]);
    assert_eq!(weekly_job.storage.as_deref(), Some("backup"));
    assert_eq!(
        jobs.iter().find(|j| j.id == "pvefleet-daily").unwrap().vmids(),
        vec![10003]
    );
    ops::delete_policy(&mut client, &actor, "weekly", "daily", &r.settings.saga)
        .await
        .unwrap();
    let out = r.sync().await;
    assert_eq!(out.jobs.removed, vec!["pvefleet-weekly"]);
    let jobs = r.jobs().await;
    assert!(jobs.iter().all(|j| j.id != "pvefleet-weekly"));
    assert_eq!(
        jobs.iter().find(|j| j.id == "pvefleet-daily").unwrap().vmids(),
        vec![10002, 10003]
    );
    // Neither can a policy a plan names.
    let mut named = r.settings.saga.clone();
    named.plans.get_mut("small").unwrap().backup_policy = Some("weekly".into());
    ops::set_policy(&mut client, &actor, &weekly()).await.unwrap();
    assert!(matches!(
        ops::delete_policy(&mut client, &actor, "weekly", "daily", &named).await,
        Err(ops::OpsError::Conflict(_))
    ));
    ops::delete_policy(&mut client, &actor, "weekly", "daily", &r.settings.saga)
        .await
        .unwrap();
    // The default policy cannot be deleted while it is the default.
    assert!(matches!(
        ops::delete_policy(&mut client, &actor, "daily", "daily", &r.settings.saga).await,
        Err(ops::OpsError::Conflict(_))
    ));
    // A bad policy is refused naming the field.
    let mut bad = weekly();
    bad.retention = "keep-all=1".into();
    match ops::set_policy(&mut client, &actor, &bad).await {
        Err(ops::OpsError::Invalid(i)) => assert_eq!(i.field, "retention"),
        other => panic!("{other:?}"),
    }
    // The hand-made job was never touched.
    let hand = r.jobs().await.into_iter().find(|j| j.id == "backup-by-hand").unwrap();
    assert_eq!(hand.schedule.as_deref(), Some("sun 01:00"));
    assert!(
        r.sim
            .requests()
            .iter()
            .all(|q| !(q.path == "/cluster/backup/backup-by-hand" && q.method != "GET"))
    );
    // With no site left on the default policy, its job goes too.
    db.execute("UPDATE sites SET state = 'deleted'", &[]).await.unwrap();
    assert_eq!(r.sync().await.jobs.removed, vec!["pvefleet-daily"]);
    assert_eq!(r.audit("backup.job.create").await, 2);
    assert_eq!(r.audit("backup.job.update").await, 5);
    assert_eq!(r.audit("backup.job.delete").await, 2);
    assert_eq!(r.audit("backup.policy.create").await, 2);
    assert_eq!(r.audit("backup.policy.delete").await, 2);
}

#[tokio::test]
async fn the_records_follow_what_the_jobs_write_and_prune_on_the_simulated_clock() {
    let r = rig().await;
    r.site(10001, "pve1", "alpha").await;
    r.site(10002, "pve2", "beta").await;
    r.sync().await;
    for _ in 0..10 {
        r.sim.advance_clock(DAY);
        r.sync().await;
    }
    // Ten backups each were written and recorded; keep-daily=7 pruned three each.
    assert_eq!(
        r.count("SELECT count(*) FROM backups WHERE kind = 'scheduled'").await,
        20
    );
    assert_eq!(r.count("SELECT count(*) FROM backups WHERE state = 'ok'").await, 14);
    assert_eq!(r.count("SELECT count(*) FROM backups WHERE state = 'pruned'").await, 6);
    assert_eq!(r.audit("backup.recorded").await, 20);
    assert_eq!(r.audit("backup.pruned").await, 6);
    // What the records call kept is what the storage holds.
    let in_storage = r.pve.backups("pve1", "local", Some(10001)).await.unwrap().len()
        + r.pve.backups("pve2", "local", Some(10002)).await.unwrap().len();
    assert_eq!(in_storage, 14);
    // A backup from before a site held its vmid is not that site's.
    let later = r.site(10004, "pve1", "delta").await;
    let db = r.pool.get().await.unwrap();
    db.execute(
        "UPDATE sites SET created_at = now() + interval '30 days' WHERE id = $1",
        &[&later],
    )
    .await
    .unwrap();
    r.pve
        .vzdump("pve1", Params::new().set("vmid", 10004).set("storage", "local"))
        .await
        .unwrap();
    r.sync().await;
    assert_eq!(r.count("SELECT count(*) FROM backups WHERE vmid = 10004").await, 0);
    // A node that cannot be read does not make its backups look pruned.
    r.sim.set_node_down("pve2", true);
    r.sync().await;
    assert_eq!(r.count("SELECT count(*) FROM backups WHERE state = 'pruned'").await, 6);
}

async fn wait_state(r: &Rig, id: Uuid, want: &[&str]) -> ops::BackupRow {
    let db = r.pool.get().await.unwrap();
    let found = pvefleet_testkit::eventually(Duration::from_secs(20), || async {
        ops::get(&**db, id)
            .await
            .unwrap()
            .filter(|b| want.contains(&b.state.as_str()))
    })
    .await;
    match found {
        Some(b) => b,
        None => {
            let rows = db
                .query(
                    "SELECT id::text, kind, state, coalesce(volid, '-') FROM backups ORDER BY created_at",
                    &[],
                )
                .await
                .unwrap();
            let table: Vec<String> = rows
                .iter()
                .map(|x| {
                    format!(
                        "{} {} {} {}",
                        x.get::<_, String>(0),
                        x.get::<_, String>(1),
                        x.get::<_, String>(2),
                        x.get::<_, String>(3)
                    )
                })
                .collect();
            panic!("backup {id} never reached {want:?}:\n{}", table.join("\n"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_and_final_backups_run_through_the_worker_and_their_failures_are_recorded() {
    let r = rig().await;
    let site = r.site(10001, "pve1", "alpha").await;
    let probe = r.vhost.probe().await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (service, _publisher) = r.serve(&shutdown).await;
    let events = pvefleet_testkit::broker::event_queue(&probe, &["backup.*"])
        .await
        .unwrap();
    let mut client = r.client().await;
    let actor = Actor::cli();
    let id = ops::request(&mut client, &actor, site, BackupKind::OnDemand)
        .await
        .unwrap();
    let b = wait_state(&r, id, &["ok", "failed"]).await;
    assert_eq!(b.state, "ok", "{b:?}");
    let volid = b.volid.clone().unwrap();
    assert!(volid.starts_with("local:backup/vzdump-lxc-10001-"), "{volid}");
    assert_eq!(b.storage, "local");
    assert!(!b.protected && b.keep_until.is_none() && b.size.unwrap() > 0);
    let (kind, body) = pvefleet_testkit::broker::next_json(&probe, &events, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("backup.created");
    assert_eq!(kind, "backup.created");
    assert_eq!(body["volid"], volid.as_str());
    // The notes say what took it.
    let item = &r.pve.backups("pve1", "local", Some(10001)).await.unwrap()[0];
    assert_eq!(item.notes.as_deref(), Some("alpha (10001), pvefleet on_demand"));
    // One on-demand backup at a time: another while one is pending is refused.
    let db = r.pool.get().await.unwrap();
    db.execute(
        "INSERT INTO backups (id, site_id, vmid, storage, kind, state) VALUES ($1, $2, 10001, '', 'on_demand', 'requested')",
        &[&Uuid::now_v7(), &site],
    )
    .await
    .unwrap();
    assert!(matches!(
        ops::request(&mut client, &actor, site, BackupKind::OnDemand).await,
        Err(ops::OpsError::Conflict(_))
    ));
    db.execute("DELETE FROM backups WHERE state = 'requested'", &[])
        .await
        .unwrap();
    // A final backup is protected and kept for the retention.
    let fin = ops::request(&mut client, &actor, site, BackupKind::Final)
        .await
        .unwrap();
    let f = wait_state(&r, fin, &["ok", "failed"]).await;
    assert_eq!(f.state, "ok", "{f:?}");
    assert!(f.protected);
    let left = f.keep_until.unwrap() - chrono::Utc::now();
    assert!(
        left > chrono::Duration::days(29) && left <= chrono::Duration::days(30),
        "{left}"
    );
    // A full storage fails it, recorded with PVE's words, and says so on the bus.
    r.sim.set_storage_full("local", true);
    let full = ops::request(&mut client, &actor, site, BackupKind::OnDemand)
        .await
        .unwrap();
    let failed = wait_state(&r, full, &["failed"]).await;
    assert!(
        failed.error.unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
    );
    let mut saw_failure = false;
    while let Some((kind, body)) = pvefleet_testkit::broker::next_json(&probe, &events, Duration::from_secs(10))
        .await
        .unwrap()
    {
        if kind == "backup.create_failed" {
            assert!(
                body["error"]["message"].as_str().unwrap().contains("No space"),
                "{body}"
            );
            saw_failure = true;
            break;
        }
    }
    assert!(saw_failure, "backup.create_failed was emitted");
    r.sim.clear_faults();
    // When its retention ends, the final backup is unprotected and removed by the next sync.
    let db = r.pool.get().await.unwrap();
    db.execute(
        "UPDATE backups SET keep_until = now() - interval '1 minute' WHERE id = $1",
        &[&fin],
    )
    .await
    .unwrap();
    let out = r.sync().await;
    assert_eq!(out.inventory.expired, 1);
    assert_eq!(wait_state(&r, fin, &["deleted"]).await.state, "deleted");
    let left: Vec<String> = r
        .pve
        .backups("pve1", "local", Some(10001))
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.volid)
        .collect();
    assert_eq!(left, vec![volid], "only the on-demand backup is left");
    // A site without a container cannot be backed up.
    db.execute("UPDATE sites SET state = 'deleted' WHERE id = $1", &[&site])
        .await
        .unwrap();
    assert!(matches!(
        ops::request(&mut client, &actor, site, BackupKind::OnDemand).await,
        Err(ops::OpsError::Conflict(_))
    ));
    assert_eq!(r.audit("backup.request").await, 3);
    assert_eq!(r.audit("backup.create").await, 3);
    shutdown.cancel();
    let _ = service.await;
}

/// A webhook receiver: the bodies it was sent.
async fn hook() -> (std::sync::Arc<std::sync::Mutex<Vec<String>>>, String) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let state = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let state = state.clone();
            async move {
                state.lock().unwrap().push(body);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (seen, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verification_restores_probes_and_cleans_up_and_a_corrupt_backup_is_recorded_and_alerted() {
    let mut r = rig().await;
    r.settings.installer.transport = "pvesim".into();
    // Operators hear of a failed verification by webhook, through the notifier.
    let (seen, url) = hook().await;
    r.settings.notifier.operator.webhooks = vec![pvefleet_core::config::WebhookEndpoint {
        name: "ops".into(),
        url,
        secret_file: None,
    }];
    let shutdown = tokio_util::sync::CancellationToken::new();
    let notifier = tokio::spawn({
        let (s, pool, sd) = (r.settings.clone(), r.pool.clone(), shutdown.clone());
        async move { pvefleet_notifier::run(&s, pool, None, sd).await }
    });
    let probe = pvefleet_backup::verify::Probe {
        runner: pvefleet_installer::runner(&r.settings).unwrap(),
        installer: r.settings.installer.clone(),
    };
    // A WordPress site, installed, running, backed up by a job and recorded by the sync.
    let site = r.site(120, "pve1", "press").await;
    r.pve.lxc_power("pve1", 120, "start", Params::new()).await.unwrap();
    let script = ["pct", "exec", "120", "--", "bash", "-s"].map(String::from);
    let out = probe
        .runner
        .run("pve1", &script, b"echo set up", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(out.success(), "{out:?}");
    r.pve
        .vzdump(
            "pve1",
            Params::new().set("vmid", 120).set("storage", "local").set("remove", 0),
        )
        .await
        .unwrap();
    r.sync().await;
    let verify = |site: Option<Uuid>| {
        let (pve, pool, b) = (r.pve.clone(), r.pool.clone(), r.settings.backup.clone());
        let probe = &probe;
        async move {
            pvefleet_backup::verify::verify_once(&pve, &pool, &b, probe, site)
                .await
                .unwrap()
        }
    };
    let scratch = r.settings.backup.verify_vmid;
    let report = verify(None).await;
    assert_eq!(
        (report.outcome.as_deref(), report.error.as_deref(), report.cleaned_up),
        (Some("ok"), None, true),
        "{report:?}"
    );
    assert_eq!(report.site_id, Some(site));
    let restores: Vec<String> = r
        .sim
        .requests()
        .iter()
        .filter(|q| {
            q.method == "POST"
                && q.path == "/nodes/pve1/lxc"
                && q.params.iter().any(|(k, v)| k == "restore" && v == "1")
        })
        .filter_map(|q| q.params.iter().find(|(k, _)| k == "vmid").map(|(_, v)| v.clone()))
        .collect();
    assert_eq!(restores, [scratch.to_string()], "one restore, into the scratch vmid");
    let execs: Vec<String> = r.sim.execs().iter().map(|e| e.argv.join(" ")).collect();
    assert!(
        execs
            .iter()
            .any(|c| c.contains(&format!("exec {scratch} -- wp core is-installed"))),
        "WordPress was asked in the scratch container: {execs:?}"
    );
    assert!(!r.guest(scratch).await, "no scratch container is left");
    assert_eq!(
        r.count("SELECT count(*) FROM backups WHERE verify_state = 'ok' AND verified_at IS NOT NULL")
            .await,
        1
    );
    assert_eq!(r.audit("backup.verify").await, 1);

    // The archive is damaged: the verification fails at the restore, is recorded, and alerted.
    let volid = report.volid.clone().unwrap();
    assert!(r.sim.corrupt_backup(&volid));
    let report = verify(Some(site)).await;
    assert_eq!(report.outcome.as_deref(), Some("failed"), "{report:?}");
    assert!(report.error.as_deref().unwrap().starts_with("restore:"), "{report:?}");
    assert!(report.cleaned_up);
    let db = r.pool.get().await.unwrap();
    let row = db
        .query_one(
            "SELECT verify_state, verify_error FROM backups WHERE volid = $1",
            &[&volid],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "failed");
    assert!(row.get::<_, String>(1).starts_with("restore:"));
    assert!(!r.guest(scratch).await, "nothing left");
    let alert = pvefleet_testkit::eventually(Duration::from_secs(30), || async {
        seen.lock()
            .unwrap()
            .iter()
            .find(|b| b.contains("backup.verified"))
            .cloned()
    })
    .await
    .expect("the operators' webhook gets the failed verification");
    assert!(alert.contains("failed") && alert.contains(&volid), "{alert}");
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the good verification was not sent to the operators' webhook"
    );
    shutdown.cancel();
    notifier.await.unwrap().unwrap();
}

/// The config versions of a site: (version, cause, changed keys), oldest first.
async fn versions(r: &Rig, site: Uuid) -> Vec<(i32, String, Vec<String>)> {
    let db = r.pool.get().await.unwrap();
    let mut v: Vec<_> = pvefleet_backup::history::versions(&**db, site, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|v| {
            (
                v.version,
                v.cause,
                v.changes.into_iter().map(|c| c.key).collect::<Vec<_>>(),
            )
        })
        .collect();
    v.reverse();
    v
}

async fn restore_row(r: &Rig, site: Uuid, id: Uuid, want: &[&str]) -> pvefleet_backup::history::RestoreRow {
    let db = r.pool.get().await.unwrap();
    pvefleet_testkit::eventually(Duration::from_secs(20), || async {
        pvefleet_backup::history::restore_row(&**db, site, id)
            .await
            .unwrap()
            .filter(|x| want.contains(&x.state.as_str()))
    })
    .await
    .unwrap_or_else(|| panic!("config restore {id} never reached {want:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_pass_records_hand_edits_only_and_a_restore_survives_a_concurrent_change() {
    let r = rig().await;
    let site = r.site(10010, "pve1", "gamma").await;
    let day = Duration::from_secs(DAY);
    let pass = |expect: usize| {
        let (pve, pool) = (r.pve.clone(), r.pool.clone());
        async move {
            let out = pvefleet_backup::history::record_all(&pve, &pool, 30 * day)
                .await
                .unwrap();
            assert_eq!((out.checked, out.recorded, out.failed), (1, expect, 0), "{out:?}");
            out
        }
    };
    pass(1).await;
    assert_eq!(versions(&r, site).await, vec![(1, "schedule".into(), vec![])]);
    // Unchanged, and a snapshot (it changes PVE's digest, not the config): no new version.
    pass(0).await;
    r.pve.lxc_snapshot_create("pve1", 10010, "before", None).await.unwrap();
    pass(0).await;
    // An operator's own edit: memory changed and an interface added by hand.
    r.pve
        .lxc_set_config(
            "pve1",
            10010,
            Params::new()
                .set("memory", 2048)
                .set("net1", "name=eth1,bridge=vmbr0,ip=dhcp,type=veth"),
            None,
        )
        .await
        .unwrap();
    pass(1).await;
    assert_eq!(
        versions(&r, site).await[1],
        (2, "schedule".into(), vec!["memory".to_string(), "net1".to_string()])
    );
    let v1 = {
        let db = r.pool.get().await.unwrap();
        pvefleet_backup::history::version(&**db, site, Some(1))
            .await
            .unwrap()
            .unwrap()
    };

    // Version 1 put back through the worker; PVE first refuses the write as the file changed
    // under it (another worker's write), and the restore reads again and writes.
    r.sim.inject(
        serde_json::from_value(serde_json::json!({
            "path": "/nodes/pve1/lxc/10010/config", "method": "PUT", "status": 500,
            "message": "detected modified configuration - file changed by other user? Try again.", "count": 1
        }))
        .unwrap(),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (service, _publisher) = r.serve(&shutdown).await;
    let mut client = r.client().await;
    let actor = Actor::cli();
    let id = ops::restore_config(&mut client, &actor, site, 1).await.unwrap();
    let done = restore_row(&r, site, id, &["done", "failed"]).await;
    assert_eq!(done.state, "done", "{done:?}");
    assert_eq!(done.changed, ["memory", "net1"]);
    assert_eq!(done.result_version, Some(3));
    // Refused once, then written in one PUT with the digest read again: the keys to write and
    // the keys to delete together.
    let puts: Vec<_> = r
        .sim
        .requests()
        .into_iter()
        .filter(|q| q.method == "PUT" && q.path == "/nodes/pve1/lxc/10010/config")
        .collect();
    assert_eq!(
        puts.len(),
        3,
        "the hand edit, the refused write and the write: {puts:?}"
    );
    let last = &puts[2].params;
    assert!(
        last.iter().any(|(k, v)| k == "delete" && v == "memory,net1"),
        "{last:?}"
    );
    assert!(last.iter().any(|(k, _)| k == "digest"), "{last:?}");
    let text = r.sim.config_text(10010).unwrap();
    let main: Vec<&str> = text.lines().take_while(|l| !l.starts_with('[')).collect();
    assert!(!main.iter().any(|l| l.starts_with("net1:")), "{text}");
    // Version 1 had no memory key (PVE's default): the key is deleted, not written.
    assert!(v1.config.as_ref().unwrap().get("memory").is_none(), "{v1:?}");
    assert!(!main.iter().any(|l| l.starts_with("memory:")), "{text}");
    assert_eq!(
        versions(&r, site).await[2],
        (
            3,
            "config.restore".into(),
            vec!["memory".to_string(), "net1".to_string()]
        )
    );
    assert_eq!(r.audit("config.restore").await, 1);
    assert_eq!(r.audit("site.config_restore").await, 1);
    // Versions past the retention go, the newest stays however old.
    let db = r.pool.get().await.unwrap();
    db.execute(
        "UPDATE config_versions SET recorded_at = now() - interval '40 days' WHERE site_id = $1",
        &[&site],
    )
    .await
    .unwrap();
    let out = pass(0).await;
    assert_eq!(out.removed, 2);
    assert_eq!(versions(&r, site).await.iter().map(|v| v.0).collect::<Vec<_>>(), [3]);
    // A version that is gone is refused; a container that is gone fails the restore, saying so.
    assert!(matches!(
        ops::restore_config(&mut client, &actor, site, 1).await,
        Err(ops::OpsError::NotFound(_))
    ));
    r.pve.lxc_power("pve1", 10010, "stop", Params::new()).await.ok();
    r.pve.lxc_destroy("pve1", 10010, true, true).await.unwrap();
    let id = ops::restore_config(&mut client, &actor, site, 3).await.unwrap();
    let failed = restore_row(&r, site, id, &["failed", "done"]).await;
    assert_eq!(failed.state, "failed", "{failed:?}");
    assert!(
        failed.error.as_deref().unwrap_or_default().contains("does not exist"),
        "{failed:?}"
    );
    shutdown.cancel();
    service.await.unwrap().unwrap();
}
