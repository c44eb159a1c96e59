//! Backups against pvesim through the client: cluster jobs run on the simulated clock and
//! prune with PVE's semantics over thirty days; on-demand vzdump runs with notes, protection
//! and their faults; restores in place, to a new vmid, over a running container and from a
//! corrupt archive; a destroyed guest leaving the jobs that named it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use pvefleet_proxmox::client::{Params, PveClient};
use pvefleet_proxmox::codec::prune::{Candidate, Mark, PruneBackups};
use pvefleet_pvesim::{Sim, SimConfig};

const DAY: u64 = 86_400;

async fn container(c: &PveClient, node: &str, vmid: u32) {
    c.lxc_create(node, common::create_params(vmid)).await.unwrap();
}

fn advance(sim: &Sim, secs: u64) {
    sim.advance_clock(secs);
}

/// Replays PVE's pruning after each run: the backups a guest should have after `runs`
/// backups (their times), each run followed by a prune with `keep`.
fn expected(runs: &[u64], keep: &PruneBackups) -> BTreeSet<u64> {
    let mut kept: Vec<u64> = Vec::new();
    for &t in runs {
        kept.push(t);
        let marks = keep.mark(
            &kept
                .iter()
                .map(|&ctime| Candidate {
                    ctime: ctime as i64,
                    protected: false,
                })
                .collect::<Vec<_>>(),
        );
        kept = kept
            .iter()
            .zip(marks)
            .filter(|(_, m)| *m != Mark::Remove)
            .map(|(t, _)| *t)
            .collect();
    }
    kept.into_iter().collect()
}

#[tokio::test]
async fn thirty_days_of_a_daily_job_leave_exactly_what_prune_backups_keeps() {
    let (sim, c) = common::sim(SimConfig::default()).await;
    container(&c, "pve1", 101).await;
    container(&c, "pve2", 102).await;
    let daily = PruneBackups::daily(7);
    let mixed = PruneBackups::parse("prune-backups", "keep-last=2,keep-daily=3,keep-weekly=2,keep-monthly=2").unwrap();
    c.backup_job_create(
        Params::new()
            .set("id", "pvefleet-daily")
            .set("schedule", "02:00")
            .set("vmid", "101,102")
            .set("storage", "local")
            .set("mode", "snapshot")
            .set("prune-backups", daily.write()),
    )
    .await
    .unwrap();
    c.backup_job_create(
        Params::new()
            .set("id", "pvefleet-mixed")
            .set("schedule", "03:00")
            .set("vmid", "102")
            .set("storage", "backup")
            .set("prune-backups", mixed.write()),
    )
    .await
    .unwrap();
    let jobs = c.backup_jobs().await.unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].prune_backups.as_ref(), Some(&daily), "{jobs:?}");
    assert!(jobs.iter().all(|j| j.next_run.is_some()));
    for _ in 0..30 {
        advance(&sim, DAY);
    }
    for (node, vmid) in [("pve1", 101), ("pve2", 102)] {
        let backups = c.backups(node, "local", Some(vmid)).await.unwrap();
        let times: Vec<u64> = backups.iter().map(|b| b.ctime.unwrap()).collect();
        assert_eq!(times.len(), 7, "keep-daily=7 keeps seven: {times:?}");
        let days: BTreeSet<u64> = times.iter().map(|t| t / DAY).collect();
        assert_eq!(days.len(), 7, "one a day");
        // The seven newest days: the last run is within a day of now.
        let runs: Vec<u64> = {
            let newest = *times.iter().max().unwrap();
            (0..30).map(|d| newest - (29 - d) * DAY).collect()
        };
        assert_eq!(
            times.iter().copied().collect::<BTreeSet<_>>(),
            expected(&runs, &daily),
            "vmid {vmid}"
        );
        // A node sees only its own `local` backups.
        let other = if node == "pve1" { "pve2" } else { "pve1" };
        assert!(c.backups(other, "local", Some(vmid)).await.unwrap().is_empty());
    }
    // The mixed policy on the shared storage, seen from either node.
    let shared = c.backups("pve1", "backup", Some(102)).await.unwrap();
    let times: BTreeSet<u64> = shared.iter().map(|b| b.ctime.unwrap()).collect();
    let newest = *times.iter().max().unwrap();
    let runs: Vec<u64> = (0..30).map(|d| newest - (29 - d) * DAY).collect();
    let want = expected(&runs, &mixed);
    assert_eq!(times, want);
    assert!(
        want.len() > 5 && want.len() < 30,
        "the mixed policy keeps some, not all: {want:?}"
    );
    assert_eq!(c.backups("pve2", "backup", Some(102)).await.unwrap().len(), want.len());
    // The preview of the same policy now removes nothing more.
    let preview = c
        .prune_preview("pve1", "backup", Some(102), Some(&mixed))
        .await
        .unwrap();
    assert!(preview.iter().all(|r| r.mark == Mark::Keep), "{preview:?}");
}

