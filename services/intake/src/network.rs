//! Network hotplug and VNet bindings (scope `network:write`; reads `network:read`).
//!
//! Each write is checked first (the request, then PVE's view: the container, its interfaces,
//! the node's bridges, the VNets), so a bad request is refused with problem+json naming the
//! field and nothing reaches PVE. An accepted one becomes an operation (`pending`) and its
//! command in one transaction through the outbox; the answer is 202 with the operation's id.
//! `GET /v1/operations/{id}` follows it to `succeeded`, `pending_reboot` or `failed`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pvefleet_contracts::messages::{
    NetAttach, NetDetach, NetInterface, NetUpdate, VnetBind, VnetProvision, VnetUnbind,
};
use pvefleet_contracts::{Message, Vmid};
use pvefleet_policy::net::check::{self, Refusal};
use pvefleet_policy::net::{ops, spec, view};
use pvefleet_proxmox::client::PveClient;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::problem::Problem;
use crate::{AppState, auth, db_problem, tenancy};
use pvefleet_core::audit;
use pvefleet_policy::scopes;

fn refusal(r: Refusal) -> Problem {
    match r {
        Refusal::Invalid(i) => Problem::field(StatusCode::BAD_REQUEST, "invalid", &i.field, i.to_string()),
        Refusal::Unknown(i) => Problem::field(StatusCode::UNPROCESSABLE_ENTITY, "unknown", &i.field, i.to_string()),
        Refusal::NotFound(m) => Problem::new(StatusCode::NOT_FOUND, "not-found", m),
        Refusal::Conflict(i) => Problem::field(StatusCode::CONFLICT, "exists", &i.field, i.to_string()),
        Refusal::Unavailable(m) => Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
    }
}

fn pve(st: &AppState) -> Result<&PveClient, Problem> {
    st.pve.as_ref().ok_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Intake has no Proxmox VE connection (set pve.url and its credentials).",
        )
    })
}

use crate::vmid;

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let invalid = |e: serde_json::Error| {
        let msg = e.to_string();
        // serde names an unknown field as "unknown field `x`"; that is the field at fault.
        let field = msg
            .split('`')
            .nth(1)
            .filter(|_| msg.starts_with("unknown field"))
            .unwrap_or("body")
            .to_string();
        Problem::field(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            &field,
            format!("The body is not a valid request: {msg}"),
        )
    };
    let mut v: Value = serde_json::from_slice(bytes).map_err(invalid)?;
    crate::problem::whole_numbers(&mut v);
    // An index past what the type holds would otherwise be refused without naming it.
    let index = v
        .get("index")
        .or_else(|| v.get("interface").and_then(|i| i.get("index")));
    if let Some(i) = index.and_then(Value::as_i64).filter(|i| !(0..=31).contains(i)) {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "invalid",
            "index",
            format!("index: {i} is out of range: a container has net0 to net31"),
        ));
    }
    serde_json::from_value(v).map_err(invalid)
}

/// Records the operation and queues its command, together.
async fn accept<M: Message>(
    st: &AppState,
    caller: &auth::Caller,
    op: Uuid,
    kind: &str,
    vmid: Option<u32>,
    vnet: Option<&str>,
    cmd: &M,
) -> Result<Response, Problem> {
    let mut client = st.pool.get().await.map_err(db_problem)?;
    let tx = client.transaction().await.map_err(db_problem)?;
    let request = serde_json::to_value(cmd).map_err(db_problem)?;
    ops::create(&*tx, op, kind, vmid, vnet, &request, Some(&caller.name))
        .await
        .map_err(db_problem)?;
    let target = match (vmid, vnet) {
        (Some(v), _) => format!("lxc/{v}"),
        (None, Some(n)) => format!("vnet/{n}"),
        (None, None) => "network".to_string(),
    };
    crate::enqueue(&tx, cmd, op, &target).await?;
    let mut entry = audit::Entry::new(kind, target)
        .outcome("accepted")
        .detail(json!({ "operation_id": op, "request": request }));
    if let Some(v) = vmid {
        entry.owner = tenancy::vmid_owner(&*tx, v).await?;
    }
    audit::record(&*tx, &caller.actor(), &entry).await.map_err(db_problem)?;
    tx.commit().await.map_err(db_problem)?;
    if let Some(p) = &st.poke {
        p.notify_one();
    }
    let location = format!("/v1/operations/{op}");
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location.clone())],
        Json(json!({ "operation_id": op, "kind": kind, "status": "pending", "location": location })),
    )
        .into_response())
}

/// Attach an interface to a container.
#[utoipa::path(post, path = "/v1/containers/{vmid}/interfaces",
    responses((status = 202), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn attach(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    bytes: Bytes,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::NETWORK_WRITE).await?;
    let vmid = vmid(&raw)?;
    tenancy::container(&st.pool, &caller, vmid).await?;
    let iface: NetInterface = body(&bytes)?;
    check::attach(pve(&st)?, &st.settings.nethotplug, vmid, &iface, false)
        .await
        .map_err(refusal)?;
    let op = Uuid::now_v7();
    let vnet = iface.vnet.clone();
    let cmd = NetAttach {
        operation_id: op,
        vmid: Vmid(vmid),
        iface,
    };
    accept(&st, &caller, op, NetAttach::TYPE, Some(vmid), vnet.as_deref(), &cmd).await
}

