//! Nginx Proxy Manager (edge-installer.md §2.1): a proxy host per site. NPM refuses a second
//! host for a domain ("already in use"), so an upsert lists the hosts first and finds the
//! site's by domain. A host found there is adopted only when it is ours, by the marker in its
//! advanced config or its `meta`; anyone else's fails the step and is left alone. The token
//! comes from a login, is refreshed before it expires, and a 401 logs in again once.

use pvefleet_contracts::ids::SiteId;
use pvefleet_core::Secret;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::provider::ProviderError;

/// How long before its expiry a token is refreshed.
const REFRESH_BEFORE: std::time::Duration = std::time::Duration::from_secs(3600);

/// The line in a proxy host's advanced config that marks it as a site's.
pub fn marker(site: &SiteId) -> String {
    format!("# pvefleet-site: {site}")
}

/// An NPM instance's proxy hosts.
#[derive(Clone)]
pub struct Npm {
    http: reqwest::Client,
    api: String,
    identity: String,
    secret: Secret,
    certificate_id: i64,
    token: std::sync::Arc<Mutex<Option<Token>>>,
}

#[derive(Clone)]
struct Token {
    value: String,
    expires: Option<std::time::SystemTime>,
}

fn parse_token(body: &Value) -> Option<Token> {
    let value = body["token"].as_str()?.to_string();
    let expires = body["expires"]
        .as_str()
        .and_then(|e| humantime::parse_rfc3339_weak(e).ok());
    Some(Token { value, expires })
}

impl Npm {
    /// A client for the NPM at `api` (`http://npm:81`), logging in as `identity`.
    pub fn new(http: reqwest::Client, api: &str, identity: &str, secret: Secret, certificate_id: i64) -> Self {
        Self {
            http,
            api: api.trim_end_matches('/').to_string(),
            identity: identity.to_string(),
            secret,
            certificate_id,
            token: std::sync::Arc::new(Mutex::new(None)),
        }
    }

