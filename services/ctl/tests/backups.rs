//! Backups the way an operator meets them: `pvefleet dev` running the whole fleet (the backup
//! service among it) and the CLI beside it. A site is created; `backup sync` makes PVE's job
//! for the default policy; `site backup --wait` takes one and `site backups` lists it; a new
//! policy moves the site to its own job; a bad policy is refused naming the field; `site
//! delete --wait` leaves a protected final backup behind, listed with the others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Dev, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_is_backed_up_on_demand_by_policy_and_before_it_is_deleted_all_from_the_cli() {
    let dev = Dev::start(&[("PVEFLEET_BACKUP__SYNC_INTERVAL", "1h")]).await;
    let site = dev.create_site("shop").await;

    // The seeded default policy covers the site; a sync makes PVE's job for it.
    let out = dev.cli(&["backup", "policy", "list"]).await;
    let list = text(&out.stdout);
    assert!(out.status.success(), "{list}");
    let daily = list.lines().find(|l| l.starts_with("daily")).expect("the daily policy");
    assert!(daily.contains("keep-daily=7") && daily.contains("(default)"), "{list}");
    assert!(
        daily.split_whitespace().any(|w| w == "1"),
        "one site follows it: {list}"
    );
    let out = dev.cli(&["backup", "sync"]).await;
    let synced = text(&out.stdout);
    assert!(out.status.success(), "{synced}{}", text(&out.stderr));
    assert!(synced.contains("created pvefleet-daily"), "{synced}");

    // On demand, waited for, then listed.
    let out = dev.cli(&["site", "backup", &site, "--wait"]).await;
    let took = text(&out.stdout);
    assert!(out.status.success(), "{took}{}", text(&out.stderr));
    let volid = took
        .lines()
        .find_map(|l| l.split(": ").nth(1).filter(|v| v.contains(":backup/vzdump-lxc-")))
        .expect("the volume is printed")
        .to_string();
    let out = dev.cli(&["site", "backups", &site, "--json"]).await;
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["kind"], "on_demand", "{rows}");
    assert_eq!(rows[0]["state"], "ok");
    assert_eq!(rows[0]["volid"], volid.as_str());

    // A policy of its own: the site moves to that policy's job, and the default's goes.
    let out = dev
        .cli(&[
            "backup",
            "policy",
            "set",
            "hourly",
            "--schedule",
            "*:00",
            "--storage",
            "backup",
            "--retention",
            "keep-last=24,keep-daily=7",
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = dev.cli(&["backup", "site", &site, "--policy", "hourly"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = dev.cli(&["backup", "sync", "--json"]).await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["jobs"]["created"],
        serde_json::json!(["pvefleet-hourly"]),
        "{report}"
    );
    assert_eq!(
        report["jobs"]["removed"],
        serde_json::json!(["pvefleet-daily"]),
        "{report}"
    );
    // A policy that keeps everything forever is refused, naming the field, exit 2.
    let out = dev
        .cli(&["backup", "policy", "set", "forever", "--retention", "keep-all=1"])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("retention"), "{}", text(&out.stderr));

    // A restore names its backup, or asks for the latest; the backup put back in place.
    let out = dev.cli(&["site", "restore", &site, "--wait"]).await;
    assert_eq!(out.status.code(), Some(2), "--from or --latest: {}", text(&out.stderr));
    let out = dev
        .cli(&["site", "restore", &site, "--from", "local:backup/not-this-site.tar.zst"])
        .await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no kept backup"), "{}", text(&out.stderr));
    let out = dev.cli(&["site", "restore", &site, "--from", &volid, "--wait"]).await;
    let restored = text(&out.stdout);
    assert!(out.status.success(), "{restored}{}", text(&out.stderr));
    assert!(
        restored.contains("backup.restore") && restored.contains("site shop is active"),
        "{restored}"
    );
    // A clone of that backup beside the site: a new site, followed to its end.
    let out = dev
        .cli(&[
            "site",
            "restore",
            &site,
            "--from",
            &volid,
            "--clone",
            "--subdomain",
            "shop-copy",
            "--wait",
        ])
        .await;
    let cloned = text(&out.stdout);
    assert!(out.status.success(), "{cloned}{}", text(&out.stderr));
    assert!(
        cloned.contains(&format!("(a clone of {site}) restoring")) && cloned.contains("site shop-copy is active"),
        "{cloned}"
    );
    let out = dev.cli(&["site", "list"]).await;
    let listed = text(&out.stdout);
    assert!(
        listed.lines().filter(|l| l.contains(" active ")).count() == 2,
        "both sites active: {listed}"
    );
    let out = dev
        .cli(&["site", "restore", &site, "--latest", "--subdomain", "x"])
        .await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "--subdomain needs --clone: {}",
        text(&out.stderr)
    );

    // The deletion backs the site up first; the final backup stays, protected.
    let out = dev.cli(&["site", "delete", &site, "--wait"]).await;
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let out = dev.cli(&["site", "backups", &site, "--json"]).await;
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let finals: Vec<&serde_json::Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "final")
        .collect();
    assert_eq!(finals.len(), 1, "{rows}");
    assert_eq!(
        (finals[0]["state"].as_str(), finals[0]["protected"].as_bool()),
        (Some("ok"), Some(true))
    );
    assert!(
        finals[0]["volid"].as_str().unwrap().starts_with("backup:backup/"),
        "the site's policy's storage: {rows}"
    );
    let out = dev.cli(&["site", "backups", &site]).await;
    let table = text(&out.stdout);
    assert!(table.contains("final") && table.contains("on_demand"), "{table}");

    // The deleted site comes back from its latest backup, the final one.
    let out = dev.cli(&["site", "restore", &site, "--latest", "--wait"]).await;
    let back = text(&out.stdout);
    assert!(out.status.success(), "{back}{}", text(&out.stderr));
    assert!(back.contains("site shop is active"), "{back}");
}
