//! The PVE API client (reqwest): token or ticket auth, TLS options, the `{data}` envelope,
//! classified errors, and UPID tasks followed to their end on the node that runs them.

// `PveError` is deliberately rich (message, per-parameter errors, task log tail): callers
// classify and report it, and it is created only on failures.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod backup;
pub mod error;
pub mod ha;
pub mod lenient;
pub mod sdn;
pub mod tls;
pub mod upid;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Mutex;

pub use error::{Class, PveError, Reason};
pub use tls::TlsMode;
pub use upid::Upid;

/// How the client authenticates.
#[derive(Clone)]
pub enum Auth {
    /// An API token: `USER@REALM!TOKENID` and its secret.
    Token {
        /// `USER@REALM!TOKENID`.
        id: String,
        /// The secret UUID.
        secret: String,
    },
    /// A user and password: a ticket and CSRF token are fetched and renewed.
    Password {
        /// `USER@REALM`.
        user: String,
        /// The password.
        password: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Token { id, .. } => write!(f, "Token({id}, [redacted])"),
            Auth::Password { user, .. } => write!(f, "Password({user}, [redacted])"),
        }
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// `https://host:8006` (the `/api2/json` prefix is added).
    pub url: String,
    /// Credentials.
    pub auth: Auth,
    /// Certificate checking.
    pub tls: TlsMode,
    /// Limit on one HTTP request.
    pub request_timeout: Duration,
    /// Limit on following a task to its end.
    pub task_timeout: Duration,
    /// Retries of a GET that failed transiently (connection trouble, 5xx, 595–599, locks), with
    /// exponential backoff from 100 ms. Reads are idempotent; writes are never retried here.
    pub read_retries: usize,
}

/// Request parameters; booleans go as 1/0 as PVE wants.
#[derive(Debug, Clone, Default)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    /// No parameters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a parameter.
    pub fn set(mut self, key: &str, value: impl ToString) -> Self {
        self.0.push((key.to_string(), value.to_string()));
        self
    }

    /// Adds a parameter when present.
    pub fn opt(self, key: &str, value: Option<impl ToString>) -> Self {
        match value {
            Some(v) => self.set(key, v),
            None => self,
        }
    }

    /// Adds a boolean as 1 or 0.
    pub fn flag(self, key: &str, value: bool) -> Self {
        self.set(key, if value { "1" } else { "0" })
    }
}

struct Ticket {
    ticket: String,
    csrf: String,
    at: Instant,
}

/// A PVE API client. Cheap to clone.
#[derive(Clone)]
pub struct PveClient {
    http: reqwest::Client,
    base: String,
    settings: Arc<ClientSettings>,
    ticket: Arc<Mutex<Option<Ticket>>>,
}

/// Tickets are valid for two hours; renew well before.
const TICKET_LIFETIME: Duration = Duration::from_secs(100 * 60);

