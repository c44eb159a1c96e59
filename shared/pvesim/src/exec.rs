//! A simulated `pct exec`: the installer's test and demo transport (`installer.transport =
//! "pvesim"`). Real PVE has no such endpoint; on a real node the installer runs `pct` over
//! ssh. pvesim answers the command line the installer would run on the node the way `pct`
//! does, records it with the script it was sent, and can be told to fail.
//!
//! - `POST /_sim/exec` `{"node": "pve1", "argv": ["pct", "exec", "101", "--", "bash", "-s"],
//!   "stdin": "<base64>"}` answers `{"data": {"code": 0, "stdout": "...", "stderr": "..."}}`.
//!   A node that is down or unknown answers 595, as a node that cannot be reached.
//! - `GET /_sim/exec`: what was run, newest last, with secret values in the script's
//!   `export` lines masked.
//! - `POST /_sim/exec/fail` `{"command": "bash", "code": 1, "stderr": "...", "count": 1}`: the
//!   next matching commands in a container (by their first word; any without `command`)
//!   answer that way. `DELETE /_sim/faults` clears them.
//!
//! A script run with `bash -s` marks the container's app installed, so `wp core is-installed`
//! answers 0 afterwards (1 before); `true` answers 0 on a running container.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::state::SimState;
use crate::{ApiError, Sim};

/// What a simulated command answers with, instead of what it would have done.
#[derive(Debug, Clone, Deserialize)]
pub struct ExecFault {
    /// Only commands whose first word in the container is this (`bash`, `wp`, `true`).
    #[serde(default)]
    pub command: Option<String>,
    /// The exit code.
    #[serde(default = "one")]
    pub code: i32,
    /// Its standard output.
    #[serde(default)]
    pub stdout: String,
    /// Its standard error.
    #[serde(default)]
    pub stderr: String,
    /// How many commands it answers.
    #[serde(default = "count_one")]
    pub count: u32,
}

fn one() -> i32 {
    1
}

fn count_one() -> u32 {
    1
}

