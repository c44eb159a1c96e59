//! Tasks: UPIDs, durations, logs, and the effect each has when it ends.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::ApiError;
use crate::state::SimState;

/// What happens to a container when its task ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Clear the config lock.
    Unlock(u32),
    /// Clear the lock and set running or stopped.
    Power(u32, bool),
    /// Remove the container.
    Remove(u32),
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
        self.seq += 1;
        let starttime = self.started.elapsed().as_secs() + 1_700_000_000;
        let upid = format!(
            "UPID:{node}:{:08X}:{:08X}:{starttime:08X}:{kind}:{id}:root@pam:",
            1000 + self.seq,
            self.seq
        );
        let exit = match self.task_errors.iter().position(|(k, _)| k == kind) {
            Some(i) => self.task_errors.remove(i).1,
            None => "OK".to_string(),
        };
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
        self.tick();
        upid
    }

    /// Applies the effects of every task that has ended. Called before each request.
    pub(crate) fn tick(&mut self) {
        let mut effects = Vec::new();
        for t in self
            .tasks
            .values_mut()
            .filter(|t| !t.applied && t.started.elapsed() >= t.duration)
        {
            t.applied = true;
            effects.push(if t.exit == "OK" {
                t.effect.clone()
            } else {
                t.on_error.clone()
            });
        }
        for e in effects.into_iter().flatten() {
            match e {
                Effect::Unlock(vmid) => {
                    if let Some(ct) = self.containers.get_mut(&vmid) {
                        ct.config.main_mut().remove("lock");
                    }
                }
                Effect::Power(vmid, running) => {
                    if let Some(ct) = self.containers.get_mut(&vmid) {
                        ct.config.main_mut().remove("lock");
                        ct.running = running;
                    }
                }
                Effect::Remove(vmid) => {
                    self.containers.remove(&vmid);
                }
            }
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
        let mut v = json!({ "upid": upid, "node": t.node, "type": t.kind, "id": t.id, "user": "root@pam", "status": if done { "stopped" } else { "running" } });
        if done {
            v["exitstatus"] = json!(t.exit);
        }
        Ok(v)
    }

    pub(crate) fn task_log(&self, node: &str, upid: &str) -> Result<Value, ApiError> {
        let t = self.task(node, upid)?;
        Ok(Value::Array(
            t.log
                .iter()
                .enumerate()
                .map(|(i, l)| json!({ "n": i + 1, "t": l }))
                .collect(),
        ))
    }
}
