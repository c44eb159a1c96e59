//! Small fakes of Cloudflare's DNS API v4 and Nginx Proxy Manager's API, written from their
//! documented behaviour (edge-installer.md §1.1 and §2.1): the envelopes, the error codes the
//! edge service relies on (81044, 81058, "already in use"), token login and expiry, and
//! injectable 429/5xx answers.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
}

// ---------------------------------------------------------------- Cloudflare

/// One DNS record.
#[derive(Clone, Debug)]
pub struct CfRecord {
    pub id: String,
    pub kind: String,
    pub name: String,
    pub content: String,
    pub ttl: u64,
    pub proxied: bool,
    pub comment: String,
}

#[derive(Default)]
pub struct CfState {
    pub token: String,
    pub zone_id: String,
    pub zone: String,
    pub records: Vec<CfRecord>,
    /// Statuses to answer the next requests with, before serving normally.
    pub fail_next: VecDeque<u16>,
    /// The next list answers empty, as if the record were made meanwhile (a race).
    pub hide_next_list: bool,
    /// The next delete finds its record gone, as if deleted meanwhile.
    pub vanish_before_delete: bool,
    pub requests: Vec<String>,
}

#[derive(Clone)]
pub struct FakeCloudflare {
    pub state: Arc<Mutex<CfState>>,
    pub url: String,
}

fn cf_error(status: u16, code: i64, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({ "success": false, "errors": [{ "code": code, "message": message }], "messages": [], "result": null })),
    )
        .into_response()
}

fn cf_ok(result: Value) -> Response {
    Json(json!({ "success": true, "errors": [], "messages": [], "result": result })).into_response()
}

fn record_json(r: &CfRecord) -> Value {
    json!({ "id": r.id, "type": r.kind, "name": r.name, "content": r.content, "ttl": r.ttl,
            "proxied": r.proxied, "comment": r.comment })
}

/// Checks the token and the injected failures; `None` lets the request through.
fn cf_gate(s: &mut CfState, headers: &HeaderMap, what: String) -> Option<Response> {
    s.requests.push(what);
    if bearer(headers).as_deref() != Some(s.token.as_str()) {
        return Some(cf_error(403, 10000, "Authentication error"));
    }
    match s.fail_next.pop_front() {
        Some(429) => Some(cf_error(
            429,
            971,
            "Please wait and consider throttling your request speed",
        )),
        Some(status) => Some(cf_error(status, 10001, "service unavailable")),
        None => None,
    }
}

impl FakeCloudflare {
    pub async fn start(zone: &str) -> Self {
        let state = Arc::new(Mutex::new(CfState {
            token: "cf-token".into(),
            zone_id: "023e105f4ecef8ad9ca31a8372d0c353".into(),
            zone: zone.into(),
            ..CfState::default()
        }));
        let app = axum::Router::new()
            .route("/zones", get(cf_zones))
            .route("/zones/{zone}/dns_records", get(cf_list).post(cf_create))
            .route(
                "/zones/{zone}/dns_records/{id}",
                axum::routing::put(cf_update).delete(cf_delete),
            )
            .with_state(state.clone());
        let addr = serve(app).await;
        Self {
            state,
            url: format!("http://{addr}"),
        }
    }

    pub fn records(&self, name: &str) -> Vec<CfRecord> {
        let s = self.state.lock().unwrap();
        s.records.iter().filter(|r| r.name == name).cloned().collect()
    }
}

async fn cf_zones(
    State(st): State<Arc<Mutex<CfState>>>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let mut s = st.lock().unwrap();
    if let Some(r) = cf_gate(&mut s, &headers, "GET zones".into()) {
        return r;
    }
    let hits: Vec<Value> = (q.get("name") == Some(&s.zone))
        .then(|| json!({ "id": s.zone_id, "name": s.zone, "status": "active" }))
        .into_iter()
        .collect();
    cf_ok(json!(hits))
}

async fn cf_list(
    State(st): State<Arc<Mutex<CfState>>>,
    headers: HeaderMap,
    Path(zone): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let mut s = st.lock().unwrap();
    if let Some(r) = cf_gate(&mut s, &headers, "GET records".into()) {
        return r;
    }
    if zone != s.zone_id {
        return cf_error(
            404,
            7003,
            "Could not route to /zones/..., perhaps your object identifier is invalid?",
        );
    }
    if std::mem::take(&mut s.hide_next_list) {
        return cf_ok(json!([]));
    }
    let hits: Vec<Value> = s
        .records
        .iter()
        .filter(|r| q.get("type").is_none_or(|t| *t == r.kind) && q.get("name").is_none_or(|n| *n == r.name))
        .map(record_json)
        .collect();
    cf_ok(json!(hits))
}

