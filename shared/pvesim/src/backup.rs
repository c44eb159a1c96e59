//! Backups: `vzdump` tasks that write backup volumes into a storage's content, the content
//! itself (list, read, notes and protection, delete), `prune-backups` with PVE's selection
//! (`pvefleet_proxmox::codec::prune`), the config inside an archive, cluster backup jobs
//! under `/cluster/backup` that run on the simulator's clock, and the faults of each: a full
//! storage, a failing vzdump (`/_sim/task-error` kind `vzdump`), a corrupt archive.
//!
//! Storages: `local` (a directory on each node: a node sees only its own backups) and
//! `backup` (shared, like an NFS or Proxmox Backup Server store: every node sees it). A
//! restore is `POST /nodes/{node}/lxc` with `restore=1` (`lxc/create.rs`).

use std::collections::BTreeMap;

use pvefleet_proxmox::codec::prune::{self, Candidate, Mark, PruneBackups};
use serde_json::{Map, Value, json};

use crate::state::SimState;
use crate::tasks::Effect;
use crate::{ApiError, param as get};

/// Storages that hold backups, and whether each is shared by every node.
pub(crate) const BACKUP_STORAGES: &[(&str, bool)] = &[("local", false), ("backup", true)];

/// One backup volume.
#[derive(Debug, Clone)]
pub struct BackupVolume {
    /// `local:backup/vzdump-lxc-101-2026_12_07-15_17_01.tar.zst`.
    pub volid: String,
    /// The node whose storage holds it (for a shared storage, the node that wrote it).
    pub node: String,
    /// The storage.
    pub storage: String,
    /// The guest.
    pub vmid: u32,
    /// Creation time, seconds since the epoch (simulated clock).
    pub ctime: i64,
    /// Bytes.
    pub size: u64,
    /// Notes (from `notes-template`, or set later).
    pub notes: String,
    /// Protected from pruning and removal.
    pub protected: bool,
    /// The container config inside the archive (main section, no lock, no snapshots).
    pub config: String,
    /// Whether the container's app was installed when it was backed up.
    pub installed: bool,
    /// Set by `/_sim/backups/corrupt`: reading or restoring it fails.
    pub corrupt: bool,
}

/// What a vzdump run is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dump {
    /// The node it runs on.
    pub node: String,
    /// The guests, on that node.
    pub vmids: Vec<u32>,
    /// Target storage.
    pub storage: String,
    /// Retention, when pruning after the backup.
    pub prune: Option<PruneBackups>,
    /// The notes template.
    pub notes_template: Option<String>,
    /// Mark the new backups protected.
    pub protected: bool,
    /// Compression (`zstd`, `gzip`, `lzo`, `0`).
    pub compress: String,
}

fn storage_exists(storage: &str) -> Result<bool, ApiError> {
    BACKUP_STORAGES
        .iter()
        .find(|(s, _)| *s == storage)
        .map(|(_, shared)| *shared)
        .ok_or_else(|| ApiError::new(500, format!("storage '{storage}' does not exist")))
}

fn extension(compress: &str) -> &'static str {
    match compress {
        "gzip" | "1" => "tar.gz",
        "lzo" => "tar.lzo",
        "0" => "tar",
        _ => "tar.zst",
    }
}

