//! `pvefleet pve check`: connects with the configured credentials and reports the version, the
//! nodes, whether the credentials hold every privilege the fleet needs, and the templates,
//! ending in a verdict. Each failed check says what to do about it.

use std::collections::BTreeSet;
use std::process::ExitCode;

use pvefleet_core::config::PveSettings;
use pvefleet_proxmox::client::PveError;
use serde::Serialize;

/// The privileges the fleet's workers use, and what for.
pub const REQUIRED: &[(&str, &str)] = &[
    ("VM.Allocate", "create and destroy containers"),
    ("VM.Config.CPU", "set cores and cpulimit (autoscaler)"),
    ("VM.Config.Memory", "set memory and swap (autoscaler)"),
    ("VM.Config.Network", "attach and detach interfaces (nethotplug)"),
    ("VM.Config.Disk", "size root disks"),
    ("VM.Config.Options", "set hostname, tags and options"),
    ("VM.PowerMgmt", "start, stop and reboot"),
    ("VM.Snapshot", "take the initial snapshot"),
    ("Datastore.AllocateSpace", "allocate root disks"),
    ("Sys.Audit", "read nodes and cluster resources"),
    ("SDN.Use", "put interfaces on SDN vnets"),
];

#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
struct Check {
    name: String,
    status: Status,
    detail: String,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    url: String,
    version: Option<String>,
    nodes: Vec<String>,
    missing_privileges: Vec<String>,
    templates: Vec<String>,
    checks: Vec<Check>,
    verdict: String,
}

impl Report {
    fn add(&mut self, name: &str, status: Status, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            status,
            detail: detail.into(),
        });
    }

    fn failed(&self) -> bool {
        self.checks.iter().any(|c| matches!(c.status, Status::Fail))
    }
}

fn explain(e: &PveError) -> String {
    match e.status {
        Some(401) => format!("{e} (check pve.token_id and pve.token_secret)"),
        None => format!("{e} (is pve.url right, and is the API reachable?)"),
        _ => e.to_string(),
    }
}

/// Privileges held on `/`, or on the subtree where the privilege applies.
fn held(perms: &pvefleet_proxmox::client::api::Permissions, privilege: &str) -> bool {
    let subtree = match privilege.split('.').next() {
        Some("VM") => "/vms",
        Some("Datastore") => "/storage",
        Some("SDN") => "/sdn",
        _ => "/nodes",
    };
    let granted = |path: &str| {
        perms
            .get(path)
            .and_then(|p| p.get(privilege))
            .is_some_and(|v| v.as_u64() != Some(0) && !v.is_null())
    };
    granted("/") || granted(subtree) || (privilege.starts_with("SDN") && granted("/sdn/zones"))
}

async fn check(s: &PveSettings) -> Report {
    let mut r = Report {
        url: s.url.clone(),
        ..Report::default()
    };
    let c = match pvefleet_core::pve::client(s) {
        Ok(c) => c,
        Err(e) => {
            r.add("connect", Status::Fail, format!("{e:#}"));
            return r;
        }
    };
    match c.version().await {
        Ok(v) if v.major() >= 8 => {
            r.add("version", Status::Pass, format!("Proxmox VE {}", v.version));
            r.version = Some(v.version);
        }
        Ok(v) => {
            r.add(
                "version",
                Status::Fail,
                format!("Proxmox VE {} is too old: pvefleet needs 8 or 9", v.version),
            );
            r.version = Some(v.version);
        }
        Err(e) => {
            r.add("version", Status::Fail, explain(&e));
            return r;
        }
    }
    let online: Vec<String> = match c.nodes().await {
        Ok(nodes) => {
            let online: Vec<String> = nodes
                .iter()
                .filter(|n| n.status == "online")
                .map(|n| n.node.clone())
                .collect();
            r.nodes = nodes.iter().map(|n| format!("{} ({})", n.node, n.status)).collect();
            let offline = nodes.len() - online.len();
            match (online.len(), offline) {
                (0, _) => r.add("nodes", Status::Fail, "no node is online"),
                (n, 0) => r.add("nodes", Status::Pass, format!("{n} online")),
                (n, off) => r.add("nodes", Status::Warn, format!("{n} online, {off} not online")),
            }
            online
        }
        Err(e) => {
            r.add("nodes", Status::Fail, explain(&e));
            Vec::new()
        }
    };
    match c.permissions().await {
        Ok(perms) => {
            r.missing_privileges = REQUIRED
                .iter()
                .filter(|(p, _)| !held(&perms, p))
                .map(|(p, _)| p.to_string())
                .collect();
            if r.missing_privileges.is_empty() {
                r.add("privileges", Status::Pass, format!("all {} held", REQUIRED.len()));
            } else {
                let why: Vec<String> = REQUIRED
                    .iter()
                    .filter(|(p, _)| r.missing_privileges.iter().any(|m| m == p))
                    .map(|(p, what)| format!("{p} (to {what})"))
                    .collect();
                r.add(
                    "privileges",
                    Status::Fail,
                    format!(
                        "missing {}; grant them to the token's role on / (and disable privilege separation or grant the token too)",
                        why.join(", ")
                    ),
                );
            }
        }
        Err(e) => r.add("privileges", Status::Fail, explain(&e)),
    }
    let mut found = BTreeSet::new();
    for node in &online {
        let storages: BTreeSet<&str> = s
            .templates
            .iter()
            .filter_map(|t| t.split_once(':').map(|(st, _)| st))
            .collect();
        for storage in storages {
            match c.storage_content(node, storage, Some("vztmpl")).await {
                Ok(items) => found.extend(items.into_iter().map(|i| i.volid)),
                Err(e) => r.add(&format!("storage {storage} on {node}"), Status::Warn, explain(&e)),
            }
        }
    }
    r.templates = found.iter().cloned().collect();
    let missing: Vec<&String> = s.templates.iter().filter(|t| !found.contains(*t)).collect();
    if s.templates.is_empty() {
        r.add("templates", Status::Warn, "no templates configured (pve.templates)");
    } else if missing.is_empty() {
        r.add(
            "templates",
            Status::Pass,
            format!("{} configured, all present", s.templates.len()),
        );
    } else {
        r.add(
            "templates",
            Status::Fail,
            format!(
                "not found: {} (download with `pveam download <storage> <template>`)",
                missing.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
            ),
        );
    }
    r
}

pub async fn run(s: &PveSettings, json: bool) -> anyhow::Result<ExitCode> {
    let mut r = check(s).await;
    r.verdict = if r.failed() {
        "FAIL: this Proxmox is not ready for pvefleet".into()
    } else {
        "PASS: this Proxmox is ready for pvefleet".into()
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("Proxmox VE at {}", r.url);
        if let Some(v) = &r.version {
            println!("  version:   {v}");
        }
        if !r.nodes.is_empty() {
            println!("  nodes:     {}", r.nodes.join(", "));
        }
        if !r.templates.is_empty() {
            println!("  templates: {}", r.templates.join(", "));
        }
        println!();
        for c in &r.checks {
            let mark = match c.status {
                Status::Pass => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            println!("  [{mark}] {:<12} {}", c.name, c.detail);
        }
        println!();
        println!("{}", r.verdict);
    }
    Ok(if r.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
