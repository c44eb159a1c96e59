//! Reverse-proxy providers. Caddy's admin API (edge-installer.md §2.2): one route per site,
//! addressed by its `@id` (`pvefleet-<site>`), with a host matcher and a `reverse_proxy` to
//! the site's `ip:port`. Caddy 2.6 accepts a second route with the same `@id`, so an upsert
//! reads first: an existing route is replaced in place (`PATCH /id/...`), a missing one is
//! appended to the server's routes. A delete removes the id until Caddy no longer knows it,
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

impl Caddy {
    /// A client for the admin API at `admin`, writing routes of the HTTP server `server`.
    pub fn new(http: reqwest::Client, admin: &str, server: &str) -> Self {
        Self {
            http,
            admin: admin.trim_end_matches('/').to_string(),
            server: server.to_string(),
        }
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

    /// Creates or replaces the route of `site`: `host` to `upstream` (`ip:port`).
    pub async fn upsert(&self, site: &SiteId, host: &str, upstream: &str) -> Result<(), ProviderError> {
        let id = route_id(site);
        let by_id = format!("{}/id/{id}", self.admin);
        let route = Self::route(&id, host, upstream);
        let (status, body) = self.call("read route", self.http.get(&by_id)).await?;
        let (what, status, body) = match status {
            200 => {
                let (s, b) = self.call("replace route", self.http.patch(&by_id).json(&route)).await?;
                ("replace route", s, b)
            }
            404 => {
                let routes = format!("{}/config/apps/http/servers/{}/routes", self.admin, self.server);
                let (s, b) = self.call("add route", self.http.post(&routes).json(&route)).await?;
                ("add route", s, b)
            }
            _ => ("read route", status, body),
        };
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(ProviderError::from_status("caddy", what, status, &body))
        }
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