    async fn login(&self) -> Result<Token, ProviderError> {
        let r = self
            .http
            .post(format!("{}/api/tokens", self.api))
            .json(&json!({ "identity": self.identity, "secret": self.secret.expose() }))
            .send()
            .await
            .map_err(|e| ProviderError::from_transport("npm", "login", &e))?;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(ProviderError::from_status("npm", "login", status, &text));
        }
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        parse_token(&body).ok_or_else(|| ProviderError::Fail {
            code: "npm.refused".into(),
            message: "npm login: no token in the answer (two-factor login is not supported)".into(),
        })
    }

    /// A token that is valid for a while: the cached one, refreshed when close to expiry.
    async fn token(&self, force_login: bool) -> Result<String, ProviderError> {
        let mut cached = self.token.lock().await;
        if !force_login && let Some(t) = cached.as_ref() {
            let fresh = t
                .expires
                .is_none_or(|e| e > std::time::SystemTime::now() + REFRESH_BEFORE);
            if fresh {
                return Ok(t.value.clone());
            }
            // Close to expiry: refresh with the token itself.
            let refreshed = self
                .http
                .get(format!("{}/api/tokens", self.api))
                .bearer_auth(&t.value)
                .send()
                .await;
            if let Ok(r) = refreshed
                && r.status().is_success()
                && let Ok(body) = r.json::<Value>().await
                && let Some(new) = parse_token(&body)
            {
                *cached = Some(new.clone());
                return Ok(new.value);
            }
        }
        let new = self.login().await?;
        *cached = Some(new.clone());
        Ok(new.value)
    }

    /// Sends a request with the token; a 401 logs in again and sends it once more.
    async fn call(
        &self,
        what: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(u16, String), ProviderError> {
        for attempt in 0..2 {
            let token = self.token(attempt > 0).await?;
            let r = build()
                .bearer_auth(token)
                .send()
                .await
                .map_err(|e| ProviderError::from_transport("npm", what, &e))?;
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            if status == 401 && attempt == 0 {
                continue;
            }
            return Ok((status, text));
        }
        unreachable!("the loop returns on its second pass")
    }

    async fn hosts(&self) -> Result<Vec<Value>, ProviderError> {
        let url = format!("{}/api/nginx/proxy-hosts", self.api);
        let (status, text) = self.call("list hosts", || self.http.get(&url)).await?;
        if !(200..300).contains(&status) {
            return Err(ProviderError::from_status("npm", "list hosts", status, &text));
        }
        Ok(serde_json::from_str::<Vec<Value>>(&text).unwrap_or_default())
    }

    fn is_ours(host: &Value, site: &SiteId) -> bool {
        host["advanced_config"]
            .as_str()
            .is_some_and(|c| c.lines().any(|l| l.trim() == marker(site)))
            || host["meta"]["pvefleet_site"].as_str() == Some(site.to_string().as_str())
    }

    fn serves(host: &Value, domain: &str) -> bool {
        host["domain_names"].as_array().is_some_and(|d| {
            d.iter()
                .any(|n| n.as_str().is_some_and(|n| n.eq_ignore_ascii_case(domain)))
        })
    }

    /// Creates or updates the proxy host of `site` for `domain`, forwarding to `upstream`.
    pub async fn upsert(&self, site: &SiteId, domain: &str, upstream: &str) -> Result<(), ProviderError> {
        let (forward_host, forward_port) = match upstream.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse::<u16>().unwrap_or(80)),
            None => (upstream.to_string(), 80),
        };
        let body = json!({
            "domain_names": [domain],
            "forward_scheme": "http",
            "forward_host": forward_host,
            "forward_port": forward_port,
            "certificate_id": self.certificate_id,
            "ssl_forced": self.certificate_id > 0,
            "block_exploits": true,
            "allow_websocket_upgrade": true,
            "advanced_config": marker(site),
            "meta": { "pvefleet_site": site.to_string() },
        });
        for _ in 0..2 {
            let hosts = self.hosts().await?;
            if let Some(host) = hosts.iter().find(|h| Self::serves(h, domain)) {
                if !Self::is_ours(host, site) {
                    return Err(ProviderError::Fail {
                        code: "npm.refused".into(),
                        message: format!(
                            "npm: a proxy host for {domain} exists and is not this site's; it is left alone"
                        ),
                    });
                }
                let same = host["forward_host"].as_str() == Some(forward_host.as_str())
                    && host["forward_port"].as_u64() == Some(u64::from(forward_port))
                    && host["certificate_id"].as_i64() == Some(self.certificate_id);
                if same {
                    return Ok(());
                }
                let url = format!("{}/api/nginx/proxy-hosts/{}", self.api, host["id"]);
                let (status, text) = self.call("update host", || self.http.put(&url).json(&body)).await?;
                return if (200..300).contains(&status) {
                    Ok(())
                } else {
                    Err(ProviderError::from_status("npm", "update host", status, &text))
                };
            }
            let url = format!("{}/api/nginx/proxy-hosts", self.api);
            let (status, text) = self.call("create host", || self.http.post(&url).json(&body)).await?;
            if (200..300).contains(&status) {
                return Ok(());
            }
            // Made meanwhile by another delivery: look again, and adopt it if it is ours.
            if status == 400 && text.contains("already in use") {
                continue;
            }
            return Err(ProviderError::from_status("npm", "create host", status, &text));
        }
        Err(ProviderError::Retry(format!(
            "npm: the proxy host for {domain} changed while it was being written"
        )))
    }

    /// Deletes the proxy host of `site` for `domain`; absence is success, and a host for the
    /// domain that is not ours is left alone.
    pub async fn delete(&self, site: &SiteId, domain: &str) -> Result<(), ProviderError> {
        let hosts = self.hosts().await?;
        for host in hosts.iter().filter(|h| Self::serves(h, domain)) {
            if !Self::is_ours(host, site) {
                tracing::warn!(domain, "A proxy host for the domain is not this site's; left alone.");
                continue;
            }
            let url = format!("{}/api/nginx/proxy-hosts/{}", self.api, host["id"]);
            let (status, text) = self.call("delete host", || self.http.delete(&url)).await?;
            if !(200..300).contains(&status) && status != 404 {
                return Err(ProviderError::from_status("npm", "delete host", status, &text));
            }
        }
        Ok(())
    }
}