async fn cf_create(
    State(st): State<Arc<Mutex<CfState>>>,
    headers: HeaderMap,
    Path(_zone): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let mut s = st.lock().unwrap();
    if let Some(r) = cf_gate(&mut s, &headers, "POST record".into()) {
        return r;
    }
    let (kind, name, content) = (
        body["type"].as_str().unwrap_or_default().to_string(),
        body["name"].as_str().unwrap_or_default().to_string(),
        body["content"].as_str().unwrap_or_default().to_string(),
    );
    if s.records
        .iter()
        .any(|r| r.kind == kind && r.name == name && r.content == content)
    {
        return cf_error(400, 81058, "An identical record already exists.");
    }
    // A different content on the same name is a second record, as Cloudflare does.
    let r = CfRecord {
        id: uuid::Uuid::new_v4().simple().to_string(),
        kind,
        name,
        content,
        ttl: body["ttl"].as_u64().unwrap_or(1),
        proxied: body["proxied"].as_bool().unwrap_or(false),
        comment: body["comment"].as_str().unwrap_or_default().to_string(),
    };
    let out = record_json(&r);
    s.records.push(r);
    cf_ok(out)
}

async fn cf_update(
    State(st): State<Arc<Mutex<CfState>>>,
    headers: HeaderMap,
    Path((_zone, id)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    let mut s = st.lock().unwrap();
    if let Some(r) = cf_gate(&mut s, &headers, "PUT record".into()) {
        return r;
    }
    let Some(r) = s.records.iter_mut().find(|r| r.id == id) else {
        return cf_error(404, 81044, "Record does not exist.");
    };
    r.content = body["content"].as_str().unwrap_or_default().to_string();
    r.ttl = body["ttl"].as_u64().unwrap_or(1);
    r.proxied = body["proxied"].as_bool().unwrap_or(false);
    r.comment = body["comment"].as_str().unwrap_or_default().to_string();
    let out = record_json(r);
    cf_ok(out)
}

async fn cf_delete(
    State(st): State<Arc<Mutex<CfState>>>,
    headers: HeaderMap,
    Path((_zone, id)): Path<(String, String)>,
) -> Response {
    let mut s = st.lock().unwrap();
    if let Some(r) = cf_gate(&mut s, &headers, "DELETE record".into()) {
        return r;
    }
    if std::mem::take(&mut s.vanish_before_delete) {
        s.records.retain(|r| r.id != id);
    }
    let before = s.records.len();
    s.records.retain(|r| r.id != id);
    if s.records.len() == before {
        return cf_error(404, 81044, "Record does not exist.");
    }
    cf_ok(json!({ "id": id }))
}

// ---------------------------------------------------------------- Nginx Proxy Manager

#[derive(Default)]
pub struct NpmState {
    pub identity: String,
    pub secret: String,
    /// Issued tokens and their expiry.
    pub tokens: Vec<(String, SystemTime)>,
    pub token_ttl: Duration,
    pub hosts: Vec<Value>,
    pub next_id: u64,
    pub logins: u32,
    pub refreshes: u32,
    pub fail_next: VecDeque<u16>,
}

#[derive(Clone)]
pub struct FakeNpm {
    pub state: Arc<Mutex<NpmState>>,
    pub url: String,
}

fn npm_error(status: u16, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({ "error": { "code": status, "message": message } })),
    )
        .into_response()
}

fn issue(s: &mut NpmState) -> Value {
    let token = format!("npm-{}", uuid::Uuid::new_v4().simple());
    let expires = SystemTime::now() + s.token_ttl;
    s.tokens.push((token.clone(), expires));
    json!({ "token": token, "expires": humantime::format_rfc3339_millis(expires).to_string() })
}

fn npm_gate(s: &mut NpmState, headers: &HeaderMap) -> Option<Response> {
    let now = SystemTime::now();
    let valid = bearer(headers).is_some_and(|t| s.tokens.iter().any(|(v, e)| *v == t && *e > now));
    if !valid {
        return Some(npm_error(401, "Token has expired"));
    }
    s.fail_next
        .pop_front()
        .map(|status| npm_error(status, "upstream trouble"))
}