/// Change an interface.
#[utoipa::path(patch, path = "/v1/containers/{vmid}/interfaces/{name}",
    responses((status = 202), (status = 400, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn update(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((raw, name)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::NETWORK_WRITE).await?;
    let vmid = vmid(&raw)?;
    tenancy::container(&st.pool, &caller, vmid).await?;
    let index = check::parse_interface(&name).map_err(refusal)?;
    let changes: NetInterface = body(&bytes)?;
    check::update(pve(&st)?, &st.settings.nethotplug, vmid, index, &changes)
        .await
        .map_err(refusal)?;
    let op = Uuid::now_v7();
    let cmd = NetUpdate {
        operation_id: op,
        vmid: Vmid(vmid),
        index,
        changes,
    };
    accept(&st, &caller, op, NetUpdate::TYPE, Some(vmid), None, &cmd).await
}

/// Detach an interface.
#[utoipa::path(delete, path = "/v1/containers/{vmid}/interfaces/{name}",
    responses((status = 202), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub(crate) async fn detach(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((raw, name)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::NETWORK_WRITE).await?;
    let vmid = vmid(&raw)?;
    tenancy::container(&st.pool, &caller, vmid).await?;
    let index = check::parse_interface(&name).map_err(refusal)?;
    check::detach(pve(&st)?, vmid, index).await.map_err(refusal)?;
    let op = Uuid::now_v7();
    let cmd = NetDetach {
        operation_id: op,
        vmid: Vmid(vmid),
        index,
    };
    accept(&st, &caller, op, NetDetach::TYPE, Some(vmid), None, &cmd).await
}

/// A binding request: the container, its new interface, and, to create the VNet when it is
/// missing, its zone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BindRequest {
    vmid: u32,
    #[serde(default)]
    interface: NetInterface,
    #[serde(default)]
    ensure: Option<Ensure>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Ensure {
    zone: String,
    #[serde(default)]
    tag: Option<u32>,
}

/// Bind a container to a VNet (with `ensure`: create the VNet first when missing, as a saga).
#[utoipa::path(post, path = "/v1/vnets/{vnet}/bindings",
    responses((status = 202), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn bind(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(vnet): Path<String>,
    bytes: Bytes,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::NETWORK_WRITE).await?;
    spec::check_vnet(&vnet).map_err(|i| refusal(Refusal::Invalid(i)))?;
    let req: BindRequest = body(&bytes)?;
    let vmid = vmid(&req.vmid.to_string())?;
    tenancy::container(&st.pool, &caller, vmid).await?;
    if req.interface.bridge.is_some() || req.interface.vnet.as_ref().is_some_and(|v| *v != vnet) {
        return Err(Problem::field(
            StatusCode::BAD_REQUEST,
            "invalid",
            "interface.bridge",
            "A binding's interface is on the VNet of the path; give no bridge or other vnet.",
        ));
    }
    let iface = NetInterface {
        vnet: Some(vnet.clone()),
        ..req.interface
    };
    check::attach(pve(&st)?, &st.settings.nethotplug, vmid, &iface, req.ensure.is_some())
        .await
        .map_err(|r| refusal(r.within("interface")))?;
    let op = Uuid::now_v7();
    let iface = NetInterface { vnet: None, ..iface };
    match req.ensure {
        Some(e) => {
            let cmd = VnetProvision {
                operation_id: op,
                vnet: vnet.clone(),
                zone: e.zone,
                tag: e.tag,
                vmid: Vmid(vmid),
                iface,
            };
            accept(&st, &caller, op, VnetProvision::TYPE, Some(vmid), Some(&vnet), &cmd).await
        }
        None => {
            let cmd = VnetBind {
                operation_id: op,
                vnet: vnet.clone(),
                vmid: Vmid(vmid),
                iface,
            };
            accept(&st, &caller, op, VnetBind::TYPE, Some(vmid), Some(&vnet), &cmd).await
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct UnbindQuery {
    vmid: String,
    #[serde(default)]
    interface: Option<String>,
}

/// Unbind a container from a VNet (`?vmid=N[&interface=netN]`).
#[utoipa::path(delete, path = "/v1/vnets/{vnet}/bindings",
    responses((status = 202), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub(crate) async fn unbind(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(vnet): Path<String>,
    q: Result<Query<UnbindQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::NETWORK_WRITE).await?;
    let q = crate::problem::parse_query(q)?;
    spec::check_vnet(&vnet).map_err(|i| refusal(Refusal::Invalid(i)))?;
    let vmid = vmid(&q.vmid)?;
    tenancy::container(&st.pool, &caller, vmid).await?;
    let index = match &q.interface {
        Some(name) => {
            let i = check::parse_interface(name).map_err(refusal)?;
            check::unbind(pve(&st)?, vmid, i, &vnet).await.map_err(refusal)?;
            Some(i)
        }
        None => None,
    };
    let op = Uuid::now_v7();
    let cmd = VnetUnbind {
        operation_id: op,
        vnet: vnet.clone(),
        vmid: Vmid(vmid),
        index,
    };
    accept(&st, &caller, op, VnetUnbind::TYPE, Some(vmid), Some(&vnet), &cmd).await
}

/// One operation.
#[utoipa::path(get, path = "/v1/operations/{id}", responses((status = 200), (status = 404, body = Problem)))]
pub(crate) async fn operation(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::NETWORK_READ).await?;
    let id = Uuid::parse_str(&raw).map_err(|_| {
        Problem::field(
            StatusCode::BAD_REQUEST,
            "invalid",
            "id",
            format!("'{raw}' is not an id."),
        )
    })?;
    let client = st.pool.get().await.map_err(db_problem)?;
    let mut found = ops::get(&client, id).await.map_err(db_problem)?;
    if let (Some(_), Some(op)) = (&caller.owner, &found) {
        let owner = match op.vmid {
            Some(v) => tenancy::vmid_owner(&**client, v).await?,
            None => None,
        };
        if !owner.is_some_and(|o| caller.sees(&o)) {
            found = None;
        }
    }
    match found {
        Some(op) => {
            let mut v = op.to_json();
            // Not ended: the queue its command waits in, and whether any service consumes it.
            if !ops::is_final(&op.status)
                && let Some(queue) = pvefleet_contracts::routing::command_queue(&op.kind)
            {
                match st.queues.consumers(&queue).await {
                    Ok(n) => v["consumers"] = n.unwrap_or(0).into(),
                    Err(e) => v["consumers_error"] = e.into(),
                }
                v["queue"] = queue.into();
            }
            Ok(Json(v).into_response())
        }
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("No operation {id}."),
        )),
    }
}

/// A container's operations, newest first.
#[utoipa::path(get, path = "/v1/containers/{vmid}/operations", responses((status = 200)))]
pub(crate) async fn operations(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::NETWORK_READ).await?;
    let vmid = vmid(&raw)?;
    tenancy::container(&st.pool, &caller, vmid).await?;
    let client = st.pool.get().await.map_err(db_problem)?;
    let list = ops::for_vmid(&client, vmid, 100).await.map_err(db_problem)?;
    Ok(Json(Value::Array(list.iter().map(ops::Operation::to_json).collect())).into_response())
}

/// A container's interfaces from PVE's config, with bindings, leases and drift.
#[utoipa::path(get, path = "/v1/containers/{vmid}/network", responses((status = 200), (status = 404, body = Problem)))]
pub(crate) async fn container_network(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::NETWORK_READ).await?;
    let vmid = vmid(&raw)?;
    tenancy::container(&st.pool, &caller, vmid).await?;
    let client = st.pool.get().await.map_err(db_problem)?;
    match view::container_network(pve(&st)?, &client, vmid).await {
        Ok(Some(v)) => Ok(Json(v).into_response()),
        Ok(None) => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("Container {vmid} does not exist."),
        )),
        Err(e) => Err(refusal(Refusal::Unavailable(format!("{e:#}")))),
    }
}

