//! `prune-backups`: PVE's retention options, and which backups they keep.
//!
//! The selection follows pve-storage's `prune_mark_backup_group`: a guest's backups, newest
//! first, are walked once per option in the order last, hourly, daily, weekly, monthly,
//! yearly. Each option keeps the newest backup of each of its first N periods (an hour, a
//! day, an ISO week, a month, a year) that no earlier option already kept a backup of;
//! older backups of a period already kept are removed. Protected backups are neither removed
//! nor counted. With `keep-all=1`, or no option above 0, everything is kept. PVE reads the
//! periods (and names the archives) in the node's local time; this reads them in UTC, as
//! pvesim runs, so on a node in another zone a period boundary falls at its UTC hour.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Serialize};

use super::error::CodecError;
use super::{propstring, validate};

/// The retention options (`keep-last=3,keep-daily=7`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PruneBackups {
    /// Keep everything (conflicts with the others).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::client::lenient::opt_bool"
    )]
    pub keep_all: Option<bool>,
    /// The newest N backups.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "count")]
    pub keep_last: Option<u32>,
    /// The newest backup of each of the last N hours with one.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "count")]
    pub keep_hourly: Option<u32>,
    /// Of the last N days.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "count")]
    pub keep_daily: Option<u32>,
    /// Of the last N ISO weeks.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "count")]
    pub keep_weekly: Option<u32>,
    /// Of the last N months.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "count")]
    pub keep_monthly: Option<u32>,
    /// Of the last N years.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "count")]
    pub keep_yearly: Option<u32>,
}

/// A count PVE may send as a number or a string.
fn count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let n = crate::client::lenient::opt_u64(d)?;
    n.map(|n| u32::try_from(n).map_err(serde::de::Error::custom))
        .transpose()
}

/// What the selection does with one backup (the `mark` of `GET …/prunebackups`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mark {
    /// Kept by an option.
    Keep,
    /// Removed.
    Remove,
    /// Protected: never removed, never counted.
    Protected,
    /// Not named by vzdump's scheme, so never touched.
    Renamed,
}

impl Mark {
    /// `keep`, `remove`, `protected`, `renamed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Keep => "keep",
            Mark::Remove => "remove",
            Mark::Protected => "protected",
            Mark::Renamed => "renamed",
        }
    }
}

/// One backup of a group, as the selection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Creation time, seconds since the epoch.
    pub ctime: i64,
    /// Protected backups are kept and not counted.
    pub protected: bool,
}

const KEYS: [&str; 7] = [
    "keep-all",
    "keep-daily",
    "keep-hourly",
    "keep-last",
    "keep-monthly",
    "keep-weekly",
    "keep-yearly",
];

impl PruneBackups {
    /// Keeps the newest backup of each of the last `days` days that have one (the guardrails'
    /// daily backups with a week's retention is `daily(7)`).
    pub fn daily(days: u32) -> Self {
        Self {
            keep_daily: Some(days),
            ..Self::default()
        }
    }

    /// Parses the property string (`key` names the parameter in errors). `keep-all=1` with
    /// another option above 0 is refused, as PVE does.
    pub fn parse(key: &str, text: &str) -> Result<Self, CodecError> {
        let mut p = Self::default();
        for (opt, v) in propstring::parse(key, text, None)? {
            let count = |v: &str| validate::int_in(key, &opt, v, 0, u32::MAX).map(Some);
            match opt.as_str() {
                "keep-all" => p.keep_all = Some(validate::boolean(key, &opt, &v)?),
                "keep-last" => p.keep_last = count(&v)?,
                "keep-hourly" => p.keep_hourly = count(&v)?,
                "keep-daily" => p.keep_daily = count(&v)?,
                "keep-weekly" => p.keep_weekly = count(&v)?,
                "keep-monthly" => p.keep_monthly = count(&v)?,
                "keep-yearly" => p.keep_yearly = count(&v)?,
                other => {
                    return Err(CodecError::option(
                        key,
                        other,
                        format!("unknown option; known: {}", KEYS.join(", ")),
                    ));
                }
            }
        }
        if p.keep_all == Some(true) && p.counts().iter().any(|(_, n)| *n > 0) {
            return Err(CodecError::option(
                key,
                "keep-all",
                "keep-all cannot be set together with other options",
            ));
        }
        Ok(p)
    }

