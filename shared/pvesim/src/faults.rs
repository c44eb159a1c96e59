//! Fault injection: the control API under `/_sim` and the faults it queues.
//!
//! - `POST /_sim/faults` `{"path": "/nodes/pve1/lxc", "method": "POST", "count": 2, "status": 596,
//!   "message": "Connection timed out"}`: the next 2 matching calls fail that way. `status: 0`
//!   drops the connection; `latency_ms` delays the call instead of failing it.
//! - `POST /_sim/task-error` `{"kind": "vzcreate", "message": "..."}`: the next task of that
//!   type ends in error.
//! - `DELETE /_sim/faults`: clears everything queued (simulated `pct exec` answers too).
//! - `POST /_sim/nodes/{node}/down` and `.../up`: a down node is `offline` in `/nodes`, its
//!   guests are `unknown` in `/cluster/resources`, and calls proxied to it answer 595.
//! - `POST /_sim/load` `{"vmid": 101, "cpu": 0.9, "mem": 1073741824}`: a container's measured
//!   load, as `/cluster/resources` reports it.
//! - `POST /_sim/clock` `{"advance_secs": 86400}`: the simulated clock moves on, and every
//!   cluster backup job due in that time runs at its time (backups, then their pruning).
//! - `POST /_sim/storage/full` `{"storage": "local", "full": true}`: backups to it fail for
//!   lack of space until cleared.
//! - `POST /_sim/backups/corrupt` `{"volid": "local:backup/…"}`: restoring that backup, or
//!   reading its config, fails as a damaged archive does.
//! - `POST /_sim/populate` `{"first": 1000, "count": 10000, "cpu": 0.1}`: running containers in
//!   bulk, for load profiles and benchmarks.

use std::time::Duration;

use axum::body::Body;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::{ApiError, Sim, ok};

/// A queued fault.
#[derive(Debug, Clone, Deserialize)]
pub struct Fault {
    /// Only this method, when given.
    #[serde(default)]
    pub method: Option<String>,
    /// API paths starting with this (without `/api2/json`).
    pub path: String,
    /// How many calls it hits.
    #[serde(default = "one")]
    pub count: u32,
    /// The status to answer; 0 drops the connection.
    #[serde(default)]
    pub status: u16,
    /// The message.
    #[serde(default)]
    pub message: String,
    /// Delay the call by this much (then answer normally, or with `status` if set).
    #[serde(default)]
    pub latency_ms: u64,
    /// When above 0, the fault stays until cleared and hits each matching call with this
    /// probability (0.3: about 30 % of calls), instead of the next `count` calls.
    #[serde(default)]
    pub rate: f64,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// What a matched fault does.
pub(crate) struct Action {
    latency: Duration,
    status: Option<u16>,
    message: String,
}

impl crate::state::SimState {
    /// Takes one hit from the first fault matching the call.
    pub(crate) fn take_fault(&mut self, method: &str, path: &str) -> Option<Action> {
        let mut hit = None;
        for i in 0..self.faults.len() {
            let f = &self.faults[i];
            let matches =
                path.starts_with(&f.path) && f.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method));
            if !matches {
                continue;
            }
            let rate = f.rate;
            if rate > 0.0 {
                if self.dice() < rate {
                    hit = Some(i);
                    break;
                }
            } else if f.count > 0 {
                hit = Some(i);
                break;
            }
        }
        let i = hit?;
        let f = &mut self.faults[i];
        if f.rate <= 0.0 {
            f.count -= 1;
        }
        let action = Action {
            latency: Duration::from_millis(f.latency_ms),
            status: if f.latency_ms > 0 && f.status == 0 {
                None
            } else {
                Some(f.status)
            },
            message: f.message.clone(),
        };
        if f.count == 0 && f.rate <= 0.0 {
            self.faults.remove(i);
        }
        Some(action)
    }

    /// A uniform number in [0, 1) from a seeded generator (splitmix64): faults are random but
    /// a run is repeatable for the same sequence of calls.
    fn dice(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Action {
    /// How long to wait first.
    pub(crate) fn latency(&self) -> Duration {
        self.latency
    }

    /// The failure to answer with after the wait, if any: a status, or 0 for a dropped
    /// connection. `None` means a delay only: the call then proceeds normally.
    pub(crate) fn failure(&self, reason_phrase: bool) -> Option<Response> {
        match self.status? {
            0 => {
                // A body that breaks mid-stream: the client sees the connection fail.
                let chunks: Vec<Result<&'static [u8], std::io::Error>> = vec![
                    Ok(b"{\"data\":".as_slice()),
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "pvesim dropped the connection",
                    )),
                ];
                Some(Response::new(Body::from_stream(futures::stream::iter(chunks))))
            }
            s if reason_phrase => Some(ApiError::new(s, self.message.clone()).into_reason_phrase()),
            s => Some(ApiError::new(s, self.message.clone()).into_response()),
        }
    }
}

