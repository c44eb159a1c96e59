//! A notice: what an event tells a person, with what the templates need, its severity, the
//! owner it concerns, and for alerts the key that keeps a firing alert from being repeated.

use pvefleet_contracts::Message;
use pvefleet_contracts::messages::{
    BackupVerified, MessageParked, ResourceAlert, SagaCompensationFailed, SagaSuspended, SiteDeprovisioned,
    SiteProvisionFailed, SiteProvisioned,
};
use pvefleet_core::config::NotifierSettings;
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// How urgent a notice is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// For the record.
    Info,
    /// Someone should look.
    Warning,
    /// Someone must act.
    Critical,
}

impl Severity {
    /// Its name in routes, rows and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// An alert as Alertmanager takes it: labels that identify it, and whether it has ended.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertInfo {
    /// `alertname`, `vmid` or `node`, `kind`, `severity`.
    pub labels: Map<String, Value>,
    /// Resolved (cleared) rather than firing.
    pub resolved: bool,
}

/// One notice, before it is routed to channels.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// The event type it came from (`site.provisioned`), or `notify.test`.
    pub event_type: String,
    /// How urgent.
    pub severity: Severity,
    /// The site owner it concerns, when it concerns one.
    pub owner: Option<String>,
    /// What the templates see: the event's fields and what was looked up for it.
    pub vars: Map<String, Value>,
    /// For a raised alert: a key (`lxc/101 memory`) under which it is not repeated within
    /// `alert_resend_interval`.
    pub dedupe_key: Option<String>,
    /// For alerts: what Alertmanager is told.
    pub alert: Option<AlertInfo>,
}

/// What the notifier looks up about a site.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteInfo {
    /// Its owner.
    pub owner: String,
    /// Its subdomain.
    pub subdomain: String,
    /// Its container.
    pub vmid: Option<i32>,
    /// Its node.
    pub node: Option<String>,
}

/// Looks up a site by id.
pub async fn site(db: &dyn pvefleet_core::db::Sql, id: Uuid) -> Result<Option<SiteInfo>, tokio_postgres::Error> {
    Ok(db
        .opt("SELECT owner, subdomain, vmid, node FROM sites WHERE id = $1", &[&id])
        .await?
        .map(|r| SiteInfo {
            owner: r.get(0),
            subdomain: r.get(1),
            vmid: r.get(2),
            node: r.get(3),
        }))
}

fn with(mut vars: Map<String, Value>, more: Value) -> Map<String, Value> {
    if let Value::Object(m) = more {
        vars.extend(m);
    }
    vars
}

