//! The edge service: `dns.upsert`, `dns.delete`, `proxy.upsert` and `proxy.delete` (DESIGN.md
//! §5, edge-installer.md §1–2). Which providers run is `saga.dns_provider` and
//! `saga.proxy_provider` (`powerdns` | `none`, `caddy` | `none`), so the saga skips exactly
//! the steps nothing serves; how they are reached is `[edge]`.
//!
//! Every upsert is idempotent and every delete tolerates absence, so a redelivered command
//! converges on the same state. Provider answers are classified: auth errors and refused
//! requests fail the step with the provider's message, 429, 5xx and timeouts retry.

pub mod cloudflare;
pub mod dns;
pub mod npm;
pub mod provider;
pub mod proxy;

use std::sync::Arc;

use async_trait::async_trait;
use pvefleet_contracts::messages::{
    DnsDelete, DnsDeleted, DnsUpsert, DnsUpserted, ProxyDelete, ProxyDeleted, ProxyUpsert, ProxyUpserted, RecordType,
};
use pvefleet_core::bus::{Context, Handled, Handler, Router};
use pvefleet_core::config::{EdgeSettings, SagaSettings};

pub use dns::{Dns, PowerDns};
pub use proxy::{Caddy, Proxy};

/// The edge service's handlers.
#[derive(Clone)]
pub struct Edge {
    inner: Arc<Inner>,
}

struct Inner {
    dns: Dns,
    proxy: Proxy,
    settings: EdgeSettings,
}

impl Edge {
    /// The providers named by `saga`, configured by `edge`.
    pub fn from_settings(edge: &EdgeSettings, saga: &SagaSettings) -> anyhow::Result<Self> {
        // reqwest is built without a default TLS provider: ring, as the PVE client uses.
        let _ = rustls::crypto::CryptoProvider::install_default(rustls::crypto::ring::default_provider());
        let http = reqwest::Client::builder()
            .timeout(edge.timeout)
            .connect_timeout(edge.timeout)
            .build()?;
        let dns = match saga.dns_provider.as_str() {
            "none" => Dns::None,
            "powerdns" => {
                let key = edge.powerdns_api_key.clone().ok_or_else(|| {
                    anyhow::anyhow!("edge.powerdns_api_key is required for saga.dns_provider = powerdns")
                })?;
                let zone = if edge.zone.is_empty() { &saga.domain } else { &edge.zone };
                Dns::PowerDns(PowerDns::new(
                    http.clone(),
                    &edge.powerdns_url,
                    &edge.powerdns_server,
                    zone,
                    key,
                )?)
            }
            "cloudflare" => {
                let token = edge.cloudflare_api_token.clone().ok_or_else(|| {
                    anyhow::anyhow!("edge.cloudflare_api_token is required for saga.dns_provider = cloudflare")
                })?;
                let zone = if edge.zone.is_empty() { &saga.domain } else { &edge.zone };
                Dns::Cloudflare(cloudflare::Cloudflare::new(
                    http.clone(),
                    &edge.cloudflare_api_url,
                    token,
                    zone,
                    Some(edge.cloudflare_zone_id.clone()),
                    edge.cloudflare_proxied,
                ))
            }
            other => anyhow::bail!("saga.dns_provider '{other}' is not known (powerdns, cloudflare, none)"),
        };
        let proxy = match saga.proxy_provider.as_str() {
            "none" => Proxy::None,
            "caddy" => Proxy::Caddy(Caddy::new(edge.timeout, &edge.caddy_admin_url, &edge.caddy_server)?),
            "npm" => {
                let secret = edge
                    .npm_secret
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("edge.npm_secret is required for saga.proxy_provider = npm"))?;
                anyhow::ensure!(
                    !edge.npm_identity.is_empty(),
                    "edge.npm_identity is required for saga.proxy_provider = npm"
                );
                Proxy::Npm(npm::Npm::new(
                    http,
                    &edge.npm_url,
                    &edge.npm_identity,
                    secret,
                    edge.npm_certificate_id,
                ))
            }
            other => anyhow::bail!("saga.proxy_provider '{other}' is not known (caddy, npm, none)"),
        };
        anyhow::ensure!(
            matches!(edge.dns_target.as_str(), "container" | "proxy"),
            "edge.dns_target must be 'container' or 'proxy'"
        );
        anyhow::ensure!(
            edge.dns_target != "proxy" || edge.proxy_ip.parse::<std::net::IpAddr>().is_ok(),
            "edge.dns_target = proxy needs edge.proxy_ip to be an address"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                dns,
                proxy,
                settings: edge.clone(),
            }),
        })
    }

    /// The router of the edge queue.
    pub fn router(&self) -> Router {
        Router::new()
            .command::<DnsUpsert, _>(self.clone())
            .command::<DnsDelete, _>(self.clone())
            .command::<ProxyUpsert, _>(self.clone())
            .command::<ProxyDelete, _>(self.clone())
    }
}

