//! pvesim: an in-memory Proxmox VE API for tests, demos and benchmarks.
//!
//! It answers the endpoints the fleet uses the way PVE does (pve-behaviour.md): the `{data}`
//! envelope; every request checked against the official schema's rules (400 with an `errors`
//! map); 500 with PVE's messages; 501 for unknown paths and for PVE 9 paths in PVE 8 mode;
//! 403 for missing privileges; `lock: create` while a create task runs; config digests;
//! pending changes and hotplug rules on running containers; snapshots; HA resources, groups
//! and rules; SDN changes pending until applied; `/cluster/resources` driven by per-container
//! load profiles. Container configs are real config text, through the codec. A control API
//! under `/_sim` injects faults.

mod cluster;
mod faults;
mod ha;
mod lxc;
mod rules;
mod sdn;
mod state;
mod tasks;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub use faults::Fault;
pub use state::{ALL_PRIVILEGES, Load, Recorded, SimConfig, SimState};

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

impl ApiError {
    /// PVE before libpve-http-server 5.2 sent the message only as the reason phrase.
    fn into_reason_phrase(self) -> Response {
        let mut resp = (self.status, axum::body::Body::empty()).into_response();
        let phrase = self.message.replace(['\r', '\n'], " ");
        if let Ok(p) = hyper::ext::ReasonPhrase::try_from(phrase.trim().as_bytes().to_vec()) {
            resp.extensions_mut().insert(p);
        }
        resp
    }
}

/// PVE gzips answers longer than this for clients that accept gzip.
pub(crate) const GZIP_OVER: usize = 1024;

/// Gzips a body (fast level: the simulator answers, it does not archive).
pub(crate) fn gzip(body: &[u8]) -> axum::body::Bytes {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
    match enc.write_all(body).and_then(|()| enc.finish()) {
        Ok(v) => v.into(),
        Err(_) => axum::body::Bytes::copy_from_slice(body),
    }
}

/// An envelope as a response, gzipped when the client accepts it and it is long enough.
fn envelope(body: axum::body::Bytes, gzipped: bool, accept_gzip: bool) -> Response {
    use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE};
    let json = (CONTENT_TYPE, "application/json;charset=UTF-8");
    if gzipped {
        return ([json, (CONTENT_ENCODING, "gzip")], body).into_response();
    }
    if accept_gzip && body.len() > GZIP_OVER {
        return ([json, (CONTENT_ENCODING, "gzip")], gzip(&body)).into_response();
    }
    ([json], body).into_response()
}

