//! pvesim: an in-memory Proxmox VE API for tests, demos and benchmarks.
//!
//! This first slice covers version, nodes, nextid, LXC create/config/status/power/destroy and
//! tasks, answering like PVE (the `{data}` envelope; 500 with PVE's messages; 501 for unknown
//! paths; `lock: create` while a create task runs; config digests), plus a fault-injection
//! control API under `/_sim`. Container configs are real config text, through the codec.

mod faults;
mod lxc;
mod rules;
mod state;
mod tasks;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub use faults::Fault;
pub use state::{SimConfig, SimState};

/// A simulator instance. Clone to share.
#[derive(Clone)]
pub struct Sim {
    pub(crate) state: Arc<Mutex<SimState>>,
}

/// A PVE-shaped failure.
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub errors: Option<serde_json::Map<String, Value>>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: message.into(),
            errors: None,
        }
    }

    pub fn params(errors: Vec<(String, String)>) -> Self {
        let map = errors.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        Self {
            status: StatusCode::BAD_REQUEST,
            message: "Parameter verification failed.".into(),
            errors: Some(map),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "data": null, "message": format!("{}\n", self.message) });
        if let Some(e) = self.errors {
            body["errors"] = Value::Object(e);
        }
        (self.status, axum::Json(body)).into_response()
    }
}

pub(crate) fn ok(data: Value) -> Response {
    axum::Json(json!({ "data": data })).into_response()
}

impl Sim {
    /// A simulator with the given nodes, version and token.
    pub fn new(config: SimConfig) -> Self {
        Self {
            state: Arc::new(Mutex::new(SimState::new(config))),
        }
    }

    /// The HTTP router: `/api2/json/...` and the control API `/_sim/...`.
    pub fn router(&self) -> Router {
        Router::new().fallback(dispatch).with_state(self.clone())
    }

    /// Locks the state (a poisoned lock is recovered: the state is plain data).
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves a new simulator on an ephemeral loopback port, in the background.
    pub async fn spawn(config: SimConfig) -> std::io::Result<(Self, std::net::SocketAddr)> {
        let sim = Self::new(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let router = sim.router();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "pvesim stopped.");
            }
        });
        Ok((sim, addr))
    }

    /// Makes the next task of type `kind` end in error with `message`.
    pub fn lock_task_error(&self, kind: &str, message: &str) {
        self.lock().task_errors.push((kind.to_string(), message.to_string()));
    }

    /// Adds a fault (for tests in the same process).
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }
}

async fn dispatch(State(sim): State<Sim>, req: Request) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let path = uri.path().to_string();
    if let Some(control) = path.strip_prefix("/_sim") {
        return faults::control(&sim, &method, control, &body);
    }
    let Some(api_path) = path.strip_prefix("/api2/json") else {
        return ApiError::new(501, format!("Method '{method} {path}' not implemented")).into_response();
    };
    // PVE rejects a body on GET and DELETE.
    if (method == Method::GET || method == Method::DELETE) && !body.is_empty() {
        return ApiError::new(501, format!("Unexpected content for method '{method}'")).into_response();
    }
    if let Err(e) = authorize(&sim, &headers) {
        return e.into_response();
    }
    let fault = sim.lock().take_fault(method.as_str(), api_path);
    if let Some(action) = fault {
        tokio::time::sleep(action.latency()).await;
        if let Some(failure) = action.failure() {
            return failure;
        }
    }
    let mut params: Vec<(String, String)> = uri
        .query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    params.extend(url::form_urlencoded::parse(&body).into_owned());
    match route(&sim, &method, api_path, params).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn authorize(sim: &Sim, headers: &HeaderMap) -> Result<(), ApiError> {
    let state = sim.lock();
    let Some((id, secret)) = &state.config.token else {
        return Ok(());
    };
    let expected = format!("PVEAPIToken={id}={secret}");
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(h) if h == expected => Ok(()),
        _ => Err(ApiError::new(401, "authentication failure")),
    }
}

async fn route(sim: &Sim, method: &Method, path: &str, params: Vec<(String, String)>) -> Result<Response, ApiError> {
    let decoded: Vec<String> = path.trim_matches('/').split('/').map(percent_decode).collect();
    let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let pve8 = sim.lock().config.version.starts_with("8.");
    rules::check(pve8, method.as_str(), &segs, &params)?;
    match (method.as_str(), segs.as_slice()) {
        ("GET", ["version"]) => Ok(ok(sim.lock().version())),
        ("GET", ["nodes"]) => Ok(ok(sim.lock().nodes())),
        ("GET", ["cluster", "nextid"]) => sim.lock().next_id(&params).map(ok),
        ("GET", ["nodes", node, "tasks", upid, "status"]) => sim.lock().task_status(node, upid).map(ok),
        ("GET", ["nodes", node, "tasks", upid, "log"]) => sim.lock().task_log(node, upid).map(ok),
        (_, ["nodes", node, "lxc", rest @ ..]) => lxc::route(sim, method.as_str(), node, rest, params),
        _ => Err(ApiError::new(
            501,
            format!("Method '{method} /{}' not implemented", path.trim_matches('/')),
        )),
    }
}

/// Decodes `%XX` escapes in a path segment (UPIDs arrive with `:` and `@` escaped).
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && segment.is_char_boundary(i + 1)
            && segment.is_char_boundary(i + 3)
            && let Ok(b) = u8::from_str_radix(&segment[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
