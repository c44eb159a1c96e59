//! Backups: vzdump runs followed to their end, backup volumes in a storage's content (notes,
//! protection, removal), `prune-backups` previews and runs, the config inside an archive,
//! restores (`POST /nodes/{node}/lxc` with `restore=1`), and cluster backup jobs under
//! `/cluster/backup`, which PVE's own scheduler runs whether or not the fleet is up.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::api::TaskStatus;
use super::{Params, PveClient, PveError, enc, lenient};
use crate::codec::prune::{Mark, PruneBackups};

/// A backup volume, as listed in a storage's content.
#[derive(Debug, Clone, Deserialize)]
pub struct BackupItem {
    /// `local:backup/vzdump-lxc-101-2026_12_07-15_17_01.tar.zst`.
    pub volid: String,
    /// The guest it belongs to.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub vmid: Option<u64>,
    /// Creation time, seconds since the epoch.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub ctime: Option<u64>,
    /// Bytes.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub size: Option<u64>,
    /// `tar.zst`, `tar.gz`, ...
    #[serde(default)]
    pub format: Option<String>,
    /// The first line of its notes.
    #[serde(default)]
    pub notes: Option<String>,
    /// Protected from pruning and removal.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub protected: Option<bool>,
    /// `lxc` or `qemu`, where the storage says.
    #[serde(default)]
    pub subtype: Option<String>,
}

/// One row of a prune preview.
#[derive(Debug, Clone, Deserialize)]
pub struct PruneRow {
    /// The backup.
    pub volid: String,
    /// Creation time.
    #[serde(deserialize_with = "lenient::u64_")]
    pub ctime: u64,
    /// What pruning does with it.
    pub mark: Mark,
    /// Its guest.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub vmid: Option<u64>,
}

/// A cluster backup job.
#[derive(Debug, Clone, Deserialize)]
pub struct BackupJob {
    /// Its id.
    pub id: String,
    /// The calendar event (`daily`, `02:30`, `sat 04:00`).
    #[serde(default)]
    pub schedule: Option<String>,
    /// The guests, `101,102`.
    #[serde(default)]
    pub vmid: Option<String>,
    /// Target storage.
    #[serde(default)]
    pub storage: Option<String>,
    /// `snapshot`, `suspend` or `stop`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Compression.
    #[serde(default)]
    pub compress: Option<String>,
    /// Whether it runs.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub enabled: Option<bool>,
    /// Its description.
    #[serde(default)]
    pub comment: Option<String>,
    /// Retention, as an object.
    #[serde(default, rename = "prune-backups")]
    pub prune_backups: Option<PruneBackups>,
    /// Notes template of its backups.
    #[serde(default, rename = "notes-template")]
    pub notes_template: Option<String>,
    /// The next run, seconds since the epoch.
    #[serde(default, rename = "next-run", deserialize_with = "lenient::opt_u64")]
    pub next_run: Option<u64>,
    /// Everything else it has.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl BackupJob {
    /// The guests as numbers.
    pub fn vmids(&self) -> Vec<u32> {
        self.vmid
            .as_deref()
            .unwrap_or_default()
            .split([',', ';', ' '])
            .filter_map(|v| v.trim().parse().ok())
            .collect()
    }
}

/// Where a vzdump run put its backups.
#[derive(Debug, Clone)]
pub struct DumpOutcome {
    /// The task's end.
    pub task: TaskStatus,
    /// Its UPID.
    pub upid: String,
}

impl PveClient {
    /// `POST /nodes/{node}/vzdump`, followed to its end.
    pub async fn vzdump(&self, node: &str, params: Params) -> Result<DumpOutcome, PveError> {
        let upid: String = self.post(&format!("/nodes/{}/vzdump", enc(node)), params).await?;
        let task = self.wait_task(&upid).await?;
        Ok(DumpOutcome { task, upid })
    }

    /// A storage's backups, of one guest when given.
    pub async fn backups(&self, node: &str, storage: &str, vmid: Option<u32>) -> Result<Vec<BackupItem>, PveError> {
        self.get(
            &format!("/nodes/{}/storage/{}/content", enc(node), enc(storage)),
            Params::new().set("content", "backup").opt("vmid", vmid),
        )
        .await
    }