/// The value of a request parameter.
pub(crate) fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
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

    /// Serves a new simulator over HTTPS on an ephemeral loopback port, with the given PEM
    /// certificate chain and private key, as PVE serves its API.
    pub async fn spawn_tls(
        config: SimConfig,
        cert_chain_pem: &[u8],
        key_pem: &[u8],
    ) -> std::io::Result<(Self, std::net::SocketAddr)> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad(format!("key: {e}")))?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| bad(e.to_string()))?;
        let sim = Self::new(config);
        let listener = TlsListener {
            tcp: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            acceptor: tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls)),
        };
        let addr = listener.tcp.local_addr()?;
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

    /// Makes every SDN apply from now on fail on `node`: the task still ends OK (PVE only
    /// warns), and the node's zones show `error`.
    pub fn fail_sdn_on(&self, node: &str) {
        self.lock().sdn_failing.insert(node.to_string());
    }

    /// Drops every queued fault, task error and failing SDN node.
    pub fn clear_faults(&self) {
        let mut s = self.lock();
        s.faults.clear();
        s.task_errors.clear();
        s.sdn_failing.clear();
    }

    /// Makes about `rate` of all API calls fail the ways PVE fails transiently, until the
    /// faults are cleared: a config lock timeout, a 596 (the node did not answer), and "got no
    /// worker upid", tried in turn, each at the share that makes `rate` together.
    pub fn fail_transiently(&self, rate: f64) {
        let each = 1.0 - (1.0 - rate.clamp(0.0, 1.0)).powf(1.0 / 3.0);
        for (status, message) in [
            (
                500,
                "can't lock file '/run/lock/lxc/pve-config-10000.lock' - got timeout",
            ),
            (596, "Connection timed out"),
            (500, "got no worker upid - start worker failed"),
        ] {
            self.inject(Fault {
                method: None,
                path: "/".into(),
                count: 1,
                status,
                message: message.into(),
                latency_ms: 0,
                rate: each,
            });
        }
    }

    /// Adds a fault (for tests in the same process).
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Sets a container's measured load, as `/cluster/resources` will report it.
    pub fn set_load(&self, vmid: u32, load: Load) {
        let mut s = self.lock();
        s.loads.insert(vmid, load);
        s.touch();
    }

    /// Takes a node down (calls proxied to it answer 595) or brings it back.
    pub fn set_node_down(&self, node: &str, down: bool) {
        let mut s = self.lock();
        if down {
            s.down.insert(node.to_string());
        } else {
            s.down.remove(node);
        }
        s.touch();
    }

    /// Sets (or, with `None`, clears) a container's PVE lock, as a backup or migration would
    /// hold it. Returns whether the container exists.
    pub fn set_lock(&self, vmid: u32, lock: Option<&str>) -> bool {
        let mut s = self.lock();
        let Some(ct) = s.containers.get_mut(&vmid) else {
            return false;
        };
        match lock {
            Some(l) => ct.config.main_mut().set("lock", l),
            None => drop(ct.config.main_mut().remove("lock")),
        }
        s.touch();
        true
    }

    /// The API requests received so far (with `record_requests`).
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// A container's config file text, if it exists.
    pub fn config_text(&self, vmid: u32) -> Option<String> {
        let mut s = self.lock();
        s.tick();
        s.containers.get(&vmid).map(|c| c.config.write())
    }

    /// Adds `count` running containers from `first` with the given load, spread over the
    /// nodes, without tasks: for load profiles and benchmarks.
    pub fn populate(&self, first: u32, count: u32, load: Load) {
        let mut s = self.lock();
        let nodes = s.config.nodes.clone();
        for i in 0..count {
            let vmid = first + i;
            let node = nodes[(i as usize) % nodes.len().max(1)].clone();
            let text = format!(
                "arch: amd64\ncores: 2\nhostname: ct{vmid}\nmemory: 2048\nnet0: name=eth0,bridge=vmbr0,hwaddr=BC:24:11:{:02X}:{:02X}:{:02X},ip=dhcp,type=veth\nostype: debian\nrootfs: local-lvm:vm-{vmid}-disk-0,size=8G\nswap: 512\ntags: fleet\nunprivileged: 1\n",
                (vmid >> 16) & 0xff,
                (vmid >> 8) & 0xff,
                vmid & 0xff
            );
            if let Ok(config) = pvefleet_proxmox::ConfigFile::parse(&text) {
                s.containers.insert(
                    vmid,
                    state::Ct {
                        node,
                        config,
                        running: true,
                        started: Some(std::time::Instant::now()),
                    },
                );
                s.loads.insert(vmid, load);
            }
        }
        s.touch();
    }
}

/// Accepts TCP connections and completes the TLS handshake; a failed handshake (a client that
/// does not trust the certificate) is dropped and the next connection accepted.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
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
    let reason_phrase = sim.lock().config.reason_phrase_errors;
    let answer = |e: ApiError| {
        if reason_phrase {
            e.into_reason_phrase()
        } else {
            e.into_response()
        }
    };
    let Some(api_path) = path.strip_prefix("/api2/json") else {
        return answer(ApiError::new(501, format!("Method '{method} {path}' not implemented")));
    };
    // PVE rejects a body on GET and DELETE.
    if (method == Method::GET || method == Method::DELETE) && !body.is_empty() {
        return answer(ApiError::new(501, format!("Unexpected content for method '{method}'")));
    }
    let mut params: Vec<(String, String)> = uri
        .query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    params.extend(url::form_urlencoded::parse(&body).into_owned());
    let decoded: Vec<String> = api_path.trim_matches('/').split('/').map(percent_decode).collect();
    {
        let mut s = sim.lock();
        if s.config.record_requests {
            s.requests.push(Recorded {
                method: method.to_string(),
                path: format!("/{}", decoded.join("/")),
                params: params.clone(),
                status: 0,
                response: None,
            });
        }
    }
    let login = method == Method::POST && api_path == "/access/ticket";
    if !login && let Err(e) = authorize(&sim, &method, &headers) {
        return answer(e);
    }
    let fault = sim.lock().take_fault(method.as_str(), api_path);
    if let Some(action) = fault {
        tokio::time::sleep(action.latency()).await;
        if let Some(failure) = action.failure(reason_phrase) {
            return failure;
        }
    }
    let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let accept_gzip = headers
        .get(axum::http::header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let reply = route(&sim, &method, &segs, &params, accept_gzip);
    let mut s = sim.lock();
    if s.config.record_requests
        && let Some(last) = s.requests.last_mut()
    {
        last.status = match &reply {
            Ok(_) => 200,
            Err(e) => e.status.as_u16(),
        };
        last.response = match &reply {
            Ok(Reply::Data(v)) => Some(v.clone()),
            Ok(Reply::Raw(bytes, gzipped)) => {
                let mut text = Vec::new();
                let plain: &[u8] = if *gzipped {
                    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text).ok();
                    &text
                } else {
                    bytes
                };
                serde_json::from_slice::<Value>(plain)
                    .ok()
                    .map(|mut v| v["data"].take())
            }
            Err(_) => None,
        };
    }
    drop(s);
    match reply {
        Ok(Reply::Data(v)) => {
            let body = serde_json::to_vec(&json!({ "data": v })).unwrap_or_default();
            envelope(body.into(), false, accept_gzip)
        }
        Ok(Reply::Raw(bytes, gzipped)) => envelope(bytes, gzipped, accept_gzip),
        Err(e) => answer(e),
    }
}

