//! Tasks: UPIDs, durations, logs, and the effect each has when it ends.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::ApiError;
use crate::state::SimState;

/// What a task does when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Clear the config lock.
    Unlock(u32),
    /// Clear the lock and set running or stopped; a start applies pending changes.
    Power(u32, bool),
    /// Remove the container; with purge, from HA too.
    Remove(u32, bool),
    /// Take a snapshot of the current config.
    Snapshot(u32, String, Option<String>),
    /// Delete a snapshot.
    DeleteSnapshot(u32, String),
    /// Roll back to a snapshot (the container is stopped), then start it when asked.
    Rollback(u32, String, bool),
    /// Set a disk's size, bytes.
    Resize(u32, String, u64),
    /// Move the container to another node.
    Migrate(u32, String),
    /// Apply pending SDN changes.
    ApplySdn,
    /// Write the backups of a vzdump run taken at this time, then prune.
    Backup(crate::backup::Dump, i64),
    /// Clear this lock from each container still holding it.
    UnlockAll(Vec<u32>, String),
    /// Remove a backup volume.
    RemoveBackup(String),
    /// Replace a container with what a restore made of an archive.
    Restore(Box<crate::lxc::Restored>),
}

/// One task.
#[derive(Debug, Clone)]
pub struct Task {
    /// Its node.
    pub node: String,
    /// Type, such as `vzcreate`.
    pub kind: String,
    /// Object id.
    pub id: String,
    /// Start.
    pub started: Instant,
    /// How long it runs.
    pub duration: Duration,
    /// `OK` or the error.
    pub exit: String,
    /// Log lines.
    pub log: Vec<String>,
    /// Applied once when it ends; on error, `on_error` instead.
    pub effect: Option<Effect>,
    /// Applied when it ends in error.
    pub on_error: Option<Effect>,
    pub(crate) applied: bool,
}

impl SimState {
    /// Starts a task; the next queued task error of its type makes it fail.
    pub(crate) fn start_task(
        &mut self,
        node: &str,
        kind: &str,
        id: &str,
        effect: Option<Effect>,
        on_error: Option<Effect>,
    ) -> String {
        self.start_task_failing(node, kind, id, effect, on_error, None)
    }

    /// Starts a task that ends in `failure` when given (a failure the simulator decided).
    pub(crate) fn start_task_failing(
        &mut self,
        node: &str,
        kind: &str,
        id: &str,
        effect: Option<Effect>,
        on_error: Option<Effect>,
        failure: Option<String>,
    ) -> String {
        self.seq += 1;
        let starttime = self.epoch(Instant::now());
        let upid = format!(
            "UPID:{node}:{:08X}:{:08X}:{starttime:08X}:{kind}:{id}:root@pam:",
            1000 + self.seq,
            self.seq
        );
        let injected = self
            .task_errors
            .iter()
            .position(|(k, _)| k == kind)
            .map(|i| self.task_errors.remove(i).1);
        let exit = injected.or(failure).unwrap_or_else(|| "OK".to_string());
        let mut log = vec![format!("starting {kind} for {id}")];
        if exit != "OK" {
            log.push(format!("TASK ERROR: {exit}"));
        } else {
            log.push("TASK OK".into());
        }
        let task = Task {
            node: node.into(),
            kind: kind.into(),
            id: id.into(),
            started: Instant::now(),
            duration: self.config.task_duration,
            exit,
            log,
            effect,
            on_error,
            applied: false,
        };
        self.tasks.insert(upid.clone(), task);
        self.running_tasks.push(upid.clone());
        self.touch();
        self.tick();
        upid
    }

