//! Shared by the client tests: a client for a simulator, and a tour that calls every typed
//! method of the client once, in an order that makes each call meaningful.

#![allow(dead_code)]

use std::time::Duration;

use pvefleet_proxmox::client::api::{Migration, ResourceType};
use pvefleet_proxmox::client::ha::{HaResourceSpec, HaRuleSpec};
use pvefleet_proxmox::client::sdn::VnetSpec;
use pvefleet_proxmox::client::{Auth, ClientSettings, Params, PveClient, TlsMode};
use pvefleet_pvesim::{Sim, SimConfig};

pub const TOKEN_ID: &str = "fleet@pve!ci";
pub const SECRET: &str = "0d8f3e2a-1111-2222-3333-444455556666";
pub const TEMPLATE: &str = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";

/// A simulator with a token, and a client for it.
pub async fn sim(config: SimConfig) -> (Sim, PveClient) {
    let config = SimConfig {
        token: Some((TOKEN_ID.into(), SECRET.into())),
        ..config
    };
    let (sim, addr) = Sim::spawn(config).await.expect("pvesim starts");
    (sim, client(&format!("http://{addr}")))
}

/// A token client for a URL.
pub fn client(url: &str) -> PveClient {
    PveClient::new(ClientSettings {
        url: url.to_string(),
        auth: Auth::Token {
            id: TOKEN_ID.into(),
            secret: SECRET.into(),
        },
        tls: TlsMode::Verified,
        request_timeout: Duration::from_secs(2),
        task_timeout: Duration::from_secs(10),
        read_retries: 0,
    })
    .expect("client builds")
}

/// Parameters of a typical fleet container.
pub fn create_params(vmid: u32) -> Params {
    Params::new()
        .set("vmid", vmid)
        .set("ostemplate", TEMPLATE)
        .set("hostname", "blog")
        .set("cores", 2)
        .set("memory", 1024)
        .set("swap", 512)
        .set("rootfs", "local-lvm:8")
        .set("net0", "name=eth0,bridge=vmbr0,ip=dhcp,firewall=1")
        .set("features", "nesting=1")
        .set("tags", "fleet;wordpress")
        .flag("unprivileged", true)
        .flag("onboot", true)
}