/// A successful answer: `data` to wrap, or a whole rendered envelope (and whether gzipped).
enum Reply {
    Data(Value),
    Raw(axum::body::Bytes, bool),
}

fn authorize(sim: &Sim, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    let state = sim.lock();
    if state.config.token.is_none() && state.config.password.is_none() {
        return Ok(());
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let (Some((id, secret)), Some(h)) = (&state.config.token, header("authorization"))
        && h == format!("PVEAPIToken={id}={secret}")
    {
        return Ok(());
    }
    let ticket = header("cookie").and_then(|c| {
        c.split(';')
            .find_map(|kv| kv.trim().strip_prefix("PVEAuthCookie="))
            .map(str::to_string)
    });
    if let Some(csrf) = ticket.and_then(|t| state.tickets.get(&t)) {
        // Writes also need the CSRF token that came with the ticket.
        if *method == Method::GET || header("csrfpreventiontoken") == Some(csrf.as_str()) {
            return Ok(());
        }
        return Err(ApiError::new(401, "Permission denied - invalid csrf token"));
    }
    Err(ApiError::new(401, "authentication failure"))
}

fn route(
    sim: &Sim,
    method: &Method,
    segs: &[&str],
    params: &[(String, String)],
    accept_gzip: bool,
) -> Result<Reply, ApiError> {
    let mut s = sim.lock();
    let pve8 = s.pve8();
    rules::check(pve8, method.as_str(), segs, params)?;
    s.tick();
    if method != Method::GET {
        s.touch();
    }
    let m = method.as_str();
    let data = match (m, segs) {
        ("GET", ["version"]) => s.version(),
        ("POST", ["access", "ticket"]) => s.login(params)?,
        ("GET", ["access", "permissions"]) => s.permissions(),
        ("GET", ["nodes"]) => s.nodes(),
        ("GET", ["cluster", "nextid"]) => s.next_id(params)?,
        ("GET", ["cluster", "resources"]) => {
            let (body, gzipped) = s.resources(param(params, "type"), accept_gzip);
            return Ok(Reply::Raw(body, gzipped));
        }
        ("GET", ["cluster", "tasks"]) => {
            let nodes = s.config.nodes.clone();
            Value::Array(
                nodes
                    .iter()
                    .flat_map(|n| s.task_list(n).as_array().cloned().unwrap_or_default())
                    .collect(),
            )
        }
        (_, ["cluster", "ha", rest @ ..]) => ha::route(&mut s, m, rest, params)?,
        (_, ["cluster", "sdn", rest @ ..]) => sdn::route(&mut s, m, rest, params)?,
        ("GET", ["nodes", node, "status"]) => s.node_status(node)?,
        ("GET", ["nodes", node, "tasks"]) => {
            s.reachable(node)?;
            s.task_list(node)
        }
        ("GET", ["nodes", node, "tasks", upid, "status"]) => {
            s.reachable(node)?;
            s.task_status(node, upid)?
        }
        ("GET", ["nodes", node, "tasks", upid, "log"]) => {
            s.reachable(node)?;
            s.task_log(node, upid, params)?
        }
        ("GET", ["nodes", node, "storage", storage, "content"]) => s.storage_content(node, storage, params)?,
        ("GET", ["nodes", node, "sdn", rest @ ..]) => sdn::node_route(&mut s, node, rest)?,
        ("GET", ["nodes", node, "network"]) => s.node_network(node, params)?,
        (_, ["nodes", node, "lxc", rest @ ..]) => lxc::route(&mut s, m, node, rest, params)?,
        _ => {
            return Err(ApiError::new(
                501,
                format!("Method '{method} /{}' not implemented", segs.join("/")),
            ));
        }
    };
    Ok(Reply::Data(data))
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
