//! `pvefleet sim ...`: pvesim's fault-injection control API (`/_sim`) from the command line,
//! against the simulator at `pve.url`.

use std::process::ExitCode;

use serde_json::{Value, json};

use crate::cli::SimAction;

pub async fn run(settings: &pvefleet_core::Settings, action: SimAction) -> anyhow::Result<ExitCode> {
    let (path, body) = match action {
        SimAction::Fault {
            path,
            method,
            status,
            message,
            count,
            latency_ms,
            fail,
        } => {
            // A delay alone answers normally afterwards: pvesim reads status 0 with a latency so.
            let status = if latency_ms > 0 && !fail { 0 } else { status };
            (
                "/_sim/faults".to_string(),
                json!({ "path": path, "method": method, "status": status, "message": message, "count": count, "latency_ms": latency_ms }),
            )
        }
        SimAction::TaskError { kind, message } => (
            "/_sim/task-error".to_string(),
            json!({ "kind": kind, "message": message }),
        ),
        SimAction::Node { node, state } => (format!("/_sim/nodes/{node}/{state}"), Value::Null),
        SimAction::Load { vmid, cpu, mem_mib } => (
            "/_sim/load".to_string(),
            json!({ "vmid": vmid, "cpu": cpu, "mem": mem_mib << 20 }),
        ),
        SimAction::ExecFail {
            command,
            code,
            stderr,
            stdout,
            count,
        } => (
            "/_sim/exec/fail".to_string(),
            json!({ "command": (command != "any").then_some(command), "code": code, "stderr": unescape(&stderr), "stdout": unescape(&stdout), "count": count }),
        ),
        SimAction::Execs => ("/_sim/exec".to_string(), Value::Null),
        SimAction::Clear => ("/_sim/faults".to_string(), Value::Null),
    };
    pvefleet_proxmox::client::tls::provider();
    let http = reqwest::Client::builder()
        .timeout(settings.pve.request_timeout)
        .build()?;
    let url = format!("{}{path}", settings.pve.url.trim_end_matches('/'));
    let mut req = if path == "/_sim/faults" && body.is_null() {
        http.delete(&url)
    } else if path == "/_sim/exec" {
        http.get(&url)
    } else {
        http.post(&url)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body)?)
    };
    // The simulated pct exec takes the API's credentials.
    if let (Some(id), Some(secret)) = (&settings.pve.token_id, &settings.pve.token_secret) {
        req = req.header("authorization", format!("PVEAPIToken={id}={}", secret.expose()));
    }
    let resp = req
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach pvesim at {}: {e}", settings.pve.url))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if status.is_success() && path == "/_sim/exec" {
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        println!("{}", serde_json::to_string_pretty(&v["data"])?);
        Ok(ExitCode::SUCCESS)
    } else if status.is_success() {
        println!("ok");
        Ok(ExitCode::SUCCESS)
    } else {
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(|m| m.trim().to_string()))
            .unwrap_or(text);
        eprintln!("error: pvesim answered {status}: {message}");
        Ok(ExitCode::FAILURE)
    }
}

/// `\n` and `\t` typed on a command line as the characters they name.
fn unescape(s: &str) -> String {
    s.replace("\\n", "\n").replace("\\t", "\t")
}
