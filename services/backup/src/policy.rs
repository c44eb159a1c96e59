//! Backup policies: what a site's backups are (schedule, storage, mode, compression,
//! retention in PVE's own `prune-backups` terms), which policy each site follows (its own,
//! else its plan's, else `backup.default_policy`), and the checks a policy passes before it
//! is stored.

use std::collections::BTreeMap;

use pvefleet_core::config::SagaSettings;
use pvefleet_core::db::Sql;
use pvefleet_proxmox::codec::prune::PruneBackups;
use serde::{Deserialize, Serialize};

/// The id prefix of the PVE backup jobs the fleet manages; jobs without it are never touched.
pub const JOB_PREFIX: &str = "pvefleet-";

/// One policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Its name (`daily`).
    pub name: String,
    /// A PVE calendar event (`02:00`, `daily`, `sat 04:00`).
    pub schedule: String,
    /// The PVE storage its backups go to.
    pub storage: String,
    /// `snapshot`, `suspend` or `stop`.
    pub mode: String,
    /// `zstd`, `gzip`, `lzo` or `0`.
    pub compress: String,
    /// Retention, as PVE's `prune-backups` (`keep-daily=7`).
    pub retention: String,
    /// A disabled policy has no PVE job: its sites are not backed up on schedule.
    pub enabled: bool,
}

/// Modes vzdump knows.
pub const MODES: &[&str] = &["snapshot", "suspend", "stop"];
/// Compressions vzdump knows (`0`: none).
pub const COMPRESSIONS: &[&str] = &["zstd", "gzip", "lzo", "0"];

/// Why a policy cannot be stored: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct Invalid {
    /// The field.
    pub field: &'static str,
    /// Why.
    pub why: String,
}

fn invalid(field: &'static str, why: impl Into<String>) -> Invalid {
    Invalid { field, why: why.into() }
}

impl Policy {
    /// The PVE job id of this policy.
    pub fn job_id(&self) -> String {
        format!("{JOB_PREFIX}{}", self.name)
    }

    /// The retention, parsed.
    pub fn keep(&self) -> PruneBackups {
        PruneBackups::parse("retention", &self.retention).unwrap_or_default()
    }

    /// Checks every field the way PVE would, naming the first that is wrong.
    pub fn check(&self) -> Result<(), Invalid> {
        let name_ok = self.name.len() <= 31
            && self.name.starts_with(|c: char| c.is_ascii_lowercase())
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !name_ok {
            return Err(invalid(
                "name",
                format!(
                    "'{}' is not a name: a lowercase letter, then up to 30 of a-z, 0-9 and '-'",
                    self.name
                ),
            ));
        }
        if !schedule_ok(&self.schedule) {
            return Err(invalid(
                "schedule",
                format!(
                    "'{}' is not a calendar event: use daily, hourly, weekly, monthly, HH:MM, *:MM, or days then a time (mon..fri 02:30)",
                    self.schedule
                ),
            ));
        }
        let storage_ok = !self.storage.is_empty()
            && self.storage.len() <= 64
            && self.storage.starts_with(|c: char| c.is_ascii_alphabetic())
            && self
                .storage
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !storage_ok {
            return Err(invalid(
                "storage",
                format!("'{}' is not a PVE storage id", self.storage),
            ));
        }
        if !MODES.contains(&self.mode.as_str()) {
            return Err(invalid(
                "mode",
                format!("'{}' is not one of {}", self.mode, MODES.join(", ")),
            ));
        }
        if !COMPRESSIONS.contains(&self.compress.as_str()) {
            return Err(invalid(
                "compress",
                format!("'{}' is not one of {}", self.compress, COMPRESSIONS.join(", ")),
            ));
        }
        let keep =
            PruneBackups::parse("retention", &self.retention).map_err(|e| invalid("retention", e.to_string()))?;
        if keep.keeps_all() {
            return Err(invalid(
                "retention",
                "keeps every backup forever: give at least one keep-* above 0 (keep-daily=7)",
            ));
        }
        Ok(())
    }
}

/// Whether a schedule is a calendar event PVE takes (the forms the fleet writes and tests:
/// `daily`, `hourly`, `weekly`, `monthly`, `HH:MM`, `*:MM`, days then a time).
pub fn schedule_ok(s: &str) -> bool {
    let s = s.trim().to_ascii_lowercase();
    if matches!(
        s.as_str(),
        "daily" | "hourly" | "weekly" | "monthly" | "yearly" | "midnight"
    ) {
        return true;
    }
    let (days, time) = match s.rsplit_once(' ') {
        Some((d, t)) => (Some(d), t),
        None => (None, s.as_str()),
    };
    let days_ok = days.is_none_or(|d| {
        d.split(',').all(|part| {
            let day = |x: &str| ["mon", "tue", "wed", "thu", "fri", "sat", "sun"].contains(&x);
            match part.split_once("..") {
                Some((a, b)) => day(a) && day(b),
                None => day(part),
            }
        })
    });
    let time_ok = time.split_once(':').is_some_and(|(h, m)| {
        (h == "*" || h.parse::<u32>().is_ok_and(|h| h < 24)) && m.len() == 2 && m.parse::<u32>().is_ok_and(|m| m < 60)
    });
    days_ok && time_ok
}