#[tokio::test]
async fn an_on_demand_backup_is_listed_with_notes_and_protection_and_its_faults_fail_the_task() {
    let (sim, c) = common::sim(SimConfig::default()).await;
    container(&c, "pve1", 101).await;
    let out = c
        .vzdump(
            "pve1",
            Params::new()
                .set("vmid", 101)
                .set("storage", "local")
                .set("notes-template", "{{guestname}} ({{vmid}})")
                .flag("protected", true),
        )
        .await
        .unwrap();
    assert!(out.upid.contains(":vzdump:101:"), "{}", out.upid);
    let items = c.backups("pve1", "local", Some(101)).await.unwrap();
    assert_eq!(items.len(), 1);
    let volid = items[0].volid.clone();
    assert!(
        volid.starts_with("local:backup/vzdump-lxc-101-") && volid.ends_with(".tar.zst"),
        "{volid}"
    );
    assert_eq!(items[0].notes.as_deref(), Some("blog (101)"));
    assert_eq!(items[0].protected, Some(true));
    // A protected backup cannot be removed; unprotected, it can.
    let e = c.backup_delete("pve1", &volid).await.unwrap_err();
    assert!(e.message.contains("protected"), "{e}");
    c.backup_annotate("pve1", &volid, None, Some(false)).await.unwrap();
    // The archive holds the config.
    let config = c.backup_config("pve1", &volid).await.unwrap();
    assert!(
        config.contains("hostname: blog") && !config.contains("lock:"),
        "{config}"
    );
    // A full storage and a failing vzdump each fail the task, with PVE's words.
    sim.set_storage_full("local", true);
    let e = c
        .vzdump("pve1", Params::new().set("vmid", 101).set("storage", "local"))
        .await
        .unwrap_err();
    assert!(e.message.contains("No space left on device"), "{e}");
    sim.clear_faults();
    sim.lock_task_error("vzdump", "job errors: command 'tar' failed: exit code 2");
    let e = c
        .vzdump("pve1", Params::new().set("vmid", 101).set("storage", "local"))
        .await
        .unwrap_err();
    assert!(e.message.contains("exit code 2"), "{e}");
    // Neither left a volume, nor the container locked.
    assert_eq!(c.backups("pve1", "local", Some(101)).await.unwrap().len(), 1);
    assert_eq!(c.lxc_status("pve1", 101).await.unwrap().lock, None);
    c.backup_delete("pve1", &volid).await.unwrap();
    assert!(c.backups("pve1", "local", Some(101)).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_restore_brings_back_the_backed_up_config_in_place_or_as_a_new_guest() {
    let (sim, c) = common::sim(SimConfig::default()).await;
    container(&c, "pve1", 101).await;
    c.vzdump("pve1", Params::new().set("vmid", 101).set("storage", "backup"))
        .await
        .unwrap();
    let volid = c.backups("pve1", "backup", Some(101)).await.unwrap()[0].volid.clone();
    // Changed after the backup.
    c.lxc_set_config("pve1", 101, Params::new().set("memory", 4096).set("cores", 4), None)
        .await
        .unwrap();
    // Without force it refuses; over a running container it refuses even with force.
    let e = c
        .lxc_restore("pve1", 101, &volid, false, false, Params::new())
        .await
        .unwrap_err();
    assert!(e.message.contains("already exists"), "{e}");
    c.lxc_start("pve1", 101).await.unwrap();
    let e = c
        .lxc_restore("pve1", 101, &volid, true, false, Params::new())
        .await
        .unwrap_err();
    assert!(e.message.contains("running"), "{e}");
    c.lxc_stop("pve1", 101).await.unwrap();
    c.lxc_restore("pve1", 101, &volid, true, false, Params::new())
        .await
        .unwrap();
    let cfg = c.lxc_config("pve1", 101, true).await.unwrap();
    assert_eq!(cfg["memory"], 1024, "{cfg:?}");
    assert_eq!(cfg["cores"], 2);
    assert!(cfg.get("lock").is_none());
    // To a new vmid on the other node, from the shared storage, with new MAC addresses.
    c.lxc_restore(
        "pve2",
        201,
        &volid,
        false,
        true,
        Params::new().set("hostname", "blog-copy"),
    )
    .await
    .unwrap();
    let copy = c.lxc_config("pve2", 201, true).await.unwrap();
    assert_eq!(copy["hostname"], "blog-copy");
    assert!(copy["rootfs"].as_str().unwrap().contains("vm-201-disk-0"), "{copy:?}");
    // A corrupt archive fails the restore; a new guest is not left behind.
    assert!(sim.corrupt_backup(&volid));
    let e = c
        .lxc_restore("pve1", 301, &volid, false, false, Params::new())
        .await
        .unwrap_err();
    assert!(e.message.contains("unable to restore CT 301"), "{e}");
    assert!(c.lxc_status("pve1", 301).await.is_err(), "no CT 301 is left");
    assert!(c.backup_config("pve1", &volid).await.is_err());
}

#[tokio::test]
async fn a_purged_guest_leaves_the_jobs_and_a_job_it_empties_goes_as_on_pve() {
    let (_sim, c) = common::sim(SimConfig::default()).await;
    container(&c, "pve1", 101).await;
    container(&c, "pve1", 102).await;
    for (id, vmid) in [("pvefleet-a", "101,102"), ("pvefleet-b", "102")] {
        c.backup_job_create(Params::new().set("id", id).set("schedule", "daily").set("vmid", vmid))
            .await
            .unwrap();
    }
    // A job needs guests, and a schedule pvesim can run.
    assert!(
        c.backup_job_create(Params::new().set("id", "x").set("schedule", "daily"))
            .await
            .is_err()
    );
    c.lxc_destroy("pve1", 102, true, false).await.unwrap();
    let jobs = c.backup_jobs().await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].id, "pvefleet-a");
    assert_eq!(jobs[0].vmids(), vec![101]);
}