    /// The options above 0, in the order the selection applies them.
    fn counts(&self) -> Vec<(&'static str, u32)> {
        [
            ("keep-last", self.keep_last),
            ("keep-hourly", self.keep_hourly),
            ("keep-daily", self.keep_daily),
            ("keep-weekly", self.keep_weekly),
            ("keep-monthly", self.keep_monthly),
            ("keep-yearly", self.keep_yearly),
        ]
        .into_iter()
        .filter_map(|(k, n)| n.filter(|n| *n > 0).map(|n| (k, n)))
        .collect()
    }

    /// Whether everything is kept (`keep-all=1`, or no option above 0).
    pub fn keeps_all(&self) -> bool {
        self.keep_all == Some(true) || self.counts().is_empty()
    }

    /// The property string, options sorted by name as PVE writes them.
    pub fn write(&self) -> String {
        let mut items: Vec<(&str, String)> = Vec::new();
        if let Some(all) = self.keep_all {
            items.push(("keep-all", u8::from(all).to_string()));
        }
        for (k, n) in [
            ("keep-last", self.keep_last),
            ("keep-hourly", self.keep_hourly),
            ("keep-daily", self.keep_daily),
            ("keep-weekly", self.keep_weekly),
            ("keep-monthly", self.keep_monthly),
            ("keep-yearly", self.keep_yearly),
        ] {
            if let Some(n) = n {
                items.push((k, n.to_string()));
            }
        }
        // Numbers and booleans never hold a separator, so writing cannot fail.
        propstring::write("prune-backups", items, None).unwrap_or_default()
    }

    /// Marks each backup of one guest's group, in the order given.
    pub fn mark(&self, group: &[Candidate]) -> Vec<Mark> {
        let mut marks: Vec<Option<Mark>> = group.iter().map(|c| c.protected.then_some(Mark::Protected)).collect();
        if self.keeps_all() {
            return marks.into_iter().map(|m| m.unwrap_or(Mark::Keep)).collect();
        }
        // Newest first; ties keep their given order.
        let mut order: Vec<usize> = (0..group.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(group[i].ctime));
        for (option, count) in self.counts() {
            let period = |i: usize| period_of(option, group[i].ctime);
            let already: std::collections::HashSet<String> = order
                .iter()
                .filter(|&&i| marks[i] == Some(Mark::Keep))
                .map(|&i| period(i))
                .collect();
            let mut newly: std::collections::HashSet<String> = std::collections::HashSet::new();
            for &i in &order {
                let id = period(i);
                if marks[i].is_some() || already.contains(&id) {
                    continue;
                }
                if newly.contains(&id) {
                    marks[i] = Some(Mark::Remove);
                } else {
                    if newly.len() >= count as usize {
                        break;
                    }
                    newly.insert(id);
                    marks[i] = Some(Mark::Keep);
                }
            }
        }
        marks.into_iter().map(|m| m.unwrap_or(Mark::Remove)).collect()
    }
}

/// The period a backup falls in for an option: itself for keep-last, else its hour, day,
/// ISO week, month or year.
fn period_of(option: &str, ctime: i64) -> String {
    let t: DateTime<Utc> = DateTime::from_timestamp(ctime, 0).unwrap_or_default();
    match option {
        "keep-hourly" => format!("{}/{}/{}/{}", t.hour(), t.day(), t.month(), t.year()),
        "keep-daily" => format!("{}/{}/{}", t.day(), t.month(), t.year()),
        "keep-weekly" => {
            let w = t.iso_week();
            format!("{}/{}", w.week(), w.year())
        }
        "keep-monthly" => format!("{}/{}", t.month(), t.year()),
        "keep-yearly" => t.year().to_string(),
        _ => ctime.to_string(),
    }
}

/// vzdump's name for a container backup taken at `ctime`:
/// `vzdump-lxc-101-2026_12_07-15_17_01.tar.zst` (the timestamp in UTC).
pub fn archive_name(vmid: u32, ctime: i64, extension: &str) -> String {
    let t: DateTime<Utc> = DateTime::from_timestamp(ctime, 0).unwrap_or_default();
    format!("vzdump-lxc-{vmid}-{}.{extension}", t.format("%Y_%m_%d-%H_%M_%S"))
}