fn event_vars<M: serde::Serialize>(m: &M) -> Map<String, Value> {
    match serde_json::to_value(m) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

fn site_vars(s: &NotifierSettings, site: Option<&SiteInfo>, fqdn: Option<&str>) -> Value {
    match site {
        Some(site) => {
            let host = fqdn.map(str::to_string);
            json!({
                "owner": site.owner,
                "subdomain": site.subdomain,
                "site_url": host.as_ref().map(|h| format!("{}://{h}", s.site_scheme)),
                "site_vmid": site.vmid,
                "site_node": site.node,
            })
        }
        None => json!({}),
    }
}

/// The host a site is served at: the event's name, else `<subdomain>.<saga.domain>`.
pub fn host(fqdn: Option<&str>, site: Option<&SiteInfo>, domain: &str) -> Option<String> {
    fqdn.map(str::to_string)
        .or_else(|| site.map(|s| format!("{}.{domain}", s.subdomain)))
}

/// `site.provisioned`: the owner is told their site is ready, with its URL.
pub fn provisioned(s: &NotifierSettings, e: &SiteProvisioned, site: Option<&SiteInfo>, host: Option<&str>) -> Notice {
    Notice {
        event_type: SiteProvisioned::TYPE.into(),
        severity: Severity::Info,
        owner: site.map(|x| x.owner.clone()),
        vars: with(event_vars(e), site_vars(s, site, host)),
        dedupe_key: None,
        alert: None,
    }
}

/// `site.provision_failed`: the owner (and the operators) are told it failed, and why.
pub fn provision_failed(
    s: &NotifierSettings,
    e: &SiteProvisionFailed,
    site: Option<&SiteInfo>,
    host: Option<&str>,
) -> Notice {
    Notice {
        event_type: SiteProvisionFailed::TYPE.into(),
        severity: Severity::Warning,
        owner: site.map(|x| x.owner.clone()),
        vars: with(event_vars(e), site_vars(s, site, host)),
        dedupe_key: None,
        alert: None,
    }
}

/// `site.deprovisioned`.
pub fn deprovisioned(
    s: &NotifierSettings,
    e: &SiteDeprovisioned,
    site: Option<&SiteInfo>,
    host: Option<&str>,
) -> Notice {
    Notice {
        event_type: SiteDeprovisioned::TYPE.into(),
        severity: Severity::Info,
        owner: site.map(|x| x.owner.clone()),
        vars: with(event_vars(e), site_vars(s, site, host)),
        dedupe_key: None,
        alert: None,
    }
}

/// A saga stopped for an operator (`saga.suspended`, `saga.compensation_failed`).
pub fn saga_stopped(event_type: &str, vars: Map<String, Value>, site: Option<&SiteInfo>) -> Notice {
    let state = if event_type == SagaSuspended::TYPE {
        SagaSuspended::STATE
    } else {
        SagaCompensationFailed::STATE
    };
    let mut labels = Map::new();
    labels.insert("alertname".into(), json!("PvefleetSagaStopped"));
    labels.insert("state".into(), json!(state));
    labels.insert("saga".into(), vars.get("saga_id").cloned().unwrap_or(Value::Null));
    labels.insert("severity".into(), json!("critical"));
    Notice {
        event_type: event_type.into(),
        severity: Severity::Critical,
        owner: site.map(|x| x.owner.clone()),
        vars: with(vars, json!({ "state": state, "owner": site.map(|x| x.owner.clone()) })),
        dedupe_key: None,
        alert: Some(AlertInfo {
            labels,
            resolved: false,
        }),
    }
}

/// `message.parked`: the operators are told a message was given up on, where to look.
pub fn parked(e: &MessageParked) -> Notice {
    Notice {
        event_type: MessageParked::TYPE.into(),
        severity: Severity::Warning,
        owner: None,
        vars: event_vars(e),
        dedupe_key: None,
        alert: None,
    }
}

/// `resource.alert`: raised is a warning (critical for a restart loop), cleared is the alert
/// resolved. Labels name the vmid or node and the kind.
pub fn alert(e: &ResourceAlert) -> Notice {
    let raised = e.state == "raised";
    let severity = match (raised, e.kind.as_str()) {
        (false, _) => Severity::Info,
        (true, "restart_loop") => Severity::Critical,
        (true, _) if e.value >= 95.0 => Severity::Critical,
        (true, _) => Severity::Warning,
    };
    let mut labels = Map::new();
    labels.insert("alertname".into(), json!("PvefleetResourceAlert"));
    let (what, id) = e.subject.split_once('/').unwrap_or(("subject", e.subject.as_str()));
    let key = if what == "lxc" { "vmid" } else { what };
    labels.insert(key.into(), json!(id));
    if let Some(node) = &e.node {
        labels.insert("node".into(), json!(node));
    }
    labels.insert("kind".into(), json!(e.kind));
    labels.insert(
        "severity".into(),
        json!(if e.kind == "restart_loop" {
            "critical"
        } else {
            "warning"
        }),
    );
    Notice {
        event_type: ResourceAlert::TYPE.into(),
        severity,
        owner: None,
        vars: event_vars(e),
        // Only a raised alert is held back; its clearing always goes out.
        dedupe_key: raised.then(|| format!("{} {}", e.subject, e.kind)),
        alert: Some(AlertInfo {
            labels,
            resolved: !raised,
        }),
    }
}

/// `backup.verified`: a failed verification is a critical alert (the backup may not restore),
/// firing until a later verification of the site succeeds, which resolves it.
pub fn verified(e: &BackupVerified, site: Option<&SiteInfo>) -> Notice {
    let failed = e.outcome != "ok";
    let mut labels = Map::new();
    labels.insert("alertname".into(), json!("PvefleetBackupVerificationFailed"));
    labels.insert("site_id".into(), json!(e.site_id.to_string()));
    labels.insert("severity".into(), json!("critical"));
    let mut vars = event_vars(e);
    if let Some(site) = site {
        vars.insert("subdomain".into(), json!(site.subdomain));
    }
    Notice {
        event_type: BackupVerified::TYPE.into(),
        severity: if failed { Severity::Critical } else { Severity::Info },
        owner: None,
        vars,
        dedupe_key: failed.then(|| format!("backup-verify {}", e.site_id)),
        alert: Some(AlertInfo {
            labels,
            resolved: !failed,
        }),
    }
}

/// `pvefleet notify test`: a notice that goes where the routes send `notify.test`.
pub fn test(message: &str) -> Notice {
    Notice {
        event_type: "notify.test".into(),
        severity: Severity::Info,
        owner: None,
        vars: with(Map::new(), json!({ "message": message })),
        dedupe_key: None,
        alert: None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_names_its_container_or_node_and_only_a_raised_one_is_held_back() {
        let mut e = ResourceAlert::example();
        let n = alert(&e);
        assert_eq!(n.severity, Severity::Warning);
        let labels = n.alert.as_ref().map(|a| a.labels.clone()).unwrap_or_default();
        assert_eq!(labels["vmid"], "123");
        assert_eq!(labels["node"], "pve1");
        assert_eq!(labels["kind"], "memory");
        assert_eq!(n.dedupe_key.as_deref(), Some("lxc/123 memory"));
        e.state = "cleared".into();
        e.subject = "node/pve1".into();
        let n = alert(&e);
        assert_eq!(n.severity, Severity::Info);
        assert!(
            n.alert
                .as_ref()
                .is_some_and(|a| a.resolved && a.labels["node"] == "pve1")
        );
        assert_eq!(n.dedupe_key, None, "a clearing always goes out");
    }

    #[test]
    fn a_provisioned_site_carries_its_owner_and_url() {
        let s = NotifierSettings::default();
        let site = SiteInfo {
            owner: "alice".into(),
            subdomain: "blog".into(),
            vmid: Some(123),
            node: Some("pve1".into()),
        };
        let e = SiteProvisioned::example();
        let h = host(e.fqdn.as_deref(), Some(&site), "example.org");
        let n = provisioned(&s, &e, Some(&site), h.as_deref());
        assert_eq!(n.owner.as_deref(), Some("alice"));
        assert_eq!(n.vars["site_url"], "https://blog.example.org");
    }
}
