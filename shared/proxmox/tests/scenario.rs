//! pvesim behaves like PVE, through the client: the scripted scenario of the Proxmox issue,
//! plus pending changes and hotplug, resize, migrate, HA on PVE 8 and 9, load profiles,
//! a node going down, privileges, ticket login and old servers' reason phrases.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{TEMPLATE, create_params, sim};
use pvefleet_proxmox::client::api::{Migration, ResourceType};
use pvefleet_proxmox::client::ha::{HaResourceSpec, HaRuleSpec};
use pvefleet_proxmox::client::sdn::VnetSpec;
use pvefleet_proxmox::client::{Auth, Class, ClientSettings, Params, PveClient, Reason, TlsMode};
use pvefleet_pvesim::{Load, Sim, SimConfig};

#[tokio::test]
async fn the_scripted_scenario() {
    let (sim, c) = sim(SimConfig {
        task_duration: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;

    // Create with a vmid that exists: 500 "already exists", permanent.
    c.lxc_create("pve1", create_params(200)).await.unwrap();
    let err = c.lxc_create("pve2", create_params(200)).await.unwrap_err();
    assert_eq!(
        (err.status, err.reason, err.class),
        (Some(500), Reason::AlreadyExists, Class::Permanent)
    );
    assert_eq!(err.message, "CT 200 already exists on node 'pve1'");

    // A config put while a create task runs: locked (create), transient.
    let upid: String = c.post("/nodes/pve1/lxc", create_params(201)).await.unwrap();
    let err = c
        .lxc_set_config("pve1", 201, Params::new().set("memory", 2048), None)
        .await
        .unwrap_err();
    assert_eq!((err.reason, err.class), (Reason::Locked, Class::Transient));
    assert_eq!(err.message, "CT is locked (create)");
    c.wait_task(&upid).await.unwrap();
    c.lxc_set_config("pve1", 201, Params::new().set("memory", 2048), None)
        .await
        .unwrap();

    // Shutdown with a timeout that expires, then stop.
    c.lxc_start("pve1", 201).await.unwrap();
    sim.lock_task_error("vzshutdown", "shutdown timed out after 5 seconds");
    let err = c.lxc_shutdown("pve1", 201, Some(5), false).await.unwrap_err();
    assert_eq!(err.reason, Reason::TaskFailed);
    assert!(err.message.contains("timed out"), "{err}");
    assert_eq!(
        c.lxc_status("pve1", 201).await.unwrap().status,
        "running",
        "still running"
    );
    c.lxc_stop("pve1", 201).await.unwrap();
    assert_eq!(c.lxc_status("pve1", 201).await.unwrap().status, "stopped");

    // Snapshot create, list and delete; the config text carries the snapshot section.
    c.lxc_snapshot_create("pve1", 201, "initial", Some("fresh install"))
        .await
        .unwrap();
    let snaps = c.lxc_snapshots("pve1", 201).await.unwrap();
    let names: Vec<&str> = snaps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["initial", "current"]);
    assert_eq!(snaps[0].description.as_deref(), Some("fresh install"));
    assert_eq!(snaps[1].parent.as_deref(), Some("initial"));
    let text = sim.config_text(201).unwrap();
    assert!(
        text.contains("\n[initial]\n") && text.contains("parent: initial"),
        "{text}"
    );
    let err = c.lxc_snapshot_create("pve1", 201, "initial", None).await.unwrap_err();
    assert!(err.message.contains("snapshot name 'initial' already used"), "{err}");
    c.lxc_snapshot_delete("pve1", 201, "initial", false).await.unwrap();
    assert_eq!(c.lxc_snapshots("pve1", 201).await.unwrap().len(), 1, "only 'current'");
    assert!(!sim.config_text(201).unwrap().contains("[initial]"));

    // Destroy with purge: gone, and out of HA.
    c.ha_resource_add("ct:201", &HaResourceSpec::default()).await.unwrap();
    let err = c.lxc_destroy("pve1", 201, false, false).await.unwrap_err();
    assert!(err.message.contains("purge parameter not set"), "{err}");
    c.lxc_destroy("pve1", 201, true, false).await.unwrap();
    assert_eq!(c.lxc_status("pve1", 201).await.unwrap_err().reason, Reason::NotFound);
    assert!(
        c.ha_resources().await.unwrap().is_empty(),
        "purge removed the HA resource"
    );

    // HA resource, then rule: a rule on an unmanaged resource is refused.
    let rule = HaRuleSpec::NodeAffinity {
        resources: vec!["ct:200".into()],
        nodes: vec!["pve1:2".into(), "pve2".into()],
        strict: false,
    };
    let err = c.ha_rule_create("web", &rule).await.unwrap_err();
    assert_eq!(err.status, Some(400));
    assert!(
        err.errors["resources"].contains("unmanaged resource(s) ct:200"),
        "{:?}",
        err.errors
    );
    c.ha_resource_add("ct:200", &HaResourceSpec::default()).await.unwrap();
    c.ha_rule_create("web", &rule).await.unwrap();
    let rules = c.ha_rules().await.unwrap();
    assert_eq!(
        (rules[0].rule.as_str(), rules[0].kind.as_str()),
        ("web", "node-affinity")
    );
    let err = c
        .ha_resource_add("ct:200", &HaResourceSpec::default())
        .await
        .unwrap_err();
    assert_eq!(err.reason, Reason::AlreadyExists, "{err}");

    // A vnet exists as a bridge only after the SDN apply.
    c.vnet_create(
        "web1",
        &VnetSpec {
            zone: "fleet".into(),
            tag: Some(30),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let vnets = c.vnets().await.unwrap();
    assert_eq!(vnets[0].state.as_deref(), Some("new"));
    let zones = c.node_sdn_zones("pve1").await.unwrap();
    assert_eq!(zones[0].status, "pending");
    c.lxc_start("pve1", 200).await.unwrap();
    let err = c
        .lxc_set_config(
            "pve1",
            200,
            Params::new().set("net1", "name=eth1,bridge=web1,ip=dhcp"),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.status, Some(400));
    assert_eq!(
        err.errors["net1"],
        "unable to hotplug net1: bridge 'web1' does not exist"
    );
    c.sdn_apply().await.unwrap();
    assert_eq!(c.vnets().await.unwrap()[0].state, None, "applied");
    assert_eq!(c.node_sdn_zones("pve1").await.unwrap()[0].status, "available");
    assert_eq!(c.node_sdn_vnets("pve1", "fleet").await.unwrap()[0].vnet, "web1");
    c.lxc_set_config(
        "pve1",
        200,
        Params::new().set("net1", "name=eth1,bridge=web1,ip=dhcp"),
        None,
    )
    .await
    .unwrap();
    let config = c.lxc_config("pve1", 200, true).await.unwrap();
    assert!(config["net1"].as_str().unwrap().contains("bridge=web1"), "hot-plugged");
}

#[tokio::test]
async fn a_running_container_takes_live_options_at_once_and_the_rest_at_restart() {
    let (sim, c) = sim(SimConfig::default()).await;
    c.lxc_create("pve1", create_params(300)).await.unwrap();
    c.lxc_start("pve1", 300).await.unwrap();
    c.lxc_set_config(
        "pve1",
        300,
        Params::new()
            .set("memory", 2048)
            .set("cores", 3)
            .set("nameserver", "9.9.9.9")
            .set("net0", "name=eth0,bridge=vmbr0,ip=dhcp,firewall=1,mtu=1400"),
        None,
    )
    .await
    .unwrap();
    let current = c.lxc_config("pve1", 300, true).await.unwrap();
    assert_eq!(
        (current["memory"].as_u64(), current["cores"].as_u64()),
        (Some(2048), Some(3))
    );
    assert!(current.get("nameserver").is_none(), "nameserver waits for a restart");
    assert!(
        !current["net0"].as_str().unwrap().contains("mtu"),
        "an MTU change waits too"
    );
    let merged = c.lxc_config("pve1", 300, false).await.unwrap();
    assert_eq!(merged["nameserver"], "9.9.9.9", "the default view shows pending values");
    let pending = c.lxc_pending("pve1", 300).await.unwrap();
    let ns = pending.iter().find(|p| p.key == "nameserver").unwrap();
    assert_eq!((ns.value.as_deref(), ns.pending.as_deref()), (None, Some("9.9.9.9")));
    let mem = pending.iter().find(|p| p.key == "memory").unwrap();
    assert_eq!((mem.value.as_deref(), mem.pending.as_deref()), (Some("2048"), None));
    assert!(sim.config_text(300).unwrap().contains("[pve:pending]"));
    c.lxc_reboot("pve1", 300, None).await.unwrap();
    let current = c.lxc_config("pve1", 300, true).await.unwrap();
    assert_eq!(current["nameserver"], "9.9.9.9", "applied at the reboot");
    assert!(!sim.config_text(300).unwrap().contains("[pve:pending]"));

    // Deleting net10 and up on a running container stays pending (pve-container's regex).
    for n in [1, 12] {
        c.lxc_set_config(
            "pve1",
            300,
            Params::new().set(&format!("net{n}"), format!("name=eth{n},bridge=vmbr0")),
            None,
        )
        .await
        .unwrap();
    }
    c.lxc_delete_config("pve1", 300, &["net1", "net12"], None)
        .await
        .unwrap();
    let current = c.lxc_config("pve1", 300, true).await.unwrap();
    assert!(current.get("net1").is_none() && current.get("net12").is_some());
    let pending = c.lxc_pending("pve1", 300).await.unwrap();
    assert_eq!(pending.iter().find(|p| p.key == "net12").unwrap().delete, Some(true));

    // A stale digest is refused; a fresh one works.
    let digest = current["digest"].as_str().unwrap().to_string();
    c.lxc_set_config("pve1", 300, Params::new().set("tags", "a"), Some(&digest))
        .await
        .unwrap();
    let err = c
        .lxc_set_config("pve1", 300, Params::new().set("tags", "b"), Some(&digest))
        .await
        .unwrap_err();
    assert!(err.message.contains("detected modified configuration"), "{err}");
}

#[tokio::test]
async fn resize_migrate_and_rollback_follow_pve() {
    let (_sim, c) = sim(SimConfig::default()).await;
    c.lxc_create("pve1", create_params(400)).await.unwrap();
    c.lxc_resize("pve1", 400, "rootfs", "+2G", None).await.unwrap().unwrap();
    let rootfs = c.lxc_config("pve1", 400, true).await.unwrap()["rootfs"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(rootfs.ends_with("size=10G"), "{rootfs}");
    assert!(
        c.lxc_resize("pve1", 400, "rootfs", "10G", None)
            .await
            .unwrap()
            .is_none(),
        "already that size: no call"
    );
    let err = c.lxc_resize("pve1", 400, "rootfs", "4G", None).await.unwrap_err();
    assert_eq!(err.message, "unable to shrink disk size");

    c.lxc_start("pve1", 400).await.unwrap();
    let err = c
        .lxc_migrate("pve1", 400, "pve2", &Migration::default())
        .await
        .unwrap_err();
    assert!(err.message.contains("without --online or --restart"), "{err}");
    let check = c.lxc_migrate_check("pve1", 400).await.unwrap();
    assert_eq!(
        (check.running, check.allowed_nodes.clone()),
        (Some(true), vec!["pve2".to_string()])
    );
    c.lxc_migrate(
        "pve1",
        400,
        "pve2",
        &Migration {
            restart: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(c.lxc_status("pve2", 400).await.unwrap().status, "running");
    assert_eq!(c.lxc_status("pve1", 400).await.unwrap_err().reason, Reason::NotFound);

    c.lxc_snapshot_create("pve2", 400, "before", None).await.unwrap();
    c.lxc_set_config("pve2", 400, Params::new().set("hostname", "changed"), None)
        .await
        .unwrap();
    c.lxc_snapshot_rollback("pve2", 400, "before", false).await.unwrap();
    let config = c.lxc_config("pve2", 400, true).await.unwrap();
    assert_eq!(config["hostname"], "blog", "rolled back");
    assert_eq!(
        c.lxc_status("pve2", 400).await.unwrap().status,
        "stopped",
        "rollback stops it"
    );
}

#[tokio::test]
async fn pve8_has_groups_and_no_rules_pve9_has_rules_and_no_groups() {
    let (_s8, c8) = sim(SimConfig {
        version: "8.4.1".into(),
        ..SimConfig::default()
    })
    .await;
    c8.lxc_create("pve1", create_params(500)).await.unwrap();
    c8.ha_group_create("fleet", &["pve1:2", "pve2"], false, false)
        .await
        .unwrap();
    c8.ha_resource_add(
        "ct:500",
        &HaResourceSpec {
            group: Some("fleet".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(c8.ha_resources().await.unwrap()[0].group.as_deref(), Some("fleet"));
    let err = c8.ha_rules().await.unwrap_err();
    assert_eq!((err.status, err.reason), (Some(501), Reason::NotImplemented));
    assert_eq!(err.message, "Method 'GET /cluster/ha/rules' not implemented");

    let (_s9, c9) = sim(SimConfig::default()).await;
    c9.lxc_create("pve1", create_params(500)).await.unwrap();
    let err = c9.ha_group_create("fleet", &["pve1"], false, false).await.unwrap_err();
    assert!(err.message.contains("ha groups have been migrated to rules"), "{err}");
    let err = c9
        .ha_resource_add(
            "ct:500",
            &HaResourceSpec {
                group: Some("fleet".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.errors["group"].contains("migrated to rules"), "{:?}", err.errors);
}

#[tokio::test]
async fn cluster_resources_report_load_profiles_and_a_node_that_goes_down() {
    let (sim, c) = sim(SimConfig::default()).await;
    sim.populate(
        1000,
        50,
        Load {
            cpu: 0.25,
            mem: 512 << 20,
            ..Default::default()
        },
    );
    sim.set_load(
        1001,
        Load {
            cpu: 0.95,
            mem: 1900 << 20,
            disk: 3 << 30,
            ..Default::default()
        },
    );
    let all = c.resources(Some(ResourceType::Vm)).await.unwrap();
    assert_eq!(all.len(), 50);
    let hot = all.iter().find(|r| r.vmid == Some(1001)).unwrap();
    assert_eq!(
        (hot.cpu, hot.mem, hot.maxmem, hot.maxcpu),
        (Some(0.95), Some(1900 << 20), Some(2048 << 20), Some(2.0))
    );
    assert_eq!(hot.tag_list(), vec!["fleet"]);
    let nodes = c.resources(Some(ResourceType::Node)).await.unwrap();
    assert!(
        nodes
            .iter()
            .all(|n| n.kind == "node" && n.status.as_deref() == Some("online"))
    );

    sim.set_node_down("pve2", true);
    let err = c.node_status("pve2").await.unwrap_err();
    assert_eq!((err.status, err.class), (Some(595), Class::Transient));
    let on_pve2 = c.resources(Some(ResourceType::Vm)).await.unwrap();
    assert!(
        on_pve2
            .iter()
            .filter(|r| r.node.as_deref() == Some("pve2"))
            .all(|r| r.status.as_deref() == Some("unknown"))
    );
    let listed = c.nodes().await.unwrap();
    assert_eq!(listed[1].status, "offline");
    sim.set_node_down("pve2", false);
    c.node_status("pve2").await.unwrap();
}

#[tokio::test]
async fn a_missing_privilege_is_a_permanent_403_naming_it() {
    let (_sim, c) = sim(SimConfig {
        privileges: vec!["VM.Audit".into(), "Sys.Audit".into()],
        ..SimConfig::default()
    })
    .await;
    let err = c.lxc_create("pve1", create_params(600)).await.unwrap_err();
    assert_eq!(
        (err.status, err.class, err.reason),
        (Some(403), Class::Permanent, Reason::Forbidden)
    );
    assert_eq!(err.message, "Permission check failed (/vms/600, VM.Allocate)");
    let perms = c.permissions().await.unwrap();
    assert!(perms["/"].contains_key("VM.Audit") && !perms["/"].contains_key("VM.Allocate"));
}

#[tokio::test]
async fn a_user_without_a_token_logs_in_for_a_ticket_and_writes_with_its_csrf_token() {
    let (_sim, addr) = Sim::spawn(SimConfig {
        password: Some(("fleet@pve".into(), "s3cret".into())),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let settings = |password: &str| ClientSettings {
        url: format!("http://{addr}"),
        auth: Auth::Password {
            user: "fleet@pve".into(),
            password: password.into(),
        },
        tls: TlsMode::Verified,
        request_timeout: Duration::from_secs(2),
        task_timeout: Duration::from_secs(5),
        read_retries: 0,
    };
    let c = PveClient::new(settings("s3cret")).unwrap();
    assert!(c.template_exists("pve1", TEMPLATE).await.unwrap());
    c.lxc_create("pve1", create_params(700)).await.unwrap();
    c.lxc_destroy("pve1", 700, true, false).await.unwrap();
    let wrong = PveClient::new(settings("nope")).unwrap();
    let err = wrong.version().await.unwrap_err();
    assert_eq!((err.status, err.reason), (Some(401), Reason::Forbidden));
}

#[tokio::test]
async fn an_old_server_gives_the_message_only_in_the_reason_phrase() {
    let (_sim, c) = sim(SimConfig {
        reason_phrase_errors: true,
        ..SimConfig::default()
    })
    .await;
    c.lxc_create("pve1", create_params(800)).await.unwrap();
    let err = c.lxc_create("pve1", create_params(800)).await.unwrap_err();
    assert_eq!(err.message, "CT 800 already exists on node 'pve1'");
    assert_eq!(err.reason, Reason::AlreadyExists);
}

#[tokio::test]
async fn task_logs_page_and_storage_lists_templates() {
    let (sim, c) = sim(SimConfig::default()).await;
    sim.lock_task_error("vzcreate", "unpack failed");
    let err = c.lxc_create("pve1", create_params(900)).await.unwrap_err();
    assert!(err.task_log.last().unwrap().contains("TASK ERROR: unpack failed"));
    let tasks = c.tasks("pve1", None).await.unwrap();
    let upid = &tasks[0].upid;
    assert_eq!(tasks[0].status.as_deref(), Some("unpack failed"));
    let first = c.task_log(upid, 0, 1).await.unwrap();
    let rest = c.task_log(upid, 1, 50).await.unwrap();
    assert_eq!((first.len(), first[0].n), (1, Some(1)));
    assert_eq!(rest[0].n, Some(2));
    let status = c.task_status(upid).await.unwrap();
    assert_eq!(status.exitstatus.as_deref(), Some("unpack failed"));
    assert!(!c.template_exists("pve1", "local:vztmpl/nope.tar.zst").await.unwrap());
    let err = c.storage_content("pve1", "nas", None).await.unwrap_err();
    assert!(err.message.contains("storage 'nas' does not exist"), "{err}");
}
