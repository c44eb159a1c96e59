//! Edge settings (`[edge]`): how the DNS and reverse-proxy providers are reached.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// The edge service's providers. Which provider runs is `saga.dns_provider` and
/// `saga.proxy_provider`, so the saga skips exactly the steps no provider serves.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeSettings {
    /// What a site's A record points at: `container` (its address) or `proxy` (`proxy_ip`).
    pub dns_target: String,
    /// The reverse proxy's public address, for `dns_target = "proxy"`.
    pub proxy_ip: String,
    /// TTL of the records written.
    pub ttl: u32,
    /// PowerDNS: the API base, `http://127.0.0.1:8081`.
    pub powerdns_url: String,
    /// PowerDNS: the API key (`X-API-Key`).
    pub powerdns_api_key: Option<Secret>,
    /// PowerDNS: the server id.
    pub powerdns_server: String,
    /// The DNS zone sites are written into; empty: `saga.domain`.
    pub zone: String,
    /// Cloudflare: the API base.
    pub cloudflare_api_url: String,
    /// Cloudflare: an API token with DNS write on the zone.
    pub cloudflare_api_token: Option<Secret>,
    /// Cloudflare: the zone id; empty: looked up by the zone's name.
    pub cloudflare_zone_id: String,
    /// Cloudflare: proxy the records through Cloudflare.
    pub cloudflare_proxied: bool,
    /// Caddy: the admin API, `http://127.0.0.1:2019`.
    pub caddy_admin_url: String,
    /// Caddy: the HTTP server (under `apps.http.servers`) that gets the routes.
    pub caddy_server: String,
    /// Nginx Proxy Manager: the API base, `http://npm:81`.
    pub npm_url: String,
    /// Nginx Proxy Manager: the login (an email).
    pub npm_identity: String,
    /// Nginx Proxy Manager: the password.
    pub npm_secret: Option<Secret>,
    /// Nginx Proxy Manager: the certificate every host gets (a pre-issued wildcard); 0: none.
    pub npm_certificate_id: i64,
    /// How long one provider call may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        Self {
            dns_target: "container".into(),
            proxy_ip: String::new(),
            ttl: 300,
            powerdns_url: "http://127.0.0.1:8081".into(),
            powerdns_api_key: None,
            powerdns_server: "localhost".into(),
            zone: String::new(),
            cloudflare_api_url: "https://api.cloudflare.com/client/v4".into(),
            cloudflare_api_token: None,
            cloudflare_zone_id: String::new(),
            cloudflare_proxied: false,
            caddy_admin_url: "http://127.0.0.1:2019".into(),
            caddy_server: "edge".into(),
            npm_url: "http://127.0.0.1:81".into(),
            npm_identity: String::new(),
            npm_secret: None,
            npm_certificate_id: 0,
            timeout: Duration::from_secs(10),
        }
    }
}
