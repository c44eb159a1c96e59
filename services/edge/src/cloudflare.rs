//! Cloudflare's DNS API v4 (edge-installer.md §1.1). `POST` is not idempotent, so an upsert
//! looks the record up by name and type first: none is created, one with the same content is
//! left alone, a different one is overwritten with `PUT`, and extras are deleted. A create
//! that meets an identical record made meanwhile (81057, 81058) is success. A delete looks up
//! by name and type too, so it also covers a crash between a create and its answer, and a
//! record already gone (404, code 81044) is success. Records carry a comment naming the site.

use pvefleet_core::Secret;
use serde_json::{Value, json};

use crate::provider::ProviderError;

/// "An identical record already exists" (and its older form).
const IDENTICAL_EXISTS: [i64; 2] = [81057, 81058];
/// "Record does not exist".
const RECORD_MISSING: i64 = 81044;

/// A Cloudflare zone's DNS records.
#[derive(Clone)]
pub struct Cloudflare {
    http: reqwest::Client,
    api: String,
    token: Secret,
    zone: String,
    /// The zone id, when configured; else looked up by `zone` once.
    zone_id: std::sync::Arc<tokio::sync::OnceCell<String>>,
    proxied: bool,
}

/// One record as the API lists it.
#[derive(Debug, Clone)]
struct Record {
    id: String,
    content: String,
    ttl: u64,
    proxied: bool,
}

impl Cloudflare {
    /// A client for `zone` (its name) at the API base `api`; `zone_id` skips the lookup.
    pub fn new(
        http: reqwest::Client,
        api: &str,
        token: Secret,
        zone: &str,
        zone_id: Option<String>,
        proxied: bool,
    ) -> Self {
        let cell = std::sync::Arc::new(tokio::sync::OnceCell::new());
        if let Some(id) = zone_id.filter(|z| !z.is_empty()) {
            let _ = cell.set(id);
        }
        Self {
            http,
            api: api.trim_end_matches('/').to_string(),
            token,
            zone: zone.trim_end_matches('.').to_string(),
            zone_id: cell,
            proxied,
        }
    }

    /// Sends a request; returns the envelope of a success, or the classified failure. The
    /// codes of a failed envelope are returned for the caller to match.
    async fn call(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Result<Value, (u16, Vec<i64>, ProviderError)>, ProviderError> {
        let response = request
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(|e| ProviderError::from_transport("cloudflare", what, &e))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) && body["success"].as_bool() != Some(false) {
            return Ok(Ok(body));
        }
        let errors = body["errors"].as_array().cloned().unwrap_or_default();
        let codes: Vec<i64> = errors.iter().filter_map(|e| e["code"].as_i64()).collect();
        let message = errors
            .iter()
            .map(|e| format!("{} {}", e["code"], e["message"].as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("; ");
        let message = if message.is_empty() { text } else { message };
        Ok(Err((
            status,
            codes,
            ProviderError::from_status("cloudflare", what, status, &message),
        )))
    }

    async fn zone_id(&self) -> Result<String, ProviderError> {
        self.zone_id
            .get_or_try_init(|| async {
                let url = format!("{}/zones", self.api);
                let found = self
                    .call("find zone", self.http.get(&url).query(&[("name", self.zone.as_str())]))
                    .await?
                    .map_err(|(_, _, e)| e)?;
                found["result"][0]["id"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ProviderError::Fail {
                        code: "cloudflare.refused".into(),
                        message: format!("cloudflare: no zone named {}", self.zone),
                    })
            })
            .await
            .cloned()
    }

    async fn find(&self, zone: &str, name: &str, kind: &str) -> Result<Vec<Record>, ProviderError> {
        let url = format!("{}/zones/{zone}/dns_records", self.api);
        let found = self
            .call(
                "find record",
                self.http
                    .get(&url)
                    .query(&[("type", kind), ("name", name), ("per_page", "100")]),
            )
            .await?
            .map_err(|(_, _, e)| e)?;
        Ok(found["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|r| Record {
                id: r["id"].as_str().unwrap_or_default().to_string(),
                content: r["content"].as_str().unwrap_or_default().to_string(),
                ttl: r["ttl"].as_u64().unwrap_or_default(),
                proxied: r["proxied"].as_bool().unwrap_or_default(),
            })
            .collect())
    }

    async fn delete_id(&self, zone: &str, id: &str) -> Result<(), ProviderError> {
        let url = format!("{}/zones/{zone}/dns_records/{id}", self.api);
        match self.call("delete record", self.http.delete(&url)).await? {
            Ok(_) => Ok(()),
            Err((404, codes, _)) if codes.is_empty() || codes.contains(&RECORD_MISSING) => Ok(()),
            Err((_, _, e)) => Err(e),
        }
    }

    /// Creates or replaces the record `name`/`kind` with `content`; `comment` marks it ours.
    pub async fn upsert(
        &self,
        name: &str,
        kind: &str,
        content: &str,
        ttl: u32,
        comment: &str,
    ) -> Result<(), ProviderError> {
        let name = name.trim_end_matches('.');
        let zone = self.zone_id().await?;
        let body = json!({
            "type": kind, "name": name, "content": content, "ttl": ttl,
            "proxied": self.proxied, "comment": comment,
        });
        let found = self.find(&zone, name, kind).await?;
        let Some((first, extras)) = found.split_first() else {
            let url = format!("{}/zones/{zone}/dns_records", self.api);
            return match self.call("create record", self.http.post(&url).json(&body)).await? {
                Ok(_) => Ok(()),
                // Made meanwhile, identical: what we wanted.
                Err((_, codes, _)) if codes.iter().any(|c| IDENTICAL_EXISTS.contains(c)) => Ok(()),
                Err((_, _, e)) => Err(e),
            };
        };
        if first.content != content || first.ttl != u64::from(ttl) || first.proxied != self.proxied {
            let url = format!("{}/zones/{zone}/dns_records/{}", self.api, first.id);
            self.call("update record", self.http.put(&url).json(&body))
                .await?
                .map_err(|(_, _, e)| e)?;
        }
        for extra in extras {
            self.delete_id(&zone, &extra.id).await?;
        }
        Ok(())
    }

    /// Deletes every record `name`/`kind`; absence is success.
    pub async fn delete(&self, name: &str, kind: &str) -> Result<(), ProviderError> {
        let name = name.trim_end_matches('.');
        let zone = self.zone_id().await?;
        for record in self.find(&zone, name, kind).await? {
            self.delete_id(&zone, &record.id).await?;
        }
        Ok(())
    }
}