impl FakeNpm {
    pub async fn start(token_ttl: Duration) -> Self {
        let state = Arc::new(Mutex::new(NpmState {
            identity: "admin@example.test".into(),
            secret: "changeme".into(),
            token_ttl,
            next_id: 1,
            ..NpmState::default()
        }));
        let app = axum::Router::new()
            .route("/api/tokens", get(npm_refresh).post(npm_login))
            .route("/api/nginx/proxy-hosts", get(npm_list).post(npm_create))
            .route(
                "/api/nginx/proxy-hosts/{id}",
                axum::routing::put(npm_update).delete(npm_delete),
            )
            .with_state(state.clone());
        let addr = serve(app).await;
        Self {
            state,
            url: format!("http://{addr}"),
        }
    }

    /// The live hosts serving `domain`.
    pub fn hosts(&self, domain: &str) -> Vec<Value> {
        let s = self.state.lock().unwrap();
        s.hosts
            .iter()
            .filter(|h| h["is_deleted"] == 0 && h["domain_names"].as_array().unwrap().iter().any(|d| d == domain))
            .cloned()
            .collect()
    }
}

async fn npm_login(State(st): State<Arc<Mutex<NpmState>>>, Json(body): Json<Value>) -> Response {
    let mut s = st.lock().unwrap();
    if body["identity"] != s.identity.as_str() || body["secret"] != s.secret.as_str() {
        return npm_error(401, "Invalid email or password");
    }
    s.logins += 1;
    Json(issue(&mut s)).into_response()
}

async fn npm_refresh(State(st): State<Arc<Mutex<NpmState>>>, headers: HeaderMap) -> Response {
    let mut s = st.lock().unwrap();
    if let Some(r) = npm_gate(&mut s, &headers) {
        return r;
    }
    s.refreshes += 1;
    Json(issue(&mut s)).into_response()
}

async fn npm_list(State(st): State<Arc<Mutex<NpmState>>>, headers: HeaderMap) -> Response {
    let mut s = st.lock().unwrap();
    if let Some(r) = npm_gate(&mut s, &headers) {
        return r;
    }
    let live: Vec<Value> = s.hosts.iter().filter(|h| h["is_deleted"] == 0).cloned().collect();
    Json(json!(live)).into_response()
}

async fn npm_create(State(st): State<Arc<Mutex<NpmState>>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let mut s = st.lock().unwrap();
    if let Some(r) = npm_gate(&mut s, &headers) {
        return r;
    }
    for domain in body["domain_names"].as_array().cloned().unwrap_or_default() {
        let taken = s
            .hosts
            .iter()
            .any(|h| h["is_deleted"] == 0 && h["domain_names"].as_array().unwrap().contains(&domain));
        if taken {
            return npm_error(
                400,
                &format!("{} is already in use", domain.as_str().unwrap_or_default()),
            );
        }
    }
    let id = s.next_id;
    s.next_id += 1;
    let mut host = body.clone();
    host["id"] = json!(id);
    host["is_deleted"] = json!(0);
    s.hosts.push(host.clone());
    (StatusCode::CREATED, Json(host)).into_response()
}

async fn npm_update(
    State(st): State<Arc<Mutex<NpmState>>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Json(body): Json<Value>,
) -> Response {
    let mut s = st.lock().unwrap();
    if let Some(r) = npm_gate(&mut s, &headers) {
        return r;
    }
    let Some(host) = s.hosts.iter_mut().find(|h| h["id"] == id && h["is_deleted"] == 0) else {
        return npm_error(404, "Not Found");
    };
    for (k, v) in body.as_object().cloned().unwrap_or_default() {
        host[k.as_str()] = v;
    }
    Json(host.clone()).into_response()
}

async fn npm_delete(State(st): State<Arc<Mutex<NpmState>>>, headers: HeaderMap, Path(id): Path<u64>) -> Response {
    let mut s = st.lock().unwrap();
    if let Some(r) = npm_gate(&mut s, &headers) {
        return r;
    }
    let Some(host) = s.hosts.iter_mut().find(|h| h["id"] == id && h["is_deleted"] == 0) else {
        return npm_error(404, "Not Found");
    };
    host["is_deleted"] = json!(1);
    Json(json!(true)).into_response()
}
