//! `pvefleet net attach|update|detach|list|operation|stats` and `pvefleet vnet
//! bind|unbind|containers`: network operations through the intake API. `--wait` follows the
//! operation to its end: exit 0 when it succeeded (or is pending a restart, with the keys
//! named), 1 when it failed, 2 when the request was refused.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::site::{http, problem, token};
use crate::cli::{IfaceArgs, NetAction, SiteTarget, VnetAction};

/// The interface options given, as the API takes them.
fn iface(a: &IfaceArgs) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    put("index", a.index.map(|v| json!(v)));
    put("name", a.name.as_ref().map(|v| json!(v)));
    put("bridge", a.bridge.as_ref().map(|v| json!(v)));
    put("vnet", a.vnet.as_ref().map(|v| json!(v)));
    put("hwaddr", a.hwaddr.as_ref().map(|v| json!(v)));
    put("ip", a.ip.as_ref().map(|v| json!(v)));
    put("ip6", a.ip6.as_ref().map(|v| json!(v)));
    put("gw", a.gw.as_ref().map(|v| json!(v)));
    put("gw6", a.gw6.as_ref().map(|v| json!(v)));
    put("tag", a.tag.map(|v| json!(v)));
    put("trunks", a.trunks.as_ref().map(|v| json!(v)));
    put("firewall", a.firewall.map(|v| json!(v)));
    put("link_down", a.link_down.map(|v| json!(v)));
    put("mtu", a.mtu.map(|v| json!(v)));
    put("rate", a.rate.map(|v| json!(v)));
    Value::Object(m)
}

/// Sends a request that starts an operation; prints its id, and follows it with `wait`.
async fn start(
    target: &SiteTarget,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    wait: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let token = token(target)?;
    let c = http()?;
    let mut req = c.request(method, format!("{}{path}", target.url())).bearer_auth(&token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| super::site::unreachable_intake(&target.url(), &e))?;
    if !resp.status().is_success() {
        return Ok(problem(resp).await);
    }
    let accepted: Value = resp.json().await?;
    let id = accepted["operation_id"].as_str().unwrap_or_default().to_string();
    println!("operation {id} ({}) accepted", accepted["kind"].as_str().unwrap_or("?"));
    let Some(deadline) = wait else {
        return Ok(ExitCode::SUCCESS);
    };
    follow(&c, &target.url(), &token, &id, deadline).await
}

