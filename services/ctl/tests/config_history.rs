//! The configuration history the way an operator meets it: `pvefleet dev` running the whole
//! fleet (the autoscaler, nethotplug and the backup service among it) and the CLI beside it.
//! A site is created and its first config recorded; the real autoscaler scales it up (pvesim
//! is told the container uses 90% of its memory) and the
//! real nethotplug attaches an interface, and each change is recorded as a version with its
//! diff; `site config --diff` shows both; `site config --restore 1 --wait` puts the first
//! version back through the digest-guarded write, and the container's config (read from PVE
//! again) is the first version's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Dev, text};
use serde_json::Value;

async fn json(dev: &Dev, args: &[&str]) -> Value {
    let out = dev.cli(args).await;
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out.stdout)))
}

/// The site's history once it holds a version recorded for `cause`.
async fn version_for(dev: &Dev, site: &str, cause: &str) -> (Value, Value) {
    let started = Instant::now();
    loop {
        let list = json(dev, &["site", "config", site, "--history", "--json"]).await;
        if let Some(v) = list.as_array().unwrap().iter().find(|v| v["cause"] == cause) {
            return (v.clone(), list);
        }
        if started.elapsed() > Duration::from_secs(60) {
            let out = dev.cli(&["autoscale", "status"]).await;
            panic!(
                "no version recorded for {cause}: {list:#}\nautoscale status: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Lets the autoscaler scale container `vmid`, or not, through its policy.
async fn autoscaling(dev: &Dev, vmid: &str, enabled: bool) {
    let keys = format!("{{\"enabled\": {enabled}}}");
    let out = dev
        .cli(&["autoscale", "policy", "set", "--vmid", vmid, "--json", &keys])
        .await;
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
}

fn keys(changes: &Value) -> Vec<&str> {
    changes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autoscaler_and_a_nethotplug_change_are_recorded_with_diffs_and_a_restore_puts_version_one_back() {
    // The autoscaler ticks every second but scales nothing until this container is let in.
    let dev = Dev::start(&[
        ("PVEFLEET_AUTOSCALER__INTERVAL", "1s"),
        ("PVEFLEET_AUTOSCALER__POLICY__EVALUATION_PERIODS", "1"),
        ("PVEFLEET_AUTOSCALER__POLICY__ENABLED", "false"),
    ])
    .await;
    let site = dev.create_site("shop").await;
    let shown = json(&dev, &["site", "show", &site]).await;
    let vmid = shown["vmid"].as_u64().expect("the site's vmid").to_string();

    // Its first config, recorded when the provisioner said the container was created.
    let (first, _) = version_for(&dev, &site, "container.created").await;
    assert_eq!(first["version"], 1, "{first}");
    let one = json(&dev, &["site", "config", &site, "--version", "1", "--json"]).await;
    assert_eq!(one["config"]["memory"].to_string().trim_matches('"'), "1024", "{one}");

    // The autoscaler, let in, scales the busy container's memory up (90% used): a version of
    // its own, with the change.
    pvefleet_proxmox::client::tls::provider();
    let resp = reqwest::Client::new()
        .post(format!("{}/_sim/load", dev.sim))
        .json(&serde_json::json!({ "vmid": vmid.parse::<u32>().unwrap(), "mem": 1024u64 * 1024 * 1024 * 9 / 10 }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{:?}", resp.text().await);
    autoscaling(&dev, &vmid, true).await;
    let (scaled, _) = version_for(&dev, &site, "container.scaled").await;
    let memory = scaled["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == "memory")
        .unwrap_or_else(|| panic!("the memory change: {scaled:#}"));
    assert_eq!(
        (memory["from"].as_str(), memory["to"].as_str()),
        (Some("1024"), Some("1536")),
        "{scaled:#}"
    );
    // Let out again before the restore, so nothing scales it back meanwhile.
    autoscaling(&dev, &vmid, false).await;

    // nethotplug attaches a second interface: a version with just that line added.
    let out = dev
        .cli(&["net", "attach", &vmid, "--bridge", "vmbr0", "--ip", "dhcp", "--wait"])
        .await;
    let attached = text(&out.stdout);
    assert!(out.status.success(), "{attached}{}", text(&out.stderr));
    let line = attached
        .lines()
        .find_map(|l| l.trim().strip_prefix("net1: "))
        .expect("the interface's line is printed")
        .to_string();
    let (net, history) = version_for(&dev, &site, "net.attached").await;
    assert_eq!(
        net["changes"],
        serde_json::json!([{ "key": "net1", "to": line }]),
        "{net:#}"
    );
    assert!(net["version"].as_i64() > scaled["version"].as_i64(), "{history:#}");

    // The CLI's own views: the history lists both changes; the diff from version 1 has both.
    let out = dev.cli(&["site", "config", &site, "--history"]).await;
    let listed = text(&out.stdout);
    assert!(out.status.success(), "{listed}");
    assert!(
        listed.contains("- memory: 1024") && listed.contains("+ memory: 1536"),
        "{listed}"
    );
    assert!(listed.contains(&format!("+ net1: {line}")), "{listed}");
    let d = json(&dev, &["site", "config", &site, "--diff", "1", "--json"]).await;
    let changed = keys(&d["changes"]);
    assert!(changed.contains(&"memory") && changed.contains(&"net1"), "{d:#}");

    // Version 1 put back: the memory written and the interface deleted, in one guarded write.
    let done = json(&dev, &["site", "config", &site, "--restore", "1", "--wait", "--json"]).await;
    assert_eq!(done["state"], "done", "{done:#}");
    let written: Vec<&str> = done["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(written.contains(&"memory") && written.contains(&"net1"), "{done:#}");
    // The version recorded after the restore is PVE's config read back: version 1's again.
    let (after, _) = version_for(&dev, &site, "config.restore").await;
    assert_eq!(after["version"], done["result_version"], "{after:#}");
    let d = json(
        &dev,
        &[
            "site",
            "config",
            &site,
            "--diff",
            "1",
            &after["version"].to_string(),
            "--json",
        ],
    )
    .await;
    assert_eq!(d["changes"], serde_json::json!([]), "{d:#}");
    let now = json(&dev, &["site", "config", &site, "--json"]).await;
    assert_eq!(now["config"]["memory"].to_string().trim_matches('"'), "1024", "{now:#}");
    assert!(now["config"].get("net1").is_none(), "{now:#}");

    // Refusals name what is wrong.
    let out = dev.cli(&["site", "config", &site, "--restore", "99"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no config version 99"),
        "{}",
        text(&out.stderr)
    );
    let out = dev.cli(&["site", "config", &site, "--diff", "1", "99"]).await;
    assert!(!out.status.success());
}