fn record_type(t: RecordType) -> &'static str {
    match t {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::CNAME => "CNAME",
    }
}

#[async_trait]
impl Handler<DnsUpsert> for Edge {
    async fn handle(&self, cmd: DnsUpsert, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        // The record points at the proxy when it fronts the sites, else at the container.
        let content = if me.settings.dns_target == "proxy" && cmd.record_type != RecordType::CNAME {
            me.settings.proxy_ip.clone()
        } else {
            cmd.content.clone()
        };
        let ttl = cmd.ttl.unwrap_or(me.settings.ttl);
        let kind = record_type(cmd.record_type);
        let done = match &me.dns {
            Dns::None => Ok(()),
            Dns::PowerDns(p) => p.upsert(&cmd.fqdn, kind, &content, ttl).await,
            Dns::Cloudflare(c) => {
                let comment = format!("pvefleet-site: {}", cmd.site_id);
                c.upsert(&cmd.fqdn, kind, &content, ttl, &comment).await
            }
        };
        done?;
        ctx.emit(&DnsUpserted {
            site_id: cmd.site_id,
            fqdn: cmd.fqdn,
        })
        .await
    }
}

#[async_trait]
impl Handler<DnsDelete> for Edge {
    async fn handle(&self, cmd: DnsDelete, ctx: &Context<'_>) -> Handled {
        let kind = record_type(cmd.record_type);
        let done = match &self.inner.dns {
            Dns::None => Ok(()),
            Dns::PowerDns(p) => p.delete(&cmd.fqdn, kind).await,
            Dns::Cloudflare(c) => c.delete(&cmd.fqdn, kind).await,
        };
        done?;
        ctx.emit(&DnsDeleted {
            site_id: cmd.site_id,
            fqdn: cmd.fqdn,
        })
        .await
    }
}

#[async_trait]
impl Handler<ProxyUpsert> for Edge {
    async fn handle(&self, cmd: ProxyUpsert, ctx: &Context<'_>) -> Handled {
        let done = match &self.inner.proxy {
            Proxy::None => Ok(()),
            Proxy::Caddy(c) => c.upsert(&cmd.site_id, &cmd.host, &cmd.upstream).await,
            Proxy::Npm(n) => n.upsert(&cmd.site_id, &cmd.host, &cmd.upstream).await,
        };
        done?;
        ctx.emit(&ProxyUpserted {
            site_id: cmd.site_id,
            host: cmd.host,
        })
        .await
    }
}

#[async_trait]
impl Handler<ProxyDelete> for Edge {
    async fn handle(&self, cmd: ProxyDelete, ctx: &Context<'_>) -> Handled {
        let done = match &self.inner.proxy {
            Proxy::None => Ok(()),
            Proxy::Caddy(c) => c.delete(&cmd.site_id).await,
            Proxy::Npm(n) => n.delete(&cmd.site_id, &cmd.host).await,
        };
        done?;
        ctx.emit(&ProxyDeleted {
            site_id: cmd.site_id,
            host: cmd.host,
        })
        .await
    }
}

/// Runs the edge service until `shutdown`: consumes `pvefleet.edge`.
pub async fn run(
    settings: &pvefleet_core::Settings,
    ready: Option<pvefleet_core::http::ReadyFlag>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let edge = Edge::from_settings(&settings.edge, &settings.saga)?;
    tracing::info!(
        dns = edge.inner.dns.name(),
        proxy = edge.inner.proxy.name(),
        "Edge providers."
    );
    pvefleet_core::bus::Worker::fleet("edge", settings)
        .ready(ready)
        .run(edge.router(), shutdown)
        .await
}