/// The containers on a VNet, from PVE's configs and the bindings, with drift.
#[utoipa::path(get, path = "/v1/vnets/{vnet}/containers", responses((status = 200), (status = 400, body = Problem)))]
pub(crate) async fn vnet_containers(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(vnet): Path<String>,
) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::NETWORK_READ).await?;
    caller.operator("A VNet's containers (of every owner)")?;
    spec::check_vnet(&vnet).map_err(|i| refusal(Refusal::Invalid(i)))?;
    let client = st.pool.get().await.map_err(db_problem)?;
    match view::vnet_containers(pve(&st)?, &client, &vnet).await {
        Ok(v) => Ok(Json(v).into_response()),
        Err(e) => Err(refusal(Refusal::Unavailable(format!("{e:#}")))),
    }
}

/// Executions and outcomes per event type.
#[utoipa::path(get, path = "/v1/network/stats", responses((status = 200)))]
pub(crate) async fn stats(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, Problem> {
    let caller = auth::require(&st, &headers, scopes::NETWORK_READ).await?;
    caller.operator("The fleet's network statistics")?;
    let client = st.pool.get().await.map_err(db_problem)?;
    let rows = ops::stats(&client).await.map_err(db_problem)?;
    let mut by_event: std::collections::BTreeMap<String, Value> = std::collections::BTreeMap::new();
    for (event, outcome, count) in rows {
        let e = by_event.entry(event.clone()).or_insert_with(
            || json!({ "event": event, "executions": 0, "successes": 0, "pending_reboot": 0, "failures": 0 }),
        );
        let bump = |e: &mut Value, k: &str| e[k] = json!(e[k].as_i64().unwrap_or(0) + count);
        bump(e, "executions");
        match outcome.as_str() {
            "succeeded" => bump(e, "successes"),
            "pending_reboot" => {
                bump(e, "successes");
                bump(e, "pending_reboot");
            }
            _ => bump(e, "failures"),
        }
    }
    Ok(Json(Value::Array(by_event.into_values().collect())).into_response())
}
