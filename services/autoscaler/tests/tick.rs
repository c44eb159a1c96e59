//! Autoscaler ticks against pvesim with a driven load profile, and the real Postgres (own
//! database) for cooldowns, actions and the leader lock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pvefleet_autoscaler::tick::Scaler;
use pvefleet_core::config::AutoscalerSettings;
use pvefleet_pvesim::{Fault, Load, Sim, SimConfig};
use pvefleet_testkit::TestDb;

const VMID: u32 = 700;
const MIB: u64 = 1024 * 1024;

struct Rig {
    sim: Sim,
    pve_url: String,
    pve: pvefleet_proxmox::client::PveClient,
    pool: deadpool_postgres::Pool,
    db: TestDb,
    settings: AutoscalerSettings,
}

async fn rig() -> Rig {
    pvefleet_testkit::init_tracing();
    let (sim, addr) = Sim::spawn(SimConfig {
        token: Some(("a@pve!s".into(), "x".into())),
        record_requests: true,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    sim.populate(VMID, 1, Load::default());
    let pve_settings = pvefleet_core::config::PveSettings {
        url: format!("http://{addr}"),
        token_id: Some("a@pve!s".into()),
        token_secret: Some(pvefleet_core::Secret::new("x")),
        ..Default::default()
    };
    let pve = pvefleet_core::pve::client(&pve_settings).unwrap();
    let db = TestDb::create().await.unwrap();
    let pool = pvefleet_core::db::connect(&pvefleet_core::config::DbSettings {
        url: pvefleet_core::Secret::new(db.url()),
        ..Default::default()
    })
    .await
    .unwrap();
    pvefleet_core::db::migrate(&pool).await.unwrap();
    let mut settings = AutoscalerSettings::default();
    settings.policy.cooldown_secs = 1;
    settings.policy.evaluation_periods = 1;
    settings.policy.max_cores = 4;
    settings.policy.min_cores = 1;
    Rig {
        sim,
        pve_url: format!("http://{addr}"),
        pve,
        pool,
        db,
        settings,
    }
}

fn cores(sim: &Sim) -> u32 {
    let text = sim.config_text(VMID).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("cores: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn resources_reads(sim: &Sim) -> usize {
    sim.requests().iter().filter(|r| r.path == "/cluster/resources").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_load_grows_one_step_per_cooldown_to_the_max_then_shrinks_with_one_cluster_read_per_tick() {
    let r = rig().await;
    let mut scaler = Scaler::default();
    r.sim.set_load(
        VMID,
        Load {
            cpu: 0.95,
            mem: 900 * MIB,
            ..Load::default()
        },
    );
    let mut seen = vec![cores(&r.sim)];
    let mut ticks = 0;
    for _ in 0..8 {
        let before = resources_reads(&r.sim);
        let report = scaler.tick(&r.pve, &r.pool, &r.settings).await.unwrap();
        ticks += 1;
        assert!(report.leader);
        assert_eq!(
            resources_reads(&r.sim) - before,
            1,
            "one /cluster/resources read per tick"
        );
        seen.push(cores(&r.sim));
        // Inside the cooldown, the next tick holds.
        let held = scaler.tick(&r.pve, &r.pool, &r.settings).await.unwrap();
        ticks += 1;
        assert!(held.actions.iter().all(|a| a.1 != "cpu"), "{held:?}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        if cores(&r.sim) == 4 {
            break;
        }
    }
    seen.dedup();
    assert_eq!(seen, vec![2, 3, 4], "one step per cooldown, up to the max");
    assert!(ticks >= 4);
    // At the max, high load holds.
    let report = scaler.tick(&r.pve, &r.pool, &r.settings).await.unwrap();
    assert!(report.actions.iter().all(|a| a.1 != "cpu"));
    assert_eq!(cores(&r.sim), 4);
    // The load drops: back down, a step per cooldown, to the minimum.
    r.sim.set_load(
        VMID,
        Load {
            cpu: 0.05,
            mem: 900 * MIB,
            ..Load::default()
        },
    );
    for _ in 0..8 {
        scaler.tick(&r.pve, &r.pool, &r.settings).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        if cores(&r.sim) == 1 {
            break;
        }
    }
    assert_eq!(cores(&r.sim), 1);
    let c = r.db.client().await.unwrap();
    let scaled: i64 = c
        .query_one(
            "SELECT count(*) FROM autoscale_actions WHERE resource = 'cpu' AND outcome = 'scaled'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(scaled, 5, "2→3→4, then 4→3→2→1");
    let events: i64 = c
        .query_one(
            "SELECT count(*) FROM outbox WHERE message_type = 'container.scaled'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 5, "a container.scaled per action, committed with it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_conflict_is_retried_and_never_overwrites_the_other_writers_change() {
    let r = rig().await;
    let mut scaler = Scaler::default();
    r.sim.set_load(
        VMID,
        Load {
            cpu: 0.95,
            mem: 900 * MIB,
            ..Load::default()
        },
    );
    // Another writer changes the config; then PVE refuses our first write as a conflict.
    let node = node_of(&r, VMID).await;
    r.pve
        .lxc_set_config(
            &node,
            VMID,
            pvefleet_proxmox::client::Params::new().set("description", "set by someone else"),
            None,
        )
        .await
        .unwrap();
    r.sim.inject(
        serde_json::from_value::<Fault>(serde_json::json!({
            "path": format!("/nodes/{node}/lxc/{VMID}/config"), "method": "PUT", "status": 500,
            "message": "detected modified configuration - file changed by other user? Try again.", "count": 1
        }))
        .unwrap(),
    );
    let report = scaler.tick(&r.pve, &r.pool, &r.settings).await.unwrap();
    let cpu: Vec<_> = report.actions.iter().filter(|a| a.1 == "cpu").collect();
    assert_eq!(cpu.len(), 1);
    assert_eq!(cpu[0].4, "scaled", "retried after the conflict");
    let text = r.sim.config_text(VMID).unwrap();
    assert!(text.contains("cores: 3"), "{text}");
    assert!(text.contains("set by someone else"), "the other change is kept: {text}");
    let puts = r
        .sim
        .requests()
        .iter()
        .filter(|q| q.method == "PUT" && q.path.ends_with("/config"))
        .count();
    assert_eq!(puts, 3, "the other writer's, our refused one, our retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_another_replica_holds_the_lock_a_tick_does_nothing_and_cooldowns_outlive_the_scaler() {
    let r = rig().await;
    r.sim.set_load(
        VMID,
        Load {
            cpu: 0.95,
            mem: 900 * MIB,
            ..Load::default()
        },
    );
    // Another replica mid-tick: it holds the leader lock.
    let other = r.pool.get().await.unwrap();
    other
        .execute("SELECT pg_advisory_lock($1, 0)", &[&0x7061_7300_i32])
        .await
        .unwrap();
    let reads = resources_reads(&r.sim);
    let report = Scaler::default().tick(&r.pve, &r.pool, &r.settings).await.unwrap();
    assert!(!report.leader);
    assert!(report.actions.is_empty());
    assert_eq!(resources_reads(&r.sim), reads, "a follower does not even read");
    other
        .execute("SELECT pg_advisory_unlock($1, 0)", &[&0x7061_7300_i32])
        .await
        .unwrap();
    let mut settings = r.settings.clone();
    settings.policy.cooldown_secs = 3600;
    let report = Scaler::default().tick(&r.pve, &r.pool, &settings).await.unwrap();
    assert!(report.leader);
    assert!(report.actions.iter().any(|a| a.1 == "cpu" && a.4 == "scaled"));
    // A new scaler (a restart, or another replica) sees the cooldown in Postgres.
    let report = Scaler::default().tick(&r.pve, &r.pool, &settings).await.unwrap();
    assert!(report.actions.iter().all(|a| a.1 != "cpu"), "{report:?}");
    assert_eq!(cores(&r.sim), 3);
    // Opted out by tag: never scaled.
    let node = node_of(&r, VMID).await;
    r.pve
        .lxc_set_config(
            &node,
            VMID,
            pvefleet_proxmox::client::Params::new().set("tags", "fleet;pvefleet-noscale"),
            None,
        )
        .await
        .unwrap();
    let report = Scaler::default().tick(&r.pve, &r.pool, &r.settings).await.unwrap();
    assert_eq!(report.containers, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_once_per_crossing_and_clear_once() {
    let r = rig().await;
    let mut settings = r.settings.clone();
    settings.policy.dry_run = true; // alerts only: nothing is resized
    let mut scaler = Scaler::default();
    let load = |mem_mib: u64| Load {
        cpu: 0.5,
        mem: mem_mib * MIB,
        ..Load::default()
    };
    let memory_edges = |report: &pvefleet_autoscaler::tick::Report| {
        report
            .alerts
            .iter()
            .filter_map(|e| match e {
                pvefleet_autoscaler::alerts::Edge::Raised {
                    subject,
                    resource: "memory",
                    ..
                } => Some(format!("raised {subject}")),
                pvefleet_autoscaler::alerts::Edge::Cleared {
                    subject,
                    resource: "memory",
                    ..
                } => Some(format!("cleared {subject}")),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    // 2 GiB container: 1.9 GiB used is 93 %.
    r.sim.set_load(VMID, load(1900));
    let first = scaler.tick(&r.pve, &r.pool, &settings).await.unwrap();
    assert_eq!(memory_edges(&first), vec![format!("raised lxc/{VMID}")]);
    for _ in 0..3 {
        let again = scaler.tick(&r.pve, &r.pool, &settings).await.unwrap();
        assert!(memory_edges(&again).is_empty(), "not every tick");
    }
    // A restarted autoscaler knows it is raised already.
    let restarted = Scaler::default().tick(&r.pve, &r.pool, &settings).await.unwrap();
    assert!(memory_edges(&restarted).is_empty());
    // 82 %: below 85 but within the margin; 70 %: cleared, once.
    r.sim.set_load(VMID, load(1680));
    assert!(memory_edges(&scaler.tick(&r.pve, &r.pool, &settings).await.unwrap()).is_empty());
    r.sim.set_load(VMID, load(1430));
    let cleared = scaler.tick(&r.pve, &r.pool, &settings).await.unwrap();
    assert_eq!(memory_edges(&cleared), vec![format!("cleared lxc/{VMID}")]);
    assert!(memory_edges(&scaler.tick(&r.pve, &r.pool, &settings).await.unwrap()).is_empty());
    let c = r.db.client().await.unwrap();
    let events: i64 = c
        .query_one(
            "SELECT count(*) FROM outbox WHERE message_type = 'resource.alert' AND convert_from(body, 'UTF8') LIKE '%memory%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 2, "one raised, one cleared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_policy_set_messages_store_and_delete_policies() {
    use pvefleet_contracts::messages::AutoscalePolicySet;
    use pvefleet_core::bus::outgoing::Origin;
    use pvefleet_core::bus::{Outgoing, Publisher};
    let r = rig().await;
    let vhost = pvefleet_testkit::TestVhost::new().unwrap();
    let mut s = pvefleet_testkit::settings(&vhost, Some(&r.db));
    s.pve.url = r.pve_url.clone();
    s.pve.token_id = Some("a@pve!s".into());
    s.pve.token_secret = Some(pvefleet_core::Secret::new("x"));
    s.autoscaler.interval = Duration::from_secs(3600);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn({
        let (s, pool, sd) = (s.clone(), r.pool.clone(), shutdown.clone());
        async move { pvefleet_autoscaler::run(&s, pool, None, sd).await }
    });
    let publisher = Publisher::new(
        &s.bus,
        "test",
        Some(pvefleet_core::bus::topology::Topology::fleet(&s.bus)),
    );
    publisher.connect().await.unwrap();
    let send = |m: AutoscalePolicySet| {
        let publisher = publisher.clone();
        async move {
            publisher
                .publish(&Outgoing::message(&m, &Origin::default()).unwrap())
                .await
                .unwrap()
        }
    };
    let mut keys = serde_json::Map::new();
    keys.insert("max_cores".into(), serde_json::json!(6));
    send(AutoscalePolicySet {
        scope: "tag:web".into(),
        policy: Some(keys),
    })
    .await;
    let c = r.db.client().await.unwrap();
    let stored = pvefleet_testkit::eventually(Duration::from_secs(20), || async {
        c.query_opt("SELECT policy FROM autoscale_policies WHERE scope = 'tag:web'", &[])
            .await
            .unwrap()
            .map(|row| row.get::<_, serde_json::Value>(0))
    })
    .await;
    assert_eq!(stored, Some(serde_json::json!({ "max_cores": 6 })));
    send(AutoscalePolicySet {
        scope: "tag:web".into(),
        policy: None,
    })
    .await;
    let gone = pvefleet_testkit::eventually(Duration::from_secs(20), || async {
        let n: i64 = c
            .query_one("SELECT count(*) FROM autoscale_policies", &[])
            .await
            .unwrap()
            .get(0);
        (n == 0).then_some(())
    })
    .await;
    assert!(gone.is_some(), "deleted");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_is_measured_against_a_cpulimit_the_cluster_read_does_not_show() {
    let r = rig().await;
    let node = node_of(&r, VMID).await;
    // 2 cores, 1.7 busy: 85 % of the cores, so the cluster read alone would add a core; but
    // the container may use only 1 CPU (cpulimit 1), and a third core would not lift that.
    r.pve
        .lxc_set_config(
            &node,
            VMID,
            pvefleet_proxmox::client::Params::new().set("cpulimit", 1),
            None,
        )
        .await
        .unwrap();
    r.sim.set_load(
        VMID,
        Load {
            cpu: 0.85,
            mem: 900 * MIB,
            ..Load::default()
        },
    );
    let report = Scaler::default().tick(&r.pve, &r.pool, &r.settings).await.unwrap();
    assert!(report.actions.iter().all(|a| a.1 != "cpu"), "{report:?}");
    assert_eq!(cores(&r.sim), 2);
    // Without the limit, the same load adds a core.
    r.pve
        .lxc_set_config(
            &node,
            VMID,
            pvefleet_proxmox::client::Params::new().set("cpulimit", 0),
            None,
        )
        .await
        .unwrap();
    Scaler::default().tick(&r.pve, &r.pool, &r.settings).await.unwrap();
    assert_eq!(cores(&r.sim), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_of_several_periods_fills_across_ticks_before_the_first_decision() {
    let r = rig().await;
    let mut settings = r.settings.clone();
    settings.policy.evaluation_periods = 3;
    r.sim.set_load(
        VMID,
        Load {
            cpu: 0.95,
            mem: 900 * MIB,
            ..Load::default()
        },
    );
    let mut scaler = Scaler::default();
    let mut acted_at = None;
    for tick in 1..=5 {
        let report = scaler.tick(&r.pve, &r.pool, &settings).await.unwrap();
        if report.actions.iter().any(|a| a.1 == "cpu") {
            acted_at = Some(tick);
            break;
        }
        // A new PVE sample each second (its uptime moves).
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert_eq!(
        acted_at,
        Some(3),
        "three distinct samples, kept across ticks, then a decision"
    );
    assert_eq!(cores(&r.sim), 3);
}

#[test]
fn the_binary_answers_help_and_version_and_starts_nothing() {
    let checked = pvefleet_testkit::cli::answers_help_and_version(
        env!("CARGO_BIN_EXE_pvefleet-autoscaler"),
        "pvefleet-autoscaler",
    );
    assert_eq!(checked, Ok(()));
    assert_eq!(
        pvefleet_testkit::cli::refuses_arguments(env!("CARGO_BIN_EXE_pvefleet-autoscaler")),
        Ok(())
    );
}

/// The node container `vmid` is on.
async fn node_of(r: &Rig, vmid: u32) -> String {
    r.pve
        .resources(None)
        .await
        .unwrap()
        .into_iter()
        .find(|x| x.vmid == Some(u64::from(vmid)))
        .unwrap()
        .node
        .unwrap()
}

fn memory(sim: &Sim, vmid: u32) -> u64 {
    let text = sim.config_text(vmid).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("memory: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A `small` site (1 core, 1024 MiB) under no load: ten minutes of ticks leave it as sold;
/// its own `min_memory_mb = 512` lets memory go to 512.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_site_under_no_load_keeps_what_it_was_sold_until_its_policy_lowers_the_floor() {
    let r = rig().await;
    let node = node_of(&r, VMID).await;
    r.pve
        .lxc_set_config(
            &node,
            VMID,
            pvefleet_proxmox::client::Params::new()
                .set("cores", 1)
                .set("memory", 1024),
            None,
        )
        .await
        .unwrap();
    let c = r.db.client().await.unwrap();
    c.execute(
        "INSERT INTO sites (id, subdomain, owner, state, spec, vmid) VALUES (gen_random_uuid(), 'blog', 'alice', 'active', $1, $2)",
        &[
            &serde_json::json!({ "subdomain": "blog", "owner": "alice", "plan": "small", "template": "local:vztmpl/t.tar.zst" }),
            &(VMID as i32),
        ],
    )
    .await
    .unwrap();
    let mut scaler = Scaler::with_plans(pvefleet_core::config::SagaSettings::default().plans);
    // Ten minutes of ticks at the default minute each, each a new idle sample.
    for minute in 0..10u64 {
        r.sim.set_load(
            VMID,
            Load {
                cpu: 0.01 + minute as f64 * 0.001,
                mem: (60 + minute) * MIB,
                ..Load::default()
            },
        );
        let report = scaler.tick(&r.pve, &r.pool, &r.settings).await.unwrap();
        assert!(report.actions.is_empty(), "minute {minute}: {report:?}");
        let (_, verdict) = report.verdicts.iter().find(|(v, _)| *v == VMID).unwrap();
        let pvefleet_autoscaler::engine::Verdict::Decided { decision, bounds, .. } = verdict else {
            panic!("minute {minute}: {verdict:?}");
        };
        assert_eq!(
            decision.memory,
            pvefleet_autoscaler::decide::Change::Hold("memory at its floor (sold, or the minimum)")
        );
        assert_eq!(
            decision.cores,
            pvefleet_autoscaler::decide::Change::Hold("cores at their minimum")
        );
        assert_eq!((bounds.cores.floor.value, bounds.memory.floor.value), (1, 1024));
        assert_eq!(&*bounds.memory.floor.from, "plan small");
    }
    assert_eq!((cores(&r.sim), memory(&r.sim, VMID)), (1, 1024));
    // The container's own policy lowers the memory floor on purpose.
    pvefleet_core::db::in_tx(&c, async {
        pvefleet_autoscaler::policies::set(
            &c,
            &r.settings.policy,
            &pvefleet_autoscaler::policies::Scope::Vmid(VMID),
            &serde_json::json!({ "min_memory_mb": 512 }),
            pvefleet_autoscaler::policies::Write::Merge,
        )
        .await
    })
    .await
    .unwrap();
    r.sim.set_load(
        VMID,
        Load {
            cpu: 0.02,
            mem: 70 * MIB,
            ..Load::default()
        },
    );
    let report = scaler.tick(&r.pve, &r.pool, &r.settings).await.unwrap();
    assert_eq!(report.actions, vec![(VMID, "memory", 1024, 512, "scaled".to_string())]);
    assert_eq!((cores(&r.sim), memory(&r.sim, VMID)), (1, 512));
}

/// The lxc-autoscaler file: imported, container 101 is in dry run with the file's
/// threshold and lxc-autoscaler's step, and a tick records what it would do and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_dry_run_config_keeps_its_intent_and_a_tick_writes_nothing() {
    let r = rig().await;
    r.sim.populate(101, 1, Load::default());
    let yaml = "global:\n  enable_dry_run: true\nsafety:\n  emergency_scale_down_threshold: 90.0\ncontainers:\n  - vmid: 101\n    thresholds:\n      cpu_scale_up: 75.0\n";
    let got = pvefleet_autoscaler::import::import(yaml).unwrap();
    let c = r.db.client().await.unwrap();
    pvefleet_core::db::in_tx(&c, async {
        for (scope, keys) in &got.policies {
            pvefleet_autoscaler::policies::set(
                &c,
                &r.settings.policy,
                scope,
                keys,
                pvefleet_autoscaler::policies::Write::Replace,
            )
            .await?;
        }
        Ok::<_, pvefleet_autoscaler::policies::WriteError>(())
    })
    .await
    .unwrap();
    let stored = pvefleet_autoscaler::policies::Policies::load(&c).await.unwrap();
    let e = stored.resolve(101, &["fleet"], &r.settings.policy).unwrap();
    assert!(e.policy.dry_run);
    assert_eq!(e.policy.emergency_mem, 90.0);
    assert_eq!(e.policy.cpu_up, 75.0);
    assert_eq!(e.policy.memory_step_mb, 256);
    // 76 % CPU and 90 % memory: both would scale.
    r.sim.set_load(
        101,
        Load {
            cpu: 0.76,
            mem: 1850 * MIB,
            ..Load::default()
        },
    );
    let before = r.sim.requests().len();
    // lxc-autoscaler's three evaluation periods: three distinct samples, a second apart.
    let mut would = Vec::new();
    let mut scaler = Scaler::default();
    for _ in 0..5 {
        let report = scaler.tick(&r.pve, &r.pool, &r.settings).await.unwrap();
        would.extend(report.actions.into_iter().filter(|a| a.0 == 101));
        if !would.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let writes: Vec<_> = r.sim.requests()[before..]
        .iter()
        .filter(|q| q.method != "GET")
        .map(|q| format!("{} {}", q.method, q.path))
        .collect();
    assert!(writes.is_empty(), "a dry run writes nothing: {writes:?}");
    assert!(
        would
            .iter()
            .any(|a| a.1 == "memory" && a.3 == 2048 + 256 && a.4 == "would_scale"),
        "{would:?}"
    );
    assert!(would.iter().all(|a| a.4 == "would_scale"), "{would:?}");
    assert_eq!(cores(&r.sim), 2, "container 700 untouched too");
    assert!(r.sim.config_text(101).unwrap().contains("memory: 2048"));
}

/// A running autoscaler (the binary) shows its counters on /metrics after one tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_autoscaler_shows_its_counters_after_one_tick() {
    let r = rig().await;
    r.sim.set_load(
        VMID,
        Load {
            cpu: 0.95,
            mem: 900 * MIB,
            ..Load::default()
        },
    );
    let vhost = pvefleet_testkit::TestVhost::new().unwrap();
    let port = pvefleet_testkit::edge::free_port().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pvefleet-autoscaler"))
        .env("PVEFLEET_DB__URL", r.db.url())
        .env("PVEFLEET_BUS__URL", vhost.url())
        .env("PVEFLEET_PVE__URL", &r.pve_url)
        .env("PVEFLEET_PVE__TOKEN_ID", "a@pve!s")
        .env("PVEFLEET_PVE__TOKEN_SECRET", "x")
        .env("PVEFLEET_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("PVEFLEET_AUTOSCALER__INTERVAL", "1s")
        .env("PVEFLEET_AUTOSCALER__POLICY__EVALUATION_PERIODS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let body = pvefleet_testkit::eventually(Duration::from_secs(60), || async {
        let body = http.get(&url).send().await.ok()?.text().await.ok()?;
        (body.contains("pvefleet_autoscaler_writes_total") && body.contains("pvefleet_autoscaler_decisions_total"))
            .then_some(body)
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let body = body.expect("the autoscaler's counters within a minute");
    for name in [
        "pvefleet_autoscaler_ticks_total{outcome=\"ok\"}",
        "pvefleet_autoscaler_tick_duration_seconds",
        "pvefleet_autoscaler_containers_watched",
        "pvefleet_autoscaler_decisions_total{",
        "pvefleet_autoscaler_writes_total{resource=\"cpu\",outcome=\"scaled\"}",
        "pvefleet_autoscaler_alerts_total{",
    ] {
        assert!(body.contains(name), "{name} in:\n{body}");
    }
    assert_eq!(cores(&r.sim), 3);
}