    /// `PUT …/content/{volume}`: notes and protection.
    pub async fn backup_annotate(
        &self,
        node: &str,
        volid: &str,
        notes: Option<&str>,
        protected: Option<bool>,
    ) -> Result<(), PveError> {
        let storage = volid.split(':').next().unwrap_or_default();
        let mut params = Params::new().opt("notes", notes);
        if let Some(p) = protected {
            params = params.set("protected", u8::from(p));
        }
        let _: Value = self
            .put(
                &format!("/nodes/{}/storage/{}/content/{}", enc(node), enc(storage), enc(volid)),
                params,
            )
            .await?;
        Ok(())
    }

    /// `DELETE …/content/{volume}`, followed to its end.
    pub async fn backup_delete(&self, node: &str, volid: &str) -> Result<(), PveError> {
        let storage = volid.split(':').next().unwrap_or_default();
        let upid: Option<String> = self
            .delete(
                &format!("/nodes/{}/storage/{}/content/{}", enc(node), enc(storage), enc(volid)),
                Params::new(),
            )
            .await?;
        if let Some(upid) = upid {
            self.wait_task(&upid).await?;
        }
        Ok(())
    }

    /// `GET …/prunebackups`: what pruning would keep and remove.
    pub async fn prune_preview(
        &self,
        node: &str,
        storage: &str,
        vmid: Option<u32>,
        keep: Option<&PruneBackups>,
    ) -> Result<Vec<PruneRow>, PveError> {
        self.get(
            &format!("/nodes/{}/storage/{}/prunebackups", enc(node), enc(storage)),
            Params::new()
                .opt("vmid", vmid)
                .opt("prune-backups", keep.map(PruneBackups::write))
                .set("type", "lxc"),
        )
        .await
    }

    /// `DELETE …/prunebackups`, followed to its end.
    pub async fn prune(
        &self,
        node: &str,
        storage: &str,
        vmid: Option<u32>,
        keep: Option<&PruneBackups>,
    ) -> Result<TaskStatus, PveError> {
        let upid: String = self
            .delete(
                &format!("/nodes/{}/storage/{}/prunebackups", enc(node), enc(storage)),
                Params::new()
                    .opt("vmid", vmid)
                    .opt("prune-backups", keep.map(PruneBackups::write))
                    .set("type", "lxc"),
            )
            .await?;
        self.wait_task(&upid).await
    }

    /// `GET /nodes/{node}/vzdump/extractconfig`: the config inside an archive.
    pub async fn backup_config(&self, node: &str, volid: &str) -> Result<String, PveError> {
        self.get(
            &format!("/nodes/{}/vzdump/extractconfig", enc(node)),
            Params::new().set("volume", volid),
        )
        .await
    }

    /// Restores a backup into `vmid` on `node` (`force` to overwrite an existing, stopped
    /// container; `unique` for new MAC addresses; `extra` overrides config keys), followed to
    /// its end.
    pub async fn lxc_restore(
        &self,
        node: &str,
        vmid: u32,
        volid: &str,
        force: bool,
        unique: bool,
        extra: Params,
    ) -> Result<TaskStatus, PveError> {
        let params = extra
            .set("vmid", vmid)
            .set("ostemplate", volid)
            .flag("restore", true)
            .flag("force", force)
            .flag("unique", unique);
        let upid: String = self.post(&format!("/nodes/{}/lxc", enc(node)), params).await?;
        self.wait_task(&upid).await
    }

    /// `GET /cluster/backup`.
    pub async fn backup_jobs(&self) -> Result<Vec<BackupJob>, PveError> {
        self.get("/cluster/backup", Params::new()).await
    }

    /// `POST /cluster/backup` (`params` carry `id`, `schedule`, `vmid`, ...).
    pub async fn backup_job_create(&self, params: Params) -> Result<(), PveError> {
        let _: Value = self.post("/cluster/backup", params).await?;
        Ok(())
    }

    /// `PUT /cluster/backup/{id}`.
    pub async fn backup_job_update(&self, id: &str, params: Params) -> Result<(), PveError> {
        let _: Value = self.put(&format!("/cluster/backup/{}", enc(id)), params).await?;
        Ok(())
    }

    /// `DELETE /cluster/backup/{id}`.
    pub async fn backup_job_delete(&self, id: &str) -> Result<(), PveError> {
        let _: Value = self
            .delete(&format!("/cluster/backup/{}", enc(id)), Params::new())
            .await?;
        Ok(())
    }
}