/// Polls an operation until it ends; prints how.
async fn follow(c: &reqwest::Client, api: &str, token: &str, id: &str, deadline: Duration) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut last = String::new();
    let mut changed = Instant::now();
    let mut said_nobody = false;
    let mut status = String::from("unknown");
    let mut note = String::new();
    loop {
        if started.elapsed() > deadline {
            eprintln!(
                "error: operation {id} is still {status}{note} after {}; the work goes on: follow it with `pvefleet net operation {id} --wait`",
                humantime::format_duration(deadline)
            );
            return Ok(ExitCode::from(super::site::DEADLINE_EXIT));
        }
        // Each poll is bounded, and one that fails is tried again until the deadline.
        let poll = c
            .get(format!("{api}/v1/operations/{id}"))
            .bearer_auth(token)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let resp = match poll {
            Ok(r) => r,
            Err(e) => {
                if e.is_connect() && last.is_empty() {
                    return Err(super::site::unreachable_intake(api, &e));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if !resp.status().is_success() {
            return Ok(problem(resp).await);
        }
        let Ok(op) = resp.json::<Value>().await else {
            continue;
        };
        status = op["status"].as_str().unwrap_or("?").to_string();
        if status != last {
            if !matches!(status.as_str(), "succeeded" | "failed" | "pending_reboot") {
                println!("  {status} …");
            }
            last = status.clone();
            changed = Instant::now();
        }
        if !said_nobody
            && changed.elapsed() > Duration::from_secs(3)
            && op["consumers"].as_u64() == Some(0)
            && let Some(queue) = op["queue"].as_str()
        {
            println!(
                "  ! {status} for {:.0}s: no service consumes {queue}",
                changed.elapsed().as_secs_f64()
            );
            note = format!(" (no service consumes {queue})");
            said_nobody = true;
        }
        match status.as_str() {
            "succeeded" | "pending_reboot" => {
                println!("{}", summary(&op));
                return Ok(ExitCode::SUCCESS);
            }
            "parked" => {
                eprintln!(
                    "operation {id} is parked: {}",
                    op["error"]["message"]
                        .as_str()
                        .unwrap_or("its command is a dead letter")
                );
                return Ok(ExitCode::from(1));
            }
            "failed" => {
                let err = &op["error"];
                let nodes: Vec<&str> = op["failed_nodes"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                eprintln!(
                    "operation {id} failed: {}: {}",
                    err["code"].as_str().unwrap_or("failed"),
                    err["message"].as_str().unwrap_or("no message")
                );
                if !nodes.is_empty() {
                    eprintln!("  nodes where SDN was not applied: {}", nodes.join(", "));
                }
                if let Some(c) = op["result"]["compensation"].as_str() {
                    eprintln!("  compensation: {c}");
                }
                return Ok(ExitCode::from(1));
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn summary(op: &Value) -> String {
    let what = op["kind"].as_str().unwrap_or("?");
    let iface = op["interface"].as_str().unwrap_or("?");
    let vmid = op["vmid"].as_u64().unwrap_or_default();
    let mut out = format!(
        "{what} {iface} of container {vmid}: {}",
        op["status"].as_str().unwrap_or("?")
    );
    if let Some(line) = op["line"].as_str() {
        out.push_str(&format!("\n  {iface}: {line}"));
    }
    if op["status"] == "pending_reboot" {
        let keys: Vec<&str> = op["pending_keys"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out.push_str(&format!(
            "\n  PVE applies {} at the next restart of the container",
            keys.join(", ")
        ));
    }
    out
}

async fn get(target: &SiteTarget, path: &str) -> anyhow::Result<Result<Value, ExitCode>> {
    let token = token(target)?;
    let c = http()?;
    let resp = c
        .get(format!("{}{path}", target.url()))
        .bearer_auth(&token)
        .send()
        .await
        .map_err(|e| super::site::unreachable_intake(&target.url(), &e))?;
    if !resp.status().is_success() {
        return Ok(Err(problem(resp).await));
    }
    Ok(Ok(resp.json().await?))
}

pub async fn run_net(action: NetAction) -> anyhow::Result<ExitCode> {
    use reqwest::Method;
    match action {
        NetAction::Attach {
            vmid,
            iface: a,
            wait,
            deadline,
            target,
        } => {
            start(
                &target,
                Method::POST,
                &format!("/v1/containers/{vmid}/interfaces"),
                Some(iface(&a)),
                wait.then_some(deadline),
            )
            .await
        }
        NetAction::Update {
            vmid,
            interface,
            iface: a,
            wait,
            deadline,
            target,
        } => {
            let path = format!("/v1/containers/{vmid}/interfaces/{interface}");
            start(&target, Method::PATCH, &path, Some(iface(&a)), wait.then_some(deadline)).await
        }
        NetAction::Detach {
            vmid,
            interface,
            wait,
            deadline,
            target,
        } => {
            let path = format!("/v1/containers/{vmid}/interfaces/{interface}");
            start(&target, Method::DELETE, &path, None, wait.then_some(deadline)).await
        }
        NetAction::List { vmid, json, target } => {
            let net = match get(&target, &format!("/v1/containers/{vmid}/network")).await? {
                Ok(v) => v,
                Err(code) => return Ok(code),
            };
            let ops = match get(&target, &format!("/v1/containers/{vmid}/operations")).await? {
                Ok(v) => v,
                Err(code) => return Ok(code),
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "network": net, "operations": ops }))?
                );
                return Ok(ExitCode::SUCCESS);
            }
            println!("container {vmid} on {}", net["node"].as_str().unwrap_or("?"));
            println!(
                "{:<7} {:<8} {:<10} {:<19} {:<18} LINE",
                "IFACE", "STATE", "VNET", "HWADDR", "IP"
            );
            for i in net["interfaces"].as_array().into_iter().flatten() {
                let state = if i["pending_delete"] == true {
                    "deleting"
                } else if i["pending"] == true {
                    "pending"
                } else {
                    "live"
                };
                println!(
                    "{:<7} {:<8} {:<10} {:<19} {:<18} {}",
                    i["interface"].as_str().unwrap_or("?"),
                    state,
                    i["vnet_binding"].as_str().unwrap_or("-"),
                    i["hwaddr"].as_str().unwrap_or("-"),
                    i["ip"].as_str().unwrap_or("-"),
                    i["line"].as_str().unwrap_or("")
                );
            }
            for d in net["drift"].as_array().into_iter().flatten() {
                println!("drift: {}", d.as_str().unwrap_or_default());
            }
            let recent: Vec<&Value> = ops.as_array().into_iter().flatten().take(10).collect();
            if !recent.is_empty() {
                println!("recent operations:");
                for o in recent {
                    println!(
                        "  {} {:<12} {:<15} {}",
                        o["id"].as_str().unwrap_or("?"),
                        o["kind"].as_str().unwrap_or("?"),
                        o["status"].as_str().unwrap_or("?"),
                        o["interface"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        NetAction::Operation {
            id,
            wait,
            deadline,
            target,
        } => {
            if wait {
                let token = token(&target)?;
                return follow(&http()?, &target.url(), &token, &id, deadline).await;
            }
            match get(&target, &format!("/v1/operations/{id}")).await? {
                Ok(v) => {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(code) => Ok(code),
            }
        }
        NetAction::Stats { target } => {
            let stats = match get(&target, "/v1/network/stats").await? {
                Ok(v) => v,
                Err(code) => return Ok(code),
            };
            println!(
                "{:<22} {:>10} {:>10} {:>15} {:>9}",
                "EVENT", "EXECUTIONS", "SUCCESSES", "PENDING_REBOOT", "FAILURES"
            );
            for s in stats.as_array().into_iter().flatten() {
                println!(
                    "{:<22} {:>10} {:>10} {:>15} {:>9}",
                    s["event"].as_str().unwrap_or("?"),
                    s["executions"].as_i64().unwrap_or(0),
                    s["successes"].as_i64().unwrap_or(0),
                    s["pending_reboot"].as_i64().unwrap_or(0),
                    s["failures"].as_i64().unwrap_or(0)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn run_vnet(action: VnetAction) -> anyhow::Result<ExitCode> {
    use reqwest::Method;
    match action {
        VnetAction::Bind {
            vnet,
            vmid,
            ensure_zone,
            ensure_tag,
            iface: a,
            wait,
            deadline,
            target,
        } => {
            let mut body = json!({ "vmid": vmid, "interface": iface(&a) });
            if let Some(zone) = ensure_zone {
                body["ensure"] = json!({ "zone": zone, "tag": ensure_tag });
            }
            start(
                &target,
                Method::POST,
                &format!("/v1/vnets/{vnet}/bindings"),
                Some(body),
                wait.then_some(deadline),
            )
            .await
        }
        VnetAction::Unbind {
            vnet,
            vmid,
            interface,
            wait,
            deadline,
            target,
        } => {
            let mut path = format!("/v1/vnets/{vnet}/bindings?vmid={vmid}");
            if let Some(i) = interface {
                path.push_str(&format!("&interface={i}"));
            }
            start(&target, Method::DELETE, &path, None, wait.then_some(deadline)).await
        }
        VnetAction::Containers { vnet, json, target } => {
            let v = match get(&target, &format!("/v1/vnets/{vnet}/containers")).await? {
                Ok(v) => v,
                Err(code) => return Ok(code),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("{:<10} {:<7} {:<8} {:<11} LINE", "VMID", "IFACE", "NODE", "STATE");
            for c in v["containers"].as_array().into_iter().flatten() {
                println!(
                    "{:<10} {:<7} {:<8} {:<11} {}",
                    c["vmid"].as_u64().unwrap_or_default(),
                    c["interface"].as_str().unwrap_or("?"),
                    c["node"].as_str().unwrap_or("-"),
                    c["state"].as_str().unwrap_or("?"),
                    c["line"].as_str().unwrap_or("")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