/// Calls every typed method once. Panics on any unexpected failure.
pub async fn tour(c: &PveClient, pve8: bool) {
    let version = c.version().await.unwrap();
    assert_eq!(version.major(), if pve8 { 8 } else { 9 });
    let nodes = c.nodes().await.unwrap();
    let node = nodes[0].node.clone();
    let other = nodes[1].node.clone();
    c.node_status(&node).await.unwrap();
    c.permissions().await.unwrap();
    assert!(c.template_exists(&node, TEMPLATE).await.unwrap());
    c.storage_content(&node, "local-lvm", None).await.unwrap();
    let vmid = c.next_id().await.unwrap() as u32;
    c.lxc_create(&node, create_params(vmid)).await.unwrap();
    c.lxc_list(&node).await.unwrap();
    c.resources(None).await.unwrap();
    c.resources(Some(ResourceType::Vm)).await.unwrap();
    c.resources(Some(ResourceType::Node)).await.unwrap();
    let config = c.lxc_config(&node, vmid, false).await.unwrap();
    let digest = config["digest"].as_str().unwrap().to_string();
    c.lxc_set_config(
        &node,
        vmid,
        Params::new().set("cores", 4).set(
            "net1",
            "name=eth1,bridge=vmbr0,ip=10.0.0.5/24,gw=10.0.0.1,tag=20,mtu=1450",
        ),
        Some(&digest),
    )
    .await
    .unwrap();
    c.lxc_delete_config(&node, vmid, &["net1"], None).await.unwrap();
    c.lxc_config(&node, vmid, true).await.unwrap();
    c.lxc_start(&node, vmid).await.unwrap();
    c.lxc_status(&node, vmid).await.unwrap();
    c.lxc_interfaces(&node, vmid).await.unwrap();
    c.lxc_set_config(&node, vmid, Params::new().set("nameserver", "1.1.1.1"), None)
        .await
        .unwrap();
    c.lxc_pending(&node, vmid).await.unwrap();
    c.lxc_reboot(&node, vmid, Some(30)).await.unwrap();
    c.lxc_snapshot_create(&node, vmid, "initial", Some("after install"))
        .await
        .unwrap();
    c.lxc_snapshots(&node, vmid).await.unwrap();
    c.lxc_snapshot_rollback(&node, vmid, "initial", true).await.unwrap();
    c.lxc_snapshot_delete(&node, vmid, "initial", false).await.unwrap();
    c.lxc_resize(&node, vmid, "rootfs", "+2G", None).await.unwrap();
    c.lxc_resize(&node, vmid, "rootfs", "10G", None).await.unwrap();
    if !pve8 {
        c.lxc_migrate_check(&node, vmid).await.unwrap();
    }
    c.lxc_migrate(
        &node,
        vmid,
        &other,
        &Migration {
            restart: true,
            timeout: Some(60),
            target_storage: None,
        },
    )
    .await
    .unwrap();
    let node = other;
    let sid = format!("ct:{vmid}");
    if pve8 {
        c.ha_group_create("fleet", &[&format!("{node}:2"), "pve1"], false, false)
            .await
            .unwrap();
        c.ha_groups().await.unwrap();
        c.ha_resource_add(
            &sid,
            &HaResourceSpec {
                group: Some("fleet".into()),
                max_restart: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    } else {
        c.ha_resource_add(
            &sid,
            &HaResourceSpec {
                max_restart: Some(2),
                comment: Some("pvefleet".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        c.ha_rule_create(
            "fleet-nodes",
            &HaRuleSpec::NodeAffinity {
                resources: vec![sid.clone()],
                nodes: vec![format!("{node}:2"), "pve1".into()],
                strict: false,
            },
        )
        .await
        .unwrap();
        c.ha_rules().await.unwrap();
    }
    let r = c.ha_resource(&sid).await.unwrap();
    c.ha_resource_update(
        &sid,
        &HaResourceSpec {
            max_relocate: Some(2),
            ..Default::default()
        },
        r.digest.as_deref(),
    )
    .await
    .unwrap();
    c.ha_resources().await.unwrap();
    c.ha_status().await.unwrap();
    c.ha_migrate(&sid, "pve1").await.unwrap();
    let node = "pve1".to_string();
    if pve8 {
        c.ha_resource_delete(&sid, None).await.unwrap();
        c.ha_group_delete("fleet").await.unwrap();
    } else {
        c.ha_rule_delete("fleet-nodes").await.unwrap();
        c.ha_resource_delete(&sid, Some(true)).await.unwrap();
    }
    c.sdn_zones().await.unwrap();
    c.vnet_create(
        "web1",
        &VnetSpec {
            zone: "fleet".into(),
            tag: Some(100),
            alias: Some("web tier".into()),
            vlanaware: None,
        },
    )
    .await
    .unwrap();
    c.subnet_create("web1", "10.20.0.0/24", Some("10.20.0.1"), true)
        .await
        .unwrap();
    c.vnets().await.unwrap();
    c.subnets("web1").await.unwrap();
    let task = c.sdn_apply().await.unwrap();
    c.node_sdn_zones(&node).await.unwrap();
    c.node_sdn_vnets(&node, "fleet").await.unwrap();
    let upid = c
        .tasks(&node, None)
        .await
        .unwrap()
        .first()
        .map(|t| t.upid.clone())
        .unwrap_or_else(|| task.node.clone().unwrap_or_default());
    c.task_status(&upid).await.unwrap();
    c.task_log(&upid, 0, 50).await.unwrap();
    c.lxc_shutdown(&node, vmid, Some(30), true).await.unwrap();
    c.lxc_start(&node, vmid).await.unwrap();
    c.lxc_stop(&node, vmid).await.unwrap();
    backups(c, &node, vmid).await;
    c.lxc_destroy(&node, vmid, true, false).await.unwrap();
}

/// The backup calls: a vzdump run, its volume listed, annotated, previewed for pruning, its
/// config read, restored over the stopped container, a job made, changed, listed and
/// removed, and the volume deleted.
async fn backups(c: &PveClient, node: &str, vmid: u32) {
    use pvefleet_proxmox::codec::prune::PruneBackups;
    let keep = PruneBackups::daily(7);
    c.vzdump(
        node,
        Params::new()
            .set("vmid", vmid)
            .set("storage", "local")
            .set("mode", "snapshot")
            .set("compress", "zstd")
            .set("notes-template", "{{guestname}} on {{node}}")
            .set("prune-backups", keep.write()),
    )
    .await
    .unwrap();
    let items = c.backups(node, "local", Some(vmid)).await.unwrap();
    let volid = items.first().expect("the backup is listed").volid.clone();
    c.backup_annotate(node, &volid, Some("tour"), Some(false))
        .await
        .unwrap();
    c.prune_preview(node, "local", Some(vmid), Some(&keep)).await.unwrap();
    c.prune(node, "local", Some(vmid), Some(&keep)).await.unwrap();
    c.backup_config(node, &volid).await.unwrap();
    c.lxc_restore(
        node,
        vmid,
        &volid,
        true,
        true,
        Params::new().set("storage", "local-lvm"),
    )
    .await
    .unwrap();
    c.backup_job_create(
        Params::new()
            .set("id", "pvefleet-tour")
            .set("schedule", "02:30")
            .set("vmid", vmid)
            .set("storage", "local")
            .set("mode", "snapshot")
            .set("prune-backups", keep.write())
            .set("comment", "tour"),
    )
    .await
    .unwrap();
    c.backup_job_update("pvefleet-tour", Params::new().set("schedule", "03:00"))
        .await
        .unwrap();
    c.backup_jobs().await.unwrap();
    c.backup_job_delete("pvefleet-tour").await.unwrap();
    c.backup_delete(node, &volid).await.unwrap();
}