/// The vmid and ctime of a backup volume named by vzdump's scheme (`…/vzdump-lxc-101-…`),
/// or `None` for a renamed file.
pub fn parse_archive_name(volid: &str) -> Option<(u32, i64)> {
    let file = volid.rsplit('/').next()?;
    let rest = file.strip_prefix("vzdump-lxc-")?;
    let (vmid, rest) = rest.split_once('-')?;
    let vmid: u32 = vmid.parse().ok()?;
    let stamp = rest.get(..19)?;
    let t = chrono::NaiveDateTime::parse_from_str(stamp, "%Y_%m_%d-%H_%M_%S").ok()?;
    Some((vmid, t.and_utc().timestamp()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    /// 2026-11-01 02:00:00 UTC, a Sunday (ISO week 44).
    const START: i64 = 1_793_498_400;

    fn daily(days: i64) -> Vec<Candidate> {
        (0..days)
            .map(|d| Candidate {
                ctime: START + d * DAY,
                protected: false,
            })
            .collect()
    }

    fn kept(marks: &[Mark]) -> Vec<usize> {
        marks
            .iter()
            .enumerate()
            .filter(|(_, m)| **m != Mark::Remove)
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn the_property_string_reads_and_writes_like_pve() {
        let p = PruneBackups::parse("prune-backups", "keep-daily=7,keep-last=2").unwrap();
        assert_eq!(p.keep_daily, Some(7));
        assert_eq!(p.keep_last, Some(2));
        assert_eq!(p.write(), "keep-daily=7,keep-last=2");
        assert!(PruneBackups::parse("prune-backups", "keep-all=1,keep-daily=7").is_err());
        assert!(PruneBackups::parse("prune-backups", "keep-all=1,keep-daily=0").is_ok());
        let e = PruneBackups::parse("prune-backups", "keep-fortnightly=2").unwrap_err();
        assert!(e.to_string().contains("keep-fortnightly"), "{e}");
        assert!(PruneBackups::parse("prune-backups", "keep-daily=-1").is_err());
        assert!(PruneBackups::parse("prune-backups", "").unwrap().keeps_all());
    }

    #[test]
    fn keep_daily_keeps_the_last_n_days_and_the_newest_of_each() {
        let mut group = daily(30);
        // A second backup on the last day: only the newer one of that day is kept.
        group.push(Candidate {
            ctime: START + 29 * DAY + 3600,
            protected: false,
        });
        let marks = PruneBackups::daily(7).mark(&group);
        assert_eq!(kept(&marks), vec![23, 24, 25, 26, 27, 28, 30]);
        assert_eq!(marks[29], Mark::Remove, "the older backup of the newest day");
    }

    #[test]
    fn options_combine_and_each_counts_only_periods_not_already_kept() {
        let p = PruneBackups::parse("prune-backups", "keep-last=2,keep-daily=3,keep-weekly=2,keep-monthly=2").unwrap();
        let marks = p.mark(&daily(30));
        // Days 0..29 are 2026-11-01 (week 44) to 11-30 (week 49). keep-last: days 29, 28.
        // keep-daily: three more days, 27, 26, 25. keep-weekly: weeks 49 and 48 are already
        // kept, so the newest of weeks 47 (day 21) and 46 (day 14); the rest of those weeks
        // are removed. keep-monthly: November is already kept, and every backup is of
        // November, so it adds nothing. Everything else is removed.
        assert_eq!(kept(&marks), vec![14, 21, 25, 26, 27, 28, 29]);
    }

    #[test]
    fn protected_backups_are_kept_and_not_counted() {
        let mut group = daily(10);
        group[9].protected = true;
        let marks = PruneBackups::daily(2).mark(&group);
        assert_eq!(marks[9], Mark::Protected);
        assert_eq!(kept(&marks), vec![7, 8, 9]);
    }

    #[test]
    fn keep_all_or_nothing_set_keeps_everything() {
        let group = daily(5);
        let all = PruneBackups::parse("p", "keep-all=1").unwrap().mark(&group);
        assert!(all.iter().all(|m| *m == Mark::Keep));
        let none = PruneBackups::default().mark(&group);
        assert!(none.iter().all(|m| *m == Mark::Keep));
    }

    #[test]
    fn archive_names_carry_the_vmid_and_the_utc_time() {
        let name = archive_name(101, START, "tar.zst");
        assert_eq!(name, "vzdump-lxc-101-2026_11_01-02_00_00.tar.zst");
        assert_eq!(parse_archive_name(&format!("local:backup/{name}")), Some((101, START)));
        assert_eq!(parse_archive_name("local:backup/my-copy.tar.zst"), None);
    }
}