    /// Applies the effects of every task that has ended. Called before each request.
    pub(crate) fn tick(&mut self) {
        if self.running_tasks.is_empty() {
            return;
        }
        let mut effects = Vec::new();
        let tasks = &mut self.tasks;
        self.running_tasks.retain(|upid| {
            let Some(t) = tasks.get_mut(upid) else { return false };
            if t.started.elapsed() < t.duration {
                return true;
            }
            t.applied = true;
            effects.push(if t.exit == "OK" {
                t.effect.clone()
            } else {
                t.on_error.clone()
            });
            false
        });
        if effects.is_empty() {
            return;
        }
        self.touch();
        for e in effects.into_iter().flatten() {
            self.apply(e);
        }
    }

    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::Unlock(vmid) => {
                if let Some(ct) = self.containers.get_mut(&vmid) {
                    ct.config.main_mut().remove("lock");
                }
            }
            Effect::Power(vmid, running) => {
                if let Some(ct) = self.containers.get_mut(&vmid) {
                    ct.config.main_mut().remove("lock");
                    // A start or a reboot applies every pending change.
                    if running {
                        crate::lxc::apply_pending(&mut ct.config);
                        ct.started = Some(Instant::now());
                    }
                    ct.running = running;
                }
            }
            Effect::Remove(vmid, purge) => {
                self.containers.remove(&vmid);
                self.loads.remove(&vmid);
                self.installed.remove(&vmid);
                if purge {
                    crate::ha::purge(self, &format!("ct:{vmid}"));
                    crate::backup::purge_from_jobs(self, vmid);
                }
            }
            Effect::Snapshot(vmid, name, description) => {
                let now = self.epoch(Instant::now());
                if let Some(ct) = self.containers.get_mut(&vmid) {
                    crate::lxc::take_snapshot(ct, &name, description.as_deref(), now);
                }
            }
            Effect::DeleteSnapshot(vmid, name) => {
                if let Some(ct) = self.containers.get_mut(&vmid) {
                    crate::lxc::delete_snapshot(ct, &name);
                }
            }
            Effect::Rollback(vmid, name, start) => {
                if let Some(ct) = self.containers.get_mut(&vmid) {
                    crate::lxc::rollback(ct, &name);
                    ct.running = start;
                    ct.started = start.then(Instant::now);
                }
            }
            Effect::Resize(vmid, disk, bytes) => {
                if let Some(ct) = self.containers.get_mut(&vmid) {
                    crate::lxc::set_disk_size(ct, &disk, bytes);
                }
            }
            Effect::Migrate(vmid, target) => {
                if let Some(ct) = self.containers.get_mut(&vmid) {
                    ct.config.main_mut().remove("lock");
                    ct.node = target;
                }
            }
            Effect::ApplySdn => crate::sdn::apply(self),
            Effect::Backup(dump, at) => self.finish_dump(&dump, at),
            Effect::UnlockAll(vmids, lock) => {
                for vmid in vmids {
                    if let Some(ct) = self.containers.get_mut(&vmid)
                        && ct.config.main().get("lock") == Some(lock.as_str())
                    {
                        ct.config.main_mut().remove("lock");
                    }
                }
            }
            Effect::RemoveBackup(volid) => self.backups.retain(|b| b.volid != volid),
            Effect::Restore(r) => crate::lxc::finish_restore(self, *r),
        }
    }

    fn task(&self, node: &str, upid: &str) -> Result<&Task, ApiError> {
        self.tasks
            .get(upid)
            .filter(|t| t.node == node)
            .ok_or_else(|| ApiError::new(500, format!("no such task '{upid}'")))
    }

    pub(crate) fn task_status(&mut self, node: &str, upid: &str) -> Result<Value, ApiError> {
        self.tick();
        let t = self.task(node, upid)?;
        let done = t.started.elapsed() >= t.duration;
        let mut v = json!({ "upid": upid, "node": t.node, "type": t.kind, "id": t.id, "user": "root@pam", "pid": 1000, "pstart": 1, "starttime": self.epoch(t.started), "status": if done { "stopped" } else { "running" } });
        if done {
            v["exitstatus"] = json!(t.exit);
        }
        Ok(v)
    }

    /// `GET …/tasks/{upid}/log`, paged by `start` and `limit` as PVE does.
    pub(crate) fn task_log(&self, node: &str, upid: &str, params: &[(String, String)]) -> Result<Value, ApiError> {
        let t = self.task(node, upid)?;
        let num = |key: &str, default: usize| {
            params
                .iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(default)
        };
        let (start, limit) = (num("start", 0), num("limit", 50));
        Ok(Value::Array(
            t.log
                .iter()
                .enumerate()
                .skip(start)
                .take(limit)
                .map(|(i, l)| json!({ "n": i + 1, "t": l }))
                .collect(),
        ))
    }

    /// `GET /nodes/{node}/tasks`: the newest tasks of a node.
    pub(crate) fn task_list(&self, node: &str) -> Value {
        let mut tasks: Vec<(&String, &Task)> = self.tasks.iter().filter(|(_, t)| t.node == node).collect();
        tasks.sort_by_key(|(_, t)| std::cmp::Reverse(t.started));
        Value::Array(
            tasks
                .into_iter()
                .take(50)
                .map(|(upid, t)| {
                    let mut v = json!({ "upid": upid, "node": t.node, "type": t.kind, "id": t.id, "user": "root@pam", "pid": 1000, "pstart": 1, "starttime": self.epoch(t.started) });
                    if t.applied {
                        v["status"] = json!(t.exit);
                        v["endtime"] = json!(self.epoch(t.started) + t.duration.as_secs());
                    }
                    v
                })
                .collect(),
        )
    }

    /// A moment as seconds since the epoch, on the simulator's clock.
    pub(crate) fn epoch(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_secs() + self.epoch_base + self.clock_offset
    }
}