impl PveClient {
    /// Builds a client. Fails on a CA file that cannot be read or a malformed fingerprint.
    pub fn new(settings: ClientSettings) -> Result<Self, PveError> {
        let setup_err = |m: String| PveError::transport("SETUP", &settings.url, m);
        let provider = tls::provider();
        let mut builder = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout);
        match &settings.tls {
            TlsMode::Verified => {}
            TlsMode::CaFile(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| setup_err(format!("cannot read CA file {}: {e}", path.display())))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| setup_err(format!("CA file {} holds no PEM certificate: {e}", path.display())))?;
                builder = builder.tls_certs_only(certs);
            }
            TlsMode::Fingerprint(fp) => {
                let sha = tls::parse_fingerprint(fp)
                    .ok_or_else(|| setup_err(format!("'{fp}' is not a SHA-256 fingerprint")))?;
                let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| setup_err(e.to_string()))?
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(tls::FingerprintVerifier::new(sha, provider)))
                    .with_no_client_auth();
                builder = builder.tls_backend_preconfigured(config);
            }
            TlsMode::Insecure => {
                tracing::warn!(url = %settings.url, "TLS verification is OFF for Proxmox (insecure flag); anyone on the path can read the API token.");
                builder = builder.tls_danger_accept_invalid_certs(true);
            }
        }
        let http = builder
            .build()
            .map_err(|e| setup_err(format!("cannot build the HTTP client: {e}")))?;
        let base = format!("{}/api2/json", settings.url.trim_end_matches('/'));
        Ok(Self {
            http,
            base,
            settings: Arc::new(settings),
            ticket: Arc::new(Mutex::new(None)),
        })
    }

    /// GET, parameters in the query string; a transient failure is retried `read_retries` times.
    pub async fn get<T: DeserializeOwned>(&self, path: &str, params: Params) -> Result<T, PveError> {
        use backon::Retryable;
        let attempt = || self.call(Method::GET, path, params.clone());
        attempt
            .retry(
                backon::ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(2))
                    .with_max_times(self.settings.read_retries),
            )
            .when(PveError::is_transient)
            .await
    }

    /// POST, parameters as a form body.
    pub async fn post<T: DeserializeOwned>(&self, path: &str, params: Params) -> Result<T, PveError> {
        self.call(Method::POST, path, params).await
    }

    /// PUT, parameters as a form body.
    pub async fn put<T: DeserializeOwned>(&self, path: &str, params: Params) -> Result<T, PveError> {
        self.call(Method::PUT, path, params).await
    }

    /// DELETE, parameters in the query string (PVE answers 501 to a DELETE with a body).
    pub async fn delete<T: DeserializeOwned>(&self, path: &str, params: Params) -> Result<T, PveError> {
        self.call(Method::DELETE, path, params).await
    }

    /// Calls, then decodes `data` into `T`.
    pub async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, params: Params) -> Result<T, PveError> {
        let data = self.raw(method.clone(), path, params).await?;
        serde_json::from_value(data).map_err(|e| {
            PveError::from_response(
                method.as_str(),
                path,
                200,
                format!("unexpected response shape: {e}"),
                BTreeMap::new(),
            )
        })
    }

    /// Calls and returns `data` as JSON. Never panics on any response.
    pub async fn raw(&self, method: Method, path: &str, params: Params) -> Result<Value, PveError> {
        // Names reach paths encoded one segment each (`enc`); a path that would still change
        // meaning on the way is refused here, before anything is sent.
        if let Some(why) = unsafe_path(path) {
            return Err(PveError::from_response(
                method.as_str(),
                path,
                400,
                format!("{why}; nothing was sent"),
                BTreeMap::new(),
            ));
        }
        let started = Instant::now();
        let result = self.send(&method, path, params).await;
        // What an operator alerts on: PVE answering, refusing, failing, or not reached at all.
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => match e.status {
                None => "unreachable",
                Some(s) if s >= 500 => "server_error",
                Some(_) => "client_error",
            },
        };
        metrics::counter!("pvefleet_pve_requests_total", "method" => method.as_str().to_string(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("pvefleet_pve_request_seconds", "method" => method.as_str().to_string())
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn send(&self, method: &Method, path: &str, params: Params) -> Result<Value, PveError> {
        let url = format!("{}{}", self.base, path);
        let body_in_query = *method == Method::GET || *method == Method::DELETE;
        let mut req = self.http.request(method.clone(), &url);
        req = if body_in_query {
            req.query(&params.0)
        } else {
            req.form(&params.0)
        };
        match &self.settings.auth {
            Auth::Token { id, secret } => {
                req = req.header("Authorization", format!("PVEAPIToken={id}={secret}"));
            }
            Auth::Password { .. } => {
                let (ticket, csrf) = self.ticket(path).await?;
                req = req.header("Cookie", format!("PVEAuthCookie={ticket}"));
                if !body_in_query || *method == Method::DELETE {
                    req = req.header("CSRFPreventionToken", csrf);
                }
            }
        }
        let resp = req
            .send()
            .await
            .map_err(|e| PveError::transport(method.as_str(), path, transport_message(&e)))?;
        decode(method.as_str(), path, resp).await
    }

    async fn ticket(&self, path: &str) -> Result<(String, String), PveError> {
        let Auth::Password { user, password } = &self.settings.auth else {
            return Err(PveError::transport("AUTH", path, "no password configured".into()));
        };
        let mut slot = self.ticket.lock().await;
        if let Some(t) = slot.as_ref().filter(|t| t.at.elapsed() < TICKET_LIFETIME) {
            return Ok((t.ticket.clone(), t.csrf.clone()));
        }
        let url = format!("{}/access/ticket", self.base);
        let resp = self
            .http
            .post(&url)
            .form(&[("username", user.as_str()), ("password", password.as_str())])
            .send()
            .await
            .map_err(|e| PveError::transport("POST", "/access/ticket", transport_message(&e)))?;
        let data = decode("POST", "/access/ticket", resp).await?;
        let field = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_string);
        let (Some(ticket), Some(csrf)) = (field("ticket"), field("CSRFPreventionToken")) else {
            return Err(PveError::from_response(
                "POST",
                "/access/ticket",
                200,
                "no ticket in the response".into(),
                BTreeMap::new(),
            ));
        };
        *slot = Some(Ticket {
            ticket: ticket.clone(),
            csrf: csrf.clone(),
            at: Instant::now(),
        });
        Ok((ticket, csrf))
    }

    /// Follows a task to its end on the node its UPID names, polling with backoff within the
    /// task timeout. `OK` and `WARNINGS: n` succeed; anything else is an error with the log tail.
    pub async fn wait_task(&self, upid: &str) -> Result<api::TaskStatus, PveError> {
        let parsed = Upid::parse(upid).ok_or_else(|| {
            PveError::from_response("GET", "tasks", 200, format!("'{upid}' is not a UPID"), BTreeMap::new())
        })?;
        let path = format!("/nodes/{}/tasks/{}/status", enc(&parsed.node), enc(upid));
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            match self.get::<api::TaskStatus>(&path, Params::new()).await {
                Ok(status) if status.status == "stopped" => return self.task_outcome(&parsed, &path, status).await,
                Ok(_) => {}
                Err(e) if e.is_transient() => tracing::debug!(error = %e, "Task status unavailable; polling again."),
                Err(e) => return Err(e),
            }
            if started.elapsed() >= self.settings.task_timeout {
                let mut e = PveError::transport(
                    "GET",
                    &path,
                    format!("task {upid} did not finish within {:?}", self.settings.task_timeout),
                );
                e.reason = Reason::TaskFailed;
                return Err(e);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    async fn task_outcome(
        &self,
        upid: &Upid,
        path: &str,
        status: api::TaskStatus,
    ) -> Result<api::TaskStatus, PveError> {
        let exit = status.exitstatus.clone().unwrap_or_default();
        if exit == "OK" || exit.starts_with("WARNINGS") {
            return Ok(status);
        }
        let log_path = format!("/nodes/{}/tasks/{}/log", enc(&upid.node), enc(upid.as_str()));
        let lines: Vec<api::LogLine> = self
            .get(&log_path, Params::new().set("start", 0).set("limit", 5000))
            .await
            .unwrap_or_default();
        let tail: Vec<String> = lines.iter().rev().take(20).rev().map(|l| l.t.clone()).collect();
        let mut e = PveError::from_response("GET", path, 500, exit, BTreeMap::new());
        // A task that ran and failed is permanent unless its error says to try again (a lock,
        // a timeout): re-running it would fail the same way.
        if e.reason == Reason::Other {
            let text = e.message.to_ascii_lowercase();
            let passing = [
                "got timeout",
                "try again",
                "temporarily unavailable",
                "got no worker upid",
            ];
            if !passing.iter().any(|p| text.contains(p)) {
                e.class = Class::Permanent;
            }
            e.reason = Reason::TaskFailed;
        }
        e.task_log = tail;
        Err(e)
    }
}

/// What a path segment keeps as it is: RFC 3986's unreserved characters. Everything else,
/// `/`, `?`, `#`, `%`, `,`, `=` and spaces included, is percent-encoded.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes one path segment, so a value (a node, a storage, a UPID with its `:` and
/// `!`) can never add a segment, a query or a fragment. A segment of only dots cannot be
/// encoded away (URL parsers treat `%2e%2e` as `..`); `PveClient::raw` refuses such paths.
pub fn enc(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, SEGMENT).to_string()
}

/// Why a request path cannot be sent as it is: an empty, `.` or `..` segment (which a URL
/// parser would fold into its neighbours) or a query or fragment inside the path.
fn unsafe_path(path: &str) -> Option<String> {
    if path.contains(['?', '#']) {
        return Some(format!("the path {path:?} holds a query or fragment"));
    }
    let dots = |s: &str| {
        let lower = s.to_ascii_lowercase().replace("%2e", ".");
        lower == "." || lower == ".."
    };
    path.split('/')
        .skip(1)
        .find(|seg| seg.is_empty() || dots(seg))
        .map(|seg| format!("the path {path:?} has a segment {seg:?} a URL parser would reinterpret"))
}

fn transport_message(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    if e.is_timeout() {
        msg.push_str(" (timed out)");
    }
    msg
}

/// Turns a response into `data` or a classified error; error text from the JSON `message`, or
/// from the HTTP reason phrase on older servers.
async fn decode(method: &str, path: &str, resp: reqwest::Response) -> Result<Value, PveError> {
    let status = resp.status().as_u16();
    let reason = resp
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .or_else(|| resp.status().canonical_reason().map(str::to_string))
        .unwrap_or_default();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| PveError::transport(method, path, transport_message(&e)))?;
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        return Ok(body.get("data").cloned().unwrap_or(Value::Null));
    }
    let message = body
        .get("message")
        .and_then(Value::as_str)
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .unwrap_or(reason);
    let errors: BTreeMap<String, String> = body
        .get("errors")
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map(|s| s.trim().to_string())
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Err(PveError::from_response(method, path, status, message, errors))
}