/// `pve-vmid-list`: `101,102` (also `;` or spaces, as PVE splits them).
fn vmid_list(text: &str) -> Vec<u32> {
    text.split([',', ';', ' ', '\0'])
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

impl SimState {
    /// The simulated time now, seconds since the epoch.
    pub(crate) fn now_epoch(&self) -> i64 {
        self.epoch(std::time::Instant::now()) as i64
    }

    fn backup_visible(&self, b: &BackupVolume, node: &str, storage: &str) -> bool {
        let shared = storage_exists(storage).unwrap_or(false);
        b.storage == storage && (shared || b.node == node)
    }

    /// `POST /nodes/{node}/vzdump`.
    pub(crate) fn vzdump(&mut self, node: &str, params: &[(String, String)]) -> Result<Value, ApiError> {
        self.reachable(node)?;
        let storage = get(params, "storage").unwrap_or("local").to_string();
        storage_exists(&storage)?;
        self.require(&format!("/storage/{storage}"), "Datastore.AllocateSpace")?;
        let all = get(params, "all") == Some("1");
        let excluded = get(params, "exclude").map(vmid_list).unwrap_or_default();
        let asked = match get(params, "vmid") {
            Some(list) => vmid_list(list),
            None if all => self.containers.keys().copied().collect(),
            None => return Err(ApiError::new(500, "No guest selected: set 'vmid', 'pool' or 'all'")),
        };
        for vmid in &asked {
            if !self.containers.contains_key(vmid) && !all {
                return Err(ApiError::new(500, format!("Guest {vmid} does not exist")));
            }
            self.require(&format!("/vms/{vmid}"), "VM.Backup")?;
        }
        let mut log = Vec::new();
        let mut vmids = Vec::new();
        for vmid in asked.into_iter().filter(|v| !excluded.contains(v)) {
            match self.containers.get(&vmid) {
                Some(ct) if ct.node == node => vmids.push(vmid),
                Some(ct) => log.push(format!("skip external VMs: {vmid} (on node '{}')", ct.node)),
                None => {}
            }
        }
        let prune = match get(params, "prune-backups") {
            Some(text) => {
                Some(PruneBackups::parse("prune-backups", text).map_err(|e| ApiError::new(400, e.to_string()))?)
            }
            None => None,
        };
        // `remove` (default 1) prunes with the call's retention, else the storage's.
        let remove = get(params, "remove") != Some("0");
        let dump = Dump {
            node: node.to_string(),
            vmids: vmids.clone(),
            storage: storage.clone(),
            prune: remove.then(|| prune.unwrap_or_else(|| self.storage_prune.clone())),
            notes_template: get(params, "notes-template").map(str::to_string),
            protected: get(params, "protected") == Some("1"),
            compress: get(params, "compress").unwrap_or("zstd").to_string(),
        };
        let mut failure = None;
        if self.full_storages.contains(&storage) {
            failure = Some(format!(
                "job errors: vzdump: unable to write to storage '{storage}': No space left on device"
            ));
        }
        for vmid in &vmids {
            if failure.is_none()
                && let Some(lock) = self.containers.get(vmid).and_then(|c| c.config.main().get("lock"))
            {
                failure = Some(format!("job errors: CT {vmid} is locked ({lock})"));
            }
        }
        if failure.is_none() {
            for vmid in &vmids {
                if let Some(ct) = self.containers.get_mut(vmid) {
                    ct.config.main_mut().set("lock", "backup");
                }
            }
        }
        let id = if vmids.len() == 1 {
            vmids[0].to_string()
        } else {
            String::new()
        };
        let at = self.now_epoch();
        let upid = self.start_task_failing(
            node,
            "vzdump",
            &id,
            Some(Effect::Backup(dump, at)),
            Some(Effect::UnlockAll(vmids, "backup".into())),
            failure,
        );
        if let Some(t) = self.tasks.get_mut(&upid) {
            let end = t.log.pop();
            t.log.extend(log);
            t.log.extend(end);
        }
        Ok(json!(upid))
    }

    /// Writes the backups of a finished vzdump run, then prunes each guest's group when asked.
    pub(crate) fn finish_dump(&mut self, dump: &Dump, ctime: i64) {
        for &vmid in &dump.vmids {
            let Some(ct) = self.containers.get_mut(&vmid) else {
                continue;
            };
            if ct.config.main().get("lock") == Some("backup") {
                ct.config.main_mut().remove("lock");
            }
            // The archive holds the current config: no lock, no snapshots, no pending changes.
            let mut archive = ct.config.clone();
            archive.main_mut().remove("lock");
            archive.main_mut().remove("parent");
            archive.take_pending();
            let names: Vec<String> = archive.snapshot_names().into_iter().map(str::to_string).collect();
            for n in names {
                archive.remove_snapshot(&n);
            }
            // vzdump names archives by the second; a guest's runs never share one (each
            // takes a while, under the node's vzdump lock), so a later one is a second later.
            let mut ctime = ctime;
            let volid_at = |t: i64| {
                format!(
                    "{}:backup/{}",
                    dump.storage,
                    prune::archive_name(vmid, t, extension(&dump.compress))
                )
            };
            while self.backups.iter().any(|b| b.volid == volid_at(ctime)) {
                ctime += 1;
            }
            let name = prune::archive_name(vmid, ctime, extension(&dump.compress));
            let guestname = ct.config.main().get("hostname").unwrap_or_default().to_string();
            let notes = dump
                .notes_template
                .as_deref()
                .map(|t| {
                    t.replace("{{guestname}}", &guestname)
                        .replace("{{vmid}}", &vmid.to_string())
                        .replace("{{node}}", &dump.node)
                        .replace("{{cluster}}", "pvesim")
                })
                .unwrap_or_default();
            let size = (ct.maxdisk() / 8).max(64 << 20) + u64::from(vmid);
            let volume = BackupVolume {
                volid: format!("{}:backup/{name}", dump.storage),
                node: dump.node.clone(),
                storage: dump.storage.clone(),
                vmid,
                ctime,
                size,
                notes,
                protected: dump.protected,
                config: archive.write(),
                installed: self.installed.contains(&vmid),
                corrupt: false,
            };
            self.backups.push(volume);
            if let Some(p) = &dump.prune {
                self.prune_group(&dump.node, &dump.storage, vmid, p, true);
            }
        }
    }

    /// Marks a guest's backups on a storage; removes those marked `remove` when `apply`.
    fn prune_group(&mut self, node: &str, storage: &str, vmid: u32, p: &PruneBackups, apply: bool) -> Vec<Value> {
        let all: Vec<usize> = (0..self.backups.len())
            .filter(|&i| self.backups[i].vmid == vmid && self.backup_visible(&self.backups[i], node, storage))
            .collect();
        // Archives not named by vzdump's scheme are `renamed`: never counted, never removed.
        let (group, renamed): (Vec<usize>, Vec<usize>) = all
            .into_iter()
            .partition(|&i| prune::parse_archive_name(&self.backups[i].volid).is_some());
        let candidates: Vec<Candidate> = group
            .iter()
            .map(|&i| Candidate {
                ctime: self.backups[i].ctime,
                protected: self.backups[i].protected,
            })
            .collect();
        let marks = p.mark(&candidates);
        let mut rows = Vec::new();
        let mut doomed = Vec::new();
        let marked = group
            .iter()
            .zip(marks)
            .chain(renamed.iter().map(|i| (i, Mark::Renamed)));
        for (&i, mark) in marked {
            let b = &self.backups[i];
            rows.push(
                json!({ "volid": b.volid, "ctime": b.ctime, "mark": mark.as_str(), "type": "lxc", "vmid": b.vmid }),
            );
            if mark == Mark::Remove {
                doomed.push(b.volid.clone());
            }
        }
        if apply {
            self.backups.retain(|b| !doomed.contains(&b.volid));
        }
        rows
    }

    /// `GET …/storage/{storage}/content` rows of backups.
    pub(crate) fn backup_content(&self, node: &str, storage: &str, vmid: Option<&str>) -> Vec<Value> {
        let mut rows: Vec<&BackupVolume> = self
            .backups
            .iter()
            .filter(|b| self.backup_visible(b, node, storage))
            .filter(|b| vmid.is_none_or(|v| v == b.vmid.to_string()))
            .collect();
        rows.sort_by(|a, b| a.volid.cmp(&b.volid));
        rows.into_iter()
            .map(|b| {
                let format = b.volid.rsplit_once(".tar").map_or("tar".to_string(), |(_, ext)| format!("tar{ext}"));
                let mut v = json!({ "volid": b.volid, "content": "backup", "format": format, "size": b.size, "ctime": b.ctime, "vmid": b.vmid, "subtype": "lxc" });
                if !b.notes.is_empty() {
                    v["notes"] = json!(b.notes.lines().next().unwrap_or_default());
                }
                if b.protected {
                    v["protected"] = json!(1);
                }
                v
            })
            .collect()
    }

    fn volume(&self, node: &str, storage: &str, volume: &str) -> Result<usize, ApiError> {
        // The volume may be given whole (`local:backup/…`) or relative to the storage.
        let volid = if volume.contains(':') {
            volume.to_string()
        } else {
            format!("{storage}:{volume}")
        };
        self.backups
            .iter()
            .position(|b| b.volid == volid && self.backup_visible(b, node, storage))
            .ok_or_else(|| ApiError::new(500, format!("volume '{volid}' does not exist")))
    }

    /// The backup a restore or an extractconfig names, seen from `node`.
    pub(crate) fn backup_for(&self, node: &str, volid: &str) -> Result<&BackupVolume, ApiError> {
        let storage = volid.split(':').next().unwrap_or_default();
        let i = self.volume(node, storage, volid)?;
        Ok(&self.backups[i])
    }

    /// `/nodes/{node}/storage/{storage}/content/{volume}` and `…/prunebackups`.
    pub(crate) fn storage_route(
        &mut self,
        method: &str,
        node: &str,
        storage: &str,
        rest: &[&str],
        params: &[(String, String)],
    ) -> Result<Value, ApiError> {
        self.reachable(node)?;
        storage_exists(storage)?;
        match (method, rest) {
            ("GET", ["content", volume]) => {
                self.require(&format!("/storage/{storage}"), "Datastore.Audit")?;
                let b = &self.backups[self.volume(node, storage, volume)?];
                let file = b
                    .volid
                    .split_once(':')
                    .map_or("", |(_, f)| f)
                    .trim_start_matches("backup/");
                let format = b
                    .volid
                    .rsplit_once(".tar")
                    .map_or("tar".to_string(), |(_, ext)| format!("tar{ext}"));
                let mut v = json!({ "format": format, "path": format!("/var/lib/vz/dump/{file}"), "size": b.size, "used": b.size, "notes": b.notes });
                if b.protected {
                    v["protected"] = json!(1);
                }
                Ok(v)
            }
            ("PUT", ["content", volume]) => {
                self.require(&format!("/storage/{storage}"), "Datastore.Allocate")?;
                let i = self.volume(node, storage, volume)?;
                if let Some(n) = get(params, "notes") {
                    self.backups[i].notes = n.to_string();
                }
                if let Some(p) = get(params, "protected") {
                    self.backups[i].protected = p == "1";
                }
                Ok(Value::Null)
            }
            ("DELETE", ["content", volume]) => {
                self.require(&format!("/storage/{storage}"), "Datastore.Allocate")?;
                let i = self.volume(node, storage, volume)?;
                let b = &self.backups[i];
                if b.protected {
                    return Err(ApiError::new(500, format!("backup '{}' is protected", b.volid)));
                }
                let volid = b.volid.clone();
                Ok(json!(self.start_task(
                    node,
                    "imgdel",
                    "",
                    Some(Effect::RemoveBackup(volid.clone())),
                    None
                )))
            }
            (m @ ("GET" | "DELETE"), ["prunebackups"]) => {
                self.require(&format!("/storage/{storage}"), "Datastore.Audit")?;
                let p = match get(params, "prune-backups") {
                    Some(t) => {
                        PruneBackups::parse("prune-backups", t).map_err(|e| ApiError::new(400, e.to_string()))?
                    }
                    None => self.storage_prune.clone(),
                };
                let vmids: Vec<u32> = match get(params, "vmid").and_then(|v| v.parse().ok()) {
                    Some(v) => vec![v],
                    None => {
                        let mut all: Vec<u32> = self
                            .backups
                            .iter()
                            .filter(|b| self.backup_visible(b, node, storage))
                            .map(|b| b.vmid)
                            .collect();
                        all.sort_unstable();
                        all.dedup();
                        all
                    }
                };
                if get(params, "type") == Some("qemu") {
                    return Ok(if m == "GET" {
                        json!([])
                    } else {
                        json!(self.start_task(node, "prunebackups", "", None, None))
                    });
                }
                if m == "GET" {
                    let rows: Vec<Value> = vmids
                        .into_iter()
                        .flat_map(|v| self.prune_group(node, storage, v, &p, false))
                        .collect();
                    return Ok(Value::Array(rows));
                }
                self.require(&format!("/storage/{storage}"), "Datastore.Allocate")?;
                for v in vmids {
                    self.prune_group(node, storage, v, &p, true);
                }
                Ok(json!(self.start_task(node, "prunebackups", "", None, None)))
            }
            _ => Err(ApiError::new(
                501,
                format!(
                    "Method '{method} /nodes/{node}/storage/{storage}/{}' not implemented",
                    rest.join("/")
                ),
            )),
        }
    }

    /// `GET /nodes/{node}/vzdump/extractconfig`: the config inside an archive.
    pub(crate) fn extract_config(&self, node: &str, params: &[(String, String)]) -> Result<Value, ApiError> {
        self.reachable(node)?;
        let volid = get(params, "volume").unwrap_or_default();
        let b = self.backup_for(node, volid)?;
        if b.corrupt {
            return Err(ApiError::new(
                500,
                format!("unable to extract configuration from '{volid}': zstd: /*stdin*\\: unknown header"),
            ));
        }
        Ok(json!(b.config))
    }

    /// `/cluster/backup[/{id}]`.
    pub(crate) fn backup_jobs(
        &mut self,
        method: &str,
        rest: &[&str],
        params: &[(String, String)],
    ) -> Result<Value, ApiError> {
        let missing = |id: &str| ApiError::new(500, format!("job '{id}' does not exist"));
        match (method, rest) {
            ("GET", []) => {
                self.require("/", "Sys.Audit")?;
                let now = self.now_epoch();
                Ok(Value::Array(
                    self.backup_jobs
                        .values()
                        .map(|j| {
                            let mut v = render_job(j);
                            if let Some(next) = j.get("schedule").and_then(Value::as_str).and_then(|s| next_run(s, now))
                            {
                                v["next-run"] = json!(next);
                            }
                            v
                        })
                        .collect(),
                ))
            }
            ("GET", [id]) => {
                self.require("/", "Sys.Audit")?;
                self.backup_jobs.get(*id).map(render_job).ok_or_else(|| missing(id))
            }
            ("POST", []) => {
                self.require("/", "Sys.Modify")?;
                let id = match get(params, "id") {
                    Some(id) => id.to_string(),
                    None => {
                        self.seq += 1;
                        format!("backup-{:08x}-{:04x}", 0x5eed_0000u32 + self.seq as u32, self.seq)
                    }
                };
                if self.backup_jobs.contains_key(&id) {
                    return Err(ApiError::new(500, format!("Job '{id}' already exists")));
                }
                let mut job = Map::new();
                job.insert("id".into(), json!(id));
                job.insert("type".into(), json!("vzdump"));
                for (k, v) in params.iter().filter(|(k, _)| k != "id") {
                    job.insert(k.clone(), json!(v));
                }
                check_job(&job)?;
                job.entry("enabled").or_insert(json!("1"));
                self.backup_jobs.insert(id, job);
                Ok(Value::Null)
            }
            ("PUT", [id]) => {
                self.require("/", "Sys.Modify")?;
                let mut job = self.backup_jobs.get(*id).cloned().ok_or_else(|| missing(id))?;
                for k in get(params, "delete")
                    .map(|d| d.split([',', ';', ' ']).collect::<Vec<_>>())
                    .unwrap_or_default()
                {
                    job.remove(k);
                }
                for (k, v) in params
                    .iter()
                    .filter(|(k, _)| k != "delete" && k != "id" && k != "digest")
                {
                    job.insert(k.clone(), json!(v));
                }
                check_job(&job)?;
                self.backup_jobs.insert(id.to_string(), job);
                Ok(Value::Null)
            }
            ("DELETE", [id]) => {
                self.require("/", "Sys.Modify")?;
                self.backup_jobs
                    .remove(*id)
                    .map(|_| Value::Null)
                    .ok_or_else(|| missing(id))
            }
            _ => Err(ApiError::new(
                501,
                format!("Method '{method} /cluster/backup/{}' not implemented", rest.join("/")),
            )),
        }
    }

    /// Moves the simulated clock on by `secs`, running every enabled backup job whose schedule
    /// falls in that time, at its time, in order.
    pub fn advance_clock(&mut self, secs: u64) {
        let from = self.now_epoch();
        let to = from + secs as i64;
        let mut runs: Vec<(i64, String)> = Vec::new();
        for (id, job) in &self.backup_jobs {
            if job.get("enabled").and_then(Value::as_str) == Some("0") {
                continue;
            }
            let Some(schedule) = job.get("schedule").and_then(Value::as_str) else {
                continue;
            };
            let mut t = from;
            while let Some(next) = next_run(schedule, t).filter(|n| *n <= to) {
                runs.push((next, id.clone()));
                t = next;
            }
        }
        runs.sort();
        for (at, id) in runs {
            self.clock_offset = (at - (self.now_epoch() - self.clock_offset as i64)).max(0) as u64;
            self.run_job(&id, at);
        }
        self.clock_offset = (to - (self.now_epoch() - self.clock_offset as i64)).max(0) as u64;
        self.touch();
    }

    /// Runs a backup job now, as the scheduler does: one vzdump task per node with guests.
    fn run_job(&mut self, id: &str, at: i64) {
        let Some(job) = self.backup_jobs.get(id).cloned() else {
            return;
        };
        let text = |k: &str| job.get(k).and_then(Value::as_str).map(str::to_string);
        let mut by_node: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        let all = text("all").as_deref() == Some("1");
        let listed = text("vmid").map(|v| vmid_list(&v)).unwrap_or_default();
        let excluded = text("exclude").map(|v| vmid_list(&v)).unwrap_or_default();
        for (vmid, ct) in &self.containers {
            let chosen = (all || listed.contains(vmid)) && !excluded.contains(vmid);
            let node_ok = text("node").is_none_or(|n| n == ct.node);
            if chosen && node_ok && !self.down.contains(&ct.node) {
                by_node.entry(ct.node.clone()).or_default().push(*vmid);
            }
        }
        let storage = text("storage").unwrap_or_else(|| "local".into());
        let remove = text("remove").as_deref() != Some("0");
        let prune = remove.then(|| {
            job.get("prune-backups")
                .and_then(Value::as_str)
                .and_then(|p| PruneBackups::parse("prune-backups", p).ok())
                .unwrap_or_else(|| self.storage_prune.clone())
        });
        for (node, vmids) in by_node {
            let dump = Dump {
                node: node.clone(),
                vmids,
                storage: storage.clone(),
                prune: prune.clone(),
                notes_template: text("notes-template"),
                protected: text("protected").as_deref() == Some("1"),
                compress: text("compress").unwrap_or_else(|| "zstd".into()),
            };
            if self.full_storages.contains(&storage) {
                self.start_task_failing(
                    &node,
                    "vzdump",
                    "",
                    None,
                    None,
                    Some(format!(
                        "job errors: vzdump: unable to write to storage '{storage}': No space left on device"
                    )),
                );
                continue;
            }
            self.start_task(&node, "vzdump", "", None, None);
            self.finish_dump(&dump, at);
        }
    }
}

/// A job as `GET /cluster/backup` renders it: `prune-backups` as an object, booleans and
/// numbers typed.
fn render_job(job: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    for (k, v) in job {
        let text = v.as_str().unwrap_or_default();
        let value = match k.as_str() {
            "prune-backups" => PruneBackups::parse(k, text).map_or(json!({}), |p| json!(p)),
            "enabled" | "all" | "protected" | "remove" | "quiet" | "stdexcludes" | "repeat-missed" | "stop" => {
                json!(u8::from(text == "1"))
            }
            "bwlimit" | "ionice" | "lockwait" | "pigz" | "stopwait" | "zstd" | "maxfiles" => {
                text.parse::<i64>().map_or(json!(text), |n| json!(n))
            }
            _ => v.clone(),
        };
        out.insert(k.clone(), value);
    }
    Value::Object(out)
}

fn check_job(job: &Map<String, Value>) -> Result<(), ApiError> {
    let has = |k: &str| {
        job.get(k)
            .and_then(Value::as_str)
            .is_some_and(|v| !v.is_empty() && v != "0")
    };
    if !has("vmid") && !has("all") && !has("pool") {
        return Err(ApiError::new(500, "either 'vmid', 'pool' or 'all' must be set"));
    }
    if let Some(p) = job.get("prune-backups").and_then(Value::as_str) {
        PruneBackups::parse("prune-backups", p)
            .map_err(|e| ApiError::params(vec![("prune-backups".into(), e.to_string())]))?;
    }
    if let Some(s) = job.get("schedule").and_then(Value::as_str)
        && next_run(s, 0).is_none()
    {
        return Err(ApiError::params(vec![(
            "schedule".into(),
            format!("value '{s}' does not look like a calendar event pvesim understands"),
        )]));
    }
    Ok(())
}

/// The first time after `after` a schedule fires, for the calendar events pvesim knows:
/// `hourly`, `daily`, `weekly` (Monday), `monthly`, `HH:MM`, `*:MM` (every hour), and a
/// day-of-week list before a time (`mon..fri 02:30`, `sat,sun 04:00`). Times are UTC.
pub(crate) fn next_run(schedule: &str, after: i64) -> Option<i64> {
    use chrono::{DateTime, Datelike, Duration, Timelike, Utc};
    let s = schedule.trim().to_ascii_lowercase();
    let base: DateTime<Utc> = DateTime::from_timestamp(after, 0)?;
    let next_minute = |t: DateTime<Utc>| t.with_second(0).map(|t| t + Duration::minutes(1));
    let (days, time) = match s.as_str() {
        "hourly" => (None, "*:00".to_string()),
        "daily" | "midnight" => (None, "00:00".into()),
        "yearly" | "annually" => {
            let first = base
                .date_naive()
                .with_month(1)?
                .with_day(1)?
                .and_hms_opt(0, 0, 0)?
                .and_utc();
            let next = if first.timestamp() > after {
                first
            } else {
                first + chrono::Months::new(12)
            };
            return Some(next.timestamp());
        }
        "weekly" => (Some(vec![0u32]), "00:00".into()),
        "monthly" => {
            let first = base.date_naive().with_day(1)?.and_hms_opt(0, 0, 0)?.and_utc();
            let next = if first.timestamp() > after {
                first
            } else {
                first + chrono::Months::new(1)
            };
            return Some(next.timestamp());
        }
        _ => match s.rsplit_once(' ') {
            Some((dow, time)) => (Some(weekdays(dow)?), time.to_string()),
            None => (None, s.clone()),
        },
    };
    let (hour, minute) = time.split_once(':')?;
    let minute: u32 = minute.parse().ok().filter(|m| *m < 60)?;
    let hour: Option<u32> = if hour == "*" {
        None
    } else {
        Some(hour.parse().ok().filter(|h| *h < 24)?)
    };
    let mut t = next_minute(base)?;
    // At most a week of minutes, stepping to the next candidate hour or day.
    for _ in 0..(8 * 24 * 60) {
        let day_ok = days
            .as_ref()
            .is_none_or(|d| d.contains(&t.weekday().num_days_from_monday()));
        if day_ok && hour.is_none_or(|h| h == t.hour()) && t.minute() == minute {
            return Some(t.timestamp());
        }
        t += Duration::minutes(1);
    }
    None
}

/// `mon..fri`, `sat,sun`, `mon` → Monday-based day numbers.
fn weekdays(text: &str) -> Option<Vec<u32>> {
    const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let day = |d: &str| NAMES.iter().position(|n| *n == d).map(|i| i as u32);
    let mut out = Vec::new();
    for part in text.split(',') {
        match part.split_once("..") {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                out.extend(if a <= b {
                    (a..=b).collect::<Vec<_>>()
                } else {
                    (a..7).chain(0..=b).collect()
                });
            }
            None => out.push(day(part)?),
        }
    }
    Some(out)
}

