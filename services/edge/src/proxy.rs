//! Reverse-proxy providers. Caddy's admin API (edge-installer.md §2.2): one route per site,
//! addressed by its `@id` (`pvefleet-<site>`), with a host matcher and a `reverse_proxy` to
//! the site's `ip:port`. Caddy 2.6 accepts a second route with the same `@id`, so an upsert
//! reads first: an existing route is replaced in place (`PATCH /id/...`), a missing one is
//! appended to the server's routes on the condition (`If-Match`) that they did not change since
//! they were read. A delete removes the id until Caddy no longer knows it,
//! so duplicates left by anyone are cleared too, and absence is success.

use pvefleet_contracts::ids::SiteId;
use serde_json::{Value, json};

use crate::provider::ProviderError;

/// Where routes are written.
#[derive(Clone)]
pub enum Proxy {
    /// No proxy automation.
    None,
    /// Caddy's admin API.
    Caddy(Caddy),
    /// Nginx Proxy Manager.
    Npm(crate::npm::Npm),
}

impl Proxy {
    /// The provider's name.
    pub fn name(&self) -> &'static str {
        match self {
            Proxy::None => "none",
            Proxy::Caddy(_) => "caddy",
            Proxy::Npm(_) => "npm",
        }
    }
}

/// A Caddy admin API, for one HTTP server.
#[derive(Clone)]
pub struct Caddy {
    http: reqwest::Client,
    admin: String,
    server: String,
}

/// The `@id` of a site's route.
pub fn route_id(site: &SiteId) -> String {
    format!("pvefleet-{site}")
}

/// Deletes of one id at most: one route, plus duplicates an older Caddy let in.
const MAX_DUPLICATES: usize = 16;

/// Conditional adds refused because the routes changed, before the upsert is retried later.
const MAX_RACES: usize = 8;

impl Caddy {
    /// A client for the admin API at `admin`, writing routes of the HTTP server `server`,
    /// each call within `timeout`.
    pub fn new(timeout: std::time::Duration, admin: &str, server: &str) -> Result<Self, reqwest::Error> {
        // Caddy drops its idle admin connections when its config changes, so a pooled
        // connection can be closed just as it is reused; each call opens its own (they are few).
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(0)
            .build()?;
        Ok(Self {
            http,
            admin: admin.trim_end_matches('/').to_string(),
            server: server.to_string(),
        })
    }

    fn route(id: &str, host: &str, upstream: &str) -> Value {
        json!({
            "@id": id,
            "match": [{ "host": [host] }],
            "handle": [{ "handler": "reverse_proxy", "upstreams": [{ "dial": upstream }] }],
            "terminal": true,
        })
    }

    async fn call(&self, what: &str, request: reqwest::RequestBuilder) -> Result<(u16, String), ProviderError> {
        let response = request
            .send()
            .await
            .map_err(|e| ProviderError::from_transport("caddy", what, &e))?;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        Ok((status, body))
    }

    /// Reads `url`: status, body and the config's Etag, which Caddy 2.6 sends as a trailer
    /// (a header in later versions).
    async fn read(&self, what: &str, url: &str) -> Result<(u16, String, Option<String>), ProviderError> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| ProviderError::from_transport("caddy", what, &e))?;
        let status = response.status().as_u16();
        let header = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = http::Response::from(response).into_body();
        let collected = http_body_util::BodyExt::collect(body)
            .await
            .map_err(|e| ProviderError::Retry(format!("caddy {what}: cannot read the answer: {e}")))?;
        let trailer = collected
            .trailers()
            .and_then(|t| t.get("etag"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
        Ok((status, text, header.or(trailer)))
    }

    /// Creates or replaces the route of `site`: `host` to `upstream` (`ip:port`).
    ///
    /// Caddy 2.6 lets a second route with the same `@id` in, so two upserts of one site at
    /// once (a redelivered command, two replicas) would each add one. The add is therefore
    /// conditional: the routes are read with their Etag, and the append carries it in
    /// `If-Match`, so Caddy refuses it (412) when anything changed the routes in between, and
    /// the upsert reads again and finds the other's route.
    pub async fn upsert(&self, site: &SiteId, host: &str, upstream: &str) -> Result<(), ProviderError> {
        let id = route_id(site);
        let route = Self::route(&id, host, upstream);
        let routes_url = format!("{}/config/apps/http/servers/{}/routes", self.admin, self.server);
        for _ in 0..MAX_RACES {
            let (status, body, etag) = self.read("read routes", &routes_url).await?;
            if status != 200 {
                return Err(ProviderError::from_status("caddy", "read routes", status, &body));
            }
            let routes: Vec<Value> = serde_json::from_str::<Option<Vec<Value>>>(&body)
                .ok()
                .flatten()
                .unwrap_or_default();
            let (what, request) = if routes.iter().any(|r| r["@id"] == id.as_str()) {
                // Replacing in place cannot make a second route.
                let by_id = format!("{}/id/{id}", self.admin);
                ("replace route", self.http.patch(by_id).json(&route))
            } else {
                let add = self.http.post(&routes_url).json(&route);
                (
                    "add route",
                    match &etag {
                        Some(tag) => add.header("If-Match", tag),
                        None => add,
                    },
                )
            };
            let (status, body) = self.call(what, request).await?;
            match status {
                200..=299 => return Ok(()),
                // The routes changed since they were read (another upsert's add): read again.
                412 => continue,
                _ => return Err(ProviderError::from_status("caddy", what, status, &body)),
            }
        }
        Err(ProviderError::Retry(format!(
            "caddy add route: the routes changed under each of {MAX_RACES} attempts"
        )))
    }

    /// Deletes the route of `site`; absence is success.
    pub async fn delete(&self, site: &SiteId) -> Result<(), ProviderError> {
        let by_id = format!("{}/id/{}", self.admin, route_id(site));
        for _ in 0..MAX_DUPLICATES {
            let (status, body) = self.call("delete route", self.http.delete(&by_id)).await?;
            match status {
                200..=299 => continue,
                404 => return Ok(()),
                _ => return Err(ProviderError::from_status("caddy", "delete route", status, &body)),
            }
        }
        Err(ProviderError::Retry(format!(
            "caddy delete route: still present after {MAX_DUPLICATES} deletes"
        )))
    }
}
