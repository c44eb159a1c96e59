//! The site policy: what a `site.provision` must be for the fleet to take it. Intake checks it
//! before it answers 202 and the saga checks it again when the command arrives, so a request
//! published straight to `pvefleet.commands` meets the same rules; the saga's check is the one
//! that holds (intake's is there to answer with a 422 at once).
//!
//! `SitePolicy::check` needs nothing but the request and the settings. The others read state:
//! the owner's live sites (`over_quota`), the subdomain (`subdomain_taken`) and the node, when
//! one is asked for (`node_unusable`). Each answers `Some(Invalid)` to refuse.

use pvefleet_contracts::messages::SiteProvision;
use pvefleet_core::config::SagaSettings;
use pvefleet_core::db::Sql;
use pvefleet_proxmox::client::{PveClient, PveError};
use uuid::Uuid;

use crate::{Invalid, names};

/// The site states that hold a subdomain and count towards an owner's quota.
pub const LIVE: &str = "state NOT IN ('failed', 'rejected', 'deleted')";

/// Every state a site can be in.
pub const STATES: &[&str] = &[
    "requested",
    "provisioning",
    "active",
    "failed",
    "rejected",
    "deprovisioning",
    "deleted",
];

/// The longest owner name: owners name tokens, quotas and the site's admin e-mail.
pub const OWNER_MAX: usize = 64;

/// The sizes a valid request resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Cores.
    pub cores: u32,
    /// Memory, MiB.
    pub memory_mb: u32,
    /// Root disk, GiB.
    pub disk_gb: u32,
}

/// The rules, with what they are checked against.
#[derive(Debug, Clone, Copy)]
pub struct SitePolicy<'a> {
    /// Plans and the quota.
    pub saga: &'a SagaSettings,
    /// The templates a site may use (`pve.templates`).
    pub templates: &'a [String],
    /// The installer's apps besides `wordpress` and `none` (`installer.apps`).
    pub apps: &'a [String],
}

impl SitePolicy<'_> {
    /// Checks what the request says on its own: the subdomain is a DNS label, the owner a
    /// name, the node (if any) a PVE node name, the plan known or the sizes within the largest
    /// plan, the template allowed and the app known. Answers the sizes it resolves to.
    pub fn check(&self, req: &SiteProvision) -> Result<Sizes, Invalid> {
        label(&req.subdomain)?;
        owner(&req.owner)?;
        if let Some(node) = &req.node {
            names::node(node)?;
        }
        let sizes = self.sizes(req)?;
        if !self.templates.iter().any(|t| t == &req.template) {
            return Err(Invalid::new(
                "template",
                format!(
                    "template '{}' is not allowed (pve.templates)",
                    names::shown(&req.template)
                ),
            ));
        }
        let app = req.app.as_str();
        if !matches!(app, "wordpress" | "none") && !self.apps.iter().any(|a| a == app) {
            return Err(Invalid::new(
                "app",
                format!(
                    "unknown app '{}'; known: wordpress, none{}",
                    names::shown(app),
                    self.apps.iter().map(|a| format!(", {a}")).collect::<String>()
                ),
            ));
        }
        Ok(sizes)
    }

    fn sizes(&self, req: &SiteProvision) -> Result<Sizes, Invalid> {
        let plans = &self.saga.plans;
        let plan = match &req.plan {
            Some(name) => Some(plans.get(name).ok_or_else(|| {
                Invalid::new(
                    "plan",
                    format!(
                        "unknown plan '{}'; known: {}",
                        names::shown(name),
                        plans.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?),
            None => None,
        };
        let cores = req.cores.or(plan.map(|p| p.cores));
        let memory = req.memory_mb.or(plan.map(|p| p.memory_mb));
        let disk = req.disk_gb.or(plan.map(|p| p.disk_gb));
        let (Some(cores), Some(memory_mb), Some(disk_gb)) = (cores, memory, disk) else {
            return Err(Invalid::new("plan", "give a plan, or cores, memory_mb and disk_gb"));
        };
        let biggest = plans.values().fold((1, 512, 8), |m, p| {
            (m.0.max(p.cores), m.1.max(p.memory_mb), m.2.max(p.disk_gb))
        });
        for (field, value, max) in [
            ("cores", cores, biggest.0),
            ("memory_mb", memory_mb, biggest.1),
            ("disk_gb", disk_gb, biggest.2),
        ] {
            if value == 0 || value > max {
                return Err(Invalid::new(
                    field,
                    format!("{value} is outside 1..={max}, the largest plan"),
                ));
            }
        }
        Ok(Sizes {
            cores,
            memory_mb,
            disk_gb,
        })
    }
}

/// Sites are unprivileged containers; asking for a privileged one is refused.
pub fn unprivileged(requested: Option<bool>) -> Result<(), Invalid> {
    if requested == Some(false) {
        return Err(Invalid::new(
            "unprivileged",
            "Only unprivileged containers are provisioned.",
        ));
    }
    Ok(())
}

/// A subdomain is one RFC 1123 label: lowercase letters, digits and inner hyphens, 1 to 63.
pub fn label(label: &str) -> Result<(), Invalid> {
    let ok = !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            "subdomain",
            format!(
                "'{}' is not an RFC 1123 label (lowercase letters, digits and inner hyphens, 1 to 63)",
                names::shown(label)
            ),
        ))
    }
}