/// A destroyed guest leaves every backup job (`purge`), as on PVE
/// (`remove_vmid_from_backup_jobs`): it is taken out of a job's `vmid` list, and a job whose
/// list it empties is removed; or it is taken out of a job's `exclude` list.
pub(crate) fn purge_from_jobs(s: &mut SimState, vmid: u32) {
    let without = |list: &str| -> String {
        vmid_list(list)
            .into_iter()
            .filter(|v| *v != vmid)
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut emptied = Vec::new();
    for (id, job) in s.backup_jobs.iter_mut() {
        if let Some(list) = job.get("vmid").and_then(Value::as_str).map(str::to_string) {
            let rest = without(&list);
            if rest.is_empty() {
                emptied.push(id.clone());
            } else {
                job.insert("vmid".into(), json!(rest));
            }
        } else if let Some(list) = job.get("exclude").and_then(Value::as_str).map(str::to_string) {
            let rest = without(&list);
            if rest.is_empty() {
                job.remove("exclude");
            } else {
                job.insert("exclude".into(), json!(rest));
            }
        }
    }
    for id in emptied {
        s.backup_jobs.remove(&id);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// 2026-12-07 15:17:00 UTC, a Monday.
    const NOW: i64 = 1_796_656_620;

    #[test]
    fn schedules_fire_at_their_next_time() {
        let at = |s: &str| {
            chrono::DateTime::from_timestamp(next_run(s, NOW).unwrap(), 0)
                .unwrap()
                .to_rfc3339()
        };
        assert_eq!(at("daily"), "2026-12-08T00:00:00+00:00");
        assert_eq!(at("02:30"), "2026-12-08T02:30:00+00:00");
        assert_eq!(at("16:00"), "2026-12-07T16:00:00+00:00");
        assert_eq!(at("*:15"), "2026-12-07T16:15:00+00:00");
        assert_eq!(at("hourly"), "2026-12-07T16:00:00+00:00");
        assert_eq!(at("sat,sun 04:00"), "2026-12-12T04:00:00+00:00");
        assert_eq!(at("mon..fri 01:00"), "2026-12-08T01:00:00+00:00");
        assert_eq!(at("weekly"), "2026-12-14T00:00:00+00:00");
        assert_eq!(at("monthly"), "2027-01-01T00:00:00+00:00");
        assert_eq!(at("yearly"), "2027-01-01T00:00:00+00:00");
        assert_eq!(next_run("every full moon", NOW), None);
    }
}
