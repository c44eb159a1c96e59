//! DNS providers. PowerDNS's HTTP API (edge-installer.md §1.2): an rrset is keyed by name and
//! type, `REPLACE` writes it whole and `DELETE` removes it, both answering 204 whether or not
//! it existed, so an upsert is idempotent and a delete tolerates absence. Names carry the
//! trailing dot, and the zone comes from config.

use pvefleet_core::Secret;
use serde_json::json;

use crate::provider::ProviderError;

/// Where records are written.
#[derive(Clone)]
pub enum Dns {
    /// No DNS automation: the saga skips the steps, and a stray command succeeds.
    None,
    /// PowerDNS Authoritative's HTTP API.
    PowerDns(PowerDns),
    /// Cloudflare's API v4.
    Cloudflare(crate::cloudflare::Cloudflare),
}

/// A PowerDNS Authoritative server's API, for one zone.
#[derive(Clone)]
pub struct PowerDns {
    http: reqwest::Client,
    /// `http://host:8081/api/v1/servers/<server>/zones/<zone.>`.
    zone_url: String,
    /// The zone, canonical (trailing dot).
    zone: String,
    api_key: Secret,
}

/// A name in canonical form: lower case, with the trailing dot.
pub fn canonical(name: &str) -> String {
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    format!("{name}.")
}

impl PowerDns {
    /// A client for `zone` on the server at `url` (the API base, without `/api/v1`).
    pub fn new(http: reqwest::Client, url: &str, server: &str, zone: &str, api_key: Secret) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !zone.trim().is_empty(),
            "edge.zone (or saga.domain) must name the DNS zone"
        );
        let zone = canonical(zone);
        let zone_url = format!("{}/api/v1/servers/{server}/zones/{zone}", url.trim_end_matches('/'));
        Ok(Self {
            http,
            zone_url,
            zone,
            api_key,
        })
    }

    /// The zone records go into.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    async fn patch(&self, what: &str, rrset: serde_json::Value) -> Result<(), ProviderError> {
        let response = self
            .http
            .patch(&self.zone_url)
            .header("X-API-Key", self.api_key.expose())
            .json(&json!({ "rrsets": [rrset] }))
            .send()
            .await
            .map_err(|e| ProviderError::from_transport("powerdns", what, &e))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        Err(ProviderError::from_status("powerdns", what, status, &body))
    }

    /// Creates or replaces the rrset `name`/`kind` with the one record `content`.
    pub async fn upsert(&self, name: &str, kind: &str, content: &str, ttl: u32) -> Result<(), ProviderError> {
        self.patch(
            "upsert",
            json!({
                "name": canonical(name), "type": kind, "ttl": ttl, "changetype": "REPLACE",
                "records": [{ "content": content, "disabled": false }],
            }),
        )
        .await
    }

    /// Deletes the rrset `name`/`kind`; absence is success.
    pub async fn delete(&self, name: &str, kind: &str) -> Result<(), ProviderError> {
        self.patch(
            "delete",
            json!({ "name": canonical(name), "type": kind, "changetype": "DELETE" }),
        )
        .await
    }
}

impl Dns {
    /// The provider's name.
    pub fn name(&self) -> &'static str {
        match self {
            Dns::None => "none",
            Dns::PowerDns(_) => "powerdns",
            Dns::Cloudflare(_) => "cloudflare",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::canonical;

    #[test]
    fn names_are_canonical_with_one_trailing_dot() {
        assert_eq!(canonical("Blog.Example.org"), "blog.example.org.");
        assert_eq!(canonical("blog.example.org."), "blog.example.org.");
    }
}