/// Handles `/_sim/...`.
pub(crate) fn control(sim: &Sim, method: &Method, path: &str, body: &[u8]) -> Response {
    match (method.as_str(), path) {
        ("POST", "/faults") => match serde_json::from_slice::<Fault>(body) {
            Ok(f) => {
                sim.lock().faults.push(f);
                ok(serde_json::Value::Null)
            }
            Err(e) => ApiError::new(400, format!("bad fault: {e}")).into_response(),
        },
        ("POST", "/task-error") => {
            #[derive(Deserialize)]
            struct TaskError {
                kind: String,
                message: String,
            }
            match serde_json::from_slice::<TaskError>(body) {
                Ok(t) => {
                    sim.lock().task_errors.push((t.kind, t.message));
                    ok(serde_json::Value::Null)
                }
                Err(e) => ApiError::new(400, format!("bad task error: {e}")).into_response(),
            }
        }
        ("POST", "/sdn/fail") => {
            #[derive(Deserialize)]
            struct SdnFail {
                node: String,
            }
            match serde_json::from_slice::<SdnFail>(body) {
                Ok(f) if sim.lock().has_node(&f.node) => {
                    sim.lock().sdn_failing.insert(f.node);
                    ok(serde_json::Value::Null)
                }
                Ok(f) => ApiError::new(404, format!("no such node '{}'", f.node)).into_response(),
                Err(e) => ApiError::new(400, format!("bad sdn fault: {e}")).into_response(),
            }
        }
        ("DELETE", "/faults") => {
            let mut s = sim.lock();
            s.faults.clear();
            s.task_errors.clear();
            s.sdn_failing.clear();
            s.exec_faults.clear();
            s.full_storages.clear();
            ok(serde_json::Value::Null)
        }
        ("POST", "/load") => {
            #[derive(Deserialize)]
            struct SetLoad {
                vmid: u32,
                #[serde(flatten)]
                load: crate::Load,
            }
            match serde_json::from_slice::<SetLoad>(body) {
                Ok(l) => {
                    sim.set_load(l.vmid, l.load);
                    ok(serde_json::Value::Null)
                }
                Err(e) => ApiError::new(400, format!("bad load: {e}")).into_response(),
            }
        }
        ("POST", "/clock") => {
            #[derive(Deserialize)]
            struct Clock {
                advance_secs: u64,
            }
            match serde_json::from_slice::<Clock>(body) {
                Ok(c) if c.advance_secs <= 10 * 366 * 86_400 => {
                    sim.lock().advance_clock(c.advance_secs);
                    ok(serde_json::json!({ "now": sim.lock().now_epoch() }))
                }
                Ok(_) => ApiError::new(400, "clock: advance at most ten years at once").into_response(),
                Err(e) => ApiError::new(400, format!("bad clock: {e}")).into_response(),
            }
        }
        ("POST", "/storage/full") => {
            #[derive(Deserialize)]
            struct Full {
                storage: String,
                #[serde(default = "yes")]
                full: bool,
            }
            match serde_json::from_slice::<Full>(body) {
                Ok(f) => {
                    let mut s = sim.lock();
                    if f.full {
                        s.full_storages.insert(f.storage);
                    } else {
                        s.full_storages.remove(&f.storage);
                    }
                    ok(serde_json::Value::Null)
                }
                Err(e) => ApiError::new(400, format!("bad storage fault: {e}")).into_response(),
            }
        }
        ("POST", "/backups/corrupt") => {
            #[derive(Deserialize)]
            struct Corrupt {
                volid: String,
            }
            match serde_json::from_slice::<Corrupt>(body) {
                Ok(c) => {
                    let mut s = sim.lock();
                    match s.backups.iter_mut().find(|b| b.volid == c.volid) {
                        Some(b) => {
                            b.corrupt = true;
                            ok(serde_json::Value::Null)
                        }
                        None => ApiError::new(404, format!("no backup '{}'", c.volid)).into_response(),
                    }
                }
                Err(e) => ApiError::new(400, format!("bad corrupt fault: {e}")).into_response(),
            }
        }
        ("POST", "/populate") => {
            #[derive(Deserialize)]
            struct Populate {
                first: u32,
                count: u32,
                #[serde(flatten)]
                load: crate::Load,
            }
            match serde_json::from_slice::<Populate>(body) {
                Ok(p) if p.count <= 100_000 && p.first >= 100 => {
                    sim.populate(p.first, p.count, p.load);
                    ok(serde_json::Value::Null)
                }
                Ok(_) => {
                    ApiError::new(400, "populate: first must be at least 100 and count at most 100000").into_response()
                }
                Err(e) => ApiError::new(400, format!("bad populate: {e}")).into_response(),
            }
        }
        ("POST", p) if p.starts_with("/nodes/") && (p.ends_with("/down") || p.ends_with("/up")) => {
            let mut parts = p.trim_start_matches("/nodes/").rsplitn(2, '/');
            let (state, node) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
            if !sim.lock().has_node(node) {
                return ApiError::new(404, format!("no such node '{node}'")).into_response();
            }
            sim.set_node_down(node, state == "down");
            ok(serde_json::Value::Null)
        }
        _ => ApiError::new(501, format!("Method '{method} /_sim{path}' not implemented")).into_response(),
    }
}
