//! Dispatching a request: the control API, authentication, faults, the route table, and the
//! answer as PVE renders it (recorded when asked).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::{ApiError, GZIP_OVER, Recorded, Sim, exec, faults, gzip, ha, lxc, param, rules, sdn};

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

pub(crate) async fn dispatch(State(sim): State<Sim>, req: Request) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let path = uri.path().to_string();
    if let Some(control) = path.strip_prefix("/_sim") {
        if control == "/exec" || control.starts_with("/exec/") {
            // The simulated node shell is the API's: it takes the same credentials.
            if let Err(e) = authorize(&sim, &method, &headers) {
                return e.into_response();
            }
            return exec::control(&sim, method.as_str(), control, &body);
        }
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
        (_, ["nodes", node, "storage", storage, rest @ ..]) => s.storage_route(m, node, storage, rest, params)?,
        ("POST", ["nodes", node, "vzdump"]) => s.vzdump(node, params)?,
        ("GET", ["nodes", node, "vzdump", "extractconfig"]) => s.extract_config(node, params)?,
        (_, ["cluster", "backup", rest @ ..]) => s.backup_jobs(m, rest, params)?,
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