/// An owner is 1 to 64 letters, digits, `.`, `_` or `-` (it becomes the local part of the
/// site's admin e-mail, and a quota key).
pub fn owner(owner: &str) -> Result<(), Invalid> {
    let ok = !owner.is_empty()
        && owner.len() <= OWNER_MAX
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            "owner",
            format!(
                "'{}' is not an owner name (1 to {OWNER_MAX} letters, digits, '.', '_' or '-')",
                names::shown(owner)
            ),
        ))
    }
}

/// The quota that means none (`saga.max_sites_per_owner = 4294967295`).
pub const UNLIMITED: u32 = u32::MAX;

/// Whether `max` limits anything (see `UNLIMITED`).
pub fn limited(max: u32) -> bool {
    max != UNLIMITED
}

/// Refuses a site when its owner already has `max` live sites besides `site`. The count stops
/// at `max`, so an owner with many sites costs no more than the quota; `UNLIMITED` counts
/// nothing.
pub async fn over_quota(
    db: &dyn Sql,
    owner: &str,
    site: Uuid,
    max: u32,
) -> Result<Option<Invalid>, tokio_postgres::Error> {
    if !limited(max) {
        return Ok(None);
    }
    let limit = i64::from(max);
    let live: i64 = db
        .one(
            &format!(
                "SELECT count(*) FROM (SELECT 1 FROM sites WHERE owner = $1 AND id <> $2 AND {LIVE} LIMIT $3) AS l"
            ),
            &[&owner, &site, &limit],
        )
        .await?
        .get(0);
    Ok((live >= limit).then(|| Invalid::new("owner", format!("Owner '{owner}' has {max} live sites, the limit."))))
}

/// Refuses a site whose subdomain a live site other than `site` holds.
pub async fn subdomain_taken(
    db: &dyn Sql,
    subdomain: &str,
    site: Uuid,
) -> Result<Option<Invalid>, tokio_postgres::Error> {
    let taken = db
        .opt(
            &format!("SELECT 1 FROM sites WHERE subdomain = $1 AND id <> $2 AND {LIVE}"),
            &[&subdomain, &site],
        )
        .await?;
    Ok(taken.map(|_| Invalid::new("subdomain", format!("Subdomain '{subdomain}' is in use."))))
}

/// Refuses a node PVE does not know, or knows offline. An unreachable PVE is an error, not
/// a refusal: the caller retries (the saga) or answers 503 (intake).
pub async fn node_unusable(pve: &PveClient, node: &str) -> Result<Option<Invalid>, PveError> {
    if let Err(invalid) = names::node(node) {
        return Ok(Some(invalid));
    }
    let nodes = pve.nodes().await?;
    Ok(match nodes.iter().find(|n| n.node == node) {
        None => Some(Invalid::new(
            "node",
            format!(
                "PVE has no node '{node}'; nodes: {}",
                nodes.iter().map(|n| n.node.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )),
        Some(n) if n.status != "online" => Some(Invalid::new(
            "node",
            format!(
                "node '{node}' is {}",
                if n.status.is_empty() { "not online" } else { &n.status }
            ),
        )),
        Some(_) => None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use pvefleet_contracts::Message;
    use pvefleet_contracts::messages::App;

    fn req() -> SiteProvision {
        let mut r = SiteProvision::example();
        r.subdomain = "shop".into();
        r.owner = "alice".into();
        r.plan = Some("small".into());
        r.template = "local:vztmpl/debian-12.tar.zst".into();
        r.app = App::wordpress();
        r.node = None;
        r
    }

    fn field(r: &SiteProvision) -> Option<String> {
        let saga = SagaSettings::default();
        let templates = vec!["local:vztmpl/debian-12.tar.zst".to_string()];
        let policy = SitePolicy {
            saga: &saga,
            templates: &templates,
            apps: &[],
        };
        policy.check(r).err().map(|e| e.field)
    }

    #[test]
    fn each_rule_names_its_field() {
        assert_eq!(field(&req()), None);
        type Change = Box<dyn Fn(&mut SiteProvision)>;
        let cases: Vec<(&str, Change)> = vec![
            ("subdomain", Box::new(|r| r.subdomain = "Shop".into())),
            ("owner", Box::new(|r| r.owner = "x".repeat(300))),
            ("owner", Box::new(|r| r.owner = "a b".into())),
            ("node", Box::new(|r| r.node = Some("../../etc/passwd".into()))),
            ("node", Box::new(|r| r.node = Some("x,rootfs=local:100".into()))),
            ("node", Box::new(|r| r.node = Some("--help".into()))),
            ("plan", Box::new(|r| r.plan = Some("huge".into()))),
            ("cores", Box::new(|r| r.cores = Some(1000))),
            (
                "template",
                Box::new(|r| r.template = "local:vztmpl/other.tar.zst".into()),
            ),
            ("app", Box::new(|r| r.app = App("joomla".into()))),
        ];
        for (want, change) in cases {
            let mut r = req();
            change(&mut r);
            assert_eq!(field(&r).as_deref(), Some(want), "{r:?}");
        }
        assert_eq!(unprivileged(Some(false)).unwrap_err().field, "unprivileged");
        assert!(unprivileged(None).is_ok());
    }
}