/// One command pvesim was asked to run.
#[derive(Debug, Clone, Serialize)]
pub struct ExecRecord {
    /// The node it was sent to.
    pub node: String,
    /// The container, when it was a `pct exec`.
    pub vmid: Option<u32>,
    /// The whole command line.
    pub argv: Vec<String>,
    /// What it was sent on stdin, with secret values masked (`export X_PASSWORD='***'`).
    pub script: String,
    /// The exit code it answered.
    pub code: i32,
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecOutput {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

#[derive(Deserialize)]
struct ExecRequest {
    node: String,
    argv: Vec<String>,
    #[serde(default)]
    stdin: String,
}

impl ExecOutput {
    fn new(code: i32, stdout: impl Into<String>, stderr: impl Into<String>) -> Self {
        Self {
            code,
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }
}

/// Masks the values of `export NAME=...` lines whose name says it holds a secret.
fn mask(script: &str) -> String {
    script
        .lines()
        .map(|line| {
            let Some(rest) = line.strip_prefix("export ") else {
                return line.to_string();
            };
            let Some((name, _)) = rest.split_once('=') else {
                return line.to_string();
            };
            let upper = name.to_ascii_uppercase();
            if ["PASSWORD", "SECRET", "TOKEN", "KEY"].iter().any(|w| upper.contains(w)) {
                format!("export {name}='***'")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl SimState {
    /// Runs `argv` on `node` as `pct` would; `Err` when the node cannot be reached.
    pub(crate) fn exec(&mut self, node: &str, argv: &[String], stdin: &[u8]) -> Result<ExecOutput, ApiError> {
        if !self.has_node(node) || self.down.contains(node) {
            return Err(ApiError::new(595, format!("no route to host {node}")));
        }
        self.tick();
        let script = String::from_utf8_lossy(stdin).into_owned();
        let (vmid, out) = self.pct(node, argv, &script);
        self.execs.push(ExecRecord {
            node: node.to_string(),
            vmid,
            argv: argv.to_vec(),
            script: mask(&script),
            code: out.code,
        });
        Ok(out)
    }

    fn pct(&mut self, node: &str, argv: &[String], script: &str) -> (Option<u32>, ExecOutput) {
        // `pct exec VMID -- CMD...`, after whatever runs pct (`sudo pct`).
        let Some(at) = argv.iter().position(|a| a == "pct") else {
            let first = argv.first().map_or("", String::as_str);
            return (
                None,
                ExecOutput::new(
                    127,
                    "",
                    format!("pvesim: only `pct exec` is simulated, not `{first}`\n"),
                ),
            );
        };
        let rest = &argv[at + 1..];
        let (Some("exec"), Some(id), Some("--")) = (
            rest.first().map(String::as_str),
            rest.get(1),
            rest.get(2).map(String::as_str),
        ) else {
            return (
                None,
                ExecOutput::new(
                    255,
                    "",
                    "400 unable to parse command: pvesim simulates `pct exec VMID -- CMD`\n",
                ),
            );
        };
        let Ok(vmid) = id.parse::<u32>() else {
            return (
                None,
                ExecOutput::new(
                    255,
                    "",
                    format!(
                        "400 Parameter verification failed.\nvmid: invalid format - value '{id}' does not look like a valid VM ID\n"
                    ),
                ),
            );
        };
        let cmd = &rest[3..];
        match self.containers.get(&vmid) {
            Some(ct) if ct.node == node && ct.running => {}
            Some(ct) if ct.node == node => {
                return (Some(vmid), ExecOutput::new(255, "", format!("CT {vmid} not running\n")));
            }
            _ => {
                return (
                    Some(vmid),
                    ExecOutput::new(
                        255,
                        "",
                        format!("Configuration file 'nodes/{node}/lxc/{vmid}.conf' does not exist\n"),
                    ),
                );
            }
        }
        let first = cmd.first().map_or("", String::as_str);
        if let Some(i) = self
            .exec_faults
            .iter()
            .position(|f| f.count > 0 && f.command.as_deref().is_none_or(|c| c == first))
        {
            let f = &mut self.exec_faults[i];
            f.count -= 1;
            let out = ExecOutput::new(f.code, f.stdout.clone(), f.stderr.clone());
            if f.count == 0 {
                self.exec_faults.remove(i);
            }
            return (Some(vmid), out);
        }
        let out = match cmd {
            [] => ExecOutput::new(255, "", "missing command\n"),
            [b, s, ..] if b == "bash" && s == "-s" => {
                self.installed.insert(vmid);
                ExecOutput::new(
                    0,
                    format!(
                        "pvesim: ran a {}-line script in CT {vmid} (simulated; nothing was installed)\n",
                        script.lines().count()
                    ),
                    "",
                )
            }
            [wp, core, check, ..] if wp == "wp" && core == "core" && check == "is-installed" => {
                ExecOutput::new(i32::from(!self.installed.contains(&vmid)), "", "")
            }
            _ => ExecOutput::new(0, "", ""),
        };
        (Some(vmid), out)
    }
}

/// Handles `/_sim/exec...` (authorized like the API).
pub(crate) fn control(sim: &Sim, method: &str, path: &str, body: &[u8]) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match (method, path) {
        ("POST", "/exec") => {
            let req = match serde_json::from_slice::<ExecRequest>(body) {
                Ok(r) => r,
                Err(e) => return ApiError::new(400, format!("bad exec: {e}")).into_response(),
            };
            let stdin = match base64::engine::general_purpose::STANDARD.decode(req.stdin.as_bytes()) {
                Ok(b) => b,
                Err(e) => return ApiError::new(400, format!("bad exec: stdin is not base64: {e}")).into_response(),
            };
            let answer = sim.lock().exec(&req.node, &req.argv, &stdin);
            match answer {
                Ok(out) => crate::ok(json!(out)),
                Err(e) => e.into_response(),
            }
        }
        ("GET", "/exec") => crate::ok(json!(sim.lock().execs)),
        ("POST", "/exec/fail") => match serde_json::from_slice::<ExecFault>(body) {
            Ok(f) => {
                sim.lock().exec_faults.push(f);
                crate::ok(Value::Null)
            }
            Err(e) => ApiError::new(400, format!("bad exec fault: {e}")).into_response(),
        },
        _ => ApiError::new(501, format!("Method '{method} /_sim{path}' not implemented")).into_response(),
    }
}

impl Sim {
    /// Runs a command as `POST /_sim/exec` would (for tests in the same process).
    pub fn exec(&self, node: &str, argv: &[&str], stdin: &[u8]) -> Result<ExecOutput, String> {
        let argv: Vec<String> = argv.iter().map(|a| (*a).to_string()).collect();
        self.lock().exec(node, &argv, stdin).map_err(|e| e.message)
    }

    /// Makes the next matching simulated commands answer as `fault` says.
    pub fn fail_exec(&self, fault: ExecFault) {
        self.lock().exec_faults.push(fault);
    }

    /// The commands run so far.
    pub fn execs(&self) -> Vec<ExecRecord> {
        self.lock().execs.clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::SimConfig;

    fn sim_with_ct(running: bool) -> Sim {
        let sim = Sim::new(SimConfig::default());
        sim.populate(101, 1, crate::Load::default());
        if !running {
            sim.lock().containers.get_mut(&101).unwrap().running = false;
        }
        sim
    }

    #[test]
    fn a_script_installs_and_wp_reports_it_only_afterwards() {
        let sim = sim_with_ct(true);
        let node = sim.lock().containers[&101].node.clone();
        let wp = ["pct", "exec", "101", "--", "wp", "core", "is-installed"];
        assert_eq!(sim.exec(&node, &wp, b"").unwrap().code, 1);
        assert_eq!(
            sim.exec(&node, &["pct", "exec", "101", "--", "true"], b"")
                .unwrap()
                .code,
            0
        );
        let out = sim
            .exec(
                &node,
                &["sudo", "pct", "exec", "101", "--", "bash", "-s", "--", "https://x"],
                b"export PVEFLEET_DB_PASSWORD='hunter2'\necho hi\n",
            )
            .unwrap();
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(sim.exec(&node, &wp, b"").unwrap().code, 0);
        let records = sim.execs();
        assert_eq!(records.len(), 4);
        assert_eq!(records[2].vmid, Some(101));
        assert_eq!(records[2].script, "export PVEFLEET_DB_PASSWORD='***'\necho hi");
        assert!(!format!("{records:?}").contains("hunter2"));
    }

    #[test]
    fn stopped_missing_and_unreachable_containers_answer_like_pct() {
        let sim = sim_with_ct(false);
        let node = sim.lock().containers[&101].node.clone();
        let out = sim.exec(&node, &["pct", "exec", "101", "--", "true"], b"").unwrap();
        assert_eq!((out.code, out.stderr.as_str()), (255, "CT 101 not running\n"));
        let out = sim.exec(&node, &["pct", "exec", "999", "--", "true"], b"").unwrap();
        assert!(out.stderr.contains("lxc/999.conf' does not exist"), "{out:?}");
        let out = sim.exec(&node, &["rm", "-rf", "/"], b"").unwrap();
        assert_eq!(out.code, 127);
        sim.set_node_down(&node, true);
        assert!(sim.exec(&node, &["pct", "exec", "101", "--", "true"], b"").is_err());
        assert!(sim.exec("nowhere", &["pct", "exec", "101", "--", "true"], b"").is_err());
    }

    #[test]
    fn a_fault_answers_the_matching_command_count_times() {
        let sim = sim_with_ct(true);
        let node = sim.lock().containers[&101].node.clone();
        sim.fail_exec(ExecFault {
            command: Some("bash".into()),
            code: 3,
            stdout: String::new(),
            stderr: "E: Unable to locate package php-fpm\n".into(),
            count: 1,
        });
        let t = ["pct", "exec", "101", "--", "true"];
        assert_eq!(sim.exec(&node, &t, b"").unwrap().code, 0, "another command is not hit");
        let bash = ["pct", "exec", "101", "--", "bash", "-s"];
        let out = sim.exec(&node, &bash, b"").unwrap();
        assert_eq!(
            (out.code, out.stderr.as_str()),
            (3, "E: Unable to locate package php-fpm\n")
        );
        assert_eq!(sim.exec(&node, &bash, b"").unwrap().code, 0, "the fault is used up");
    }
}