const COLUMNS: &str = "name, schedule, storage, mode, compress, retention, enabled";

fn from_row(r: &tokio_postgres::Row) -> Policy {
    Policy {
        name: r.get(0),
        schedule: r.get(1),
        storage: r.get(2),
        mode: r.get(3),
        compress: r.get(4),
        retention: r.get(5),
        enabled: r.get(6),
    }
}

/// Every policy, by name.
pub async fn all(db: &dyn Sql) -> Result<BTreeMap<String, Policy>, tokio_postgres::Error> {
    let rows = db
        .rows(&format!("SELECT {COLUMNS} FROM backup_policies ORDER BY name"), &[])
        .await?;
    Ok(rows.iter().map(from_row).map(|p| (p.name.clone(), p)).collect())
}

/// One policy.
pub async fn get(db: &dyn Sql, name: &str) -> Result<Option<Policy>, tokio_postgres::Error> {
    let row = db
        .opt(
            &format!("SELECT {COLUMNS} FROM backup_policies WHERE name = $1"),
            &[&name],
        )
        .await?;
    Ok(row.as_ref().map(from_row))
}

/// A site as the policies see it.
#[derive(Debug, Clone)]
pub struct CoveredSite {
    /// The site.
    pub site_id: uuid::Uuid,
    /// Its container.
    pub vmid: u32,
    /// Its node, as last recorded.
    pub node: Option<String>,
    /// The policy it follows.
    pub policy: String,
}

/// The policy a site follows: its own, else its plan's, else the default.
pub fn resolve(own: Option<&str>, plan: Option<&str>, saga: &SagaSettings, default: &str) -> String {
    own.map(str::to_string)
        .or_else(|| {
            plan.and_then(|p| saga.plans.get(p))
                .and_then(|p| p.backup_policy.clone())
        })
        .unwrap_or_else(|| default.to_string())
}

/// Every active site with a container, and its policy.
pub async fn covered_sites(
    db: &dyn Sql,
    saga: &SagaSettings,
    default: &str,
) -> Result<Vec<CoveredSite>, tokio_postgres::Error> {
    let rows = db
        .rows(
            "SELECT id, vmid, node, backup_policy, spec->>'plan' FROM sites
             WHERE state = 'active' AND vmid IS NOT NULL ORDER BY vmid",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let own: Option<String> = r.get(3);
            let plan: Option<String> = r.get(4);
            CoveredSite {
                site_id: r.get(0),
                vmid: r.get::<_, i32>(1) as u32,
                node: r.get(2),
                policy: resolve(own.as_deref(), plan.as_deref(), saga, default),
            }
        })
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            name: "daily".into(),
            schedule: "02:00".into(),
            storage: "local".into(),
            mode: "snapshot".into(),
            compress: "zstd".into(),
            retention: "keep-daily=7".into(),
            enabled: true,
        }
    }

    #[test]
    fn a_policy_is_checked_field_by_field() {
        assert_eq!(policy().check(), Ok(()));
        let bad = |f: fn(&mut Policy)| {
            let mut p = policy();
            f(&mut p);
            p.check().unwrap_err().field
        };
        assert_eq!(bad(|p| p.name = "Daily".into()), "name");
        assert_eq!(bad(|p| p.schedule = "every day".into()), "schedule");
        assert_eq!(bad(|p| p.schedule = "25:00".into()), "schedule");
        assert_eq!(bad(|p| p.storage = "local;rm".into()), "storage");
        assert_eq!(bad(|p| p.mode = "hot".into()), "mode");
        assert_eq!(bad(|p| p.compress = "xz".into()), "compress");
        assert_eq!(bad(|p| p.retention = "keep-daily=x".into()), "retention");
        assert_eq!(bad(|p| p.retention = "keep-all=1".into()), "retention");
        for ok in ["daily", "*:15", "mon..fri 01:30", "sat,sun 04:00", "weekly"] {
            assert!(schedule_ok(ok), "{ok}");
        }
    }

    #[test]
    fn a_site_follows_its_own_policy_then_its_plans_then_the_default() {
        let mut saga = SagaSettings::default();
        saga.plans.get_mut("large").unwrap().backup_policy = Some("hourly".into());
        assert_eq!(resolve(Some("weekly"), Some("large"), &saga, "daily"), "weekly");
        assert_eq!(resolve(None, Some("large"), &saga, "daily"), "hourly");
        assert_eq!(resolve(None, Some("small"), &saga, "daily"), "daily");
        assert_eq!(resolve(None, None, &saga, "daily"), "daily");
    }
}
